//! The PostgreSQL group store runs the whole GroupStore conformance suite, each test in a
//! schema of its own, dropped afterwards. PostgreSQL must be running (the tests fail, saying
//! how to start it, when it is not).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use proteus_groups::GroupStore;
use proteus_groups::conformance::StoreHarness;
use proteus_groups_postgres::{PostgresGroupStore, PostgresGroupStoreConfig, START_HINT};
use tokio_postgres::NoTls;

fn url() -> String {
    std::env::var("PROTEUS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

struct Harness {
    schema: String,
}

impl Harness {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Harness {
            schema: format!(
                "proteus_groups_{}_{}_{nanos}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }
}

#[async_trait]
impl StoreHarness for Harness {
    async fn open(&self) -> Arc<dyn GroupStore> {
        let store = PostgresGroupStore::open(PostgresGroupStoreConfig {
            pool_size_max: 4,
            ..PostgresGroupStoreConfig::new(url(), self.schema.clone())
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {} ({e}). These tests need it: {START_HINT}, with trust authentication and a database named test, or set PROTEUS_TEST_POSTGRES_URL",
                url()
            )
        });
        Arc::new(store)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let schema = self.schema.clone();
        // Drop may run inside a runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&url(), NoTls).await?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .await
            })
        })
        .join();
    }
}

proteus_groups::group_store_conformance_tests!(Harness::new());

/// An unreachable server is a clear error saying how to start PostgreSQL.
#[tokio::test]
async fn an_unreachable_server_says_how_to_start_it() {
    let error = PostgresGroupStore::open(PostgresGroupStoreConfig {
        connect_timeout_ms: 2_000,
        ..PostgresGroupStoreConfig::new("postgres://postgres@127.0.0.1:1/test", "groups")
    })
    .await
    .err()
    .expect("nothing listens on port 1");
    assert!(error.to_string().contains("pg_ctlcluster"), "{error}");
    let error = PostgresGroupStore::open(PostgresGroupStoreConfig::new(url(), "Bad-Name"))
        .await
        .err()
        .expect("an invalid schema name");
    assert!(error.to_string().contains("invalid schema name"), "{error}");
}
