use std::time::Duration;

use proteus_log::memory::{MemoryLog, MemoryLogConfig};
use proteus_log::port::{EventAppender, EventReader, EventSubscriber, Log, TopicAdmin};
use proteus_log::{Cursor, LogError, ReadFrom, ReadLimits, TopicConfig, TopicName};
use proteus_log_conformance::{Harness, event};

/// One memory log; opened again after a shutdown, it is a new handle over the same events.
#[derive(Default)]
struct MemoryHarness {
    log: Option<MemoryLog>,
}

impl Harness for MemoryHarness {
    type Log = MemoryLog;

    async fn open(&mut self) -> MemoryLog {
        match &self.log {
            Some(log) => log.reopen(),
            None => {
                let log = MemoryLog::default();
                self.log = Some(log.clone());
                log
            }
        }
    }

    async fn advance_clock(&self, by: Duration) {
        self.log.as_ref().expect("opened").advance_clock(by);
    }

    async fn apply_retention(&self, log: &MemoryLog) {
        log.apply_retention();
    }
}

proteus_log_conformance::log_conformance_tests!(MemoryHarness::default());

fn topic(name: &str) -> TopicName {
    TopicName::parse(name).unwrap()
}

#[tokio::test]
async fn an_append_past_bytes_max_is_refused_whole_and_retention_frees_space() {
    // Room for 15 of these events (ids of one length: the same size each).
    let size = event("a0", None).json().len() as u64;
    let log = MemoryLog::new(MemoryLogConfig {
        bytes_max: size * 15,
    });
    let name = topic("bounded");
    let config = TopicConfig {
        retention_ms: Some(60_000),
        ..TopicConfig::default()
    };
    log.put_topic(&name, config).await.unwrap();
    let batch = |prefix: &str| -> Vec<_> {
        (0..10)
            .map(|i| event(&format!("{prefix}{i}"), None))
            .collect()
    };
    log.append(&name, batch("a")).await.unwrap();
    let error = log.append(&name, batch("b")).await.unwrap_err();
    assert!(
        matches!(&error, LogError::Unavailable { reason } if reason.contains(&format!("bytes_max of {}", size * 15))),
        "{error}"
    );
    let described = log.describe_topic(&name).await.unwrap();
    assert_eq!(
        described.partitions[0].next_offset, 10,
        "nothing of it stored"
    );
    // Once the first events are past their retention, the next append makes room.
    log.advance_clock(Duration::from_secs(120));
    let receipts = log.append(&name, batch("b")).await.unwrap();
    assert_eq!(receipts[0].offset, 10);
    let described = log.describe_topic(&name).await.unwrap();
    assert_eq!(described.partitions[0].first_offset, 10);
}

#[tokio::test]
async fn retention_by_size_keeps_the_newest_events() {
    let log = MemoryLog::default();
    let name = topic("sized");
    let size = event("x00", None).json().len() as u64;
    log.put_topic(
        &name,
        TopicConfig {
            retention_bytes: Some(size * 3),
            ..TopicConfig::default()
        },
    )
    .await
    .unwrap();
    let events = (0..10).map(|i| event(&format!("x0{i}"), None)).collect();
    log.append(&name, events).await.unwrap();
    let after_one_call = log.describe_topic(&name).await.unwrap().partitions[0].clone();
    assert_eq!(after_one_call.first_offset, 7, "applied as the call stores");
    log.append(&name, vec![event("x10", None)]).await.unwrap();
    let kept = log
        .read(&name, 0, ReadFrom::Offset(0), ReadLimits::default())
        .await
        .unwrap();
    let offsets: Vec<u64> = kept.events.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, [8, 9, 10]);
}

#[tokio::test]
async fn a_retry_after_the_dedup_window_is_a_new_event() {
    let log = MemoryLog::default();
    let name = topic("window");
    log.put_topic(
        &name,
        TopicConfig {
            dedup_window_ms: 1_000,
            ..TopicConfig::default()
        },
    )
    .await
    .unwrap();
    log.append(&name, vec![event("a", None)]).await.unwrap();
    log.advance_clock(Duration::from_millis(500));
    assert!(log.append(&name, vec![event("a", None)]).await.unwrap()[0].duplicate);
    log.advance_clock(Duration::from_millis(600));
    let late = log.append(&name, vec![event("a", None)]).await.unwrap()[0];
    assert!(!late.duplicate);
    assert_eq!(late.offset, 1);
}

#[tokio::test]
async fn waits_end_when_their_topic_is_deleted_or_their_handle_shut_down() {
    let log = MemoryLog::default();
    let name = topic("waited");
    log.put_topic(&name, TopicConfig::default()).await.unwrap();
    let mut cursor = Cursor::new();
    cursor.set(0, 0);
    let waiter = {
        let (log, name, cursor) = (log.clone(), name.clone(), cursor.clone());
        tokio::spawn(async move {
            log.wait_for_events(&name, &cursor, Duration::from_secs(30))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    log.delete_topic(&name).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the wait ended at the deletion")
        .unwrap();
    assert!(
        matches!(ended, Err(LogError::TopicNotFound { .. })),
        "{ended:?}"
    );

    log.put_topic(&name, TopicConfig::default()).await.unwrap();
    let waiter = {
        let (log, name) = (log.clone(), name.clone());
        tokio::spawn(async move {
            log.wait_for_events(&name, &cursor, Duration::from_secs(30))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let other_handle = log.reopen();
    log.shutdown().await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the wait ended at the shutdown")
        .unwrap();
    assert!(
        matches!(ended, Err(LogError::Unavailable { .. })),
        "{ended:?}"
    );
    // Another handle over the same events is still open.
    assert!(other_handle.describe_topic(&name).await.is_ok());
}

#[tokio::test]
async fn a_read_asking_for_nothing_still_gets_one_event() {
    let log = MemoryLog::default();
    let name = topic("bounds");
    log.put_topic(&name, TopicConfig::default()).await.unwrap();
    log.append(&name, vec![event("1", None), event("2", None)])
        .await
        .unwrap();
    let zero = ReadLimits {
        events_max: 0,
        bytes_max: 0,
    };
    let batch = log.read(&name, 0, ReadFrom::Offset(0), zero).await.unwrap();
    assert_eq!(
        batch.events.len(),
        1,
        "at least one event when one is there"
    );
}

#[tokio::test]
async fn a_wait_on_an_unknown_partition_is_refused() {
    let log = MemoryLog::default();
    let name = topic("two");
    log.put_topic(&name, TopicConfig::with_partitions(2))
        .await
        .unwrap();
    let mut cursor = Cursor::new();
    cursor.set(5, 0);
    let error = log
        .wait_for_events(&name, &cursor, Duration::from_millis(10))
        .await
        .unwrap_err();
    assert!(
        matches!(error, LogError::PartitionNotFound { partition: 5, .. }),
        "{error}"
    );
}
