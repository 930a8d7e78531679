//! [`MemoryLog`]: the log port in process memory, for tests and for runtimes that need no
//! durability. It keeps every promise of the port (the conformance suite runs on it) except
//! surviving the process: partitions and offsets, the Kafka partitioner, keyless calls kept
//! together on one partition in turn, deduplication within the topic's window, reads by offset
//! or time with their limits, waits, and retention by age and size.
//!
//! One lock guards the whole log: an append checks, deduplicates, places and stores all its
//! events before the lock is released, so a reader sees whole calls and offsets without gaps.
//! Retention runs on each append to a topic, before it (to make room) and after it (so a
//! topic never holds more than its `retention_bytes`), and on [`MemoryLog::apply_retention`]; nothing
//! runs in the background, so no async runtime is needed: waits park their `Waker` in the log
//! and time out through `proteus-timer`.
//!
//! [`Log::shutdown`] closes a handle (and its clones): later calls through it fail with
//! [`LogError::Unavailable`] and its waits end. The events stay in memory as long as some
//! handle holds them; [`MemoryLog::reopen`] gives a new, open handle over them, which is what
//! opening the same storage again is for a durable log.
//!
//! Everything it holds is bounded: events by [`MemoryLogConfig::bytes_max`], deduplication
//! entries by each topic's `dedup_entries_max`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use proteus_timer::{Wait, WaitUntil};

use crate::error::LogError;
use crate::event::Event;
use crate::partitioner::partition_for_key;
use crate::port::{
    AppendReceipt, EventAppender, EventReader, EventSubscriber, Log, PartitionDescription,
    PutTopicOutcome, READ_BYTES_MAX, READ_EVENTS_MAX, ReadBatch, ReadFrom, ReadLimits, StoredEvent,
    TopicAdmin, TopicDescription, bounded_wait,
};
use crate::position::{Cursor, Offset, PartitionId};
use crate::topic::{TopicConfig, TopicName};

/// Default bound of the bytes of events a [`MemoryLog`] holds: 256 MiB.
pub const MEMORY_BYTES_MAX_DEFAULT: u64 = 256 * 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLogConfig {
    /// Most bytes of events (their CloudEvents JSON) held across every topic. An append that
    /// would pass it is refused with [`LogError::Unavailable`]; retention frees space.
    pub bytes_max: u64,
}

impl Default for MemoryLogConfig {
    fn default() -> Self {
        MemoryLogConfig {
            bytes_max: MEMORY_BYTES_MAX_DEFAULT,
        }
    }
}

/// A log in memory. Clones share the log and its open or closed state;
/// [`reopen`](Self::reopen) shares the log with a state of its own.
#[derive(Clone, Default)]
pub struct MemoryLog {
    shared: Arc<Shared>,
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for MemoryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLog")
            .field("closed", &self.closed.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    config: MemoryLogConfig,
    /// Added to the system clock: [`MemoryLog::advance_clock`] moves time forward for tests.
    clock_offset_ms: AtomicI64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    topics: BTreeMap<TopicName, Topic>,
    /// Bytes of every event held.
    bytes: u64,
    /// Parked waits, woken by every append, topic deletion and shutdown.
    waiters: proteus_timer::Parked<()>,
}

struct Topic {
    config: TopicConfig,
    partitions: Vec<Partition>,
    next_keyless_partition: PartitionId,
    dedup: Dedup,
}

#[derive(Default)]
struct Partition {
    /// The offset of `events[0]` (the next offset when empty).
    first_offset: Offset,
    events: VecDeque<StoredEvent>,
    bytes: u64,
    last_append_ms: i64,
}

impl Partition {
    fn end_offset(&self) -> Offset {
        self.first_offset + self.events.len() as u64
    }

