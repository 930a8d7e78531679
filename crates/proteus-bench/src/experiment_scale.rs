//! `proteus bench experiment-scale`: the experiments runtime aggregating a large experiment
//! in-process, on the embedded log and the embedded key-value store, as `proteus serve` runs
//! it. It starts an experiment, appends `--units` exposures (half per arm) and a purchase for
//! every `--buy-every`-th unit, and times how long the runtime takes to apply them all, while
//! asking for the results (what `GET /v1/experiments/{id}/results` computes) every
//! `--look-every-ms`. Then it closes and reopens the service to time a restart, and checks the
//! counts against what it wrote.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proteus_experiments::ExperimentDefinition;
use proteus_experiments_service::{ExperimentService, ExperimentServiceConfig};
use proteus_flagsets::{Change, FlagSetName, ValidationMode};
use proteus_flagsets_service::exposures::{self, Exposure};
use proteus_flagsets_service::{Author, FlagService};
use proteus_kv::KvStore;
use proteus_kv_embedded::EmbeddedKvStore;
use proteus_log::port::Log;
use proteus_log::{Event, TopicConfig, TopicName};
use proteus_log_embedded::{EmbeddedConfig, EmbeddedLog};
use serde::Serialize;
use serde_json::{Value, json};

use crate::Output;
use crate::limits::in_range;
use crate::report::{percentile, render_rows};

/// Most units one run exposes.
const UNITS_MAX: u64 = 20_000_000;
/// Events per append to the log.
const APPEND_EVENTS: usize = 1_000;
/// Longest wait for the runtime to apply everything, in seconds.
const CATCH_UP_S_MAX: u64 = 3_600;
const EXPERIMENT: &str = "scale";

