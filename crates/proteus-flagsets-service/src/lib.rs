//! The flag-set runtime.
//!
//! - **Durable store: the log.** Every change becomes a [`Revision`] appended to the audit
//!   topic (`proteus.flagsets.audit`) before it takes effect; [`FlagService::open`] replays that
//!   topic to rebuild every set. A change acknowledged to its author therefore survives kill -9,
//!   and the audit trail cannot disagree with the state.
//! - **Evaluation: compiled once per version.** Each version is compiled into a
//!   [`proteus_flags::FlagSet`] and published as an immutable [`LiveSet`]; readers take an
//!   `Arc` under a read lock held for a pointer copy, so evaluations never wait for a change.
//! - **Changes are serialised** by one writer lock and may carry the version they expect
//!   (optimistic concurrency: a stale `expected_version` is [`FlagServiceError::Conflict`]).
//! - **Notifications**: every new version is broadcast as a [`SetChanged`] (SSE streams, local
//!   evaluators).
//! - **Files** ([`files`]): a flagd file or a directory of them loaded into a set and polled for
//!   changes.

pub mod exposures;
pub mod files;
pub mod usage;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock, Weak};

use proteus_flags::{DefinitionErrors, FlagSet};
use proteus_flagsets::audit::AuditRecord;
use proteus_flagsets::schedule::{SCHEDULE_AHEAD_MS_MAX, SCHEDULES_MAX};
use proteus_flagsets::stale::{SetLifecycle, StaleCriteria, StaleFlag};
use proteus_flagsets::{
    Change, ChangeError, FlagSetName, Revision, Schedule, ScheduleEnded, ScheduleOutcome,
    ValidationMode, audit,
};
use proteus_log::port::Log;
use proteus_log::{LogError, Offset, ReadFrom, ReadLimits, TopicName};
use serde_json::Value;
use tokio::sync::broadcast;

pub use proteus_flagsets;

/// Most revisions one history request returns.
pub const HISTORY_LIMIT_MAX: usize = 1_000;
/// Notifications a slow subscriber may fall behind by before it is told it lagged (it then
/// refetches everything, which is always correct).
const CHANGES_QUEUE_MAX: usize = 1_024;
/// How often due schedules are looked for: a scheduled change applies at most this late.
const SCHEDULER_TICK_MS: u64 = 250;
/// Audit events read per request while replaying the topic at start-up.
const REPLAY_EVENTS_PER_READ: u32 = 1_000;

/// One version of a flag set, compiled and ready to evaluate. Immutable: a change publishes a
/// new one.
#[derive(Debug)]
pub struct LiveSet {
    pub name: FlagSetName,
    pub version: u64,
    pub updated_ms: i64,
    pub validation: ValidationMode,
    /// The flagd document of this version.
    pub document: Value,
    pub flags: FlagSet,
    /// Problems `Flagd` validation tolerated, as `path: reason` sentences.
    pub warnings: Vec<String>,
    /// Changes with every version (OFREP bulk `ETag`).
    pub etag: String,
    /// Last-evaluation slots, by flag index (`FlagRef::index`), shared by every version.
    usage: Vec<usage::UsageSlot>,
}

impl LiveSet {
    /// Records that `flag` (of this set) was evaluated at `now_ms`, for the stale-flag report.
    /// A relaxed load and at most one store a second: cheap enough for every evaluation.
    #[inline]
    pub fn record_evaluation(&self, flag: proteus_flags::FlagRef<'_>, now_ms: i64) {
        if let Some(slot) = self.usage.get(flag.index()) {
            usage::record(slot, now_ms);
        }
    }
}

/// How the service records what evaluations do.
#[derive(Clone, Debug, Default)]
pub struct FlagServiceConfig {
    pub exposures: exposures::ExposureConfig,
    pub usage: usage::UsageConfig,
}

/// The stale flags of a set (see [`proteus_flagsets::stale`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct StaleReport {
    pub set: FlagSetName,
    /// Since when evaluations have been recorded.
    pub tracked_since_ms: i64,
    pub criteria: StaleCriteria,
    pub flags: Vec<StaleFlag>,
}

