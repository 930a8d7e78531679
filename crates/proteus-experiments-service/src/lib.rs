//! The experiments runtime.
//!
//! - **The log is the store.** Every definition and lifecycle transition is appended (fsync) to
//!   the topic `proteus.experiments` as the experiment's whole new state before it takes effect;
//!   [`ExperimentService::open`] replays the topic (the last record of an id wins). A change
//!   acknowledged to its author survives kill -9.
//! - **One aggregation task per started experiment** reads `proteus.flags.exposures` and the
//!   topics its metrics name, from the experiment's start (or its checkpoint), in bounded batches
//!   merged by append time across topics and partitions (so a backlog is replayed roughly in the
//!   order it was written and no topic runs ahead of the others by more than one batch). It feeds
//!   the domain's [`ExperimentAggregator`], whose own limits (`units_max`, `unit_events_max`)
//!   bound its memory. Event times are capped at the clock, so one event from the future cannot
//!   make everything else late.
//! - **Units and checkpoints live in the key-value store** ([`KvStore`], one namespace per
//!   experiment, see [`namespace_of`]). Every `checkpoint_interval_ms` (when something was
//!   consumed), whenever [`UNITS_PER_COMMIT_MAX`] units changed, when the task stops and when
//!   the service closes, the changed units (`s/<unit>` once settled, `p/<unit>` before) and the
//!   checkpoint (the aggregator without its units, the offsets consumed, the results history)
//!   are written in one atomic commit, checked against the previous checkpoint so two
//!   instances cannot both advance one experiment. Settled units then leave memory; the next
//!   events that name one load it back. Start-up reads the checkpoint and the unsettled units
//!   and resumes from the offsets. A failed commit reloads the last committed state, so
//!   nothing is counted twice or lost.
//! - Exposures count from the start to the stop of the experiment; metric events keep counting
//!   after the stop (for units already exposed, within their windows) until the experiment is
//!   decided, when the task catches up once more, checkpoints and ends.
//! - **Decisions roll out through the flag-set service**: `decide` with `roll_out` applies the
//!   domain's [`rollout_change`] as an audited flag-set revision before the decision is recorded.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use proteus_experiments::{
    Decision, DefinitionError, DefinitionErrors, EXPOSURE_EVENT_TYPE, EXPOSURE_TOPIC, Experiment,
    ExperimentAggregator, ExperimentDefinition, ExperimentResults, Exposure, GuardrailBreach,
    LifecycleError, SequentialLooks, Status, UnitState, guardrail_breaches, rollout_change,
};
use proteus_flagsets::{Change, FlagSetName};
use proteus_flagsets_service::{Author, FlagService, FlagServiceError};
use proteus_kv::lease::LeaseState;
use proteus_kv::{
    GET_KEYS_MAX, KvCheck, KvCommit, KvError, KvStore, KvWrite, Namespace, SCAN_ENTRIES_MAX,
};
use proteus_log::port::{FollowStep, Log, StoredEvent, follow_step};
use proteus_log::{Cursor, Event, LogError, Offset, ReadFrom, ReadLimits, TopicConfig, TopicName};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

pub use proteus_experiments;

/// The topic experiment changes go to.
pub const TOPIC: &str = "proteus.experiments";
/// The CloudEvent type of an experiment change.
pub const EVENT_TYPE: &str = "dev.proteus.experiment.changed";
/// Most experiments kept (every state).
pub const EXPERIMENTS_MAX: usize = 1_000;
/// Most experiments running or stopped (each has an aggregation task) at once.
pub const ACTIVE_MAX: usize = 100;
/// Largest checkpoint (the aggregator without its units, offsets, history), in bytes.
pub const CHECKPOINT_BYTES_MAX: usize = proteus_kv::VALUE_BYTES_MAX;
/// Most units changed between two commits: a batch stops early and commits when it reaches
/// this (each unit is at most two writes, so a commit stays within the store's limit).
pub const UNITS_PER_COMMIT_MAX: usize = 4_000;
/// Events applied per hold of an experiment's lock, so results requests wait little.
const APPLY_EVENTS_PER_LOCK: usize = 256;
/// The key-value namespace of the runner leases, one key per experiment id.
pub const RUNNERS_NAMESPACE: &str = "experiments.runners";
/// Shortest pause of an instance that follows another's aggregation, in ms.
const FOLLOW_POLL_MS_MIN: u64 = 500;
/// Most commits one checkpoint makes to finish a compaction before the task reads on.
const COMPACTION_COMMITS_MAX: usize = 1_000;
/// Key of the checkpoint in an experiment's namespace.
const CHECKPOINT_KEY: &[u8] = b"checkpoint";
const SETTLED_PREFIX: &str = "s/";
const UNSETTLED_PREFIX: &str = "p/";
/// Largest change event, in bytes: a definition (256 KiB at most) with room.
const CHANGE_EVENT_BYTES_MAX: u32 = 1024 * 1024;
/// Events read per request while replaying the topics at start-up.
const REPLAY_EVENTS_PER_READ: u32 = 1_000;

/// Locks `mutex`. A poisoned lock only means a thread panicked while holding it; every value
/// behind these locks is replaced whole, so it is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How the aggregation tasks read and checkpoint.
#[derive(Clone, Debug)]
pub struct ExperimentServiceConfig {
    /// Pause of a task that found nothing new, in ms.
    pub poll_ms: u64,
    /// Shortest time between two checkpoints of one experiment, in ms (0: after every batch).
    pub checkpoint_interval_ms: u64,
    /// Most events read from one partition per batch.
    pub read_events_max: u32,
    /// Most bytes read from one partition per batch.
    pub read_bytes_max: u32,
    /// Shortest time between two points of an experiment's results history (what
    /// `proteus experiment results --chart` draws), in ms.
    pub history_interval_ms: u64,
    /// This process in the runner leases (`experiments.runners`): with a shared key-value
    /// store, each experiment is aggregated by the one instance holding its lease; the others
    /// serve its results from the committed checkpoint.
    pub instance_id: String,
    /// How long a runner lease lasts without renewal, in ms (renewed every third of it).
    pub lease_ttl_ms: u64,
}

impl Default for ExperimentServiceConfig {
    fn default() -> Self {
        ExperimentServiceConfig {
            poll_ms: 250,
            checkpoint_interval_ms: 10_000,
            read_events_max: 1_000,
            read_bytes_max: 1024 * 1024,
            history_interval_ms: 60_000,
            instance_id: uuid::Uuid::now_v7().simple().to_string(),
            lease_ttl_ms: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExperimentServiceError {
    #[error("the experiment definition is invalid: {0}")]
    Definition(DefinitionErrors),
    #[error("experiment '{id}' does not exist; list them with GET /v1/experiments")]
    NotFound { id: String },
    #[error(
        "experiment '{id}' already exists ({state}); choose another id, or redefine a draft with PUT /v1/experiments/{id}"
    )]
    AlreadyExists { id: String, state: &'static str },
    #[error("{error}")]
    Lifecycle {
        error: LifecycleError,
        /// What the experiment's state allows instead.
        allowed_actions: Vec<&'static str>,
    },
    #[error("the variant cannot be rolled out: {0}")]
    Rollout(String),
    #[error(
        "{count} {what} experiments exist, the most is {max}; decide (or stop) some before adding more"
    )]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("the flag-set service refused the rollout: {0}")]
    Flag(#[from] FlagServiceError),
    #[error("the experiments' store (the log) failed: {0}")]
    Log(#[from] LogError),
    #[error("the experiments' key-value store failed: {0}")]
    Store(#[from] KvError),
    #[error(
        "experiment '{id}' was changed through another instance at the same time, so this change was not applied; read the experiment again and retry if it still applies"
    )]
    Conflict { id: String },
    #[error("an experiment change cannot be encoded as an event: {0}")]
    Encoding(String),
    #[error("event {offset} of the topic '{topic}' cannot be replayed: {reason}")]
    Corrupt {
        topic: &'static str,
        offset: Offset,
        reason: String,
    },
}

