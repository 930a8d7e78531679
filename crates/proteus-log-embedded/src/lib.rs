//! The embedded log adapter: Proteus's default storage, needing nothing but a directory.
//!
//! Each partition is a directory of segment files (`.log`) with sparse offset and time indexes;
//! `docs/storage-format.md` describes the bytes. Appends are written to the page cache under a
//! per-topic lock, then made durable by a group commit: one fdatasync covers every append that
//! arrived while the previous one was running. Recovery checks only the tail of each
//! partition's last segment, so start-up time does not grow with the size of the log.

mod dedup;
mod index;
mod partition;
mod record;
mod segment;
mod topic;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use proteus_log::import::{PartitionImport, check_import};
use proteus_log::port::{EventAppender, EventReader, EventSubscriber, Log, TopicAdmin};
use proteus_log::{
    AppendReceipt, Cursor, Event, LogError, Offset, PartitionId, PutTopicOutcome, ReadBatch,
    ReadFrom, ReadLimits, StoredEvent, TopicConfig, TopicDescription, TopicName,
};
use tokio::task::JoinHandle;

pub use partition::RecoveryReport;
pub use topic::STORAGE_FORMAT_VERSION;

use topic::{TOPIC_FILE, Topic};

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// After fdatasync: an acknowledged event survives a process crash and a power loss.
    Fsync,
    /// After the write to the page cache; a background fdatasync runs every `interval_ms`.
    /// An acknowledged event survives a process crash; a power loss or kernel crash can lose
    /// the events acknowledged during the last `interval_ms`.
    Interval { interval_ms: u64 },
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::Fsync => f.write_str("fsync"),
            Durability::Interval { interval_ms } => write!(f, "interval_ms={interval_ms}"),
        }
    }
}

impl FromStr for Durability {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if compact == "fsync" {
            return Ok(Durability::Fsync);
        }
        if let Some(value) = compact.strip_prefix("interval_ms=")
            && let Ok(interval_ms @ 1..=60_000) = value.parse::<u64>()
        {
            return Ok(Durability::Interval { interval_ms });
        }
        Err(format!(
            "invalid durability {text:?}: use \"fsync\" (acknowledge after fdatasync) or \"interval_ms=N\" with N from 1 to 60000 (fdatasync every N ms)"
        ))
    }
}

/// Returns the current time in milliseconds since the Unix epoch; replaceable in tests.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    })
}

#[derive(Clone)]
pub struct EmbeddedConfig {
    /// The log lives in `<data_dir>/log`.
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// How often retention looks for segments to delete.
    pub retention_check_interval_ms: u64,
    pub clock: Clock,
}

impl EmbeddedConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EmbeddedConfig {
            data_dir: data_dir.into(),
            durability: Durability::Fsync,
            retention_check_interval_ms: 30_000,
            clock: system_clock(),
        }
    }
}

/// The embedded log. Cheap to clone; all clones share one log.
#[derive(Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

struct Inner {
    topics_dir: PathBuf,
    trash_dir: PathBuf,
    config: EmbeddedConfig,
    topics: RwLock<HashMap<TopicName, Arc<Topic>>>,
    admin: tokio::sync::Mutex<()>,
    closing: AtomicBool,
    background: Mutex<Vec<JoinHandle<()>>>,
    recovery: Vec<(TopicName, PartitionId, RecoveryReport)>,
    /// Held for the life of the log so two processes never share a data directory.
    _lock: File,
}

/// The topics an embedded log in `data_dir` holds, by their directories, without opening it
/// (nor taking its lock): for a server whose log is elsewhere to notice topics it leaves
/// behind. Empty when there is no embedded log there.
pub fn topics_in(data_dir: &Path) -> Vec<TopicName> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("log").join("topics")) else {
        return Vec::new();
    };
    let mut names: Vec<TopicName> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join(TOPIC_FILE).is_file())
        .filter_map(|entry| TopicName::parse(&entry.file_name().to_string_lossy()).ok())
        .collect();
    names.sort();
    names
}

/// The next offset of each partition of `topic` in the embedded log of `data_dir`, read from
/// its files without opening it (nor taking its lock): for a server whose log is elsewhere to
/// notice events a copy left behind. `None` when the topic is not there or cannot be read.
pub fn partition_ends_in(data_dir: &Path, topic: &TopicName) -> Option<Vec<Offset>> {
    let dir = data_dir.join("log").join("topics").join(topic.as_str());
    let mut ends = Vec::new();
    for partition in 0.. {
        let partition_dir = dir.join(partition.to_string());
        if !partition_dir.is_dir() {
            break;
        }
        ends.push(partition::end_offset_on_disk(&partition_dir).ok()?);
    }
    (!ends.is_empty()).then_some(ends)
}

