//! `proteus bench projection`: how fast a projection catches up with a large event store,
//! in-process.
//!
//! **Fill.** The event store in `<data-dir>/events` (`EmbeddedEventStore`) gets `--events`
//! events spread over `--streams` streams `acct-0`, `acct-1`, … (category `acct`): `Deposited`
//! and `Withdrawn` events with `{"amount", "region", "note"}` data of about `--event-bytes`
//! bytes. Appends of `--events-per-append` events go to the streams in turn (round-robin), each
//! with the exact version its writer last saw, from [`FILL_TASKS`] concurrent writers, so the
//! `$all` feed interleaves the streams as a live system would. What was filled is recorded in
//! `<data-dir>/fill.json`; a later run asking for the same events reuses them and skips the
//! fill.
//!
//! **Catch-up.** A fresh read-model store in `<data-dir>/readmodels-<id>` (deleted afterwards),
//! a [`ProjectionService`] over both, and one projection of `--kind` over category `acct`:
//!
//! - `state`: one document per account, incrementing `deposited`, `withdrawn` and `events`;
//! - `aggregate`: event count and amount sum grouped by `/data/region`;
//! - `list`: the last 100 events per account (amount, type, version).
//!
//! The time runs from `create` to the projection having read past the head of the store. Then
//! every document is read back and checked against what the fill wrote (per account or per
//! region), so a projection that skipped or double-counted events fails the run instead of
//! reporting a rate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use proteus_eventstore::{
    Direction, EventStore, ExpectedVersion, ProposedEvent, ReadFilter, StreamName,
};
use proteus_eventstore_embedded::{EmbeddedConfig, EmbeddedEventStore};
use proteus_projections::{Query, RunState};
use proteus_projections_embedded::EmbeddedReadModelStore;
use proteus_projections_service::{
    BATCH_EVENTS_MAX_LIMIT, ProjectionService, ProjectionServiceConfig,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Output;
use crate::limits::{ensure_space, in_range};
use crate::report::render_rows;

#[derive(Args, Debug, Clone)]
pub struct ProjectionArgs {
    /// Directory of the bench: the event store goes to DIR/events (reused when it already
    /// holds the requested events), each run's read models to a temporary DIR/readmodels-*.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Events in the store, all read by the projection.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Streams (accounts) the events are spread over.
    #[arg(long, default_value_t = 10_000)]
    pub streams: u64,
    /// Bytes of each event's data (JSON).
    #[arg(long, default_value_t = 100)]
    pub event_bytes: usize,
    /// Events in each append of the fill, all to one stream.
    #[arg(long, default_value_t = 10)]
    pub events_per_append: usize,
    /// What the projection builds.
    #[arg(long, value_enum, default_value = "state")]
    pub kind: Kind,
    /// Most events the projection reads, applies and commits at once (default: the
    /// projection service's default).
    #[arg(long)]
    pub batch_events: Option<usize>,
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

/// The projection measured.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One document per account: sums of deposits and withdrawals, event count.
    State,
    /// Event count and amount sum per region (4 documents).
    Aggregate,
    /// The last 100 events of each account.
    List,
}

pub const EVENTS_MAX: u64 = 100_000_000;
pub const STREAMS_MAX: u64 = 1_000_000;
pub const EVENT_BYTES_MIN: usize = 64;
pub const EVENT_BYTES_MAX: usize = 64 * 1024;
pub const EVENTS_PER_APPEND_MAX: usize = proteus_eventstore::EVENTS_PER_APPEND_MAX;
/// Concurrent writers of the fill.
pub const FILL_TASKS: u64 = 32;
/// A projection that has not moved for this long is reported as stuck.
pub const STALL_S_MAX: u64 = 120;
/// Items kept per account by the `list` projection.
const LIST_ITEMS: usize = 100;
const CATEGORY: &str = "acct";
const REGIONS: [&str; 4] = ["eu", "us", "apac", "latam"];
/// Documents read per page when checking the result.
const CHECK_PAGE_DOCS: usize = 1_000;
/// Bytes an event counts for beyond its data (id, type, indexes), to estimate disk use.
const EVENT_OVERHEAD_BYTES: u64 = 256;
const FILL_FILE: &str = "fill.json";

/// What `<data-dir>/fill.json` records of a completed fill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Fill {
    events: u64,
    streams: u64,
    event_bytes: usize,
    events_per_append: usize,
    /// The head of the `$all` feed once the fill was done.
    head_position: u64,
}