/// One record of the `proteus.experiments` topic: the experiment after a change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// `create`, `redefine`, `start`, `stop`, `decide` or `delete` (the experiment as it was).
    pub action: String,
    pub time_ms: i64,
    pub actor: String,
    pub experiment: Experiment,
    /// The experiment's previous record that this change was computed from. Every instance
    /// applies the change only if that record is still the experiment's last applied one, so
    /// of two changes made at once through two instances from the same state, the first in
    /// the log applies and the second is refused everywhere (its writer answers
    /// [`ExperimentServiceError::Conflict`]). Absent in records written before conditional
    /// changes, which always apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub based_on: Option<BasedOn>,
}

/// See [`ChangeRecord::based_on`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasedOn {
    /// The offset of that record in `proteus.experiments`; `None` when the id had none.
    pub offset: Option<Offset>,
}

impl ChangeRecord {
    /// Whether the record applies after what `applied` says was applied last (see
    /// [`ChangeRecord::based_on`]). The same answer on every instance: it depends only on the
    /// records before it in the log.
    fn applies_after(&self, applied: &HashMap<String, Offset>) -> bool {
        self.based_on.is_none_or(|based_on| {
            applied.get(&self.experiment.definition.id).copied() == based_on.offset
        })
    }

    /// The record of a `proteus.experiments` event, `None` for other events.
    fn decode(stored: &StoredEvent) -> Result<Option<ChangeRecord>, String> {
        let envelope: Value = serde_json::from_slice(&stored.json).map_err(|e| e.to_string())?;
        if envelope["type"] != EVENT_TYPE {
            return Ok(None);
        }
        serde_json::from_value(envelope["data"].clone())
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// Offsets consumed: topic → partition → next offset.
pub type Positions = BTreeMap<String, BTreeMap<u32, Offset>>;

/// An experiment's checkpoint in its key-value namespace (its units are stored beside it).
#[derive(Debug, Clone, Deserialize)]
struct Checkpoint {
    started_ms: i64,
    time_ms: i64,
    positions: Positions,
    aggregator: ExperimentAggregator,
    #[serde(default)]
    history: Vec<HistoryPoint>,
    #[serde(default)]
    looks: SequentialLooks,
}

/// [`Checkpoint`] as it is written, borrowing from the live state.
#[derive(Serialize)]
struct CheckpointRef<'a> {
    started_ms: i64,
    time_ms: i64,
    positions: &'a Positions,
    aggregator: &'a ExperimentAggregator,
    history: &'a [HistoryPoint],
    looks: &'a SequentialLooks,
}

/// The key-value namespace of an experiment: `experiment.` then its id, with `_` written `__`
/// and an upper-case letter `_` and its lower case (namespaces are lower case, ids are not).
pub fn namespace_of(id: &str) -> Result<Namespace, KvError> {
    let mut name = String::with_capacity(11 + 2 * id.len());
    name.push_str("experiment.");
    for c in id.chars() {
        match c {
            '_' => name.push_str("__"),
            c if c.is_ascii_uppercase() => {
                name.push('_');
                name.push(c.to_ascii_lowercase());
            }
            c => name.push(c),
        }
    }
    Namespace::parse(&name)
}

fn unit_key(prefix: &str, unit: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + unit.len());
    key.extend_from_slice(prefix.as_bytes());
    key.extend_from_slice(unit.as_bytes());
    key
}

fn decode_unit(key: &[u8], value: &[u8]) -> Result<UnitState, KvError> {
    serde_json::from_slice(value).map_err(|e| {
        KvError::Corrupt(format!(
            "unit {} of an experiment cannot be decoded: {e}",
            String::from_utf8_lossy(key)
        ))
    })
}

/// The checkpoint in `bytes` when it belongs to the start at `started_ms` (an earlier life of
/// the same id does not count); an undecodable one is logged and ignored.
fn decode_checkpoint(id: &str, bytes: &[u8], started_ms: i64) -> Option<Checkpoint> {
    match serde_json::from_slice::<Checkpoint>(bytes) {
        Ok(c) if c.started_ms == started_ms => Some(c),
        Ok(_) => None,
        Err(error) => {
            tracing::warn!(experiment = %id, %error,
                "the experiment's checkpoint cannot be decoded; it is not used");
            None
        }
    }
}

/// Clears the namespace when it holds a checkpoint of an earlier start of `id` (a deletion cut
/// short before its clear). Units are only ever committed with a checkpoint and a namespace is
/// cleared whole, so there is nothing else an earlier life can have left. A checkpoint of this
/// start (`started_ms`) is kept: the aggregation may already have committed one.
async fn clear_earlier_life(
    kv: &dyn KvStore,
    namespace: &Namespace,
    id: &str,
    started_ms: i64,
) -> Result<(), KvError> {
    let stored = kv
        .get_many(namespace, &[CHECKPOINT_KEY.to_vec()])
        .await?
        .pop()
        .flatten();
    if let Some(bytes) = stored
        && decode_checkpoint(id, &bytes, started_ms).is_none()
    {
        kv.clear(namespace).await?;
    }
    Ok(())
}

/// An experiment's last committed state: its checkpoint and unsettled units; or a fresh
/// aggregator, after clearing what an earlier start left, when there is no usable checkpoint.
async fn load_state(
    kv: &dyn KvStore,
    namespace: &Namespace,
    definition: &ExperimentDefinition,
    started_ms: i64,
) -> Result<Shared, KvError> {
    let stored = kv
        .get_many(namespace, &[CHECKPOINT_KEY.to_vec()])
        .await?
        .pop()
        .flatten();
    let checkpoint = stored
        .as_deref()
        .and_then(|bytes| decode_checkpoint(&definition.id, bytes, started_ms));
    let Some(checkpoint) = checkpoint else {
        if stored.is_some() {
            kv.clear(namespace).await?;
        }
        return Ok(Shared::new(
            ExperimentAggregator::new(definition),
            namespace.clone(),
        ));
    };
    let mut aggregator = checkpoint.aggregator;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = kv
            .scan(
                namespace,
                UNSETTLED_PREFIX.as_bytes(),
                after.as_deref(),
                SCAN_ENTRIES_MAX,
            )
            .await?;
        let full = page.len() == SCAN_ENTRIES_MAX;
        for (key, value) in page {
            let unit = decode_unit(&key, &value)?;
            let name = String::from_utf8_lossy(&key[UNSETTLED_PREFIX.len()..]).into_owned();
            aggregator.load_unit(name, unit);
            after = Some(key);
        }
        if !full {
            break;
        }
    }
    Ok(Shared {
        aggregator,
        positions: checkpoint.positions,
        dirty: false,
        stale: false,
        checkpointed_ms: checkpoint.time_ms,
        history: checkpoint.history,
        looks: checkpoint.looks,
        committed: stored,
        namespace: namespace.clone(),
    })
}

/// Most points of one experiment's results history; past it, every other point is dropped,
/// so the history keeps covering the whole experiment at a coarser step.
pub const HISTORY_POINTS_MAX: usize = 500;

/// The primary metric's lift of every treatment arm at one time: a point of the chart of lift
/// with intervals over time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    pub time_ms: i64,
    pub arms: Vec<ArmLift>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmLift {
    pub variant: String,
    pub n: u64,
    /// `relative` (share of the control's mean) or `absolute` (when the control's mean is 0).
    pub scale: String,
    pub lift: f64,
    /// Unbounded ends (one-sided or not yet bounded) are absent.
    pub lower: Option<f64>,
    pub upper: Option<f64>,
}

impl HistoryPoint {
    /// The primary metric's lifts in `results`; `None` when no treatment arm has one yet.
    fn from_results(results: &ExperimentResults, primary: &str, time_ms: i64) -> Option<Self> {
        let metric = results.metrics.iter().find(|m| m.metric == primary)?;
        let arms: Vec<ArmLift> = metric
            .arms
            .iter()
            .filter_map(|arm| {
                let comparison = arm.comparison.as_ref()?.ready()?;
                let (scale, lift) = match &comparison.lift_relative {
                    Some(relative) => ("relative", relative),
                    None => ("absolute", &comparison.lift_absolute),
                };
                Some(ArmLift {
                    variant: arm.variant.clone(),
                    n: arm.n,
                    scale: scale.to_owned(),
                    lift: lift.estimate,
                    lower: lift.interval.lower,
                    upper: lift.interval.upper,
                })
            })
            .collect();
        (!arms.is_empty()).then_some(HistoryPoint { time_ms, arms })
    }
}

