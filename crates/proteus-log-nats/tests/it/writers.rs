//! Two instances appending to the same partition at once: offsets stay gapless and unique.

use std::collections::BTreeSet;

use proteus_log::port::{EventAppender, EventReader, TopicAdmin};
use proteus_log::{ReadFrom, ReadLimits, TopicConfig, TopicName};
use proteus_log_conformance::event;

use crate::support::{NatsHarness, connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_one_partition_get_gapless_unique_offsets() {
    let harness = NatsHarness::new();
    let first = connect(harness.config.clone()).await;
    let second = connect(harness.config.clone()).await;
    let name = TopicName::parse("contended.topic").unwrap();
    first
        .put_topic(&name, TopicConfig::with_partitions(2))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for (writer, log) in [first.clone(), second.clone()].into_iter().enumerate() {
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            let mut receipts = Vec::new();
            for call in 0..20 {
                let events = (0..5)
                    .map(|i| event(&format!("w{writer}-{call}-{i}"), Some("same-key")))
                    .collect();
                receipts.extend(log.append(&name, events).await.unwrap());
            }
            receipts
        }));
    }
    let mut offsets = BTreeSet::new();
    let mut partition = None;
    for task in tasks {
        let receipts = task.await.unwrap();
        assert!(
            receipts.windows(2).all(|w| w[1].offset > w[0].offset),
            "each writer's events keep their order"
        );
        for receipt in receipts {
            assert!(!receipt.duplicate);
            assert_eq!(
                *partition.get_or_insert(receipt.partition),
                receipt.partition
            );
            assert!(
                offsets.insert(receipt.offset),
                "offset {} given twice",
                receipt.offset
            );
        }
    }
    assert_eq!(offsets, (0..200).collect::<BTreeSet<u64>>());
    let batch = first
        .read(
            &name,
            partition.unwrap(),
            ReadFrom::Offset(0),
            ReadLimits::default(),
        )
        .await
        .unwrap();
    let read: Vec<u64> = batch.events.iter().map(|e| e.offset).collect();
    assert_eq!(read, (0..200).collect::<Vec<u64>>());
    // Reads from the middle of a partition whose stream sequences interleave with another's.
    let other = first
        .append(
            &name,
            (0..30)
                .map(|i| event(&format!("x{i}"), Some("other-key-7")))
                .collect(),
        )
        .await
        .unwrap();
    assert!(other.iter().all(|r| r.partition != partition.unwrap()) || other[0].offset == 200);
    for start in [1, 57, 133, 199] {
        let batch = second
            .read(
                &name,
                partition.unwrap(),
                ReadFrom::Offset(start),
                ReadLimits {
                    events_max: 3,
                    bytes_max: 1 << 20,
                },
            )
            .await
            .unwrap();
        assert_eq!(batch.events[0].offset, start);
        assert_eq!(batch.next_offset, batch.events.last().unwrap().offset + 1);
    }
}
