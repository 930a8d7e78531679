//! What the stream-per-partition layout adds: keyless batches retried through another instance
//! land on their first partition and are deduplicated there, and a topic left in the old layout
//! (one stream per topic) is refused, not misread.

use async_nats::jetstream;
use proteus_log::port::{EventAppender, EventReader, TopicAdmin};
use proteus_log::{LogError, ReadFrom, ReadLimits, TopicConfig, TopicName};
use proteus_log_conformance::event;

use crate::support::{NatsHarness, connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_batch_retried_through_another_instance_is_deduplicated() {
    let harness = NatsHarness::new();
    let first = connect(harness.config.clone()).await;
    let second = connect(harness.config.clone()).await;
    let name = TopicName::parse("retried.keyless").unwrap();
    first
        .put_topic(&name, TopicConfig::with_partitions(4))
        .await
        .unwrap();
    // Move the second instance's round-robin away from the first's.
    second
        .append(&name, vec![event("warm-up", None)])
        .await
        .unwrap();
    let mut originals = Vec::new();
    for call in 0..4 {
        let batch: Vec<_> = (0..5)
            .map(|i| event(&format!("batch{call}-{i}"), None))
            .collect();
        originals.push((batch.clone(), first.append(&name, batch).await.unwrap()));
    }
    let partitions: std::collections::BTreeSet<u32> = originals
        .iter()
        .map(|(_, receipts)| receipts[0].partition)
        .collect();
    assert_eq!(
        partitions.len(),
        4,
        "keyless batches are spread round-robin"
    );
    for (batch, receipts) in originals {
        assert!(receipts.iter().all(|r| !r.duplicate));
        let retried = second.append(&name, batch).await.unwrap();
        for (original, retry) in receipts.iter().zip(&retried) {
            assert_eq!(
                (retry.partition, retry.offset, retry.duplicate),
                (original.partition, original.offset, true),
                "the retry lands where the batch first did and is recognised"
            );
        }
    }
    let total: u64 = first
        .describe_topic(&name)
        .await
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.next_offset)
        .sum();
    assert_eq!(total, 21, "each event is stored once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_in_the_old_layout_is_refused_not_misread() {
    let harness = NatsHarness::new();
    let log = connect(harness.config.clone()).await;
    let client = async_nats::connect(harness.config.url.as_str())
        .await
        .unwrap();
    let js = jetstream::new(client);
    let stream = format!("{}_legacy~topic", harness.config.stream_prefix);
    js.create_stream(jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{}.legacy~topic.*", harness.config.subject_prefix)],
        description: Some(
            r#"proteus-topic/1 {"topic":"legacy.topic","config":{"partitions":2}}"#.into(),
        ),
        ..Default::default()
    })
    .await
    .unwrap();
    let name = TopicName::parse("legacy.topic").unwrap();
    let refused = |error: LogError| match error {
        LogError::TopicConflict { reason, .. } => {
            assert!(reason.contains("old layout"), "{reason}");
            assert!(reason.contains(&stream), "{reason}");
        }
        other => panic!("expected a conflict naming the old stream, got {other}"),
    };
    refused(
        log.put_topic(&name, TopicConfig::with_partitions(2))
            .await
            .unwrap_err(),
    );
    refused(log.describe_topic(&name).await.unwrap_err());
    refused(
        log.read(&name, 0, ReadFrom::Offset(0), ReadLimits::default())
            .await
            .unwrap_err(),
    );
    refused(log.append(&name, vec![event("x", None)]).await.unwrap_err());
    assert!(log.list_topics().await.unwrap().is_empty());
}
