//! Test support: the PostgreSQL to test against (shared by every PostgreSQL adapter's tests)
//! and read-model stores opened in schemas that drop themselves.

pub use proteus_postgres::test_support::{admin, unreachable, url};
use proteus_projections_postgres::{PostgresReadModelConfig, PostgresReadModelStore};

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
            "proteus_rm_{tag}"
        )))
    }

    pub fn config(&self) -> PostgresReadModelConfig {
        PostgresReadModelConfig {
            pool_size_max: 4,
            ..PostgresReadModelConfig::new(url(), self.name.clone())
        }
    }

    pub async fn open(&self) -> PostgresReadModelStore {
        self.open_with(self.config()).await
    }

    pub async fn open_with(&self, config: PostgresReadModelConfig) -> PostgresReadModelStore {
        PostgresReadModelStore::open(config)
            .await
            .unwrap_or_else(|e| panic!("{}", unreachable(e)))
    }
}
