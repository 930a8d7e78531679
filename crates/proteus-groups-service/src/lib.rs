//! The consumer-group runtime: runs the pure [`GroupState`] machines of `proteus-groups`
//! against a [`Log`] and a [`GroupStore`].
//!
//! What it adds to the domain:
//! - reading events for pulls, with long polling and linger;
//! - making progress durable: every ack, nack or reset waits until the store has it (one store
//!   commit serves every request that arrived meanwhile: group commit);
//! - a ticker that ends silent sessions and redelivers events whose ack deadline passed;
//! - writing dead letters to the dead-letter topic, listing them and replaying them;
//! - push delivery to webhooks ([`push`]);
//! - Prometheus metrics and the group descriptions the API returns.

pub mod coordination;
mod dead_letters;
mod handle;
mod metrics_names;
mod pull;
pub mod push;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use proteus_groups::config::StartPosition;
use proteus_groups::state::{Assignment, GroupCounters, MemberSnapshot, Position};
use proteus_groups::{
    GroupConfig, GroupError, GroupName, GroupRecord, GroupState, GroupStore, MemberId,
    PartitionProgress, StoreError,
};
use proteus_log::{Log, LogError, Offset, PartitionId, ReadFrom, ReadLimits, TopicName};
use serde::Serialize;
use tokio::sync::watch;

pub use dead_letters::ReplaySelection;
pub use handle::GroupHandle;
pub use proteus_groups;
pub use proteus_groups::dead_letter::DeadLetter;
pub use pull::{Delivery, PullRequest, PullResponse};

/// The clock: milliseconds since the Unix epoch. Tests pass one they control.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    })
}

/// Settings of the runtime itself.
#[derive(Clone)]
pub struct ServiceConfig {
    pub clock: Clock,
    /// How often deadlines and sessions are checked.
    pub tick_ms: u64,
    /// Longest `wait_ms` a pull may ask for.
    pub wait_ms_max: u64,
    /// Most groups per server.
    pub groups_max: usize,
    /// The group store is shared by several instances, each group coordinated by one of them
    /// at a time ([`coordination`]): groups are not loaded at open but activated when this
    /// instance becomes their coordinator ([`GroupService::activate`]) and dropped when it
    /// stops being it ([`GroupService::deactivate`]); lists read the store.
    pub shared: bool,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            clock: system_clock(),
            tick_ms: 50,
            wait_ms_max: 30_000,
            groups_max: 10_000,
            shared: false,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) log: Arc<dyn Log>,
    pub(crate) store: Arc<dyn GroupStore>,
    pub(crate) config: ServiceConfig,
    groups: RwLock<BTreeMap<(TopicName, GroupName), Arc<GroupHandle>>>,
    /// Shared stores: the fencing token each group this instance coordinates was claimed with
    /// (kept for groups not created yet, so a creation carries it too).
    claims: Mutex<BTreeMap<(TopicName, GroupName), u64>>,
    /// Shared stores: groups whose writes the store refused as fenced, until the coordinator
    /// has dropped their lease ([`GroupService::take_fenced_out`]).
    fenced: Mutex<BTreeSet<(TopicName, GroupName)>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    shutdown_sender: watch::Sender<bool>,
    pub(crate) http: reqwest::Client,
}

impl Inner {
    pub(crate) fn now_ms(&self) -> i64 {
        (self.config.clock)()
    }

    /// A read of at most one event at `from`: where `partition` starts and ends, and the first
    /// event there.
    pub(crate) async fn probe(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        from: ReadFrom,
    ) -> Result<proteus_log::ReadBatch, LogError> {
        let one = ReadLimits {
            events_max: 1,
            bytes_max: 1,
        };
        self.log.read(topic, partition, from, one).await
    }

    /// The store refused a write of `handle` because a newer coordinator claimed the group:
    /// stop running it here at once (it must not act on state another instance owns) and let
    /// the coordinator drop its lease.
    pub(crate) fn fenced_out(&self, handle: &GroupHandle) {
        let key = (handle.topic.clone(), handle.group.clone());
        {
            let mut groups = self.groups.write().expect("group map lock");
            if groups
                .get(&key)
                .is_some_and(|running| std::ptr::eq(running.as_ref(), handle))
            {
                groups.remove(&key);
            }
        }
        handle.abandon();
        self.claims.lock().expect("claims lock").remove(&key);
        self.fenced.lock().expect("fenced lock").insert(key);
    }

