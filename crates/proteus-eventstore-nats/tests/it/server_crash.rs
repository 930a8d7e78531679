//! The NATS server itself killed (`SIGKILL`) in the middle of appends and started again on the
//! same store, three times (`proteus_eventstore::crash`): a server of the test's own
//! (`PrivateNatsServer`), since killing the shared one would disturb every other test; then the
//! same on a cluster of three whose leader is killed each time (`PrivateNatsCluster`).

use std::sync::Arc;
use std::time::Duration;

use proteus_eventstore::crash::{append_through_crashes, assert_each_event_once};
use proteus_eventstore::{Direction, ErrorKind, EventStore, EventStoreError, ExpectedVersion};
use proteus_nats::test_support::{PrivateNatsCluster, PrivateNatsServer, until_recovered};

use proteus_eventstore::conformance::{event, stream};

use crate::{open, unique_config};

/// How long the server stays down each time.
const DOWN_MS: u64 = 1_000;

/// Every append either succeeds or fails retriably; retried with the same ids until it
/// succeeds, each event is stored once (a retry whose first try was stored, its answer lost, is
/// recognised by its ids). The same store goes on after each restart (it reconnects by itself),
/// and a store opened afterwards reads the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_across_a_killed_and_restarted_server_are_stored_once() {
    let server = PrivateNatsServer::start().await;
    let mut config = unique_config(&server.url());
    config.request_timeout_ms = 1_000;
    config.reconnect_delay_max_ms = 200;
    let store: Arc<dyn EventStore> = Arc::new(open(config.clone()).await);
    let run = append_through_crashes(store.clone(), || async {
        server.kill();
        tokio::time::sleep(Duration::from_millis(DOWN_MS)).await;
        server.restart().await;
    })
    .await;
    eprintln!("{run:?}");
    assert_each_event_once(store.as_ref(), &run, "the store that wrote").await;
    assert_each_event_once(&open(config).await, &run, "a new store").await;
}

/// How long the store may take to serve again once a node is down: the events stream elects
/// a new leader seconds after the old one stops answering (4.2 to 8.4 s measured
/// on nats-server 2.12).
const FAILOVER_WAIT_S: u64 = 30;

/// The same writers on a store whose streams have 3 replicas on a cluster of three servers of
/// the test's own (`PrivateNatsCluster`). Each time, the server leading the events stream is
/// killed: the two left elect another leader and the store carries on through them (an append
/// to another stream, and a read of it, succeed while the node is down); the node then starts
/// again and catches up. Every acknowledged event is stored once at its version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_store_keeps_every_event_when_its_leader_is_killed() {
    let cluster = PrivateNatsCluster::start().await;
    let mut config = unique_config(&cluster.url());
    config.replicas = 3;
    config.request_timeout_ms = 2_000;
    config.reconnect_delay_max_ms = 200;
    let events_stream = config.events_stream();
    let store: Arc<dyn EventStore> = Arc::new(open(config.clone()).await);
    for name in [config.events_stream(), config.snapshots_stream()] {
        assert_eq!(cluster.replicas_of(&name).await, 3, "{name}");
    }
    let mut probes = 0;
    let run = append_through_crashes(store.clone(), || {
        probes += 1;
        let (cluster, store, events_stream) = (&cluster, store.clone(), &events_stream);
        let probe = stream(&format!("probe-{probes}"));
        async move {
            let leader = cluster.leader_of(events_stream).await;
            cluster.kill(leader);
            let killed_at = std::time::Instant::now();
            until_recovered(
                Duration::from_secs(FAILOVER_WAIT_S),
                |error: &EventStoreError| error.kind() == ErrorKind::Unavailable,
                || store.append(&probe, ExpectedVersion::Any, vec![event("p0", "Probed")]),
            )
            .await;
            let read = until_recovered(
                Duration::from_secs(FAILOVER_WAIT_S),
                |error: &EventStoreError| error.kind() == ErrorKind::Unavailable,
                || store.read_stream(&probe, 0, Direction::Forward, 10),
            )
            .await;
            eprintln!(
                "node {leader} killed: served again after {:?}",
                killed_at.elapsed()
            );
            assert_eq!(read.events.len(), 1, "the probe reads back");
            tokio::time::sleep(Duration::from_millis(DOWN_MS)).await;
            cluster.restart(leader).await;
            cluster.wait_until_current(events_stream).await;
        }
    })
    .await;
    eprintln!("{run:?}");
    assert_each_event_once(store.as_ref(), &run, "the store that wrote").await;
    assert_each_event_once(&open(config).await, &run, "a new store").await;
}