#[derive(clap::Args, Debug, Clone)]
pub struct ExperimentScaleArgs {
    /// Where the log and the key-value store are written (emptied first); default: a
    /// temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Units exposed (half to each arm).
    #[arg(long, default_value_t = 1_000_000)]
    pub units: u64,
    /// One purchase for every N-th unit.
    #[arg(long, default_value_t = 5)]
    pub buy_every: u64,
    /// Spread the writes over at least this many seconds (steady traffic rather than one
    /// burst, so units settle and leave memory while it runs).
    #[arg(long, default_value_t = 30)]
    pub write_seconds: u64,
    /// How often the results are computed while the runtime catches up, in ms.
    #[arg(long, default_value_t = 100)]
    pub look_every_ms: u64,
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExperimentScaleReport {
    pub units: u64,
    pub purchases: u64,
    /// Exposures and purchases appended.
    pub events: u64,
    pub write_s: f64,
    /// From the first append until the results showed every event applied.
    pub catch_up_s: f64,
    pub events_per_s: f64,
    /// Latency of computing the results, sampled while catching up and after.
    pub results_samples: usize,
    pub results_p50_ms: f64,
    pub results_p99_ms: f64,
    pub results_max_ms: f64,
    /// Most units in memory at any look while catching up.
    pub units_resident_max: u64,
    /// Units in memory after the checkpoint that followed catching up (the rest are in the
    /// key-value store).
    pub units_resident: u64,
    pub units_tracked: u64,
    pub kv_file_bytes: u64,
    /// Closing the service (last checkpoint) and opening it again.
    pub restart_ms: f64,
    pub result: String,
}

impl ExperimentScaleReport {
    fn table(&self) -> String {
        render_rows(&[
            (
                "traffic",
                format!(
                    "{} units exposed (2 arms), {} purchases, {} events written in {:.1} s",
                    self.units, self.purchases, self.events, self.write_s
                ),
            ),
            (
                "catch-up",
                format!(
                    "{:.0} events/s ({} events in {:.2} s, from the first append)",
                    self.events_per_s, self.events, self.catch_up_s
                ),
            ),
            (
                "results",
                format!(
                    "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms over {} looks",
                    self.results_p50_ms,
                    self.results_p99_ms,
                    self.results_max_ms,
                    self.results_samples
                ),
            ),
            (
                "memory",
                format!(
                    "{} of {} units resident after the next checkpoint (at most {} while running)",
                    self.units_resident, self.units_tracked, self.units_resident_max
                ),
            ),
            ("kv.redb", format!("{} bytes", self.kv_file_bytes)),
            (
                "restart",
                format!("{:.1} ms (close + open)", self.restart_ms),
            ),
            ("result", self.result.clone()),
        ])
    }
}

fn definition() -> Result<ExperimentDefinition, String> {
    let text = json!({
        "id": EXPERIMENT,
        "name": "Scale",
        "flag_set": "bench",
        "flag": "checkout",
        "arms": [{"variant": "control", "weight": 1}, {"variant": "green", "weight": 1}],
        "control": "control",
        "metrics": [
            {"id": "purchase", "kind": "conversion",
             "source": {"topic": "shop", "event_type": "order.placed"}},
            {"id": "revenue", "kind": "sum",
             "source": {"topic": "shop", "event_type": "order.placed", "value": "/amount"}}
        ],
        "primary_metric": "purchase",
        "secondary_metrics": ["revenue"],
        "minimum_detectable_effect": {"relative": 0.05},
        // Units settle (and may leave memory) a second after their exposure.
        "analysis": {"lateness_ms": 1000}
    })
    .to_string();
    ExperimentDefinition::from_json(&text).map_err(|e| e.to_string())
}

async fn open(dir: &std::path::Path) -> Result<(Arc<dyn Log>, Arc<dyn KvStore>), String> {
    let log: Arc<dyn Log> = Arc::new(
        EmbeddedLog::open(EmbeddedConfig::new(dir.join("log")))
            .await
            .map_err(|e| format!("cannot open the log in {}: {e}", dir.display()))?,
    );
    let kv: Arc<dyn KvStore> = Arc::new(
        EmbeddedKvStore::open(&dir.join(proteus_kv_embedded::FILE_NAME))
            .map_err(|e| format!("cannot open the key-value store: {e}"))?,
    );
    Ok((log, kv))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn arm(unit: u64) -> &'static str {
    if unit.is_multiple_of(2) {
        "control"
    } else {
        "green"
    }
}

pub async fn run(args: ExperimentScaleArgs) -> Result<(), String> {
    in_range("--units", args.units, 2, UNITS_MAX)?;
    in_range("--buy-every", args.buy_every, 1, args.units)?;
    in_range("--look-every-ms", args.look_every_ms, 1, 60_000)?;
    let temporary = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
    let dir = match &args.data_dir {
        Some(dir) => {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create --data-dir {}: {e}", dir.display()))?;
            dir.clone()
        }
        None => temporary.path().to_path_buf(),
    };
    let (log, kv) = open(&dir).await?;
    let flags = FlagService::open(log.clone())
        .await
        .map_err(|e| e.to_string())?;
    let document = json!({"flags": {"checkout": {
        "state": "ENABLED",
        "variants": {"control": "grey", "green": "green"},
        "defaultVariant": "control",
        "targeting": {"fractional": [["control", 50], ["green", 50]]}
    }}});
    let set = FlagSetName::parse("bench").map_err(|e| e.to_string())?;
    flags
        .apply(
            &set,
            Change::PutSet { document },
            Author::default(),
            ValidationMode::Strict,
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
    let config = ExperimentServiceConfig::default();
    let service = ExperimentService::open(log.clone(), kv, flags, config.clone())
        .await
        .map_err(|e| e.to_string())?;
    service
        .create(definition()?, "bench")
        .await
        .map_err(|e| e.to_string())?;
    service
        .start(EXPERIMENT, "bench")
        .await
        .map_err(|e| e.to_string())?;
    for topic in [exposures::TOPIC, "shop"] {
        let name = TopicName::parse(topic).map_err(|e| e.to_string())?;
        if log.describe_topic(&name).await.is_err() {
            log.put_topic(&name, TopicConfig::default())
                .await
                .map_err(|e| e.to_string())?;
        }
    }

    let purchases = args.units.div_ceil(args.buy_every);
    let events = args.units + purchases;
    let started = Instant::now();
    let writer = tokio::spawn(write(
        log.clone(),
        args.units,
        args.buy_every,
        Duration::from_secs(args.write_seconds),
    ));
    let mut latencies_ms: Vec<f64> = Vec::new();
    let mut resident_max = 0;
    let deadline = started + Duration::from_secs(CATCH_UP_S_MAX);
    let (catch_up_s, aggregation) = loop {
        let look = Instant::now();
        let (_, results) = service.results(EXPERIMENT).map_err(|e| e.to_string())?;
        latencies_ms.push(look.elapsed().as_secs_f64() * 1e3);
        let a = &results.aggregation;
        resident_max = resident_max.max(a.units_resident);
        if a.exposures_applied == args.units && a.metric_events_applied == purchases {
            break (started.elapsed().as_secs_f64(), a.clone());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the runtime applied {} exposures and {} purchases of {} and {} in {CATCH_UP_S_MAX} s",
                a.exposures_applied, a.metric_events_applied, args.units, purchases
            ));
        }
        tokio::time::sleep(Duration::from_millis(args.look_every_ms)).await;
    };
    let write_s = writer
        .await
        .map_err(|e| format!("the writer failed: {e}"))??;
    // A few more looks once caught up: the steady-state cost of a results request.
    for _ in 0..100 {
        let look = Instant::now();
        let _ = service.results(EXPERIMENT).map_err(|e| e.to_string())?;
        latencies_ms.push(look.elapsed().as_secs_f64() * 1e3);
    }
    // The next checkpoint (at most `checkpoint_interval_ms` later) stores and evicts.
    let settle_deadline =
        Instant::now() + Duration::from_millis(config.checkpoint_interval_ms + 5_000);
    let mut results = service.results(EXPERIMENT).map_err(|e| e.to_string())?.1;
    while results.aggregation.units_resident == aggregation.units_resident
        && Instant::now() < settle_deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        results = service.results(EXPERIMENT).map_err(|e| e.to_string())?.1;
    }
    let units_resident = results.aggregation.units_resident;
    let purchase = &results.metrics[0];
    let n: u64 = purchase.arms.iter().map(|a| a.n).sum();
    let converted: f64 = purchase
        .arms
        .iter()
        .map(|a| a.mean.unwrap_or(0.0) * a.n as f64)
        .sum();
    let mut problems = Vec::new();
    if n != args.units {
        problems.push(format!("{n} units analysed, {} exposed", args.units));
    }
    if (converted - purchases as f64).abs() > 0.5 {
        problems.push(format!(
            "{converted} conversions counted, {purchases} written"
        ));
    }

    let restart = Instant::now();
    service.close().await;
    drop(service);
    drop(log);
    let (log, kv) = open(&dir).await?;
    let flags = FlagService::open(log.clone())
        .await
        .map_err(|e| e.to_string())?;
    let service = ExperimentService::open(log, kv, flags, config)
        .await
        .map_err(|e| e.to_string())?;
    let restart_ms = restart.elapsed().as_secs_f64() * 1e3;
    let (_, reopened) = service.results(EXPERIMENT).map_err(|e| e.to_string())?;
    if reopened.aggregation.exposures_applied != args.units {
        problems.push(format!(
            "after a restart {} exposures are counted, {} before",
            reopened.aggregation.exposures_applied, args.units
        ));
    }
    service.close().await;

    latencies_ms.sort_by(f64::total_cmp);
    let kv_file_bytes =
        std::fs::metadata(dir.join(proteus_kv_embedded::FILE_NAME)).map_or(0, |m| m.len());
    let report = ExperimentScaleReport {
        units: args.units,
        purchases,
        events,
        write_s,
        catch_up_s,
        events_per_s: events as f64 / catch_up_s,
        results_samples: latencies_ms.len(),
        results_p50_ms: percentile(&latencies_ms, 0.5),
        results_p99_ms: percentile(&latencies_ms, 0.99),
        results_max_ms: latencies_ms.last().copied().unwrap_or(0.0),
        units_resident_max: resident_max,
        units_resident,
        units_tracked: aggregation.units_tracked,
        kv_file_bytes,
        restart_ms,
        result: if problems.is_empty() {
            "every unit and purchase counted once, also after the restart".to_owned()
        } else {
            problems.join("; ")
        },
    };
    crate::report::print(args.output, &report, ExperimentScaleReport::table);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("the counts are wrong: {}", problems.join("; ")))
    }
}

