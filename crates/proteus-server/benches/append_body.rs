//! What parsing an append body costs the server per event, for the two append APIs:
//!
//! - `/v1/streams/{stream}` (event sourcing), the body shaped as `proteus bench streams` sends
//!   it: `[{"id", "type", "data"}, …]`, 100 events, data a JSON object of about 100 B or 1 KiB;
//! - `/v1/topics/{topic}/events` as a CloudEvents batch (`application/cloudevents-batch+json`)
//!   of 100 events with the usual attributes and the same data.
//!
//! The stream body's events are also checked as the server checks them before an append
//! (`proteus_check`: ids, types and sizes within their limits, no id twice).
//!
//! Each against two references in the same run:
//!
//! - `serde_json_value`: the body parsed into a `serde_json::Value` tree, what a server that
//!   does not borrow from the body does (and what Proteus did before 2026-11-26);
//! - `serde_json_check_only`: the body only checked to be JSON (`IgnoredAny`), the least any
//!   server taking JSON must spend, building nothing.
//!
//! Results in `docs/benchmarks.md`, "Parsing append bodies"; "Where this target stands"
//! compares them with what the NATS event store's append target leaves the server: about
//! 0.2 µs an event at 100 B.
//!
//! `cargo bench -p proteus-server --bench append_body`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use proteus_eventstore::ValidatedAppend;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

const EVENTS_PER_APPEND: usize = 100;

fn data(data_bytes: usize) -> String {
    json!({ "payload": "x".repeat(data_bytes.saturating_sub(16)) }).to_string()
}

/// 100 events of `data_bytes` of data each, with fresh UUIDv7 ids, as the load generator
/// writes them.
fn body(data_bytes: usize) -> Bytes {
    let data = data(data_bytes);
    let events: Vec<String> = (0..EVENTS_PER_APPEND)
        .map(|_| {
            format!(
                r#"{{"id":"{}","type":"BenchEvent","data":{data}}}"#,
                uuid::Uuid::now_v7()
            )
        })
        .collect();
    Bytes::from(format!("[{}]", events.join(",")))
}

/// A CloudEvents batch of 100 events of `data_bytes` of data each.
fn cloudevents_batch(data_bytes: usize) -> Bytes {
    let data = data(data_bytes);
    let events: Vec<String> = (0..EVENTS_PER_APPEND)
        .map(|index| {
            format!(
                r#"{{"specversion":"1.0","id":"{}","source":"/bench/orders","type":"order.placed","subject":"order-{index}","time":"2026-11-29T12:00:00Z","datacontenttype":"application/json","data":{data}}}"#,
                uuid::Uuid::now_v7()
            )
        })
        .collect();
    Bytes::from(format!("[{}]", events.join(",")))
}

fn append_body(c: &mut Criterion) {
    for data_bytes in [100, 1024] {
        let body = body(data_bytes);
        let (_, events) = proteus_server::parse_append(&body).expect("the body parses");
        assert_eq!(events.len(), EVENTS_PER_APPEND);
        let mut group = c.benchmark_group(format!("append_body/{data_bytes}B"));
        group.throughput(Throughput::Elements(EVENTS_PER_APPEND as u64));
        group.bench_function("proteus_parse_append", |b| {
            b.iter(|| proteus_server::parse_append(black_box(&body)).map(|(_, e)| e.len()))
        });
        group.bench_function("proteus_check", |b| {
            b.iter_batched(
                || events.clone(),
                ValidatedAppend::of_parsed_json,
                BatchSize::SmallInput,
            )
        });
        group.bench_function("serde_json_value", |b| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(&body)).map(drop))
        });
        group.bench_function("serde_json_check_only", |b| {
            b.iter(|| serde_json::from_slice::<IgnoredAny>(black_box(&body)).map(drop))
        });
        group.finish();

        let batch = cloudevents_batch(data_bytes);
        let events = proteus_log::Event::batch_from_bytes(batch.clone()).expect("the batch parses");
        assert_eq!(events.len(), EVENTS_PER_APPEND);
        let mut group = c.benchmark_group(format!("cloudevents_batch/{data_bytes}B"));
        group.throughput(Throughput::Elements(EVENTS_PER_APPEND as u64));
        group.bench_function("proteus_batch_from_bytes", |b| {
            b.iter(|| {
                proteus_log::Event::batch_from_bytes(black_box(batch.clone())).map(|e| e.len())
            })
        });
        group.bench_function("serde_json_value", |b| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(&batch)).map(drop))
        });
        group.bench_function("serde_json_check_only", |b| {
            b.iter(|| serde_json::from_slice::<IgnoredAny>(black_box(&batch)).map(drop))
        });
        group.finish();
    }
}

criterion_group!(benches, append_body);
criterion_main!(benches);
