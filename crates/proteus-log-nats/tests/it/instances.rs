//! Two logs on one stream prefix, as two `proteus serve` instances sharing NATS: each caches a
//! topic's settings (so appends and reads need no request for them), yet a topic deleted or
//! created again through one is seen at once by the other, and a change of its settings within
//! a few seconds.

use std::time::{Duration, Instant};

use proteus_log::port::{EventAppender, EventReader, TopicAdmin};
use proteus_log::{LogError, ReadFrom, ReadLimits, TopicConfig, TopicName};
use proteus_log_conformance::event;

use crate::support::{NatsHarness, connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_changed_through_one_instance_is_seen_by_the_other() {
    let harness = NatsHarness::new();
    let admin = connect(harness.config.clone()).await;
    let other = connect(harness.config.clone()).await;
    let name = TopicName::parse("shared").unwrap();
    let config = TopicConfig::with_partitions(2);
    admin.put_topic(&name, config.clone()).await.unwrap();
    other
        .append(&name, vec![event("cached", Some("k"))])
        .await
        .unwrap();

    // Settings: a smaller event size limit is enforced by the other instance within seconds.
    let large = event(&"x".repeat(2_000), Some("k"));
    let smaller = TopicConfig {
        event_bytes_max: 1_024,
        ..config.clone()
    };
    admin.put_topic(&name, smaller).await.unwrap();
    let changed_at = Instant::now();
    loop {
        match other.append(&name, vec![large.clone()]).await {
            Err(LogError::EventTooLarge { max: 1_024, .. }) => break,
            Ok(_) => assert!(
                changed_at.elapsed() < Duration::from_secs(5),
                "the other instance still takes 2 KB events 5 s after the limit became 1 KiB"
            ),
            Err(other) => panic!("{other}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Deleted: the other instance says so at once, for appends and reads.
    admin.delete_topic(&name).await.unwrap();
    let appended = other.append(&name, vec![event("gone", Some("k"))]).await;
    assert!(
        matches!(appended, Err(LogError::TopicNotFound { .. })),
        "{appended:?}"
    );
    let read = other
        .read(&name, 1, ReadFrom::Offset(0), ReadLimits::default())
        .await;
    assert!(
        matches!(read, Err(LogError::TopicNotFound { .. })),
        "{read:?}"
    );

    // Created again with more partitions: the other instance serves all of them at once.
    admin
        .put_topic(&name, TopicConfig::with_partitions(3))
        .await
        .unwrap();
    let read = other
        .read(&name, 2, ReadFrom::Offset(0), ReadLimits::default())
        .await
        .unwrap();
    assert_eq!((read.events.len(), read.end_offset), (0, 0));
    let appended = other
        .append(
            &name,
            (0..30)
                .map(|i| event(&format!("e{i}"), Some(&format!("k{i}"))))
                .collect(),
        )
        .await
        .unwrap();
    let partitions: std::collections::BTreeSet<u32> =
        appended.iter().map(|receipt| receipt.partition).collect();
    assert_eq!(partitions.len(), 3, "{appended:?}");
}