/// Sent to subscribers after each new version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetChanged {
    pub set: FlagSetName,
    /// The new version; the set was deleted when `deleted`.
    pub version: u64,
    pub deleted: bool,
    pub etag: String,
    pub updated_ms: i64,
}

/// Who made a change and why, for the audit record.
#[derive(Clone, Debug, Default)]
pub struct Author {
    /// An API key's name, `file:PATH`, or `anonymous`.
    pub actor: String,
    pub comment: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FlagServiceError {
    #[error("flag set '{set}' does not exist")]
    SetNotFound { set: FlagSetName },
    #[error("flag '{key}' does not exist in flag set '{set}'")]
    FlagNotFound { set: FlagSetName, key: String },
    #[error("flag set '{set}' has no version {version}: its versions are 1 to {latest}")]
    VersionNotFound {
        set: FlagSetName,
        version: u64,
        latest: u64,
    },
    #[error("flag set '{set}' is at version {actual}, not the expected {expected}")]
    Conflict {
        set: FlagSetName,
        expected: u64,
        actual: u64,
    },
    #[error("flag set '{set}' has no pending schedule '{id}'")]
    ScheduleNotFound { set: FlagSetName, id: String },
    #[error("{0}")]
    InvalidChange(String),
    #[error("the flag definitions are invalid: {0}")]
    InvalidDefinitions(DefinitionErrors),
    #[error("the flag set store (the log) failed: {0}")]
    Log(#[from] LogError),
    #[error("audit event {offset} of the flag-set topic cannot be read: {reason}")]
    CorruptAudit { offset: Offset, reason: String },
}

/// The service's error for a change that does not apply to `set`.
fn change_error(set: &FlagSetName, error: ChangeError) -> FlagServiceError {
    match error {
        ChangeError::SetNotFound { .. } => FlagServiceError::SetNotFound { set: set.clone() },
        ChangeError::FlagNotFound { key, .. } => FlagServiceError::FlagNotFound {
            set: set.clone(),
            key,
        },
        ChangeError::Invalid(reason) => FlagServiceError::InvalidChange(reason),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Where each version of a set is in the audit topic: `offsets[v - 1]` holds version `v`.
#[derive(Default)]
struct SetIndex {
    offsets: Vec<Offset>,
}

struct Inner {
    log: Arc<dyn Log>,
    topic: TopicName,
    sets: RwLock<HashMap<FlagSetName, Arc<LiveSet>>>,
    index: Mutex<HashMap<FlagSetName, SetIndex>>,
    writer: tokio::sync::Mutex<()>,
    changes: broadcast::Sender<SetChanged>,
    exposures: exposures::ExposureSink,
    /// Pending scheduled changes by id.
    schedules: Mutex<BTreeMap<String, Schedule>>,
    usage: usage::UsageTracker,
    /// Per set, since when each flag exists and serves one outcome to everyone.
    lifecycles: Mutex<HashMap<FlagSetName, SetLifecycle>>,
}

#[derive(Clone)]
pub struct FlagService {
    inner: Arc<Inner>,
}

fn live_set(
    revision: &Revision,
    usage: &usage::UsageTracker,
) -> Result<Option<LiveSet>, DefinitionErrors> {
    if revision.document.is_null() {
        return Ok(None);
    }
    let compiled = proteus_flagsets::compile(&revision.document, revision.validation)?;
    // `flags()` yields flags in index order.
    let usage = usage.slots(&revision.set, compiled.flag_set.flags().map(|f| f.key()));
    Ok(Some(LiveSet {
        name: revision.set.clone(),
        version: revision.version,
        updated_ms: revision.time_ms,
        validation: revision.validation,
        document: revision.document.clone(),
        flags: compiled.flag_set,
        warnings: compiled.warnings.iter().map(ToString::to_string).collect(),
        etag: format!("\"{}.{}\"", revision.set, revision.version),
        usage,
    }))
}

impl FlagService {
    /// Opens the service over `log`: creates the audit topic if needed and replays it.
    /// Exposures are not recorded.
    pub async fn open(log: Arc<dyn Log>) -> Result<FlagService, FlagServiceError> {
        FlagService::open_with(log, FlagServiceConfig::default()).await
    }

    /// Like [`FlagService::open`], recording exposures and usage as `config` says.
    pub async fn open_with(
        log: Arc<dyn Log>,
        config: FlagServiceConfig,
    ) -> Result<FlagService, FlagServiceError> {
        let exposures = exposures::ExposureSink::start(log.clone(), config.exposures).await?;
        let usage = usage::UsageTracker::open(log.clone(), now_ms()).await?;
        let topic = audit::topic();
        match log.describe_topic(&topic).await {
            Ok(_) => {}
            Err(LogError::TopicNotFound { .. }) => {
                log.put_topic(&topic, audit::topic_config()).await?;
            }
            Err(e) => return Err(e.into()),
        }
        let (changes, _) = broadcast::channel(CHANGES_QUEUE_MAX);
        let service = FlagService {
            inner: Arc::new(Inner {
                log,
                topic,
                sets: RwLock::default(),
                index: Mutex::default(),
                writer: tokio::sync::Mutex::new(()),
                changes,
                exposures,
                schedules: Mutex::default(),
                usage,
                lifecycles: Mutex::default(),
            }),
        };
        service.replay().await?;
        spawn_scheduler(Arc::downgrade(&service.inner));
        spawn_usage_flusher(Arc::downgrade(&service.inner), config.usage.flush_ms);
        Ok(service)
    }

    async fn replay(&self) -> Result<(), FlagServiceError> {
        let limits = ReadLimits {
            events_max: REPLAY_EVENTS_PER_READ,
            bytes_max: proteus_log::port::READ_BYTES_MAX,
        };
        let mut from = 0;
        let mut sets = HashMap::new();
        let mut index: HashMap<FlagSetName, SetIndex> = HashMap::new();
        let mut schedules = BTreeMap::new();
        let mut lifecycles: HashMap<FlagSetName, SetLifecycle> = HashMap::new();
        loop {
            let batch = self
                .inner
                .log
                .read(&self.inner.topic, 0, ReadFrom::Offset(from), limits)
                .await?;
            if batch.events.is_empty() {
                break;
            }
            for stored in &batch.events {
                let corrupt = |reason: String| FlagServiceError::CorruptAudit {
                    offset: stored.offset,
                    reason,
                };
                let revision = match audit::record_from_event_json(&stored.json).map_err(corrupt)? {
                    Some(AuditRecord::Revision(revision)) => revision,
                    Some(AuditRecord::Scheduled(schedule)) => {
                        schedules.insert(schedule.id.clone(), schedule);
                        continue;
                    }
                    Some(AuditRecord::ScheduleEnded(ended)) => {
                        schedules.remove(&ended.id);
                        continue;
                    }
                    None => continue,
                };
                let versions = index.entry(revision.set.clone()).or_default();
                if revision.version != versions.offsets.len() as u64 + 1 {
                    return Err(corrupt(format!(
                        "it holds version {} of flag set '{}' where version {} was expected",
                        revision.version,
                        revision.set,
                        versions.offsets.len() + 1
                    )));
                }
                versions.offsets.push(stored.offset);
                lifecycles
                    .entry(revision.set.clone())
                    .or_default()
                    .observe(&revision.document, revision.time_ms);
                // A version was valid when it was written; the engine may have become stricter
                // since. Keep serving the last version that still compiles, and say so.
                match live_set(&revision, &self.inner.usage) {
                    Ok(Some(live)) => {
                        sets.insert(revision.set.clone(), Arc::new(live));
                    }
                    Ok(None) => {
                        sets.remove(&revision.set);
                    }
                    Err(errors) => tracing::error!(
                        set = %revision.set, version = revision.version, %errors,
                        "a stored flag-set version no longer compiles; the previous version stays in use"
                    ),
                }
            }
            from = batch.next_offset;
        }
        lifecycles.retain(|set, _| sets.contains_key(set));
        *self
            .inner
            .lifecycles
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = lifecycles;
        *self.inner.sets.write().unwrap_or_else(|p| p.into_inner()) = sets;
        *self.inner.index.lock().unwrap_or_else(|p| p.into_inner()) = index;
        *self
            .inner
            .schedules
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = schedules;
        Ok(())
    }

    /// The current version of `set`, if it exists.
    pub fn get(&self, set: &FlagSetName) -> Option<Arc<LiveSet>> {
        self.inner
            .sets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(set)
            .cloned()
    }

    /// Every existing set, by name.
    pub fn list(&self) -> Vec<Arc<LiveSet>> {
        let mut sets: Vec<_> = self
            .inner
            .sets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        sets.sort_by(|a, b| a.name.cmp(&b.name));
        sets
    }

    /// Where evaluations report exposures.
    pub fn exposures(&self) -> &exposures::ExposureSink {
        &self.inner.exposures
    }

    /// New versions from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SetChanged> {
        self.inner.changes.subscribe()
    }

    fn latest_version(&self, set: &FlagSetName) -> u64 {
        self.inner
            .index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(set)
            .map_or(0, |i| i.offsets.len() as u64)
    }

    /// Applies `change` to `set` as a new version, durably, then publishes it. Returns the new
    /// version's revision, or `None` when the change left the document as it was (no version
    /// is made: reloading an unchanged file is not a change).
    pub async fn apply(
        &self,
        set: &FlagSetName,
        change: Change,
        author: Author,
        validation: ValidationMode,
        expected_version: Option<u64>,
    ) -> Result<Option<Revision>, FlagServiceError> {
        let _writer = self.inner.writer.lock().await;
        let current = self.get(set);
        let actual = current.as_ref().map_or(0, |c| c.version);
        if let Some(expected) = expected_version
            && expected != actual
        {
            return Err(FlagServiceError::Conflict {
                set: set.clone(),
                expected,
                actual,
            });
        }
        let document =
            proteus_flagsets::apply(set.as_str(), current.as_ref().map(|c| &c.document), &change)
                .map_err(|e| change_error(set, e))?;
        if let Some(current) = &current
            && current.document == document
            && current.validation == validation
            && !matches!(change, Change::Rollback { .. })
        {
            return Ok(None);
        }
        let bytes = serde_json::to_vec(&document).map_or(0, |b| b.len());
        if bytes > audit::DOCUMENT_BYTES_MAX {
            return Err(FlagServiceError::InvalidChange(format!(
                "the flag set document would be {bytes} bytes, more than the {} allowed",
                audit::DOCUMENT_BYTES_MAX
            )));
        }
        let revision = Revision::new(
            set.clone(),
            self.latest_version(set) + 1,
            now_ms(),
            author.actor,
            author.comment,
            &change,
            validation,
            current.as_ref().map(|c| &c.document),
            document,
        );
        // Validate before anything is written: an invalid version never reaches the log.
        let live =
            live_set(&revision, &self.inner.usage).map_err(FlagServiceError::InvalidDefinitions)?;
        let event = audit::to_event(&revision).map_err(FlagServiceError::InvalidChange)?;
        let offset = self.append_audit(event).await?;
        self.inner
            .index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(set.clone())
            .or_default()
            .offsets
            .push(offset);
        {
            let mut lifecycles = self
                .inner
                .lifecycles
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if revision.document.is_null() {
                lifecycles.remove(set);
            } else {
                lifecycles
                    .entry(set.clone())
                    .or_default()
                    .observe(&revision.document, revision.time_ms);
            }
        }
        let notice = SetChanged {
            set: set.clone(),
            version: revision.version,
            deleted: live.is_none(),
            etag: live.as_ref().map(|l| l.etag.clone()).unwrap_or_default(),
            updated_ms: revision.time_ms,
        };
        {
            let mut sets = self.inner.sets.write().unwrap_or_else(|p| p.into_inner());
            match live {
                Some(live) => sets.insert(set.clone(), Arc::new(live)),
                None => sets.remove(set),
            };
        }
        // No subscriber is fine.
        let _ = self.inner.changes.send(notice);
        Ok(Some(revision))
    }

    /// Appends one event to the audit topic, durably; returns its offset.
    async fn append_audit(&self, event: proteus_log::Event) -> Result<Offset, FlagServiceError> {
        let receipts = self
            .inner
            .log
            .append(&self.inner.topic, vec![event])
            .await?;
        Ok(receipts.first().map_or(0, |r| r.offset))
    }

    /// Version `version` of `set`, read back from the audit topic.
    pub async fn revision(
        &self,
        set: &FlagSetName,
        version: u64,
    ) -> Result<Revision, FlagServiceError> {
        let offset = {
            let index = self.inner.index.lock().unwrap_or_else(|p| p.into_inner());
            let offsets = index.get(set).map(|i| i.offsets.as_slice()).unwrap_or(&[]);
            if offsets.is_empty() {
                return Err(FlagServiceError::SetNotFound { set: set.clone() });
            }
            match version.checked_sub(1).and_then(|v| offsets.get(v as usize)) {
                Some(offset) => *offset,
                None => {
                    return Err(FlagServiceError::VersionNotFound {
                        set: set.clone(),
                        version,
                        latest: offsets.len() as u64,
                    });
                }
            }
        };
        self.read_revision(offset).await
    }

    async fn read_revision(&self, offset: Offset) -> Result<Revision, FlagServiceError> {
        let limits = ReadLimits {
            events_max: 1,
            bytes_max: proteus_log::port::READ_BYTES_MAX,
        };
        let batch = self
            .inner
            .log
            .read(&self.inner.topic, 0, ReadFrom::Offset(offset), limits)
            .await?;
        let corrupt = |reason: String| FlagServiceError::CorruptAudit { offset, reason };
        let stored = batch
            .events
            .into_iter()
            .find(|e| e.offset == offset)
            .ok_or_else(|| corrupt("it is missing from the topic".into()))?;
        audit::from_event_json(&stored.json)
            .map_err(corrupt)?
            .ok_or_else(|| corrupt("it is not a flag-set revision".into()))
    }

    /// The newest revisions of `set` first, only those that changed `flag` when given, at most
    /// `limit` (capped at [`HISTORY_LIMIT_MAX`]), older than `before_version` when given.
    pub async fn history(
        &self,
        set: &FlagSetName,
        flag: Option<&str>,
        before_version: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Revision>, FlagServiceError> {
        let offsets: Vec<Offset> = {
            let index = self.inner.index.lock().unwrap_or_else(|p| p.into_inner());
            let Some(set_index) = index.get(set) else {
                return Err(FlagServiceError::SetNotFound { set: set.clone() });
            };
            let end = before_version.map_or(set_index.offsets.len(), |v| {
                (v.saturating_sub(1) as usize).min(set_index.offsets.len())
            });
            set_index.offsets[..end].to_vec()
        };
        let limit = limit.clamp(1, HISTORY_LIMIT_MAX);
        let mut revisions = Vec::new();
        for offset in offsets.into_iter().rev() {
            let revision = self.read_revision(offset).await?;
            if flag.is_none_or(|key| revision.touches(key)) {
                revisions.push(revision);
                if revisions.len() == limit {
                    break;
                }
            }
        }
        Ok(revisions)
    }

    /// Makes version `to_version`'s document current again, as a new version.
    pub async fn rollback(
        &self,
        set: &FlagSetName,
        to_version: u64,
        author: Author,
        expected_version: Option<u64>,
    ) -> Result<Revision, FlagServiceError> {
        let target = self.revision(set, to_version).await?;
        if target.document.is_null() {
            return Err(FlagServiceError::InvalidChange(format!(
                "version {to_version} of flag set '{set}' is its deletion; restore a version before it"
            )));
        }
        let change = Change::Rollback {
            to_version,
            document: target.document,
        };
        let revision = self
            .apply(set, change, author, target.validation, expected_version)
            .await?;
        // A rollback always makes a version (apply never skips one).
        revision
            .ok_or_else(|| FlagServiceError::InvalidChange("the rollback made no version".into()))
    }
}

impl FlagService {
    /// Restores flag `key` of `set` to its definition at `version` (deleting it if it did not
    /// exist then), as a new version; the other flags keep their current definitions.
    pub async fn restore_flag(
        &self,
        set: &FlagSetName,
        key: &str,
        version: u64,
        author: Author,
        expected_version: Option<u64>,
    ) -> Result<Option<Revision>, FlagServiceError> {
        let target = self.revision(set, version).await?;
        let change = match target.document.get("flags").and_then(|f| f.get(key)) {
            Some(flag) => Change::PutFlag {
                key: key.to_owned(),
                flag: flag.clone(),
            },
            None => Change::DeleteFlag {
                key: key.to_owned(),
            },
        };
        let validation = self
            .get(set)
            .map_or(target.validation, |current| current.validation);
        self.apply(set, change, author, validation, expected_version)
            .await
    }
}

/// Writes moved usage slots every `flush_ms` until the service is dropped.
fn spawn_usage_flusher(service: Weak<Inner>, flush_ms: u64) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(flush_ms.max(1))).await;
            let Some(inner) = service.upgrade() else {
                return;
            };
            FlagService { inner }.flush_usage().await;
        }
    });
}