impl EmbeddedLog {
    /// Opens the log in `config.data_dir`, creating it if needed, and recovers every partition.
    /// Must be called inside a Tokio runtime: it starts the retention and sync tasks.
    pub async fn open(config: EmbeddedConfig) -> Result<EmbeddedLog, LogError> {
        let opening = config.clone();
        let inner = tokio::task::spawn_blocking(move || Inner::open(opening))
            .await
            .map_err(join_error)??;
        let log = EmbeddedLog {
            inner: Arc::new(inner),
        };
        log.start_background_tasks();
        Ok(log)
    }

    /// What recovery did to each partition at open: bytes of torn tail dropped, corruption.
    pub fn recovery_reports(&self) -> &[(TopicName, PartitionId, RecoveryReport)] {
        &self.inner.recovery
    }

    /// Applies retention to every topic now; returns the number of segments deleted. Runs by
    /// itself every `retention_check_interval_ms`.
    pub async fn run_retention(&self) -> Result<usize, LogError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.run_retention())
            .await
            .map_err(join_error)?
    }

    fn start_background_tasks(&self) {
        let mut tasks = Vec::new();
        let now_ms = (self.inner.config.clock)();
        for topic in self.inner.topics.read().unwrap().values() {
            tasks.push(spawn_dedup_rebuild(topic.clone(), now_ms));
        }
        let weak = Arc::downgrade(&self.inner);
        let period = Duration::from_millis(self.inner.config.retention_check_interval_ms.max(1));
        tasks.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let result = tokio::task::spawn_blocking(move || inner.run_retention()).await;
                if let Ok(Err(e)) = result {
                    tracing::warn!(error = %e, "retention pass failed");
                }
            }
        }));
        if let Durability::Interval { interval_ms } = self.inner.config.durability {
            let weak = Arc::downgrade(&self.inner);
            tasks.push(tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms));
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    let topics: Vec<_> = inner.topics.read().unwrap().values().cloned().collect();
                    drop(inner);
                    for topic in topics {
                        for partition in &topic.partitions {
                            if let Err(e) = partition.sync_written().await {
                                tracing::warn!(error = %e, "background fdatasync failed");
                            }
                        }
                    }
                }
            }));
        }
        self.inner.background.lock().unwrap().extend(tasks);
    }

    fn topic(&self, name: &TopicName) -> Result<Arc<Topic>, LogError> {
        self.inner
            .topics
            .read()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| LogError::TopicNotFound {
                topic: name.clone(),
            })
    }

    fn check_open(&self) -> Result<(), LogError> {
        if self.inner.closing.load(Ordering::Acquire) {
            return Err(LogError::Unavailable {
                reason: "the log is shutting down".into(),
            });
        }
        Ok(())
    }
}

fn spawn_dedup_rebuild(topic: Arc<Topic>, now_ms: i64) -> JoinHandle<()> {
    tokio::task::spawn_blocking(move || match topic.rebuild_dedup(now_ms) {
        Ok(entries) => {
            tracing::debug!(topic = %topic.name, entries, "dedup index rebuilt");
        }
        Err(e) => {
            // Appends must not wait forever: they proceed, and the error says dedup may miss
            // retries of events appended before the restart.
            tracing::error!(topic = %topic.name, error = %e, "could not rebuild the dedup index; retries of events appended before the restart may be appended twice");
            topic.mark_dedup_ready();
        }
    })
}

