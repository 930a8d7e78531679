//! `proteus bench startup`: how long the embedded log takes to open with a large log on disk.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use proteus_log::port::{EventAppender, Log};
use proteus_log::{Event, TopicConfig, TopicName};
use proteus_log_embedded::{Durability, EmbeddedConfig, EmbeddedLog};
use serde::Serialize;

use crate::Output;
use crate::events::EventFactory;
use crate::limits::{dir_bytes, ensure_space, gib, in_range};
use crate::report::{percentile, render_rows};
use crate::targets::embedded::{check_receipts, ensure_topic, open};

#[derive(Args, Debug, Clone)]
pub struct StartupArgs {
    /// Data directory of the embedded log; filled first if it holds less than --gib.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Size the log must have on disk, in GiB.
    #[arg(long, default_value_t = 10)]
    pub gib: u64,
    /// Opens timed (the log is shut down between two).
    #[arg(long, default_value_t = 5)]
    pub opens: u32,
    /// Drop the kernel's page cache before each open (needs root), to time a cold start.
    #[arg(long)]
    pub drop_caches: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

pub const GIB_MAX: u64 = 1024;
pub const OPENS_MAX: u32 = 100;
const TOPIC: &str = "startup";
const PARTITIONS: u32 = 8;
const EVENT_BYTES: usize = 1024;
const FILL_BATCH_EVENTS: usize = 1_000;
const FILL_TASKS: usize = 32;
/// Producer numbers of the fill's event ids.
const FILL_PRODUCER_BASE: usize = 80_000;

#[derive(Debug, Serialize)]
pub struct StartupReport {
    pub dir: String,
    pub log_bytes: u64,
    pub filled_bytes: u64,
    pub fill_s: f64,
    pub opens: u32,
    pub cold_cache: bool,
    pub open_ms_median: f64,
    pub open_ms_max: f64,
    /// From the start of the open to the first append acknowledged: includes refilling the
    /// dedup index from the log's recent tail.
    pub first_append_ms_median: f64,
    pub first_append_ms_max: f64,
}

impl StartupReport {
    fn table(&self) -> String {
        let fill = if self.filled_bytes > 0 {
            format!(
                " (filled {:.2} GiB in {:.1} s first)",
                gib(self.filled_bytes),
                self.fill_s
            )
        } else {
            String::new()
        };
        let cache = if self.cold_cache {
            "page cache dropped before each"
        } else {
            "page cache warm"
        };
        render_rows(&[
            ("directory", self.dir.clone()),
            (
                "size on disk",
                format!("{:.2} GiB{fill}", gib(self.log_bytes)),
            ),
            (
                "open",
                format!(
                    "median {:.1} ms, max {:.1} ms over {} opens ({cache})",
                    self.open_ms_median, self.open_ms_max, self.opens
                ),
            ),
            (
                "first append",
                format!(
                    "median {:.1} ms, max {:.1} ms after the open started",
                    self.first_append_ms_median, self.first_append_ms_max
                ),
            ),
        ])
    }
}

pub async fn run(args: StartupArgs) -> Result<(), String> {
    in_range("--gib", args.gib, 1, GIB_MAX)?;
    in_range("--opens", args.opens, 1, OPENS_MAX)?;
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| format!("cannot create --dir {}: {e}", args.dir.display()))?;
    let target_bytes = args.gib << 30;
    let topic = TopicName::parse(TOPIC).map_err(|e| e.to_string())?;
    let before = dir_bytes(&args.dir);
    let fill_started = Instant::now();
    if before < target_bytes {
        ensure_space(
            &args.dir,
            target_bytes - before,
            &format!("filling {} up to {} GiB", args.dir.display(), args.gib),
        )?;
        fill(&args, &topic, target_bytes - before).await?;
    }
    let fill_s = fill_started.elapsed().as_secs_f64();
    let log_bytes = dir_bytes(&args.dir);

