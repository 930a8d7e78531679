//! The in-memory store runs the KvStore conformance suite (its durability test checks nothing:
//! the memory store does not outlive its process).

use std::sync::Arc;

use async_trait::async_trait;
use proteus_kv::conformance::KvHarness;
use proteus_kv::{KvStore, MemoryKvStore};

struct Harness;

#[async_trait]
impl KvHarness for Harness {
    async fn open(&self) -> Arc<dyn KvStore> {
        Arc::new(MemoryKvStore::new())
    }
}

proteus_kv::kv_conformance_tests!(Harness);
