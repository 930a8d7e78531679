//! What the PostgreSQL adapters' tests share (feature `test-support`, for tests only): the
//! server to test against, a message saying how to start it, an admin connection, and schemas
//! that drop themselves.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio_postgres::NoTls;

use crate::START_HINT;

/// Where the tests find PostgreSQL when `PROTEUS_TEST_POSTGRES_URL` is not set.
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

/// A connection of its own, for what tests do behind a store's back.
pub async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls)
        .await
        .unwrap_or_else(|e| panic!("{}", unreachable(e)));
    tokio::spawn(connection);
    client
}

/// A name no other test, in this process or another, uses: `<tag>_<pid>_<n>_<nanos>`.
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{tag}_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Drops `schema` and everything in it, from any context (a runtime or none, after a panic).
pub fn drop_schema(schema: &str) {
    let schema = schema.to_owned();
    // Drop may run inside a runtime: use a thread with its own.
    let dropped = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url(), NoTls).await?;
            tokio::spawn(connection);
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .await
        })
    })
    .join();
    if let Ok(Err(error)) = dropped {
        eprintln!("could not drop a test schema: {error}");
    }
}

/// A schema for one test, named after `tag` and unique, dropped (with everything in it) when
/// this is dropped.
pub struct TestSchema {
    pub name: String,
}

impl TestSchema {
    pub fn new(tag: &str) -> Self {
        TestSchema {
            name: unique_name(tag),
        }
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        drop_schema(&self.name);
    }
}