#[derive(Debug, Serialize)]
pub struct ProjectionReport {
    pub data_dir: String,
    pub kind: Kind,
    pub events: u64,
    pub streams: u64,
    pub event_bytes: usize,
    pub events_per_append: usize,
    pub batch_events: usize,
    /// Whether this run filled the store (false: it reused an earlier fill).
    pub filled: bool,
    pub fill_s: f64,
    pub fill_events_per_s: f64,
    pub head_position: u64,
    /// From `create` to the projection having read past the head.
    pub seconds: f64,
    pub events_per_s: f64,
    /// Documents of the read model, each checked against what the fill wrote.
    pub documents: u64,
}

impl ProjectionReport {
    fn table(&self) -> String {
        let fill = if self.filled {
            format!(
                "{:.1} s ({:.0} events/s, {FILL_TASKS} writers, fsync per group commit)",
                self.fill_s, self.fill_events_per_s
            )
        } else {
            "reused the events of an earlier run".to_owned()
        };
        let kind = match self.kind {
            Kind::State => "state: deposited/withdrawn/events per account",
            Kind::Aggregate => "aggregate: count and sum of amounts per region",
            Kind::List => "list: last 100 events per account",
        };
        render_rows(&[
            ("data directory", self.data_dir.clone()),
            (
                "events",
                format!(
                    "{} of ~{} bytes over {} streams, {} per append (head position {})",
                    self.events,
                    self.event_bytes,
                    self.streams,
                    self.events_per_append,
                    self.head_position
                ),
            ),
            ("fill", fill),
            (
                "projection",
                format!("{kind}, batches of {} events", self.batch_events),
            ),
            (
                "catch-up",
                format!(
                    "{:.0} events/s ({} events in {:.2} s)",
                    self.events_per_s, self.events, self.seconds
                ),
            ),
            (
                "result",
                format!(
                    "{} documents, all equal to what the fill wrote",
                    self.documents
                ),
            ),
        ])
    }
}

pub async fn run(args: ProjectionArgs) -> Result<(), String> {
    in_range("--events", args.events, 1, EVENTS_MAX)?;
    in_range("--streams", args.streams, 1, STREAMS_MAX)?;
    in_range(
        "--event-bytes",
        args.event_bytes,
        EVENT_BYTES_MIN,
        EVENT_BYTES_MAX,
    )?;
    in_range(
        "--events-per-append",
        args.events_per_append,
        1,
        EVENTS_PER_APPEND_MAX,
    )?;
    let defaults = ProjectionServiceConfig::default();
    let batch_events = args.batch_events.unwrap_or(defaults.batch_events_max);
    in_range("--batch-events", batch_events, 1, BATCH_EVENTS_MAX_LIMIT)?;
    if args.streams > args.events {
        return Err(format!(
            "--streams ({}) must not exceed --events ({}): every stream gets at least one event",
            args.streams, args.events
        ));
    }
    let append_bytes = args.events_per_append * (args.event_bytes + 64);
    if append_bytes > proteus_eventstore::APPEND_BYTES_MAX {
        return Err(format!(
            "an append of {} events of {} bytes is about {append_bytes} bytes, above the event store's limit of {}; lower --events-per-append or --event-bytes",
            args.events_per_append,
            args.event_bytes,
            proteus_eventstore::APPEND_BYTES_MAX
        ));
    }
    std::fs::create_dir_all(&args.data_dir).map_err(|e| {
        format!(
            "cannot create --data-dir {}: {e}; choose a directory you can write to",
            args.data_dir.display()
        )
    })?;
    let wanted = Fill {
        events: args.events,
        streams: args.streams,
        event_bytes: args.event_bytes,
        events_per_append: args.events_per_append,
        head_position: 0,
    };

    let events_dir = args.data_dir.join("events");
    let store = EmbeddedEventStore::open(&events_dir, EmbeddedConfig::default()).map_err(|e| {
        format!(
            "opening the event store in {} failed: {e}",
            events_dir.display()
        )
    })?;
    let result = fill_and_measure(&args, &store, wanted, batch_events).await;
    let closed = store
        .close()
        .await
        .map_err(|e| format!("closing the event store failed: {e}"));
    let report = result?;
    closed?;
    crate::report::print(args.output, &report, ProjectionReport::table);
    Ok(())
}

