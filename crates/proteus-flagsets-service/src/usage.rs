//! Flag usage: when each flag was last evaluated, for the stale-flag report.
//!
//! - **Hot path:** every version of a set shares one atomic slot per flag holding the second
//!   of its last evaluation. An evaluation loads the slot and stores only when the second has
//!   changed, so it costs a load and, at most once a second per flag, a store: no lock, no
//!   allocation, no queue.
//! - **Durable, coarsely:** every `flush_ms` (and at shutdown) the slots that moved are written
//!   as one snapshot of every set to the `proteus.flags.usage` topic. A kill -9 loses at most
//!   the last interval of usage, which a report counted in days does not notice.
//! - **Several instances** sharing the log write their own snapshots; each flush first merges
//!   the snapshots others wrote since the last one (the later time of each flag wins), so every
//!   instance's report, and its next snapshot, covers the evaluations made through all of them
//!   (at most one `flush_ms` late).
//! - **Start-up reads the tail:** the last complete snapshot is within the last few events, so
//!   start-up time does not grow with the topic. The topic keeps [`RETENTION_MS`]; the first
//!   retained event's time is when tracking started (a flag never evaluated since then counts
//!   as unused only from that moment).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use proteus_flagsets::FlagSetName;
use proteus_log::port::Log;
use proteus_log::{Event, LogError, ReadFrom, ReadLimits, TopicConfig, TopicName};
use serde::{Deserialize, Serialize};

/// The topic usage snapshots go to.
pub const TOPIC: &str = "proteus.flags.usage";
/// The CloudEvent type of a usage snapshot (or of one part of it).
pub const EVENT_TYPE: &str = "dev.proteus.flag.usage";
/// How long snapshots are kept: longer than any sensible staleness window.
pub const RETENTION_MS: u64 = 400 * 24 * 3_600_000;
/// Largest snapshot event, in bytes; a larger snapshot is split into parts.
const SNAPSHOT_PART_BYTES_MAX: usize = 512 * 1024;
/// Events read back from the end of the topic at start-up looking for the last complete
/// snapshot (a snapshot of every set is a handful of parts).
const STARTUP_TAIL_EVENTS_MAX: u64 = 1_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageConfig {
    /// How often moved slots are written to the topic.
    pub flush_ms: u64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig { flush_ms: 60_000 }
    }
}

/// One flag's slot: the second (since the Unix epoch) of its last evaluation, 0 for never.
pub type UsageSlot = Arc<AtomicI64>;

/// Records that the flag owning `slot` was evaluated at `now_ms`.
#[inline]
pub fn record(slot: &AtomicI64, now_ms: i64) {
    let second = now_ms / 1_000;
    if slot.load(Ordering::Relaxed) < second {
        slot.store(second, Ordering::Relaxed);
    }
}

/// One event of a snapshot: `sets` holds `set -> flag -> last evaluated (ms)`.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotPart {
    snapshot_ms: i64,
    part: u32,
    parts: u32,
    sets: BTreeMap<String, BTreeMap<String, i64>>,
}

pub(crate) struct UsageTracker {
    log: Arc<dyn Log>,
    topic: TopicName,
    slots: Mutex<HashMap<FlagSetName, HashMap<String, UsageSlot>>>,
    /// What the last flush wrote, to write nothing when nothing moved.
    flushed: Mutex<BTreeMap<String, BTreeMap<String, i64>>>,
    /// Serialises flushes (the ticker and shutdown).
    flushing: tokio::sync::Mutex<()>,
    /// The next offset of the topic to merge (other instances' snapshots). Moved by flushes.
    merged: Mutex<u64>,
    /// Makes this instance's snapshot ids unique among the instances sharing the log.
    instance: String,
    tracked_since_ms: i64,
}

