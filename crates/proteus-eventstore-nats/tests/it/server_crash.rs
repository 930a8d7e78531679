//! The NATS server itself killed (`SIGKILL`) in the middle of appends and started again on the
//! same store, three times (`proteus_eventstore::crash`): a server of the test's own
//! (`PrivateNatsServer`), since killing the shared one would disturb every other test; then the
//! same on a cluster of three whose leader is killed each time (`PrivateNatsCluster`), and
//! reads while a restarted replica of that cluster catches up.

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

/// A read's consumer may be placed on a replica that has just restarted and is still copying
/// what it missed. Reads right after such a restart (the `$all` feed from many positions,
/// streams from their start, each through a new consumer) must return what the two servers
/// that stayed up return: never fewer events, never a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_every_event_while_a_restarted_replica_catches_up() {
    const STREAMS: usize = 30;
    const APPENDS_PER_STREAM: usize = 10;
    const EVENTS_PER_APPEND: usize = 10;
    let cluster = PrivateNatsCluster::start().await;
    let mut config = unique_config(&cluster.url());
    config.replicas = 3;
    let store = open(config.clone()).await;
    let events_stream = config.events_stream();
    let follower = (cluster.leader_of(&events_stream).await + 1) % 3;
    cluster.kill(follower);
    // What the follower misses: enough bytes that copying them takes a while.
    let pad = "x".repeat(4_096);
    for append in 0..APPENDS_PER_STREAM {
        for s in 0..STREAMS {
            let events = (0..EVENTS_PER_APPEND)
                .map(|i| {
                    let id = format!("s{s}-a{append}-e{i}");
                    let data = format!("{{\"pad\":\"{pad}\"}}");
                    proteus_eventstore::ProposedEvent::new(id, "Padded", data)
                })
                .collect();
            store
                .append(&stream(&format!("order-{s}")), ExpectedVersion::Any, events)
                .await
                .unwrap();
        }
    }
    // What the two servers that stayed up hold, read before the follower returns.
    let all = |from: u64, count: usize| {
        let store = &store;
        async move {
            let filter = proteus_eventstore::ReadFilter::default();
            let page = until_recovered(
                Duration::from_secs(FAILOVER_WAIT_S),
                |error: &EventStoreError| error.kind() == ErrorKind::Unavailable,
                || store.read_all(from, Direction::Forward, count, &filter),
            )
            .await;
            page.events
                .iter()
                .map(|e| (e.position, e.id.clone()))
                .collect::<Vec<_>>()
        }
    };
    let expected = all(0, 10_000).await;
    assert_eq!(
        expected.len(),
        STREAMS * APPENDS_PER_STREAM * EVENTS_PER_APPEND
    );
    cluster.restart(follower).await;
    for read in 0..40 {
        let start = (read * 37) % expected.len();
        let got = all(expected[start].0, 20).await;
        let wanted = &expected[start..(start + 20).min(expected.len())];
        assert_eq!(
            got, wanted,
            "read {read} of $all from position {}",
            expected[start].0
        );
        let name = stream(&format!("order-{}", read % STREAMS));
        let page = until_recovered(
            Duration::from_secs(FAILOVER_WAIT_S),
            |error: &EventStoreError| error.kind() == ErrorKind::Unavailable,
            || store.read_stream(&name, 0, Direction::Forward, 1_000),
        )
        .await;
        assert_eq!(
            page.events.len(),
            APPENDS_PER_STREAM * EVENTS_PER_APPEND,
            "read {read} of stream {name}"
        );
    }
}

/// Reads of a stream and of `$all` while the node leading the cluster's metadata is down and
/// the others elect another. JetStream creates no consumer until then (the metadata leader
/// places consumers), which a read used to wait out for the whole request timeout before
/// failing; the events stream, led elsewhere, still serves its messages to gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_on_while_the_metadata_leader_is_elected() {
    const APPENDS: usize = 5;
    const EVENTS_PER_APPEND: usize = 10;
    let cluster = PrivateNatsCluster::start().await;
    let mut config = unique_config(&cluster.url());
    config.replicas = 3;
    let store = open(config.clone()).await;
    let name = stream("order-1");
    for append in 0..APPENDS {
        let events = (0..EVENTS_PER_APPEND)
            .map(|i| event(&format!("a{append}-e{i}"), "Placed"))
            .collect();
        store
            .append(&name, ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    let events_stream = config.events_stream();
    let metadata_leader = cluster.metadata_leader().await;
    cluster
        .lead_elsewhere(&events_stream, metadata_leader)
        .await;
    cluster.wait_until_current(&events_stream).await;
    cluster.kill(metadata_leader);
    let killed_at = std::time::Instant::now();
    let page = store
        .read_stream(&name, 5, Direction::Forward, 30)
        .await
        .expect("a stream read while the metadata leader is being elected");
    let versions: Vec<u64> = page.events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (5..35).collect::<Vec<u64>>());
    let filter = proteus_eventstore::ReadFilter::default();
    let all = store
        .read_all(0, Direction::Forward, 100, &filter)
        .await
        .expect("a read of $all while the metadata leader is being elected");
    assert_eq!(all.events.len(), APPENDS * EVENTS_PER_APPEND);
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "the two reads took {took:?} with the metadata leader down"
    );
    cluster.restart(metadata_leader).await;
}
