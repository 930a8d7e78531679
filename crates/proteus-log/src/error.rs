//! Errors returned by the log ports.

use crate::position::{Offset, PartitionId};
use crate::topic::{InvalidTopicConfig, TopicName};

/// Everything a log operation can fail with. Each message says what was wrong precisely enough
/// to act on; the HTTP layer turns them into RFC 9457 problems.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("topic '{topic}' does not exist")]
    TopicNotFound { topic: TopicName },

    #[error("topic '{topic}' cannot be changed that way: {reason}")]
    TopicConflict { topic: TopicName, reason: String },

    #[error("invalid topic configuration: {0}")]
    InvalidTopicConfig(#[from] InvalidTopicConfig),

    #[error("topic '{topic}' has no partition {partition}: it has {partitions} (0 to {})", partitions - 1)]
    PartitionNotFound {
        topic: TopicName,
        partition: PartitionId,
        partitions: u32,
    },

    #[error(
        "offset {offset} is past the end of partition {partition} of topic '{topic}': the next offset to be written is {end_offset}"
    )]
    OffsetOutOfRange {
        topic: TopicName,
        partition: PartitionId,
        offset: Offset,
        end_offset: Offset,
    },

    #[error(
        "event {index} is {bytes} bytes, more than the {max} bytes topic '{topic}' accepts (its event_bytes_max)"
    )]
    EventTooLarge {
        topic: TopicName,
        index: usize,
        bytes: usize,
        max: u32,
    },

    /// Stored data failed its checksum or framing. The partition serves everything before
    /// `offset` and refuses to go past it until an operator repairs or restores the file.
    #[error(
        "partition {partition} of topic '{topic}' is corrupt at offset {offset}: {reason} (file {file}, byte {position}); events before offset {offset} can still be read, nothing at or after it is served"
    )]
    Corrupt {
        topic: TopicName,
        partition: PartitionId,
        offset: Offset,
        file: String,
        position: u64,
        reason: String,
    },

    /// An import (`proteus migrate-topics`) that cannot be written as given; nothing of it was.
    #[error("cannot import into partition {partition} of topic '{topic}': {reason}")]
    InvalidImport {
        topic: TopicName,
        partition: PartitionId,
        reason: String,
    },

    /// The log cannot take this request now: shutting down, or a partition stopped after a
    /// storage failure it could not recover from.
    #[error("{reason}")]
    Unavailable { reason: String },

    #[error("storage error while {context}: {source}")]
    Storage {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl LogError {
    /// A `put_topic` asking another partition count than the topic has: every adapter refuses
    /// it with this error and message.
    pub fn partition_count_fixed(topic: &TopicName, partitions: u32, asked: u32) -> LogError {
        LogError::TopicConflict {
            topic: topic.clone(),
            reason: format!(
                "it has {partitions} partitions and the partition count is fixed at creation (asked for {asked}); create a new topic to change it"
            ),
        }
    }

    pub fn storage(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LogError {
        let context = context.into();
        move |source| LogError::Storage { context, source }
    }
}
