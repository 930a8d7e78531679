//! `proteus migrate`: copies an event store to PostgreSQL with positions, versions, ids and
//! times kept, verifies it (event count, last position and a checksum of every event on both
//! sides), and with `--follow` keeps copying new events until interrupted, for a cut-over
//! without downtime.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use proteus_client::{Client, FeedQuery};
use proteus_eventstore::{
    Direction, EventStore, EventStoreError, FeedPage, ReadFilter, RecordedEvent, StreamName,
};
use proteus_eventstore_embedded::{EmbeddedConfig, EmbeddedEventStore};
use proteus_eventstore_postgres::{
    IMPORT_EVENTS_MAX, PostgresEventStore, PostgresEventStoreConfig,
};
use xxhash_rust::xxh3::Xxh3;

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// The event store to copy: `embedded:DIR` (a data directory, whose server must be
    /// stopped) or the URL of a running Proteus server (`http://HOST:PORT`), which `--follow`
    /// needs.
    #[arg(long, value_name = "SOURCE")]
    pub from: String,
    /// Where to copy it: a PostgreSQL URL (`postgres://USER@HOST:PORT/DB`).
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// The PostgreSQL schema of the copy, created if missing.
    #[arg(long, default_value = "proteus_eventstore", value_name = "SCHEMA")]
    pub to_schema: String,
    /// Events copied per transaction.
    #[arg(long, default_value_t = 1_000)]
    pub batch_events: usize,
    /// After copying and verifying, keep copying new events until Ctrl-C.
    #[arg(long)]
    pub follow: bool,
}

/// Where events are read from.
enum Source {
    Store(Arc<dyn EventStore>),
    Server(Client),
}

impl Source {
    async fn open(from: &str) -> Result<Source, String> {
        if let Some(dir) = from.strip_prefix("embedded:") {
            let store = EmbeddedEventStore::open(std::path::Path::new(dir), EmbeddedConfig::default())
                .map_err(|e| {
                    format!(
                        "cannot open the embedded event store in {dir}: {e}; stop the server using it, or give its URL with --from http://HOST:PORT"
                    )
                })?;
            return Ok(Source::Store(Arc::new(store)));
        }
        if from.starts_with("http://") || from.starts_with("https://") {
            return Client::new(from)
                .map(Source::Server)
                .map_err(|e| format!("--from {from}: {e}"));
        }
        Err(format!(
            "--from must be embedded:DIR or http://HOST:PORT, got {from:?}"
        ))
    }

    async fn page(&self, from: u64, limit: usize, wait_ms: u64) -> Result<FeedPage, String> {
        match self {
            Source::Store(store) => {
                if wait_ms > 0 {
                    let _ = store
                        .wait_for_position(from.saturating_sub(1), Duration::from_millis(wait_ms))
                        .await;
                }
                store
                    .read_all(from, Direction::Forward, limit, &ReadFilter::default())
                    .await
                    .map_err(|e| format!("reading the source: {e}"))
            }
            Source::Server(client) => client
                .read_feed(
                    "$all",
                    &FeedQuery {
                        from,
                        limit,
                        wait_ms,
                        ..FeedQuery::default()
                    },
                )
                .await
                .map_err(|e| format!("reading the source: {e}")),
        }
    }

    /// Whether `stream` is deleted in the source.
    async fn deleted(&self, stream: &StreamName) -> Result<bool, String> {
        match self {
            Source::Store(store) => match store.stream_info(stream).await {
                Ok(info) => Ok(info.deleted),
                Err(EventStoreError::StreamNotFound { .. }) => Ok(false),
                Err(e) => Err(format!("reading stream '{stream}' in the source: {e}")),
            },
            Source::Server(client) => match client.stream_info(stream.as_str()).await {
                Ok(info) => Ok(info.deleted),
                Err(e) if e.to_string().contains("404") => Ok(false),
                Err(e) => Err(format!("reading stream '{stream}' in the source: {e}")),
            },
        }
    }
}

/// What verification compares: the events, their last position and a checksum of them all.
#[derive(Debug, PartialEq, Eq)]
struct Fingerprint {
    events: u64,
    last_position: u64,
    checksum: u64,
}

fn absorb(hash: &mut Xxh3, event: &RecordedEvent) {
    for part in [
        &event.position.to_le_bytes()[..],
        event.stream.as_str().as_bytes(),
        &event.version.to_le_bytes(),
        event.id.as_bytes(),
        event.event_type.as_bytes(),
        &event.schema_version.unwrap_or(u32::MAX).to_le_bytes(),
        &event.data,
        event.metadata.as_deref().unwrap_or(b"\xff"),
        &event.recorded_ms.to_le_bytes(),
    ] {
        hash.update(&(part.len() as u64).to_le_bytes());
        hash.update(part);
    }
}

