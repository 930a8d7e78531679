//! The RemoteCache conformance suite on the in-memory adapter.

use std::sync::Arc;

use async_trait::async_trait;
use proteus_cache::conformance::CacheHarness;
use proteus_cache::{MemoryRemoteCache, RemoteCache};

struct Harness {
    store: MemoryRemoteCache,
}

#[async_trait]
impl CacheHarness for Harness {
    async fn open(&self, namespace: &str) -> Arc<dyn RemoteCache> {
        Arc::new(self.store.with_namespace(&format!("{namespace}:")))
    }
}

proteus_cache::remote_cache_conformance_tests!(Harness {
    store: MemoryRemoteCache::new()
});
