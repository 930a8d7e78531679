//! The suite every log a migration writes to runs (`proteus migrate-topics` into it keeps
//! offsets and bytes, and times where the log can): the embedded log and the log on NATS.
//! Importing is not part of [`Log`] (a log served to clients never needs it), so a harness
//! whose log implements [`PartitionImport`] invokes [`log_import_conformance_tests!`]:
//!
//! ```text
//! proteus_log_conformance::log_import_conformance_tests!(MyHarness::new());
//! ```
//!
//! [`log_import_conformance_tests!`]: crate::log_import_conformance_tests

use bytes::Bytes;
use proteus_log::import::{IMPORT_EVENTS_MAX, PartitionImport};
use proteus_log::port::{EventAppender, EventReader, Log, TopicAdmin};
use proteus_log::{LogError, PartitionId, ReadFrom, ReadLimits, StoredEvent, TopicConfig};

use crate::{Harness, event, topic};

/// Generates one `#[tokio::test]` per import test, each with `$harness` freshly built.
#[macro_export]
macro_rules! log_import_conformance_tests {
    ($harness:expr) => {
        $crate::log_import_conformance_tests!(@tests $harness;
            imports_keep_offsets_and_bytes_and_continue_only_where_a_partition_ends,
            invalid_imports_are_refused_whole,
            imports_survive_a_restart_and_appends_follow_them,
            imported_events_keep_their_times_and_dedup_where_the_log_keeps_times,
        );
    };
    (@tests $harness:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                $crate::import::$test($harness).await;
            }
        )*
    };
}

/// An event as another log stored it: CloudEvent `id`, at `offset` of `partition`, appended at
/// `append_time_ms`.
pub fn stored(partition: PartitionId, offset: u64, append_time_ms: i64, id: &str) -> StoredEvent {
    StoredEvent {
        partition,
        offset,
        append_time_ms,
        json: Bytes::copy_from_slice(event(id, None).json()),
    }
}

/// Events `ids` at consecutive offsets from `first`, a second apart from a time long ago.
fn run(partition: PartitionId, first: u64, ids: &[&str]) -> Vec<StoredEvent> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let offset = first + i as u64;
            stored(
                partition,
                offset,
                1_600_000_000_000 + offset as i64 * 1_000,
                id,
            )
        })
        .collect()
}

async fn everything<L: Log>(
    log: &L,
    name: &proteus_log::TopicName,
    partition: PartitionId,
) -> Vec<StoredEvent> {
    let limits = ReadLimits {
        events_max: 1_000,
        bytes_max: 1 << 20,
    };
    log.read(name, partition, ReadFrom::Offset(0), limits)
        .await
        .unwrap()
        .events
}

fn offsets_and_bytes(events: &[StoredEvent]) -> Vec<(u64, Bytes)> {
    events.iter().map(|e| (e.offset, e.json.clone())).collect()
}

pub async fn imports_keep_offsets_and_bytes_and_continue_only_where_a_partition_ends<H>(
    mut harness: H,
) where
    H: Harness,
    H::Log: PartitionImport,
{
    let log = harness.open().await;
    let name = topic("imported");
    log.put_topic(&name, TopicConfig::with_partitions(2))
        .await
        .unwrap();

    // The source's partition 1 starts at offset 5 (retention removed its first five).
    let first = run(1, 5, &["a", "b"]);
    log.import_partition(&name, 1, &first).await.unwrap();
    assert_eq!(log.partition_offsets(&name, 1).await.unwrap(), (5, 7));
    let second = run(1, 7, &["c"]);
    log.import_partition(&name, 1, &second).await.unwrap();
    let source = [first, second].concat();
    assert_eq!(
        offsets_and_bytes(&everything(&log, &name, 1).await),
        offsets_and_bytes(&source),
        "byte for byte, at the source's offsets"
    );
    assert_eq!(log.partition_offsets(&name, 0).await.unwrap(), (0, 0));

    // Not where the partition ends: refused, nothing written.
    for at in [6, 9] {
        match log.import_partition(&name, 1, &run(1, at, &["x"])).await {
            Err(LogError::InvalidImport { reason, .. }) => {
                assert!(reason.contains("next offset is 8"), "{reason}")
            }
            other => panic!("an import at {at} after offset 7: {other:?}"),
        }
    }
    assert_eq!(log.partition_offsets(&name, 1).await.unwrap(), (5, 8));

    // A partition written by appends is continued by an import only at its end, and appends go
    // on after an import.
    let appended = topic("appended");
    log.put_topic(&appended, TopicConfig::with_partitions(1))
        .await
        .unwrap();
    let receipt = log
        .append(&appended, vec![event("p0", None)])
        .await
        .unwrap()[0];
    assert_eq!(receipt.offset, 0);
    let now_ms = everything(&log, &appended, 0).await[0].append_time_ms;
    assert!(matches!(
        log.import_partition(&appended, 0, &[stored(0, 0, now_ms, "y")])
            .await,
        Err(LogError::InvalidImport { .. })
    ));
    log.import_partition(&appended, 0, &[stored(0, 1, now_ms, "z")])
        .await
        .unwrap();
    let after = log
        .append(&appended, vec![event("after", None)])
        .await
        .unwrap();
    assert_eq!(after[0].offset, 2);
    assert_eq!(log.partition_offsets(&appended, 0).await.unwrap(), (0, 3));
}

