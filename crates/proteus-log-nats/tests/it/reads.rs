//! Reads that continue where the previous one stopped reuse its consumer; every way a reused
//! consumer could stand at the wrong place must still return exactly the events asked for.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use proteus_log::port::{EventAppender, EventReader, ReadBatch, TopicAdmin};
use proteus_log::{ReadFrom, ReadLimits, TopicConfig, TopicName};
use proteus_log_conformance::event;
use proteus_log_nats::NatsLog;
use proteus_nats::test_support::{Proxy, host_port};

use crate::support::{NatsHarness, connect, nats_url};

fn ids(batch: &ReadBatch) -> Vec<String> {
    batch
        .events
        .iter()
        .map(|e| {
            let json: serde_json::Value = serde_json::from_slice(&e.json).unwrap();
            json["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Creates the one-partition topic `name` (again) holding events with these ids.
async fn topic_with(log: &NatsLog, name: &TopicName, ids: impl Iterator<Item = String>) {
    log.put_topic(name, TopicConfig::with_partitions(1))
        .await
        .unwrap();
    log.append(name, ids.map(|id| event(&id, None)).collect())
        .await
        .unwrap();
}

/// Deletes every consumer of partition 0's stream behind the adapter's back, as a server
/// restart does to the in-memory read consumers; returns how many there were.
async fn drop_read_consumers(harness: &NatsHarness, topic: &str) -> usize {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let stream = js
        .get_stream(format!("{}_{topic}_0", harness.config.stream_prefix))
        .await
        .unwrap();
    let names: Vec<String> = stream
        .consumer_names()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    for name in &names {
        stream.delete_consumer(name).await.unwrap();
    }
    names.len()
}

fn limits(events_max: u32, bytes_max: u32) -> ReadLimits {
    ReadLimits {
        events_max,
        bytes_max,
    }
}

#[tokio::test]
async fn reads_continuing_or_jumping_return_exactly_what_was_asked() {
    let mut harness = NatsHarness::new();
    // A parked consumer the server dropped is given up after this long.
    harness.config.request_timeout_ms = 1_000;
    let log = connect(harness.config.clone()).await;
    let name = TopicName::parse("paged").unwrap();
    let all: Vec<String> = (0..50).map(|i| format!("e{i:02}")).collect();
    topic_with(&log, &name, all.iter().cloned()).await;
    let read = |offset: u64, limits: ReadLimits| {
        let (log, name) = (log.clone(), name.clone());
        async move {
            log.read(&name, 0, ReadFrom::Offset(offset), limits)
                .await
                .unwrap()
        }
    };

    // Pages of 7, each starting where the last stopped (the reused consumer's path).
    let mut offset = 0;
    let mut seen = Vec::new();
    while offset < 50 {
        let batch = read(offset, limits(7, 1 << 20)).await;
        assert_eq!(batch.events[0].offset, offset);
        seen.extend(ids(&batch));
        offset = batch.next_offset;
    }
    assert_eq!(seen, all);

    // The same page twice, and a jump back: each starts at its own offset.
    assert_eq!(
        ids(&read(10, limits(3, 1 << 20)).await),
        ["e10", "e11", "e12"]
    );
    assert_eq!(
        ids(&read(10, limits(3, 1 << 20)).await),
        ["e10", "e11", "e12"]
    );
    assert_eq!(ids(&read(2, limits(2, 1 << 20)).await), ["e02", "e03"]);

    // A byte budget that cuts the batch short: the server delivered more than was returned,
    // so the next read from the returned end must not skip what was cut.
    let one_event_bytes = read(20, limits(1, 1 << 20)).await.events[0].json.len() as u32;
    let cut = read(20, limits(10, one_event_bytes * 3 + one_event_bytes / 2)).await;
    assert_eq!(ids(&cut), ["e20", "e21", "e22"]);
    assert_eq!(
        ids(&read(cut.next_offset, limits(2, 1 << 20)).await),
        ["e23", "e24"]
    );

    // At the end, then new events: the parked consumer delivers them.
    assert!(read(50, limits(5, 1 << 20)).await.events.is_empty());
    assert_eq!(ids(&read(48, limits(5, 1 << 20)).await), ["e48", "e49"]);
    log.append(&name, vec![event("e50", None)]).await.unwrap();
    assert_eq!(ids(&read(50, limits(5, 1 << 20)).await), ["e50"]);

    // The server drops the parked consumers (as a restart does: they are kept in memory):
    // the next read gives up on its consumer within the request timeout and reads anew.
    assert_eq!(ids(&read(30, limits(2, 1 << 20)).await), ["e30", "e31"]);
    assert!(
        drop_read_consumers(&harness, "paged").await > 0,
        "reads left parked consumers"
    );
    let started = Instant::now();
    assert_eq!(ids(&read(32, limits(2, 1 << 20)).await), ["e32", "e33"]);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "the dropped consumer was given up after {waited:?}"
    );

    // The topic deleted and created again: a consumer parked on the old stream is not used.
    assert_eq!(ids(&read(0, limits(2, 1 << 20)).await), ["e00", "e01"]);
    log.delete_topic(&name).await.unwrap();
    topic_with(&log, &name, (0..4).map(|i| format!("n{i}"))).await;
    assert_eq!(ids(&read(2, limits(5, 1 << 20)).await), ["n2", "n3"]);
}

/// After a reconnection (the server may have restarted and lost its in-memory consumers), a
/// parked consumer is not tried: the read does not wait out the request timeout on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_parked_before_a_reconnection_are_not_reused() {
    let proxy = Proxy::start(host_port(&nats_url())).await;
    let harness = NatsHarness::behind(&proxy, 2_000);
    let log = connect(harness.config.clone()).await;
    let name = TopicName::parse("reconnected").unwrap();
    topic_with(&log, &name, (0..10).map(|i| format!("e{i}"))).await;
    let read = |offset: u64| {
        let (log, name) = (log.clone(), name.clone());
        async move {
            log.read(&name, 0, ReadFrom::Offset(offset), limits(2, 1 << 20))
                .await
                .unwrap()
        }
    };
    assert_eq!(ids(&read(0).await), ["e0", "e1"]);
    // What a server restart does to the parked consumer, then the reconnection.
    drop_read_consumers(&harness, "reconnected").await;
    proxy.stop();
    proxy.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while log.append(&name, vec![event("after", None)]).await.is_err() {
        assert!(Instant::now() < deadline, "no reconnection within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    assert_eq!(ids(&read(2).await), ["e2", "e3"]);
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "the read waited {:?} on a consumer parked before the reconnection",
        started.elapsed()
    );
    proxy.stop();
}