impl FlagService {
    /// Writes when flags were last evaluated to the usage topic, if that moved since the last
    /// flush. Runs every `flush_ms`; call it at shutdown so the last interval is kept too.
    pub async fn flush_usage(&self) {
        let live_flags = self
            .list()
            .iter()
            .map(|set| {
                let keys = set.flags.flags().map(|f| f.key().to_owned()).collect();
                (set.name.clone(), keys)
            })
            .collect();
        self.inner.usage.retain(&live_flags);
        if let Err(error) = self.inner.usage.flush(now_ms()).await {
            tracing::warn!(%error, "flag usage could not be written; the next flush retries");
        }
    }

    /// The flags of `set` that look stale by `criteria` at `now_ms`.
    pub fn stale_flags(
        &self,
        set: &FlagSetName,
        criteria: StaleCriteria,
        now_ms: i64,
    ) -> Result<StaleReport, FlagServiceError> {
        let lifecycles = self
            .inner
            .lifecycles
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let lifecycle = lifecycles
            .get(set)
            .ok_or_else(|| FlagServiceError::SetNotFound { set: set.clone() })?;
        let usage = &self.inner.usage;
        let tracked_since_ms = usage.tracked_since_ms();
        let flags = proteus_flagsets::stale::stale_flags(
            lifecycle,
            |key| usage.last_evaluated_ms(set, key),
            tracked_since_ms,
            criteria,
            now_ms,
        );
        Ok(StaleReport {
            set: set.clone(),
            tracked_since_ms,
            criteria,
            flags,
        })
    }
}