    let mut open_ms = Vec::new();
    let mut first_append_ms = Vec::new();
    let factory = EventFactory::new(EVENT_BYTES)?;
    for i in 0..args.opens {
        if args.drop_caches {
            drop_caches()?;
        }
        let started = Instant::now();
        let log = EmbeddedLog::open(EmbeddedConfig::new(&args.dir))
            .await
            .map_err(|e| format!("opening the log in {} failed: {e}", args.dir.display()))?;
        open_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let probe = factory.batch(FILL_PRODUCER_BASE + FILL_TASKS, u64::from(i), 1);
        let appended = async {
            let events = Event::batch_from_json(&probe.body).map_err(|e| e.to_string())?;
            let receipts = log
                .append(&topic, events)
                .await
                .map_err(|e| format!("the first append after opening failed: {e}"))?;
            check_receipts(&receipts, 1)
        }
        .await;
        first_append_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let closed = log
            .shutdown()
            .await
            .map_err(|e| format!("shutting the log down failed: {e}"));
        appended?;
        closed?;
    }
    open_ms.sort_by(f64::total_cmp);
    first_append_ms.sort_by(f64::total_cmp);
    let report = StartupReport {
        dir: args.dir.display().to_string(),
        log_bytes,
        filled_bytes: log_bytes.saturating_sub(before),
        fill_s: if log_bytes > before { fill_s } else { 0.0 },
        opens: args.opens,
        cold_cache: args.drop_caches,
        open_ms_median: percentile(&open_ms, 0.5),
        open_ms_max: open_ms.last().copied().unwrap_or(0.0),
        first_append_ms_median: percentile(&first_append_ms, 0.5),
        first_append_ms_max: first_append_ms.last().copied().unwrap_or(0.0),
    };
    crate::report::print(args.output, &report, StartupReport::table);
    Ok(())
}

/// Appends 1 KiB events to the `startup` topic until about `bytes` were written.
async fn fill(args: &StartupArgs, topic: &TopicName, bytes: u64) -> Result<(), String> {
    eprintln!(
        "filling {} with {:.1} GiB of 1 KiB events…",
        args.dir.display(),
        gib(bytes)
    );
    // A fill, not a measurement: fdatasync runs every second instead of for each append.
    let log = open(&args.dir, Durability::Interval { interval_ms: 1000 }).await?;
    let config = TopicConfig {
        partitions: PARTITIONS,
        retention_ms: None,
        ..TopicConfig::default()
    };
    let result = fill_open(&log, topic, config, bytes).await;
    let closed = log
        .shutdown()
        .await
        .map_err(|e| format!("shutting the log down after the fill failed: {e}"));
    result?;
    closed
}

async fn fill_open(
    log: &EmbeddedLog,
    topic: &TopicName,
    config: TopicConfig,
    bytes: u64,
) -> Result<(), String> {
    ensure_topic(log, topic, config).await?;
    let factory = Arc::new(EventFactory::new(EVENT_BYTES)?);
    let written = Arc::new(AtomicU64::new(0));
    let batch_bytes = (EVENT_BYTES * FILL_BATCH_EVENTS) as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..FILL_TASKS {
        let (log, topic, factory, written) =
            (log.clone(), topic.clone(), factory.clone(), written.clone());
        tasks.push(tokio::spawn(async move {
            let mut seq = 0u64;
            // Keyless events go to the partitions in turn, one batch each.
            while written.fetch_add(batch_bytes, Ordering::Relaxed) < bytes {
                let batch = factory.batch(FILL_PRODUCER_BASE + task, seq, FILL_BATCH_EVENTS);
                seq += FILL_BATCH_EVENTS as u64;
                let events = Event::batch_from_json(&batch.body).map_err(|e| e.to_string())?;
                let receipts = log
                    .append(&topic, events)
                    .await
                    .map_err(|e| format!("filling the log failed: {e}"))?;
                check_receipts(&receipts, FILL_BATCH_EVENTS)?;
            }
            Ok::<(), String>(())
        }));
    }
    let progress = {
        let written = written.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(10));
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let done = written.load(Ordering::Relaxed).min(bytes);
                eprintln!(
                    "  {:.1} of {:.1} GiB, {:.0} MB/s",
                    gib(done),
                    gib(bytes),
                    done as f64 / started.elapsed().as_secs_f64() / 1e6
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

/// Drops the page cache, dentries and inodes so the next open reads from the disk.
pub(crate) fn drop_caches() -> Result<(), String> {
    // Dirty pages are written first, or they would stay cached.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| {
        format!("--drop-caches: cannot write /proc/sys/vm/drop_caches ({e}); run as root or leave the flag out")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_arguments_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let args = |gib, opens| StartupArgs {
            dir: dir.path().to_owned(),
            gib,
            opens,
            drop_caches: false,
            output: Output::Json,
        };
        assert!(run(args(0, 5)).await.unwrap_err().contains("--gib"));
        assert!(run(args(1, 0)).await.unwrap_err().contains("--opens"));
        assert!(run(args(2000, 5)).await.unwrap_err().contains("--gib"));
    }
}
