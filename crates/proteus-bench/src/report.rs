//! Latency histograms, percentiles and how results are printed.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Batch latencies in microseconds, from 1 µs to 10 minutes, with 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// What one load task returns: operations completed and their latencies (microseconds).
pub type CountedLatencies = Result<(u64, Histogram<u64>), String>;

/// Awaits load tasks that each return how many operations they completed and their latency
/// histogram; returns the total and the merged histogram. `what` names a task in errors.
pub async fn join_counted(
    tasks: Vec<tokio::task::JoinHandle<CountedLatencies>>,
    what: &str,
) -> Result<(u64, Histogram<u64>), String> {
    let mut histogram = latency_histogram();
    let mut total = 0;
    for task in tasks {
        let (count, latencies) = task
            .await
            .map_err(|e| format!("a {what} task failed: {e}"))??;
        total += count;
        histogram
            .add(&latencies)
            .map_err(|e| format!("merging latencies failed: {e}"))?;
    }
    Ok((total, histogram))
}

/// The value at quantile `q` (0 to 1) of `sorted` by the nearest-rank method; 0 when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What `proteus bench produce` measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProduceReport {
    pub target: String,
    pub producers: usize,
    pub event_bytes: usize,
    pub batch_events: usize,
    pub warmup_s: u64,
    pub duration_s: u64,
    /// The pacing asked for with `--rate`; `None` when producers ran flat out.
    pub rate_events_per_s: Option<u64>,
    /// Events of the batches acknowledged within the measured window.
    pub events: u64,
    pub events_per_s: f64,
    /// Event bytes (the CloudEvent JSON) per second, in millions of bytes.
    pub mb_per_s: f64,
    /// Batches acknowledged within the measured window: the latency sample.
    pub batches: u64,
    /// Batches that failed during the whole run, warm-up included.
    pub failed_batches: u64,
    /// Every event acknowledged during the whole run, warm-up included: what the target holds.
    pub acknowledged_events: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// What the producers counted, before rates and percentiles are derived.
pub struct ProduceCounts {
    pub events: u64,
    pub failed_batches: u64,
    pub acknowledged_events: u64,
}

pub struct ProduceShape {
    pub target: String,
    pub producers: usize,
    pub event_bytes: usize,
    pub batch_events: usize,
    pub warmup_s: u64,
    pub duration_s: u64,
    pub rate_events_per_s: Option<u64>,
}

impl ProduceReport {
    pub fn new(
        shape: ProduceShape,
        counts: ProduceCounts,
        latencies_us: &Histogram<u64>,
    ) -> ProduceReport {
        let seconds = shape.duration_s.max(1) as f64;
        let ms = |us: u64| us as f64 / 1000.0;
        let at = |q: f64| ms(latencies_us.value_at_quantile(q));
        ProduceReport {
            events_per_s: counts.events as f64 / seconds,
            mb_per_s: (counts.events * shape.event_bytes as u64) as f64 / seconds / 1e6,
            target: shape.target,
            producers: shape.producers,
            event_bytes: shape.event_bytes,
            batch_events: shape.batch_events,
            warmup_s: shape.warmup_s,
            duration_s: shape.duration_s,
            rate_events_per_s: shape.rate_events_per_s,
            events: counts.events,
            batches: latencies_us.len(),
            failed_batches: counts.failed_batches,
            acknowledged_events: counts.acknowledged_events,
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: ms(latencies_us.max()),
        }
    }

    /// A small two-column table, one measurement a line.
    pub fn table(&self) -> String {
        let load = match self.rate_events_per_s {
            Some(rate) => format!("paced at {rate} events/s"),
            None => "flat out".to_owned(),
        };
        let rows = [
            ("target", self.target.clone()),
            (
                "workload",
                format!(
                    "{} producers × batches of {} events of {} bytes, {load}, {} s measured after {} s warm-up",
                    self.producers,
                    self.batch_events,
                    self.event_bytes,
                    self.duration_s,
                    self.warmup_s
                ),
            ),
            ("events/s", format!("{:.0}", self.events_per_s)),
            ("MB/s", format!("{:.1}", self.mb_per_s)),
            ("batches", self.batches.to_string()),
            ("failed batches", self.failed_batches.to_string()),
            (
                "batch latency ms",
                format!(
                    "p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
                    self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms
                ),
            ),
        ];
        render_rows(&rows)
    }
}