    fn remove_front(&mut self) -> u64 {
        let Some(event) = self.events.pop_front() else {
            return 0;
        };
        self.first_offset += 1;
        let bytes = event.json.len() as u64;
        self.bytes -= bytes;
        bytes
    }
}

/// The (`source`, `id`) pairs appended within the window, oldest first in `order`.
#[derive(Default)]
struct Dedup {
    positions: HashMap<u128, (PartitionId, Offset, i64)>,
    order: VecDeque<(i64, u128)>,
}

impl Dedup {
    fn get(&self, key: u128, now_ms: i64, config: &TopicConfig) -> Option<(PartitionId, Offset)> {
        let &(partition, offset, time_ms) = self.positions.get(&key)?;
        (now_ms.saturating_sub(time_ms) < config.dedup_window_ms as i64)
            .then_some((partition, offset))
    }

    fn insert(&mut self, key: u128, at: (PartitionId, Offset), now_ms: i64, config: &TopicConfig) {
        self.positions.insert(key, (at.0, at.1, now_ms));
        self.order.push_back((now_ms, key));
        while let Some(&(time_ms, oldest)) = self.order.front() {
            let expired = now_ms.saturating_sub(time_ms) >= config.dedup_window_ms as i64;
            if !expired && self.order.len() <= config.dedup_entries_max as usize {
                break;
            }
            self.order.pop_front();
            // A key appended again after it expired has a newer entry: keep that one.
            if self
                .positions
                .get(&oldest)
                .is_some_and(|entry| entry.2 == time_ms)
            {
                self.positions.remove(&oldest);
            }
        }
    }
}

fn enabled(config: &TopicConfig) -> bool {
    config.dedup_window_ms > 0 && config.dedup_entries_max > 0
}

fn closed() -> LogError {
    LogError::Unavailable {
        reason: "the log was shut down".into(),
    }
}

fn not_found(name: &TopicName) -> LogError {
    LogError::TopicNotFound {
        topic: name.clone(),
    }
}

impl MemoryLog {
    pub fn new(config: MemoryLogConfig) -> MemoryLog {
        MemoryLog {
            shared: Arc::new(Shared {
                config,
                ..Shared::default()
            }),
            closed: Arc::default(),
        }
    }

    /// A new, open handle over the same events, as opening the same storage again after
    /// [`Log::shutdown`] would give.
    pub fn reopen(&self) -> MemoryLog {
        MemoryLog {
            shared: self.shared.clone(),
            closed: Arc::default(),
        }
    }

    /// Moves this log's clock forward (append times, retention and the dedup window), for
    /// tests of time-based behaviour.
    pub fn advance_clock(&self, by: Duration) {
        let by_ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.shared
            .clock_offset_ms
            .fetch_add(by_ms, Ordering::AcqRel);
    }

    /// Removes the events every topic's retention no longer keeps (appends do it for their
    /// topic).
    pub fn apply_retention(&self) {
        let now_ms = self.now_ms();
        let mut state = self.shared.lock();
        let mut freed = 0;
        for topic in state.topics.values_mut() {
            freed += apply_retention(topic, now_ms);
        }
        state.bytes -= freed;
    }

    fn now_ms(&self) -> i64 {
        let system_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as i64);
        system_ms.saturating_add(self.shared.clock_offset_ms.load(Ordering::Acquire))
    }