/// Applies due schedules every [`SCHEDULER_TICK_MS`] until the service is dropped.
fn spawn_scheduler(service: Weak<Inner>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(SCHEDULER_TICK_MS)).await;
            let Some(inner) = service.upgrade() else {
                return;
            };
            FlagService { inner }.apply_due_schedules().await;
        }
    });
}

impl FlagService {
    /// Schedules `change` to `set` at `at_ms`. It must apply to the set as it is now (a change
    /// that could not apply today is refused now rather than failing silently later).
    pub async fn schedule(
        &self,
        set: &FlagSetName,
        change: Change,
        at_ms: i64,
        author: Author,
        validation: ValidationMode,
    ) -> Result<Schedule, FlagServiceError> {
        let now = now_ms();
        if at_ms > now + SCHEDULE_AHEAD_MS_MAX {
            return Err(FlagServiceError::InvalidChange(format!(
                "a change can be scheduled at most {} days ahead",
                SCHEDULE_AHEAD_MS_MAX / 86_400_000
            )));
        }
        if matches!(change, Change::Rollback { .. }) {
            return Err(FlagServiceError::InvalidChange(
                "rollbacks cannot be scheduled; schedule a put of the document instead".into(),
            ));
        }
        let _writer = self.inner.writer.lock().await;
        if self
            .inner
            .schedules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
            >= SCHEDULES_MAX
        {
            return Err(FlagServiceError::InvalidChange(format!(
                "{SCHEDULES_MAX} changes are already scheduled, the most this server holds"
            )));
        }
        // Check it against the current document, as `apply` would.
        let current = self.get(set);
        let document =
            proteus_flagsets::apply(set.as_str(), current.as_ref().map(|c| &c.document), &change)
                .map_err(|e| change_error(set, e))?;
        if !document.is_null() {
            proteus_flagsets::compile(&document, validation)
                .map_err(FlagServiceError::InvalidDefinitions)?;
        }
        let schedule = Schedule {
            id: uuid::Uuid::now_v7().to_string(),
            set: set.clone(),
            at_ms,
            change,
            validation,
            actor: author.actor,
            comment: author.comment,
            created_ms: now,
        };
        self.append_audit(
            audit::schedule_event(&schedule).map_err(FlagServiceError::InvalidChange)?,
        )
        .await?;
        self.inner
            .schedules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(schedule.id.clone(), schedule.clone());
        Ok(schedule)
    }

