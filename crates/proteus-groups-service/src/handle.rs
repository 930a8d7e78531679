//! One running group: its state machine behind a lock, the flusher that makes its progress
//! durable, and its push worker when it has one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use proteus_groups::state::{AckOutcome, GroupSnapshot};
use proteus_groups::{GroupConfig, GroupError, GroupName, GroupState, StoreError};
use proteus_log::{LogError, ReadFrom, ReadLimits, TopicName};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::metrics_names as names;
use crate::{GroupDescription, Inner, PartitionStatus, dead_letters, push};

/// Why requests on a group this instance stopped coordinating fail.
pub(crate) const ABANDONED: &str =
    "this instance stopped coordinating the group (its lease moved); retry the request";

/// Where durability stands: every version up to `durable` is saved; `failed` is the newest
/// version whose save failed, with the error and whether retrying may succeed (the store was
/// unavailable, or this instance stopped coordinating the group).
#[derive(Clone, Debug, Default)]
struct Durability {
    durable: u64,
    failed: u64,
    error: String,
    retriable: bool,
}

pub struct GroupHandle {
    pub topic: TopicName,
    pub group: GroupName,
    /// The fencing token every write of this group carries: the coordinator lease's token it
    /// was claimed with (shared group stores), 0 for a lone instance.
    pub(crate) fence: u64,
    state: Mutex<GroupState>,
    /// Serialises the read phase of pulls, so two pulls never hand out the same events.
    pub(crate) fetch: tokio::sync::Mutex<()>,
    /// Woken on anything that may let a waiting pull deliver: acks, nacks, rebalances,
    /// expiries, replays, resets.
    pub(crate) changed: Notify,
    /// Version of the newest change to durable progress.
    requested: AtomicU64,
    flush_wake: Notify,
    durability: watch::Sender<Durability>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// (time, delivered, acked) samples for the rates in descriptions.
    rate_samples: Mutex<VecDeque<(i64, u64, u64)>>,
    /// The last dead-letter write started: each write waits for the one before it, so dead
    /// letters reach their topic in the order events were given up on.
    pub(crate) dead_letter_tail: Mutex<Option<JoinHandle<()>>>,
    /// Set when this instance stopped coordinating the group (shared group stores): requests
    /// still holding the handle fail instead of acting on state another instance now owns.
    abandoned: AtomicBool,
}

impl GroupHandle {
    pub(crate) fn start(inner: &Arc<Inner>, state: GroupState, fence: u64) -> Arc<GroupHandle> {
        let handle = Arc::new(GroupHandle {
            topic: state.topic().clone(),
            group: state.group().clone(),
            fence,
            state: Mutex::new(state),
            fetch: tokio::sync::Mutex::new(()),
            changed: Notify::new(),
            requested: AtomicU64::new(0),
            flush_wake: Notify::new(),
            durability: watch::channel(Durability::default()).0,
            tasks: Mutex::new(Vec::new()),
            rate_samples: Mutex::new(VecDeque::new()),
            dead_letter_tail: Mutex::new(None),
            abandoned: AtomicBool::new(false),
        });
        let flusher = tokio::spawn(flusher(Arc::downgrade(inner), Arc::downgrade(&handle)));
        handle.tasks.lock().expect("tasks lock").push(flusher);
        handle.start_push(inner);
        handle
    }

    fn start_push(self: &Arc<Self>, inner: &Arc<Inner>) {
        if let Some(push_config) = self.config().push {
            let task = push::start(inner.clone(), self.clone(), push_config);
            self.tasks.lock().expect("tasks lock").push(task);
        }
    }

    /// Aborts background work. Progress not yet durable stays in memory only.
    pub(crate) fn stop(&self) {
        for task in self.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
        self.changed.notify_waiters();
    }

