//! The conformance suite of the log port.
//!
//! Every log adapter runs these same tests, so the behaviour the port promises is checked once
//! and holds everywhere. An adapter provides a [`Harness`] and invokes
//! [`log_conformance_tests!`] in its integration tests:
//!
//! ```text
//! proteus_log_conformance::log_conformance_tests!(MyHarness::new());
//! ```
//!
//! Each test gets a fresh harness, so tests are independent and can run in parallel.

pub mod import;

use std::future::Future;
use std::time::Duration;

use proteus_log::partitioner::partition_for_key;
use proteus_log::port::{EventAppender, EventReader, EventSubscriber, Log, TopicAdmin};
use proteus_log::{
    Cursor, Event, LogError, PutTopicOutcome, ReadFrom, ReadLimits, TopicConfig, TopicName,
};

/// What a test needs from an adapter.
pub trait Harness {
    type Log: Log;

    /// Opens the log over this harness's storage. Called again after `shutdown` to simulate a
    /// restart: everything acknowledged before must be there.
    fn open(&mut self) -> impl Future<Output = Self::Log>;

    /// Moves the log's clock forward (adapters whose clock cannot be moved sleep instead).
    fn advance_clock(&self, by: Duration) -> impl Future<Output = ()>;

    /// Runs the adapter's retention now.
    fn apply_retention(&self, log: &Self::Log) -> impl Future<Output = ()>;
}

/// Generates one `#[tokio::test]` per conformance test, each with `$harness` freshly built.
#[macro_export]
macro_rules! log_conformance_tests {
    ($harness:expr) => {
        $crate::log_conformance_tests!(@tests $harness;
            topics_are_created_updated_listed_and_deleted,
            invalid_configurations_are_refused,
            events_read_back_in_order_with_their_bytes,
            keyed_events_follow_the_kafka_partitioner,
            keyless_appends_are_spread_across_partitions,
            retried_events_are_recognised_as_duplicates,
            reads_respect_their_limits,
            reads_start_at_a_time,
            reads_past_the_end_are_refused,
            oversized_events_are_refused_with_their_index,
            unknown_topics_and_partitions_are_refused,
            waiting_for_events_wakes_on_append_and_times_out,
            waits_take_any_timeout,
            events_and_dedup_survive_a_restart,
            retention_removes_old_events_from_the_front,
        );
    };
    (@tests $harness:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                $crate::$test($harness).await;
            }
        )*
    };
}

pub(crate) fn topic(name: &str) -> TopicName {
    TopicName::parse(name).unwrap()
}

/// A CloudEvent with the given id and, optionally, a partition key.
pub fn event(id: &str, key: Option<&str>) -> Event {
    let mut json = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "/conformance",
        "type": "test.event",
        "data": {"id": id},
    });
    if let Some(key) = key {
        json["partitionkey"] = key.into();
    }
    Event::from_json(json.to_string().as_bytes()).unwrap()
}

fn id_of(json: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(json).unwrap();
    value["id"].as_str().unwrap().to_owned()
}

async fn read_all<L: Log>(log: &L, name: &TopicName, partition: u32) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let batch = log
            .read(
                name,
                partition,
                ReadFrom::Offset(from),
                ReadLimits::default(),
            )
            .await
            .unwrap();
        if batch.events.is_empty() {
            return out;
        }
        out.extend(batch.events.iter().map(|e| (e.offset, id_of(&e.json))));
        from = batch.next_offset;
    }
}

