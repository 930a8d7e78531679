//! Recovery from torn and corrupt segment files, as `docs/storage-format.md` documents it:
//! a torn last record is truncated; a corrupt record followed by valid data is reported with
//! its file and byte, and the partition serves what is before it and nothing after.

use std::path::{Path, PathBuf};

use proteus_log::port::{EventAppender, EventReader, Log, TopicAdmin};
use proteus_log::{LogError, ReadFrom, ReadLimits, TopicConfig, TopicName};
use proteus_log_conformance::event;

use crate::support::TempLog;

fn topic() -> TopicName {
    TopicName::parse("t").unwrap()
}

fn partition_dir(root: &Path) -> PathBuf {
    root.join("log/topics/t/0")
}

fn segment_files(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(partition_dir(root))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Byte ranges of the records in a segment file, read from their length fields.
fn record_ranges(file: &Path) -> Vec<std::ops::Range<usize>> {
    let bytes = std::fs::read(file).unwrap();
    let mut ranges = Vec::new();
    let mut at = 0;
    while at + 40 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        ranges.push(at..at + 40 + len);
        at += 40 + len;
    }
    ranges
}

/// A log with one partition holding `count` events, each appended alone (one record each).
async fn pristine(count: usize, config: TopicConfig) -> (TempLog, Vec<bytes::Bytes>) {
    let harness = TempLog::new();
    let log = harness.open().await;
    log.put_topic(&topic(), config).await.unwrap();
    for i in 0..count {
        log.append(
            &topic(),
            vec![event(&format!("event-{i}-{}", "x".repeat(i % 7)), None)],
        )
        .await
        .unwrap();
    }
    let batch = log
        .read(
            &topic(),
            0,
            ReadFrom::Offset(0),
            ReadLimits {
                events_max: 10_000,
                bytes_max: 1 << 24,
            },
        )
        .await
        .unwrap();
    log.shutdown().await.unwrap();
    (harness, batch.events.into_iter().map(|e| e.json).collect())
}

/// A copy of the pristine log, damaged by `damage`.
fn damaged_copy(pristine: &TempLog, damage: impl FnOnce(&Path)) -> TempLog {
    let copy = TempLog::new();
    copy_dir(pristine.dir.path(), copy.dir.path());
    damage(copy.dir.path());
    copy
}