    fn open_state(&self) -> Result<MutexGuard<'_, State>, LogError> {
        let state = self.shared.lock();
        if self.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        Ok(state)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change to the state is whole between statements; a panic elsewhere (in a
        // caller's thread holding no partial change) does not leave it broken.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every parked wait; each checks again what it waits for.
    fn wake_all(&self) {
        let wakers = self.lock().waiters.take_all();
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// Drops the oldest events of each partition of `topic` past its retention (age, then size;
/// the size bound keeps a partition's newest event); returns the bytes freed.
fn apply_retention(topic: &mut Topic, now_ms: i64) -> u64 {
    let mut freed = 0;
    for partition in &mut topic.partitions {
        if let Some(retention_ms) = topic.config.retention_ms {
            let oldest_kept_ms = now_ms.saturating_sub(retention_ms as i64);
            while partition
                .events
                .front()
                .is_some_and(|event| event.append_time_ms < oldest_kept_ms)
            {
                freed += partition.remove_front();
            }
        }
        if let Some(retention_bytes) = topic.config.retention_bytes {
            while partition.bytes > retention_bytes && partition.events.len() > 1 {
                freed += partition.remove_front();
            }
        }
    }
    freed
}

fn describe(name: &TopicName, topic: &Topic) -> TopicDescription {
    TopicDescription {
        name: name.clone(),
        config: topic.config.clone(),
        partitions: topic
            .partitions
            .iter()
            .enumerate()
            .map(|(index, partition)| PartitionDescription {
                partition: index as PartitionId,
                first_offset: partition.first_offset,
                next_offset: partition.end_offset(),
                bytes: partition.bytes,
                segments: Some(1),
            })
            .collect(),
    }
}

fn partition_of<'t>(
    name: &TopicName,
    topic: &'t Topic,
    partition: PartitionId,
) -> Result<&'t Partition, LogError> {
    topic
        .partitions
        .get(partition as usize)
        .ok_or_else(|| LogError::PartitionNotFound {
            topic: name.clone(),
            partition,
            partitions: topic.partitions.len() as u32,
        })
}

#[async_trait]
impl TopicAdmin for MemoryLog {
    async fn put_topic(
        &self,
        name: &TopicName,
        config: TopicConfig,
    ) -> Result<PutTopicOutcome, LogError> {
        config.validate()?;
        let mut state = self.open_state()?;
        if let Some(topic) = state.topics.get_mut(name) {
            if topic.config.partitions != config.partitions {
                return Err(LogError::partition_count_fixed(
                    name,
                    topic.config.partitions,
                    config.partitions,
                ));
            }
            if topic.config == config {
                return Ok(PutTopicOutcome::Unchanged);
            }
            topic.config = config;
            return Ok(PutTopicOutcome::Updated);
        }
        let partitions = (0..config.partitions)
            .map(|_| Partition::default())
            .collect();
        state.topics.insert(
            name.clone(),
            Topic {
                config,
                partitions,
                next_keyless_partition: 0,
                dedup: Dedup::default(),
            },
        );
        Ok(PutTopicOutcome::Created)
    }

    async fn list_topics(&self) -> Result<Vec<TopicDescription>, LogError> {
        let state = self.open_state()?;
        Ok(state
            .topics
            .iter()
            .map(|(name, topic)| describe(name, topic))
            .collect())
    }

    async fn describe_topic(&self, name: &TopicName) -> Result<TopicDescription, LogError> {
        let state = self.open_state()?;
        let topic = state.topics.get(name).ok_or_else(|| not_found(name))?;
        Ok(describe(name, topic))
    }