/// An experiment as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentInfo {
    pub id: String,
    pub state: &'static str,
    /// What may be done next: `redefine`, `start`, `stop`, `decide`.
    pub allowed_actions: Vec<&'static str>,
    pub updated_ms: i64,
    pub definition: ExperimentDefinition,
    pub status: Status,
}

/// The outcome of a decision.
#[derive(Debug, Clone, Serialize)]
pub struct Decided {
    pub experiment: ExperimentInfo,
    /// The flag set's new version when the variant was rolled out (`None`: not rolled out, or
    /// the flag already served it).
    pub flag_set_version: Option<u64>,
}

fn allowed_actions(status: &Status) -> Vec<&'static str> {
    match status {
        Status::Draft => vec!["redefine", "start", "delete"],
        Status::Running { .. } => vec!["stop"],
        Status::Stopped { .. } => vec!["decide"],
        Status::Decided { .. } => vec!["delete"],
    }
}

/// Who a guardrail halt's changes are recorded as.
pub const HALT_ACTOR: &str = "proteus.experiments.guardrails";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The aggregation state of one started experiment, shared by its task and the results.
struct Shared {
    aggregator: ExperimentAggregator,
    positions: Positions,
    /// Consumed since the last checkpoint.
    dirty: bool,
    /// A commit failed and the last committed state could not be loaded back yet: nothing is
    /// consumed until it is.
    stale: bool,
    checkpointed_ms: i64,
    history: Vec<HistoryPoint>,
    /// The running minimum p-values and intersected intervals of the sequential analysis.
    looks: SequentialLooks,
    /// The checkpoint as last committed (what the next commit checks), `None` before the first.
    committed: Option<Vec<u8>>,
    namespace: Namespace,
}

impl Shared {
    fn new(aggregator: ExperimentAggregator, namespace: Namespace) -> Self {
        Shared {
            aggregator,
            positions: Positions::new(),
            dirty: false,
            stale: false,
            checkpointed_ms: 0,
            history: Vec::new(),
            looks: SequentialLooks::default(),
            committed: None,
            namespace,
        }
    }

    /// Adds a point of the results history when the last is `interval_ms` old.
    fn record_history(&mut self, definition: &ExperimentDefinition, now: i64, interval_ms: u64) {
        let due = self
            .history
            .last()
            .is_none_or(|last| now.saturating_sub(last.time_ms) >= interval_ms as i64);
        if !due {
            return;
        }
        let results =
            proteus_experiments::results_with_looks(definition, &self.aggregator, now, &self.looks);
        if let Some(point) = HistoryPoint::from_results(&results, &definition.primary_metric, now) {
            if self.history.len() >= HISTORY_POINTS_MAX {
                let mut index = 0;
                self.history.retain(|_| {
                    index += 1;
                    index % 2 == 0
                });
            }
            self.history.push(point);
            self.dirty = true;
        }
    }
}

struct Entry {
    experiment: Experiment,
    updated_ms: i64,
    shared: Option<Arc<Mutex<Shared>>>,
}

impl Entry {
    fn info(&self) -> ExperimentInfo {
        ExperimentInfo {
            id: self.experiment.definition.id.clone(),
            state: self.experiment.status.name(),
            allowed_actions: allowed_actions(&self.experiment.status),
            updated_ms: self.updated_ms,
            definition: self.experiment.definition.clone(),
            status: self.experiment.status.clone(),
        }
    }
}

