//! Property test: the embedded log behaves like a simple in-memory model through random
//! sequences of appends (keyed, keyless, retried), reads, clock moves, retention and restarts.

use std::time::Duration;

use proptest::prelude::*;
use proteus_log::partitioner::partition_for_key;
use proteus_log::port::{EventAppender, EventReader, Log, TopicAdmin};
use proteus_log::{LogError, ReadFrom, ReadLimits, TopicConfig, TopicName};
use proteus_log_conformance::{Harness, event};

use crate::support::TempLog;

const PARTITIONS: u32 = 3;
const RETENTION_MS: i64 = 300_000;
const DEDUP_WINDOW_MS: i64 = 120_000;

#[derive(Debug, Clone)]
enum Op {
    /// Events as (key, id): a repeated id is a retry.
    Append(Vec<(Option<u8>, u16)>),
    Read {
        partition: u32,
        from: u64,
    },
    ReadFromTime {
        partition: u32,
        back_ms: u32,
    },
    Advance {
        ms: u32,
    },
    Retention,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop::collection::vec((prop::option::of(0u8..6), 0u16..80), 1..12).prop_map(Op::Append),
        3 => (0..PARTITIONS, 0u64..60).prop_map(|(partition, from)| Op::Read { partition, from }),
        1 => (0..PARTITIONS, 0u32..200_000).prop_map(|(partition, back_ms)| Op::ReadFromTime { partition, back_ms }),
        2 => (0u32..150_000).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Retention),
        1 => Just(Op::Restart),
    ]
}

#[derive(Clone, Debug)]
struct Stored {
    offset: u64,
    id: String,
    time_ms: i64,
}

#[derive(Default)]
struct Model {
    partitions: Vec<Vec<Stored>>,
    next_offset: Vec<u64>,
    /// (id, time, partition, offset) in append order.
    dedup: Vec<(String, i64, u32, u64)>,
    next_keyless: u32,
}

impl Model {
    fn new() -> Self {
        Model {
            partitions: vec![Vec::new(); PARTITIONS as usize],
            next_offset: vec![0; PARTITIONS as usize],
            ..Model::default()
        }
    }

    /// What the log must answer to an append at `now_ms`.
    fn append(&mut self, events: &[(Option<u8>, u16)], now_ms: i64) -> Vec<(u32, u64, bool)> {
        self.dedup
            .retain(|(_, time, _, _)| *time >= now_ms - DEDUP_WINDOW_MS);
        let keyless = self.next_keyless;
        let mut used_keyless = false;
        let mut receipts = Vec::new();
        for (key, id) in events {
            let id = format!("e{id}");
            if let Some((_, _, p, o)) = self.dedup.iter().find(|(seen, ..)| *seen == id) {
                receipts.push((*p, *o, true));
                continue;
            }
            let partition = match key {
                Some(k) => partition_for_key(&format!("k{k}"), PARTITIONS),
                None => {
                    used_keyless = true;
                    keyless
                }
            };
            let offset = self.next_offset[partition as usize];
            self.next_offset[partition as usize] += 1;
            self.partitions[partition as usize].push(Stored {
                offset,
                id: id.clone(),
                time_ms: now_ms,
            });
            self.dedup.push((id, now_ms, partition, offset));
            receipts.push((partition, offset, false));
        }
        if used_keyless {
            self.next_keyless = (keyless + 1) % PARTITIONS;
        }
        receipts
    }
}

fn topic() -> TopicName {
    TopicName::parse("model").unwrap()
}

