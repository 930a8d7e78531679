//! [`MemoryGroupStore`]: the [`GroupStore`] port in process memory, for tests and for runtimes
//! that need no durability. Keeps every promise of the port except surviving the process.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use proteus_log::{PartitionId, TopicName};

use crate::config::GroupConfig;
use crate::name::GroupName;
use crate::store::{GroupRecord, GroupStore, PartitionProgress, StoreError, check_fence};

#[derive(Debug)]
struct StoredGroup {
    config: GroupConfig,
    created_ms: i64,
    partitions: BTreeMap<PartitionId, PartitionProgress>,
    fence: u64,
}

type Groups = BTreeMap<(TopicName, GroupName), StoredGroup>;

/// Groups in a map behind one lock: every write applies whole under it, reads see only
/// completed writes.
#[derive(Debug, Default)]
pub struct MemoryGroupStore {
    groups: Mutex<Groups>,
}

impl MemoryGroupStore {
    pub fn new() -> MemoryGroupStore {
        MemoryGroupStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Groups> {
        // A poisoned lock only means another thread panicked mid-call; writes are applied only
        // after every check, so the map is still valid.
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn key(topic: &TopicName, group: &GroupName) -> (TopicName, GroupName) {
    (topic.clone(), group.clone())
}

fn to_record(topic: &TopicName, group: &GroupName, stored: &StoredGroup) -> GroupRecord {
    GroupRecord {
        topic: topic.clone(),
        group: group.clone(),
        config: stored.config.clone(),
        created_ms: stored.created_ms,
        partitions: stored.partitions.values().cloned().collect(),
        fence: stored.fence,
    }
}

#[async_trait]
impl GroupStore for MemoryGroupStore {
    async fn create_group(&self, record: &GroupRecord) -> Result<(), StoreError> {
        let mut groups = self.lock();
        let key = key(&record.topic, &record.group);
        if groups.contains_key(&key) {
            return Err(StoreError::AlreadyExists {
                topic: record.topic.clone(),
                group: record.group.clone(),
            });
        }
        let partitions = record
            .partitions
            .iter()
            .map(|p| (p.partition, p.clone()))
            .collect();
        groups.insert(
            key,
            StoredGroup {
                config: record.config.clone(),
                created_ms: record.created_ms,
                partitions,
                fence: record.fence,
            },
        );
        Ok(())
    }

    async fn update_config(
        &self,
        topic: &TopicName,
        group: &GroupName,
        fence: u64,
        config: &GroupConfig,
    ) -> Result<(), StoreError> {
        let mut groups = self.lock();
        let stored = groups
            .get_mut(&key(topic, group))
            .ok_or_else(|| StoreError::not_found(topic, group))?;
        check_fence(topic, group, fence, stored.fence)?;
        stored.config = config.clone();
        stored.fence = fence;
        Ok(())
    }

    async fn save_progress(
        &self,
        topic: &TopicName,
        group: &GroupName,
        fence: u64,
        progress: &[PartitionProgress],
    ) -> Result<(), StoreError> {
        let mut groups = self.lock();
        let stored = groups
            .get_mut(&key(topic, group))
            .ok_or_else(|| StoreError::not_found(topic, group))?;
        check_fence(topic, group, fence, stored.fence)?;
        stored.fence = fence;
        for partition in progress {
            stored
                .partitions
                .insert(partition.partition, partition.clone());
        }
        Ok(())
    }

    async fn claim_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
        fence: u64,
    ) -> Result<Option<GroupRecord>, StoreError> {
        let mut groups = self.lock();
        let Some(stored) = groups.get_mut(&key(topic, group)) else {
            return Ok(None);
        };
        check_fence(topic, group, fence, stored.fence)?;
        stored.fence = fence;
        Ok(Some(to_record(topic, group, stored)))
    }

    async fn load_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
    ) -> Result<Option<GroupRecord>, StoreError> {
        Ok(self
            .lock()
            .get(&key(topic, group))
            .map(|stored| to_record(topic, group, stored)))
    }

    async fn list_groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        Ok(self
            .lock()
            .iter()
            .map(|((topic, group), stored)| to_record(topic, group, stored))
            .collect())
    }

    async fn delete_group(&self, topic: &TopicName, group: &GroupName) -> Result<bool, StoreError> {
        Ok(self.lock().remove(&key(topic, group)).is_some())
    }
}