struct Inner {
    log: Arc<dyn Log>,
    kv: Arc<dyn KvStore>,
    flags: FlagService,
    topic: TopicName,
    config: ExperimentServiceConfig,
    experiments: RwLock<BTreeMap<String, Entry>>,
    /// Per experiment, the offset of the last record of `proteus.experiments` applied here.
    applied: Mutex<HashMap<String, Offset>>,
    /// The next offset of `proteus.experiments` to process: every record before it was applied
    /// or refused here. Moved only with the writer lock held.
    followed: Mutex<Offset>,
    writer: tokio::sync::Mutex<()>,
    closing: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The experiments, shared by the HTTP handlers. Cloning shares them.
#[derive(Clone)]
pub struct ExperimentService {
    inner: Arc<Inner>,
}

async fn ensure_topic(
    log: &dyn Log,
    topic: &TopicName,
    event_bytes_max: u32,
) -> Result<(), LogError> {
    match log.describe_topic(topic).await {
        Ok(_) => Ok(()),
        Err(LogError::TopicNotFound { .. }) => {
            let config = TopicConfig {
                partitions: 1,
                retention_ms: None,
                retention_bytes: None,
                event_bytes_max,
                ..TopicConfig::default()
            };
            log.put_topic(topic, config).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Reads every event of partition 0 of `topic`, in order, handing each to `each`.
/// Reads `topic`'s partition 0 from the start through `each`; returns the offset after it.
async fn replay_topic(
    log: &dyn Log,
    topic: &TopicName,
    mut each: impl FnMut(&StoredEvent) -> Result<(), ExperimentServiceError>,
) -> Result<Offset, ExperimentServiceError> {
    let limits = ReadLimits {
        events_max: REPLAY_EVENTS_PER_READ,
        bytes_max: proteus_log::port::READ_BYTES_MAX,
    };
    let mut from = 0;
    loop {
        let batch = log.read(topic, 0, ReadFrom::Offset(from), limits).await?;
        if batch.events.is_empty() {
            return Ok(from.max(batch.next_offset));
        }
        for stored in &batch.events {
            each(stored)?;
        }
        from = batch.next_offset;
    }
}

fn definition_error(path: &str, message: String) -> ExperimentServiceError {
    ExperimentServiceError::Definition(DefinitionErrors(vec![DefinitionError {
        path: path.to_owned(),
        message,
    }]))
}

impl ExperimentService {
    /// Creates the topic if needed, replays the experiments, loads the checkpoint and unsettled
    /// units of every started one from `kv`, and starts their aggregation tasks.
    pub async fn open(
        log: Arc<dyn Log>,
        kv: Arc<dyn KvStore>,
        flags: FlagService,
        config: ExperimentServiceConfig,
    ) -> Result<ExperimentService, ExperimentServiceError> {
        let topic = TopicName::parse(TOPIC).expect("the experiments topic name is valid");
        ensure_topic(log.as_ref(), &topic, CHANGE_EVENT_BYTES_MAX).await?;

        let mut experiments: BTreeMap<String, Entry> = BTreeMap::new();
        let mut applied: HashMap<String, Offset> = HashMap::new();
        let replayed = replay_topic(log.as_ref(), &topic, |stored| {
            let record =
                ChangeRecord::decode(stored).map_err(|reason| ExperimentServiceError::Corrupt {
                    topic: TOPIC,
                    offset: stored.offset,
                    reason,
                })?;
            let Some(record) = record else {
                return Ok(());
            };
            if !record.applies_after(&applied) {
                return Ok(());
            }
            applied.insert(record.experiment.definition.id.clone(), stored.offset);
            if record.action == "delete" {
                experiments.remove(&record.experiment.definition.id);
                return Ok(());
            }
            experiments.insert(
                record.experiment.definition.id.clone(),
                Entry {
                    experiment: record.experiment,
                    updated_ms: record.time_ms,
                    shared: None,
                },
            );
            Ok(())
        })
        .await?;

        for (id, entry) in experiments.iter_mut() {
            let Some(started_ms) = started_ms(&entry.experiment.status) else {
                continue;
            };
            let namespace = namespace_of(id)?;
            let shared = load_state(
                kv.as_ref(),
                &namespace,
                &entry.experiment.definition,
                started_ms,
            )
            .await?;
            entry.shared = Some(Arc::new(Mutex::new(shared)));
        }

        let (closing, _) = watch::channel(false);
        let service = ExperimentService {
            inner: Arc::new(Inner {
                log,
                kv,
                flags,
                topic,
                config,
                experiments: RwLock::new(experiments),
                applied: Mutex::new(applied),
                followed: Mutex::new(replayed),
                writer: tokio::sync::Mutex::new(()),
                closing,
                tasks: Mutex::default(),
            }),
        };
        let started: Vec<(String, Arc<Mutex<Shared>>)> = service
            .read()
            .iter()
            .filter_map(|(id, e)| e.shared.clone().map(|s| (id.clone(), s)))
            .collect();
        for (id, shared) in started {
            service.spawn(id, shared);
        }
        // Changes made through other instances sharing the log arrive through it.
        let follower = tokio::spawn(follow_changes(
            Arc::downgrade(&service.inner),
            service.inner.closing.subscribe(),
        ));
        lock(&service.inner.tasks).push(follower);
        Ok(service)
    }

    /// Applies one change record another instance appended at `offset`, unless it was
    /// computed from an older state than the one applied here (then every instance refuses
    /// it). Called with the writer lock.
    async fn apply_followed(
        &self,
        offset: Offset,
        record: ChangeRecord,
    ) -> Result<(), ExperimentServiceError> {
        let id = record.experiment.definition.id.clone();
        {
            let mut applied = lock(&self.inner.applied);
            if applied.get(&id).is_some_and(|&done| done >= offset) {
                return Ok(());
            }
            if !record.applies_after(&applied) {
                tracing::info!(experiment = %id, offset, action = %record.action,
                    "an experiment change made from an older state is refused");
                return Ok(());
            }
            applied.insert(id.clone(), offset);
        }
        if record.action == "delete" {
            self.write().remove(&id);
            return Ok(());
        }
        let has_task = self.read().get(&id).is_some_and(|e| e.shared.is_some());
        let shared = match started_ms(&record.experiment.status) {
            Some(started) if !has_task => {
                let state = load_state(
                    self.inner.kv.as_ref(),
                    &namespace_of(&id)?,
                    &record.experiment.definition,
                    started,
                )
                .await?;
                Some(Arc::new(Mutex::new(state)))
            }
            _ => None,
        };
        self.publish(record.experiment, record.time_ms, shared.clone());
        if let Some(shared) = shared {
            self.spawn(id, shared);
        }
        Ok(())
    }

    /// Applies (or refuses) every record of `proteus.experiments` not processed here yet, in
    /// order: those before `end`, or to the topic's end when `None`. Called with the writer
    /// lock.
    async fn follow_until(&self, end: Option<Offset>) -> Result<(), ExperimentServiceError> {
        loop {
            let from = *self.followed();
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
                    return Err(ExperimentServiceError::Corrupt {
                        topic: TOPIC,
                        offset: from,
                        reason,
                    });
                }
                FollowStep::Records {
                    events,
                    next_offset,
                } => (events, next_offset),
            };
            self.apply_batch(&events).await;
            let mut followed = self.followed();
            *followed = (*followed).max(next_offset);
        }
    }

    /// Applies `events`, in order. Called with the writer lock.
    async fn apply_batch(&self, events: &[StoredEvent]) {
        for stored in events {
            match ChangeRecord::decode(stored) {
                Ok(Some(record)) => {
                    if let Err(error) = self.apply_followed(stored.offset, record).await {
                        tracing::warn!(offset = stored.offset, %error,
                            "an experiment change from another instance could not be applied");
                    }
                }
                Ok(None) => {}
                Err(reason) => tracing::warn!(offset = stored.offset, %reason,
                    "an experiment change cannot be read; skipped"),
            }
        }
    }

    fn followed(&self) -> std::sync::MutexGuard<'_, Offset> {
        lock(&self.inner.followed)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.inner
            .experiments
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.inner
            .experiments
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn spawn(&self, id: String, shared: Arc<Mutex<Shared>>) {
        let task = tokio::spawn(run(
            Arc::downgrade(&self.inner),
            id,
            shared,
            self.inner.closing.subscribe(),
        ));
        let mut tasks = lock(&self.inner.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Every experiment, by id.
    pub fn list(&self) -> Vec<ExperimentInfo> {
        self.read().values().map(Entry::info).collect()
    }

    pub fn get(&self, id: &str) -> Result<ExperimentInfo, ExperimentServiceError> {
        self.read()
            .get(id)
            .map(Entry::info)
            .ok_or_else(|| ExperimentServiceError::NotFound { id: id.to_owned() })
    }

    /// The offsets the experiment's aggregation has consumed (`None` before it started).
    pub fn positions(&self, id: &str) -> Option<Positions> {
        let shared = self.read().get(id)?.shared.clone()?;
        let positions = lock(&shared).positions.clone();
        Some(positions)
    }

    /// Checks the definition against its flag as the flag set is now: the set and the flag
    /// exist and every arm is one of the flag's variants.
    fn check_flag(&self, definition: &ExperimentDefinition) -> Result<(), ExperimentServiceError> {
        let set = FlagSetName::parse(&definition.flag_set)
            .map_err(|e| definition_error("/flag_set", e.to_string()))?;
        let Some(live) = self.inner.flags.get(&set) else {
            return Err(definition_error(
                "/flag_set",
                format!(
                    "flag set '{set}' does not exist; push it first (`proteus flags push FILE --set {set}`)"
                ),
            ));
        };
        let Some(flag) = live.flags.flag(&definition.flag) else {
            let known: Vec<&str> = live.flags.flags().map(|f| f.key()).take(20).collect();
            return Err(definition_error(
                "/flag",
                format!(
                    "flag '{}' does not exist in flag set '{set}' (version {}); its flags: {}",
                    definition.flag,
                    live.version,
                    known.join(", ")
                ),
            ));
        };
        definition
            .validate(Some(flag))
            .map_err(ExperimentServiceError::Definition)
    }

    /// Appends the experiment's new state durably, based on its last record applied here (the
    /// caller holds the writer lock and computed `experiment` from that state). Records other
    /// instances appended before it are applied first; if one of them changed this experiment,
    /// this change is refused ([`ExperimentServiceError::Conflict`]), as every instance refuses
    /// it when it reads it.
    async fn append(
        &self,
        action: &str,
        actor: &str,
        time_ms: i64,
        experiment: &Experiment,
    ) -> Result<(), ExperimentServiceError> {
        let id = experiment.definition.id.clone();
        let based_on = BasedOn {
            offset: lock(&self.inner.applied).get(&id).copied(),
        };
        let record = ChangeRecord {
            action: action.to_owned(),
            time_ms,
            actor: actor.to_owned(),
            experiment: experiment.clone(),
            based_on: Some(based_on),
        };
        let event = json!({
            "specversion": "1.0",
            "id": uuid::Uuid::now_v7().to_string(),
            "source": "/proteus/experiments",
            "type": EVENT_TYPE,
            "subject": id,
            "datacontenttype": "application/json",
            "data": serde_json::to_value(&record)
                .map_err(|e| ExperimentServiceError::Encoding(e.to_string()))?,
        });
        let bytes = serde_json::to_vec(&event)
            .map_err(|e| ExperimentServiceError::Encoding(e.to_string()))?;
        let event = Event::from_json(&bytes)
            .map_err(|e| ExperimentServiceError::Encoding(e.to_string()))?;
        let receipts = self
            .inner
            .log
            .append(&self.inner.topic, vec![event])
            .await?;
        let Some(offset) = receipts.first().map(|r| r.offset) else {
            return Err(ExperimentServiceError::Encoding(
                "the log acknowledged no record".into(),
            ));
        };
        self.follow_until(Some(offset)).await?;
        let accepted = {
            let mut applied = lock(&self.inner.applied);
            let accepted = record.applies_after(&applied);
            if accepted {
                applied.insert(id.clone(), offset);
            }
            accepted
        };
        {
            let mut followed = self.followed();
            *followed = (*followed).max(offset + 1);
        }
        if accepted {
            Ok(())
        } else {
            Err(ExperimentServiceError::Conflict { id })
        }
    }

    /// Creates a draft from a definition (see [`ExperimentDefinition::from_json`]), checked
    /// against its flag.
    pub async fn create(
        &self,
        definition: ExperimentDefinition,
        actor: &str,
    ) -> Result<ExperimentInfo, ExperimentServiceError> {
        self.check_flag(&definition)?;
        let experiment = Experiment::draft(definition).map_err(lifecycle(&Status::Draft))?;
        let _writer = self.inner.writer.lock().await;
        // Changes other instances made are applied first, so this one starts from them.
        self.follow_until(None).await?;
        {
            let experiments = self.read();
            if let Some(existing) = experiments.get(&experiment.definition.id) {
                return Err(ExperimentServiceError::AlreadyExists {
                    id: experiment.definition.id.clone(),
                    state: existing.experiment.status.name(),
                });
            }
            if experiments.len() >= EXPERIMENTS_MAX {
                return Err(ExperimentServiceError::TooMany {
                    what: "",
                    count: experiments.len(),
                    max: EXPERIMENTS_MAX,
                });
            }
        }
        let now = now_ms();
        self.append("create", actor, now, &experiment).await?;
        let entry = Entry {
            experiment,
            updated_ms: now,
            shared: None,
        };
        let info = entry.info();
        self.write().insert(info.id.clone(), entry);
        Ok(info)
    }

    fn current(&self, id: &str) -> Result<Experiment, ExperimentServiceError> {
        self.read()
            .get(id)
            .map(|e| e.experiment.clone())
            .ok_or_else(|| ExperimentServiceError::NotFound { id: id.to_owned() })
    }

    /// Records `next` (already appended) as the current state of its experiment.
    fn publish(
        &self,
        next: Experiment,
        now: i64,
        shared: Option<Arc<Mutex<Shared>>>,
    ) -> ExperimentInfo {
        let mut experiments = self.write();
        let id = next.definition.id.clone();
        let entry = experiments.entry(id).or_insert(Entry {
            experiment: next.clone(),
            updated_ms: now,
            shared: None,
        });
        entry.experiment = next;
        entry.updated_ms = now;
        if shared.is_some() {
            entry.shared = shared;
        }
        entry.info()
    }

    /// Replaces the definition of a draft (same id).
    pub async fn redefine(
        &self,
        id: &str,
        definition: ExperimentDefinition,
        actor: &str,
    ) -> Result<ExperimentInfo, ExperimentServiceError> {
        let _writer = self.inner.writer.lock().await;
        // Changes other instances made are applied first, so this one starts from them.
        self.follow_until(None).await?;
        let mut next = self.current(id)?;
        let status = next.status.clone();
        next.redefine(definition).map_err(lifecycle(&status))?;
        self.check_flag(&next.definition)?;
        let now = now_ms();
        self.append("redefine", actor, now, &next).await?;
        Ok(self.publish(next, now, None))
    }

    /// draft → running: checks the flag again and starts aggregating.
    pub async fn start(
        &self,
        id: &str,
        actor: &str,
    ) -> Result<ExperimentInfo, ExperimentServiceError> {
        let _writer = self.inner.writer.lock().await;
        // Changes other instances made are applied first, so this one starts from them.
        self.follow_until(None).await?;
        let mut next = self.current(id)?;
        let status = next.status.clone();
        let now = now_ms();
        next.start(now).map_err(lifecycle(&status))?;
        self.check_flag(&next.definition)?;
        let active = self
            .read()
            .values()
            .filter(|e| {
                matches!(
                    e.experiment.status,
                    Status::Running { .. } | Status::Stopped { .. }
                )
            })
            .count();
        if active >= ACTIVE_MAX {
            return Err(ExperimentServiceError::TooMany {
                what: "running or stopped",
                count: active,
                max: ACTIVE_MAX,
            });
        }
        let namespace = namespace_of(id)?;
        self.append("start", actor, now, &next).await?;
        // Only once the start is recorded (a start refused as a conflict touches nothing):
        // what an earlier life of this id left in the store is not this experiment's.
        clear_earlier_life(&*self.inner.kv, &namespace, id, now).await?;
        let shared = Arc::new(Mutex::new(Shared {
            checkpointed_ms: now,
            ..Shared::new(ExperimentAggregator::new(&next.definition), namespace)
        }));
        let info = self.publish(next, now, Some(shared.clone()));
        self.spawn(id.to_owned(), shared);
        Ok(info)
    }

    /// Deletes a draft or a decided experiment: the deletion is appended to the experiments'
    /// topic (so a restart forgets it too), then its units and checkpoint are removed from the
    /// key-value store. Its id can be used again afterwards.
    pub async fn delete(&self, id: &str, actor: &str) -> Result<(), ExperimentServiceError> {
        let _writer = self.inner.writer.lock().await;
        // Changes other instances made are applied first, so this one starts from them.
        self.follow_until(None).await?;
        let current = self.current(id)?;
        let status = current.status.clone();
        current.check_delete().map_err(lifecycle(&status))?;
        let now = now_ms();
        self.append("delete", actor, now, &current).await?;
        // The aggregation task (of a decided experiment still catching up) ends when it no
        // longer finds its entry.
        self.write().remove(id);
        self.inner.kv.clear(&namespace_of(id)?).await?;
        Ok(())
    }

    /// running → stopped: exposures after now no longer count.
    pub async fn stop(
        &self,
        id: &str,
        actor: &str,
    ) -> Result<ExperimentInfo, ExperimentServiceError> {
        let _writer = self.inner.writer.lock().await;
        // Changes other instances made are applied first, so this one starts from them.
        self.follow_until(None).await?;
        let mut next = self.current(id)?;
        let status = next.status.clone();
        let now = now_ms();
        next.stop(now).map_err(lifecycle(&status))?;
        self.append("stop", actor, now, &next).await?;
        Ok(self.publish(next, now, None))
    }

    /// stopped → decided, with `variant`; when `roll_out`, the flag first serves `variant` to
    /// everyone (an audited flag-set revision by `actor`).
    pub async fn decide(
        &self,
        id: &str,
        variant: &str,
        roll_out: bool,
        reason: Option<String>,
        actor: &str,
    ) -> Result<Decided, ExperimentServiceError> {
        let _writer = self.inner.writer.lock().await;
        // Changes other instances made are applied first, so this one starts from them.
        self.follow_until(None).await?;
        let mut next = self.current(id)?;
        let status = next.status.clone();
        let now = now_ms();
        next.decide(
            Decision {
                variant: variant.to_owned(),
                roll_out,
                reason,
            },
            now,
        )
        .map_err(lifecycle(&status))?;
        let flag_set_version = if roll_out {
            let comment = format!("experiment '{id}' decided: roll out variant '{variant}'");
            self.roll_out(&next.definition, variant, actor, comment)
                .await?
        } else {
            None
        };
        self.append("decide", actor, now, &next).await?;
        Ok(Decided {
            experiment: self.publish(next, now, None),
            flag_set_version,
        })
    }

    /// Makes the experiment's flag serve `variant` to everyone, as an audited flag-set revision
    /// by `actor`; returns the new version (`None` when the set already was that way).
    async fn roll_out(
        &self,
        definition: &ExperimentDefinition,
        variant: &str,
        actor: &str,
        comment: String,
    ) -> Result<Option<u64>, ExperimentServiceError> {
        let set = FlagSetName::parse(&definition.flag_set)
            .map_err(|e| ExperimentServiceError::Rollout(e.to_string()))?;
        let live = self.inner.flags.get(&set).ok_or_else(|| {
            ExperimentServiceError::Rollout(format!(
                "flag set '{set}' no longer exists; decide without rollout, or push the set again"
            ))
        })?;
        let flag = live
            .document
            .get("flags")
            .and_then(|f| f.get(&definition.flag))
            .ok_or_else(|| {
                ExperimentServiceError::Rollout(format!(
                    "flag '{}' no longer exists in flag set '{set}'; decide without rollout",
                    definition.flag
                ))
            })?;
        let change = rollout_change(&definition.flag, flag, variant)
            .map_err(|e| ExperimentServiceError::Rollout(e.0))?;
        let author = Author {
            actor: actor.to_owned(),
            comment: Some(comment),
        };
        let revision = self
            .inner
            .flags
            .apply(&set, change, author, live.validation, None)
            .await?;
        Ok(revision.map(|r| r.version))
    }

    /// Halts a running experiment whose guardrail is significantly worse in a treatment arm
    /// (sequential test, so checking after every batch is valid): the flag's pending rollout
    /// steps are cancelled, the flag serves control to everyone, and the experiment is stopped
    /// and decided for control with the breaches as the reason, recorded as a `halt` change in
    /// `proteus.experiments` (and as the flag-set revision's comment).
    async fn halt(
        &self,
        id: &str,
        breaches: &[GuardrailBreach],
    ) -> Result<(), ExperimentServiceError> {
        let _writer = self.inner.writer.lock().await;
        // Changes other instances made are applied first, so this one starts from them.
        self.follow_until(None).await?;
        let mut next = self.current(id)?;
        if !matches!(next.status, Status::Running { .. }) {
            return Ok(());
        }
        let reason = format!(
            "halted by guardrail: {}",
            breaches
                .iter()
                .map(|b| b.message.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
        let definition = next.definition.clone();
        if let Ok(set) = FlagSetName::parse(&definition.flag_set) {
            for schedule in self.inner.flags.schedules(&set) {
                let rollout_step = matches!(
                    &schedule.change,
                    Change::SetRollout { key, .. } if *key == definition.flag
                );
                if rollout_step {
                    let author = Author {
                        actor: HALT_ACTOR.to_owned(),
                        comment: Some(format!("experiment '{id}' {reason}")),
                    };
                    self.inner
                        .flags
                        .cancel_schedule(&set, &schedule.id, author)
                        .await?;
                }
            }
        }
        let now = now_ms();
        let status = next.status.clone();
        next.stop(now).map_err(lifecycle(&status))?;
        let control = definition.arms[definition.control_index()].variant.clone();
        let status = next.status.clone();
        next.decide(
            Decision {
                variant: control.clone(),
                roll_out: true,
                reason: Some(reason.clone()),
            },
            now,
        )
        .map_err(lifecycle(&status))?;
        self.roll_out(
            &definition,
            &control,
            HALT_ACTOR,
            format!("experiment '{id}' {reason}"),
        )
        .await?;
        self.append("halt", HALT_ACTOR, now, &next).await?;
        tracing::warn!(experiment = %id, %reason, "experiment halted; the flag serves control");
        self.publish(next, now, None);
        Ok(())
    }

    /// The primary metric's lift with its interval over time, oldest first (empty for a draft).
    pub fn history(&self, id: &str) -> Result<Vec<HistoryPoint>, ExperimentServiceError> {
        let experiments = self.read();
        let entry = experiments
            .get(id)
            .ok_or_else(|| ExperimentServiceError::NotFound { id: id.to_owned() })?;
        Ok(match &entry.shared {
            Some(shared) => lock(shared).history.clone(),
            None => Vec::new(),
        })
    }

    /// The experiment and its results now (a draft's are empty: not enough data).
    pub fn results(
        &self,
        id: &str,
    ) -> Result<(ExperimentInfo, ExperimentResults), ExperimentServiceError> {
        let (info, shared) = {
            let experiments = self.read();
            let entry = experiments
                .get(id)
                .ok_or_else(|| ExperimentServiceError::NotFound { id: id.to_owned() })?;
            (entry.info(), entry.shared.clone())
        };
        let now = now_ms();
        let results = match shared {
            Some(shared) => {
                let shared = lock(&shared);
                proteus_experiments::results_with_looks(
                    &info.definition,
                    &shared.aggregator,
                    now,
                    &shared.looks,
                )
            }
            None => proteus_experiments::results(
                &info.definition,
                &ExperimentAggregator::new(&info.definition),
                now,
            ),
        };
        Ok((info, results))
    }

    /// Stops the aggregation tasks after a last checkpoint each.
    pub async fn close(&self) {
        self.inner.closing.send_replace(true);
        let tasks: Vec<_> = lock(&self.inner.tasks).drain(..).collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}

fn started_ms(status: &Status) -> Option<i64> {
    match status {
        Status::Draft => None,
        Status::Running { started_ms }
        | Status::Stopped { started_ms, .. }
        | Status::Decided { started_ms, .. } => Some(*started_ms),
    }
}

fn lifecycle(status: &Status) -> impl Fn(LifecycleError) -> ExperimentServiceError + use<> {
    let allowed = allowed_actions(status);
    move |error| match error {
        LifecycleError::Definition(errors) => ExperimentServiceError::Definition(errors),
        error => ExperimentServiceError::Lifecycle {
            error,
            allowed_actions: allowed.clone(),
        },
    }
}

/// An event's time: its CloudEvent `time` when it has one, else when the log appended it.
fn event_time_ms(event: &Value, append_time_ms: i64) -> i64 {
    event
        .get("time")
        .and_then(Value::as_str)
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map_or(append_time_ms, |t| {
            i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(append_time_ms)
        })
}

/// How long the change follower waits for new records per call, in ms.
const FOLLOW_CHANGES_WAIT_MS: u64 = 1_000;

/// Reads `proteus.experiments` from the followed offset on and applies what other instances
/// sharing the log change (this instance's own records are processed when appended).
async fn follow_changes(inner: Weak<Inner>, mut closing: watch::Receiver<bool>) {
    loop {
        if *closing.borrow() {
            return;
        }
        let Some(service) = inner.upgrade().map(|inner| ExperimentService { inner }) else {
            return;
        };
        let followed = {
            let _writer = service.inner.writer.lock().await;
            service.follow_until(None).await
        };
        let pause = match followed {
            Ok(()) => {
                // Wait for the next record (returns at once if one came meanwhile).
                let log = service.inner.log.clone();
                let topic = service.inner.topic.clone();
                let mut cursor = Cursor::new();
                cursor.set(0, *service.followed());
                drop(service);
                tokio::select! {
                    _ = log.wait_for_events(&topic, &cursor, Duration::from_millis(FOLLOW_CHANGES_WAIT_MS)) => {}
                    _ = closing.changed() => {}
                }
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "experiment changes cannot be read; retrying");
                Duration::from_millis(FOLLOW_CHANGES_WAIT_MS)
            }
        };
        drop(service);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = closing.changed() => {}
        }
    }
}

/// The aggregation task of one experiment.
async fn run(
    inner: Weak<Inner>,
    id: String,
    shared: Arc<Mutex<Shared>>,
    closing: watch::Receiver<bool>,
) {
    let mut lease: Option<Instant> = None;
    run_loop(&inner, &id, &shared, closing, &mut lease).await;
    if lease.is_some()
        && let Some(inner) = inner.upgrade()
        && let Err(error) = proteus_kv::lease::release(
            inner.kv.as_ref(),
            &runners_namespace(),
            id.as_bytes(),
            &inner.config.instance_id,
        )
        .await
    {
        tracing::warn!(experiment = %id, %error, "the experiment's runner lease could not be released; it expires by itself");
    }
}

fn runners_namespace() -> Namespace {
    Namespace::parse(RUNNERS_NAMESPACE).expect("the runners namespace is valid")
}

/// Takes or renews this instance's runner lease of `id` when a third of its time has passed;
/// returns whether this instance may aggregate now (its last renewal is recent enough that the
/// lease cannot have passed to another instance). `lease` is when the last renewal was asked.
async fn hold_lease(service: &ExperimentService, id: &str, lease: &mut Option<Instant>) -> bool {
    let config = &service.inner.config;
    let ttl = Duration::from_millis(config.lease_ttl_ms.max(proteus_kv::lease::LEASE_TTL_MS_MIN));
    if lease.is_none_or(|at| at.elapsed() >= ttl / 3) {
        let asked = Instant::now();
        match proteus_kv::lease::acquire(
            service.inner.kv.as_ref(),
            &runners_namespace(),
            id.as_bytes(),
            &config.instance_id,
            "",
            now_ms(),
            ttl.as_millis() as u64,
        )
        .await
        {
            Ok(LeaseState::Held(_)) => *lease = Some(asked),
            Ok(LeaseState::HeldByOther(_)) => *lease = None,
            Err(error) => {
                tracing::warn!(experiment = %id, %error, "the experiment's runner lease could not be renewed");
            }
        }
    }
    // Stop a fifth of the lease before it could expire.
    lease.is_some_and(|at| at.elapsed() < ttl - ttl / 5)
}

/// What an instance that does not aggregate `definition` serves: the committed checkpoint
/// (statistics, counters, offsets, history), read again when it changed.
async fn follow(
    service: &ExperimentService,
    definition: &ExperimentDefinition,
    started_ms: i64,
    shared: &Arc<Mutex<Shared>>,
) {
    let namespace = lock(shared).namespace.clone();
    let stored = match service
        .inner
        .kv
        .get_many(&namespace, &[CHECKPOINT_KEY.to_vec()])
        .await
    {
        Ok(mut values) => values.pop().flatten(),
        Err(error) => {
            tracing::warn!(experiment = %definition.id, %error, "the experiment's checkpoint cannot be read");
            return;
        }
    };
    let mut s = lock(shared);
    if stored.is_none() || stored == s.committed {
        return;
    }
    let Some(checkpoint) = stored
        .as_deref()
        .and_then(|bytes| decode_checkpoint(&definition.id, bytes, started_ms))
    else {
        return;
    };
    s.aggregator = checkpoint.aggregator;
    s.positions = checkpoint.positions;
    s.history = checkpoint.history;
    s.looks = checkpoint.looks;
    s.checkpointed_ms = checkpoint.time_ms;
    s.dirty = false;
    s.committed = stored;
}

/// The body of an aggregation task; `lease` tracks this instance's runner lease.
async fn run_loop(
    inner: &Weak<Inner>,
    id: &str,
    shared: &Arc<Mutex<Shared>>,
    mut closing: watch::Receiver<bool>,
    lease: &mut Option<Instant>,
) {
    let id = id.to_owned();
    // Whether `shared` holds the committed state with its units (as loaded at open or start),
    // rather than a follower's copy of the checkpoint alone.
    let mut holds_units = true;
    loop {
        let Some(service) = inner.upgrade().map(|inner| ExperimentService { inner }) else {
            return;
        };
        let Some(experiment) = service.read().get(&id).map(|e| e.experiment.clone()) else {
            return;
        };
        let Some(started_ms) = started_ms(&experiment.status) else {
            return;
        };
        let stopped_ms = match &experiment.status {
            Status::Stopped { stopped_ms, .. } | Status::Decided { stopped_ms, .. } => {
                Some(*stopped_ms)
            }
            _ => None,
        };
        let decided = matches!(experiment.status, Status::Decided { .. });
        let closed = *closing.borrow();
        let was_runner = lease.is_some();
        let runner = if closed {
            let ttl = Duration::from_millis(service.inner.config.lease_ttl_ms);
            lease.is_some_and(|at| at.elapsed() < ttl - ttl / 5)
        } else {
            hold_lease(&service, &id, lease).await
        };
        if !runner {
            if closed {
                return;
            }
            if was_runner {
                tracing::info!(experiment = %id, "another instance aggregates this experiment now");
            }
            follow(&service, &experiment.definition, started_ms, shared).await;
            holds_units = false;
            let poll = Duration::from_millis(service.inner.config.poll_ms.max(FOLLOW_POLL_MS_MIN));
            drop(service);
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = closing.changed() => {}
            }
            continue;
        }
        if !was_runner && !holds_units {
            // Start from what was last committed, whoever committed it.
            reload(&service, &experiment.definition, started_ms, shared).await;
            holds_units = true;
        }
        let stale = lock(shared).stale;
        if stale && !closed {
            reload(&service, &experiment.definition, started_ms, shared).await;
        }
        let stale = lock(shared).stale;
        let progressed = if closed || stale {
            false
        } else {
            match consume(
                &service,
                &experiment.definition,
                started_ms,
                stopped_ms,
                shared,
            )
            .await
            {
                Ok(progressed) => progressed,
                Err(error) => {
                    tracing::warn!(experiment = %id, %error, "experiment aggregation failed; retrying");
                    false
                }
            }
        };
        if progressed {
            let mut s = lock(shared);
            // Every batch is a look of the sequential analysis.
            if experiment.definition.analysis.sequential {
                let look = proteus_experiments::results_with_looks(
                    &experiment.definition,
                    &s.aggregator,
                    now_ms(),
                    &s.looks,
                );
                s.looks.observe(&look);
            }
            s.record_history(
                &experiment.definition,
                now_ms(),
                service.inner.config.history_interval_ms,
            );
        }
        let running = matches!(experiment.status, Status::Running { .. });
        if progressed && running && !experiment.definition.guardrails.is_empty() {
            let breaches = {
                let s = lock(shared);
                guardrail_breaches(&experiment.definition, &s.aggregator)
            };
            if !breaches.is_empty()
                && let Err(error) = service.halt(&id, &breaches).await
            {
                tracing::error!(experiment = %id, %error, "a guardrail is breached but the halt failed; retrying");
            }
        }
        let finishing = closed || (decided && !progressed);
        let due = {
            let s = lock(shared);
            !s.stale
                && s.dirty
                && (finishing
                    || s.aggregator.changed_units() >= UNITS_PER_COMMIT_MAX
                    || now_ms().saturating_sub(s.checkpointed_ms)
                        >= service.inner.config.checkpoint_interval_ms as i64)
        };
        if due {
            checkpoint(&service, &experiment.definition, started_ms, shared).await;
        }
        if finishing {
            return;
        }
        let poll = Duration::from_millis(service.inner.config.poll_ms);
        drop(service);
        if !progressed {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = closing.changed() => {}
            }
        }
    }
}

/// Reads one batch from every partition of the exposure and metric topics and applies the
/// events up to the earliest append time among partitions that have more; returns whether
/// anything was consumed.
async fn consume(
    service: &ExperimentService,
    definition: &ExperimentDefinition,
    started_ms: i64,
    stopped_ms: Option<i64>,
    shared: &Arc<Mutex<Shared>>,
) -> Result<bool, ExperimentServiceError> {
    let inner = &service.inner;
    let mut metric_topics: Vec<&str> = definition
        .metrics
        .iter()
        .flat_map(|m| std::iter::once(&m.source).chain(m.denominator.as_ref()))
        .map(|s| s.topic.as_str())
        .collect();
    metric_topics.sort_unstable();
    metric_topics.dedup();
    let mut topics: Vec<&str> = vec![EXPOSURE_TOPIC];
    topics.extend(
        metric_topics
            .iter()
            .copied()
            .filter(|t| *t != EXPOSURE_TOPIC),
    );
    let pre_period_ms = definition
        .analysis
        .cuped
        .map_or(0, |c| i64::try_from(c.pre_period_ms).unwrap_or(i64::MAX));
    let positions = lock(shared).positions.clone();
    let limits = ReadLimits {
        events_max: inner.config.read_events_max.max(1),
        bytes_max: inner.config.read_bytes_max.max(1),
    };
    let mut batches = Vec::new();
    for topic in &topics {
        let Ok(name) = TopicName::parse(topic) else {
            continue;
        };
        let description = match inner.log.describe_topic(&name).await {
            Ok(d) => d,
            Err(LogError::TopicNotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let start_ms = if *topic == EXPOSURE_TOPIC {
            started_ms
        } else {
            started_ms.saturating_sub(pre_period_ms)
        };
        for partition in &description.partitions {
            let from = positions
                .get(*topic)
                .and_then(|p| p.get(&partition.partition))
                .map_or(ReadFrom::TimeMs(start_ms), |o| ReadFrom::Offset(*o));
            let batch = match inner
                .log
                .read(&name, partition.partition, from, limits)
                .await
            {
                Ok(batch) => batch,
                // The topic was deleted and created again: read the new one from the start.
                Err(LogError::OffsetOutOfRange { .. }) => {
                    inner
                        .log
                        .read(
                            &name,
                            partition.partition,
                            ReadFrom::TimeMs(start_ms),
                            limits,
                        )
                        .await?
                }
                Err(e) => return Err(e.into()),
            };
            batches.push((*topic, partition.partition, batch));
        }
    }
    // Partitions with more to read bound how far this round goes, so no topic runs ahead.
    let cutoff = batches
        .iter()
        .filter(|(_, _, b)| b.next_offset < b.end_offset)
        .filter_map(|(_, _, b)| b.events.last().map(|e| e.append_time_ms))
        .min();
    let mut next_positions = positions.clone();
    let mut apply: Vec<(&str, u32, &StoredEvent)> = Vec::new();
    for (topic, partition, batch) in &batches {
        let mut next = batch.next_offset;
        for stored in &batch.events {
            if cutoff.is_some_and(|c| stored.append_time_ms > c) {
                next = stored.offset;
                break;
            }
            apply.push((topic, *partition, stored));
        }
        next_positions
            .entry((*topic).to_owned())
            .or_default()
            .insert(*partition, next);
    }
    apply.sort_by_key(|(_, _, e)| e.append_time_ms);
    let now = now_ms();
    let decoded: Vec<Option<Input>> = apply
        .iter()
        .map(|(topic, _, stored)| {
            let event = serde_json::from_slice::<Value>(&stored.json).ok()?;
            if *topic == EXPOSURE_TOPIC && event["type"] == EXPOSURE_EVENT_TYPE {
                let mut exposure = Exposure::from_cloud_event(&event).ok()?;
                exposure.time_ms = exposure.time_ms.min(now);
                let in_period = exposure.time_ms >= started_ms
                    && stopped_ms.is_none_or(|stop| exposure.time_ms < stop);
                return in_period.then_some(Input::Exposure(exposure));
            }
            if !metric_topics.contains(topic) {
                return None;
            }
            let time_ms = event_time_ms(&event, stored.append_time_ms).min(now);
            Some(Input::Metric(event, time_ms))
        })
        .collect();
    load_units(service, shared, &apply, &decoded).await?;

    let mut s = lock(shared);
    // Stop early once enough units changed for one commit: the offsets then say exactly which
    // events were applied (those before the first one left, per partition).
    let mut applied = 0;
    for ((topic, _, _), input) in apply.iter().zip(&decoded) {
        if s.aggregator.changed_units() >= UNITS_PER_COMMIT_MAX {
            break;
        }
        if applied > 0 && applied % APPLY_EVENTS_PER_LOCK == 0 {
            // Let a results request in between: it reads a state between two events, which
            // is as consistent as any.
            drop(s);
            s = lock(shared);
        }
        applied += 1;
        match input {
            Some(Input::Exposure(exposure)) => {
                s.aggregator.apply_exposure(exposure);
            }
            Some(Input::Metric(event, time_ms)) => {
                s.aggregator.apply_metric_event(topic, event, *time_ms);
            }
            None => {}
        }
    }
    let mut left: BTreeSet<(&str, u32)> = BTreeSet::new();
    for (topic, partition, stored) in &apply[applied..] {
        if left.insert((topic, *partition)) {
            next_positions
                .entry((*topic).to_owned())
                .or_default()
                .insert(*partition, stored.offset);
        }
    }
    let changed = next_positions != positions;
    s.positions = next_positions;
    if changed {
        s.dirty = true;
    }
    Ok(changed)
}

/// One decoded event of a batch.
enum Input {
    Exposure(Exposure),
    /// A metric event and its time.
    Metric(Value, i64),
}

/// Makes resident every stored unit the batch's events name.
async fn load_units(
    service: &ExperimentService,
    shared: &Arc<Mutex<Shared>>,
    apply: &[(&str, u32, &StoredEvent)],
    decoded: &[Option<Input>],
) -> Result<(), KvError> {
    let (namespace, missing) = {
        let s = lock(shared);
        let mut missing: BTreeSet<String> = BTreeSet::new();
        for ((topic, _, _), input) in apply.iter().zip(decoded) {
            let keys = match input {
                Some(Input::Exposure(e)) => s
                    .aggregator
                    .exposure_unit(e)
                    .map(str::to_owned)
                    .into_iter()
                    .collect(),
                Some(Input::Metric(event, _)) => s.aggregator.metric_event_units(topic, event),
                None => Vec::new(),
            };
            missing.extend(keys.into_iter().filter(|k| !s.aggregator.is_resident(k)));
        }
        (s.namespace.clone(), missing.into_iter().collect::<Vec<_>>())
    };
    for chunk in missing.chunks(GET_KEYS_MAX) {
        let keys: Vec<Vec<u8>> = chunk.iter().map(|k| unit_key(SETTLED_PREFIX, k)).collect();
        let values = service.inner.kv.get_many(&namespace, &keys).await?;
        let mut s = lock(shared);
        for ((name, key), value) in chunk.iter().zip(&keys).zip(values) {
            if let Some(value) = value {
                s.aggregator
                    .load_unit(name.clone(), decode_unit(key, &value)?);
            }
        }
    }
    Ok(())
}

/// Replaces the live state with the last committed one (after a failed commit); marks it
/// stale when that cannot be read either, so the task retries before consuming more.
async fn reload(
    service: &ExperimentService,
    definition: &ExperimentDefinition,
    started_ms: i64,
    shared: &Arc<Mutex<Shared>>,
) {
    let namespace = lock(shared).namespace.clone();
    let loaded = load_state(
        service.inner.kv.as_ref(),
        &namespace,
        definition,
        started_ms,
    )
    .await;
    let mut s = lock(shared);
    match loaded {
        Ok(state) => *s = state,
        Err(error) => {
            tracing::warn!(experiment = %definition.id, %error,
                "the experiment's committed state cannot be loaded; retrying");
            s.stale = true;
        }
    }
}

/// Commits the changed units with the checkpoint (aggregator without units, offsets,
/// history) in one checked write, then evicts settled units; repeats while a bounded compaction
/// has more to do. A failed commit reloads the last committed state.
async fn checkpoint(
    service: &ExperimentService,
    definition: &ExperimentDefinition,
    started_ms: i64,
    shared: &Arc<Mutex<Shared>>,
) {
    let id = &definition.id;
    for _ in 0..COMPACTION_COMMITS_MAX {
        let now = now_ms();
        let (namespace, commit, body) = {
            let mut s = lock(shared);
            s.aggregator.compact(UNITS_PER_COMMIT_MAX);
            let changes = s.aggregator.take_changes();
            let body = serde_json::to_vec(&CheckpointRef {
                started_ms,
                time_ms: now,
                positions: &s.positions,
                aggregator: &s.aggregator,
                history: &s.history,
                looks: &s.looks,
            })
            .unwrap_or_default();
            let mut writes = Vec::with_capacity(2 * changes.len() + 1);
            for (unit, state) in changes {
                let settled = unit_key(SETTLED_PREFIX, &unit);
                let unsettled = unit_key(UNSETTLED_PREFIX, &unit);
                match state {
                    Some(state) => {
                        let value = serde_json::to_vec(&state).unwrap_or_default();
                        if state.is_settled() {
                            writes.push(KvWrite::Put {
                                key: settled,
                                value,
                            });
                            writes.push(KvWrite::Delete { key: unsettled });
                        } else {
                            writes.push(KvWrite::Put {
                                key: unsettled,
                                value,
                            });
                        }
                    }
                    None => {
                        writes.push(KvWrite::Delete { key: unsettled });
                        writes.push(KvWrite::Delete { key: settled });
                    }
                }
            }
            writes.push(KvWrite::Put {
                key: CHECKPOINT_KEY.to_vec(),
                value: body.clone(),
            });
            let commit = KvCommit {
                checks: vec![KvCheck {
                    key: CHECKPOINT_KEY.to_vec(),
                    expected: s.committed.clone(),
                }],
                writes,
            };
            s.dirty = false;
            s.checkpointed_ms = now;
            (s.namespace.clone(), commit, body)
        };
        let result = if body.len() > CHECKPOINT_BYTES_MAX {
            Err(KvError::Invalid(format!(
                "the checkpoint has {} bytes, more than the {CHECKPOINT_BYTES_MAX} allowed",
                body.len()
            )))
        } else {
            service.inner.kv.commit(&namespace, commit).await
        };
        if let Err(error) = result {
            match error {
                KvError::Conflict { .. } => tracing::error!(experiment = %id, %error,
                    "another instance advanced this experiment's checkpoint; loading its state"),
                _ => tracing::warn!(experiment = %id, %error,
                    "the experiment's checkpoint could not be committed; resuming from the last one"),
            }
            reload(service, definition, started_ms, shared).await;
            return;
        }
        let mut s = lock(shared);
        s.committed = Some(body);
        s.aggregator.evict_settled();
        if !s.aggregator.compaction_due() {
            return;
        }
    }
}