    /// Stops the group's work without saving what is not durable yet: another instance now
    /// coordinates it (or may at any moment) and owns its stored progress. Acks waiting for
    /// durability fail, pulls in progress end with an error.
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Release);
        self.stop();
        self.durability.send_modify(|d| {
            d.failed = u64::MAX;
            d.error = ABANDONED.to_owned();
            d.retriable = true;
        });
    }

    pub(crate) fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    pub fn with_state<T>(&self, work: impl FnOnce(&mut GroupState) -> T) -> T {
        work(&mut self.state.lock().expect("group state lock"))
    }

    /// Applies a change; returns the version to wait for before answering.
    pub(crate) fn mutate(&self, work: impl FnOnce(&mut GroupState)) -> u64 {
        let mut state = self.state.lock().expect("group state lock");
        work(&mut state);
        self.version_after(&state)
    }

    /// Applies a change that returns a value; the flusher is woken if progress changed, but
    /// the caller does not wait for it.
    pub(crate) fn mutate_value<T>(&self, work: impl FnOnce(&mut GroupState) -> T) -> T {
        let mut state = self.state.lock().expect("group state lock");
        let value = work(&mut state);
        self.version_after(&state);
        value
    }

    pub(crate) fn mutate_result<T>(
        &self,
        work: impl FnOnce(&mut GroupState) -> Result<T, GroupError>,
    ) -> Result<(T, u64), GroupError> {
        let mut state = self.state.lock().expect("group state lock");
        let value = work(&mut state)?;
        Ok((value, self.version_after(&state)))
    }

    fn version_after(&self, state: &GroupState) -> u64 {
        if state.has_dirty() {
            let version = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
            self.flush_wake.notify_one();
            version
        } else {
            self.requested.load(Ordering::Acquire)
        }
    }

    /// Waits until the store holds every change up to `version`.
    pub(crate) async fn wait_durable(&self, version: u64) -> Result<(), GroupError> {
        let mut receiver = self.durability.subscribe();
        let state = receiver
            .wait_for(|d| d.durable >= version || d.failed >= version)
            .await
            .map_err(|_| GroupError::Store(StoreError::Backend("the group was deleted".into())))?
            .clone();
        if state.durable >= version {
            Ok(())
        } else if state.retriable {
            Err(GroupError::Store(StoreError::Unavailable(state.error)))
        } else {
            Err(GroupError::Store(StoreError::Backend(state.error)))
        }
    }

    /// Saves whatever is dirty now, outside the flusher (used at shutdown).
    pub(crate) async fn flush_now(&self, inner: &Inner) -> Result<(), GroupError> {
        let version = self.requested.load(Ordering::Acquire);
        save(inner, self).await;
        self.wait_durable(version).await
    }

    pub fn config(&self) -> GroupConfig {
        self.with_state(|state| state.config().clone())
    }

    pub fn is_push(&self) -> bool {
        self.with_state(|state| state.config().push.is_some())
    }

    pub fn partition_count(&self) -> u32 {
        self.with_state(|state| state.partition_count())
    }

    pub(crate) fn set_config(self: &Arc<Self>, inner: &Arc<Inner>, config: GroupConfig) {
        let push_changed = self.with_state(|state| {
            let changed = state.config().push != config.push;
            state.set_config(config);
            changed
        });
        if push_changed {
            // Restart only the pusher; the flusher is the first task and keeps running.
            let mut tasks = self.tasks.lock().expect("tasks lock");
            for task in tasks.drain(1..) {
                task.abort();
            }
            drop(tasks);
            self.start_push(inner);
        }
        self.changed.notify_waiters();
    }

    pub(crate) fn membership_changed(&self) {
        self.changed.notify_waiters();
    }

    pub(crate) fn record_acks(&self, outcome: &AckOutcome) {
        let labels = [
            ("topic", self.topic.to_string()),
            ("group", self.group.to_string()),
        ];
        metrics::counter!(names::ACKED, &labels).increment(u64::from(outcome.acked));
        let histogram = metrics::histogram!(names::ACK_LATENCY, &labels);
        for &latency_ms in &outcome.latencies_ms {
            histogram.record(latency_ms as f64 / 1_000.0);
        }
    }

    pub(crate) fn labels(&self) -> [(&'static str, String); 2] {
        [
            ("topic", self.topic.to_string()),
            ("group", self.group.to_string()),
        ]
    }

    /// Deadlines and sessions: run by the service's ticker.
    pub(crate) fn tick(self: &Arc<Self>, inner: &Arc<Inner>, now_ms: i64) {
        let (expired, version) = {
            let mut state = self.state.lock().expect("group state lock");
            let expired = state.expire(now_ms);
            let version = self.version_after(&state);
            (expired, version)
        };
        let _ = version;
        if expired.events > 0 || !expired.members.is_empty() {
            metrics::counter!(names::EXPIRED, &self.labels()).increment(u64::from(expired.events));
            for member in &expired.members {
                tracing::info!(topic = %self.topic, group = %self.group, member = %member,
                    "member session expired; partitions reassigned");
            }
            self.changed.notify_waiters();
        }
        if !expired.dead_letters.is_empty() {
            drop(dead_letters::spawn_writes(
                inner,
                self,
                expired.dead_letters,
            ));
        }
        let ready_now =
            self.with_state(|state| state.next_due_ms().is_some_and(|due| due <= now_ms));
        if ready_now {
            self.changed.notify_waiters();
        }
    }

    pub(crate) async fn describe(&self, inner: &Inner) -> Result<GroupDescription, GroupError> {
        let (snapshot, config, created_ms): (GroupSnapshot, GroupConfig, i64) =
            self.with_state(|state| (state.snapshot(), state.config().clone(), state.created_ms()));
        let rates = self.rates(inner.now_ms(), &snapshot);
        describe_snapshot(
            inner,
            &self.topic,
            &self.group,
            snapshot,
            config,
            created_ms,
            rates,
        )
        .await
    }

    /// Rates over the samples of the last ten seconds or so (taken once a second).
    fn rates(&self, now_ms: i64, snapshot: &GroupSnapshot) -> (f64, f64) {
        let samples = self.rate_samples.lock().expect("rate samples lock");
        let Some(&(then_ms, delivered, acked)) = samples.front() else {
            return (0.0, 0.0);
        };
        let seconds = (now_ms - then_ms) as f64 / 1_000.0;
        if seconds <= 0.0 {
            return (0.0, 0.0);
        }
        (
            snapshot.counters.delivered.saturating_sub(delivered) as f64 / seconds,
            snapshot.counters.acked.saturating_sub(acked) as f64 / seconds,
        )
    }

    /// Updates the lag and unacked gauges; run about once a second.
    pub(crate) async fn refresh_gauges(&self, inner: &Inner) {
        let Ok(description) = self.describe(inner).await else {
            return;
        };
        {
            let mut samples = self.rate_samples.lock().expect("rate samples lock");
            samples.push_back((
                inner.now_ms(),
                description.counters.delivered,
                description.counters.acked,
            ));
            while samples.len() > 11 {
                samples.pop_front();
            }
        }
        let labels = self.labels();
        metrics::gauge!(names::UNACKED, &labels).set(description.unacked_events as f64);
        metrics::gauge!(names::MEMBERS, &labels).set(description.members.len() as f64);
        for partition in &description.partitions {
            let labels = [
                ("topic", self.topic.to_string()),
                ("group", self.group.to_string()),
                ("partition", partition.partition.to_string()),
            ];
            metrics::gauge!(names::LAG_EVENTS, &labels).set(partition.lag_events as f64);
            metrics::gauge!(names::LAG_SECONDS, &labels).set(partition.lag_seconds);
        }
    }
}

