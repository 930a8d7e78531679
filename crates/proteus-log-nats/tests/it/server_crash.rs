//! The NATS server itself killed (`SIGKILL`) in the middle of appends and started again, three times, on
//! the same store: a server of the test's own (`PrivateNatsServer`), since killing the shared
//! one would disturb every other test.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use proteus_log::port::{EventAppender, EventReader, TopicAdmin};
use proteus_log::{LogError, ReadFrom, ReadLimits, TopicConfig, TopicName};
use proteus_log_conformance::event;
use proteus_log_nats::NatsLog;
use proteus_nats::test_support::PrivateNatsServer;

use crate::support::{connect, unique_config};

/// Writers appending without pause, so appends are in flight when the server dies.
const WRITERS: usize = 4;
/// Calls of each writer; half keyed (one key per writer), half keyless.
const CALLS_PER_WRITER: usize = 30;
const EVENTS_PER_CALL: usize = 5;
pub const PARTITIONS: u32 = 3;
/// Calls acknowledged (all writers together) before each kill: three crashes, so that some
/// fall while a call's messages are stored and its acknowledgements not yet sent.
const CALLS_BEFORE_KILLS: [usize; 3] = [30, 60, 90];
/// How long the server stays down.
pub const DOWN_MS: u64 = 1_000;
/// How long one call may keep being retried.
const RETRY_FOR_S: u64 = 30;

/// What one writer saw.
#[derive(Default)]
struct Tries {
    failures: usize,
    /// Events a retry found already stored: their first try was, its answer lost.
    recognised_duplicates: usize,
}

/// Appends the writer's calls, retrying a failed call whole (same events, same ids) until it
/// succeeds, as the port's contract asks.
async fn write(
    log: &NatsLog,
    topic: &TopicName,
    writer: usize,
    acknowledged: &AtomicUsize,
) -> Tries {
    let mut tries = Tries::default();
    for call in 0..CALLS_PER_WRITER {
        let key = format!("key-{writer}");
        let key = (call % 2 == 0).then_some(key.as_str());
        let events: Vec<_> = (0..EVENTS_PER_CALL)
            .map(|i| event(&format!("w{writer}-{call}-{i}"), key))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(RETRY_FOR_S);
        loop {
            match log.append(topic, events.clone()).await {
                Ok(receipts) => {
                    assert_eq!(receipts.len(), EVENTS_PER_CALL);
                    tries.recognised_duplicates += receipts.iter().filter(|r| r.duplicate).count();
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(error) => {
                    assert!(
                        matches!(error, LogError::Unavailable { .. }),
                        "w{writer} call {call} failed, and not retriably: {error}"
                    );
                    assert!(
                        Instant::now() < deadline,
                        "w{writer} call {call} still failing after {RETRY_FOR_S} s: the log did not reconnect by itself ({error})"
                    );
                    tries.failures += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    tries
}

/// Runs the writers on `topic` and calls `crash` after each of [`CALLS_BEFORE_KILLS`]
/// acknowledged calls. Fails if no call failed: then the crashes were not seen.
pub async fn append_through_crashes<F, C>(log: &NatsLog, topic: &TopicName, mut crash: C)
where
    C: FnMut() -> F,
    F: std::future::Future<Output = ()>,
{
    let acknowledged = AtomicUsize::new(0);
    let writers = join_all((0..WRITERS).map(|w| write(log, topic, w, &acknowledged)));
    let crashes = async {
        for before_kill in CALLS_BEFORE_KILLS {
            while acknowledged.load(Ordering::Relaxed) < before_kill {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            crash().await;
        }
    };
    let (tries, ()) = tokio::join!(writers, crashes);
    let failures: usize = tries.iter().map(|t| t.failures).sum();
    assert!(
        failures > 0,
        "no call failed while the server was down: the test did not see the crashes"
    );
    eprintln!(
        "{failures} failed tries, {} events of retries recognised as duplicates",
        tries.iter().map(|t| t.recognised_duplicates).sum::<usize>()
    );
}

/// Every call either succeeds or fails with a retriable error; retried whole until it
/// succeeds, every event is stored exactly once (deduplicated by its id within the window when
/// the first try was stored and its answer lost, keyless batches on their claimed partition),
/// each partition's offsets stay gapless, and events of one key keep their order. The log
/// reconnects by itself, and a log connected afterwards reads the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_across_a_killed_and_restarted_server_are_stored_once() {
    let server = PrivateNatsServer::start().await;
    let mut config = unique_config(&server.url());
    config.request_timeout_ms = 1_000;
    config.reconnect_delay_max_ms = 200;
    let log = connect(config.clone()).await;
    let topic = TopicName::parse("crash").unwrap();
    log.put_topic(&topic, TopicConfig::with_partitions(PARTITIONS))
        .await
        .unwrap();
    append_through_crashes(&log, &topic, || async {
        server.kill();
        tokio::time::sleep(Duration::from_millis(DOWN_MS)).await;
        server.restart().await;
    })
    .await;
    assert_each_event_once(&log, &topic, "the log that wrote").await;
    assert_each_event_once(&connect(config).await, &topic, "a new log").await;
}

/// Through `reader`: each writer's events stored exactly once in `topic`, every partition's
/// offsets gapless, and the events of each key in the order they were written.
pub async fn assert_each_event_once(reader: &NatsLog, topic: &TopicName, name: &str) {
    // Each id → how many times it is stored; each key → its events in offset order.
    let mut stored: BTreeMap<String, usize> = BTreeMap::new();
    let mut keyed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let batch = reader
            .read(topic, partition, ReadFrom::Offset(0), ReadLimits::default())
            .await
            .unwrap();
        let offsets: Vec<u64> = batch.events.iter().map(|e| e.offset).collect();
        assert_eq!(
            offsets,
            (0..batch.events.len() as u64).collect::<Vec<_>>(),
            "{name}: partition {partition} is gapless"
        );
        for stored_event in &batch.events {
            let json: serde_json::Value = serde_json::from_slice(&stored_event.json).unwrap();
            let id = json["id"].as_str().unwrap().to_owned();
            if let Some(key) = json["partitionkey"].as_str() {
                keyed.entry(key.to_owned()).or_default().push(id.clone());
            }
            *stored.entry(id).or_default() += 1;
        }
    }
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{name}: stored more than once: {twice:?}");
    assert_eq!(
        stored.len(),
        WRITERS * CALLS_PER_WRITER * EVENTS_PER_CALL,
        "{name}: every event is stored"
    );
    for (key, ids) in keyed {
        let writer = key.trim_start_matches("key-");
        let expected: Vec<String> = (0..CALLS_PER_WRITER)
            .step_by(2)
            .flat_map(|call| (0..EVENTS_PER_CALL).map(move |i| format!("w{writer}-{call}-{i}")))
            .collect();
        assert_eq!(ids, expected, "{name}: the events of {key} in order");
    }
}
