//! `NatsLog::import_partition`: events copied in at the offsets they had elsewhere, an empty
//! partition moved to start where the source's retention left it, and every import that would
//! not continue a partition exactly where it ends refused.

use bytes::Bytes;
use proteus_log::port::{EventAppender, EventReader, TopicAdmin};
use proteus_log::{LogError, ReadFrom, ReadLimits, TopicConfig, TopicName};
use proteus_log_conformance::event;

use crate::support::{NatsHarness, connect};

fn json(id: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/import","type":"t"}}"#
    ))
}

#[tokio::test]
async fn imports_keep_offsets_and_continue_only_where_a_partition_ends() {
    let harness = NatsHarness::new();
    let log = connect(harness.config.clone()).await;
    let name = TopicName::parse("imported").unwrap();
    log.put_topic(&name, TopicConfig::with_partitions(2))
        .await
        .unwrap();

    // The source's partition 1 starts at offset 5 (its first five were removed).
    log.import_partition(&name, 1, 5, &[json("a"), json("b")])
        .await
        .unwrap();
    assert_eq!(log.partition_offsets(&name, 1).await.unwrap(), (5, 7));
    log.import_partition(&name, 1, 7, &[json("c")])
        .await
        .unwrap();
    let read = log
        .read(
            &name,
            1,
            ReadFrom::Offset(0),
            ReadLimits {
                events_max: 10,
                bytes_max: 1 << 20,
            },
        )
        .await
        .unwrap();
    let stored: Vec<(u64, Bytes)> = read
        .events
        .into_iter()
        .map(|e| (e.offset, e.json))
        .collect();
    assert_eq!(
        stored,
        [(5, json("a")), (6, json("b")), (7, json("c"))],
        "byte for byte, at the source's offsets"
    );

    // Not where the partition ends: refused, nothing written.
    for at in [6, 9] {
        match log.import_partition(&name, 1, at, &[json("x")]).await {
            Err(LogError::TopicConflict { reason, .. }) => {
                assert!(reason.contains("next offset is 8"), "{reason}")
            }
            other => panic!("an import at {at} after offset 7: {other:?}"),
        }
    }
    assert_eq!(log.partition_offsets(&name, 1).await.unwrap(), (5, 8));

    // A partition written by appends is continued by an import only at its end, and appends
    // go on after an import.
    let appended = TopicName::parse("appended").unwrap();
    log.put_topic(&appended, TopicConfig::with_partitions(1))
        .await
        .unwrap();
    log.append(&appended, vec![event("p0", None)])
        .await
        .unwrap();
    assert!(matches!(
        log.import_partition(&appended, 0, 0, &[json("y")]).await,
        Err(LogError::TopicConflict { .. })
    ));
    log.import_partition(&appended, 0, 1, &[json("z")])
        .await
        .unwrap();
    let receipts = log
        .append(&appended, vec![event("after", None)])
        .await
        .unwrap();
    assert_eq!(receipts[0].offset, 2);
}