async fn read_everything(log: &impl Log) -> Result<Vec<bytes::Bytes>, LogError> {
    let mut events = Vec::new();
    let mut from = 0;
    loop {
        let batch = log
            .read(&topic(), 0, ReadFrom::Offset(from), ReadLimits::default())
            .await?;
        if batch.events.is_empty() {
            return Ok(events);
        }
        from = batch.next_offset;
        events.extend(batch.events.into_iter().map(|e| e.json));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_record_is_truncated_whatever_byte_it_ends_at() {
    let (pristine, originals) = pristine(5, TopicConfig::default()).await;
    let file = segment_files(pristine.dir.path()).remove(0);
    let ranges = record_ranges(&file);
    assert_eq!(ranges.len(), 5);
    let last = ranges[4].clone();
    for cut in last.start..last.end {
        let copy = damaged_copy(&pristine, |root| {
            let file = segment_files(root).remove(0);
            std::fs::OpenOptions::new()
                .write(true)
                .open(file)
                .unwrap()
                .set_len(cut as u64)
                .unwrap();
        });
        let log = copy.open().await;
        let report = &log.recovery_reports()[0].2;
        assert_eq!(
            report.truncated_bytes,
            (cut - last.start) as u64,
            "cut at {cut}"
        );
        assert_eq!(report.corruption, None, "cut at {cut}");
        let events = read_everything(&log).await.unwrap();
        assert_eq!(
            events,
            originals[..4],
            "cut at {cut}: the first four records are intact"
        );
        let receipt = log
            .append(&topic(), vec![event("after", None)])
            .await
            .unwrap()[0];
        assert_eq!(
            receipt.offset, 4,
            "cut at {cut}: appends continue where the valid log ends"
        );
        log.shutdown().await.unwrap();
        drop(log);
        let reopened = copy.open().await;
        assert_eq!(read_everything(&reopened).await.unwrap().len(), 5);
        assert_eq!(reopened.recovery_reports()[0].2.truncated_bytes, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_the_last_record_is_truncated() {
    let (pristine, originals) = pristine(5, TopicConfig::default()).await;
    for garbage in [
        vec![0u8; 4096],
        vec![0xAB; 100],
        b"{\"partial\": tr".to_vec(),
    ] {
        let copy = damaged_copy(&pristine, |root| {
            use std::io::Write;
            let file = segment_files(root).remove(0);
            std::fs::OpenOptions::new()
                .append(true)
                .open(file)
                .unwrap()
                .write_all(&garbage)
                .unwrap();
        });
        let log = copy.open().await;
        assert_eq!(
            log.recovery_reports()[0].2.truncated_bytes,
            garbage.len() as u64
        );
        assert_eq!(read_everything(&log).await.unwrap(), originals);
    }
}

fn flip(file: &Path, at: usize) {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[at] ^= 0xFF;
    std::fs::write(file, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_middle_record_is_reported_never_skipped() {
    let (pristine, originals) = pristine(10, TopicConfig::default()).await;
    let file = segment_files(pristine.dir.path()).remove(0);
    let file_len = std::fs::metadata(&file).unwrap().len();
    let ranges = record_ranges(&file);
    let middle = ranges[5].clone();
    for at in middle.clone() {
        let copy = damaged_copy(&pristine, |root| flip(&segment_files(root)[0], at));
        let log = copy.open().await;
        let report = &log.recovery_reports()[0].2;
        assert_eq!(
            report.truncated_bytes, 0,
            "byte {at}: acknowledged data is never truncated"
        );
        assert!(
            report.corruption.is_some(),
            "byte {at}: the corruption is found at start-up"
        );
        let damaged_file = segment_files(copy.dir.path()).remove(0);
        assert_eq!(
            std::fs::metadata(&damaged_file).unwrap().len(),
            file_len,
            "byte {at}: the file is left as it was"
        );

        let before = log
            .read(&topic(), 0, ReadFrom::Offset(0), ReadLimits::default())
            .await
            .unwrap();
        assert_eq!(
            before
                .events
                .iter()
                .map(|e| e.json.clone())
                .collect::<Vec<_>>(),
            originals[..5]
        );
        for from in [5, 7] {
            let error = log
                .read(&topic(), 0, ReadFrom::Offset(from), ReadLimits::default())
                .await
                .unwrap_err();
            match &error {
                LogError::Corrupt {
                    offset,
                    file,
                    position,
                    ..
                } => {
                    assert_eq!(*offset, 5, "byte {at}");
                    assert_eq!(*position, middle.start as u64, "byte {at}");
                    assert!(file.ends_with("00000000000000000000.log"), "{file}");
                }
                other => panic!("byte {at}: expected a corruption error, got {other}"),
            }
        }
        let refused = log
            .append(&topic(), vec![event("new", None)])
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, LogError::Unavailable { reason } if reason.contains("corrupt")),
            "{refused}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_in_an_old_segment_is_found_when_read() {
    let config = TopicConfig {
        segment_bytes: 1024,
        ..TopicConfig::default()
    };
    let (pristine, originals) = pristine(40, config).await;
    let files = segment_files(pristine.dir.path());
    assert!(files.len() >= 4, "small segments roll: {files:?}");
    let second = &files[1];
    let base: u64 = second
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let ranges = record_ranges(second);
    let target = ranges[ranges.len() / 2].clone();
    let bad_offset = base + (ranges.len() / 2) as u64;
    let copy = damaged_copy(&pristine, |root| {
        flip(&segment_files(root)[1], target.start + 45)
    });
    let log = copy.open().await;
    assert_eq!(
        log.recovery_reports()[0].2.corruption,
        None,
        "start-up reads only the last segment's tail"
    );
    let mut from = 0;
    let mut good = Vec::new();
    let error = loop {
        match log
            .read(
                &topic(),
                0,
                ReadFrom::Offset(from),
                ReadLimits {
                    events_max: 3,
                    bytes_max: 1 << 20,
                },
            )
            .await
        {
            Ok(batch) => {
                assert!(
                    !batch.events.is_empty(),
                    "the read stops at the corruption, not after it"
                );
                from = batch.next_offset;
                good.extend(batch.events.into_iter().map(|e| e.json));
            }
            Err(error) => break error,
        }
    };
    assert_eq!(good, originals[..bad_offset as usize]);
    assert!(
        matches!(error, LogError::Corrupt { offset, position, .. } if offset == bad_offset && position == target.start as u64)
    );
    assert!(
        error
            .to_string()
            .contains(second.file_name().unwrap().to_str().unwrap()),
        "{error}"
    );
    let after = log
        .read(
            &topic(),
            0,
            ReadFrom::Offset(bad_offset + 3),
            ReadLimits::default(),
        )
        .await;
    assert!(
        matches!(after, Err(LogError::Corrupt { .. })),
        "nothing past the corruption is served once found"
    );
    assert!(
        log.append(&topic(), vec![event("new", None)])
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_or_damaged_index_files_are_rebuilt_from_the_log() {
    let config = TopicConfig {
        segment_bytes: 1024,
        ..TopicConfig::default()
    };
    let (pristine, originals) = pristine(40, config).await;
    let copy = damaged_copy(&pristine, |root| {
        for entry in std::fs::read_dir(partition_dir(root)).unwrap() {
            let path = entry.unwrap().path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("index") if path.to_str().unwrap().contains("00000000000000000000") => {
                    std::fs::remove_file(path).unwrap()
                }
                Some("index") => std::fs::write(path, [0xFFu8; 24]).unwrap(),
                Some("timeindex") => std::fs::remove_file(path).unwrap(),
                _ => {}
            }
        }
    });
    let log = copy.open().await;
    assert_eq!(read_everything(&log).await.unwrap(), originals);
    let middle = log
        .read(&topic(), 0, ReadFrom::Offset(23), ReadLimits::default())
        .await
        .unwrap();
    assert_eq!(middle.events[0].json, originals[23]);
}
