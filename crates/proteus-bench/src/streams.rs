//! `proteus bench streams`: event-sourcing appends with exact expected versions, beside
//! PostgreSQL and NATS JetStream doing the same.
//!
//! **Appends.** `--connections` writers each own a slice of `--streams` streams and append
//! `--events-per-append` events to them in turn, each append carrying the exact version the
//! writer last saw (the optimistic-concurrency write every event-sourced command makes). Against
//! Proteus each writer is one HTTP/1.1 keep-alive connection posting to `/v1/streams/{s}`;
//! against PostgreSQL (`--postgres`) each is one connection running one transaction per append
//! that sends every event's id and data (arrays, inserted with `unnest`), as the code of a team
//! writing its own event table would, twice: into a minimal table (a `bigserial` position, unique `(stream, version)`) and into a
//! table with the indexes Proteus's PostgreSQL event store keeps for what it promises (the
//! position as primary key for the `$all` feed, unique `(stream, event id)` for idempotent
//! retries, `(category, position)` for category reads), `synchronous_commit` on. Against JetStream
//! (`--nats`) each is one NATS connection publishing into a fresh file-backed stream (deleted at
//! the end) with one subject per event stream: an append is ONE message holding its events (the
//! binary framing of Proteus's NATS event store, so it is as atomic as a Proteus append there)
//! with `Nats-Expected-Last-Subject-Sequence` set to the sequence of the subject's last message,
//! which the writer knows from its previous acknowledgement (0 for a new subject); the writer
//! waits for each acknowledgement. Every append must succeed: a conflict (a unique violation, a
//! wrong last subject sequence) or error stops the run, so the counts are of durable, checked
//! writes.
//!
//! **Aggregate reads.** Then one stream of `--aggregate-events` events is written and loaded
//! whole, back to back for `--seconds`: `GET /v1/streams/{s}/aggregate` against
//! `SELECT … WHERE stream = $1 ORDER BY version`, and against an ephemeral JetStream pull
//! consumer of the subject (no acks, memory storage; created, read to the end and deleted per
//! load). The report gives latency percentiles.
//!
//! **In-process** (`--nats-adapter`): the same appends and loads through Proteus's NATS event
//! store used as a library (`nats_adapter`), no HTTP in between.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::json;

use crate::Output;
use crate::limits::in_range;
use crate::report::{latency_histogram, render_rows};

mod nats_adapter;

