//! The PostgreSQL read-model store runs the whole ReadModelStore conformance suite against a
//! real PostgreSQL (`PROTEUS_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`), each test in a schema of its own that is dropped
//! afterwards: once with the default settings and once with tiny statement and query chunks
//! (so every commit and query crosses chunk boundaries), plus what only this adapter
//! promises: migrations, concurrent stores on one schema, keys and documents PostgreSQL text
//! types could not hold, bounded scans.
//!
//! PostgreSQL must be running: these tests fail (they never skip) when it is not, saying how to
//! start it.

use std::sync::Arc;

use async_trait::async_trait;
use proteus_projections::ReadModelStore;
use proteus_projections::conformance::StoreHarness;
use proteus_projections_postgres::PostgresReadModelConfig;

mod adapter;
mod support;

use support::TestSchema;

/// A fresh schema per test; `open` opens a new store on it each time (so the suite's reopen
/// sees what the previous store wrote), and dropping the harness drops the schema.
struct Harness {
    schema: TestSchema,
    tiny_chunks: bool,
}

impl Harness {
    fn new(tiny_chunks: bool) -> Self {
        Harness {
            schema: TestSchema::new(if tiny_chunks { "tiny" } else { "conf" }),
            tiny_chunks,
        }
    }

    fn config(&self) -> PostgresReadModelConfig {
        let config = self.schema.config();
        if !self.tiny_chunks {
            return config;
        }
        PostgresReadModelConfig {
            query_chunk_rows_max: 3,
            write_chunk_rows_max: 7,
            write_chunk_bytes_max: 200,
            ..config
        }
    }
}

#[async_trait]
impl StoreHarness for Harness {
    async fn open(&self) -> Arc<dyn ReadModelStore> {
        Arc::new(self.schema.open_with(self.config()).await)
    }
}

mod conformance {
    use super::Harness;
    proteus_projections::read_model_store_conformance_tests!(Harness::new(false));
}

mod conformance_tiny_chunks {
    use super::Harness;
    proteus_projections::read_model_store_conformance_tests!(Harness::new(true));
}
