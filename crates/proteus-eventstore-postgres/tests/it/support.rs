//! Test support: the PostgreSQL to test against (shared by every PostgreSQL adapter's tests)
//! and event stores opened in schemas that drop themselves.

use proteus_eventstore_postgres::{PostgresEventStore, PostgresEventStoreConfig};
pub use proteus_postgres::test_support::{admin, unreachable, url};

/// A schema for one test, dropped (with everything in it) when this is dropped.
pub struct TestSchema(proteus_postgres::test_support::TestSchema);

impl std::ops::Deref for TestSchema {
    type Target = proteus_postgres::test_support::TestSchema;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl TestSchema {
    pub fn new(tag: &str) -> Self {
        TestSchema(proteus_postgres::test_support::TestSchema::new(&format!(
            "proteus_it_{tag}"
        )))
    }

    pub fn config(&self) -> PostgresEventStoreConfig {
        PostgresEventStoreConfig {
            pool_size_max: 8,
            write_batches_in_flight_max: 4,
            listen_fallback_poll_ms: 200,
            ..PostgresEventStoreConfig::new(url(), self.name.clone())
        }
    }

    pub async fn open(&self) -> PostgresEventStore {
        self.open_with(self.config()).await
    }

    pub async fn open_with(&self, config: PostgresEventStoreConfig) -> PostgresEventStore {
        PostgresEventStore::open(config)
            .await
            .unwrap_or_else(|e| panic!("{}", unreachable(e)))
    }
}
