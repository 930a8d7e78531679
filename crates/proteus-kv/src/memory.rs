//! [`MemoryKvStore`]: the port in process memory, for tests and for runtimes that need no
//! durability. Keeps every promise of the port except surviving the process.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::port::{
    KvCommit, KvError, KvStore, KvWrite, Namespace, check_commit, check_keys, check_scan,
    display_key,
};

type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Default)]
pub struct MemoryKvStore {
    namespaces: Mutex<BTreeMap<Namespace, Entries>>,
}

impl MemoryKvStore {
    pub fn new() -> MemoryKvStore {
        MemoryKvStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Namespace, Entries>> {
        self.namespaces.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl KvStore for MemoryKvStore {
    async fn get_many(
        &self,
        namespace: &Namespace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        check_keys(keys)?;
        let namespaces = self.lock();
        let entries = namespaces.get(namespace);
        Ok(keys
            .iter()
            .map(|k| entries.and_then(|e| e.get(k)).cloned())
            .collect())
    }

    async fn commit(&self, namespace: &Namespace, commit: KvCommit) -> Result<(), KvError> {
        check_commit(&commit)?;
        let mut namespaces = self.lock();
        let entries = namespaces.entry(namespace.clone()).or_default();
        for check in &commit.checks {
            if entries.get(&check.key) != check.expected.as_ref() {
                return Err(KvError::Conflict {
                    namespace: namespace.to_string(),
                    key: display_key(&check.key),
                });
            }
        }
        for write in commit.writes {
            match write {
                KvWrite::Put { key, value } => {
                    entries.insert(key, value);
                }
                KvWrite::Delete { key } => {
                    entries.remove(&key);
                }
            }
        }
        if entries.is_empty() {
            namespaces.remove(namespace);
        }
        Ok(())
    }

    async fn scan(
        &self,
        namespace: &Namespace,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError> {
        check_scan(prefix, limit)?;
        let namespaces = self.lock();
        let Some(entries) = namespaces.get(namespace) else {
            return Ok(Vec::new());
        };
        let start = match after {
            Some(after) if after >= prefix => std::ops::Bound::Excluded(after.to_vec()),
            _ => std::ops::Bound::Included(prefix.to_vec()),
        };
        Ok(entries
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn clear(&self, namespace: &Namespace) -> Result<u64, KvError> {
        Ok(self
            .lock()
            .remove(namespace)
            .map_or(0, |entries| entries.len() as u64))
    }
}
