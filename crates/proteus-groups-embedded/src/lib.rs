//! The embedded [`GroupStore`]: one redb file, `<data_dir>/groups.redb`.
//!
//! Two tables: `groups` maps `topic \0 group` to the group's settings, and `progress` maps
//! `topic \0 group \0 partition (u32, big-endian)` to that partition's progress as JSON. Every
//! write is one redb transaction committed with fsync (redb's default `Durability::Immediate`),
//! so a write that returned survives kill -9 and power loss; a write cut short leaves the
//! previous state.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use proteus_groups::store::check_fence;
use proteus_groups::{
    GroupConfig, GroupName, GroupRecord, GroupStore, PartitionProgress, StoreError,
};
use proteus_log::TopicName;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};

const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
const PROGRESS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("progress");

/// The name of the store's file inside the data directory.
pub const FILE_NAME: &str = "groups.redb";

#[derive(Serialize, Deserialize)]
struct StoredGroup {
    config: GroupConfig,
    created_ms: i64,
    partitions: u32,
    /// The highest fencing token (absent in files written before fencing: 0).
    #[serde(default)]
    fence: u64,
}

#[derive(Clone)]
pub struct EmbeddedGroupStore {
    db: Arc<Database>,
}

fn backend(error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(error.to_string())
}

fn group_key(topic: &TopicName, group: &GroupName) -> String {
    format!("{}\0{}", topic.as_str(), group.as_str())
}

fn progress_prefix(topic: &TopicName, group: &GroupName) -> Vec<u8> {
    let mut key = group_key(topic, group).into_bytes();
    key.push(0);
    key
}

fn progress_key(topic: &TopicName, group: &GroupName, partition: u32) -> Vec<u8> {
    let mut key = progress_prefix(topic, group);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

/// Inside a write: the group's row, after checking `fence` against it and raising its token
/// to `fence` (written back only when it grows). `None` when the group does not exist.
fn fence_group(
    groups: &mut Table<&str, &[u8]>,
    topic: &TopicName,
    group: &GroupName,
    fence: u64,
) -> Result<Option<StoredGroup>, StoreError> {
    let key = group_key(topic, group);
    let mut stored: StoredGroup = match groups.get(key.as_str()).map_err(backend)? {
        Some(value) => serde_json::from_slice(value.value()).map_err(backend)?,
        None => return Ok(None),
    };
    check_fence(topic, group, fence, stored.fence)?;
    if fence > stored.fence {
        stored.fence = fence;
        put_group(groups, &key, &stored)?;
    }
    Ok(Some(stored))
}

fn put_group(
    groups: &mut Table<&str, &[u8]>,
    key: &str,
    stored: &StoredGroup,
) -> Result<(), StoreError> {
    let json = serde_json::to_vec(stored).map_err(backend)?;
    groups.insert(key, json.as_slice()).map_err(backend)?;
    Ok(())
}

/// The first key after every key starting with `prefix` (whose last byte is `\0`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    *end.last_mut().expect("prefixes end with a separator") = 1;
    end
}