impl UsageTracker {
    /// Creates the topic if needed and loads the last snapshot.
    pub(crate) async fn open(log: Arc<dyn Log>, now_ms: i64) -> Result<UsageTracker, LogError> {
        let topic = TopicName::parse(TOPIC).expect("the usage topic name is valid");
        let description = match log.describe_topic(&topic).await {
            Ok(description) => description,
            Err(LogError::TopicNotFound { .. }) => {
                let config = TopicConfig {
                    partitions: 1,
                    retention_ms: Some(RETENTION_MS),
                    ..TopicConfig::default()
                };
                log.put_topic(&topic, config).await?;
                log.describe_topic(&topic).await?
            }
            Err(e) => return Err(e),
        };
        let (first, end) = description
            .partitions
            .first()
            .map_or((0, 0), |p| (p.first_offset, p.next_offset));
        let mut tracked_since_ms = now_ms;
        let mut last = BTreeMap::new();
        if end > first {
            let limits = ReadLimits {
                events_max: 1,
                bytes_max: 1,
            };
            let oldest = log.read(&topic, 0, ReadFrom::Offset(first), limits).await?;
            if let Some(event) = oldest.events.first() {
                tracked_since_ms = event.append_time_ms;
            }
            last = read_last_snapshot(
                &*log,
                &topic,
                first.max(end.saturating_sub(STARTUP_TAIL_EVENTS_MAX)),
                end,
            )
            .await?;
        }
        let slots = last
            .iter()
            .filter_map(|(set, flags)| {
                let set = FlagSetName::parse(set).ok()?;
                let flags = flags
                    .iter()
                    .map(|(key, ms)| (key.clone(), Arc::new(AtomicI64::new(ms / 1_000))))
                    .collect();
                Some((set, flags))
            })
            .collect();
        Ok(UsageTracker {
            log,
            topic,
            slots: Mutex::new(slots),
            flushed: Mutex::new(last),
            flushing: tokio::sync::Mutex::new(()),
            merged: Mutex::new(end),
            instance: uuid::Uuid::now_v7().simple().to_string(),
            tracked_since_ms,
        })
    }

    pub(crate) fn tracked_since_ms(&self) -> i64 {
        self.tracked_since_ms
    }

    /// The slots of `keys` in `set`, in order, created as needed. Every version of a set gets
    /// the same slot for the same flag.
    pub(crate) fn slots<'k>(
        &self,
        set: &FlagSetName,
        keys: impl Iterator<Item = &'k str>,
    ) -> Vec<UsageSlot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let set = slots.entry(set.clone()).or_default();
        keys.map(|key| set.entry(key.to_owned()).or_default().clone())
            .collect()
    }

    /// When `key` of `set` was last evaluated, in milliseconds (second precision).
    pub(crate) fn last_evaluated_ms(&self, set: &FlagSetName, key: &str) -> Option<i64> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let second = slots.get(set)?.get(key)?.load(Ordering::Relaxed);
        (second > 0).then_some(second * 1_000)
    }

    /// Forgets the slots of flags that no longer exist (`live` lists, per set, the flags that
    /// do), so a deleted flag's usage does not outlive it.
    pub(crate) fn retain(&self, live: &HashMap<FlagSetName, Vec<String>>) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|set, flags| match live.get(set) {
            Some(keys) => {
                flags.retain(|key, _| keys.contains(key));
                true
            }
            None => false,
        });
    }

    /// Merges the snapshots written since the last merge (other instances', and this one's,
    /// which changes nothing): each flag keeps the later of its two times.
    async fn merge_new_snapshots(&self) -> Result<(), LogError> {
        loop {
            let from = *self.merged.lock().unwrap_or_else(|p| p.into_inner());
            let batch = self
                .log
                .read(
                    &self.topic,
                    0,
                    ReadFrom::Offset(from),
                    ReadLimits::default(),
                )
                .await?;
            if batch.events.is_empty() {
                return Ok(());
            }
            {
                let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                for part in batch.events.iter().filter_map(decode_part) {
                    for (set, flags) in part.sets {
                        let Ok(set) = FlagSetName::parse(&set) else {
                            continue;
                        };
                        let slots = slots.entry(set).or_default();
                        for (key, ms) in flags {
                            slots
                                .entry(key)
                                .or_default()
                                .fetch_max(ms / 1_000, Ordering::Relaxed);
                        }
                    }
                }
            }
            *self.merged.lock().unwrap_or_else(|p| p.into_inner()) = batch.next_offset;
        }
    }

    /// Merges what other instances wrote, then writes a snapshot if any slot moved since the
    /// last one.
    pub(crate) async fn flush(&self, now_ms: i64) -> Result<(), LogError> {
        let _flushing = self.flushing.lock().await;
        self.merge_new_snapshots().await?;
        let current: BTreeMap<String, BTreeMap<String, i64>> = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots
                .iter()
                .map(|(set, flags)| {
                    let used = flags
                        .iter()
                        .map(|(key, slot)| (key.clone(), slot.load(Ordering::Relaxed) * 1_000))
                        .filter(|(_, ms)| *ms > 0)
                        .collect::<BTreeMap<_, _>>();
                    (set.to_string(), used)
                })
                .filter(|(_, used)| !used.is_empty())
                .collect()
        };
        if *self.flushed.lock().unwrap_or_else(|p| p.into_inner()) == current {
            return Ok(());
        }
        let events = snapshot_events(&current, now_ms, &self.instance);
        self.log.append(&self.topic, events).await?;
        *self.flushed.lock().unwrap_or_else(|p| p.into_inner()) = current;
        Ok(())
    }
}