async fn fill_and_measure(
    args: &ProjectionArgs,
    store: &EmbeddedEventStore,
    wanted: Fill,
    batch_events: usize,
) -> Result<ProjectionReport, String> {
    let fill_path = args.data_dir.join(FILL_FILE);
    let recorded = read_fill(&fill_path)?;
    let head = head_position(store).await?;
    let reusable = recorded.as_ref().is_some_and(|fill| {
        Fill {
            head_position: 0,
            ..fill.clone()
        } == wanted
            && head >= fill.head_position
            && head >= args.events
    });
    let (filled, fill_s, head) = if reusable {
        eprintln!(
            "reusing the {} events already in {}",
            args.events,
            args.data_dir.join("events").display()
        );
        (false, 0.0, head)
    } else if head == 0 {
        let bytes = args.events * (args.event_bytes as u64 + EVENT_OVERHEAD_BYTES) * 2;
        ensure_space(
            &args.data_dir,
            bytes,
            &format!(
                "filling {} with {} events",
                args.data_dir.display(),
                args.events
            ),
        )?;
        let started = Instant::now();
        fill(args, store).await?;
        let fill_s = started.elapsed().as_secs_f64();
        let head = head_position(store).await?;
        write_fill(
            &fill_path,
            &Fill {
                head_position: head,
                ..wanted.clone()
            },
        )?;
        (true, fill_s, head)
    } else {
        let what = match &recorded {
            Some(fill) => format!(
                "a fill of {} events over {} streams, {} bytes each, {} per append",
                fill.events, fill.streams, fill.event_bytes, fill.events_per_append
            ),
            None => "events of an unfinished or foreign fill".to_owned(),
        };
        return Err(format!(
            "{} already holds {head} positions of events ({what}), not the {} events over {} streams of {} bytes, {} per append asked for; pass those options again, choose another --data-dir, or delete {}",
            args.data_dir.join("events").display(),
            args.events,
            args.streams,
            args.event_bytes,
            args.events_per_append,
            args.data_dir.display()
        ));
    };

    // A fresh read-model store of this run's own, removed whatever happens.
    let readmodels = args
        .data_dir
        .join(format!("readmodels-{}", uuid::Uuid::now_v7().simple()));
    let measured = measure(args, store, &readmodels, head, batch_events).await;
    let removed = std::fs::remove_dir_all(&readmodels).map_err(|e| {
        format!(
            "removing the read models in {} failed: {e}; delete it by hand",
            readmodels.display()
        )
    });
    let (seconds, documents) = measured?;
    removed?;
    Ok(ProjectionReport {
        data_dir: args.data_dir.display().to_string(),
        kind: args.kind,
        events: args.events,
        streams: args.streams,
        event_bytes: args.event_bytes,
        events_per_append: args.events_per_append,
        batch_events,
        filled,
        fill_s,
        fill_events_per_s: if filled {
            args.events as f64 / fill_s
        } else {
            0.0
        },
        head_position: head,
        seconds,
        events_per_s: args.events as f64 / seconds,
        documents,
    })
}

fn read_fill(path: &Path) -> Result<Option<Fill>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "{} is not a fill record of this bench ({e}); delete its directory or choose another --data-dir",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn write_fill(path: &Path, fill: &Fill) -> Result<(), String> {
    let text = serde_json::to_vec(fill).map_err(|e| e.to_string())?;
    let temporary = path.with_extension("json.tmp");
    std::fs::write(&temporary, text)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The last committed position of the `$all` feed (0 when empty).
async fn head_position(store: &EmbeddedEventStore) -> Result<u64, String> {
    store
        .read_all(u64::MAX, Direction::Backward, 1, &ReadFilter::default())
        .await
        .map(|page| page.head_position)
        .map_err(|e| format!("reading the head of the event store failed: {e}"))
}

/// Events of stream `n`: the first `events % streams` streams get one more.
fn stream_events(n: u64, events: u64, streams: u64) -> u64 {
    events / streams + u64::from(n < events % streams)
}

/// Amount of event `version` of stream `n`: 1 to 1000.
fn amount(n: u64, version: u64) -> u64 {
    (n * 31 + version * 7) % 1000 + 1
}

/// Every third event withdraws.
fn is_withdrawal(version: u64) -> bool {
    version % 3 == 2
}

fn region(n: u64) -> &'static str {
    REGIONS[(n % REGIONS.len() as u64) as usize]
}

