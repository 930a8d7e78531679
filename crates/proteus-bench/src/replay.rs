//! `proteus bench replay`: read a whole topic back with the largest pages, over HTTP or
//! in-process.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use proteus_log::port::{EventReader, Log, READ_BYTES_MAX, READ_EVENTS_MAX, TopicAdmin};
use proteus_log::{ReadFrom, ReadLimits, TopicConfig, TopicName};
use serde::{Deserialize, Serialize};

use crate::Output;
use crate::events::{EVENT_BYTES_MAX, EVENT_BYTES_MIN, EventFactory};
use crate::limits::in_range;
use crate::report::render_rows;
use crate::targets::{self, Bench, Target};

#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    /// http://HOST:PORT (Proteus over HTTP) or embedded:DIR (Proteus in this process).
    #[arg(long, value_name = "URL")]
    pub target: String,
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Events to read: the topic is first filled up to this many.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Size of the events appended by the fill.
    #[arg(long, default_value_t = 1024)]
    pub event_bytes: usize,
    /// Partitions of the topic, when it is created.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

pub const EVENTS_MAX: u64 = 1_000_000_000;
/// Events per append while filling.
const FILL_BATCH_EVENTS: usize = 1_000;
/// Concurrent appenders while filling.
const FILL_TASKS: usize = 8;
/// Producer numbers of the fill's event ids (the produce command uses 0 to 4095).
const FILL_PRODUCER_BASE: usize = 90_000;

#[derive(Debug, Serialize)]
pub struct ReplayReport {
    pub target: String,
    pub events: u64,
    /// Bytes read: the events' JSON in-process, the response bodies over HTTP.
    pub bytes: u64,
    pub seconds: f64,
    pub events_per_s: f64,
    pub mb_per_s: f64,
    /// Events appended first to reach `--events`.
    pub filled_events: u64,
}

impl ReplayReport {
    fn table(&self) -> String {
        let counted = if self.target.starts_with("proteus http") {
            "response bodies"
        } else {
            "event JSON"
        };
        render_rows(&[
            ("target", self.target.clone()),
            (
                "read",
                format!(
                    "{} events, {:.1} MB of {counted}, in {:.2} s (filled {} first)",
                    self.events,
                    self.bytes as f64 / 1e6,
                    self.seconds,
                    self.filled_events
                ),
            ),
            ("events/s", format!("{:.0}", self.events_per_s)),
            ("MB/s", format!("{:.1}", self.mb_per_s)),
        ])
    }
}

fn report(target: &Target, events: u64, bytes: u64, seconds: f64, filled: u64) -> ReplayReport {
    let seconds = seconds.max(1e-9);
    ReplayReport {
        target: target.to_string(),
        events,
        bytes,
        seconds,
        events_per_s: events as f64 / seconds,
        mb_per_s: bytes as f64 / seconds / 1e6,
        filled_events: filled,
    }
}

pub async fn run(args: ReplayArgs) -> Result<(), String> {
    in_range("--events", args.events, 1, EVENTS_MAX)?;
    in_range(
        "--event-bytes",
        args.event_bytes,
        EVENT_BYTES_MIN,
        EVENT_BYTES_MAX,
    )?;
    in_range(
        "--partitions",
        args.partitions,
        1,
        proteus_log::topic::PARTITIONS_MAX,
    )?;
    let topic = TopicName::parse(&args.topic).map_err(|e| format!("--topic: {e}"))?;
    let target: Target = args.target.parse()?;
    if let Target::Embedded(dir) = &target {
        let space = args.events.saturating_mul(args.event_bytes as u64 + 64);
        crate::limits::ensure_space(
            existing_ancestor(dir),
            space,
            "filling the topic for replay",
        )?;
    }
    let factory = Arc::new(EventFactory::new(args.event_bytes)?);
    let report = match &target {
        Target::Embedded(dir) => replay_embedded(dir, &topic, &args, factory).await?,
        Target::Http(url) => replay_http(url, &topic, &args, factory).await?,
        other => {
            return Err(format!(
                "replay reads Proteus (--target http://HOST:PORT or embedded:DIR), not {other}"
            ));
        }
    };
    crate::report::print(args.output, &report, ReplayReport::table);
    if report.events < args.events {
        return Err(format!(
            "read {} events where the topic was filled to {}; was it trimmed by retention meanwhile?",
            report.events, args.events
        ));
    }
    Ok(())
}

