//! The ports: what every log adapter provides.
//!
//! Four traits, one per concern, and [`Log`], which is all four. Adapters implement the four;
//! callers usually hold an `Arc<dyn Log>`. Every promise written on these traits is checked by
//! the conformance suite in `proteus-log-conformance`, which every adapter runs.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::LogError;
use crate::event::Event;
use crate::position::{Cursor, Offset, PartitionId};
use crate::topic::{TopicConfig, TopicName};

/// Where an appended event landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendReceipt {
    pub partition: PartitionId,
    pub offset: Offset,
    /// The event's (`source`, `id`) was already appended within the dedup window: nothing was
    /// written, and `partition`/`offset` are those of the original.
    pub duplicate: bool,
}

/// An event as stored: its position, the time the log appended it, and its CloudEvents JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub partition: PartitionId,
    pub offset: Offset,
    /// Milliseconds since the Unix epoch at which the log appended the event. Never decreases
    /// within a partition.
    pub append_time_ms: i64,
    /// The event in CloudEvents JSON format, exactly as appended.
    pub json: Bytes,
}

/// Where a read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// At this offset. An offset already removed by retention reads from the first retained
    /// event; an offset past the end is [`LogError::OffsetOutOfRange`].
    Offset(Offset),
    /// At the first event appended at or after this time (milliseconds since the Unix epoch).
    TimeMs(i64),
}

/// How much one read may return. At least one event is returned when one is available, even if
/// it alone is larger than `bytes_max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    pub events_max: u32,
    pub bytes_max: u32,
}

/// Most events one read returns.
pub const READ_EVENTS_MAX: u32 = 10_000;
/// Most bytes one read returns (beyond a single larger event).
pub const READ_BYTES_MAX: u32 = 16 * 1024 * 1024;

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            events_max: 1_000,
            bytes_max: 1024 * 1024,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadBatch {
    pub events: Vec<StoredEvent>,
    /// Where the next read should start.
    pub next_offset: Offset,
    /// The first offset still retained in the partition when the read happened.
    pub first_offset: Offset,
    /// The offset the next appended event will get: the partition's end when the read happened.
    pub end_offset: Offset,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionDescription {
    pub partition: PartitionId,
    /// First retained offset (equal to `next_offset` when the partition is empty).
    pub first_offset: Offset,
    /// The offset the next appended event will get.
    pub next_offset: Offset,
    /// Bytes on disk (or in the backend) for this partition's events and indexes.
    pub bytes: u64,
    /// Segment files, on a log made of them (embedded, in-memory); `None` on a backend that
    /// keeps its own storage (NATS JetStream), where `segment_bytes` has no effect either.
    pub segments: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicDescription {
    pub name: TopicName,
    pub config: TopicConfig,
    pub partitions: Vec<PartitionDescription>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutTopicOutcome {
    Created,
    Updated,
    Unchanged,
}

#[async_trait]
pub trait TopicAdmin: Send + Sync {
    /// Creates the topic, or updates its mutable settings if it exists. Changing the partition
    /// count of an existing topic is [`LogError::TopicConflict`].
    async fn put_topic(
        &self,
        name: &TopicName,
        config: TopicConfig,
    ) -> Result<PutTopicOutcome, LogError>;

    /// All topics, sorted by name.
    async fn list_topics(&self) -> Result<Vec<TopicDescription>, LogError>;

    async fn describe_topic(&self, name: &TopicName) -> Result<TopicDescription, LogError>;

    /// Deletes the topic and all its events. Appends and reads in flight fail or finish; none
    /// is applied to a topic created later under the same name.
    async fn delete_topic(&self, name: &TopicName) -> Result<(), LogError>;
}

#[async_trait]
pub trait EventAppender: Send + Sync {
    /// Appends events and returns, in the same order, where each one is. The call returns only
    /// once every event is as durable as the adapter's durability setting promises. Events that
    /// share a partition keep their order within the call. On error nothing in the call is
    /// acknowledged, though some events may have been written (a retry with the same ids is
    /// then recognised as duplicates within the dedup window).
    async fn append(
        &self,
        topic: &TopicName,
        events: Vec<Event>,
    ) -> Result<Vec<AppendReceipt>, LogError>;
}

#[async_trait]
pub trait EventReader: Send + Sync {
    /// Reads events of one partition in offset order. Only acknowledged (durable) events are
    /// ever returned.
    async fn read(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        from: ReadFrom,
        limits: ReadLimits,
    ) -> Result<ReadBatch, LogError>;
}

/// The longest a wait lasts: a longer timeout (up to `Duration::MAX`) waits this long.
pub const WAIT_MAX: Duration = Duration::from_secs(24 * 60 * 60);

/// `timeout`, at most [`WAIT_MAX`]: what adapters add to their clock.
pub fn bounded_wait(timeout: Duration) -> Duration {
    timeout.min(WAIT_MAX)
}

#[async_trait]
pub trait EventSubscriber: Send + Sync {
    /// Waits until one of the partitions in `positions` has an event at or after the offset
    /// given for it, or `timeout` (at most [`WAIT_MAX`]) passes. Returns whether such an event
    /// is there. Partitions absent from `positions` are not watched.
    async fn wait_for_events(
        &self,
        topic: &TopicName,
        positions: &Cursor,
        timeout: Duration,
    ) -> Result<bool, LogError>;
}

/// A complete log: what the server and the other domains use.
#[async_trait]
pub trait Log: TopicAdmin + EventAppender + EventReader + EventSubscriber {
    /// Stops taking appends, makes everything written durable, and releases the storage. Calls
    /// made after it fail with [`LogError::Unavailable`].
    async fn shutdown(&self) -> Result<(), LogError>;
}

/// One step of following partition 0 of a topic whose records are a service's state (flag sets,
/// schemas, experiments): what comes after the records already processed.
#[derive(Debug)]
pub enum FollowStep {
    /// Nothing left before the end asked for (or, without one, the partition's end).
    CaughtUp,
    /// Records before `end` were expected (the caller appended one there) and none was read.
    Missing { from: Offset, reason: String },
    /// The next records, all before the end asked for, and where the next step starts.
    Records {
        events: Vec<StoredEvent>,
        next_offset: Offset,
    },
}

/// Reads the records of partition 0 of `topic` from `from` on and before `end` (the
/// partition's end when `None`), at most `events_max` at a time.
pub async fn follow_step(
    log: &dyn Log,
    topic: &TopicName,
    from: Offset,
    end: Option<Offset>,
    events_max: u32,
) -> Result<FollowStep, LogError> {
    let end_offset = end.unwrap_or(Offset::MAX);
    if from >= end_offset {
        return Ok(FollowStep::CaughtUp);
    }
    let limits = ReadLimits {
        events_max,
        bytes_max: READ_BYTES_MAX,
    };
    let batch = log.read(topic, 0, ReadFrom::Offset(from), limits).await?;
    if batch.events.is_empty() {
        return Ok(match end {
            Some(end) => FollowStep::Missing {
                from,
                reason: format!("records up to offset {end} were expected, none was read"),
            },
            None => FollowStep::CaughtUp,
        });
    }
    let mut events = batch.events;
    events.retain(|e| e.offset >= from && e.offset < end_offset);
    Ok(FollowStep::Records {
        events,
        next_offset: batch.next_offset.min(end_offset),
    })
}