/// The data of event `version` of stream `n`: about `bytes` bytes of JSON.
fn event_data(n: u64, version: u64, bytes: usize) -> String {
    let mut data = json!({"amount": amount(n, version), "region": region(n), "note": ""});
    let pad = bytes.saturating_sub(data.to_string().len());
    data["note"] = Value::String("x".repeat(pad));
    data.to_string()
}

async fn fill(args: &ProjectionArgs, store: &EmbeddedEventStore) -> Result<(), String> {
    eprintln!(
        "filling {} with {} events over {} streams…",
        args.data_dir.join("events").display(),
        args.events,
        args.streams
    );
    let written = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks_count = FILL_TASKS.min(args.streams);
    let mut tasks = Vec::new();
    for task in 0..tasks_count {
        let (store, written) = (store.clone(), written.clone());
        let (events, streams, per_append, bytes) = (
            args.events,
            args.streams,
            args.events_per_append as u64,
            args.event_bytes,
        );
        tasks.push(tokio::spawn(async move {
            // This writer owns streams task, task + tasks_count, … and appends to them in
            // turn, one append each per round.
            let owned: Vec<u64> = (task..streams).step_by(tasks_count as usize).collect();
            let names = owned
                .iter()
                .map(|n| StreamName::parse(&format!("{CATEGORY}-{n}")))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let mut round = 0u64;
            loop {
                let mut appended = false;
                for (slot, &n) in owned.iter().enumerate() {
                    let total = stream_events(n, events, streams);
                    let first = round * per_append;
                    if first >= total {
                        continue;
                    }
                    let last = (first + per_append).min(total);
                    let batch = (first..last)
                        .map(|version| {
                            let kind = if is_withdrawal(version) {
                                "Withdrawn"
                            } else {
                                "Deposited"
                            };
                            ProposedEvent::new(
                                uuid::Uuid::now_v7().to_string(),
                                kind,
                                event_data(n, version, bytes),
                            )
                        })
                        .collect();
                    let expected = match first {
                        0 => ExpectedVersion::NoStream,
                        _ => ExpectedVersion::Exact(first - 1),
                    };
                    store
                        .append(&names[slot], expected, batch)
                        .await
                        .map_err(|e| format!("filling {} failed: {e}", names[slot].as_str()))?;
                    written.fetch_add(last - first, Ordering::Relaxed);
                    appended = true;
                }
                if !appended {
                    return Ok::<(), String>(());
                }
                round += 1;
            }
        }));
    }
    let progress = {
        let (written, events) = (written.clone(), args.events);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(10));
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let done = written.load(Ordering::Relaxed);
                eprintln!(
                    "  {done} of {events} events, {:.0} events/s",
                    done as f64 / started.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut result = Ok(());
    for task in tasks {
        let outcome = task
            .await
            .map_err(|e| format!("a fill task failed: {e}"))
            .and_then(|r| r);
        if result.is_ok() {
            result = outcome;
        }
    }
    progress.abort();
    result
}

fn definition(kind: Kind) -> Value {
    let source = json!({"category": CATEGORY});
    match kind {
        Kind::State => json!({
            "source": source,
            "state": {"handlers": {
                "Deposited": {"increment": {
                    "deposited": {"path": "/data/amount"}, "events": {"const": 1}}},
                "Withdrawn": {"increment": {
                    "withdrawn": {"path": "/data/amount"}, "events": {"const": 1}}}
            }}
        }),
        Kind::Aggregate => json!({
            "source": source,
            "aggregate": {
                "group_by": {"region": "/data/region"},
                "measures": {"events": {"count": {}}, "amount": {"sum": "/data/amount"}}
            }
        }),
        Kind::List => json!({
            "source": source,
            "list": {
                "key": "stream",
                "max_items": LIST_ITEMS,
                "fields": {"amount": "/data/amount", "type": "event_type", "version": "version"}
            }
        }),
    }
}

/// Runs the projection to the head; returns the seconds it took and the documents checked.
async fn measure(
    args: &ProjectionArgs,
    events: &EmbeddedEventStore,
    readmodels: &Path,
    head: u64,
    batch_events: usize,
) -> Result<(f64, u64), String> {
    let store = EmbeddedReadModelStore::open(readmodels).map_err(|e| {
        format!(
            "opening a read-model store in {} failed: {e}",
            readmodels.display()
        )
    })?;
    let config = ProjectionServiceConfig {
        batch_events_max: batch_events,
        ..ProjectionServiceConfig::default()
    };
    let service = ProjectionService::open(Arc::new(events.clone()), Arc::new(store), config)
        .await
        .map_err(|e| format!("starting the projection service failed: {e}"))?;
    let result = catch_up(args, &service, head).await;
    service.close().await;
    result
}

async fn catch_up(
    args: &ProjectionArgs,
    service: &ProjectionService,
    head: u64,
) -> Result<(f64, u64), String> {
    let name = match args.kind {
        Kind::State => "balances",
        Kind::Aggregate => "regions",
        Kind::List => "recent",
    };
    let started = Instant::now();
    service
        .create(name, &definition(args.kind), None)
        .await
        .map_err(|e| format!("creating the projection failed: {e}"))?;
    let mut last_position = 0;
    let mut last_move = Instant::now();
    loop {
        let reached = service
            .wait_for_position(name, head, Duration::from_secs(1))
            .await
            .map_err(|e| format!("waiting for the projection failed: {e}"))?;
        if reached {
            break;
        }
        let status = service
            .status(name)
            .await
            .map_err(|e| format!("reading the projection's status failed: {e}"))?;
        if let RunState::Failed { error } = &status.state {
            return Err(format!("the projection stopped: {error}"));
        }
        if status.read_position > last_position {
            last_position = status.read_position;
            last_move = Instant::now();
        } else if last_move.elapsed() > Duration::from_secs(STALL_S_MAX) {
            let retrying = status
                .retrying
                .map(|r| format!(" ({} failing: {})", r.operation, r.error))
                .unwrap_or_default();
            return Err(format!(
                "the projection made no progress for {STALL_S_MAX} s at position {last_position} of {head}{retrying}"
            ));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let status = service
        .status(name)
        .await
        .map_err(|e| format!("reading the projection's status failed: {e}"))?;
    if status.checkpoint.position <= head || status.checkpoint.events_processed != args.events {
        return Err(format!(
            "the projection reached the head but its checkpoint says position {} and {} events processed, not past {head} and {}",
            status.checkpoint.position, status.checkpoint.events_processed, args.events
        ));
    }
    let documents = check(args, service, name).await?;
    Ok((seconds, documents))
}

/// Every document of the projection.
async fn documents(
    service: &ProjectionService,
    name: &str,
) -> Result<Vec<(String, Value)>, String> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let query = Query {
            limit: CHECK_PAGE_DOCS,
            cursor,
            ..Query::default()
        };
        let page = service
            .query(name, &query)
            .await
            .map_err(|e| format!("reading the read model back failed: {e}"))?;
        all.extend(page.items);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(all),
        }
    }
}