/// Appends the exposures, and after each batch the purchases of its units, paced to take at
/// least `spread`; returns how long writing took, in seconds.
async fn write(
    log: Arc<dyn Log>,
    units: u64,
    buy_every: u64,
    spread: Duration,
) -> Result<f64, String> {
    let started = Instant::now();
    let exposure_topic = TopicName::parse(exposures::TOPIC).map_err(|e| e.to_string())?;
    let shop = TopicName::parse("shop").map_err(|e| e.to_string())?;
    let mut unit = 0;
    while unit < units {
        let end = (unit + APPEND_EVENTS as u64).min(units);
        let time_ms = now_ms();
        let batch: Vec<Event> = (unit..end)
            .filter_map(|u| {
                exposures::to_event(&Exposure {
                    flag_set: "bench".into(),
                    flag: "checkout".into(),
                    variant: arm(u).into(),
                    targeting_key: format!("user-{u}"),
                    reason: "SPLIT",
                    time_ms,
                })
            })
            .collect();
        log.append(&exposure_topic, batch)
            .await
            .map_err(|e| format!("appending exposures failed: {e}"))?;
        let orders: Vec<Event> = (unit..end)
            .filter(|u| u.is_multiple_of(buy_every))
            .filter_map(|u| {
                let event: Value = json!({"specversion": "1.0", "id": format!("order-{u}"),
                    "source": "/bench/shop", "type": "order.placed",
                    "partitionkey": format!("user-{u}"), "data": {"amount": 20 + u % 7}});
                Event::from_json(&serde_json::to_vec(&event).ok()?).ok()
            })
            .collect();
        if !orders.is_empty() {
            log.append(&shop, orders)
                .await
                .map_err(|e| format!("appending purchases failed: {e}"))?;
        }
        unit = end;
        let due = spread.mul_f64(unit as f64 / units as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(ahead).await;
        }
    }
    Ok(started.elapsed().as_secs_f64())
}
