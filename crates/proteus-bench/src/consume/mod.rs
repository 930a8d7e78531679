//! `proteus bench consume`: a consumer group of Proteus beside its peer, a durable pull consumer
//! of NATS JetStream, in two workloads:
//!
//! - `--mode latency`: producers paced at `--rate` events/s while one group member pulls and
//!   acknowledges; each event's latency runs from when it was due to be produced (so a stalled
//!   producer counts against the result, not for it) to when the consumer received it;
//! - `--mode drain`: the topic is filled with `--events` first, then one group drains it with
//!   batch acknowledgements; throughput runs from the first pull to the last acknowledgement.

mod nats;
mod proteus;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clap::{Args, ValueEnum};
use proteus_log::TopicName;
use proteus_log_embedded::Durability;
use serde::Serialize;

use crate::Output;
use crate::events::{EVENT_BYTES_MAX, EVENT_BYTES_MIN, EventFactory};
use crate::limits::in_range;
use crate::report::{latency_histogram, render_rows};
use crate::targets::{self, Bench, Setup, Target};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Produce at a steady rate and measure each event's produce-to-consume latency.
    Latency,
    /// Fill the topic, then measure how fast one group drains it.
    Drain,
}

#[derive(Args, Debug, Clone)]
pub struct ConsumeArgs {
    /// http://HOST:PORT (a Proteus consumer group) or nats://HOST:PORT (a JetStream durable
    /// pull consumer).
    #[arg(long, value_name = "URL")]
    pub target: String,
    #[arg(long, value_enum, default_value = "latency")]
    pub mode: Mode,
    /// Topic (Proteus) or stream (NATS); recreated for NATS, reused for Proteus.
    #[arg(long, default_value = "bench-consume")]
    pub topic: String,
    /// Latency mode: events per second produced.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u32,
    /// Latency mode: how long the producers run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Latency mode: events due in the first seconds are not measured (connections and caches
    /// warm up).
    #[arg(long, default_value_t = 1)]
    pub warmup_seconds: u64,
    /// Latency mode: events per produced batch; batches are due every
    /// `batch_events / rate` seconds.
    #[arg(long, default_value_t = 10)]
    pub batch_events: u32,
    /// Drain mode: events in the backlog (the topic is filled first).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    #[arg(long, default_value_t = 1024)]
    pub event_bytes: usize,
    /// Events asked for by one pull (Proteus `max_events`, NATS fetch batch).
    #[arg(long, default_value_t = 1_000)]
    pub pull_events: u32,
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

pub const RATE_MAX: u32 = 10_000_000;
pub const SECONDS_MAX: u64 = 3_600;
pub const EVENTS_MAX: u64 = 100_000_000;
/// One pull never asks for more (the largest Proteus group batch and ack request).
pub const PULL_EVENTS_MAX: u32 = 10_000;
/// Producer tasks in latency mode: enough that a batch waiting on a slow fsync does not hold up
/// the batches due after it.
const PRODUCERS: usize = 16;
/// How long the consumer may take, after the producers stop, to receive the last events.
const CATCH_UP: Duration = Duration::from_secs(30);
/// Acknowledgement requests one consumer keeps in flight while it pulls the next batch.
pub const ACKS_IN_FLIGHT_MAX: usize = 4;
/// Group name used on Proteus, durable consumer name on NATS.
const GROUP: &str = "bench";

/// One group member (Proteus) or durable pull consumer (NATS).
#[async_trait]
trait Receiver: Send {
    /// Waits (up to about a second) for the next batch, starts acknowledging it, and calls
    /// `seen` with each received event's id. Returns how many events came.
    async fn receive(
        &mut self,
        seen: &mut (dyn for<'s> FnMut(&'s str) + Send),
    ) -> Result<usize, String>;

    /// Waits until every acknowledgement sent so far was confirmed.
    async fn settle(&mut self) -> Result<(), String>;
}

#[derive(Debug, Serialize)]
pub struct ConsumeReport {
    pub target: String,
    pub mode: Mode,
    pub event_bytes: usize,
    pub events: u64,
    pub seconds: f64,
    pub events_per_s: f64,
    /// Latency mode: the rate asked for.
    pub rate_per_s: Option<u32>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p90_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_p999_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    /// Events received more than once (redeliveries).
    pub duplicates: u64,
}

impl ConsumeReport {
    fn table(&self) -> String {
        let mut rows = vec![
            ("target", self.target.clone()),
            (
                "consumed",
                format!(
                    "{} events of {} bytes in {:.2} s",
                    self.events, self.event_bytes, self.seconds
                ),
            ),
            ("events/s", format!("{:.0}", self.events_per_s)),
        ];
        if let Some(rate) = self.rate_per_s {
            rows.push(("rate asked", format!("{rate} events/s")));
        }
        let ms = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v:.2}"));
        if self.latency_p50_ms.is_some() {
            rows.push(("latency p50 ms", ms(self.latency_p50_ms)));
            rows.push(("latency p90 ms", ms(self.latency_p90_ms)));
            rows.push(("latency p99 ms", ms(self.latency_p99_ms)));
            rows.push(("latency p99.9 ms", ms(self.latency_p999_ms)));
            rows.push(("latency max ms", ms(self.latency_max_ms)));
        }
        rows.push(("duplicates", self.duplicates.to_string()));
        render_rows(&rows)
    }
}

