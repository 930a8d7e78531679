//! `proteus bench produce`: concurrent producers appending batches for a fixed time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use proteus_log::TopicName;
use proteus_log_embedded::Durability;

use crate::Output;
use crate::events::{EVENT_BYTES_MAX, EVENT_BYTES_MIN, EventFactory};
use crate::limits::in_range;
use crate::report::{ProduceCounts, ProduceReport, ProduceShape, latency_histogram};
use crate::targets::{Bench, Setup, Sink, Target, check_table_name, prepare};

#[derive(Args, Debug, Clone)]
pub struct ProduceArgs {
    /// Where to send: http://HOST:PORT (Proteus), embedded:DIR (Proteus in this process),
    /// nats://HOST:PORT (JetStream), redis://HOST:PORT (Streams) or
    /// postgres://USER@HOST:PORT/DATABASE.
    #[arg(long, value_name = "URL")]
    pub target: String,
    /// Topic (Proteus), stream (NATS: `.` becomes `_`; subjects TOPIC.>) or stream key (Redis).
    /// A NATS stream or Redis stream of that name is replaced.
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Partitions of the Proteus topic, when it is created (ignored by the other targets).
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Concurrent producers, each with its own connection.
    #[arg(long, default_value_t = 64)]
    pub producers: usize,
    /// Size of each event: the whole CloudEvent JSON, sent as is to every target.
    #[arg(long, default_value_t = 1024)]
    pub event_bytes: usize,
    /// Events per batch: one request, one set of publishes, one pipeline or one INSERT.
    #[arg(long, default_value_t = 100)]
    pub batch_events: usize,
    /// Measured time, in seconds.
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Unmeasured time before it, in seconds.
    #[arg(long, default_value_t = 2)]
    pub warmup_s: u64,
    /// Pace the producers to this many events per second in total, each starting a batch on
    /// its own schedule; latency then counts from when a batch was due, so a target that falls
    /// behind shows it. Without it, producers send flat out.
    #[arg(long, value_name = "EVENTS_PER_S")]
    pub rate: Option<u64>,
    /// Durability of the in-process log (embedded: targets): `fsync` or `interval_ms=N`.
    #[arg(long, default_value = "fsync", value_parser = parse_durability)]
    pub durability: Durability,
    /// Table written by the PostgreSQL target; dropped and created at the start.
    #[arg(long, default_value = "proteus_bench_events")]
    pub postgres_table: String,
    /// Leave the NATS stream, Redis key or PostgreSQL table in place at the end (dropped by
    /// default).
    #[arg(long)]
    pub keep: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

fn parse_durability(text: &str) -> Result<Durability, String> {
    text.parse()
}

pub const PRODUCERS_MAX: usize = 4096;
/// The Proteus HTTP API's limits on one batch.
pub const BATCH_EVENTS_MAX: usize = 10_000;
pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Batches all producers may hold at once.
pub const IN_FLIGHT_BYTES_MAX: usize = 4 << 30;
pub const DURATION_S_MAX: u64 = 3600;
pub const WARMUP_S_MAX: u64 = 600;
pub const RATE_MAX: u64 = 100_000_000;
pub const PARTITIONS_MAX: u32 = proteus_log::topic::PARTITIONS_MAX;

/// A batch that takes longer than this is counted as failed.
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause after a failed batch, so a target that is down is not hammered in a tight loop.
const FAILURE_PAUSE: Duration = Duration::from_millis(20);

/// The arguments, checked.
#[derive(Debug)]
pub struct Plan {
    pub target: Target,
    pub topic: TopicName,
}

impl ProduceArgs {
    pub fn validate(&self) -> Result<Plan, String> {
        let target: Target = self.target.parse()?;
        let topic = TopicName::parse(&self.topic).map_err(|e| format!("--topic: {e}"))?;
        in_range("--producers", self.producers, 1, PRODUCERS_MAX)?;
        in_range(
            "--event-bytes",
            self.event_bytes,
            EVENT_BYTES_MIN,
            EVENT_BYTES_MAX,
        )?;
        in_range("--batch-events", self.batch_events, 1, BATCH_EVENTS_MAX)?;
        let batch_bytes = EventFactory::batch_bytes(self.event_bytes, self.batch_events);
        if batch_bytes > BATCH_BYTES_MAX {
            return Err(format!(
                "a batch of {} events of {} bytes is {batch_bytes} bytes, over the {BATCH_BYTES_MAX} bytes an append request may carry; lower --batch-events or --event-bytes",
                self.batch_events, self.event_bytes
            ));
        }
        if batch_bytes.saturating_mul(self.producers) > IN_FLIGHT_BYTES_MAX {
            return Err(format!(
                "{} producers with batches of {batch_bytes} bytes would hold over {} GiB in flight; lower --producers or the batch size",
                self.producers,
                IN_FLIGHT_BYTES_MAX >> 30
            ));
        }
        in_range("--duration-s", self.duration_s, 1, DURATION_S_MAX)?;
        in_range("--warmup-s", self.warmup_s, 0, WARMUP_S_MAX)?;
        if let Some(rate) = self.rate {
            in_range("--rate", rate, 1, RATE_MAX)?;
        }
        in_range("--partitions", self.partitions, 1, PARTITIONS_MAX)?;
        if matches!(target, Target::Postgres(_)) {
            check_table_name(&self.postgres_table)?;
        }
        Ok(Plan { target, topic })
    }