    async fn delete_topic(&self, name: &TopicName) -> Result<(), LogError> {
        {
            let mut state = self.open_state()?;
            let topic = state.topics.remove(name).ok_or_else(|| not_found(name))?;
            state.bytes -= topic.partitions.iter().map(|p| p.bytes).sum::<u64>();
        }
        // Waits on the deleted topic end with TopicNotFound.
        self.shared.wake_all();
        Ok(())
    }
}

#[async_trait]
impl EventAppender for MemoryLog {
    async fn append(
        &self,
        name: &TopicName,
        events: Vec<Event>,
    ) -> Result<Vec<AppendReceipt>, LogError> {
        let now_ms = self.now_ms();
        let receipts = {
            let mut guard = self.open_state()?;
            let state = &mut *guard;
            let topic = state.topics.get_mut(name).ok_or_else(|| not_found(name))?;
            append_to(
                name,
                topic,
                &mut state.bytes,
                self.shared.config,
                events,
                now_ms,
            )?
        };
        self.shared.wake_all();
        Ok(receipts)
    }
}

/// The whole of an append, under the log's lock: checked first, so a refused call stores
/// nothing.
fn append_to(
    name: &TopicName,
    topic: &mut Topic,
    log_bytes: &mut u64,
    config: MemoryLogConfig,
    events: Vec<Event>,
    now_ms: i64,
) -> Result<Vec<AppendReceipt>, LogError> {
    let event_bytes_max = topic.config.event_bytes_max as usize;
    if let Some((index, event)) = events
        .iter()
        .enumerate()
        .find(|(_, event)| event.json().len() > event_bytes_max)
    {
        return Err(LogError::EventTooLarge {
            topic: name.clone(),
            index,
            bytes: event.json().len(),
            max: topic.config.event_bytes_max,
        });
    }
    // Past retention first, so the bound below counts only what is kept.
    *log_bytes -= apply_retention(topic, now_ms);
    let dedup = enabled(&topic.config);
    let partition_count = topic.partitions.len() as u32;
    let keyless_partition = topic.next_keyless_partition;
    let mut used_keyless = false;
    // Per event, its receipt: where it will be stored, or where its original is.
    let mut receipts: Vec<AppendReceipt> = Vec::with_capacity(events.len());
    let mut first_in_call: HashMap<u128, usize> = HashMap::new();
    let mut next_offsets: Vec<Offset> =
        topic.partitions.iter().map(Partition::end_offset).collect();
    let mut added_bytes = 0u64;
    for (index, event) in events.iter().enumerate() {
        let key = event.dedup_key().0;
        if dedup {
            if let Some((partition, offset)) = topic.dedup.get(key, now_ms, &topic.config) {
                receipts.push(AppendReceipt {
                    partition,
                    offset,
                    duplicate: true,
                });
                continue;
            }
            if let Some(&original) = first_in_call.get(&key) {
                receipts.push(AppendReceipt {
                    duplicate: true,
                    ..receipts[original]
                });
                continue;
            }
            first_in_call.insert(key, index);
        }
        let partition = match event.routing_key() {
            Some(key) => partition_for_key(key, partition_count),
            None => {
                used_keyless = true;
                keyless_partition
            }
        };
        let offset = next_offsets[partition as usize];
        next_offsets[partition as usize] += 1;
        added_bytes += event.json().len() as u64;
        receipts.push(AppendReceipt {
            partition,
            offset,
            duplicate: false,
        });
    }
    if *log_bytes + added_bytes > config.bytes_max {
        return Err(LogError::Unavailable {
            reason: format!(
                "the memory log holds {} bytes of events and this append adds {added_bytes}, past its bytes_max of {}; delete topics, shorten their retention, or raise MemoryLogConfig::bytes_max",
                *log_bytes, config.bytes_max
            ),
        });
    }
    if used_keyless {
        topic.next_keyless_partition = (keyless_partition + 1) % partition_count;
    }
    for (event, receipt) in events.into_iter().zip(&receipts) {
        if receipt.duplicate {
            continue;
        }
        let partition = &mut topic.partitions[receipt.partition as usize];
        debug_assert_eq!(receipt.offset, partition.end_offset());
        // Append times never decrease within a partition, even if the clock goes back.
        let append_time_ms = now_ms.max(partition.last_append_ms);
        partition.last_append_ms = append_time_ms;
        if dedup {
            let at = (receipt.partition, receipt.offset);
            topic
                .dedup
                .insert(event.dedup_key().0, at, now_ms, &topic.config);
        }
        let json = event.into_json();
        partition.bytes += json.len() as u64;
        partition.events.push_back(StoredEvent {
            partition: receipt.partition,
            offset: receipt.offset,
            append_time_ms,
            json,
        });
    }
    *log_bytes += added_bytes;
    // Retention by size holds as soon as the call is stored (by age it cannot remove the
    // events just written).
    *log_bytes -= apply_retention(topic, now_ms);
    Ok(receipts)
}

#[async_trait]
impl EventReader for MemoryLog {
    async fn read(
        &self,
        name: &TopicName,
        partition: PartitionId,
        from: ReadFrom,
        limits: ReadLimits,
    ) -> Result<ReadBatch, LogError> {
        let state = self.open_state()?;
        let topic = state.topics.get(name).ok_or_else(|| not_found(name))?;
        let stored = partition_of(name, topic, partition)?;
        let end_offset = stored.end_offset();
        let start = match from {
            ReadFrom::Offset(offset) if offset > end_offset => {
                return Err(LogError::OffsetOutOfRange {
                    topic: name.clone(),
                    partition,
                    offset,
                    end_offset,
                });
            }
            ReadFrom::Offset(offset) => offset.max(stored.first_offset),
            ReadFrom::TimeMs(time_ms) => {
                // Append times never decrease within a partition.
                let index = stored
                    .events
                    .partition_point(|event| event.append_time_ms < time_ms);
                stored.first_offset + index as u64
            }
        };
        // Bounded as every adapter bounds reads, whatever the caller asks.
        let events_max = u64::from(limits.events_max.clamp(1, READ_EVENTS_MAX));
        let bytes_max = u64::from(limits.bytes_max.min(READ_BYTES_MAX));
        let mut events = Vec::new();
        let mut bytes = 0u64;
        for event in stored
            .events
            .range((start - stored.first_offset) as usize..)
        {
            let size = event.json.len() as u64;
            let full = events.len() as u64 >= events_max
                || (!events.is_empty() && bytes + size > bytes_max);
            if full {
                break;
            }
            bytes += size;
            events.push(event.clone());
        }
        Ok(ReadBatch {
            next_offset: start + events.len() as u64,
            events,
            first_offset: stored.first_offset,
            end_offset,
        })
    }
}

#[async_trait]
impl EventSubscriber for MemoryLog {
    async fn wait_for_events(
        &self,
        name: &TopicName,
        positions: &Cursor,
        timeout: Duration,
    ) -> Result<bool, LogError> {
        {
            // Unknown topics and partitions are refused before waiting.
            let state = self.open_state()?;
            let topic = state.topics.get(name).ok_or_else(|| not_found(name))?;
            for (partition, _) in positions.iter() {
                partition_of(name, topic, partition)?;
            }
        }
        let deadline = Instant::now() + bounded_wait(timeout);
        WaitUntil::new(
            EventsArrive {
                log: self,
                name,
                positions,
            },
            deadline,
        )
        .await
    }
}

#[async_trait]
impl Log for MemoryLog {
    async fn shutdown(&self) -> Result<(), LogError> {
        {
            // Under the lock: an append in progress finishes first, later ones see it.
            let _state = self.shared.lock();
            self.closed.store(true, Ordering::Release);
        }
        self.shared.wake_all();
        Ok(())
    }
}

/// A wait for an event at or after a watched position, the topic's deletion, or the handle's
/// shutdown (its deadline is the [`WaitUntil`]'s).
struct EventsArrive<'a> {
    log: &'a MemoryLog,
    name: &'a TopicName,
    positions: &'a Cursor,
}