/// The nearest directory that exists, to ask for free space before creating `dir`.
fn existing_ancestor(dir: &Path) -> &Path {
    dir.ancestors()
        .find(|d| d.is_dir())
        .unwrap_or(Path::new("."))
}

/// Which `fill` batches task `task` of `tasks` appends: every `tasks`-th one.
fn fill_batches(task: usize, tasks: usize, batches: u64) -> impl Iterator<Item = u64> {
    (task as u64..batches).step_by(tasks)
}

/// Appends `events` more events through `FILL_TASKS` sinks of `bench`, in batches of
/// `FILL_BATCH_EVENTS`, each task taking every `FILL_TASKS`-th batch.
pub(crate) async fn fill(
    bench: &dyn Bench,
    factory: Arc<EventFactory>,
    events: u64,
) -> Result<(), String> {
    let batches = events.div_ceil(FILL_BATCH_EVENTS as u64);
    let mut tasks = Vec::new();
    for task in 0..FILL_TASKS {
        let mut sink = bench.sink().await?;
        let factory = factory.clone();
        tasks.push(tokio::spawn(async move {
            for b in fill_batches(task, FILL_TASKS, batches) {
                sink.stage(factory.batch(
                    FILL_PRODUCER_BASE + task,
                    b * FILL_BATCH_EVENTS as u64,
                    FILL_BATCH_EVENTS,
                ))?;
                sink.send()
                    .await
                    .map_err(|e| format!("filling the topic failed: {e}"))?;
            }
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| format!("a fill task failed: {e}"))??;
    }
    Ok(())
}

async fn replay_embedded(
    dir: &Path,
    topic: &TopicName,
    args: &ReplayArgs,
    factory: Arc<EventFactory>,
) -> Result<ReplayReport, String> {
    // Durability fsync: the fill's large batches keep it fast enough.
    let log = targets::embedded::open(dir, proteus_log_embedded::Durability::Fsync).await?;
    let result = replay_embedded_open(&log, topic, args, factory).await;
    let closed = log
        .shutdown()
        .await
        .map_err(|e| format!("shutting the log down failed: {e}"));
    let (events, bytes, seconds, filled) = result?;
    closed?;
    Ok(report(
        &Target::Embedded(dir.to_owned()),
        events,
        bytes,
        seconds,
        filled,
    ))
}

async fn replay_embedded_open(
    log: &proteus_log_embedded::EmbeddedLog,
    topic: &TopicName,
    args: &ReplayArgs,
    factory: Arc<EventFactory>,
) -> Result<(u64, u64, f64, u64), String> {
    let config = TopicConfig {
        partitions: args.partitions,
        ..TopicConfig::default()
    };
    targets::embedded::ensure_topic(log, topic, config).await?;
    let held = |d: &proteus_log::TopicDescription| {
        d.partitions
            .iter()
            .map(|p| p.next_offset - p.first_offset)
            .sum::<u64>()
    };
    let describe = || async {
        log.describe_topic(topic)
            .await
            .map_err(|e| format!("describing topic '{topic}' failed: {e}"))
    };
    let have = held(&describe().await?);
    let filled = args.events.saturating_sub(have);
    if filled > 0 {
        eprintln!("filling topic '{topic}' with {filled} events…");
        let bench = targets::EmbeddedBench::on(log.clone(), topic.clone());
        fill(&bench, factory, filled).await?;
    }
    let description = describe().await?;
    let started = Instant::now();
    let (mut events, mut bytes) = (0u64, 0u64);
    let limits = ReadLimits {
        events_max: READ_EVENTS_MAX,
        bytes_max: READ_BYTES_MAX,
    };
    for partition in &description.partitions {
        let mut from = partition.first_offset;
        while from < partition.next_offset {
            let batch = log
                .read(topic, partition.partition, ReadFrom::Offset(from), limits)
                .await
                .map_err(|e| {
                    format!(
                        "reading partition {} from offset {from} failed: {e}",
                        partition.partition
                    )
                })?;
            if batch.next_offset <= from {
                return Err(format!(
                    "reading partition {} made no progress at offset {from}",
                    partition.partition
                ));
            }
            events += batch.events.len() as u64;
            bytes += batch
                .events
                .iter()
                .map(|e| e.json.len() as u64)
                .sum::<u64>();
            from = batch.next_offset;
        }
    }
    Ok((events, bytes, started.elapsed().as_secs_f64(), filled))
}

/// A page of `GET …/partitions/{p}/events`: events are counted, not decoded.
#[derive(Deserialize)]
struct Page {
    events: Vec<serde::de::IgnoredAny>,
    next_offset: u64,
}

#[derive(Deserialize)]
struct TopicInfo {
    partitions: Vec<PartitionInfo>,
}

#[derive(Deserialize)]
struct PartitionInfo {
    partition: u32,
    first_offset: u64,
    next_offset: u64,
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    what: &str,
) -> Result<(T, usize), String> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{what} failed: {e}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("{what} failed while reading the answer: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "{what} failed: {}",
            targets::problem_message(status, &body)
        ));
    }
    let parsed = serde_json::from_slice(&body)
        .map_err(|e| format!("{what}: the answer is not the expected JSON: {e}"))?;
    Ok((parsed, body.len()))
}

