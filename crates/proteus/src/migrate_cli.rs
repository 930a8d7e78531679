//! `proteus migrate`: copies an event store (embedded, PostgreSQL, NATS, or whatever a running
//! server serves) to PostgreSQL or to an embedded data directory with positions, versions, ids
//! and times kept, or to the event store on NATS JetStream with versions, ids and `$all` order
//! kept (JetStream assigns positions and recording times itself), with tombstones and latest
//! snapshots, verifies it (event count and a checksum of every event on both sides), and with
//! `--follow` keeps copying new events until interrupted, for a cut-over without downtime: the
//! interruption copies what is left, tombstones and snapshots included, and verifies again.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use proteus_client::{Client, ClientError, FeedQuery};
use proteus_eventstore::{
    Direction, EventStore, EventStoreError, ExpectedVersion, FeedPage, IMPORT_EVENTS_MAX,
    ProposedEvent, ReadFilter, RecordedEvent, Snapshot, StreamInfo, StreamName,
};
use proteus_eventstore_embedded::{
    EmbeddedConfig, EmbeddedEventStore, FILE_NAME as EVENT_STORE_FILE,
};
use proteus_eventstore_nats::{NatsEventStore, NatsEventStoreConfig};
use proteus_eventstore_postgres::{PostgresEventStore, PostgresEventStoreConfig};
use xxhash_rust::xxh3::Xxh3;

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    /// The event store to copy: `embedded:DIR` (a data directory, whose server must be
    /// stopped), a PostgreSQL URL (`postgres://USER@HOST:PORT/DB`, schema `--from-schema`), a
    /// NATS URL (`nats://HOST:PORT`, stream prefix `--from-prefix`), or the URL of a running
    /// Proteus server (`http://HOST:PORT`) on any backend.
    #[arg(long, value_name = "SOURCE")]
    pub from: String,
    /// The PostgreSQL schema of the source, which must exist (PostgreSQL sources).
    #[arg(long, default_value = "proteus_eventstore", value_name = "SCHEMA")]
    pub from_schema: String,
    /// The JetStream stream prefix of the source, whose streams must exist (NATS sources).
    #[arg(long, default_value = "PROTEUS_ES", value_name = "PREFIX")]
    pub from_prefix: String,
    /// Where to copy it: a PostgreSQL URL (`postgres://USER@HOST:PORT/DB`) or `embedded:DIR`
    /// (a data directory, created if missing, whose server must be stopped), positions and
    /// times kept; or a NATS URL (`nats://HOST:PORT`), the event store on JetStream, which
    /// assigns positions and recording times itself.
    #[arg(long, value_name = "TARGET")]
    pub to: String,
    /// The PostgreSQL schema of the copy, created if missing (PostgreSQL targets).
    #[arg(long, default_value = "proteus_eventstore", value_name = "SCHEMA")]
    pub to_schema: String,
    /// The JetStream stream prefix of the copy, as `serve --event-store-prefix` (NATS
    /// targets): streams `<PREFIX>_EVENTS` and `<PREFIX>_SNAPSHOTS`. The same NATS login
    /// options serve a NATS source and a NATS target.
    #[arg(long, default_value = "PROTEUS_ES", value_name = "PREFIX")]
    pub to_prefix: String,
    /// Events copied per transaction.
    #[arg(long, default_value_t = 1_000)]
    pub batch_events: usize,
    /// After copying and verifying, keep copying new events until Ctrl-C or SIGTERM, which
    /// copies what is left (deletions and snapshots made meanwhile included) and verifies again.
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub nats_security: crate::settings::NatsSecurityArgs,
    // Replicas of the streams created on a NATS target.
    #[command(flatten)]
    pub nats_replicas: crate::settings::NatsReplicasArg,
}

/// Where events are read from.
enum Source {
    Store(Arc<dyn EventStore>),
    Server(Client),
}