pub async fn topics_are_created_updated_listed_and_deleted<H: Harness>(mut harness: H) {
    let log = harness.open().await;
    let orders = topic("orders");
    let config = TopicConfig::with_partitions(3);
    assert_eq!(
        log.put_topic(&orders, config.clone()).await.unwrap(),
        PutTopicOutcome::Created
    );
    assert_eq!(
        log.put_topic(&orders, config.clone()).await.unwrap(),
        PutTopicOutcome::Unchanged
    );
    let longer = TopicConfig {
        retention_ms: Some(60_000),
        ..config.clone()
    };
    assert_eq!(
        log.put_topic(&orders, longer.clone()).await.unwrap(),
        PutTopicOutcome::Updated
    );
    assert_eq!(log.describe_topic(&orders).await.unwrap().config, longer);
    let conflict = log
        .put_topic(&orders, TopicConfig::with_partitions(4))
        .await
        .unwrap_err();
    assert!(
        matches!(conflict, LogError::TopicConflict { .. }),
        "{conflict}"
    );
    assert!(conflict.to_string().contains("3 partitions"), "{conflict}");

    log.put_topic(&topic("audit"), TopicConfig::default())
        .await
        .unwrap();
    let names: Vec<_> = log
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert_eq!(names, ["audit", "orders"]);
    let described = log.describe_topic(&orders).await.unwrap();
    assert_eq!(described.partitions.len(), 3);
    assert!(
        described
            .partitions
            .iter()
            .all(|p| p.first_offset == 0 && p.next_offset == 0)
    );

    log.append(&orders, vec![event("1", Some("k"))])
        .await
        .unwrap();
    log.delete_topic(&orders).await.unwrap();
    assert!(matches!(
        log.describe_topic(&orders).await,
        Err(LogError::TopicNotFound { .. })
    ));
    assert!(matches!(
        log.delete_topic(&orders).await,
        Err(LogError::TopicNotFound { .. })
    ));
    log.put_topic(&orders, TopicConfig::with_partitions(3))
        .await
        .unwrap();
    let recreated = log.describe_topic(&orders).await.unwrap();
    assert!(
        recreated.partitions.iter().all(|p| p.next_offset == 0),
        "a recreated topic starts empty"
    );
}

pub async fn invalid_configurations_are_refused<H: Harness>(mut harness: H) {
    let log = harness.open().await;
    for config in [
        TopicConfig::with_partitions(0),
        TopicConfig {
            event_bytes_max: 0,
            ..TopicConfig::default()
        },
        TopicConfig {
            retention_ms: Some(0),
            ..TopicConfig::default()
        },
    ] {
        let error = log.put_topic(&topic("bad"), config).await.unwrap_err();
        assert!(matches!(error, LogError::InvalidTopicConfig(_)), "{error}");
    }
    assert!(log.list_topics().await.unwrap().is_empty());
}

pub async fn events_read_back_in_order_with_their_bytes<H: Harness>(mut harness: H) {
    let log = harness.open().await;
    let name = topic("ordered");
    log.put_topic(&name, TopicConfig::with_partitions(1))
        .await
        .unwrap();
    let mut expected = Vec::new();
    for batch in 0..5 {
        let events: Vec<Event> = (0..20)
            .map(|i| event(&format!("e{batch}-{i}"), None))
            .collect();
        expected.extend(events.iter().map(|e| e.json().to_vec()));
        let receipts = log.append(&name, events).await.unwrap();
        let offsets: Vec<u64> = receipts.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (batch * 20..batch * 20 + 20).collect::<Vec<u64>>());
        assert!(receipts.iter().all(|r| !r.duplicate && r.partition == 0));
    }
    let batch = log
        .read(
            &name,
            0,
            ReadFrom::Offset(0),
            ReadLimits {
                events_max: 1000,
                bytes_max: 1 << 20,
            },
        )
        .await
        .unwrap();
    assert_eq!(batch.events.len(), 100);
    for (i, stored) in batch.events.iter().enumerate() {
        assert_eq!(stored.offset, i as u64);
        assert_eq!(
            &stored.json[..],
            &expected[i][..],
            "bytes of event {i} changed"
        );
    }
    assert!(
        batch
            .events
            .windows(2)
            .all(|w| w[0].append_time_ms <= w[1].append_time_ms)
    );
    assert_eq!(
        (batch.next_offset, batch.first_offset, batch.end_offset),
        (100, 0, 100)
    );
    let middle = log
        .read(&name, 0, ReadFrom::Offset(57), ReadLimits::default())
        .await
        .unwrap();
    assert_eq!(middle.events[0].offset, 57);
    assert_eq!(middle.events.len(), 43);
}