    /// Time between two batches of one producer under `--rate`.
    fn pacing_interval(&self) -> Option<Duration> {
        self.rate.map(|rate| {
            Duration::from_secs_f64((self.batch_events * self.producers) as f64 / rate as f64)
        })
    }
}

/// What one producer counted.
struct ProducerResult {
    measured_events: u64,
    attempted_batches: u64,
    failed_batches: u64,
    acknowledged_events: u64,
    first_error: Option<String>,
    latencies_us: Histogram<u64>,
}

/// The measured window: batches acknowledged within it are counted.
#[derive(Clone, Copy)]
struct Window {
    measure_from: Instant,
    measure_until: Instant,
}

impl Window {
    fn contains(&self, at: Instant) -> bool {
        at >= self.measure_from && at <= self.measure_until
    }
}

/// Runs the workload, prints the report as `--output` asks, and returns it. Fails when the
/// arguments are wrong, the target cannot be prepared, more than 1% of batches fail, or no
/// batch was acknowledged in the measured window.
pub async fn produce(args: ProduceArgs) -> Result<ProduceReport, String> {
    let plan = args.validate()?;
    let factory = Arc::new(EventFactory::new(args.event_bytes)?);
    let setup = Setup {
        topic: plan.topic.clone(),
        partitions: args.partitions,
        durability: args.durability,
        postgres_table: args.postgres_table.clone(),
        keep: args.keep,
        producers: args.producers,
    };
    let bench = prepare(&plan.target, &setup).await?;
    let outcome = drive(bench.as_ref(), &args, factory).await;
    // Clean up whatever happened; the run's own error comes first.
    let finished = bench.finish().await;
    let (results, latencies_us) = outcome?;
    finished?;

    let mut counts = ProduceCounts {
        events: 0,
        failed_batches: 0,
        acknowledged_events: 0,
    };
    let (mut attempted, mut first_error) = (0u64, None);
    for result in &results {
        counts.events += result.measured_events;
        counts.failed_batches += result.failed_batches;
        counts.acknowledged_events += result.acknowledged_events;
        attempted += result.attempted_batches;
        if first_error.is_none() {
            first_error.clone_from(&result.first_error);
        }
    }
    let failed = counts.failed_batches;
    let shape = ProduceShape {
        target: plan.target.to_string(),
        producers: args.producers,
        event_bytes: args.event_bytes,
        batch_events: args.batch_events,
        warmup_s: args.warmup_s,
        duration_s: args.duration_s,
        rate_events_per_s: args.rate,
    };
    let report = ProduceReport::new(shape, counts, &latencies_us);
    crate::report::print(args.output, &report, ProduceReport::table);
    let first_error = first_error.unwrap_or_default();
    if failed * 100 > attempted {
        return Err(format!(
            "{failed} of {attempted} batches failed against {}; the first error: {first_error}",
            plan.target
        ));
    }
    if report.events == 0 {
        return Err(format!(
            "no batch was acknowledged within the {} s measured window against {}{}",
            args.duration_s,
            plan.target,
            if first_error.is_empty() {
                "; give it a longer --duration-s".to_owned()
            } else {
                format!("; the first error: {first_error}")
            }
        ));
    }
    Ok(report)
}

async fn drive(
    bench: &dyn Bench,
    args: &ProduceArgs,
    factory: Arc<EventFactory>,
) -> Result<(Vec<ProducerResult>, Histogram<u64>), String> {
    let mut sinks = Vec::with_capacity(args.producers);
    for _ in 0..args.producers {
        sinks.push(bench.sink().await?);
    }
    if args.output == Output::Table {
        eprintln!(
            "{} producers connected; {} s warm-up, then {} s measured",
            args.producers, args.warmup_s, args.duration_s
        );
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup_s);
    let window = Window {
        measure_from,
        measure_until: measure_from + Duration::from_secs(args.duration_s),
    };
    let interval = args.pacing_interval();
    let mut tasks = Vec::with_capacity(args.producers);
    for (producer, sink) in sinks.into_iter().enumerate() {
        let factory = factory.clone();
        // Paced producers are spread evenly over one interval so they do not fire together.
        let first_due =
            interval.map(|i| start + i.mul_f64(producer as f64 / args.producers as f64));
        tasks.push(tokio::spawn(run_producer(
            producer,
            sink,
            factory,
            args.batch_events,
            window,
            first_due.zip(interval),
        )));
    }
    let mut results = Vec::with_capacity(tasks.len());
    let mut latencies_us = latency_histogram();
    for task in tasks {
        let result = task
            .await
            .map_err(|e| format!("a producer task failed: {e}"))?;
        latencies_us
            .add(&result.latencies_us)
            .map_err(|e| format!("merging latencies failed: {e}"))?;
        results.push(result);
    }
    Ok((results, latencies_us))
}

async fn run_producer(
    producer: usize,
    mut sink: Box<dyn Sink>,
    factory: Arc<EventFactory>,
    batch_events: usize,
    window: Window,
    mut pacing: Option<(Instant, Duration)>,
) -> ProducerResult {
    let mut result = ProducerResult {
        measured_events: 0,
        attempted_batches: 0,
        failed_batches: 0,
        acknowledged_events: 0,
        first_error: None,
        latencies_us: latency_histogram(),
    };
    let mut seq = 0u64;
    loop {
        let due = match pacing {
            Some((due, interval)) => {
                if due >= window.measure_until {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                pacing = Some((due + interval, interval));
                Some(due)
            }
            None => None,
        };
        if Instant::now() >= window.measure_until {
            break;
        }
        let batch = factory.batch(producer, seq, batch_events);
        seq += batch_events as u64;
        result.attempted_batches += 1;
        if let Err(e) = sink.stage(batch) {
            fail(&mut result, e);
            continue;
        }
        let sent = due.unwrap_or_else(Instant::now);
        let outcome = tokio::time::timeout(BATCH_TIMEOUT, sink.send()).await;
        let done = Instant::now();
        match outcome {
            Ok(Ok(())) => {
                result.acknowledged_events += batch_events as u64;
                if window.contains(done) {
                    result.measured_events += batch_events as u64;
                    let latency_us = done.duration_since(sent).as_micros().max(1);
                    // Values past the histogram's 10 minutes are clamped to it.
                    let _ = result.latencies_us.record(
                        u64::try_from(latency_us)
                            .unwrap_or(u64::MAX)
                            .min(600_000_000),
                    );
                }
            }
            Ok(Err(e)) => {
                fail(&mut result, e);
                tokio::time::sleep(FAILURE_PAUSE).await;
            }
            Err(_) => {
                fail(
                    &mut result,
                    format!(
                        "a batch was not acknowledged within {} s",
                        BATCH_TIMEOUT.as_secs()
                    ),
                );
            }
        }
    }
    result
}

fn fail(result: &mut ProducerResult, error: String) {
    result.failed_batches += 1;
    result.first_error.get_or_insert(error);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ProduceArgs,
    }

    fn args(extra: &[&str]) -> ProduceArgs {
        let mut argv = vec!["produce", "--target", "embedded:/tmp/x"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).args
    }

    #[test]
    fn defaults_are_the_documented_workload() {
        let a = args(&[]);
        assert_eq!(
            (
                a.topic.as_str(),
                a.partitions,
                a.producers,
                a.event_bytes,
                a.batch_events
            ),
            ("bench", 1, 64, 1024, 100)
        );
        assert_eq!((a.duration_s, a.warmup_s, a.rate), (10, 2, None));
        assert_eq!(a.durability, Durability::Fsync);
        assert_eq!(a.output, Output::Table);
        assert!(a.validate().is_ok());
    }

    #[test]
    fn out_of_range_arguments_are_refused_with_the_flag_named() {
        for (extra, flag) in [
            (&["--producers", "0"][..], "--producers"),
            (&["--producers", "5000"], "--producers"),
            (&["--event-bytes", "10"], "--event-bytes"),
            (&["--event-bytes", "2000000"], "--event-bytes"),
            (&["--batch-events", "0"], "--batch-events"),
            (&["--batch-events", "10001"], "--batch-events"),
            (&["--duration-s", "0"], "--duration-s"),
            (&["--warmup-s", "601"], "--warmup-s"),
            (&["--rate", "0"], "--rate"),
            (&["--partitions", "0"], "--partitions"),
            (&["--partitions", "1025"], "--partitions"),
            (&["--topic", "a/b"], "--topic"),
        ] {
            let error = args(extra).validate().unwrap_err();
            assert!(error.contains(flag), "{extra:?}: {error}");
        }
    }

    #[test]
    fn a_batch_must_fit_one_request() {
        let error = args(&["--event-bytes", "1000000", "--batch-events", "17"])
            .validate()
            .unwrap_err();
        assert!(error.contains("lower --batch-events"), "{error}");
        assert!(
            args(&["--event-bytes", "1000000", "--batch-events", "16"])
                .validate()
                .is_ok()
        );
        let error = args(&[
            "--event-bytes",
            "1000000",
            "--batch-events",
            "16",
            "--producers",
            "4096",
        ])
        .validate()
        .unwrap_err();
        assert!(error.contains("in flight"), "{error}");
    }

    #[test]
    fn bad_durability_and_table_names_are_refused() {
        assert!(
            Cli::try_parse_from(["p", "--target", "embedded:/x", "--durability", "sometimes"])
                .is_err()
        );
        let paced = args(&["--durability", "interval_ms=5"]);
        assert_eq!(paced.durability, Durability::Interval { interval_ms: 5 });
        let mut pg = args(&["--postgres-table", "Bad-Name"]);
        pg.target = "postgres://u@h:5432/db".into();
        assert!(pg.validate().unwrap_err().contains("--postgres-table"));
    }

    #[test]
    fn pacing_spreads_the_rate_over_producers() {
        let a = args(&[
            "--rate",
            "64000",
            "--producers",
            "64",
            "--batch-events",
            "100",
        ]);
        assert_eq!(a.pacing_interval(), Some(Duration::from_millis(100)));
        assert_eq!(args(&[]).pacing_interval(), None);
    }
}