impl EventsArrive<'_> {
    /// What the wait ends with now, if it ends.
    fn outcome(&self, state: &State) -> Option<Result<bool, LogError>> {
        if self.log.closed.load(Ordering::Acquire) {
            return Some(Err(closed()));
        }
        let Some(topic) = state.topics.get(self.name) else {
            return Some(Err(not_found(self.name)));
        };
        let arrived = self.positions.iter().any(|(partition, offset)| {
            topic
                .partitions
                .get(partition as usize)
                .is_some_and(|p| p.end_offset() > offset)
        });
        arrived.then_some(Ok(true))
    }
}

impl Wait for EventsArrive<'_> {
    type Output = Result<bool, LogError>;

    fn check_or_park(&self, slot: &mut Option<u64>, waker: &Waker) -> Option<Self::Output> {
        // Checked and parked under the lock every append takes before waking waits: no
        // append slips between them unnoticed.
        let mut state = self.log.shared.lock();
        if let Some(done) = self.outcome(&state) {
            state.waiters.unpark(slot);
            return Some(done);
        }
        state.waiters.park(slot, (), waker);
        None
    }

    fn unpark(&self, slot: &mut Option<u64>) {
        self.log.shared.lock().waiters.unpark(slot);
    }

    fn timed_out(&self) -> Self::Output {
        Ok(false)
    }

    fn timer_failed(&self, reason: String) -> Self::Output {
        Err(LogError::Unavailable { reason })
    }
}