fn number(doc: &Value, field: &str) -> f64 {
    doc[field].as_f64().unwrap_or(f64::NAN)
}

/// Compares the read model with what the fill wrote; returns the number of documents.
async fn check(
    args: &ProjectionArgs,
    service: &ProjectionService,
    name: &str,
) -> Result<u64, String> {
    let docs = documents(service, name).await?;
    let wrong = |key: &str, doc: &Value, expected: String| {
        Err(format!(
            "the read model is wrong: document {key} is {doc}, expected {expected}"
        ))
    };
    match args.kind {
        Kind::State | Kind::List => {
            if docs.len() as u64 != args.streams {
                return Err(format!(
                    "the read model is wrong: {} documents, expected one per stream ({})",
                    docs.len(),
                    args.streams
                ));
            }
            for (key, doc) in &docs {
                let n = key
                    .strip_prefix("acct-")
                    .and_then(|n| n.parse::<u64>().ok())
                    .filter(|n| *n < args.streams);
                let Some(n) = n else {
                    return Err(format!(
                        "the read model is wrong: a document has key {key}, not a stream of the fill"
                    ));
                };
                let total = stream_events(n, args.events, args.streams);
                if args.kind == Kind::State {
                    let (mut deposited, mut withdrawn) = (0u64, 0u64);
                    for version in 0..total {
                        if is_withdrawal(version) {
                            withdrawn += amount(n, version);
                        } else {
                            deposited += amount(n, version);
                        }
                    }
                    // A stream without withdrawals never gets the field.
                    let got_withdrawn = doc
                        .get("withdrawn")
                        .map_or(0.0, |_| number(doc, "withdrawn"));
                    if number(doc, "deposited") != deposited as f64
                        || got_withdrawn != withdrawn as f64
                        || number(doc, "events") != total as f64
                    {
                        return wrong(
                            key,
                            doc,
                            format!("deposited {deposited}, withdrawn {withdrawn}, events {total}"),
                        );
                    }
                } else {
                    let items = doc["items"].as_array().map_or(&[][..], Vec::as_slice);
                    let kept = (total as usize).min(LIST_ITEMS);
                    let last = items.last();
                    let last_ok = last.is_some_and(|item| {
                        number(item, "version") == (total - 1) as f64
                            && number(item, "amount") == amount(n, total - 1) as f64
                    });
                    if number(doc, "count") != total as f64 || items.len() != kept || !last_ok {
                        return wrong(
                            key,
                            doc,
                            format!(
                                "count {total}, {kept} items, the last of version {}",
                                total - 1
                            ),
                        );
                    }
                }
            }
        }
        Kind::Aggregate => {
            let mut expected: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
            for n in 0..args.streams {
                let total = stream_events(n, args.events, args.streams);
                let entry = expected.entry(region(n)).or_default();
                entry.0 += total;
                entry.1 += (0..total).map(|version| amount(n, version)).sum::<u64>();
            }
            if docs.len() != expected.len() {
                return Err(format!(
                    "the read model is wrong: {} documents, expected one per region ({})",
                    docs.len(),
                    expected.len()
                ));
            }
            for (key, doc) in &docs {
                let Some((count, sum)) = expected.get(key.as_str()) else {
                    return Err(format!(
                        "the read model is wrong: a document has key {key}, not a region of the fill"
                    ));
                };
                if number(doc, "events") != *count as f64 || number(doc, "amount") != *sum as f64 {
                    return wrong(key, doc, format!("events {count}, amount {sum}"));
                }
            }
        }
    }
    Ok(docs.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> ProjectionArgs {
        ProjectionArgs {
            data_dir: dir.to_owned(),
            events: 2_000,
            streams: 30,
            event_bytes: 100,
            events_per_append: 7,
            kind: Kind::State,
            batch_events: Some(100),
            output: Output::Json,
        }
    }

    #[tokio::test]
    async fn bad_arguments_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = args(dir.path());
        for (bad, flag) in [
            (
                ProjectionArgs {
                    events: 0,
                    ..base.clone()
                },
                "--events",
            ),
            (
                ProjectionArgs {
                    streams: STREAMS_MAX + 1,
                    ..base.clone()
                },
                "--streams",
            ),
            (
                ProjectionArgs {
                    event_bytes: 10,
                    ..base.clone()
                },
                "--event-bytes",
            ),
            (
                ProjectionArgs {
                    events_per_append: 0,
                    ..base.clone()
                },
                "--events-per-append",
            ),
            (
                ProjectionArgs {
                    batch_events: Some(BATCH_EVENTS_MAX_LIMIT + 1),
                    ..base.clone()
                },
                "--batch-events",
            ),
            (
                ProjectionArgs {
                    streams: 3_000,
                    ..base.clone()
                },
                "--streams",
            ),
            (
                ProjectionArgs {
                    events_per_append: 1_000,
                    event_bytes: EVENT_BYTES_MAX,
                    ..base.clone()
                },
                "--events-per-append",
            ),
        ] {
            let error = run(bad).await.unwrap_err();
            assert!(error.contains(flag), "{flag}: {error}");
        }
    }

    #[test]
    fn event_data_has_the_asked_size_and_the_amount() {
        let data: Value = serde_json::from_str(&event_data(5, 3, 100)).unwrap();
        assert_eq!(event_data(5, 3, 100).len(), 100);
        assert_eq!(data["amount"], amount(5, 3));
        assert_eq!(data["region"], region(5));
        assert_eq!(
            (0..7).map(|n| stream_events(n, 20, 7)).sum::<u64>(),
            20,
            "every event belongs to a stream"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_kind_catches_up_checked_and_the_fill_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        for kind in [Kind::State, Kind::Aggregate, Kind::List] {
            run(ProjectionArgs {
                kind,
                ..args(dir.path())
            })
            .await
            .unwrap();
        }
        let fill = read_fill(&dir.path().join(FILL_FILE)).unwrap().unwrap();
        assert_eq!(fill.events, 2_000);
        // Only the event store and the fill record remain: the read models were removed.
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["events", "fill.json"]);
        // Another shape over the same events is refused, not measured against the wrong data.
        let error = run(ProjectionArgs {
            streams: 31,
            ..args(dir.path())
        })
        .await
        .unwrap_err();
        assert!(error.contains("already holds"), "{error}");
    }
}