impl Source {
    async fn open(args: &MigrateArgs) -> Result<Source, String> {
        let from = args.from.as_str();
        if let Some(dir) = embedded_dir("--from", from)? {
            // Opening creates a store where there is none: a mistyped directory would then
            // "migrate" zero events successfully.
            let file = std::path::Path::new(dir).join(EVENT_STORE_FILE);
            if !file.is_file() {
                return Err(format!(
                    "--from {from}: there is no embedded event store in {dir} (no {}); give the data directory of the server that holds it (its --data-dir, ./proteus-data by default)",
                    EVENT_STORE_FILE
                ));
            }
            return Ok(Source::Store(Arc::new(open_embedded(dir)?)));
        }
        if from.starts_with("http://") || from.starts_with("https://") {
            return Client::new(from)
                .map(Source::Server)
                .map_err(|e| format!("--from {from}: {e}"));
        }
        if is_postgres_url(from) {
            let config = PostgresEventStoreConfig {
                create_schema: false,
                ..PostgresEventStoreConfig::new(from, &args.from_schema)
            };
            let store = PostgresEventStore::open(config).await.map_err(|e| {
                format!(
                    "cannot open the PostgreSQL event store to copy (--from-schema {}): {e}",
                    args.from_schema
                )
            })?;
            return Ok(Source::Store(Arc::new(store)));
        }
        if crate::settings::is_nats_url(from) {
            let prefix = &args.from_prefix;
            let config = NatsEventStoreConfig {
                create_streams: false,
                // A source creates nothing: `--nats-replicas` is the target's.
                ..crate::serve::nats_event_store_config(
                    from,
                    prefix,
                    (
                        &args.nats_security.files(),
                        crate::settings::NATS_REPLICAS_DEFAULT,
                    ),
                )
            };
            let store = NatsEventStore::open(config).await.map_err(|e| {
                let hint = match e {
                    EventStoreError::InvalidRequest { .. } => "; check --from-prefix",
                    _ => "",
                };
                format!(
                    "cannot open the NATS event store to copy (--from-prefix {prefix}): {e}{hint}"
                )
            })?;
            return Ok(Source::Store(Arc::new(store)));
        }
        Err(format!(
            "--from must be embedded:DIR, postgres://USER@HOST:PORT/DB, nats://HOST:PORT or http://HOST:PORT, got {:?}",
            proteus_postgres::redact(from)
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
                .map_err(|e| format!("reading the source: {}", source_error(e))),
        }
    }

    /// What the source knows of `stream`; `None` if it never existed.
    async fn info(&self, stream: &StreamName) -> Result<Option<StreamInfo>, String> {
        let what =
            |e: &dyn std::fmt::Display| format!("reading stream '{stream}' in the source: {e}");
        match self {
            Source::Store(store) => match store.stream_info(stream).await {
                Ok(info) => Ok(Some(info)),
                Err(EventStoreError::StreamNotFound { .. }) => Ok(None),
                Err(e) => Err(what(&e)),
            },
            Source::Server(client) => match client.stream_info(stream.as_str()).await {
                Ok(info) => Ok(Some(info)),
                Err(ClientError::Problem { status: 404, .. }) => Ok(None),
                Err(e) => Err(what(&source_error(e))),
            },
        }
    }

    /// The source's latest snapshot of `stream`; `None` if it has none or was deleted since.
    async fn snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, String> {
        let what = |e: &dyn std::fmt::Display| {
            format!("reading the snapshot of stream '{stream}' in the source: {e}")
        };
        match self {
            Source::Store(store) => match store.get_snapshot(stream).await {
                Ok(snapshot) => Ok(snapshot),
                Err(EventStoreError::StreamDeleted { .. }) => Ok(None),
                Err(e) => Err(what(&e)),
            },
            Source::Server(client) => match client.get_snapshot(stream.as_str()).await {
                Ok(snapshot) => Ok(snapshot),
                Err(ClientError::Problem { status: 410, .. }) => Ok(None),
                Err(e) => Err(what(&source_error(e))),
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

/// What a copy keeps, hence what verification compares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kept {
    /// Everything, positions and recording times included (PostgreSQL, embedded).
    Everything,
    /// Streams, versions, ids, types, schema versions, data and metadata, in `$all` order;
    /// not positions or recording times (NATS, where the server assigns them).
    ContentInOrder,
}

fn absorb(hash: &mut Xxh3, event: &RecordedEvent, kept: Kept) {
    let (position, recorded_ms) = match kept {
        Kept::Everything => (event.position, event.recorded_ms),
        Kept::ContentInOrder => (0, 0),
    };
    for part in [
        &position.to_le_bytes()[..],
        event.stream.as_str().as_bytes(),
        &event.version.to_le_bytes(),
        event.id.as_bytes(),
        event.event_type.as_bytes(),
        &event.schema_version.unwrap_or(u32::MAX).to_le_bytes(),
        &event.data,
        event.metadata.as_deref().unwrap_or(b"\xff"),
        &recorded_ms.to_le_bytes(),
    ] {
        hash.update(&(part.len() as u64).to_le_bytes());
        hash.update(part);
    }
}

/// The fingerprint of `source` up to position `up_to`; adds the name of every stream read to
/// `streams` when given.
async fn fingerprint_source(
    source: &Source,
    up_to: u64,
    batch: usize,
    kept: Kept,
    mut streams: Option<&mut BTreeSet<StreamName>>,
) -> Result<Fingerprint, String> {
    let mut hash = Xxh3::new();
    let (mut events, mut last_position, mut from) = (0, 0, 0);
    loop {
        let page = source.page(from, batch, 0).await?;
        for event in page.events.iter().filter(|e| e.position <= up_to) {
            if let Some(streams) = streams.as_deref_mut()
                && !streams.contains(&event.stream)
            {
                streams.insert(event.stream.clone());
            }
            absorb(&mut hash, event, kept);
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
        // Positions are compared only where they are kept.
        last_position: if kept == Kept::Everything {
            last_position
        } else {
            0
        },
        checksum: hash.digest(),
    })
}

/// Most events of one append to a NATS target: well under the port's 1,000 so an append of
/// small events fits NATS's default 1 MB message; larger ones are sent one by one.
const NATS_APPEND_EVENTS_MAX: usize = 100;
/// Most streams whose next version in a NATS target is cached; past it the cache starts again
/// empty (each stream's version is then read from the target once more).
const NATS_STREAMS_CACHED_MAX: usize = 1_000_000;

/// A client error of a `--from http://…` source, worded for a migration: the shared client's
/// "unreachable" message points at `--server`, which a migration does not take.
pub(crate) fn source_error(error: ClientError) -> String {
    match error {
        ClientError::Unreachable { url, reason } => format!(
            "cannot reach the Proteus server at {url} named by --from: {reason}; is it running?"
        ),
        other => other.to_string(),
    }
}

/// The directory of an `embedded:DIR` argument (`None` for anything else); an empty one is
/// refused rather than taken as the working directory.
pub(crate) fn embedded_dir<'a>(flag: &str, value: &'a str) -> Result<Option<&'a str>, String> {
    match value.strip_prefix("embedded:") {
        Some("") => Err(format!(
            "{flag} embedded: names no directory; give the data directory, as in embedded:./proteus-data"
        )),
        other => Ok(other),
    }
}

pub(crate) fn is_postgres_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// Opens the embedded store in `dir`, saying what to do when its server holds it.
fn open_embedded(dir: &str) -> Result<EmbeddedEventStore, String> {
    EmbeddedEventStore::open(std::path::Path::new(dir), EmbeddedConfig::default()).map_err(|e| {
        format!(
            "cannot open the embedded event store in {dir}: {e}; stop the server using it (a server's store can be copied from its URL, --from http://HOST:PORT)"
        )
    })
}

/// Where events are copied to.
enum Target {
    /// Imported with their positions and times (`PostgresEventStore::import`).
    Postgres(PostgresEventStore),
    /// Imported with their positions and times (`EmbeddedEventStore::import`).
    Embedded {
        store: EmbeddedEventStore,
        dir: String,
    },
    /// Appended with their versions, in the source's `$all` order; `next_versions` caches each
    /// stream's next version in the target (`None`: deleted there), so a run resumed after an
    /// interruption, or following new events, appends only what the target lacks.
    Nats {
        store: NatsEventStore,
        next_versions: HashMap<StreamName, Option<u64>>,
    },
}

impl Target {
    async fn open(args: &MigrateArgs) -> Result<Target, String> {
        if crate::settings::is_nats_url(&args.to) {
            let security = args.nats_security.files();
            let store = crate::serve::open_nats_event_store(crate::serve::nats_event_store_config(
                &args.to,
                &args.to_prefix,
                (&security, args.nats_replicas.replicas()),
            ))
            .await?;
            return Ok(Target::Nats {
                store,
                next_versions: HashMap::new(),
            });
        }
        if let Some(dir) = embedded_dir("--to", &args.to)? {
            if args.from == args.to {
                return Err(format!(
                    "--from and --to are the same store ({dir}); copy it to another directory"
                ));
            }
            return Ok(Target::Embedded {
                store: open_embedded(dir)?,
                dir: dir.to_owned(),
            });
        }
        if !is_postgres_url(&args.to) {
            return Err(format!(
                "--to must be a PostgreSQL URL (postgres://USER@HOST:PORT/DB), a NATS URL (nats://HOST:PORT) or embedded:DIR, got {:?}",
                proteus_postgres::redact(&args.to)
            ));
        }
        let store =
            PostgresEventStore::open(PostgresEventStoreConfig::new(&args.to, &args.to_schema))
                .await
                .map_err(|e| {
                    format!(
                        "cannot open the PostgreSQL event store (schema {}): {e}",
                        args.to_schema
                    )
                })?;
        Ok(Target::Postgres(store))
    }

    fn store(&self) -> Arc<dyn EventStore> {
        match self {
            Target::Postgres(store) => Arc::new(store.clone()),
            Target::Embedded { store, .. } => Arc::new(store.clone()),
            Target::Nats { store, .. } => Arc::new(store.clone()),
        }
    }

    fn kept(&self) -> Kept {
        match self {
            Target::Postgres(_) | Target::Embedded { .. } => Kept::Everything,
            Target::Nats { .. } => Kept::ContentInOrder,
        }
    }

    /// The source position to copy from: after the target's head where positions are kept;
    /// from the start otherwise (what the target holds is then skipped by version).
    async fn resume_from(&self) -> Result<u64, String> {
        match self {
            Target::Postgres(_) | Target::Embedded { .. } => Ok(self
                .store()
                .read_all(u64::MAX, Direction::Backward, 1, &ReadFilter::default())
                .await
                .map_err(|e| format!("reading the target's head: {e}"))?
                .head_position
                + 1),
            Target::Nats { .. } => Ok(0),
        }
    }

    /// Writes `events` (a page of the source's `$all`); returns the events written, which
    /// excludes those the target already held.
    async fn write<'e>(
        &mut self,
        events: &'e [RecordedEvent],
    ) -> Result<Vec<&'e RecordedEvent>, String> {
        match self {
            Target::Postgres(store) => {
                store
                    .import(events)
                    .await
                    .map_err(|e| format!("writing to PostgreSQL: {e}"))?;
                Ok(events.iter().collect())
            }
            Target::Embedded { store, dir } => {
                store
                    .import(events.to_vec())
                    .await
                    .map_err(|e| format!("writing to the embedded store in {dir}: {e}"))?;
                Ok(events.iter().collect())
            }
            Target::Nats {
                store,
                next_versions,
            } => {
                let mut written = Vec::new();
                for run in events.chunk_by(|a, b| a.stream == b.stream) {
                    written.extend(append_to_nats(store, next_versions, run).await?);
                }
                Ok(written)
            }
        }
    }