async fn replay_http(
    url: &str,
    topic: &TopicName,
    args: &ReplayArgs,
    factory: Arc<EventFactory>,
) -> Result<ReplayReport, String> {
    let http = targets::http::client(FILL_TASKS)?;
    let topic_url = format!("{url}/v1/topics/{topic}");
    let exists = targets::connecting(&format!("Proteus at {url}"), async {
        http.get(&topic_url)
            .send()
            .await
            .map(|r| r.status().is_success())
            .map_err(|e| targets::http::unreachable(url, &e))
    })
    .await?;
    if !exists {
        targets::http::put_topic(&http, url, topic.as_str(), args.partitions).await?;
    }
    let describe = || get_json::<TopicInfo>(&http, &topic_url, "describing the topic");
    let held = |t: &TopicInfo| {
        t.partitions
            .iter()
            .map(|p| p.next_offset.saturating_sub(p.first_offset))
            .sum::<u64>()
    };
    let have = held(&describe().await?.0);
    let filled = args.events.saturating_sub(have);
    if filled > 0 {
        eprintln!("filling topic '{topic}' with {filled} events…");
        let bench = targets::HttpBench::on(http.clone(), url, topic.as_str());
        fill(&bench, factory, filled).await?;
    }
    let description = describe().await?.0;
    let started = Instant::now();
    let (mut events, mut bytes) = (0u64, 0u64);
    for partition in &description.partitions {
        let mut from = partition.first_offset;
        while from < partition.next_offset {
            let page_url = format!(
                "{topic_url}/partitions/{}/events?from={from}&limit={READ_EVENTS_MAX}&bytes_max={READ_BYTES_MAX}",
                partition.partition
            );
            let what = format!(
                "reading partition {} from offset {from}",
                partition.partition
            );
            let (page, body_bytes) = get_json::<Page>(&http, &page_url, &what).await?;
            if page.events.is_empty() || page.next_offset <= from {
                return Err(format!("{what} made no progress"));
            }
            events += page.events.len() as u64;
            bytes += body_bytes as u64;
            from = page.next_offset;
        }
    }
    Ok(report(
        &Target::Http(url.to_owned()),
        events,
        bytes,
        started.elapsed().as_secs_f64(),
        filled,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_tasks_share_the_batches_without_overlap() {
        let mut all: Vec<u64> = (0..3).flat_map(|t| fill_batches(t, 3, 10)).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn pages_are_counted_without_decoding_events() {
        let body = br#"{"events":[{"partition":0,"offset":5,"append_time_ms":1,"event":{"id":"a"}},{"partition":0,"offset":6,"append_time_ms":1,"event":{"id":"b"}}],"next_offset":7,"first_offset":0,"end_offset":9}"#;
        let page: Page = serde_json::from_slice(body).unwrap();
        assert_eq!((page.events.len(), page.next_offset), (2, 7));
    }

    #[test]
    fn the_report_table_says_what_bytes_were_counted() {
        let r = report(&Target::Http("http://h:1".into()), 10, 2_000_000, 2.0, 0);
        assert_eq!(r.events_per_s, 5.0);
        assert_eq!(r.mb_per_s, 1.0);
        assert!(r.table().contains("response bodies"), "{}", r.table());
        let r = report(&Target::Embedded("/d".into()), 10, 10, 1.0, 3);
        assert!(r.table().contains("event JSON"));
        assert!(r.table().contains("filled 3 first"));
    }
}