/// A group's description from a snapshot of its state.
pub(crate) async fn describe_snapshot(
    inner: &Inner,
    topic_name: &TopicName,
    group: &GroupName,
    snapshot: GroupSnapshot,
    config: GroupConfig,
    created_ms: i64,
    (delivery_rate_per_s, ack_rate_per_s): (f64, f64),
) -> Result<GroupDescription, GroupError> {
    let topic = inner.log.describe_topic(topic_name).await?;
    let now_ms = inner.now_ms();
    let mut partitions = Vec::with_capacity(snapshot.partitions.len());
    let mut total_lag = 0;
    for status in &snapshot.partitions {
        let end_offset = topic
            .partitions
            .get(status.partition as usize)
            .map_or(status.committed, |p| p.next_offset);
        let lag_events = end_offset.saturating_sub(status.committed);
        total_lag += lag_events;
        let lag_seconds = if lag_events == 0 {
            0.0
        } else {
            match inner
                .log
                .read(
                    topic_name,
                    status.partition,
                    ReadFrom::Offset(status.committed),
                    ReadLimits {
                        events_max: 1,
                        bytes_max: 1,
                    },
                )
                .await
            {
                Ok(batch) => batch.events.first().map_or(0.0, |event| {
                    (now_ms - event.append_time_ms).max(0) as f64 / 1_000.0
                }),
                Err(LogError::OffsetOutOfRange { .. }) => 0.0,
                Err(error) => return Err(error.into()),
            }
        };
        partitions.push(PartitionStatus {
            partition: status.partition,
            owner: status.owner.clone(),
            committed: status.committed,
            end_offset,
            lag_events,
            lag_seconds,
            in_flight: status.in_flight,
            waiting_retry: status.waiting_retry,
            pending_replays: status.pending_replays,
        });
    }
    Ok(GroupDescription {
        topic: topic_name.clone(),
        dead_letter_topic: config.dead_letter_topic_for(topic_name, group),
        group: group.clone(),
        config,
        created_ms,
        generation: snapshot.generation,
        members: snapshot.members,
        partitions,
        lag_events: total_lag,
        unacked_events: snapshot.unacked_events,
        counters: snapshot.counters,
        delivery_rate_per_s,
        ack_rate_per_s,
    })
}