    /// The pending schedules of `set`, soonest first.
    pub fn schedules(&self, set: &FlagSetName) -> Vec<Schedule> {
        let mut pending: Vec<Schedule> = self
            .inner
            .schedules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| &s.set == set)
            .cloned()
            .collect();
        pending.sort_by_key(|s| (s.at_ms, s.id.clone()));
        pending
    }

    /// Cancels a pending schedule.
    pub async fn cancel_schedule(
        &self,
        set: &FlagSetName,
        id: &str,
        author: Author,
    ) -> Result<(), FlagServiceError> {
        let _writer = self.inner.writer.lock().await;
        let pending = self
            .inner
            .schedules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .is_some_and(|s| &s.set == set);
        if !pending {
            return Err(FlagServiceError::ScheduleNotFound {
                set: set.clone(),
                id: id.to_owned(),
            });
        }
        self.end_schedule(
            set,
            id,
            ScheduleOutcome::Cancelled {
                actor: author.actor,
            },
        )
        .await
    }

    async fn end_schedule(
        &self,
        set: &FlagSetName,
        id: &str,
        outcome: ScheduleOutcome,
    ) -> Result<(), FlagServiceError> {
        let ended = ScheduleEnded {
            set: set.clone(),
            id: id.to_owned(),
            time_ms: now_ms(),
            outcome,
        };
        self.append_audit(
            audit::schedule_ended_event(&ended).map_err(FlagServiceError::InvalidChange)?,
        )
        .await?;
        self.inner
            .schedules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(())
    }

    /// Applies every schedule that is due, oldest first, and records how each ended. A crash
    /// between a schedule's revision and its end record applies it again after the restart,
    /// which changes nothing for puts and state changes (the document is already that way).
    async fn apply_due_schedules(&self) {
        let now = now_ms();
        let mut due: Vec<Schedule> = self
            .inner
            .schedules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.at_ms <= now)
            .cloned()
            .collect();
        due.sort_by_key(|s| (s.at_ms, s.id.clone()));
        for schedule in due {
            let comment = match &schedule.comment {
                Some(comment) => format!("scheduled change {}: {comment}", schedule.id),
                None => format!("scheduled change {}", schedule.id),
            };
            let author = Author {
                actor: schedule.actor.clone(),
                comment: Some(comment),
            };
            let outcome = match self
                .apply(
                    &schedule.set,
                    schedule.change.clone(),
                    author,
                    schedule.validation,
                    None,
                )
                .await
            {
                Ok(revision) => ScheduleOutcome::Applied {
                    version: revision.map(|r| r.version),
                },
                // The log is away: leave it pending and try again on the next tick.
                Err(FlagServiceError::Log(error)) => {
                    tracing::warn!(id = %schedule.id, %error, "a due scheduled change could not be applied yet");
                    continue;
                }
                Err(error) => ScheduleOutcome::Failed {
                    reason: error.to_string(),
                },
            };
            if let ScheduleOutcome::Failed { reason } = &outcome {
                tracing::error!(set = %schedule.set, id = %schedule.id, %reason, "a scheduled change failed");
            }
            if let Err(error) = self
                .end_schedule(&schedule.set, &schedule.id, outcome)
                .await
            {
                tracing::warn!(id = %schedule.id, %error, "recording the end of a scheduled change failed");
            }
        }
    }
}
