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
//! - **Several instances sharing the log** behave as one: each follows the audit topic and
//!   applies what the others append (a ticker every 250 ms, and every writer before and after
//!   its own append). A revision applies only as the next version of its set, on every instance
//!   alike, so of two changes made at once from the same version the first in the log wins
//!   and the other is refused everywhere (its writer answers [`FlagServiceError::Conflict`]).
//! - **Notifications**: every new version is broadcast as a [`SetChanged`] (SSE streams, local
//!   evaluators).
//! - **Files** ([`files`]): a flagd file or a directory of them loaded into a set and polled for
//!   changes.

pub mod exposures;
pub mod files;
pub mod usage;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock, Weak};

use proteus_cache::TieredCache;
use proteus_flags::{DefinitionErrors, FlagSet};
use proteus_flagsets::audit::AuditRecord;
use proteus_flagsets::schedule::{SCHEDULE_AHEAD_MS_MAX, SCHEDULES_MAX};
use proteus_flagsets::stale::{SetLifecycle, StaleCriteria, StaleFlag};
use proteus_flagsets::{
    Change, ChangeError, FlagSetName, Revision, Schedule, ScheduleEnded, ScheduleOutcome,
    ValidationMode, audit,
};
use proteus_log::port::{FollowStep, Log, follow_step};
use proteus_log::{LogError, Offset, ReadFrom, ReadLimits, TopicName};
use serde_json::Value;
use tokio::sync::broadcast;

pub use proteus_flagsets;

/// Locks `mutex`. A poisoned lock only means a thread panicked while holding it; every value
/// behind these locks is changed by whole assignments, so it is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Most revisions one history request returns.
pub const HISTORY_LIMIT_MAX: usize = 1_000;
/// Notifications a slow subscriber may fall behind by before it is told it lagged (it then
/// refetches everything, which is always correct).
const CHANGES_QUEUE_MAX: usize = 1_024;
/// How often changes from other instances and due schedules are looked for, in ms: another
/// instance's change applies here, and a scheduled change applies, at most this late.
const TICK_MS: u64 = 250;
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

/// How the service records what evaluations do, and where it caches revisions.
#[derive(Clone, Default)]
pub struct FlagServiceConfig {
    pub exposures: exposures::ExposureConfig,
    pub usage: usage::UsageConfig,
    /// Where revisions read back from the audit topic (history, versions, rollbacks) are
    /// cached: an in-process L1, and Redis shared by the instances when it has an L2. A
    /// revision never changes, so entries are never invalidated. `None`: every read goes to
    /// the log.
    pub revision_cache: Option<TieredCache>,
}