pub async fn invalid_imports_are_refused_whole<H>(mut harness: H)
where
    H: Harness,
    H::Log: PartitionImport,
{
    let log = harness.open().await;
    let name = topic("refusals");
    log.put_topic(&name, TopicConfig::with_partitions(2))
        .await
        .unwrap();
    log.import_partition(&name, 0, &run(0, 0, &["kept"]))
        .await
        .unwrap();

    let mut gapped = run(0, 1, &["g1", "g2"]);
    gapped[1].offset = 3;
    let mut backwards = run(0, 1, &["b1", "b2"]);
    backwards[1].append_time_ms = backwards[0].append_time_ms - 1;
    let too_many: Vec<StoredEvent> = (0..=IMPORT_EVENTS_MAX as u64)
        .map(|i| stored(0, 1 + i, 1_600_000_100_000, "many"))
        .collect();
    let refusals: [(&str, Vec<StoredEvent>, &str); 5] = [
        ("no events", Vec::new(), "at least one event"),
        ("a gap", gapped, "offsets follow each other"),
        (
            "another partition's events",
            run(1, 1, &["p1"]),
            "partition 1",
        ),
        ("times going back", backwards, "never decrease"),
        ("too many events", too_many, "at most"),
    ];
    for (what, events, says) in refusals {
        match log.import_partition(&name, 0, &events).await {
            Err(LogError::InvalidImport { reason, .. }) => {
                assert!(reason.contains(says), "{what}: {reason}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    let mut not_an_event = run(0, 1, &["n"]);
    not_an_event[0].json = Bytes::from_static(b"{\"not\":\"a cloudevent\"}");
    match log.import_partition(&name, 0, &not_an_event).await {
        Err(LogError::InvalidImport { reason, .. }) => {
            assert!(reason.contains("offset 1 is not a CloudEvent"), "{reason}")
        }
        other => panic!("an import of something else than a CloudEvent: {other:?}"),
    }

    assert!(matches!(
        log.import_partition(&name, 2, &run(2, 0, &["nowhere"]))
            .await,
        Err(LogError::PartitionNotFound { .. })
    ));
    assert!(matches!(
        log.import_partition(&topic("missing"), 0, &run(0, 0, &["m"]))
            .await,
        Err(LogError::TopicNotFound { .. })
    ));
    assert_eq!(
        offsets_and_bytes(&everything(&log, &name, 0).await),
        offsets_and_bytes(&run(0, 0, &["kept"])),
        "nothing of a refused import is written"
    );
}

pub async fn imports_survive_a_restart_and_appends_follow_them<H>(mut harness: H)
where
    H: Harness,
    H::Log: PartitionImport,
{
    let name = topic("reopened");
    let imported = run(0, 40, &["r40", "r41", "r42"]);
    {
        let log = harness.open().await;
        log.put_topic(&name, TopicConfig::with_partitions(1))
            .await
            .unwrap();
        log.import_partition(&name, 0, &imported).await.unwrap();
        log.shutdown().await.unwrap();
    }
    let log = harness.open().await;
    assert_eq!(log.partition_offsets(&name, 0).await.unwrap(), (40, 43));
    assert_eq!(
        offsets_and_bytes(&everything(&log, &name, 0).await),
        offsets_and_bytes(&imported)
    );
    let receipt = log.append(&name, vec![event("next", None)]).await.unwrap()[0];
    assert_eq!(
        receipt.offset, 43,
        "appends continue after the imported offsets"
    );
}

pub async fn imported_events_keep_their_times_and_dedup_where_the_log_keeps_times<H>(mut harness: H)
where
    H: Harness,
    H::Log: PartitionImport,
{
    let log = harness.open().await;
    let name = topic("timed");
    log.put_topic(&name, TopicConfig::with_partitions(1))
        .await
        .unwrap();
    // The log's own clock, as an append stamps it.
    let clock = topic("clock");
    log.put_topic(&clock, TopicConfig::with_partitions(1))
        .await
        .unwrap();
    log.append(&clock, vec![event("tick", None)]).await.unwrap();
    let now_ms = everything(&log, &clock, 0).await[0].append_time_ms;

    let old = run(0, 0, &["old-0", "old-1"]);
    let recent = vec![stored(0, 2, now_ms - 1_000, "recent")];
    log.import_partition(&name, 0, &old).await.unwrap();
    log.import_partition(&name, 0, &recent).await.unwrap();
    let read = everything(&log, &name, 0).await;
    let retry = log
        .append(&name, vec![event("recent", None)])
        .await
        .unwrap()[0];
    if !log.keeps_append_times() {
        // JetStream stamps its own times and is sent no dedup id: the retry is a new event.
        assert!(read.iter().all(|e| e.append_time_ms >= now_ms - 60_000));
        assert!(!retry.duplicate);
        return;
    }
    let times: Vec<i64> = read.iter().map(|e| e.append_time_ms).collect();
    let source_times: Vec<i64> = [old, recent]
        .concat()
        .iter()
        .map(|e| e.append_time_ms)
        .collect();
    assert_eq!(times, source_times, "append times as the source had them");
    // A read by time finds the imported times.
    let limits = ReadLimits {
        events_max: 10,
        bytes_max: 1 << 20,
    };
    let from_second = log
        .read(&name, 0, ReadFrom::TimeMs(source_times[1]), limits)
        .await
        .unwrap();
    assert_eq!(from_second.events[0].offset, 1);
    // Within the dedup window of its recorded time, a client's retry of the imported event is
    // recognised (as it would have been by the source); an event imported long ago is not.
    assert!(retry.duplicate, "{retry:?}");
    assert_eq!(retry.offset, 2);
    let old_retry = log.append(&name, vec![event("old-0", None)]).await.unwrap()[0];
    assert!(!old_retry.duplicate);
    // An import must not go back in time behind the partition's last event.
    match log
        .import_partition(&name, 0, &[stored(0, 4, now_ms - 3_600_000, "late")])
        .await
    {
        Err(LogError::InvalidImport { reason, .. }) => {
            assert!(reason.contains("never decrease"), "{reason}")
        }
        other => panic!("an import older than the partition's last event: {other:?}"),
    }
}
