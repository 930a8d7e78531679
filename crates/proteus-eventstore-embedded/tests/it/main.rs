//! The embedded event store runs the EventStore conformance suite, plus what only this adapter
//! promises (its configuration and file).

use std::sync::Arc;

use async_trait::async_trait;
use proteus_eventstore::EventStore;
use proteus_eventstore::conformance::EventStoreHarness;
use proteus_eventstore_embedded::{EmbeddedConfig, EmbeddedEventStore};

mod adapter;
mod race_property;

struct Harness {
    dir: tempfile::TempDir,
    config: EmbeddedConfig,
}

impl Harness {
    fn new() -> Self {
        Harness {
            dir: tempfile::tempdir().unwrap(),
            config: EmbeddedConfig::default(),
        }
    }

    /// Tiny batches and queues, so the suite also runs with batches cut short and writers
    /// waiting for room.
    fn small() -> Self {
        Harness {
            dir: tempfile::tempdir().unwrap(),
            config: EmbeddedConfig {
                write_batch_events_max: 3,
                write_batch_bytes_max: 256,
                queue_writes_max: 2,
                queue_bytes_max: 2_000,
                cache_bytes_max: 1024 * 1024,
            },
        }
    }
}

#[async_trait]
impl EventStoreHarness for Harness {
    async fn open(&self) -> Arc<dyn EventStore> {
        Arc::new(EmbeddedEventStore::open(self.dir.path(), self.config.clone()).unwrap())
    }
}

mod default_config {
    use super::Harness;
    proteus_eventstore::event_store_conformance_tests!(Harness::new());
}

mod small_batches {
    use super::Harness;
    proteus_eventstore::event_store_conformance_tests!(Harness::small());
}