/// `name  value` lines, names padded to the longest.
pub fn render_rows(rows: &[(&str, String)]) -> String {
    let width = rows
        .iter()
        .map(|(name, _)| name.chars().count())
        .max()
        .unwrap_or(0);
    rows.iter()
        .map(|(name, value)| format!("{name:<width$}  {value}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prints a report as the `--output` asks.
pub fn print<T: Serialize>(output: crate::Output, report: &T, table: impl FnOnce(&T) -> String) {
    match output {
        crate::Output::Table => println!("{}", table(report)),
        crate::Output::Json => match serde_json::to_string(report) {
            Ok(json) => println!("{json}"),
            // Reports are plain numbers and strings; serialising them cannot fail.
            Err(e) => eprintln!("cannot write the report as JSON: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> ProduceShape {
        ProduceShape {
            target: "proteus in-process /tmp/x".into(),
            producers: 2,
            event_bytes: 1000,
            batch_events: 10,
            warmup_s: 1,
            duration_s: 2,
            rate_events_per_s: None,
        }
    }

    #[test]
    fn a_report_derives_rates_and_percentiles() {
        let mut histogram = latency_histogram();
        for us in 1..=1000 {
            histogram.record(us * 1000).unwrap();
        }
        let counts = ProduceCounts {
            events: 10_000,
            failed_batches: 3,
            acknowledged_events: 12_000,
        };
        let report = ProduceReport::new(shape(), counts, &histogram);
        assert_eq!(report.events_per_s, 5_000.0);
        assert_eq!(report.mb_per_s, 5.0);
        assert_eq!(report.batches, 1000);
        assert_eq!(report.failed_batches, 3);
        assert!((report.p50_ms - 500.0).abs() < 1.0, "{}", report.p50_ms);
        assert!((report.p90_ms - 900.0).abs() < 1.0, "{}", report.p90_ms);
        assert!((report.p99_ms - 990.0).abs() < 1.0, "{}", report.p99_ms);
        assert!((report.p999_ms - 999.0).abs() < 1.0, "{}", report.p999_ms);
        assert!((report.max_ms - 1000.0).abs() < 1.0, "{}", report.max_ms);
    }

    #[test]
    fn the_table_names_every_measurement() {
        let mut histogram = latency_histogram();
        histogram.record(2_500).unwrap();
        let counts = ProduceCounts {
            events: 10,
            failed_batches: 0,
            acknowledged_events: 10,
        };
        let table = ProduceReport::new(shape(), counts, &histogram).table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "target            proteus in-process /tmp/x");
        assert!(lines[1].contains("2 producers × batches of 10 events of 1000 bytes, flat out"));
        assert_eq!(lines[2], "events/s          5");
        assert_eq!(lines[3], "MB/s              0.0");
        assert_eq!(lines[4], "batches           1");
        assert_eq!(lines[5], "failed batches    0");
        assert_eq!(
            lines[6],
            "batch latency ms  p50 2.50  p90 2.50  p99 2.50  p99.9 2.50  max 2.50"
        );
    }

    #[test]
    fn an_empty_histogram_reports_zeros() {
        let counts = ProduceCounts {
            events: 0,
            failed_batches: 1,
            acknowledged_events: 0,
        };
        let report = ProduceReport::new(shape(), counts, &latency_histogram());
        assert_eq!(
            (report.p50_ms, report.max_ms, report.events_per_s),
            (0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), 50.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&sorted, 1.0), 100.0);
        assert_eq!(percentile(&sorted, 0.0), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn json_field_names_carry_their_units() {
        let counts = ProduceCounts {
            events: 0,
            failed_batches: 0,
            acknowledged_events: 0,
        };
        let report = ProduceReport::new(shape(), counts, &latency_histogram());
        let json = serde_json::to_value(&report).unwrap();
        for field in [
            "events_per_s",
            "mb_per_s",
            "p50_ms",
            "p99_ms",
            "duration_s",
            "event_bytes",
        ] {
            assert!(json.get(field).is_some(), "{field} missing from {json}");
        }
    }
}