pub async fn keyed_events_follow_the_kafka_partitioner<H: Harness>(mut harness: H) {
    let log = harness.open().await;
    let name = topic("keyed");
    log.put_topic(&name, TopicConfig::with_partitions(8))
        .await
        .unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("customer-{i}")).collect();
    let events = keys
        .iter()
        .enumerate()
        .map(|(i, k)| event(&i.to_string(), Some(k)))
        .collect();
    let receipts = log.append(&name, events).await.unwrap();
    for (key, receipt) in keys.iter().zip(&receipts) {
        assert_eq!(receipt.partition, partition_for_key(key, 8), "key {key}");
    }
    // The subject is the key when there is no partitionkey.
    let by_subject = Event::from_json(
        br#"{"specversion":"1.0","id":"s","source":"/c","type":"t","subject":"customer-3"}"#,
    )
    .unwrap();
    let receipt = log.append(&name, vec![by_subject]).await.unwrap()[0];
    assert_eq!(receipt.partition, partition_for_key("customer-3", 8));
    // Per-key order holds.
    let ordered: Vec<Event> = (0..10)
        .map(|i| event(&format!("o{i}"), Some("same")))
        .collect();
    let receipts = log.append(&name, ordered).await.unwrap();
    assert!(
        receipts
            .windows(2)
            .all(|w| w[0].partition == w[1].partition && w[1].offset == w[0].offset + 1)
    );
}

pub async fn keyless_appends_are_spread_across_partitions<H: Harness>(mut harness: H) {
    let log = harness.open().await;
    let name = topic("spread");
    log.put_topic(&name, TopicConfig::with_partitions(4))
        .await
        .unwrap();
    let mut per_partition = [0u32; 4];
    for call in 0..40 {
        let events = (0..5)
            .map(|i| event(&format!("{call}-{i}"), None))
            .collect();
        for receipt in log.append(&name, events).await.unwrap() {
            per_partition[receipt.partition as usize] += 1;
        }
    }
    assert!(
        per_partition.iter().all(|&n| n == 50),
        "uneven spread: {per_partition:?}"
    );
}