    async fn fingerprint(&self, up_to: u64, batch: usize) -> Result<Fingerprint, String> {
        let up_to = match self {
            Target::Postgres(_) | Target::Embedded { .. } => up_to,
            // The copy's positions are its own: all of it is compared.
            Target::Nats { .. } => u64::MAX,
        };
        fingerprint_source(
            &Source::Store(self.store()),
            up_to,
            batch,
            self.kept(),
            None,
        )
        .await
    }
}

/// Appends `run` (events of one stream, in version order) to the NATS target, skipping the
/// versions it already holds; refuses a gap, which means the target holds other events.
async fn append_to_nats<'e>(
    store: &NatsEventStore,
    next_versions: &mut HashMap<StreamName, Option<u64>>,
    run: &'e [RecordedEvent],
) -> Result<Vec<&'e RecordedEvent>, String> {
    let Some(first) = run.first() else {
        return Ok(Vec::new());
    };
    let stream = &first.stream;
    let next = match next_versions.get(stream) {
        Some(next) => *next,
        None => {
            if next_versions.len() >= NATS_STREAMS_CACHED_MAX {
                next_versions.clear();
            }
            let next = match store.stream_info(stream).await {
                Ok(info) if info.deleted => None,
                Ok(info) => Some(info.last_version.map_or(0, |v| v + 1)),
                Err(EventStoreError::StreamNotFound { .. }) => Some(0),
                Err(EventStoreError::StreamDeleted { .. }) => None,
                Err(e) => return Err(format!("reading stream '{stream}' in the target: {e}")),
            };
            next_versions.insert(stream.clone(), next);
            next
        }
    };
    // Deleted in the target: copied and deleted by an earlier run.
    let Some(mut next) = next else {
        return Ok(Vec::new());
    };
    let missing: Vec<&RecordedEvent> = run.iter().filter(|e| e.version >= next).collect();
    let mut written = Vec::new();
    for chunk in missing.chunks(NATS_APPEND_EVENTS_MAX) {
        if chunk[0].version != next {
            return Err(format!(
                "stream '{stream}' in the target ends before version {} but the source's next event is version {}: the target holds events that are not the source's; migrate into a fresh --to-prefix",
                next, chunk[0].version
            ));
        }
        let proposed = |event: &&RecordedEvent| ProposedEvent {
            id: event.id.clone(),
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            data: event.data.clone(),
            metadata: event.metadata.clone(),
        };
        let expected = |next: u64| match next {
            0 => ExpectedVersion::NoStream,
            next => ExpectedVersion::Exact(next - 1),
        };
        let appended = store
            .append(stream, expected(next), chunk.iter().map(proposed).collect())
            .await;
        match appended {
            Ok(_) => {}
            // Too large for one NATS message together: one by one.
            Err(EventStoreError::LimitExceeded { .. }) if chunk.len() > 1 => {
                for (offset, event) in chunk.iter().enumerate() {
                    store
                        .append(
                            stream,
                            expected(next + offset as u64),
                            vec![proposed(event)],
                        )
                        .await
                        .map_err(|e| format!("writing to NATS, stream '{stream}': {e}"))?;
                }
            }
            Err(e) => return Err(format!("writing to NATS, stream '{stream}': {e}")),
        }
        next += chunk.len() as u64;
        written.extend_from_slice(chunk);
    }
    next_versions.insert(stream.clone(), Some(next));
    Ok(written)
}

