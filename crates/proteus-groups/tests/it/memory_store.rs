//! The in-memory group store runs the GroupStore conformance suite. Its harness hands out the
//! same store on every open, so "reopen" sees every completed write, as it would in a process
//! that does not end.

use std::sync::Arc;

use async_trait::async_trait;
use proteus_groups::conformance::StoreHarness;
use proteus_groups::{GroupStore, MemoryGroupStore};

struct Harness {
    store: Arc<MemoryGroupStore>,
}

impl Harness {
    fn new() -> Self {
        Harness {
            store: Arc::new(MemoryGroupStore::new()),
        }
    }
}

#[async_trait]
impl StoreHarness for Harness {
    async fn open(&self) -> Arc<dyn GroupStore> {
        self.store.clone()
    }
}

proteus_groups::group_store_conformance_tests!(Harness::new());