pub async fn retried_events_are_recognised_as_duplicates<H: Harness>(mut harness: H) {
    let log = harness.open().await;
    let name = topic("dedup");
    log.put_topic(&name, TopicConfig::with_partitions(4))
        .await
        .unwrap();
    let first = log
        .append(&name, vec![event("a", None), event("b", Some("k"))])
        .await
        .unwrap();
    assert!(first.iter().all(|r| !r.duplicate));
    // A retry of the same call, plus one new event and a repeat inside the call.
    let retry = log
        .append(
            &name,
            vec![
                event("a", None),
                event("b", Some("k")),
                event("c", None),
                event("c", None),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        (retry[0].partition, retry[0].offset, retry[0].duplicate),
        (first[0].partition, first[0].offset, true)
    );
    assert_eq!(
        (retry[1].partition, retry[1].offset, retry[1].duplicate),
        (first[1].partition, first[1].offset, true)
    );
    assert!(!retry[2].duplicate);
    assert_eq!(
        (retry[3].partition, retry[3].offset, retry[3].duplicate),
        (retry[2].partition, retry[2].offset, true)
    );
    let total: u64 = log
        .describe_topic(&name)
        .await
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.next_offset)
        .sum();
    assert_eq!(total, 3, "only a, b and c are stored");
    // The same id from another source is another event.
    let other =
        Event::from_json(br#"{"specversion":"1.0","id":"a","source":"/elsewhere","type":"t"}"#)
            .unwrap();
    assert!(!log.append(&name, vec![other]).await.unwrap()[0].duplicate);
}

pub async fn reads_respect_their_limits<H: Harness>(mut harness: H) {
    let log = harness.open().await;
    let name = topic("limits");
    log.put_topic(&name, TopicConfig::with_partitions(1))
        .await
        .unwrap();
    log.append(
        &name,
        (0..50).map(|i| event(&i.to_string(), None)).collect(),
    )
    .await
    .unwrap();
    let few = log
        .read(
            &name,
            0,
            ReadFrom::Offset(0),
            ReadLimits {
                events_max: 7,
                bytes_max: 1 << 20,
            },
        )
        .await
        .unwrap();
    assert_eq!(few.events.len(), 7);
    assert_eq!(few.next_offset, 7);
    let one = log
        .read(
            &name,
            0,
            ReadFrom::Offset(3),
            ReadLimits {
                events_max: 100,
                bytes_max: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        one.events.len(),
        1,
        "at least one event even over bytes_max"
    );
    let size = one.events[0].json.len() as u32;
    let some = log
        .read(
            &name,
            0,
            ReadFrom::Offset(0),
            ReadLimits {
                events_max: 100,
                bytes_max: size * 5,
            },
        )
        .await
        .unwrap();
    assert_eq!(some.events.len(), 5);
}

pub async fn reads_start_at_a_time<H: Harness>(mut harness: H) {
    let log = harness.open().await;
    let name = topic("timed");
    log.put_topic(&name, TopicConfig::with_partitions(1))
        .await
        .unwrap();
    log.append(
        &name,
        (0..10).map(|i| event(&format!("early{i}"), None)).collect(),
    )
    .await
    .unwrap();
    harness.advance_clock(Duration::from_millis(1_500)).await;
    log.append(
        &name,
        (0..10).map(|i| event(&format!("late{i}"), None)).collect(),
    )
    .await
    .unwrap();
    let late = log
        .read(&name, 0, ReadFrom::Offset(10), ReadLimits::default())
        .await
        .unwrap();
    let since = late.events[0].append_time_ms;
    let batch = log
        .read(&name, 0, ReadFrom::TimeMs(since), ReadLimits::default())
        .await
        .unwrap();
    assert_eq!(batch.events[0].offset, 10);
    assert_eq!(id_of(&batch.events[0].json), "late0");
    let all = log
        .read(&name, 0, ReadFrom::TimeMs(0), ReadLimits::default())
        .await
        .unwrap();
    assert_eq!(all.events.len(), 20);
    let future = log
        .read(
            &name,
            0,
            ReadFrom::TimeMs(since + 3_600_000),
            ReadLimits::default(),
        )
        .await
        .unwrap();
    assert!(future.events.is_empty());
    assert_eq!(future.next_offset, 20);
}

pub async fn reads_past_the_end_are_refused<H: Harness>(mut harness: H) {
    let log = harness.open().await;
    let name = topic("ends");
    log.put_topic(&name, TopicConfig::with_partitions(1))
        .await
        .unwrap();
    log.append(&name, vec![event("1", None), event("2", None)])
        .await
        .unwrap();
    let at_end = log
        .read(&name, 0, ReadFrom::Offset(2), ReadLimits::default())
        .await
        .unwrap();
    assert!(at_end.events.is_empty());
    assert_eq!(at_end.next_offset, 2);
    let error = log
        .read(&name, 0, ReadFrom::Offset(3), ReadLimits::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            LogError::OffsetOutOfRange {
                offset: 3,
                end_offset: 2,
                ..
            }
        ),
        "{error}"
    );
}

pub async fn oversized_events_are_refused_with_their_index<H: Harness>(mut harness: H) {
    let log = harness.open().await;
    let name = topic("small");
    log.put_topic(
        &name,
        TopicConfig {
            event_bytes_max: 200,
            ..TopicConfig::default()
        },
    )
    .await
    .unwrap();
    let big = Event::from_json(
        format!(
            r#"{{"specversion":"1.0","id":"big","source":"/c","type":"t","data":"{}"}}"#,
            "x".repeat(300)
        )
        .as_bytes(),
    )
    .unwrap();
    let error = log
        .append(&name, vec![event("ok", None), big])
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            LogError::EventTooLarge {
                index: 1,
                max: 200,
                ..
            }
        ),
        "{error}"
    );
    let described = log.describe_topic(&name).await.unwrap();
    assert_eq!(
        described.partitions[0].next_offset, 0,
        "nothing of a refused call is stored"
    );
}

pub async fn unknown_topics_and_partitions_are_refused<H: Harness>(mut harness: H) {
    let log = harness.open().await;
    let missing = topic("missing");
    assert!(matches!(
        log.append(&missing, vec![event("1", None)]).await,
        Err(LogError::TopicNotFound { .. })
    ));
    assert!(matches!(
        log.read(&missing, 0, ReadFrom::Offset(0), ReadLimits::default())
            .await,
        Err(LogError::TopicNotFound { .. })
    ));
    let name = topic("two");
    log.put_topic(&name, TopicConfig::with_partitions(2))
        .await
        .unwrap();
    let error = log
        .read(&name, 2, ReadFrom::Offset(0), ReadLimits::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            LogError::PartitionNotFound {
                partition: 2,
                partitions: 2,
                ..
            }
        ),
        "{error}"
    );
}