impl Inner {
    fn open(config: EmbeddedConfig) -> Result<Inner, LogError> {
        let root = config.data_dir.join("log");
        let topics_dir = root.join("topics");
        let trash_dir = root.join("trash");
        let ctx = |what: &str, path: &Path| format!("{what} {}", path.display());
        std::fs::create_dir_all(&topics_dir)
            .map_err(LogError::storage(ctx("creating", &topics_dir)))?;
        let lock_path = root.join("LOCK");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(LogError::storage(ctx("opening", &lock_path)))?;
        if lock.try_lock().is_err() {
            return Err(LogError::Unavailable {
                reason: format!(
                    "another Proteus process is using {}; stop it, or give this one another --data-dir",
                    config.data_dir.display()
                ),
            });
        }
        // Topics deleted before a crash are finished off.
        let _ = std::fs::remove_dir_all(&trash_dir);
        let mut topics = HashMap::new();
        let mut recovery = Vec::new();
        for entry in std::fs::read_dir(&topics_dir)
            .map_err(LogError::storage(ctx("listing", &topics_dir)))?
        {
            let entry = entry.map_err(LogError::storage(ctx("listing", &topics_dir)))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name.starts_with(".creating-") {
                let _ = std::fs::remove_dir_all(entry.path());
                continue;
            }
            let Ok(name) = TopicName::parse(&file_name) else {
                tracing::warn!(path = %entry.path().display(), "ignoring a directory that is not a topic");
                continue;
            };
            let (topic, reports) = Topic::open(&entry.path(), &name, config.durability)?;
            recovery.extend(
                reports
                    .into_iter()
                    .enumerate()
                    .map(|(id, report)| (name.clone(), id as PartitionId, report)),
            );
            topics.insert(name, topic);
        }
        Ok(Inner {
            topics_dir,
            trash_dir,
            config,
            topics: RwLock::new(topics),
            admin: tokio::sync::Mutex::new(()),
            closing: AtomicBool::new(false),
            background: Mutex::new(Vec::new()),
            recovery,
            _lock: lock,
        })
    }

    fn run_retention(&self) -> Result<usize, LogError> {
        let now_ms = (self.config.clock)();
        let topics: Vec<_> = self.topics.read().unwrap().values().cloned().collect();
        let mut deleted = 0;
        for topic in topics {
            let config = topic.config();
            for partition in &topic.partitions {
                deleted += partition.apply_retention(now_ms, &config)?;
            }
        }
        Ok(deleted)
    }
}

fn join_error(e: tokio::task::JoinError) -> LogError {
    LogError::Unavailable {
        reason: format!("internal error in a storage task: {e}"),
    }
}

#[async_trait]
impl TopicAdmin for EmbeddedLog {
    async fn put_topic(
        &self,
        name: &TopicName,
        config: TopicConfig,
    ) -> Result<PutTopicOutcome, LogError> {
        config.validate()?;
        self.check_open()?;
        let _admin = self.inner.admin.lock().await;
        if let Ok(topic) = self.topic(name) {
            let current = topic.config();
            if current.partitions != config.partitions {
                return Err(LogError::partition_count_fixed(
                    name,
                    current.partitions,
                    config.partitions,
                ));
            }
            if current == config {
                return Ok(PutTopicOutcome::Unchanged);
            }
            tokio::task::spawn_blocking(move || topic.update_config(config))
                .await
                .map_err(join_error)??;
            return Ok(PutTopicOutcome::Updated);
        }
        let inner = self.inner.clone();
        let topic_name = name.clone();
        let (topic, _) = tokio::task::spawn_blocking(move || {
            Topic::create(
                &inner.topics_dir,
                &topic_name,
                &config,
                inner.config.durability,
            )
        })
        .await
        .map_err(join_error)??;
        topic.mark_dedup_ready();
        self.inner
            .topics
            .write()
            .unwrap()
            .insert(name.clone(), topic);
        Ok(PutTopicOutcome::Created)
    }

    async fn list_topics(&self) -> Result<Vec<TopicDescription>, LogError> {
        let mut topics: Vec<_> = self
            .inner
            .topics
            .read()
            .unwrap()
            .values()
            .map(|t| t.describe())
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    async fn describe_topic(&self, name: &TopicName) -> Result<TopicDescription, LogError> {
        Ok(self.topic(name)?.describe())
    }

    async fn delete_topic(&self, name: &TopicName) -> Result<(), LogError> {
        self.check_open()?;
        let _admin = self.inner.admin.lock().await;
        let topic = self.topic(name)?;
        self.inner.topics.write().unwrap().remove(name);
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || -> Result<(), LogError> {
            topic.mark_deleted();
            let ctx = format!("deleting topic '{}'", topic.name);
            std::fs::create_dir_all(&inner.trash_dir).map_err(LogError::storage(ctx.clone()))?;
            let unique = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let trashed = inner.trash_dir.join(format!("{}-{unique}", topic.name));
            std::fs::rename(&topic.dir, &trashed).map_err(LogError::storage(ctx.clone()))?;
            partition::sync_dir(&inner.topics_dir).map_err(LogError::storage(ctx))?;
            if let Err(e) = std::fs::remove_dir_all(&trashed) {
                tracing::warn!(path = %trashed.display(), error = %e, "could not remove a deleted topic's files; they go at the next start");
            }
            Ok(())
        })
        .await
        .map_err(join_error)?
    }
}

