//! The in-memory [`RemoteCache`]: for tests and single-instance set-ups.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use crate::port::{CacheError, RemoteCache, check_keys, check_put};

type Store = Arc<Mutex<HashMap<String, (Bytes, Instant)>>>;

/// An in-memory remote cache. Clones and [`with_namespace`](Self::with_namespace) share one
/// store; entries expire after their time to live.
#[derive(Clone, Default)]
pub struct MemoryRemoteCache {
    store: Store,
    namespace: String,
}

impl MemoryRemoteCache {
    pub fn new() -> Self {
        MemoryRemoteCache::default()
    }

    /// A cache over the same store whose keys live in `namespace`.
    pub fn with_namespace(&self, namespace: &str) -> Self {
        MemoryRemoteCache {
            store: Arc::clone(&self.store),
            namespace: namespace.to_owned(),
        }
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Bytes, Instant)>> {
        // A poisoned lock only means another thread panicked mid-call; the map is still valid.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl RemoteCache for MemoryRemoteCache {
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, CacheError> {
        check_keys(keys.iter().map(String::as_str))?;
        let now = Instant::now();
        let mut store = self.lock();
        Ok(keys
            .iter()
            .map(|key| {
                let full = self.full_key(key);
                match store.get(&full) {
                    Some((value, expires)) if *expires > now => Some(value.clone()),
                    Some(_) => {
                        store.remove(&full);
                        None
                    }
                    None => None,
                }
            })
            .collect())
    }

    async fn put_many(&self, entries: Vec<(String, Bytes)>, ttl_ms: u64) -> Result<(), CacheError> {
        check_put(&entries, ttl_ms)?;
        let expires = Instant::now() + Duration::from_millis(ttl_ms);
        let mut store = self.lock();
        store.retain(|_, (_, at)| *at > Instant::now());
        for (key, value) in entries {
            store.insert(self.full_key(&key), (value, expires));
        }
        Ok(())
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), CacheError> {
        check_keys(keys.iter().map(String::as_str))?;
        let mut store = self.lock();
        for key in keys {
            store.remove(&self.full_key(key));
        }
        Ok(())
    }
}