/// The snapshot as events of at most [`SNAPSHOT_PART_BYTES_MAX`] each (one set per part at
/// least; a set document is bounded, so is its usage).
fn snapshot_events(
    sets: &BTreeMap<String, BTreeMap<String, i64>>,
    now_ms: i64,
    instance: &str,
) -> Vec<Event> {
    let mut parts: Vec<BTreeMap<String, BTreeMap<String, i64>>> = vec![BTreeMap::new()];
    let mut part_bytes = 0;
    for (set, flags) in sets {
        let bytes: usize = flags.keys().map(|key| key.len() + 24).sum::<usize>() + set.len();
        if part_bytes + bytes > SNAPSHOT_PART_BYTES_MAX
            && parts.last().is_some_and(|p| !p.is_empty())
        {
            parts.push(BTreeMap::new());
            part_bytes = 0;
        }
        part_bytes += bytes;
        if let Some(part) = parts.last_mut() {
            part.insert(set.clone(), flags.clone());
        }
    }
    let count = parts.len() as u32;
    parts
        .into_iter()
        .enumerate()
        .filter_map(|(index, sets)| {
            let data = SnapshotPart {
                snapshot_ms: now_ms,
                part: index as u32,
                parts: count,
                sets,
            };
            let event = serde_json::json!({
                "specversion": "1.0",
                "id": format!("usage-{instance}-{now_ms}-{index}"),
                "source": "/proteus/flags/usage",
                "type": EVENT_TYPE,
                "datacontenttype": "application/json",
                "data": data,
            });
            Event::from_json(&serde_json::to_vec(&event).ok()?).ok()
        })
        .collect()
}

/// The snapshot part an event of the topic holds; `None` (logged) for one that cannot be read.
fn decode_part(stored: &proteus_log::port::StoredEvent) -> Option<SnapshotPart> {
    #[derive(Deserialize)]
    struct Envelope {
        data: SnapshotPart,
    }
    match serde_json::from_slice::<Envelope>(&stored.json) {
        Ok(envelope) => Some(envelope.data),
        Err(error) => {
            tracing::warn!(offset = stored.offset, %error,
                "a flag usage event cannot be read; it is ignored (usage is advisory)");
            None
        }
    }
}

/// The sets of the last snapshot whose parts are all in `[from, end)`; an incomplete last
/// snapshot (a crash between parts) gives way to the one before it.
async fn read_last_snapshot(
    log: &dyn Log,
    topic: &TopicName,
    from: u64,
    end: u64,
) -> Result<BTreeMap<String, BTreeMap<String, i64>>, LogError> {
    let mut parts = Vec::new();
    let mut offset = from;
    while offset < end {
        let batch = log
            .read(topic, 0, ReadFrom::Offset(offset), ReadLimits::default())
            .await?;
        if batch.events.is_empty() {
            break;
        }
        parts.extend(batch.events.iter().filter_map(decode_part));
        offset = batch.next_offset;
    }
    let mut snapshots: BTreeMap<i64, Vec<SnapshotPart>> = BTreeMap::new();
    for part in parts {
        snapshots.entry(part.snapshot_ms).or_default().push(part);
    }
    let complete = snapshots.into_values().rev().find(|parts| {
        parts
            .first()
            .is_some_and(|p| p.parts as usize == parts.len())
    });
    Ok(complete
        .into_iter()
        .flatten()
        .flat_map(|part| part.sets)
        .collect())
}
