//! The port through which a group's progress becomes durable.

use async_trait::async_trait;
use proteus_log::{Offset, PartitionId, TopicName};
use serde::{Deserialize, Serialize};

use crate::config::GroupConfig;
use crate::name::GroupName;

/// An unacknowledged event that already failed at least once, so its delivery count and last
/// error survive a restart and a poison event still reaches the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    pub offset: Offset,
    pub deliveries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A dead letter replayed into the group and not acknowledged yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayRecord {
    /// The event's original offset in the group's topic.
    pub offset: Offset,
    /// Where its dead letter is in the dead-letter topic (partition 0).
    pub dead_letter_offset: Offset,
}

/// What a group has done with one partition, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionProgress {
    pub partition: PartitionId,
    /// Every offset below this one is acknowledged or dead-lettered.
    pub committed: Offset,
    /// Acknowledged offsets at or above `committed`, as `[start, end)` ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acked: Vec<(Offset, Offset)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<FailureRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replays: Vec<ReplayRecord>,
}

/// A group as stored: identity, settings and progress of every partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub topic: TopicName,
    pub group: GroupName,
    pub config: GroupConfig,
    pub created_ms: i64,
    pub partitions: Vec<PartitionProgress>,
    /// The highest fencing token the group was claimed or written with (0: never claimed).
    #[serde(default)]
    pub fence: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("group '{group}' of topic '{topic}' already exists")]
    AlreadyExists { topic: TopicName, group: GroupName },
    #[error("group '{group}' of topic '{topic}' does not exist")]
    NotFound { topic: TopicName, group: GroupName },
    /// A newer coordinator claimed the group: the writer holds an older lease.
    #[error(
        "group '{group}' of topic '{topic}' was claimed by a newer coordinator (fencing token \
         {claimed}, this instance's {fence}): this instance no longer coordinates it"
    )]
    Fenced {
        topic: TopicName,
        group: GroupName,
        fence: u64,
        claimed: u64,
    },
    /// The store could not be reached or did not answer in time (its server restarting, or
    /// electing a leader): retry. A write that failed this way may or may not have been saved;
    /// every write of a store can be sent again safely.
    #[error("{0}")]
    Unavailable(String),
    /// Any other failure of the store.
    #[error("{0}")]
    Backend(String),
}

impl StoreError {
    pub fn not_found(topic: &TopicName, group: &GroupName) -> StoreError {
        StoreError::NotFound {
            topic: topic.clone(),
            group: group.clone(),
        }
    }
}

/// The check a fenced write makes against the token the group was last claimed with.
pub fn check_fence(
    topic: &TopicName,
    group: &GroupName,
    fence: u64,
    claimed: u64,
) -> Result<(), StoreError> {
    if fence < claimed {
        return Err(StoreError::Fenced {
            topic: topic.clone(),
            group: group.clone(),
            fence,
            claimed,
        });
    }
    Ok(())
}

/// Durable storage of groups. Every write is durable (survives kill -9 and power loss) when it
/// returns. Implementations: `proteus-groups-embedded` (redb), `proteus-groups-postgres`; the
/// conformance suite in [`crate::conformance`] states every promise.
///
/// **Fencing.** When several instances share the store, a group's writer is the holder of its
/// coordinator lease, and `fence` is that lease's token (0 for a lone instance). The store
/// keeps the highest token a group was claimed or written with and refuses a lower one with
/// [`StoreError::Fenced`], changing nothing, so a coordinator that lost its lease without
/// noticing cannot overwrite its successor's progress.
#[async_trait]
pub trait GroupStore: Send + Sync {
    /// Stores a new group; [`StoreError::AlreadyExists`] if the name is taken on that topic.
    async fn create_group(&self, record: &GroupRecord) -> Result<(), StoreError>;

    /// Replaces a group's settings, keeping its progress; fenced.
    async fn update_config(
        &self,
        topic: &TopicName,
        group: &GroupName,
        fence: u64,
        config: &GroupConfig,
    ) -> Result<(), StoreError>;

    /// Replaces the stored progress of the partitions given; others keep theirs. All of them
    /// change together or none does; fenced.
    async fn save_progress(
        &self,
        topic: &TopicName,
        group: &GroupName,
        fence: u64,
        progress: &[PartitionProgress],
    ) -> Result<(), StoreError>;

    /// Raises the group's fencing token to `fence` (a new coordinator taking over) and returns
    /// the group as stored then, so every write with an older token fails from now on.
    /// [`StoreError::Fenced`] if a newer token already claimed it; `None` if it does not exist.
    async fn claim_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
        fence: u64,
    ) -> Result<Option<GroupRecord>, StoreError>;

    async fn load_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
    ) -> Result<Option<GroupRecord>, StoreError>;

    /// Every group of every topic, sorted by topic then group, partitions in order.
    async fn list_groups(&self) -> Result<Vec<GroupRecord>, StoreError>;

    /// Removes a group and its progress; returns whether it existed.
    async fn delete_group(&self, topic: &TopicName, group: &GroupName) -> Result<bool, StoreError>;
}
