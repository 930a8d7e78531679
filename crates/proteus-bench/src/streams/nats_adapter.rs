//! `--nats-adapter`: Proteus's event store on NATS JetStream (`proteus-eventstore-nats`) used
//! in-process, as a Rust program embedding it would: the same appends through
//! `EventStore::append` on one `NatsEventStore` shared by every writer (one NATS connection, as
//! `proteus serve` has), with no HTTP hop and no JSON body. Beside `--nats` in the same run it
//! tells what the adapter itself costs from what the server's HTTP API adds. Its streams have
//! a prefix of the run's own and are deleted at the end.

use proteus_eventstore::{EventStore, ExpectedVersion, ProposedEvent, StreamName};
use proteus_eventstore_nats::{NatsEventStore, NatsEventStoreConfig};

use super::*;
use crate::targets::nats::{connect_for, delete_stream};

/// A writer sharing the store: what a task of an embedding program appending would be.
struct AdapterWriter {
    store: NatsEventStore,
    run: String,
    data: Bytes,
    per_append: usize,
    /// Each owned stream's last version, as the writer's appends left it.
    versions: Vec<Option<u64>>,
}

fn events(count: usize, data: &Bytes) -> Vec<ProposedEvent> {
    (0..count)
        .map(|_| {
            let id = uuid::Uuid::now_v7().hyphenated().to_string();
            ProposedEvent::new(id, "BenchEvent", data.clone())
        })
        .collect()
}

fn stream_name(text: &str) -> Result<StreamName, String> {
    StreamName::parse(text).map_err(|e| format!("bench stream name {text:?}: {e}"))
}

async fn append(
    store: &NatsEventStore,
    stream: &StreamName,
    version: Option<u64>,
    events: Vec<ProposedEvent>,
) -> Result<u64, String> {
    let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
    let outcome = store
        .append(stream, expected, events)
        .await
        .map_err(|e| format!("an append to {stream} through the adapter failed: {e}"))?;
    Ok(outcome.last_version)
}

impl Writer for AdapterWriter {
    async fn append(&mut self, stream: usize, slot: usize) -> Result<(), String> {
        let name = stream_name(&format!("bench{}-{stream}", self.run))?;
        let events = events(self.per_append, &self.data);
        self.versions[slot] = Some(append(&self.store, &name, self.versions[slot], events).await?);
        Ok(())
    }
}

pub async fn measure(url: &str, run: &str, args: &StreamsArgs) -> Result<SystemReport, String> {
    let defaults = NatsEventStoreConfig::new(url);
    let config = NatsEventStoreConfig {
        stream_prefix: format!("PROTEUS_BENCH_ADAPTER_{run}"),
        subject_prefix: format!("proteus-bench-adapter-{run}"),
        replicas: args.nats_replicas,
        id_cache_events_max: args
            .nats_id_cache_events_max
            .unwrap_or(defaults.id_cache_events_max),
        ..defaults
    };
    let streams = [config.events_stream(), config.snapshots_stream()];
    let store = NatsEventStore::open(config).await.map_err(|e| {
        format!("--nats-adapter: opening Proteus's NATS event store at {url} failed: {e}")
    })?;
    let measured = measure_on(&store, run, args).await;
    let closed = store.close().await;
    let jetstream = async_nats::jetstream::new(connect_for(url, "--nats-adapter").await?);
    for stream in &streams {
        delete_stream(&jetstream, stream).await?;
    }
    let report = measured?;
    closed.map_err(|e| format!("closing the adapter's store failed: {e}"))?;
    Ok(report)
}

async fn measure_on(
    store: &NatsEventStore,
    run: &str,
    args: &StreamsArgs,
) -> Result<SystemReport, String> {
    let data = Bytes::from(event_data(args.event_bytes));
    let per_append = args.events_per_append;
    let appended = append_phase(args, |owned| {
        let (store, data, run) = (store.clone(), data.clone(), run.to_owned());
        async move {
            Ok(AdapterWriter {
                store,
                run,
                data,
                per_append,
                versions: vec![None; owned],
            })
        }
    })
    .await?;
    let events_appended = appended.appends * args.events_per_append as u64;

    // The aggregate: written in appends of at most 1,000, then loaded whole repeatedly.
    let stream = stream_name(&format!("bench{run}-aggregate"))?;
    let (mut version, mut written) = (None, 0);
    while written < args.aggregate_events {
        let count = (args.aggregate_events - written).min(1_000);
        version = Some(append(store, &stream, version, events(count, &data)).await?);
        written += count;
    }
    let mut reads = latency_histogram();
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < deadline {
        let sent = Instant::now();
        let aggregate = store
            .read_aggregate(&stream, args.aggregate_events)
            .await
            .map_err(|e| format!("an aggregate read through the adapter failed: {e}"))?;
        reads.saturating_record((sent.elapsed().as_micros() as u64).max(1));
        if aggregate.events.len() != args.aggregate_events {
            return Err(format!(
                "an aggregate read returned {} events, not {}",
                aggregate.events.len(),
                args.aggregate_events
            ));
        }
    }
    Ok(SystemReport::new(
        "proteus-nats-adapter",
        events_appended,
        appended,
        &reads,
    ))
}