/// What a pass made in the target besides copying events.
#[derive(Default)]
struct Synced {
    deleted: u64,
    snapshots: u64,
    /// Snapshots of versions the copy does not hold yet (stored in the source after the copy
    /// read its end): the next run, or the end of `--follow`, copies them.
    snapshots_ahead: u64,
}

impl std::fmt::Display for Synced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} deleted, {} snapshots copied",
            self.deleted, self.snapshots
        )?;
        if self.snapshots_ahead > 0 {
            write!(
                f,
                ", {} snapshots ahead of the copy left for the next run",
                self.snapshots_ahead
            )?;
        }
        Ok(())
    }
}

/// Copies the source's `$all` from `from` to its end as read now, moving `from` past what
/// was written; returns the events written, the streams they belong to and the source's head
/// position. The next page is read while the current one is written, so a copy takes about as
/// long as the slower side rather than both added together.
async fn copy_to_end(
    source: &Source,
    target: &mut Target,
    from: &mut u64,
    batch: usize,
) -> Result<(u64, BTreeSet<StreamName>, u64), String> {
    let (mut copied, mut streams) = (0, BTreeSet::new());
    let started = std::time::Instant::now();
    let mut reported = started;
    let mut page = source.page(*from, batch, 0).await?;
    loop {
        let next_at = (!page.is_end).then_some(page.next_position);
        let (written, next_page) = tokio::join!(
            async {
                if page.events.is_empty() {
                    Ok(Vec::new())
                } else {
                    target.write(&page.events).await
                }
            },
            async {
                match next_at {
                    Some(at) => source.page(at, batch, 0).await.map(Some),
                    None => Ok(None),
                }
            },
        );
        let written = written?;
        copied += written.len() as u64;
        streams.extend(written.into_iter().map(|e| e.stream.clone()));
        *from = page.next_position;
        let Some(next_page) = next_page? else {
            return Ok((copied, streams, page.head_position));
        };
        // A copy of millions of events takes minutes: say how far it is.
        if reported.elapsed() >= PROGRESS_INTERVAL {
            reported = std::time::Instant::now();
            println!(
                "copying: {copied} events so far, at position {} of {} ({:.0} events/s)",
                *from,
                page.head_position,
                copied as f64 / started.elapsed().as_secs_f64()
            );
        }
        page = next_page;
    }
}