pub async fn waiting_for_events_wakes_on_append_and_times_out<H: Harness>(mut harness: H)
where
    H::Log: Clone + 'static,
{
    let log = harness.open().await;
    let name = topic("waits");
    log.put_topic(&name, TopicConfig::with_partitions(2))
        .await
        .unwrap();
    let mut cursor = Cursor::new();
    cursor.set(0, 0);
    cursor.set(1, 0);
    assert!(
        !log.wait_for_events(&name, &cursor, Duration::from_millis(50))
            .await
            .unwrap()
    );
    let appender = log.clone();
    let target = name.clone();
    let append = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        appender
            .append(&target, vec![event("1", None)])
            .await
            .unwrap()
    });
    let woke = log
        .wait_for_events(&name, &cursor, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(woke);
    let receipt = append.await.unwrap()[0];
    let batch = log
        .read(
            &name,
            receipt.partition,
            ReadFrom::Offset(0),
            ReadLimits::default(),
        )
        .await
        .unwrap();
    assert_eq!(batch.events.len(), 1, "the awaited event is readable");
}

/// A timeout too long to add to a clock (`Duration::MAX`) is capped, never a panic.
pub async fn waits_take_any_timeout<H: Harness>(mut harness: H) {
    let log = harness.open().await;
    let name = topic("patient");
    log.put_topic(&name, TopicConfig::with_partitions(1))
        .await
        .unwrap();
    log.append(&name, vec![event("1", None)]).await.unwrap();
    let mut cursor = Cursor::new();
    cursor.set(0, 0);
    assert!(
        log.wait_for_events(&name, &cursor, Duration::MAX)
            .await
            .unwrap()
    );
}

pub async fn events_and_dedup_survive_a_restart<H: Harness>(mut harness: H) {
    let name = topic("durable");
    {
        let log = harness.open().await;
        log.put_topic(&name, TopicConfig::with_partitions(2))
            .await
            .unwrap();
        for batch in 0..3 {
            let events = (0..10)
                .map(|i| event(&format!("{batch}-{i}"), Some(&i.to_string())))
                .collect();
            log.append(&name, events).await.unwrap();
        }
        log.shutdown().await.unwrap();
        let error = log
            .append(&name, vec![event("late", None)])
            .await
            .unwrap_err();
        assert!(matches!(error, LogError::Unavailable { .. }), "{error}");
    }
    let log = harness.open().await;
    let described = log.describe_topic(&name).await.unwrap();
    assert_eq!(described.config.partitions, 2);
    let before: Vec<_> = [
        read_all(&log, &name, 0).await,
        read_all(&log, &name, 1).await,
    ]
    .concat();
    assert_eq!(before.len(), 30);
    let retry = log
        .append(&name, vec![event("1-4", Some("4"))])
        .await
        .unwrap()[0];
    assert!(
        retry.duplicate,
        "dedup remembers events appended before the restart"
    );
    let fresh = log
        .append(&name, vec![event("new", Some("4"))])
        .await
        .unwrap()[0];
    assert!(!fresh.duplicate);
    let partition = read_all(&log, &name, fresh.partition).await;
    assert_eq!(partition.last().unwrap(), &(fresh.offset, "new".to_owned()));
    assert!(
        partition.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "offsets continue without a gap"
    );
}

pub async fn retention_removes_old_events_from_the_front<H: Harness>(mut harness: H) {
    let log = harness.open().await;
    let name = topic("retained");
    let config = TopicConfig {
        retention_ms: Some(60_000),
        segment_bytes: 4096,
        ..TopicConfig::default()
    };
    log.put_topic(&name, config).await.unwrap();
    for batch in 0..10 {
        log.append(
            &name,
            (0..10)
                .map(|i| event(&format!("old{batch}-{i}"), None))
                .collect(),
        )
        .await
        .unwrap();
    }
    harness.advance_clock(Duration::from_secs(120)).await;
    for batch in 0..3 {
        log.append(
            &name,
            (0..10)
                .map(|i| event(&format!("new{batch}-{i}"), None))
                .collect(),
        )
        .await
        .unwrap();
    }
    harness.apply_retention(&log).await;
    let described = log.describe_topic(&name).await.unwrap().partitions[0].clone();
    assert!(described.first_offset > 0, "old events were removed");
    assert!(
        described.first_offset <= 100,
        "events newer than the retention were kept"
    );
    assert_eq!(described.next_offset, 130);
    let from_zero = log
        .read(&name, 0, ReadFrom::Offset(0), ReadLimits::default())
        .await
        .unwrap();
    assert_eq!(
        from_zero.events[0].offset, described.first_offset,
        "a read from a removed offset starts at the first kept"
    );
    let kept = read_all(&log, &name, 0).await;
    assert!(kept.iter().filter(|(_, id)| id.starts_with("new")).count() == 30);
}