impl EmbeddedGroupStore {
    /// Opens (or creates) `<data_dir>/groups.redb`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| backend(format!("cannot create {}: {e}", data_dir.display())))?;
        let path = data_dir.join(FILE_NAME);
        let db = Database::create(&path)
            .map_err(|e| backend(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(GROUPS).map_err(backend)?;
        txn.open_table(PROGRESS).map_err(backend)?;
        txn.commit().map_err(backend)?;
        Ok(EmbeddedGroupStore { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(|e| backend(format!("store task failed: {e}")))?
    }
}

fn read_group(
    db: &Database,
    topic: &TopicName,
    group: &GroupName,
) -> Result<Option<GroupRecord>, StoreError> {
    let txn = db.begin_read().map_err(backend)?;
    let groups = txn.open_table(GROUPS).map_err(backend)?;
    let Some(stored) = groups
        .get(group_key(topic, group).as_str())
        .map_err(backend)?
    else {
        return Ok(None);
    };
    let stored: StoredGroup = serde_json::from_slice(stored.value()).map_err(backend)?;
    let progress = txn.open_table(PROGRESS).map_err(backend)?;
    to_record(topic, group, stored, &progress).map(Some)
}

fn to_record(
    topic: &TopicName,
    group: &GroupName,
    stored: StoredGroup,
    progress: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> Result<GroupRecord, StoreError> {
    let prefix = progress_prefix(topic, group);
    let end = prefix_end(&prefix);
    let mut partitions = Vec::with_capacity(stored.partitions as usize);
    for entry in progress
        .range(prefix.as_slice()..end.as_slice())
        .map_err(backend)?
    {
        let (_, value) = entry.map_err(backend)?;
        let partition: PartitionProgress =
            serde_json::from_slice(value.value()).map_err(backend)?;
        partitions.push(partition);
    }
    Ok(GroupRecord {
        topic: topic.clone(),
        group: group.clone(),
        config: stored.config,
        created_ms: stored.created_ms,
        partitions,
        fence: stored.fence,
    })
}

#[async_trait]
impl GroupStore for EmbeddedGroupStore {
    async fn create_group(&self, record: &GroupRecord) -> Result<(), StoreError> {
        let record = record.clone();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut groups = txn.open_table(GROUPS).map_err(backend)?;
                let key = group_key(&record.topic, &record.group);
                if groups.get(key.as_str()).map_err(backend)?.is_some() {
                    return Err(StoreError::AlreadyExists {
                        topic: record.topic.clone(),
                        group: record.group.clone(),
                    });
                }
                let stored = StoredGroup {
                    config: record.config.clone(),
                    created_ms: record.created_ms,
                    partitions: record.partitions.len() as u32,
                    fence: record.fence,
                };
                put_group(&mut groups, &key, &stored)?;
                let mut progress = txn.open_table(PROGRESS).map_err(backend)?;
                for partition in &record.partitions {
                    let key = progress_key(&record.topic, &record.group, partition.partition);
                    let json = serde_json::to_vec(partition).map_err(backend)?;
                    progress
                        .insert(key.as_slice(), json.as_slice())
                        .map_err(backend)?;
                }
            }
            txn.commit().map_err(backend)
        })
        .await
    }

    async fn update_config(
        &self,
        topic: &TopicName,
        group: &GroupName,
        fence: u64,
        config: &GroupConfig,
    ) -> Result<(), StoreError> {
        let (topic, group, config) = (topic.clone(), group.clone(), config.clone());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut groups = txn.open_table(GROUPS).map_err(backend)?;
                let Some(mut stored) = fence_group(&mut groups, &topic, &group, fence)? else {
                    return Err(StoreError::NotFound { topic, group });
                };
                stored.config = config;
                put_group(&mut groups, &group_key(&topic, &group), &stored)?;
            }
            txn.commit().map_err(backend)
        })
        .await
    }

    async fn save_progress(
        &self,
        topic: &TopicName,
        group: &GroupName,
        fence: u64,
        progress: &[PartitionProgress],
    ) -> Result<(), StoreError> {
        let (topic, group, progress) = (topic.clone(), group.clone(), progress.to_vec());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut groups = txn.open_table(GROUPS).map_err(backend)?;
                if fence_group(&mut groups, &topic, &group, fence)?.is_none() {
                    return Err(StoreError::NotFound { topic, group });
                }
                let mut table = txn.open_table(PROGRESS).map_err(backend)?;
                for partition in &progress {
                    let key = progress_key(&topic, &group, partition.partition);
                    let json = serde_json::to_vec(partition).map_err(backend)?;
                    table
                        .insert(key.as_slice(), json.as_slice())
                        .map_err(backend)?;
                }
            }
            txn.commit().map_err(backend)
        })
        .await
    }

    async fn claim_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
        fence: u64,
    ) -> Result<Option<GroupRecord>, StoreError> {
        let (topic, group) = (topic.clone(), group.clone());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            let record = {
                let mut groups = txn.open_table(GROUPS).map_err(backend)?;
                let Some(stored) = fence_group(&mut groups, &topic, &group, fence)? else {
                    return Ok(None);
                };
                let progress = txn.open_table(PROGRESS).map_err(backend)?;
                to_record(&topic, &group, stored, &progress)?
            };
            txn.commit().map_err(backend)?;
            Ok(Some(record))
        })
        .await
    }

    async fn load_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
    ) -> Result<Option<GroupRecord>, StoreError> {
        let (topic, group) = (topic.clone(), group.clone());
        self.blocking(move |db| read_group(db, &topic, &group))
            .await
    }

    async fn list_groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        self.blocking(move |db| {
            let names: Vec<String> = {
                let txn = db.begin_read().map_err(backend)?;
                let groups = txn.open_table(GROUPS).map_err(backend)?;
                let mut names = Vec::new();
                for entry in groups.iter().map_err(backend)? {
                    let (key, _) = entry.map_err(backend)?;
                    names.push(key.value().to_owned());
                }
                names
            };
            let mut records = Vec::with_capacity(names.len());
            for name in names {
                let Some((topic, group)) = name.split_once('\0') else {
                    return Err(backend(format!("malformed group key {name:?}")));
                };
                let topic = TopicName::parse(topic).map_err(backend)?;
                let group = GroupName::parse(group).map_err(backend)?;
                if let Some(record) = read_group(db, &topic, &group)? {
                    records.push(record);
                }
            }
            Ok(records)
        })
        .await
    }

    async fn delete_group(&self, topic: &TopicName, group: &GroupName) -> Result<bool, StoreError> {
        let (topic, group) = (topic.clone(), group.clone());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            let existed = {
                let mut groups = txn.open_table(GROUPS).map_err(backend)?;
                let existed = groups
                    .remove(group_key(&topic, &group).as_str())
                    .map_err(backend)?
                    .is_some();
                let mut progress = txn.open_table(PROGRESS).map_err(backend)?;
                let prefix = progress_prefix(&topic, &group);
                let end = prefix_end(&prefix);
                progress
                    .retain_in(prefix.as_slice()..end.as_slice(), |_, _| false)
                    .map_err(backend)?;
                existed
            };
            txn.commit().map_err(backend)?;
            Ok(existed)
        })
        .await
    }
}