pub async fn run(args: ConsumeArgs) -> Result<(), String> {
    in_range("--rate", args.rate, 1, RATE_MAX)?;
    in_range("--seconds", args.seconds, 1, SECONDS_MAX)?;
    in_range("--warmup-seconds", args.warmup_seconds, 0, args.seconds - 1)?;
    in_range("--batch-events", args.batch_events, 1, args.rate)?;
    in_range("--events", args.events, 1, EVENTS_MAX)?;
    in_range("--pull-events", args.pull_events, 1, PULL_EVENTS_MAX)?;
    in_range(
        "--event-bytes",
        args.event_bytes,
        EVENT_BYTES_MIN,
        EVENT_BYTES_MAX,
    )?;
    let topic = TopicName::parse(&args.topic).map_err(|e| format!("--topic: {e}"))?;
    let target: Target = args.target.parse()?;
    if !matches!(target, Target::Http(_) | Target::Nats(_)) {
        return Err(format!(
            "consume measures a Proteus consumer group (--target http://HOST:PORT) or a NATS JetStream consumer (--target nats://HOST:PORT), not {target}"
        ));
    }
    let produced = u64::from(args.rate) * args.seconds;
    if args.mode == Mode::Latency && produced > EVENTS_MAX {
        return Err(format!(
            "--rate × --seconds is {produced} events, more than the {EVENTS_MAX} one run measures"
        ));
    }
    // Both peers start from an empty topic: `prepare` recreates the NATS stream.
    if let Target::Http(url) = &target {
        proteus::delete_topic(url, &topic).await?;
    }
    let setup = Setup {
        topic: topic.clone(),
        partitions: 1,
        durability: Durability::Fsync,
        postgres_table: String::new(),
        keep: false,
        producers: PRODUCERS,
    };
    let bench = targets::prepare(&target, &setup).await?;
    let factory = Arc::new(EventFactory::new(args.event_bytes)?);
    let result = match args.mode {
        Mode::Latency => latency(&target, bench.as_ref(), &topic, &args, factory).await,
        Mode::Drain => drain(&target, bench.as_ref(), &topic, &args, factory).await,
    };
    let finished = bench.finish().await;
    let report = result?;
    finished?;
    crate::report::print(args.output, &report, ConsumeReport::table);
    Ok(())
}

/// Opens the group (Proteus) or durable consumer (NATS), positioned as `mode` needs: at the
/// end of the topic for latency, at its beginning for drain.
async fn open_receiver(
    target: &Target,
    topic: &TopicName,
    mode: Mode,
    pull_events: u32,
) -> Result<Box<dyn Receiver>, String> {
    Ok(match target {
        Target::Http(url) => {
            Box::new(proteus::GroupMember::open(url, topic, mode, pull_events).await?)
        }
        Target::Nats(url) => {
            Box::new(nats::PullConsumer::open(url, topic, mode, pull_events).await?)
        }
        _ => unreachable!("run() accepts only http and nats targets"),
    })
}

/// The sequence number of an event id written by [`EventFactory`] (its last field).
fn sequence_of(id: &str) -> Option<u64> {
    id.rsplit('-').next()?.parse().ok()
}