#[derive(Args, Debug, Clone)]
pub struct StreamsArgs {
    /// The Proteus server: http://HOST:PORT.
    #[arg(long, value_name = "URL")]
    pub target: String,
    /// Also measure PostgreSQL, e.g. postgres://postgres@127.0.0.1:5432/test.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// Also measure NATS JetStream directly, e.g. nats://127.0.0.1:4222.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// Also measure Proteus's NATS event store in-process (no HTTP), e.g.
    /// nats://127.0.0.1:4222: beside `--nats`, what the adapter costs apart from the server.
    #[arg(long, value_name = "URL")]
    pub nats_adapter: Option<String>,
    /// The id cache of `--nats-adapter`'s store, as `proteus serve --nats-id-cache-events-max`
    /// [default: the store's].
    #[arg(long, value_name = "IDS")]
    pub nats_id_cache_events_max: Option<usize>,
    /// Replicas of the stream JetStream is measured on directly (`--nats`), and of
    /// `--nats-adapter`'s: 3 on a cluster, to compare with a Proteus server started with
    /// `--nats-replicas 3`.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub nats_replicas: usize,
    /// Distinct streams appended to.
    #[arg(long, default_value_t = 10_000)]
    pub streams: usize,
    #[arg(long, default_value_t = 10)]
    pub events_per_append: usize,
    /// Bytes of each event's data.
    #[arg(long, default_value_t = 100)]
    pub event_bytes: usize,
    /// Concurrent writers (connections).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Duration of each phase, per system.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Events of the aggregate the read phase loads.
    #[arg(long, default_value_t = 1_000)]
    pub aggregate_events: usize,
    /// A process whose CPU time to report for each append phase, as NAME=PID (repeatable),
    /// e.g. `--cpu-of proteus=$(pgrep -f 'proteus serve') --cpu-of nats=$(pgrep nats-server)`:
    /// on a shared machine it shows where each system's time went. The bench's own CPU time is
    /// always reported.
    #[arg(long, value_name = "NAME=PID")]
    pub cpu_of: Vec<String>,
    /// Measure the peers (`--postgres`, `--nats`) before Proteus rather than after. Every phase
    /// starts after sync(2), so none pays for the write-back of the one before; alternate the
    /// order between runs anyway, to see any bias left (a machine warming up, say).
    #[arg(long)]
    pub peers_first: bool,
    /// Empty the kernel's page cache before each phase too (needs root), so the phase run
    /// second does not find memory the first one filled with its files.
    #[arg(long)]
    pub drop_caches: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

pub const STREAMS_MAX: usize = 10_000_000;
pub const EVENTS_PER_APPEND_MAX: usize = 1_000;
pub const EVENT_BYTES_MAX: usize = 64 * 1024;
pub const CONNECTIONS_MAX: usize = 1_024;
pub const SECONDS_MAX: u64 = 3_600;
pub const AGGREGATE_EVENTS_MAX: usize = 10_000;

#[derive(Debug, Serialize)]
pub struct SystemReport {
    pub system: String,
    pub appends: u64,
    pub events: u64,
    pub seconds: f64,
    pub events_per_s: f64,
    pub append_p50_ms: f64,
    pub append_p99_ms: f64,
    pub aggregate_reads: u64,
    pub aggregate_p50_ms: f64,
    pub aggregate_p99_ms: f64,
    /// CPU seconds each watched process (and `bench`) used during the append phase.
    pub append_cpu_s: Vec<(String, f64)>,
}

impl SystemReport {
    /// A system's report from its append phase and aggregate-read latencies.
    fn new(
        system: impl Into<String>,
        events: u64,
        appended: Appended,
        reads: &hdrhistogram::Histogram<u64>,
    ) -> Self {
        SystemReport {
            system: system.into(),
            appends: appended.appends,
            events,
            seconds: appended.seconds,
            events_per_s: events as f64 / appended.seconds,
            append_p50_ms: ms(&appended.latencies, 0.5),
            append_p99_ms: ms(&appended.latencies, 0.99),
            append_cpu_s: appended.cpu_s,
            aggregate_reads: reads.len(),
            aggregate_p50_ms: ms(reads, 0.5),
            aggregate_p99_ms: ms(reads, 0.99),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct StreamsReport {
    pub streams: usize,
    pub events_per_append: usize,
    pub connections: usize,
    pub aggregate_events: usize,
    pub systems: Vec<SystemReport>,
}

impl StreamsReport {
    fn table(&self) -> String {
        let rows = vec![(
            "workload",
            format!(
                "{} streams, {} events per append, {} connections, aggregate of {} events",
                self.streams, self.events_per_append, self.connections, self.aggregate_events
            ),
        )];
        let lines: Vec<(String, String)> = self
            .systems
            .iter()
            .flat_map(|s| {
                [
                    (
                        format!("{} appends", s.system),
                        format!(
                            "{:.0} events/s ({} events in {:.1} s), append p50 {:.2} ms, p99 {:.2} ms",
                            s.events_per_s, s.events, s.seconds, s.append_p50_ms, s.append_p99_ms
                        ),
                    ),
                    (
                        format!("{} append CPU", s.system),
                        s.append_cpu_s
                            .iter()
                            .map(|(name, seconds)| {
                                format!(
                                    "{name} {seconds:.1} s ({:.2} s per million events)",
                                    seconds * 1e6 / s.events.max(1) as f64
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                    (
                        format!("{} aggregate read", s.system),
                        format!(
                            "p50 {:.3} ms, p99 {:.3} ms ({} reads)",
                            s.aggregate_p50_ms, s.aggregate_p99_ms, s.aggregate_reads
                        ),
                    ),
                ]
            })
            .collect();
        let mut out: Vec<(&str, String)> = rows;
        out.extend(lines.iter().map(|(k, v)| (k.as_str(), v.clone())));
        render_rows(&out)
    }
}

pub async fn run(args: StreamsArgs) -> Result<(), String> {
    in_range("--streams", args.streams, 1, STREAMS_MAX)?;
    in_range(
        "--events-per-append",
        args.events_per_append,
        1,
        EVENTS_PER_APPEND_MAX,
    )?;
    in_range("--event-bytes", args.event_bytes, 1, EVENT_BYTES_MAX)?;
    in_range("--connections", args.connections, 1, CONNECTIONS_MAX)?;
    in_range("--seconds", args.seconds, 1, SECONDS_MAX)?;
    if ![1, 3, 5].contains(&args.nats_replicas) {
        return Err(format!(
            "--nats-replicas must be 1, 3 or 5 (JetStream's choices), got {}",
            args.nats_replicas
        ));
    }
    in_range(
        "--aggregate-events",
        args.aggregate_events,
        1,
        AGGREGATE_EVENTS_MAX,
    )?;
    if args.streams < args.connections {
        return Err(format!(
            "--streams ({}) must be at least --connections ({}): each writer owns its streams",
            args.streams, args.connections
        ));
    }
    let target: crate::Target = args.target.parse()?;
    let crate::Target::Http(url) = &target else {
        return Err(format!(
            "streams measures Proteus over HTTP (--target http://HOST:PORT), not {target}"
        ));
    };
    // Stream names unique to this run, so runs against one server do not collide.
    let run = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let mut systems = Vec::new();
    if !args.peers_first {
        settle_memory(&args).await?;
        systems.push(proteus::measure(url, &run, &args).await?);
    }
    if let Some(postgres) = &args.postgres {
        for shape in [postgres::Table::Minimal, postgres::Table::SameIndexes] {
            settle_memory(&args).await?;
            systems.push(postgres::measure(postgres, &run, &args, shape).await?);
        }
    }
    if let Some(nats) = &args.nats {
        settle_memory(&args).await?;
        systems.push(nats::measure(nats, &run, &args).await?);
    }
    if let Some(nats) = &args.nats_adapter {
        settle_memory(&args).await?;
        systems.push(nats_adapter::measure(nats, &run, &args).await?);
    }
    if args.peers_first {
        settle_memory(&args).await?;
        systems.insert(0, proteus::measure(url, &run, &args).await?);
    }
    let report = StreamsReport {
        streams: args.streams,
        events_per_append: args.events_per_append,
        connections: args.connections,
        aggregate_events: args.aggregate_events,
        systems,
    };
    crate::report::print(args.output, &report, StreamsReport::table);
    Ok(())
}

/// Writes every dirty page of the machine to disk (sync(2)) before a phase, so no phase pays
/// for the write-back of the one before it; with `--drop-caches`, also empties the page cache,
/// so each phase starts with the memory the one before found. Without the sync, a 1 KiB run
/// left about 1.8 GB dirty after the first phase, and the kernel's flusher wrote it back during
/// the second, whose server then spent up to 1.7 times as much CPU per event as in the same
/// phase run first.
async fn settle_memory(args: &StreamsArgs) -> Result<(), String> {
    let drop_caches = args.drop_caches;
    tokio::task::spawn_blocking(move || {
        if drop_caches {
            crate::startup::drop_caches()
        } else {
            // SAFETY: sync(2) takes no arguments and cannot fail.
            unsafe { libc::sync() };
            Ok(())
        }
    })
    .await
    .map_err(|e| format!("settling memory before a phase failed: {e}"))?
}

/// The data of every event: a JSON object of about `bytes` bytes.
fn event_data(bytes: usize) -> String {
    json!({ "payload": "x".repeat(bytes.saturating_sub(16)) }).to_string()
}

fn ms(histogram: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    histogram.value_at_quantile(q) as f64 / 1_000.0
}

/// One writer of the append phase, on one connection to the system measured.
trait Writer: Send + 'static {
    /// Appends `--events-per-append` events to stream number `stream`, the `slot`-th of the
    /// streams this writer owns (what it keeps per stream is indexed by slot), at the version
    /// it last saw; any refusal is an error that stops the run.
    fn append(
        &mut self,
        stream: usize,
        slot: usize,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

/// What the append phase did, over every writer.
struct Appended {
    appends: u64,
    latencies: hdrhistogram::Histogram<u64>,
    seconds: f64,
    /// CPU seconds of each watched process and of the bench during the phase.
    cpu_s: Vec<(String, f64)>,
}

/// The processes `--cpu-of` names, and the bench itself, as (name, `/proc` stat path).
fn watched(args: &StreamsArgs) -> Result<Vec<(String, String)>, String> {
    let mut out = vec![("bench".to_owned(), "/proc/self/stat".to_owned())];
    for entry in &args.cpu_of {
        let Some((name, pid)) = entry.split_once('=') else {
            return Err(format!("--cpu-of wants NAME=PID, got {entry:?}"));
        };
        let pid: u32 = pid
            .trim()
            .parse()
            .map_err(|_| format!("--cpu-of {entry:?}: the PID is not a number"))?;
        let path = format!("/proc/{pid}/stat");
        cpu_seconds(&path).map_err(|e| format!("--cpu-of {entry:?}: {e}"))?;
        out.push((name.to_owned(), path));
    }
    Ok(out)
}

/// User plus system CPU seconds a process has used, from its `/proc/PID/stat`.
fn cpu_seconds(path: &str) -> Result<f64, String> {
    // Linux reports them in clock ticks, 100 per second on every mainstream kernel.
    const TICKS_PER_S: f64 = 100.0;
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    // Fields after the command name (in parentheses, which may hold spaces): state is the
    // first, utime the 12th and stime the 13th.
    let after = text.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => Ok((user + system) as f64 / TICKS_PER_S),
        _ => Err(format!("{path} does not read as a process stat line")),
    }
}

fn cpu_snapshot(watched: &[(String, String)]) -> Vec<f64> {
    watched
        .iter()
        .map(|(_, path)| cpu_seconds(path).unwrap_or(f64::NAN))
        .collect()
}

/// The append phase, the same for every system: `--connections` writers, each opened by
/// `open(how many streams it owns)`, own every `--connections`-th of the `--streams` streams
/// and append to them in turn until `--seconds` have passed.
async fn append_phase<W, F, Fut>(args: &StreamsArgs, open: F) -> Result<Appended, String>
where
    W: Writer,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<W, String>> + Send + 'static,
{
    let watched = watched(args)?;
    let cpu_before = cpu_snapshot(&watched);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..args.connections {
        let owned: Vec<usize> = (writer..args.streams).step_by(args.connections).collect();
        let opening = open(owned.len());
        tasks.push(tokio::spawn(async move {
            let mut writer = opening.await?;
            let mut latencies = latency_histogram();
            let mut appends = 0u64;
            let mut turn = 0usize;
            while Instant::now() < deadline {
                let slot = turn % owned.len();
                turn += 1;
                let sent = Instant::now();
                writer.append(owned[slot], slot).await?;
                latencies.saturating_record((sent.elapsed().as_micros() as u64).max(1));
                appends += 1;
            }
            Ok::<_, String>((appends, latencies))
        }));
    }
    let (appends, latencies) = crate::report::join_counted(tasks, "writer").await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = cpu_snapshot(&watched);
    let cpu_s = watched
        .into_iter()
        .zip(cpu_before.iter().zip(&cpu_after))
        .map(|((name, _), (before, after))| (name, after - before))
        .collect();
    Ok(Appended {
        appends,
        latencies,
        seconds,
        cpu_s,
    })
}

mod proteus {
    use super::*;

    async fn connect(
        authority: &str,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("setting TCP_NODELAY failed: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {authority} failed: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("connection error: {e:?}");
            }
        });
        Ok(sender)
    }

    async fn send(
        sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        request: Request<Full<Bytes>>,
    ) -> Result<(hyper::StatusCode, Bytes), String> {
        // The connection finishes the previous exchange before it takes the next request.
        sender
            .ready()
            .await
            .map_err(|e| format!("the connection closed: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("a request failed: {e:?}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading an answer failed: {e}"))?
            .to_bytes();
        Ok((status, body))
    }

    fn append_request(
        authority: &str,
        stream: &str,
        expected: Option<u64>,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, String> {
        let expected = expected.map_or("no_stream".to_owned(), |v| v.to_string());
        Request::post(format!("/v1/streams/{stream}?expected_version={expected}"))
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| format!("building a request failed: {e}"))
    }

    /// `[{"id", "type", "data"}, …]` written straight into one buffer: the load generator
    /// shares the machine with the server, so what it spends is taken from Proteus.
    fn events_body(events: usize, data: &str) -> Bytes {
        const BEFORE_ID: &[u8] = br#"{"id":""#;
        const BEFORE_DATA: &[u8] = br#"","type":"BenchEvent","data":"#;
        let event_bytes = BEFORE_ID.len() + 36 + BEFORE_DATA.len() + data.len() + 2;
        let mut body = Vec::with_capacity(2 + events * event_bytes);
        body.push(b'[');
        for index in 0..events {
            if index > 0 {
                body.push(b',');
            }
            body.extend_from_slice(BEFORE_ID);
            let mut id = uuid::Uuid::encode_buffer();
            let id = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut id);
            body.extend_from_slice(id.as_bytes());
            body.extend_from_slice(BEFORE_DATA);
            body.extend_from_slice(data.as_bytes());
            body.push(b'}');
        }
        body.push(b']');
        Bytes::from(body)
    }

    /// A writer over one HTTP/1.1 keep-alive connection to Proteus.
    struct HttpWriter {
        sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        authority: String,
        data: String,
        run: String,
        per_append: usize,
        /// Each owned stream's last version, as the writer's appends left it.
        versions: Vec<Option<u64>>,
    }

    impl Writer for HttpWriter {
        async fn append(&mut self, stream: usize, slot: usize) -> Result<(), String> {
            let stream = format!("bench{}-{stream}", self.run);
            let request = append_request(
                &self.authority,
                &stream,
                self.versions[slot],
                events_body(self.per_append, &self.data),
            )?;
            let (status, body) = send(&mut self.sender, request).await?;
            if status != hyper::StatusCode::CREATED {
                return Err(format!(
                    "an append to {stream} was answered {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                ));
            }
            let per_append = self.per_append as u64;
            self.versions[slot] =
                Some(self.versions[slot].map_or(per_append - 1, |v| v + per_append));
            Ok(())
        }
    }

    pub async fn measure(url: &str, run: &str, args: &StreamsArgs) -> Result<SystemReport, String> {
        let authority = url
            .strip_prefix("http://")
            .unwrap_or(url)
            .trim_end_matches('/')
            .to_owned();
        let data = event_data(args.event_bytes);
        let per_append = args.events_per_append;
        let appended = append_phase(args, |owned| {
            let (authority, data, run) = (authority.clone(), data.clone(), run.to_owned());
            async move {
                Ok(HttpWriter {
                    sender: connect(&authority).await?,
                    authority,
                    data,
                    run,
                    per_append,
                    versions: vec![None; owned],
                })
            }
        })
        .await?;
        let events = appended.appends * args.events_per_append as u64;

        // The aggregate: written in appends of at most 1,000 events and
        // `AGGREGATE_APPEND_BYTES_MAX`, then loaded whole repeatedly.
        let mut sender = connect(&authority).await?;
        let stream = format!("bench{run}-aggregate");
        let per_append = aggregate_events_per_append(args.event_bytes);
        let mut expected = None;
        let mut written = 0;
        while written < args.aggregate_events {
            let count = (args.aggregate_events - written).min(per_append);
            let request = append_request(&authority, &stream, expected, events_body(count, &data))?;
            let (status, body) = send(&mut sender, request).await?;
            if status != hyper::StatusCode::CREATED {
                return Err(format!(
                    "writing the aggregate was answered {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                ));
            }
            written += count;
            expected = Some(written as u64 - 1);
        }
        let mut reads = latency_histogram();
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        while Instant::now() < deadline {
            let request = Request::get(format!("/v1/streams/{stream}/aggregate"))
                .header(hyper::header::HOST, &authority)
                .body(Full::new(Bytes::new()))
                .map_err(|e| format!("building a request failed: {e}"))?;
            let sent = Instant::now();
            let (status, body) = send(&mut sender, request).await?;
            reads.saturating_record((sent.elapsed().as_micros() as u64).max(1));
            if status != hyper::StatusCode::OK {
                return Err(format!("an aggregate read was answered {status}"));
            }
            // Check the whole aggregate came back, not an error or a page of it.
            let aggregate: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| format!("an aggregate read is not JSON: {e}"))?;
            let loaded = aggregate["events"].as_array().map_or(0, Vec::len);
            if loaded != args.aggregate_events {
                return Err(format!(
                    "an aggregate read returned {loaded} events, not {}",
                    args.aggregate_events
                ));
            }
        }
        Ok(SystemReport::new("proteus", events, appended, &reads))
    }

    /// The most bytes of events one append of the aggregate carries: within the 1 MB one
    /// message carries on a NATS server left at its default, so the aggregate can be written to
    /// Proteus whatever its event store's backend (the store on NATS refuses larger appends,
    /// one append being one message).
    const AGGREGATE_APPEND_BYTES_MAX: usize = 768 * 1024;

    /// Events per append of the aggregate, for events of `data_bytes` of data.
    fn aggregate_events_per_append(data_bytes: usize) -> usize {
        // An event as the store frames it: about 64 bytes of id, type and lengths, and its data.
        (AGGREGATE_APPEND_BYTES_MAX / (data_bytes + 64)).clamp(1, 1_000)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn aggregate_appends_fit_in_one_nats_message_of_the_default_size() {
            // Small events: appends of 1,000, as before the bound.
            assert_eq!(aggregate_events_per_append(100), 1_000);
            // 1 KiB: the 500 events scripts/bench-eventstore-nats asks for still in one append,
            // and far below the 1,048,576 bytes of a default max_payload.
            let per_append = aggregate_events_per_append(1024);
            assert!(per_append >= 500, "{per_append}");
            assert!(per_append * (1024 + 100) < 900_000, "{per_append}");
            // The largest events the bench makes: one at a time.
            assert!(aggregate_events_per_append(EVENT_BYTES_MAX) >= 1);
        }

        #[test]
        fn an_events_body_is_a_json_array_of_events_with_distinct_ids() {
            let data = event_data(100);
            let body = events_body(3, &data);
            let events: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
            assert_eq!(events.len(), 3);
            assert_eq!(events[2]["type"], "BenchEvent");
            assert_eq!(events[2]["data"].to_string(), data);
            assert_ne!(events[0]["id"], events[1]["id"]);
            assert_eq!(events[0]["id"].as_str().unwrap().len(), 36);
        }
    }
}

mod postgres {
    use tokio_postgres::types::Json;

    use super::*;
    use crate::targets::postgres::connect_for;

    /// The table the appends go to.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Table {
        /// What the appends need and no more: versions unique per stream.
        Minimal,
        /// Also the indexes behind what Proteus's PostgreSQL event store promises: the `$all`
        /// feed by position, idempotent retries by event id, category reads.
        SameIndexes,
    }

    /// A writer over one PostgreSQL connection: one transaction per append, the unique
    /// (stream, version) being the expected-version check. Each append sends every one of its
    /// events (an id and the data each), as a client of its own event table would, and as
    /// Proteus's clients do.
    struct SqlWriter {
        client: tokio_postgres::Client,
        insert: tokio_postgres::Statement,
        data: Box<serde_json::value::RawValue>,
        per_append: usize,
        /// Each owned stream's next version.
        next_versions: Vec<i64>,
    }

    impl Writer for SqlWriter {
        async fn append(&mut self, stream: usize, slot: usize) -> Result<(), String> {
            let stream = format!("bench-{stream}");
            let ids: Vec<String> = (0..self.per_append)
                .map(|_| uuid::Uuid::now_v7().to_string())
                .collect();
            let data: Vec<Json<&serde_json::value::RawValue>> =
                vec![Json(&*self.data); self.per_append];
            let transaction = self
                .client
                .transaction()
                .await
                .map_err(|e| format!("BEGIN failed: {e}"))?;
            transaction
                .execute(
                    &self.insert,
                    &[&stream, &self.next_versions[slot], &ids, &data],
                )
                .await
                .map_err(|e| format!("an append to {stream} failed: {e}"))?;
            transaction
                .commit()
                .await
                .map_err(|e| format!("COMMIT failed: {e}"))?;
            self.next_versions[slot] += self.per_append as i64;
            Ok(())
        }
    }

    pub async fn measure(
        url: &str,
        run: &str,
        args: &StreamsArgs,
        shape: Table,
    ) -> Result<SystemReport, String> {
        // A table of this run's own (the run id is lower-case hex), dropped at the end.
        let table = format!("proteus_bench_streams_{run}");
        let (system, columns) = match shape {
            Table::Minimal => (
                "postgresql",
                "position bigserial, stream text NOT NULL, version bigint NOT NULL, \
                 category text NOT NULL, id text NOT NULL, type text NOT NULL, data jsonb NOT NULL, \
                 PRIMARY KEY (stream, version)",
            ),
            Table::SameIndexes => (
                "postgresql-same-indexes",
                "position bigserial PRIMARY KEY, stream text NOT NULL, version bigint NOT NULL, \
                 category text NOT NULL, id text NOT NULL, type text NOT NULL, data jsonb NOT NULL, \
                 UNIQUE (stream, version), UNIQUE (stream, id)",
            ),
        };
        let index = match shape {
            Table::Minimal => String::new(),
            Table::SameIndexes => format!("CREATE INDEX ON {table} (category, position);"),
        };
        let setup = connect_for(url, "--postgres").await?;
        setup
            .batch_execute(&format!(
                "DROP table IF EXISTS {table}; CREATE table {table} ({columns}); {index}"
            ))
            .await
            .map_err(|e| format!("creating {table} failed: {e}"))?;
        let data: serde_json::Value =
            serde_json::from_str(&event_data(args.event_bytes)).map_err(|e| e.to_string())?;
        let raw_data = serde_json::value::to_raw_value(&data).map_err(|e| e.to_string())?;
        let per_append = args.events_per_append;
        let appended = append_phase(args, |owned| {
            let (url, data, table) = (url.to_owned(), raw_data.clone(), table.clone());
            async move {
                let client = connect_for(&url, "--postgres").await?;
                let insert = client
                    .prepare(&format!(
                        "INSERT INTO {table} (stream, version, category, id, type, data) \
                         SELECT $1, $2::bigint + e.n - 1, 'bench', e.id, 'BenchEvent', e.data \
                         FROM unnest($3::text[], $4::jsonb[]) WITH ORDINALITY AS e(id, data, n)"
                    ))
                    .await
                    .map_err(|e| format!("preparing the insert failed: {e}"))?;
                Ok(SqlWriter {
                    client,
                    insert,
                    data,
                    per_append,
                    next_versions: vec![0; owned],
                })
            }
        })
        .await?;
        let events = appended.appends * args.events_per_append as u64;

        setup
            .execute(
                &format!(
                    "INSERT INTO {table} (stream, version, category, id, type, data) \
                     SELECT 'aggregate', v, 'aggregate', gen_random_uuid()::text, 'BenchEvent', $1 \
                     FROM generate_series(0, $2::bigint - 1) AS v"
                ),
                &[&data, &(args.aggregate_events as i64)],
            )
            .await
            .map_err(|e| format!("writing the aggregate failed: {e}"))?;
        let select = setup
            .prepare(&format!(
                "SELECT position, version, id, type, data FROM {table} WHERE stream = 'aggregate' ORDER BY version"
            ))
            .await
            .map_err(|e| format!("preparing the read failed: {e}"))?;
        let mut reads = latency_histogram();
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        while Instant::now() < deadline {
            let sent = Instant::now();
            let rows = setup
                .query(&select, &[])
                .await
                .map_err(|e| format!("an aggregate read failed: {e}"))?;
            reads.saturating_record((sent.elapsed().as_micros() as u64).max(1));
            if rows.len() != args.aggregate_events {
                return Err(format!("an aggregate read returned {} rows", rows.len()));
            }
        }
        setup
            .batch_execute(&format!("DROP table IF EXISTS {table}"))
            .await
            .map_err(|e| format!("dropping {table} failed: {e}"))?;
        Ok(SystemReport::new(system, events, appended, &reads))
    }
}

mod nats {
    use async_nats::jetstream::message::PublishMessage;
    use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
    use bytes::{Buf, BufMut, BytesMut};
    use futures_util::StreamExt;

    use super::*;
    use crate::targets::nats::{connect_for, delete_stream};

    /// Bytes of a message's size left for its headers and subject.
    const HEADER_BYTES_RESERVED: usize = 1_024;
    /// Events of the aggregate per message at most, as Proteus appends it.
    const AGGREGATE_EVENTS_PER_MESSAGE_MAX: usize = 1_000;
    /// Fetches of a new consumer answered 503 (its leader not ready yet, on a cluster) before a
    /// load fails.
    const FRESH_CONSUMER_FETCHES_MAX: u32 = 100;

    /// How long one aggregate load may wait for messages.
    const LOAD_WAIT: Duration = Duration::from_secs(10);

    /// The payload of one append, framed as Proteus's NATS event store frames it: per event
    /// u16 id length, id, u16 type length, type, u8 flags (0), u32 data length, data.
    fn events_payload(events: usize, data: &str) -> Bytes {
        const TYPE: &str = "BenchEvent";
        let mut out =
            BytesMut::with_capacity(events * (2 + 36 + 2 + TYPE.len() + 1 + 4 + data.len()));
        for _ in 0..events {
            let id = uuid::Uuid::now_v7().to_string();
            out.put_u16(id.len() as u16);
            out.put_slice(id.as_bytes());
            out.put_u16(TYPE.len() as u16);
            out.put_slice(TYPE.as_bytes());
            out.put_u8(0);
            out.put_u32(data.len() as u32);
            out.put_slice(data.as_bytes());
        }
        out.freeze()
    }

    /// The number of events in a payload of [`events_payload`], checking its framing.
    fn events_in(payload: &Bytes) -> Result<usize, String> {
        fn take(rest: &mut Bytes, len: usize) -> Result<Bytes, String> {
            if rest.remaining() < len {
                return Err("a JetStream message's payload ends inside an event".to_owned());
            }
            Ok(rest.split_to(len))
        }
        let mut rest = payload.clone();
        let mut count = 0;
        while rest.has_remaining() {
            let len = take(&mut rest, 2)?.get_u16() as usize;
            take(&mut rest, len)?; // the id
            let len = take(&mut rest, 2)?.get_u16() as usize;
            take(&mut rest, len)?; // the type
            take(&mut rest, 1)?; // the flags
            let len = take(&mut rest, 4)?.get_u32() as usize;
            take(&mut rest, len)?; // the data
            count += 1;
        }
        Ok(count)
    }

    /// Publishes one append to `subject` whose last message is at `expected` (0: none) and
    /// returns the sequence it was stored at.
    async fn append(
        jetstream: &jetstream::Context,
        subject: &str,
        expected: u64,
        payload: Bytes,
    ) -> Result<u64, String> {
        let message = PublishMessage::build()
            .payload(payload)
            .expected_last_subject_sequence(expected);
        let ack = jetstream
            .send_publish(subject.to_owned(), message)
            .await
            .map_err(|e| format!("publishing an append to {subject} failed: {e}"))?
            .await
            .map_err(|e| {
                if e.kind() == PublishErrorKind::WrongLastSequence {
                    format!(
                        "an append to {subject} conflicted: its last message is not at sequence {expected} ({e})"
                    )
                } else {
                    format!("an append to {subject} was not acknowledged: {e}")
                }
            })?;
        Ok(ack.sequence)
    }

    /// A writer over one NATS connection: a subject per event stream, one message per append,
    /// published against the subject's last sequence from the writer's own acknowledgements.
    struct JetStreamWriter {
        jetstream: jetstream::Context,
        prefix: String,
        data: String,
        per_append: usize,
        /// The sequence of each owned subject's last message (0: none yet).
        last_sequences: Vec<u64>,
    }

    impl Writer for JetStreamWriter {
        async fn append(&mut self, stream: usize, slot: usize) -> Result<(), String> {
            let subject = format!("{}.s.{stream}", self.prefix);
            let payload = events_payload(self.per_append, &self.data);
            self.last_sequences[slot] = append(
                &self.jetstream,
                &subject,
                self.last_sequences[slot],
                payload,
            )
            .await?;
            Ok(())
        }
    }

    pub async fn measure(url: &str, run: &str, args: &StreamsArgs) -> Result<SystemReport, String> {
        // A stream of this run's own (the run id is lower-case hex), deleted at the end.
        let name = format!("PROTEUS_BENCH_STREAMS_{run}");
        let prefix = format!("proteus-bench-streams-{run}");
        let client = connect_for(url, "--nats").await?;
        let jetstream = jetstream::new(client.clone());
        let stream = jetstream
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{prefix}.>")],
                storage: stream::StorageType::File,
                num_replicas: args.nats_replicas,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                format!("creating JetStream stream {name} with {} replicas failed: {e}; is JetStream enabled (nats-server -js), in a cluster of as many servers?", args.nats_replicas)
            })?;
        let measured = measure_on(url, &client, &stream, &prefix, args).await;
        let deleted = delete_stream(&jetstream, &name).await;
        let report = measured?;
        deleted?;
        Ok(report)
    }

    async fn measure_on(
        url: &str,
        client: &async_nats::Client,
        stream: &stream::Stream,
        prefix: &str,
        args: &StreamsArgs,
    ) -> Result<SystemReport, String> {
        let data = event_data(args.event_bytes);
        // An append must fit one message, as on Proteus's NATS event store.
        let max_payload = client.server_info().max_payload;
        let append_bytes = events_payload(args.events_per_append, &data).len();
        if append_bytes + HEADER_BYTES_RESERVED > max_payload {
            return Err(format!(
                "an append of {} events of {} bytes is {append_bytes} bytes, more than NATS takes in one message (max_payload {max_payload} bytes, {HEADER_BYTES_RESERVED} kept for headers); raise max_payload in nats-server's configuration or lower --events-per-append or --event-bytes",
                args.events_per_append, args.event_bytes
            ));
        }
        let per_append = args.events_per_append;
        let appended = append_phase(args, |owned| {
            let (url, data, prefix) = (url.to_owned(), data.clone(), prefix.to_owned());
            async move {
                Ok(JetStreamWriter {
                    jetstream: jetstream::new(connect_for(&url, "--nats").await?),
                    prefix,
                    data,
                    per_append,
                    last_sequences: vec![0; owned],
                })
            }
        })
        .await?;
        let events = appended.appends * args.events_per_append as u64;

        // The aggregate: written in messages of at most 1,000 events (and `max_payload`), then
        // loaded whole repeatedly.
        let jetstream = jetstream::new(client.clone());
        let subject = format!("{prefix}.aggregate");
        let event_bytes = append_bytes.div_ceil(args.events_per_append);
        let per_message = ((max_payload - HEADER_BYTES_RESERVED) / event_bytes)
            .clamp(1, AGGREGATE_EVENTS_PER_MESSAGE_MAX);
        let mut last_sequence = 0;
        let mut written = 0;
        let mut messages = 0;
        while written < args.aggregate_events {
            let count = (args.aggregate_events - written).min(per_message);
            last_sequence = append(
                &jetstream,
                &subject,
                last_sequence,
                events_payload(count, &data),
            )
            .await
            .map_err(|e| format!("writing the aggregate failed: {e}"))?;
            written += count;
            messages += 1;
        }
        let mut reads = latency_histogram();
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        while Instant::now() < deadline {
            let sent = Instant::now();
            let loaded = load(stream, &subject, messages).await?;
            reads.saturating_record((sent.elapsed().as_micros() as u64).max(1));
            if loaded != args.aggregate_events {
                return Err(format!(
                    "an aggregate read returned {loaded} events, not {}",
                    args.aggregate_events
                ));
            }
        }
        Ok(SystemReport::new(
            "nats-jetstream",
            events,
            appended,
            &reads,
        ))
    }

    /// Loads the events of `subject` (`messages` messages) through an ephemeral pull consumer,
    /// deleted afterwards, and returns how many there are.
    async fn load(
        stream: &stream::Stream,
        subject: &str,
        messages: usize,
    ) -> Result<usize, String> {
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: subject.to_owned(),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                memory_storage: true,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating a consumer of {subject} failed: {e}"))?;
        let name = consumer.cached_info().name.clone();
        let mut loaded = 0;
        // On a cluster a new consumer's leader may not take pull requests yet: its first fetch
        // is answered 503 (no responders), and asked again.
        for attempt in 1..=FRESH_CONSUMER_FETCHES_MAX {
            let mut batch = consumer
                .batch()
                .max_messages(messages)
                .expires(LOAD_WAIT)
                .messages()
                .await
                .map_err(|e| format!("reading {subject} failed: {e}"))?;
            let mut unanswered = false;
            while let Some(message) = batch.next().await {
                let message = match message {
                    Ok(message) => message,
                    Err(e)
                        if loaded == 0
                            && attempt < FRESH_CONSUMER_FETCHES_MAX
                            && e.to_string().contains("503") =>
                    {
                        unanswered = true;
                        break;
                    }
                    Err(e) => return Err(format!("reading {subject} failed: {e}")),
                };
                loaded += events_in(&message.payload)?;
                let info = message.info().map_err(|e| {
                    format!("a message of {subject} has no JetStream metadata: {e}")
                })?;
                if info.pending == 0 {
                    break;
                }
            }
            if !unanswered {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match stream.delete_consumer(&name).await {
            Ok(_) => {}
            // Already gone (on a cluster, an ephemeral consumer whose first fetches were
            // refused can be removed by the server): nothing left to delete.
            Err(e) if e.to_string().contains("10014") => {}
            Err(e) => {
                return Err(format!(
                    "deleting the consumer {name} of {subject} failed: {e}"
                ));
            }
        }
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_from_proc_and_bad_watch_entries_are_named() {
        let before = cpu_seconds("/proc/self/stat").unwrap();
        let mut x = 0u64;
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let used = cpu_seconds("/proc/self/stat").unwrap() - before;
        assert!(used > 0.1, "300 ms of busy loop counted {used} s");
        assert!(cpu_seconds("/proc/0/stat").is_err());
        let args = |cpu_of: &str| StreamsArgs {
            target: "http://127.0.0.1:1".into(),
            postgres: None,
            nats: None,
            nats_adapter: None,
            nats_id_cache_events_max: None,
            nats_replicas: 1,
            streams: 1,
            events_per_append: 1,
            event_bytes: 1,
            connections: 1,
            seconds: 1,
            aggregate_events: 1,
            cpu_of: vec![cpu_of.into()],
            peers_first: false,
            drop_caches: false,
            output: Output::Table,
        };
        assert!(watched(&args("nats")).unwrap_err().contains("NAME=PID"));
        assert!(
            watched(&args("nats=x"))
                .unwrap_err()
                .contains("not a number")
        );
        let own = format!("me={}", std::process::id());
        assert_eq!(watched(&args(&own)).unwrap().len(), 2);
    }
}
