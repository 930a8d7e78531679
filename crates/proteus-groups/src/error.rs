//! Errors of consumer-group operations. Each says what was wrong and what to do about it; the
//! HTTP layer maps them to problem documents.

use proteus_log::{LogError, Offset, PartitionId, TopicName};

use crate::config::InvalidGroupConfig;
use crate::name::{GroupName, InvalidName, MemberId};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("group '{group}' of topic '{topic}' does not exist")]
    GroupNotFound { topic: TopicName, group: GroupName },

    #[error(
        "group '{group}' of topic '{topic}' already exists; describe it, or delete it first to start over"
    )]
    GroupExists { topic: TopicName, group: GroupName },

    #[error(transparent)]
    InvalidName(#[from] InvalidName),

    #[error("invalid group configuration: {0}")]
    InvalidConfig(#[from] InvalidGroupConfig),

    #[error(
        "member '{member}' is not in group '{group}': it left, or its session expired (no heartbeat or pull within session_timeout_ms = {session_timeout_ms}); join again"
    )]
    UnknownMember {
        group: GroupName,
        member: MemberId,
        session_timeout_ms: u64,
    },

    #[error(
        "generation {generation} is stale for partition {partition}: the group is at generation {current} and the partition was reassigned at generation {assigned_at}; heartbeat to learn the current assignment, and do not ack events received before it"
    )]
    StaleGeneration {
        partition: PartitionId,
        generation: u64,
        assigned_at: u64,
        current: u64,
    },

    #[error("generation {generation} is in the future: the group is at generation {current}")]
    FutureGeneration { generation: u64, current: u64 },

    #[error(
        "member '{member}' does not own partition {partition} (owner: {}); only the owner may ack, nack or extend its events",
        owner.as_ref().map_or("nobody".to_owned(), |o| format!("'{o}'"))
    )]
    NotOwner {
        member: MemberId,
        partition: PartitionId,
        owner: Option<MemberId>,
    },

    #[error(
        "position {partition}:{offset} was never delivered to this group (the group has fetched partition {partition} up to offset {fetched}); ack only positions you received"
    )]
    NotDelivered {
        partition: PartitionId,
        offset: Offset,
        fetched: Offset,
    },

    #[error(
        "position {partition}:{offset} is not awaiting an ack: it was already acknowledged, or it is waiting for a retry"
    )]
    NotInFlight {
        partition: PartitionId,
        offset: Offset,
    },

    #[error("invalid position {text:?}: expected partition:offset, such as 0:42")]
    InvalidPosition { text: String },

    #[error("topic '{topic}' has no partition {partition}: it has {partitions}")]
    PartitionNotFound {
        topic: TopicName,
        partition: PartitionId,
        partitions: u32,
    },

    #[error("nack delay_ms {delay_ms} is too long; the most is {max_ms} (one day)")]
    DelayTooLong { delay_ms: u64, max_ms: u64 },

    #[error("{count} positions in one request; the most is {max}")]
    TooManyPositions { count: usize, max: usize },

    #[error(
        "group '{group}' pushes to a webhook; it takes no members. Remove its push settings to consume it with pulls"
    )]
    PushGroup { group: GroupName },

    #[error("group '{group}' of topic '{topic}' has {members} members; the most is {max}")]
    TooManyMembers {
        topic: TopicName,
        group: GroupName,
        members: usize,
        max: usize,
    },

    #[error(
        "there is no dead letter of group '{group}' at offset {offset} of its dead-letter topic; list them with GET …/dead-letters"
    )]
    DeadLetterNotFound { group: GroupName, offset: Offset },

    #[error("the consumer-group store failed: {0}")]
    Store(#[from] StoreError),

    #[error(transparent)]
    Log(#[from] LogError),
}