/// How often a long copy prints how far it is (`migrate` and `migrate-topics`).
pub(crate) const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// How long a follower waits after a round that found nothing new, or failed.
pub(crate) const FOLLOW_IDLE_WAIT: Duration = Duration::from_millis(500);
/// Rounds in a row that may fail (the source or target restarting, NATS electing a leader,
/// a connection coming back) before a follower gives up; at `FOLLOW_IDLE_WAIT` apart, about
/// 30 s.
pub(crate) const FOLLOW_ROUND_FAILURES_MAX: u32 = 60;

/// After a follower's last pass (the cut-over) failed with `error`: waits `FOLLOW_IDLE_WAIT`
/// so that the caller runs it again, as following rides out a source or target restarting or
/// NATS electing a leader (a pass continues where the failed one stopped), at most
/// `FOLLOW_ROUND_FAILURES_MAX` failures in a row (`failures` counts them); then, or on a
/// second Ctrl-C (`interrupted` is said then), the error to stop with.
pub(crate) async fn again_after_a_failed_last_pass(
    failures: &mut u32,
    error: String,
    stop: &mut StopSignals,
    interrupted: &str,
) -> Result<(), String> {
    *failures += 1;
    if *failures >= FOLLOW_ROUND_FAILURES_MAX {
        return Err(format!(
            "{error} (the last pass failed {failures} times in a row; {interrupted})"
        ));
    }
    eprintln!("last pass: {error}; trying again");
    tokio::select! {
        _ = stop.received() => Err(format!("interrupted before the last pass ended: {interrupted}")),
        _ = tokio::time::sleep(FOLLOW_IDLE_WAIT) => Ok(()),
    }
}