/// Saves the dirty progress of `handle` once and publishes the outcome.
async fn save(inner: &Inner, handle: &GroupHandle) {
    let (progress, version) = {
        let mut state = handle.state.lock().expect("group state lock");
        (state.take_dirty(), handle.requested.load(Ordering::Acquire))
    };
    if progress.is_empty() {
        handle
            .durability
            .send_modify(|d| d.durable = d.durable.max(version));
        return;
    }
    match inner
        .store
        .save_progress(&handle.topic, &handle.group, handle.fence, &progress)
        .await
    {
        Ok(()) => handle
            .durability
            .send_modify(|d| d.durable = d.durable.max(version)),
        Err(error @ StoreError::Fenced { .. }) => {
            tracing::warn!(topic = %handle.topic, group = %handle.group, %error,
                "the group's progress was not saved: another instance coordinates it now");
            inner.fenced_out(handle);
        }
        Err(error) => {
            tracing::error!(topic = %handle.topic, group = %handle.group, %error,
                "saving the group's progress failed; acks wait for the next attempt");
            handle.with_state(|state| {
                state.mark_dirty(progress.iter().map(|p| p.partition));
            });
            let retriable = matches!(error, StoreError::Unavailable(_));
            handle.durability.send_modify(|d| {
                d.failed = d.failed.max(version);
                d.error = format!("saving the group's progress failed: {error}");
                d.retriable = retriable;
            });
        }
    }
}

/// Group commit for progress: every change that arrives while a save runs is saved by the
/// next one, so the store sees one commit per round, not one per request.
async fn flusher(inner: std::sync::Weak<Inner>, handle: std::sync::Weak<GroupHandle>) {
    loop {
        let wake = {
            let Some(handle) = handle.upgrade() else {
                return;
            };
            // Register interest before checking, so a wake-up between the two is not lost.
            let handle_for_wait = handle.clone();
            async move { handle_for_wait.flush_wake.notified().await }
        };
        wake.await;
        let (Some(inner), Some(handle)) = (inner.upgrade(), handle.upgrade()) else {
            return;
        };
        save(&inner, &handle).await;
    }
}
