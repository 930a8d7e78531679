//! One topic: its partitions, its stored configuration, deduplication and the append path.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use proteus_log::partitioner::partition_for_key;
use proteus_log::port::StoredEvent;
use proteus_log::{
    AppendReceipt, DedupKey, Event, LogError, Offset, PartitionId, TopicConfig, TopicDescription,
    TopicName,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::Durability;
use crate::dedup::{DedupIndex, PassThroughHasher};
use crate::partition::{Partition, RecoveryReport, sync_dir};

/// Version of the on-disk layout described in `docs/storage-format.md`.
pub const STORAGE_FORMAT_VERSION: u32 = 1;
pub(crate) const TOPIC_FILE: &str = "topic.json";

#[derive(Serialize, Deserialize)]
struct TopicFile {
    storage_format_version: u32,
    config: TopicConfig,
}

struct AppendState {
    dedup: DedupIndex,
    next_keyless_partition: PartitionId,
}

struct TopicMetrics {
    write_seconds: metrics::Histogram,
    events: metrics::Counter,
    bytes: metrics::Counter,
    duplicates: metrics::Counter,
}

pub struct Topic {
    pub name: TopicName,
    pub dir: PathBuf,
    config: RwLock<TopicConfig>,
    pub partitions: Vec<Arc<Partition>>,
    /// Serialises the write phase of appends to this topic: dedup decisions, partition choice
    /// and page-cache writes. Durability waits happen outside it.
    append: Mutex<AppendState>,
    dedup_ready: watch::Sender<bool>,
    deleted: AtomicBool,
    pub change: Arc<watch::Sender<u64>>,
    metrics: TopicMetrics,
}

/// A position some appended or duplicate event needs durable before the append is answered.
pub type DurableWait = (Arc<Partition>, Offset);

impl Topic {
    /// Writes a new topic directory: built under a temporary name, then renamed into place so a
    /// crash never leaves a half-created topic.
    pub fn create(
        topics_dir: &Path,
        name: &TopicName,
        config: &TopicConfig,
        durability: Durability,
    ) -> Result<(Arc<Topic>, Vec<RecoveryReport>), LogError> {
        let dir = topics_dir.join(name.as_str());
        let staging = topics_dir.join(format!(".creating-{name}-{}", std::process::id()));
        let ctx = || format!("creating topic '{name}' in {}", topics_dir.display());
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(LogError::storage(ctx()))?;
        write_topic_file(&staging, config).map_err(LogError::storage(ctx()))?;
        sync_dir(&staging).map_err(LogError::storage(ctx()))?;
        std::fs::rename(&staging, &dir).map_err(LogError::storage(ctx()))?;
        sync_dir(topics_dir).map_err(LogError::storage(ctx()))?;
        Topic::open(&dir, name, durability)
    }

    /// Opens an existing topic directory and recovers each partition.
    pub fn open(
        dir: &Path,
        name: &TopicName,
        durability: Durability,
    ) -> Result<(Arc<Topic>, Vec<RecoveryReport>), LogError> {
        let path = dir.join(TOPIC_FILE);
        let bytes = std::fs::read(&path)
            .map_err(LogError::storage(format!("reading {}", path.display())))?;
        let file: TopicFile =
            serde_json::from_slice(&bytes).map_err(|e| LogError::Unavailable {
                reason: format!("{} is not a valid topic file: {e}", path.display()),
            })?;
        if file.storage_format_version != STORAGE_FORMAT_VERSION {
            return Err(LogError::Unavailable {
                reason: format!(
                    "{} uses storage format version {}, but this Proteus reads version {STORAGE_FORMAT_VERSION}",
                    path.display(),
                    file.storage_format_version
                ),
            });
        }
        let config = file.config;
        let change = Arc::new(watch::Sender::new(0u64));
        let mut partitions = Vec::with_capacity(config.partitions as usize);
        let mut reports = Vec::with_capacity(config.partitions as usize);
        for id in 0..config.partitions {
            let (partition, report) = Partition::open(
                &dir.join(id.to_string()),
                name,
                id,
                durability,
                change.clone(),
            )?;
            partitions.push(partition);
            reports.push(report);
        }
        let labels = [("topic", name.to_string())];
        let topic = Topic {
            name: name.clone(),
            dir: dir.to_owned(),
            append: Mutex::new(AppendState {
                dedup: DedupIndex::new(config.dedup_window_ms, config.dedup_entries_max),
                next_keyless_partition: 0,
            }),
            config: RwLock::new(config),
            partitions,
            dedup_ready: watch::Sender::new(false),
            deleted: AtomicBool::new(false),
            change,
            metrics: TopicMetrics {
                write_seconds: metrics::histogram!(
                    "proteus_log_append_write_duration_seconds",
                    &labels
                ),
                events: metrics::counter!("proteus_log_append_events_total", &labels),
                bytes: metrics::counter!("proteus_log_append_bytes_total", &labels),
                duplicates: metrics::counter!("proteus_log_append_duplicates_total", &labels),
            },
        };
        Ok((Arc::new(topic), reports))
    }

    pub fn config(&self) -> TopicConfig {
        self.config.read().unwrap().clone()
    }

    /// Stores a new configuration (the partition count is unchanged: the caller checked).
    pub fn update_config(&self, config: TopicConfig) -> Result<(), LogError> {
        write_topic_file(&self.dir, &config)
            .map_err(LogError::storage(format!("updating topic '{}'", self.name)))?;
        self.append
            .lock()
            .unwrap()
            .dedup
            .reconfigure(config.dedup_window_ms, config.dedup_entries_max);
        *self.config.write().unwrap() = config;
        Ok(())
    }

    pub fn describe(&self) -> TopicDescription {
        TopicDescription {
            name: self.name.clone(),
            config: self.config(),
            partitions: self.partitions.iter().map(|p| p.describe()).collect(),
        }
    }

    pub fn partition(&self, id: PartitionId) -> Result<&Arc<Partition>, LogError> {
        self.partitions
            .get(id as usize)
            .ok_or_else(|| LogError::PartitionNotFound {
                topic: self.name.clone(),
                partition: id,
                partitions: self.partitions.len() as u32,
            })
    }

    /// Records how long an append's write phase took (queueing for the topic, deduplication,
    /// writing to the page cache), as opposed to its wait for durability.
    pub fn record_write_phase(&self, elapsed: std::time::Duration) {
        self.metrics.write_seconds.record(elapsed.as_secs_f64());
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Marks the topic deleted once no append is in its write phase; later appends fail.
    pub fn mark_deleted(&self) {
        // Set under the append lock: a write phase either finished before, or sees the flag.
        let writers = self.append.lock().unwrap();
        self.deleted.store(true, Ordering::Release);
        drop(writers);
        self.change.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Waits for the end of the write phase of any append in progress.
    pub fn quiesce(&self) {
        drop(self.append.lock().unwrap());
    }

    pub async fn wait_dedup_ready(&self) {
        let mut ready = self.dedup_ready.subscribe();
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// Refills the dedup index from the events appended within the window, reading the newest
    /// `dedup_entries_max / partitions` records of each partition at most, so a restart costs
    /// the same whatever the log's size. Blocking. Appends wait for it.
    pub fn rebuild_dedup(&self, now_ms: i64) -> Result<usize, LogError> {
        let config = self.config();
        let mut entries = Vec::new();
        if config.dedup_window_ms > 0 {
            let since_ms = now_ms.saturating_sub(config.dedup_window_ms as i64);
            let per_partition =
                u64::from(config.dedup_entries_max).div_ceil(self.partitions.len() as u64);
            for partition in &self.partitions {
                let end = partition.visible_end();
                let by_count = end.saturating_sub(per_partition);
                let by_time = partition.offset_at_or_after(since_ms)?;
                partition.scan_keys(by_count.max(by_time), end, |offset, time_ms, key| {
                    entries.push((time_ms, partition.id, offset, key));
                })?;
            }
        }
        entries
            .sort_unstable_by_key(|&(time_ms, partition, offset, _)| (time_ms, partition, offset));
        let mut state = self.append.lock().unwrap();
        for (time_ms, partition, offset, key) in &entries {
            state.dedup.insert(*key, *partition, *offset, *time_ms);
        }
        let count = state.dedup.len();
        drop(state);
        self.mark_dedup_ready();
        Ok(count)
    }

    pub fn mark_dedup_ready(&self) {
        self.dedup_ready.send_replace(true);
    }

    /// The write phase of an append (blocking): deduplicate, choose partitions, write to the
    /// page cache. Returns the receipts and what must be durable before answering.
    pub fn write_batch(
        &self,
        events: &[Event],
        now_ms: i64,
    ) -> Result<(Vec<AppendReceipt>, Vec<DurableWait>), LogError> {
        let config = self.config();
        for (index, event) in events.iter().enumerate() {
            if event.json().len() > config.event_bytes_max as usize {
                return Err(LogError::EventTooLarge {
                    topic: self.name.clone(),
                    index,
                    bytes: event.json().len(),
                    max: config.event_bytes_max,
                });
            }
        }
        let mut state = self.append.lock().unwrap();
        if self.is_deleted() {
            return Err(LogError::TopicNotFound {
                topic: self.name.clone(),
            });
        }
        let partition_count = self.partitions.len() as u32;
        let keyless_partition = state.next_keyless_partition;
        let mut used_keyless = false;

        enum Slot {
            New { partition: usize, index: usize },
            Duplicate(PartitionId, Offset),
            DuplicateInBatch(usize),
        }
        let mut slots = Vec::with_capacity(events.len());
        let mut per_partition: Vec<Vec<&Event>> = vec![Vec::new(); self.partitions.len()];
        let mut seen_in_batch: HashMap<u128, usize, BuildHasherDefault<PassThroughHasher>> =
            HashMap::default();
        let dedup = state.dedup.enabled();
        for (i, event) in events.iter().enumerate() {
            if dedup {
                if let Some((partition, offset)) = state.dedup.get(event.dedup_key(), now_ms) {
                    slots.push(Slot::Duplicate(partition, offset));
                    continue;
                }
                if let Some(&original) = seen_in_batch.get(&event.dedup_key().0) {
                    slots.push(Slot::DuplicateInBatch(original));
                    continue;
                }
                seen_in_batch.insert(event.dedup_key().0, i);
            }
            let partition = match event.routing_key() {
                Some(key) => partition_for_key(key, partition_count),
                None => {
                    used_keyless = true;
                    keyless_partition
                }
            } as usize;
            slots.push(Slot::New {
                partition,
                index: per_partition[partition].len(),
            });
            per_partition[partition].push(event);
        }
        if used_keyless {
            state.next_keyless_partition = (keyless_partition + 1) % partition_count;
        }

        let mut first_offsets: Vec<Option<Offset>> = vec![None; self.partitions.len()];
        let mut failure = None;
        for (partition, batch) in per_partition.iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            match self.partitions[partition].write(batch, now_ms, &config) {
                Ok(first) => first_offsets[partition] = Some(first),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        // Remember what reached the page cache even if a later partition failed, so a retry
        // of the whole call is recognised instead of written twice.
        let mut receipts: Vec<AppendReceipt> = Vec::with_capacity(events.len());
        let mut appended = 0u64;
        let mut appended_bytes = 0u64;
        for (event, slot) in events.iter().zip(&slots) {
            let receipt = match *slot {
                Slot::New { partition, index } => match first_offsets[partition] {
                    Some(first) => {
                        let offset = first + index as u64;
                        state.dedup.insert(
                            event.dedup_key(),
                            partition as PartitionId,
                            offset,
                            now_ms,
                        );
                        appended += 1;
                        appended_bytes += event.json().len() as u64;
                        AppendReceipt {
                            partition: partition as PartitionId,
                            offset,
                            duplicate: false,
                        }
                    }
                    None => AppendReceipt {
                        partition: partition as PartitionId,
                        offset: 0,
                        duplicate: false,
                    },
                },
                Slot::Duplicate(partition, offset) => AppendReceipt {
                    partition,
                    offset,
                    duplicate: true,
                },
                Slot::DuplicateInBatch(original) => AppendReceipt {
                    duplicate: true,
                    ..receipts[original]
                },
            };
            receipts.push(receipt);
        }
        drop(state);
        self.metrics.events.increment(appended);
        self.metrics.bytes.increment(appended_bytes);
        if let Some(e) = failure {
            return Err(e);
        }
        let duplicates = receipts.iter().filter(|r| r.duplicate).count();
        self.metrics.duplicates.increment(duplicates as u64);
        let mut waits: Vec<Offset> = vec![0; self.partitions.len()];
        for receipt in &receipts {
            let end = &mut waits[receipt.partition as usize];
            *end = (*end).max(receipt.offset + 1);
        }
        let waits = waits
            .into_iter()
            .enumerate()
            .filter(|(_, end)| *end > 0)
            .map(|(partition, end)| (self.partitions[partition].clone(), end))
            .collect();
        Ok((receipts, waits))
    }

    /// The write phase of an import (blocking): events copied from another log, at their own
    /// offsets and append times, into one partition (checked by
    /// [`proteus_log::import::check_import`] first, which gave `dedup_keys`). Each event's
    /// dedup key is stored with it as an append would store it; those within the dedup window
    /// are remembered, so a client retrying one after a cut-over is recognised. Returns what
    /// must be durable before answering.
    pub fn import(
        &self,
        partition: PartitionId,
        events: &[StoredEvent],
        dedup_keys: &[DedupKey],
        now_ms: i64,
    ) -> Result<DurableWait, LogError> {
        let config = self.config();
        let target = self.partition(partition)?.clone();
        for (index, stored) in events.iter().enumerate() {
            if stored.json.len() > config.event_bytes_max as usize {
                return Err(LogError::EventTooLarge {
                    topic: self.name.clone(),
                    index,
                    bytes: stored.json.len(),
                    max: config.event_bytes_max,
                });
            }
        }
        let mut state = self.append.lock().unwrap();
        if self.is_deleted() {
            return Err(LogError::TopicNotFound {
                topic: self.name.clone(),
            });
        }
        let first = target.import(events, dedup_keys, &config)?;
        let window_start_ms = now_ms.saturating_sub(config.dedup_window_ms as i64);
        for (stored, key) in events.iter().zip(dedup_keys) {
            if stored.append_time_ms >= window_start_ms {
                state
                    .dedup
                    .insert(*key, partition, stored.offset, stored.append_time_ms);
            }
        }
        drop(state);
        self.metrics.events.increment(events.len() as u64);
        self.metrics
            .bytes
            .increment(events.iter().map(|e| e.json.len() as u64).sum());
        Ok((target, first + events.len() as u64))
    }
}

fn write_topic_file(dir: &Path, config: &TopicConfig) -> std::io::Result<()> {
    let file = TopicFile {
        storage_format_version: STORAGE_FORMAT_VERSION,
        config: config.clone(),
    };
    let bytes = serde_json::to_vec_pretty(&file).expect("a topic config always serialises");
    let tmp = dir.join(format!("{TOPIC_FILE}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(TOPIC_FILE))?;
    sync_dir(dir)
}