/// What ends a `--follow`: Ctrl-C (SIGINT) or SIGTERM (a supervisor stopping it), after
/// which the last pass runs. Both are watched from creation, so neither kills the process
/// once following has been announced.
pub(crate) struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub(crate) fn watch() -> Result<StopSignals, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let watch = |kind| signal(kind).map_err(|e| format!("cannot watch for Ctrl-C: {e}"));
        Ok(StopSignals {
            interrupt: watch(SignalKind::interrupt())?,
            terminate: watch(SignalKind::terminate())?,
        })
    }

    /// Resolves at the next SIGINT or SIGTERM (cancel-safe).
    pub(crate) async fn received(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Most requests for stream information and snapshots the source serves at once: a pass asks
/// about every stream, and one at a time over HTTP that is most of a pass with nothing new.
const SOURCE_REQUESTS_IN_FLIGHT_MAX: usize = 32;

/// What the source holds of one stream beyond its events: `None` if it never existed.
async fn stream_state(
    source: &Source,
    stream: &StreamName,
) -> Result<Option<(StreamInfo, Option<Snapshot>)>, String> {
    let Some(info) = source.info(stream).await? else {
        return Ok(None);
    };
    let snapshot = if !info.deleted && info.snapshot_version.is_some() {
        source.snapshot(stream).await?
    } else {
        None
    };
    Ok(Some((info, snapshot)))
}

/// Makes the target's tombstones and latest snapshots those of the source, for `streams`.
/// Events come first (a snapshot needs its version in the copy), so this runs after a copy.
/// The source is asked about several streams at once; the target is changed one stream at a
/// time, in name order.
async fn sync_tombstones_and_snapshots(
    source: &Source,
    target: &mut Target,
    streams: &BTreeSet<StreamName>,
) -> Result<Synced, String> {
    use futures_util::{StreamExt, TryStreamExt};
    let mut synced = Synced::default();
    let store = target.store();
    let mut states = futures_util::stream::iter(streams)
        .map(|stream| async move { Ok::<_, String>((stream, stream_state(source, stream).await?)) })
        .buffered(SOURCE_REQUESTS_IN_FLIGHT_MAX);
    while let Some((stream, state)) = states.try_next().await? {
        let Some((info, snapshot)) = state else {
            continue;
        };
        if info.deleted {
            match store.delete_stream(stream, ExpectedVersion::Any).await {
                Ok(_) => synced.deleted += 1,
                Err(EventStoreError::StreamDeleted { .. }) => {}
                Err(e) => return Err(format!("deleting stream '{stream}' in the target: {e}")),
            }
            if let Target::Nats { next_versions, .. } = target {
                next_versions.insert(stream.clone(), None);
            }
            continue;
        }
        let Some(snapshot) = snapshot else {
            continue;
        };
        let held = match store.get_snapshot(stream).await {
            Ok(held) => held,
            Err(e) => {
                return Err(format!(
                    "reading the snapshot of stream '{stream}' in the target: {e}"
                ));
            }
        };
        let same = |held: &Snapshot| {
            (held.version, &held.snapshot_type, &held.data)
                == (snapshot.version, &snapshot.snapshot_type, &snapshot.data)
        };
        if held.as_ref().is_some_and(same) {
            continue;
        }
        let put = store
            .put_snapshot(
                stream,
                snapshot.version,
                &snapshot.snapshot_type,
                snapshot.data.clone(),
            )
            .await;
        match put {
            Ok(()) => synced.snapshots += 1,
            Err(EventStoreError::SnapshotAheadOfStream { .. }) => synced.snapshots_ahead += 1,
            // The copy holds a newer one, written there by its own clients after a cut-over.
            Err(EventStoreError::SnapshotOutdated { .. }) => {}
            Err(e) => {
                return Err(format!(
                    "copying the snapshot of stream '{stream}' to the target: {e}"
                ));
            }
        }
    }
    Ok(synced)
}

/// After a copy up to the source's `head`: reads the whole source (its fingerprint, which
/// also names every stream), makes its tombstones and snapshots in the target (so deletions
/// an interrupted run did not reach are made), prints what the pass did, then checks the copy
/// against the fingerprint.
async fn finish_pass(
    source: &Source,
    target: &mut Target,
    head: u64,
    batch: usize,
    copied: (u64, usize),
    started: std::time::Instant,
) -> Result<(), String> {
    let kept = target.kept();
    let mut streams = BTreeSet::new();
    // Both sides are read at once; tombstones and snapshots, made after, change no event.
    let (expected, actual) = tokio::join!(
        fingerprint_source(source, head, batch, kept, Some(&mut streams)),
        target.fingerprint(head, batch),
    );
    let (expected, actual) = (expected?, actual?);
    let synced = sync_tombstones_and_snapshots(source, target, &streams).await?;
    println!(
        "copied {} events of {} streams ({synced}) in {:.1} s, up to position {head}",
        copied.0,
        copied.1,
        started.elapsed().as_secs_f64()
    );
    if expected != actual {
        let undo = match target {
            Target::Postgres(_) => "drop the target schema".to_owned(),
            Target::Embedded { dir, .. } => format!("delete {dir}/{EVENT_STORE_FILE}"),
            Target::Nats { .. } => "delete the target's JetStream streams".to_owned(),
        };
        return Err(format!(
            "verification failed: the source has {} events up to position {head} (checksum {:016x}), the copy {} (checksum {:016x}); {undo} and migrate again",
            expected.events, expected.checksum, actual.events, actual.checksum
        ));
    }
    match kept {
        Kept::Everything => println!(
            "verified: {} events up to position {}, checksum {:016x} on both sides",
            expected.events, expected.last_position, expected.checksum
        ),
        Kept::ContentInOrder => println!(
            "verified: {} events up to source position {head}, in the same order with the same streams, versions, ids and payloads, checksum {:016x} on both sides (positions and recording times are JetStream's: rebuild projections on the copy)",
            expected.events, expected.checksum
        ),
    }
    Ok(())
}

/// One pass: the events from `from` to the source's end, then its tombstones and snapshots,
/// then the verification.
async fn pass(
    source: &Source,
    target: &mut Target,
    from: &mut u64,
    batch: usize,
) -> Result<(), String> {
    let started = std::time::Instant::now();
    let (copied, streams, head) = copy_to_end(source, target, from, batch).await?;
    finish_pass(
        source,
        target,
        head,
        batch,
        (copied, streams.len()),
        started,
    )
    .await
}

pub async fn run(args: MigrateArgs) -> Result<(), String> {
    if !(1..=IMPORT_EVENTS_MAX).contains(&args.batch_events) {
        return Err(format!(
            "--batch-events must be 1 to {IMPORT_EVENTS_MAX}, got {}",
            args.batch_events
        ));
    }
    if args.nats_replicas.replicas() != crate::settings::NATS_REPLICAS_DEFAULT
        && !crate::settings::is_nats_url(&args.to)
    {
        return Err(
            "--nats-replicas is for a NATS target (--to nats://…), and the target is not one: remove it"
                .into(),
        );
    }
    let batch = args.batch_events;
    let source = Source::open(&args).await?;
    // A source that cannot be read (a server not running, say) is refused before the target
    // is opened, which may create it.
    source.page(0, 1, 0).await?;
    let mut target = Target::open(&args).await?;
    let mut from = target.resume_from().await?;
    pass(&source, &mut target, &mut from, batch).await?;
    if !args.follow {
        return Ok(());
    }
    let mut stop = StopSignals::watch()?;
    println!(
        "following new events; stop with Ctrl-C once clients use the copy (deletions and snapshots are copied then)"
    );
    let mut failures = 0;
    loop {
        let page = tokio::select! {
            page = source.page(from, batch, 10_000) => page,
            _ = stop.received() => break,
        };
        // A page whose write failed is read and written again: the target skips the events
        // it already holds.
        let copied = match page {
            Ok(page) if page.events.is_empty() => Ok(page.next_position),
            Ok(page) => target.write(&page.events).await.map(|written| {
                println!(
                    "copied {} more events, up to position {}",
                    written.len(),
                    page.events.last().map_or(0, |e| e.position)
                );
                page.next_position
            }),
            Err(e) => Err(e),
        };
        match copied {
            Ok(next) => {
                from = next;
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                if failures >= FOLLOW_ROUND_FAILURES_MAX {
                    return Err(format!(
                        "{e} ({failures} rounds in a row failed while following; run migrate again to resume)"
                    ));
                }
                eprintln!("following: {e}; trying again");
                tokio::select! {
                    _ = stop.received() => break,
                    _ = tokio::time::sleep(FOLLOW_IDLE_WAIT) => {}
                }
            }
        }
    }
    // The cut-over: what arrived since the last page, then the deletions and snapshots made
    // while following, then the same verification as at the start.
    println!(
        "stopping: copying what is left, deletions and snapshots, then verifying (Ctrl-C again to abort)"
    );
    const FINISH: &str = "run migrate again without --follow to finish the copy";
    let mut failures = 0;
    loop {
        let done = tokio::select! {
            done = pass(&source, &mut target, &mut from, batch) => done,
            _ = stop.received() => {
                return Err(format!("interrupted before the last pass ended: {FINISH}"));
            }
        };
        match done {
            Ok(()) => return Ok(()),
            Err(e) => again_after_a_failed_last_pass(&mut failures, e, &mut stop, FINISH).await?,
        }
    }
}