fn id_of(json: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(json).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn run(ops: Vec<Op>) {
    let harness = TempLog::new();
    let mut log = harness.open().await;
    let config = TopicConfig {
        partitions: PARTITIONS,
        retention_ms: Some(RETENTION_MS as u64),
        segment_bytes: 1024,
        dedup_window_ms: DEDUP_WINDOW_MS as u64,
        ..TopicConfig::default()
    };
    log.put_topic(&topic(), config).await.unwrap();
    let mut model = Model::new();
    let now = |h: &TempLog| h.now_ms.load(std::sync::atomic::Ordering::SeqCst);
    for op in ops {
        match op {
            Op::Append(events) => {
                let expected = model.append(&events, now(&harness));
                let batch = events
                    .iter()
                    .map(|(key, id)| {
                        event(&format!("e{id}"), key.map(|k| format!("k{k}")).as_deref())
                    })
                    .collect();
                let receipts = log.append(&topic(), batch).await.unwrap();
                let got: Vec<_> = receipts
                    .iter()
                    .map(|r| (r.partition, r.offset, r.duplicate))
                    .collect();
                assert_eq!(got, expected, "append of {events:?}");
            }
            Op::Read { partition, from } => {
                let stored = &model.partitions[partition as usize];
                let end = model.next_offset[partition as usize];
                let result = log
                    .read(
                        &topic(),
                        partition,
                        ReadFrom::Offset(from),
                        ReadLimits::default(),
                    )
                    .await;
                if from > end {
                    assert!(
                        matches!(result, Err(LogError::OffsetOutOfRange { .. })),
                        "read past the end"
                    );
                    continue;
                }
                let batch = result.unwrap();
                let got: Vec<(u64, String)> = batch
                    .events
                    .iter()
                    .map(|e| (e.offset, id_of(&e.json)))
                    .collect();
                let expected: Vec<(u64, String)> = stored
                    .iter()
                    .filter(|s| s.offset >= from)
                    .map(|s| (s.offset, s.id.clone()))
                    .collect();
                assert_eq!(got, expected, "read of partition {partition} from {from}");
                assert_eq!(batch.end_offset, end);
            }
            Op::ReadFromTime { partition, back_ms } => {
                let since = now(&harness) - i64::from(back_ms);
                let batch = log
                    .read(
                        &topic(),
                        partition,
                        ReadFrom::TimeMs(since),
                        ReadLimits::default(),
                    )
                    .await
                    .unwrap();
                let expected = model.partitions[partition as usize]
                    .iter()
                    .find(|s| s.time_ms >= since)
                    .map(|s| s.offset);
                assert_eq!(
                    batch.events.first().map(|e| e.offset),
                    expected,
                    "read of partition {partition} since {since}"
                );
            }
            Op::Advance { ms } => {
                harness
                    .advance_clock(Duration::from_millis(u64::from(ms)))
                    .await
            }
            Op::Retention => {
                harness.apply_retention(&log).await;
                let cutoff = now(&harness) - RETENTION_MS;
                let described = log.describe_topic(&topic()).await.unwrap();
                for (p, partition) in described.partitions.iter().enumerate() {
                    let stored = &mut model.partitions[p];
                    let previous_first = stored.first().map_or(model.next_offset[p], |s| s.offset);
                    assert!(
                        partition.first_offset >= previous_first,
                        "retention never brings events back"
                    );
                    for removed in stored.iter().filter(|s| s.offset < partition.first_offset) {
                        assert!(
                            removed.time_ms < cutoff,
                            "retention removed {removed:?}, newer than the cutoff {cutoff}"
                        );
                    }
                    stored.retain(|s| s.offset >= partition.first_offset);
                    assert_eq!(partition.next_offset, model.next_offset[p]);
                }
            }
            Op::Restart => {
                log.shutdown().await.unwrap();
                drop(log);
                log = harness.open().await;
                model.next_keyless = 0;
                let described = log.describe_topic(&topic()).await.unwrap();
                for (p, partition) in described.partitions.iter().enumerate() {
                    assert_eq!(
                        partition.next_offset, model.next_offset[p],
                        "partition {p} after restart"
                    );
                    let first = model.partitions[p]
                        .first()
                        .map_or(model.next_offset[p], |s| s.offset);
                    assert_eq!(partition.first_offset, first, "partition {p} after restart");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(40),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_log_matches_its_model(ops in prop::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(run(ops));
    }
}