async fn fingerprint_source(
    source: &Source,
    up_to: u64,
    batch: usize,
) -> Result<Fingerprint, String> {
    let mut hash = Xxh3::new();
    let (mut events, mut last_position, mut from) = (0, 0, 0);
    loop {
        let page = source.page(from, batch, 0).await?;
        for event in page.events.iter().filter(|e| e.position <= up_to) {
            absorb(&mut hash, event);
            events += 1;
            last_position = event.position;
        }
        if page.is_end || page.events.last().is_none_or(|e| e.position >= up_to) {
            break;
        }
        from = page.next_position;
    }
    Ok(Fingerprint {
        events,
        last_position,
        checksum: hash.digest(),
    })
}

async fn fingerprint_target(
    target: &PostgresEventStore,
    up_to: u64,
    batch: usize,
) -> Result<Fingerprint, String> {
    let source = Source::Store(Arc::new(target.clone()));
    fingerprint_source(&source, up_to, batch).await
}

pub async fn run(args: MigrateArgs) -> Result<(), String> {
    if !(1..=IMPORT_EVENTS_MAX).contains(&args.batch_events) {
        return Err(format!(
            "--batch-events must be 1 to {IMPORT_EVENTS_MAX}, got {}",
            args.batch_events
        ));
    }
    let source = Source::open(&args.from).await?;
    let target = PostgresEventStore::open(PostgresEventStoreConfig::new(&args.to, &args.to_schema))
        .await
        .map_err(|e| {
            format!(
                "cannot open the PostgreSQL event store (schema {}): {e}",
                args.to_schema
            )
        })?;
    // Resuming: everything up to the target's head is already there.
    let head = target
        .read_all(u64::MAX, Direction::Backward, 1, &ReadFilter::default())
        .await
        .map_err(|e| format!("reading the target's head: {e}"))?
        .head_position;
    let mut from = head + 1;
    let mut copied = 0u64;
    let mut streams = BTreeSet::new();
    let started = std::time::Instant::now();
    let source_head = loop {
        let page = source.page(from, args.batch_events, 0).await?;
        if !page.events.is_empty() {
            target
                .import(&page.events)
                .await
                .map_err(|e| format!("writing to PostgreSQL: {e}"))?;
            copied += page.events.len() as u64;
            streams.extend(page.events.iter().map(|e| e.stream.clone()));
        }
        from = page.next_position;
        if page.is_end {
            break page.head_position;
        }
    };
    let mut deleted = 0;
    for stream in &streams {
        if source.deleted(stream).await? {
            target
                .delete_stream(stream, proteus_eventstore::ExpectedVersion::Any)
                .await
                .map_err(|e| format!("deleting stream '{stream}' in the target: {e}"))?;
            deleted += 1;
        }
    }
    println!(
        "copied {copied} events of {} streams ({deleted} deleted) in {:.1} s, up to position {source_head}",
        streams.len(),
        started.elapsed().as_secs_f64()
    );
    let expected = fingerprint_source(&source, source_head, args.batch_events).await?;
    let actual = fingerprint_target(&target, source_head, args.batch_events).await?;
    if expected != actual {
        return Err(format!(
            "verification failed: the source has {} events up to position {} (checksum {:016x}), the copy {} up to {} ({:016x}); drop the target schema and migrate again",
            expected.events,
            expected.last_position,
            expected.checksum,
            actual.events,
            actual.last_position,
            actual.checksum
        ));
    }
    println!(
        "verified: {} events up to position {}, checksum {:016x} on both sides",
        expected.events, expected.last_position, expected.checksum
    );
    if !args.follow {
        return Ok(());
    }
    println!("following new events; stop with Ctrl-C once clients use the copy");
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let page = tokio::select! {
            page = source.page(from, args.batch_events, 10_000) => page?,
            _ = &mut stop => break,
        };
        if !page.events.is_empty() {
            target
                .import(&page.events)
                .await
                .map_err(|e| format!("writing to PostgreSQL: {e}"))?;
            println!(
                "copied {} more events, up to position {}",
                page.events.len(),
                page.events.last().map_or(0, |e| e.position)
            );
        }
        from = page.next_position;
    }
    Ok(())
}