    /// The fencing token writes of a group carry: its claim here, or 0 (a lone instance).
    fn fence_of(&self, topic: &TopicName, group: &GroupName) -> u64 {
        self.claims
            .lock()
            .expect("claims lock")
            .get(&(topic.clone(), group.clone()))
            .copied()
            .unwrap_or(0)
    }
}

/// The consumer-group service. Cheap to clone.
#[derive(Clone)]
pub struct GroupService {
    inner: Arc<Inner>,
}

/// One partition of a group as the API describes it.
#[derive(Clone, Debug, Serialize)]
pub struct PartitionStatus {
    pub partition: PartitionId,
    pub owner: Option<MemberId>,
    /// Every offset below is acknowledged or dead-lettered.
    pub committed: Offset,
    /// The partition's end: the offset of the next event to be appended.
    pub end_offset: Offset,
    pub lag_events: u64,
    /// Age of the oldest event not yet acknowledged, in seconds (0 when caught up).
    pub lag_seconds: f64,
    pub in_flight: usize,
    pub waiting_retry: usize,
    pub pending_replays: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct GroupDescription {
    pub topic: TopicName,
    pub group: GroupName,
    pub config: GroupConfig,
    pub created_ms: i64,
    pub dead_letter_topic: TopicName,
    pub generation: u64,
    pub members: Vec<MemberSnapshot>,
    pub partitions: Vec<PartitionStatus>,
    pub lag_events: u64,
    pub unacked_events: usize,
    /// Counts since this server started.
    pub counters: GroupCounters,
    /// Events delivered per second over the last ten seconds or so.
    pub delivery_rate_per_s: f64,
    /// Acks per second over the same window.
    pub ack_rate_per_s: f64,
}

/// What a member learns when it joins.
#[derive(Clone, Debug, Serialize)]
pub struct JoinResponse {
    #[serde(flatten)]
    pub assignment: Assignment,
    pub session_timeout_ms: u64,
    /// Heartbeat (or pull) at least this often to keep the session.
    pub heartbeat_interval_ms: u64,
}

impl GroupService {
    /// Loads every stored group and starts the background work (ticker, flushers, pushers).
    pub async fn open(
        log: Arc<dyn Log>,
        store: Arc<dyn GroupStore>,
        config: ServiceConfig,
    ) -> Result<GroupService, GroupError> {
        let (shutdown_sender, shutdown) = watch::channel(false);
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| GroupError::Store(proteus_groups::StoreError::Backend(e.to_string())))?;
        let inner = Arc::new(Inner {
            log,
            store,
            config,
            groups: RwLock::new(BTreeMap::new()),
            claims: Mutex::new(BTreeMap::new()),
            fenced: Mutex::new(BTreeSet::new()),
            shutdown,
            shutdown_sender,
            http,
        });
        let service = GroupService { inner };
        let records = if service.inner.config.shared {
            Vec::new()
        } else {
            service.inner.store.list_groups().await?
        };
        for record in records {
            match service.inner.log.describe_topic(&record.topic).await {
                Ok(_) => {
                    service.install(record);
                }
                // Kept, not served: a server started on another log (a NATS log before
                // `proteus migrate-topics`, a mistyped prefix) must not destroy the groups of
                // topics it cannot see. Deleting a topic deletes its groups first.
                Err(LogError::TopicNotFound { .. }) => {
                    tracing::warn!(topic = %record.topic, group = %record.group,
                        "the group's topic is not in this log; the group is kept but not served until a restart finds the topic");
                }
                Err(error) => return Err(error.into()),
            }
        }
        tokio::spawn(ticker(Arc::downgrade(&service.inner)));
        Ok(service)
    }