#[async_trait]
impl EventAppender for EmbeddedLog {
    async fn append(
        &self,
        topic: &TopicName,
        events: Vec<Event>,
    ) -> Result<Vec<AppendReceipt>, LogError> {
        self.check_open()?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let topic = self.topic(topic)?;
        topic.wait_dedup_ready().await;
        let now_ms = (self.inner.config.clock)();
        let writer = topic.clone();
        let started = std::time::Instant::now();
        let (receipts, waits) =
            tokio::task::spawn_blocking(move || writer.write_batch(&events, now_ms))
                .await
                .map_err(join_error)??;
        topic.record_write_phase(started.elapsed());
        if self.inner.config.durability == Durability::Fsync {
            futures_util::future::try_join_all(
                waits
                    .iter()
                    .map(|(partition, end)| partition.make_durable(*end)),
            )
            .await?;
        }
        Ok(receipts)
    }
}

/// Imports keep each event's offset, bytes and append time; see
/// [`PartitionImport::import_partition`]. Committed with fsync whatever the log's durability.
#[async_trait]
impl PartitionImport for EmbeddedLog {
    async fn partition_offsets(
        &self,
        topic: &TopicName,
        partition: PartitionId,
    ) -> Result<(Offset, Offset), LogError> {
        self.check_open()?;
        let partition = self.topic(topic)?.partition(partition)?.clone();
        Ok((partition.first_offset(), partition.visible_end()))
    }

    async fn import_partition(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        events: &[StoredEvent],
    ) -> Result<(), LogError> {
        let checked = check_import(topic, partition, events)?;
        self.check_open()?;
        let topic = self.topic(topic)?;
        topic.wait_dedup_ready().await;
        let now_ms = (self.inner.config.clock)();
        let events = events.to_vec();
        let (target, end) = tokio::task::spawn_blocking(move || {
            topic.import(partition, &events, &checked.dedup_keys, now_ms)
        })
        .await
        .map_err(join_error)??;
        target.make_durable(end).await
    }

    fn keeps_append_times(&self) -> bool {
        true
    }
}

#[async_trait]
impl EventReader for EmbeddedLog {
    async fn read(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        from: ReadFrom,
        limits: ReadLimits,
    ) -> Result<ReadBatch, LogError> {
        let topic = self.topic(topic)?;
        let partition = topic.partition(partition)?.clone();
        tokio::task::spawn_blocking(move || partition.read(from, limits))
            .await
            .map_err(join_error)?
    }
}

#[async_trait]
impl EventSubscriber for EmbeddedLog {
    async fn wait_for_events(
        &self,
        topic: &TopicName,
        positions: &Cursor,
        timeout: Duration,
    ) -> Result<bool, LogError> {
        let topic = self.topic(topic)?;
        let mut watched = Vec::new();
        for (partition, offset) in positions.iter() {
            watched.push((topic.partition(partition)?.clone(), offset));
        }
        let mut changes = topic.change.subscribe();
        let deadline = tokio::time::Instant::now() + proteus_log::port::bounded_wait(timeout);
        loop {
            if watched
                .iter()
                .any(|(partition, offset)| partition.visible_end() > *offset)
            {
                return Ok(true);
            }
            if topic.is_deleted() {
                return Err(LogError::TopicNotFound {
                    topic: topic.name.clone(),
                });
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Ok(false),
            }
        }
    }
}

#[async_trait]
impl Log for EmbeddedLog {
    async fn shutdown(&self) -> Result<(), LogError> {
        if self.inner.closing.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let _admin = self.inner.admin.lock().await;
        for task in self.inner.background.lock().unwrap().drain(..) {
            task.abort();
        }
        let topics: Vec<_> = self
            .inner
            .topics
            .read()
            .unwrap()
            .values()
            .cloned()
            .collect();
        for topic in topics {
            topic.quiesce();
            for partition in &topic.partitions {
                partition.sync_written().await?;
                let closing = partition.clone();
                tokio::task::spawn_blocking(move || closing.close())
                    .await
                    .map_err(join_error)?
                    .map_err(LogError::storage(format!("closing topic '{}'", topic.name)))?;
            }
        }
        Ok(())
    }
}
