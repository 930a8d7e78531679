//! Test support: the PostgreSQL to test against, and schemas that drop themselves.

use std::sync::atomic::{AtomicU64, Ordering};

use proteus_eventstore_postgres::{PostgresEventStore, PostgresEventStoreConfig, START_HINT};
use tokio_postgres::NoTls;

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The PostgreSQL the tests use: `PROTEUS_TEST_POSTGRES_URL`, or the local one.
pub fn url() -> String {
    std::env::var("PROTEUS_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// What a test says when PostgreSQL cannot be reached: how to start it.
pub fn unreachable(error: impl std::fmt::Display) -> String {
    format!(
        "PostgreSQL is not reachable at {} ({error}). These tests need it: {START_HINT}, with trust authentication for 127.0.0.1 and a database named test (createdb -U postgres test), or set PROTEUS_TEST_POSTGRES_URL",
        url()
    )
}

/// A connection of its own, for what tests do behind the store's back.
pub async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls)
        .await
        .unwrap_or_else(|e| panic!("{}", unreachable(e)));
    tokio::spawn(connection);
    client
}

/// A schema name no other test (in this or another process) uses.
fn unique_schema(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "proteus_it_{tag}_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A schema for one test, dropped (with everything in it) when this is dropped.
pub struct TestSchema {
    pub name: String,
}

impl TestSchema {
    pub fn new(tag: &str) -> Self {
        TestSchema {
            name: unique_schema(tag),
        }
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

impl Drop for TestSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime: use a thread with its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&url(), NoTls).await?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                    .await
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop test schema {}: {error}", self.name);
        }
    }
}
