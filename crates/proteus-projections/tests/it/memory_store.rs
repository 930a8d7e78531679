//! The in-memory read-model store runs the ReadModelStore conformance suite. Its harness hands
//! out the same store on every open, so "reopen" sees every completed write, as it would in a
//! process that does not end.

use std::sync::Arc;

use async_trait::async_trait;
use proteus_projections::conformance::StoreHarness;
use proteus_projections::{MemoryReadModelStore, ReadModelStore};

struct Harness {
    store: Arc<MemoryReadModelStore>,
}

impl Harness {
    fn new() -> Self {
        Harness {
            store: Arc::new(MemoryReadModelStore::new()),
        }
    }
}

#[async_trait]
impl StoreHarness for Harness {
    async fn open(&self) -> Arc<dyn ReadModelStore> {
        self.store.clone()
    }
}

proteus_projections::read_model_store_conformance_tests!(Harness::new());
