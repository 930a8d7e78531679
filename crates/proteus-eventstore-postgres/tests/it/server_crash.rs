//! The PostgreSQL server itself killed (`SIGKILL` to the postmaster and its backends) in the
//! middle of appends and started again, which runs crash recovery, three times
//! (`proteus_eventstore::crash`): a server of the test's own (`PrivatePostgres`), since killing
//! the shared one would disturb every other test.

use std::sync::Arc;
use std::time::Duration;

use proteus_eventstore::EventStore;
use proteus_eventstore::crash::{append_through_crashes, assert_each_event_once};
use proteus_eventstore_postgres::{PostgresEventStore, PostgresEventStoreConfig};
use proteus_postgres::test_support::PrivatePostgres;

/// How long the server stays down each time.
const DOWN_MS: u64 = 1_000;

/// Every append either succeeds or fails retriably; retried with the same ids until it
/// succeeds, each event is stored once (a retry whose first try committed, its answer lost, is
/// recognised by its ids), so every acknowledged append survived the kill. The same store goes
/// on after each restart (its pool reconnects by itself), and a store opened afterwards reads
/// the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_across_a_killed_and_restarted_server_are_stored_once() {
    let server = PrivatePostgres::start().await;
    let config = PostgresEventStoreConfig {
        pool_size_max: 8,
        write_batches_in_flight_max: 4,
        connect_timeout_ms: 1_000,
        pool_wait_timeout_ms: 2_000,
        listen_fallback_poll_ms: 200,
        ..PostgresEventStoreConfig::new(server.url(), "crash".to_owned())
    };
    let open = || async {
        PostgresEventStore::open(config.clone())
            .await
            .unwrap_or_else(|error| panic!("the private PostgreSQL: {error}"))
    };
    let store: Arc<dyn EventStore> = Arc::new(open().await);
    let run = append_through_crashes(store.clone(), || async {
        server.kill();
        tokio::time::sleep(Duration::from_millis(DOWN_MS)).await;
        server.restart().await;
    })
    .await;
    eprintln!("{run:?}");
    assert_each_event_once(store.as_ref(), &run, "the store that wrote").await;
    assert_each_event_once(&open().await, &run, "a new store").await;
}

/// While the server is down, a request that needs a new connection fails retriably, naming
/// the server (without a password) and how to start it, so an operator running several
/// PostgreSQL servers knows which one is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_gone_after_open_is_named_in_errors() {
    let server = PrivatePostgres::start().await;
    let config = PostgresEventStoreConfig {
        pool_size_max: 2,
        write_batches_in_flight_max: 1,
        connect_timeout_ms: 1_000,
        pool_wait_timeout_ms: 2_000,
        ..PostgresEventStoreConfig::new(server.url(), "gone".to_owned())
    };
    let store = PostgresEventStore::open(config)
        .await
        .unwrap_or_else(|error| panic!("the private PostgreSQL: {error}"));
    let stream = proteus_eventstore::StreamName::parse("order-1").unwrap();
    let info = |store: &PostgresEventStore| {
        let stream = stream.clone();
        let store = store.clone();
        async move { store.stream_info(&stream).await }
    };
    // A pooled connection exists, then the server goes.
    let _ = info(&store).await;
    let check = Duration::from_millis(1_500);
    store.check_health(check).await.expect("healthy while up");
    server.kill();
    // The pooled connection's socket is closed: it is dropped and a new one refused (a
    // request already on it may instead see the connection end; the next one connects).
    let mut errors = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        match info(&store).await {
            Err(proteus_eventstore::EventStoreError::Unavailable { reason }) => errors.push(reason),
            other => panic!("a read while the server is down answered {other:?}"),
        }
    }
    // The URL has no password, so it is named as it is: by every error, whether the pool
    // failed to connect or a pooled connection ended under a request.
    let named = format!("PostgreSQL at {}", server.url());
    assert!(errors.iter().all(|e| e.contains(&named)), "{errors:#?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("is it running?") && e.contains("pg_ctlcluster")),
        "{errors:#?}"
    );
    // The health check (`/readyz`, `proteus_backend_up`) says the same, within its bound.
    let started = std::time::Instant::now();
    let unhealthy = store.check_health(check).await.unwrap_err();
    assert!(unhealthy.contains(&named), "{unhealthy}");
    assert!(started.elapsed() < Duration::from_secs(3), "{unhealthy}");
}
