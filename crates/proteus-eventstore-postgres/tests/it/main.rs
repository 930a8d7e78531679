//! The PostgreSQL event store runs the whole EventStore conformance suite against a real
//! PostgreSQL (`PROTEUS_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`),
//! each test in a schema of its own that is dropped afterwards, plus what only this adapter
//! promises: migrations, schemas, connection loss, appends through crashes of a server of the
//! test's own (`server_crash`), and a `$all` feed without gaps under concurrent writers in
//! several processes.
//!
//! PostgreSQL must be running: these tests fail (they never skip) when it is not, saying how to
//! start it.

use std::sync::Arc;

use async_trait::async_trait;
use proteus_eventstore::EventStore;
use proteus_eventstore::conformance::EventStoreHarness;

mod adapter;
mod gaps;
mod race_property;
mod server_crash;
mod support;

use support::TestSchema;

/// A fresh schema per test; `open` opens a new store on it each time (so the suite's reopen
/// sees what the previous store wrote), and dropping the harness drops the schema.
struct Harness {
    schema: TestSchema,
}

impl Harness {
    fn new() -> Self {
        Harness {
            schema: TestSchema::new("conf"),
        }
    }
}

#[async_trait]
impl EventStoreHarness for Harness {
    async fn open(&self) -> Arc<dyn EventStore> {
        Arc::new(self.schema.open().await)
    }
}

mod conformance {
    use super::Harness;
    proteus_eventstore::event_store_conformance_tests!(Harness::new());
}
