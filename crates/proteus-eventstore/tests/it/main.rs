//! The in-memory event store runs the EventStore conformance suite.
//!
//! Each `open` of the harness is a new handle over the same events (`MemoryEventStore::reopen`),
//! so the suite's close-then-reopen tests see every completed write, as they would after a
//! restart of a durable store; only surviving the process is not tested.

use std::sync::Arc;

use async_trait::async_trait;
use proteus_eventstore::conformance::EventStoreHarness;
use proteus_eventstore::{EventStore, MemoryEventStore};

mod memory_store;

struct Harness {
    store: MemoryEventStore,
}

impl Harness {
    fn new() -> Self {
        Harness {
            store: MemoryEventStore::new(),
        }
    }
}

#[async_trait]
impl EventStoreHarness for Harness {
    async fn open(&self) -> Arc<dyn EventStore> {
        Arc::new(self.store.reopen())
    }
}

mod conformance {
    use super::Harness;
    proteus_eventstore::event_store_conformance_tests!(Harness::new());
}