    /// Runs the group from its record, unless it already runs here.
    fn install(&self, record: GroupRecord) -> Arc<GroupHandle> {
        let key = (record.topic.clone(), record.group.clone());
        let mut groups = self.inner.groups.write().expect("group map lock");
        if let Some(handle) = groups.get(&key) {
            return handle.clone();
        }
        let seed = (self.inner.now_ms() as u64) ^ (record.created_ms as u64).rotate_left(17);
        let fence = record.fence;
        let state = GroupState::from_record(record, seed);
        let handle = GroupHandle::start(&self.inner, state, fence);
        groups.insert(key, handle.clone());
        handle
    }

    /// Whether the group runs in this instance.
    pub fn is_active(&self, topic: &TopicName, group: &GroupName) -> bool {
        self.inner
            .groups
            .read()
            .expect("group map lock")
            .contains_key(&(topic.clone(), group.clone()))
    }

    /// The groups running in this instance.
    pub fn active_groups(&self) -> Vec<(TopicName, GroupName)> {
        self.inner
            .groups
            .read()
            .expect("group map lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Runs the group here from its stored state, claimed with `fence` (shared stores: this
    /// instance just became its coordinator under a lease with that token, and from now on the
    /// store refuses writes with older tokens). Returns whether the group exists; a group that
    /// does not yet will be created with `fence`. Nothing happens if it already runs.
    pub async fn activate(
        &self,
        topic: &TopicName,
        group: &GroupName,
        fence: u64,
    ) -> Result<bool, GroupError> {
        let key = (topic.clone(), group.clone());
        self.inner.fenced.lock().expect("fenced lock").remove(&key);
        if self.is_active(topic, group) {
            return Ok(true);
        }
        let claimed = self.inner.store.claim_group(topic, group, fence).await?;
        self.inner
            .claims
            .lock()
            .expect("claims lock")
            .insert(key, fence);
        match claimed {
            Some(record) => {
                self.install(record);
                tracing::info!(%topic, %group, fence, "group state loaded from the store");
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Whether the store refused a write of the group as fenced since it was last activated
    /// here; the answer is given once (the coordinator then drops its lease record).
    pub fn take_fenced_out(&self, topic: &TopicName, group: &GroupName) -> bool {
        self.inner
            .fenced
            .lock()
            .expect("fenced lock")
            .remove(&(topic.clone(), group.clone()))
    }

    /// Stops running the group here without saving what is not durable yet (shared stores:
    /// another instance coordinates it now, or may at any moment). Requests in progress on it
    /// fail; members learn of the move when their next request reaches the new coordinator
    /// (404 unknown-member: rejoin). Returns whether it ran here.
    pub fn deactivate(&self, topic: &TopicName, group: &GroupName) -> bool {
        self.inner
            .claims
            .lock()
            .expect("claims lock")
            .remove(&(topic.clone(), group.clone()));
        let removed = self
            .inner
            .groups
            .write()
            .expect("group map lock")
            .remove(&(topic.clone(), group.clone()));
        match removed {
            Some(handle) => {
                handle.abandon();
                tracing::info!(%topic, %group, "no longer coordinating the group here");
                true
            }
            None => false,
        }
    }

    pub(crate) fn handle(
        &self,
        topic: &TopicName,
        group: &GroupName,
    ) -> Result<Arc<GroupHandle>, GroupError> {
        self.inner
            .groups
            .read()
            .expect("group map lock")
            .get(&(topic.clone(), group.clone()))
            .cloned()
            .ok_or_else(|| GroupError::GroupNotFound {
                topic: topic.clone(),
                group: group.clone(),
            })
    }

    /// Creates the group, or updates the settings of an existing one (its start position is
    /// then ignored: use [`GroupService::reset`]). Returns whether it was created.
    pub async fn put_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
        config: GroupConfig,
    ) -> Result<bool, GroupError> {
        config.validate()?;
        if let Ok(handle) = self.handle(topic, group) {
            let updated = self
                .inner
                .store
                .update_config(topic, group, handle.fence, &config)
                .await;
            if let Err(StoreError::Fenced { .. }) = &updated {
                self.inner.fenced_out(&handle);
            }
            updated?;
            handle.set_config(&self.inner, config);
            return Ok(false);
        }
        let description = self.inner.log.describe_topic(topic).await?;
        if self.inner.groups.read().expect("group map lock").len() >= self.inner.config.groups_max {
            return Err(GroupError::InvalidConfig(
                proteus_groups::config::InvalidGroupConfig {
                    field: "groups",
                    reason: format!(
                        "this server already has {} groups, its most",
                        self.inner.config.groups_max
                    ),
                },
            ));
        }
        let mut partitions = Vec::with_capacity(description.partitions.len());
        for partition in &description.partitions {
            let committed = self
                .resolve_start(topic, partition.partition, config.start)
                .await?;
            partitions.push(PartitionProgress {
                partition: partition.partition,
                committed,
                ..PartitionProgress::default()
            });
        }
        let record = GroupRecord {
            topic: topic.clone(),
            group: group.clone(),
            config,
            created_ms: self.inner.now_ms(),
            partitions,
            fence: self.inner.fence_of(topic, group),
        };
        match self.inner.store.create_group(&record).await {
            Ok(()) => {}
            Err(proteus_groups::StoreError::AlreadyExists { .. }) => {
                return Err(GroupError::GroupExists {
                    topic: topic.clone(),
                    group: group.clone(),
                });
            }
            Err(error) => return Err(error.into()),
        }
        self.install(record);
        Ok(true)
    }

    /// The offset a start position means in one partition.
    async fn resolve_start(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        start: StartPosition,
    ) -> Result<Offset, GroupError> {
        let from = match start {
            StartPosition::TimeMs(time_ms) => ReadFrom::TimeMs(time_ms),
            _ => ReadFrom::Offset(0),
        };
        let batch = self.inner.probe(topic, partition, from).await?;
        Ok(match start {
            StartPosition::Beginning => batch.first_offset,
            StartPosition::End => batch.end_offset,
            StartPosition::Offset(offset) => offset.clamp(batch.first_offset, batch.end_offset),
            StartPosition::TimeMs(_) => batch
                .events
                .first()
                .map_or(batch.end_offset, |event| event.offset),
        })
    }

    pub async fn describe(
        &self,
        topic: &TopicName,
        group: &GroupName,
    ) -> Result<GroupDescription, GroupError> {
        let handle = self.handle(topic, group)?;
        handle.describe(&self.inner).await
    }

    /// Every group of `topic`, sorted by name. With a shared store: every stored group, those
    /// coordinated elsewhere described from their stored progress (no members, no counters).
    pub async fn list(&self, topic: &TopicName) -> Result<Vec<GroupDescription>, GroupError> {
        self.inner.log.describe_topic(topic).await?;
        if self.inner.config.shared {
            let records: Vec<GroupRecord> = self
                .inner
                .store
                .list_groups()
                .await?
                .into_iter()
                .filter(|record| &record.topic == topic)
                .collect();
            let mut descriptions = Vec::with_capacity(records.len());
            for record in records {
                if let Ok(handle) = self.handle(&record.topic, &record.group) {
                    descriptions.push(handle.describe(&self.inner).await?);
                    continue;
                }
                let (topic, group, created_ms) = (
                    record.topic.clone(),
                    record.group.clone(),
                    record.created_ms,
                );
                let state = GroupState::from_record(record, 0);
                let (snapshot, config) = (state.snapshot(), state.config().clone());
                descriptions.push(
                    handle::describe_snapshot(
                        &self.inner,
                        &topic,
                        &group,
                        snapshot,
                        config,
                        created_ms,
                        (0.0, 0.0),
                    )
                    .await?,
                );
            }
            return Ok(descriptions);
        }
        let handles: Vec<Arc<GroupHandle>> = self
            .inner
            .groups
            .read()
            .expect("group map lock")
            .iter()
            .filter(|((t, _), _)| t == topic)
            .map(|(_, handle)| handle.clone())
            .collect();
        let mut descriptions = Vec::with_capacity(handles.len());
        for handle in handles {
            descriptions.push(handle.describe(&self.inner).await?);
        }
        Ok(descriptions)
    }

    pub async fn delete(&self, topic: &TopicName, group: &GroupName) -> Result<(), GroupError> {
        let handle = self.handle(topic, group)?;
        self.inner.store.delete_group(topic, group).await?;
        self.inner
            .groups
            .write()
            .expect("group map lock")
            .remove(&(topic.clone(), group.clone()));
        handle.stop();
        Ok(())
    }

    /// Forgets every group of a deleted topic.
    pub async fn topic_deleted(&self, topic: &TopicName) -> Result<(), GroupError> {
        let names: Vec<GroupName> = self
            .inner
            .groups
            .read()
            .expect("group map lock")
            .keys()
            .filter(|(t, _)| t == topic)
            .map(|(_, g)| g.clone())
            .collect();
        for group in names {
            self.delete(topic, &group).await?;
        }
        Ok(())
    }

    /// Moves the group (all partitions, or those listed) to a new position. Durable when it
    /// returns.
    pub async fn reset(
        &self,
        topic: &TopicName,
        group: &GroupName,
        to: StartPosition,
        partitions: Option<Vec<PartitionId>>,
    ) -> Result<BTreeMap<PartitionId, Offset>, GroupError> {
        let handle = self.handle(topic, group)?;
        let count = handle.partition_count();
        let partitions: Vec<PartitionId> = partitions.unwrap_or_else(|| (0..count).collect());
        let mut positions = BTreeMap::new();
        for partition in partitions {
            if partition >= count {
                return Err(GroupError::PartitionNotFound {
                    topic: topic.clone(),
                    partition,
                    partitions: count,
                });
            }
            positions.insert(partition, self.resolve_start(topic, partition, to).await?);
        }
        let version = handle.mutate(|state| state.reset(&positions));
        handle.wait_durable(version).await?;
        handle.changed.notify_waiters();
        Ok(positions)
    }

    pub async fn join(
        &self,
        topic: &TopicName,
        group: &GroupName,
        member: Option<MemberId>,
    ) -> Result<JoinResponse, GroupError> {
        let handle = self.handle(topic, group)?;
        if handle.is_push() {
            return Err(GroupError::PushGroup {
                group: group.clone(),
            });
        }
        let member = match member {
            Some(member) => member,
            None => MemberId::parse(&uuid::Uuid::now_v7().simple().to_string())
                .expect("a uuid is a valid member id"),
        };
        let now_ms = self.inner.now_ms();
        let assignment = handle.with_state(|state| state.join(member, now_ms))?;
        handle.membership_changed();
        let session_timeout_ms = handle.config().session_timeout_ms;
        Ok(JoinResponse {
            assignment,
            session_timeout_ms,
            heartbeat_interval_ms: (session_timeout_ms / 3).max(1),
        })
    }

    pub async fn heartbeat(
        &self,
        topic: &TopicName,
        group: &GroupName,
        member: &MemberId,
    ) -> Result<Assignment, GroupError> {
        let handle = self.handle(topic, group)?;
        let now_ms = self.inner.now_ms();
        handle.with_state(|state| state.heartbeat(member, now_ms))
    }

    pub async fn leave(
        &self,
        topic: &TopicName,
        group: &GroupName,
        member: &MemberId,
    ) -> Result<(), GroupError> {
        let handle = self.handle(topic, group)?;
        let now_ms = self.inner.now_ms();
        handle.with_state(|state| state.leave(member, now_ms))?;
        handle.membership_changed();
        Ok(())
    }

    /// Acknowledges events; durable when it returns.
    pub async fn ack(
        &self,
        topic: &TopicName,
        group: &GroupName,
        member: &MemberId,
        generation: u64,
        positions: &[Position],
    ) -> Result<proteus_groups::state::AckOutcome, GroupError> {
        let handle = self.handle(topic, group)?;
        let now_ms = self.inner.now_ms();
        let (outcome, version) =
            handle.mutate_result(|state| state.ack(member, generation, positions, now_ms))?;
        handle.record_acks(&outcome);
        handle.wait_durable(version).await?;
        handle.changed.notify_waiters();
        Ok(outcome)
    }

    /// Gives events back for a retry (or to the dead-letter topic when their deliveries are
    /// used up).
    #[allow(clippy::too_many_arguments)]
    pub async fn nack(
        &self,
        topic: &TopicName,
        group: &GroupName,
        member: &MemberId,
        generation: u64,
        positions: &[Position],
        delay_ms: Option<u64>,
        error: Option<&str>,
    ) -> Result<proteus_groups::state::NackOutcome, GroupError> {
        let handle = self.handle(topic, group)?;
        let now_ms = self.inner.now_ms();
        let (outcome, version) = handle.mutate_result(|state| {
            state.nack(member, generation, positions, delay_ms, error, now_ms)
        })?;
        metrics::counter!(metrics_names::NACKED, "topic" => topic.to_string(), "group" => group.to_string())
            .increment(u64::from(outcome.nacked));
        let dead_letters_tried = (!outcome.dead_letters.is_empty()).then(|| {
            dead_letters::spawn_writes(&self.inner, &handle, outcome.dead_letters.clone())
        });
        handle.wait_durable(version).await?;
        handle.changed.notify_waiters();
        // Answer once the dead letters are in the dead-letter topic, so a client that lists
        // them right after its nack finds them.
        if let Some(tried) = dead_letters_tried {
            let bound = Duration::from_millis(dead_letters::NACK_DEAD_LETTER_WAIT_MS_MAX);
            let _ = tokio::time::timeout(bound, tried).await;
        }
        Ok(outcome)
    }

    /// Extends the ack deadline of events still being processed; returns the new deadline.
    pub async fn in_progress(
        &self,
        topic: &TopicName,
        group: &GroupName,
        member: &MemberId,
        generation: u64,
        positions: &[Position],
    ) -> Result<i64, GroupError> {
        let handle = self.handle(topic, group)?;
        let now_ms = self.inner.now_ms();
        handle.with_state(|state| state.in_progress(member, generation, positions, now_ms))
    }

    pub async fn pull(
        &self,
        topic: &TopicName,
        group: &GroupName,
        member: &MemberId,
        request: PullRequest,
    ) -> Result<PullResponse, GroupError> {
        let handle = self.handle(topic, group)?;
        if handle.is_push() {
            return Err(GroupError::PushGroup {
                group: group.clone(),
            });
        }
        pull::pull(&self.inner, &handle, member, request, None).await
    }

    pub async fn dead_letters(
        &self,
        topic: &TopicName,
        group: &GroupName,
        from: Offset,
        limit: u32,
    ) -> Result<(Vec<DeadLetter>, Offset), GroupError> {
        let handle = self.handle(topic, group)?;
        dead_letters::list(&self.inner, &handle, from, limit).await
    }

    pub async fn replay(
        &self,
        topic: &TopicName,
        group: &GroupName,
        selection: ReplaySelection,
    ) -> Result<u32, GroupError> {
        let handle = self.handle(topic, group)?;
        dead_letters::replay(&self.inner, &handle, selection).await
    }

    /// Stops background work and makes every group's progress durable.
    pub async fn shutdown(&self) {
        self.inner.shutdown_sender.send_replace(true);
        let handles: Vec<Arc<GroupHandle>> = self
            .inner
            .groups
            .read()
            .expect("group map lock")
            .values()
            .cloned()
            .collect();
        for handle in handles {
            if let Err(error) = handle.flush_now(&self.inner).await {
                tracing::error!(topic = %handle.topic, group = %handle.group, %error,
                    "could not save the group's progress at shutdown");
            }
            handle.stop();
        }
    }
}

/// Ends silent sessions, redelivers late events, and refreshes lag gauges.
async fn ticker(inner: std::sync::Weak<Inner>) {
    let mut lag_refresh_ms = 0_i64;
    loop {
        let Some(inner) = inner.upgrade() else { return };
        if *inner.shutdown.borrow() {
            return;
        }
        let tick = Duration::from_millis(inner.config.tick_ms);
        let handles: Vec<Arc<GroupHandle>> = inner
            .groups
            .read()
            .expect("group map lock")
            .values()
            .cloned()
            .collect();
        let now_ms = inner.now_ms();
        for handle in &handles {
            handle.tick(&inner, now_ms);
        }
        if now_ms - lag_refresh_ms >= 1_000 {
            lag_refresh_ms = now_ms;
            for handle in &handles {
                handle.refresh_gauges(&inner).await;
            }
        }
        let mut shutdown = inner.shutdown.clone();
        drop(inner);
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
    }
}