async fn latency(
    target: &Target,
    bench: &dyn Bench,
    topic: &TopicName,
    args: &ConsumeArgs,
    factory: Arc<EventFactory>,
) -> Result<ConsumeReport, String> {
    let mut receiver = open_receiver(target, topic, Mode::Latency, args.pull_events).await?;
    let batch_events = u64::from(args.batch_events);
    let batches = u64::from(args.rate) * args.seconds / batch_events;
    let produced = batches * batch_events;
    let tick = Duration::from_secs_f64(batch_events as f64 / f64::from(args.rate));
    let warmup_batches = u64::from(args.rate) * args.warmup_seconds / batch_events;
    // Every batch is due at `start + b × tick`; start a little ahead so producers are ready.
    let start = Instant::now() + Duration::from_millis(200);
    let mut producers = Vec::with_capacity(PRODUCERS);
    for task in 0..PRODUCERS {
        let mut sink = bench.sink().await?;
        let factory = factory.clone();
        producers.push(tokio::spawn(async move {
            for b in (task as u64..batches).step_by(PRODUCERS) {
                tokio::time::sleep_until((start + tick.mul_f64(b as f64)).into()).await;
                sink.stage(factory.batch(task, b * batch_events, batch_events as usize))?;
                sink.send()
                    .await
                    .map_err(|e| format!("producing batch {b} failed: {e}"))?;
            }
            Ok::<(), String>(())
        }));
    }

    let mut histogram = latency_histogram();
    let mut seen = vec![false; produced as usize];
    let (mut received, mut duplicates) = (0u64, 0u64);
    let mut foreign: Option<String> = None;
    let deadline = start + tick.mul_f64(batches as f64) + CATCH_UP;
    while received < produced {
        if Instant::now() > deadline {
            return Err(format!(
                "received {received} of {produced} events {} s after the producers' last batch was due",
                CATCH_UP.as_secs()
            ));
        }
        receiver
            .receive(&mut |id| {
                let now = Instant::now();
                let Some(seq) = sequence_of(id).filter(|s| *s < produced) else {
                    foreign.get_or_insert_with(|| id.to_owned());
                    return;
                };
                if std::mem::replace(&mut seen[seq as usize], true) {
                    duplicates += 1;
                    return;
                }
                received += 1;
                let batch = seq / batch_events;
                if batch >= warmup_batches {
                    let due = start + tick.mul_f64(batch as f64);
                    let micros = now.saturating_duration_since(due).as_micros() as u64;
                    histogram.saturating_record(micros.max(1));
                }
            })
            .await?;
        if let Some(id) = foreign.take() {
            return Err(format!(
                "received event {id:?}, which this run did not produce: is another producer writing to topic '{topic}'? Use another --topic"
            ));
        }
    }
    receiver.settle().await?;
    for producer in producers {
        producer
            .await
            .map_err(|e| format!("a producer task failed: {e}"))??;
    }
    let seconds = tick.mul_f64(batches as f64).as_secs_f64();
    let ms = |q: f64| Some(histogram.value_at_quantile(q) as f64 / 1_000.0);
    Ok(ConsumeReport {
        target: target.to_string(),
        mode: Mode::Latency,
        event_bytes: args.event_bytes,
        events: received,
        seconds,
        events_per_s: received as f64 / seconds,
        rate_per_s: Some(args.rate),
        latency_p50_ms: ms(0.5),
        latency_p90_ms: ms(0.9),
        latency_p99_ms: ms(0.99),
        latency_p999_ms: ms(0.999),
        latency_max_ms: Some(histogram.max() as f64 / 1_000.0),
        duplicates,
    })
}

async fn drain(
    target: &Target,
    bench: &dyn Bench,
    topic: &TopicName,
    args: &ConsumeArgs,
    factory: Arc<EventFactory>,
) -> Result<ConsumeReport, String> {
    eprintln!("filling '{topic}' with {} events…", args.events);
    crate::replay::fill(bench, factory, args.events).await?;
    let mut receiver = open_receiver(target, topic, Mode::Drain, args.pull_events).await?;
    let backlog = args.events;
    let started = Instant::now();
    let mut received = 0u64;
    let mut idle_pulls = 0;
    while received < backlog {
        let got = receiver.receive(&mut |_| {}).await?;
        received += got as u64;
        idle_pulls = if got == 0 { idle_pulls + 1 } else { 0 };
        if idle_pulls >= 10 {
            return Err(format!(
                "received {received} of {backlog} events, then nothing for 10 pulls"
            ));
        }
    }
    receiver.settle().await?;
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    Ok(ConsumeReport {
        target: target.to_string(),
        mode: Mode::Drain,
        event_bytes: args.event_bytes,
        events: received,
        seconds,
        events_per_s: received as f64 / seconds,
        rate_per_s: None,
        latency_p50_ms: None,
        latency_p90_ms: None,
        latency_p99_ms: None,
        latency_p999_ms: None,
        latency_max_ms: None,
        duplicates: received.saturating_sub(backlog),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_come_from_the_last_field_of_the_id() {
        let batch = EventFactory::new(256).unwrap().batch(3, 41, 2);
        assert_eq!(sequence_of(batch.id(0)), Some(41));
        assert_eq!(sequence_of(batch.id(1)), Some(42));
        assert_eq!(sequence_of("no-digits-here"), None);
    }

    #[test]
    fn the_table_shows_latency_only_when_measured() {
        let mut report = ConsumeReport {
            target: "t".into(),
            mode: Mode::Drain,
            event_bytes: 1024,
            events: 10,
            seconds: 1.0,
            events_per_s: 10.0,
            rate_per_s: None,
            latency_p50_ms: None,
            latency_p90_ms: None,
            latency_p99_ms: None,
            latency_p999_ms: None,
            latency_max_ms: None,
            duplicates: 0,
        };
        assert!(!report.table().contains("p99"));
        report.latency_p50_ms = Some(1.25);
        report.latency_p99_ms = Some(4.5);
        let table = report.table();
        assert!(
            table.contains("latency p50 ms") && table.contains("1.25"),
            "{table}"
        );
        assert!(
            table.contains("latency p99 ms") && table.contains("4.50"),
            "{table}"
        );
    }
}