impl std::fmt::Debug for FlagServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlagServiceConfig")
            .field("exposures", &self.exposures)
            .field("usage", &self.usage)
            .field(
                "revision_cache",
                &self
                    .revision_cache
                    .as_ref()
                    .map(|c| c.config().name.clone()),
            )
            .finish()
    }
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
    /// The next offset of the audit topic to process: every record before it was applied (or
    /// refused) here. Moved only with the writer lock held.
    followed: Mutex<Offset>,
    writer: tokio::sync::Mutex<()>,
    changes: broadcast::Sender<SetChanged>,
    exposures: exposures::ExposureSink,
    /// Pending scheduled changes by id.
    schedules: Mutex<BTreeMap<String, Schedule>>,
    usage: usage::UsageTracker,
    /// Per set, since when each flag exists and serves one outcome to everyone.
    lifecycles: Mutex<HashMap<FlagSetName, SetLifecycle>>,
    revision_cache: Option<TieredCache>,
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
                followed: Mutex::new(0),
                writer: tokio::sync::Mutex::new(()),
                changes,
                exposures,
                schedules: Mutex::default(),
                usage,
                lifecycles: Mutex::default(),
                revision_cache: config.revision_cache,
            }),
        };
        {
            let _writer = service.inner.writer.lock().await;
            service.follow_until(None, true).await?;
        }
        spawn_ticker(Arc::downgrade(&service.inner));
        spawn_usage_flusher(Arc::downgrade(&service.inner), config.usage.flush_ms);
        Ok(service)
    }

    /// Applies (or refuses) every record of the audit topic from the followed offset on and
    /// before `end` (to the topic's end when `None`), in order. With `strict` (at open), a
    /// record that cannot be read fails the call; otherwise it is skipped with an error logged.
    /// Called with the writer lock.
    async fn follow_until(
        &self,
        end: Option<Offset>,
        strict: bool,
    ) -> Result<(), FlagServiceError> {
        loop {
            let from = *lock(&self.inner.followed);
            let step = follow_step(
                self.inner.log.as_ref(),
                &self.inner.topic,
                from,
                end,
                REPLAY_EVENTS_PER_READ,
            )
            .await?;
            let (events, next_offset) = match step {
                FollowStep::CaughtUp => return Ok(()),
                FollowStep::Missing { from, reason } => {
                    return Err(FlagServiceError::CorruptAudit {
                        offset: from,
                        reason,
                    });
                }
                FollowStep::Records {
                    events,
                    next_offset,
                } => (events, next_offset),
            };
            self.apply_records(&events, strict)?;
            let mut followed = lock(&self.inner.followed);
            *followed = (*followed).max(next_offset);
        }
    }

    /// Applies `events`, in order. Called with the writer lock.
    fn apply_records(
        &self,
        events: &[proteus_log::port::StoredEvent],
        strict: bool,
    ) -> Result<(), FlagServiceError> {
        for stored in events {
            match audit::record_from_event_json(&stored.json) {
                Ok(Some(record)) => {
                    self.apply_record(stored.offset, record);
                }
                Ok(None) => {}
                Err(reason) if strict => {
                    return Err(FlagServiceError::CorruptAudit {
                        offset: stored.offset,
                        reason,
                    });
                }
                Err(reason) => tracing::error!(offset = stored.offset, %reason,
                    "a flag-set audit record cannot be read; skipped"),
            }
        }
        Ok(())
    }

    /// What one audit record at `offset` does here: a schedule is added or ended; a revision
    /// becomes its set's next version if its version is exactly that (else another instance's
    /// concurrent change came first and it is refused, on every instance alike), its compiled
    /// set is published and announced. Returns whether it applied.
    fn apply_record(&self, offset: Offset, record: AuditRecord) -> bool {
        let revision = match record {
            AuditRecord::Scheduled(schedule) => {
                lock(&self.inner.schedules).insert(schedule.id.clone(), schedule);
                return true;
            }
            AuditRecord::ScheduleEnded(ended) => {
                lock(&self.inner.schedules).remove(&ended.id);
                return true;
            }
            AuditRecord::Revision(revision) => revision,
        };
        let set = revision.set.clone();
        {
            let mut index = lock(&self.inner.index);
            let versions = index.entry(set.clone()).or_default();
            if revision.version != versions.offsets.len() as u64 + 1 {
                tracing::warn!(%set, offset, version = revision.version,
                    latest = versions.offsets.len(),
                    "a flag-set revision made concurrently from an older version is refused");
                return false;
            }
            versions.offsets.push(offset);
        }
        {
            let mut lifecycles = lock(&self.inner.lifecycles);
            if revision.document.is_null() {
                lifecycles.remove(&set);
            } else {
                lifecycles
                    .entry(set.clone())
                    .or_default()
                    .observe(&revision.document, revision.time_ms);
            }
        }
        // A version was valid when it was written; the engine may have become stricter since.
        // Keep serving the last version that still compiles, and say so.
        let live = match live_set(&revision, &self.inner.usage) {
            Ok(live) => live,
            Err(errors) => {
                tracing::error!(%set, version = revision.version, %errors,
                    "a stored flag-set version no longer compiles; the previous version stays in use");
                return true;
            }
        };
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
                Some(live) => sets.insert(set, Arc::new(live)),
                None => sets.remove(&set),
            };
        }
        // No subscriber is fine.
        let _ = self.inner.changes.send(notice);
        true
    }

    /// Appends one record of this instance to the audit topic, durably, applies what other
    /// instances appended before it, then applies it by the same rule as theirs; returns
    /// whether it applied. Called with the writer lock.
    async fn append_own(
        &self,
        event: proteus_log::Event,
        record: AuditRecord,
    ) -> Result<bool, FlagServiceError> {
        let receipts = self
            .inner
            .log
            .append(&self.inner.topic, vec![event])
            .await?;
        let Some(receipt) = receipts.first() else {
            return Err(FlagServiceError::InvalidChange(
                "the log acknowledged no audit record".into(),
            ));
        };
        let offset = receipt.offset;
        if receipt.duplicate {
            // Record ids are `set@version`: another instance appended this version first. Its
            // record is applied; this one was never written.
            self.follow_until(Some(offset + 1), false).await?;
            return Ok(false);
        }
        self.follow_until(Some(offset), false).await?;
        let applied = self.apply_record(offset, record);
        let mut followed = lock(&self.inner.followed);
        *followed = (*followed).max(offset + 1);
        Ok(applied)
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
        self.apply_with_writer(set, change, author, validation, expected_version)
            .await
    }

    /// [`FlagService::apply`], the writer lock held by the caller.
    async fn apply_with_writer(
        &self,
        set: &FlagSetName,
        change: Change,
        author: Author,
        validation: ValidationMode,
        expected_version: Option<u64>,
    ) -> Result<Option<Revision>, FlagServiceError> {
        // Changes other instances made are applied first, so this one starts from them.
        self.follow_until(None, false).await?;
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
        if !revision.document.is_null() {
            proteus_flagsets::compile(&revision.document, revision.validation)
                .map_err(FlagServiceError::InvalidDefinitions)?;
        }
        let event = audit::to_event(&revision).map_err(FlagServiceError::InvalidChange)?;
        if !self
            .append_own(event, AuditRecord::Revision(revision.clone()))
            .await?
        {
            return Err(FlagServiceError::Conflict {
                set: set.clone(),
                expected: revision.version - 1,
                actual: self.latest_version(set),
            });
        }
        Ok(Some(revision))
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
        self.read_revision(set, version, offset).await
    }

    /// Version `version` of `set`, at `offset` of the audit topic: from the revision cache
    /// when it holds it (checked to be that version of that set), else from the log.
    async fn read_revision(
        &self,
        set: &FlagSetName,
        version: u64,
        offset: Offset,
    ) -> Result<Revision, FlagServiceError> {
        let Some(cache) = &self.inner.revision_cache else {
            return Ok(self.read_revision_event(offset).await?.0);
        };
        let key = format!("flagset:{set}@{version}");
        if let Some(json) = cache.get(&key).await
            && let Ok(Some(revision)) = audit::from_event_json(&json)
            && revision.set == *set
            && revision.version == version
        {
            return Ok(revision);
        }
        let token = cache.fill_token(&key);
        let (revision, json) = self.read_revision_event(offset).await?;
        cache.fill(&key, json, token).await;
        Ok(revision)
    }

    /// The revision at `offset` of the audit topic, with its event's JSON.
    async fn read_revision_event(
        &self,
        offset: Offset,
    ) -> Result<(Revision, bytes::Bytes), FlagServiceError> {
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
        let revision = audit::from_event_json(&stored.json)
            .map_err(corrupt)?
            .ok_or_else(|| corrupt("it is not a flag-set revision".into()))?;
        Ok((revision, stored.json))
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
        // `offsets[i]` holds version i + 1.
        for (at, offset) in offsets.into_iter().enumerate().rev() {
            let revision = self.read_revision(set, at as u64 + 1, offset).await?;
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

/// Every [`TICK_MS`] until the service is dropped: applies what other instances appended to
/// the audit topic, then the schedules that are due. (A read per tick rather than a task
/// waiting on the log: nothing holds the log between ticks, so dropping the service releases
/// it at once.)
fn spawn_ticker(service: Weak<Inner>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(TICK_MS)).await;
            let Some(inner) = service.upgrade() else {
                return;
            };
            let service = FlagService { inner };
            let followed = {
                let _writer = service.inner.writer.lock().await;
                service.follow_until(None, false).await
            };
            match followed {
                Ok(()) => service.apply_due_schedules().await,
                Err(error) => tracing::warn!(%error,
                    "flag-set changes from other instances cannot be read; retrying"),
            }
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
        self.append_own(
            audit::schedule_event(&schedule).map_err(FlagServiceError::InvalidChange)?,
            AuditRecord::Scheduled(schedule.clone()),
        )
        .await?;
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
        self.append_own(
            audit::schedule_ended_event(&ended).map_err(FlagServiceError::InvalidChange)?,
            AuditRecord::ScheduleEnded(ended.clone()),
        )
        .await?;
        Ok(())
    }

    /// Applies every schedule that is due, oldest first, and records how each ended. A crash
    /// between a schedule's revision and its end record applies it again after the restart,
    /// which changes nothing for puts and state changes (the document is already that way).
    /// The revision and the end record are written under one hold of the writer lock, so a
    /// cancellation (a paused rollout) sees the schedule either pending or ended, never applied
    /// and still pending.
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
            let _writer = self.inner.writer.lock().await;
            // Another instance may have applied and ended it since (followed in `apply`), or
            // someone cancelled it.
            if !lock(&self.inner.schedules).contains_key(&schedule.id) {
                continue;
            }
            let comment = match &schedule.comment {
                Some(comment) => format!("scheduled change {}: {comment}", schedule.id),
                None => format!("scheduled change {}", schedule.id),
            };
            let author = Author {
                actor: schedule.actor.clone(),
                comment: Some(comment),
            };
            let outcome = match self
                .apply_with_writer(
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
                // Another instance changed the set at the same moment (most likely applying
                // this schedule too): its end record arrives through the log; if not, the next
                // tick tries again from the new version.
                Err(FlagServiceError::Conflict { .. }) => continue,
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
