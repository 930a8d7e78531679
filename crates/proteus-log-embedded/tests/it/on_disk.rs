//! `partition_ends_in`: each partition's next offset read from the files of a log no process
//! has open, as a server whose log moved to NATS reads it to find events a copy left behind.

use std::io::Write;

use proteus_log::port::{EventAppender, Log, TopicAdmin};
use proteus_log::{TopicConfig, TopicName};
use proteus_log_conformance::event;
use proteus_log_embedded::partition_ends_in;

use crate::support::TempLog;

#[tokio::test]
async fn partition_ends_are_read_from_the_files_past_several_index_entries_and_a_torn_tail() {
    let harness = TempLog::new();
    let name = TopicName::parse("ends").unwrap();
    let config = TopicConfig {
        // Several segments, each with several index entries (one per 4 KiB of records).
        segment_bytes: 64 * 1024,
        ..TopicConfig::with_partitions(3)
    };
    let log = harness.open().await;
    log.put_topic(&name, config).await.unwrap();
    for batch in 0..20 {
        let events = (0..50)
            .map(|i| event(&format!("{batch}-{i}"), Some(&format!("key-{}", i % 7))))
            .collect();
        log.append(&name, events).await.unwrap();
    }
    let described = log.describe_topic(&name).await.unwrap();
    log.shutdown().await.unwrap();
    drop(log);
    let expected: Vec<u64> = described.partitions.iter().map(|p| p.next_offset).collect();
    assert_eq!(expected.iter().sum::<u64>(), 1_000);
    let root = harness.dir.path();
    assert_eq!(partition_ends_in(root, &name), Some(expected.clone()));

    // Half a record at the end of partition 0 (a write never acknowledged) is not counted.
    let partition_dir = root.join("log/topics/ends/0");
    let last_segment = std::fs::read_dir(&partition_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .max()
        .unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&last_segment)
        .unwrap()
        .write_all(&[0x42; 30])
        .unwrap();
    assert_eq!(partition_ends_in(root, &name), Some(expected));

    assert_eq!(
        partition_ends_in(root, &TopicName::parse("absent").unwrap()),
        None
    );
}
