//! `proteus bench disk`: what the disk itself does with fdatasync, the ceiling for any durable
//! log on it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use serde::Serialize;

use crate::Output;
use crate::limits::{ensure_space, in_range};
use crate::report::{percentile, render_rows};

#[derive(Args, Debug, Clone)]
pub struct DiskArgs {
    /// Directory on the disk to measure (use the data directory's); the test file goes in a
    /// temporary directory inside it, removed afterwards [default: the current directory].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Total written sequentially, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub total_mib: u64,
    /// Size written between two fdatasyncs, in KiB.
    #[arg(long, default_value_t = 1024)]
    pub chunk_kib: u64,
    /// 4 KiB write + fdatasync round trips timed after the sequential pass.
    #[arg(long, default_value_t = 1000)]
    pub small_writes: u32,
    /// Seconds of 100 KiB write + fdatasync round trips, back to back, to count the disk's own
    /// stalls (the floor under any durable log's tail latency); 0 skips it.
    #[arg(long, default_value_t = 10)]
    pub stall_s: u64,
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

pub const TOTAL_MIB_MAX: u64 = 64 * 1024;
pub const CHUNK_KIB_MIN: u64 = 4;
pub const CHUNK_KIB_MAX: u64 = 64 * 1024;
pub const SMALL_WRITES_MAX: u32 = 100_000;
pub const STALL_S_MAX: u64 = 3600;
const SMALL_WRITE_BYTES: usize = 4096;
const STALL_WRITE_BYTES: usize = 100 * 1024;

#[derive(Debug, Serialize)]
pub struct DiskReport {
    pub dir: String,
    pub total_bytes: u64,
    pub chunk_kib: u64,
    pub seconds: f64,
    /// Sequential writes with an fdatasync after each chunk, in millions of bytes per second.
    pub sequential_mb_per_s: f64,
    pub small_writes: u32,
    pub small_write_p50_ms: f64,
    pub small_write_p99_ms: f64,
    pub small_write_max_ms: f64,
    /// 100 KiB write+fdatasync round trips in the stall pass, and how many took longer than
    /// 10, 25 and 50 ms.
    pub stall_writes: u64,
    pub stall_writes_over_10_ms: u64,
    pub stall_writes_over_25_ms: u64,
    pub stall_writes_over_50_ms: u64,
    pub stall_write_max_ms: f64,
}

impl DiskReport {
    fn table(&self) -> String {
        render_rows(&[
            ("directory", self.dir.clone()),
            (
                "sequential",
                format!(
                    "{:.1} MB/s: {} MiB in {} KiB chunks, fdatasync after each, in {:.2} s",
                    self.sequential_mb_per_s,
                    self.total_bytes >> 20,
                    self.chunk_kib,
                    self.seconds
                ),
            ),
            (
                "4 KiB write+fdatasync",
                format!(
                    "p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms over {} writes",
                    self.small_write_p50_ms,
                    self.small_write_p99_ms,
                    self.small_write_max_ms,
                    self.small_writes
                ),
            ),
            (
                "100 KiB write+fdatasync",
                format!(
                    "{} writes: {} over 10 ms, {} over 25 ms, {} over 50 ms, max {:.1} ms",
                    self.stall_writes,
                    self.stall_writes_over_10_ms,
                    self.stall_writes_over_25_ms,
                    self.stall_writes_over_50_ms,
                    self.stall_write_max_ms
                ),
            ),
        ])
    }
}

pub async fn run(args: DiskArgs) -> Result<(), String> {
    in_range("--total-mib", args.total_mib, 1, TOTAL_MIB_MAX)?;
    in_range("--chunk-kib", args.chunk_kib, CHUNK_KIB_MIN, CHUNK_KIB_MAX)?;
    if args.chunk_kib > args.total_mib * 1024 {
        return Err(format!(
            "--chunk-kib {} is larger than --total-mib {} ({} KiB); lower it",
            args.chunk_kib,
            args.total_mib,
            args.total_mib * 1024
        ));
    }
    in_range("--small-writes", args.small_writes, 1, SMALL_WRITES_MAX)?;
    in_range("--stall-s", args.stall_s, 0, STALL_S_MAX)?;
    let output = args.output;
    let report = tokio::task::spawn_blocking(move || measure(&args))
        .await
        .map_err(|e| format!("the disk measurement failed: {e}"))??;
    crate::report::print(output, &report, DiskReport::table);
    Ok(())
}

fn measure(args: &DiskArgs) -> Result<DiskReport, String> {
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    if !dir.is_dir() {
        return Err(format!(
            "--dir {} is not a directory; create it or choose another",
            dir.display()
        ));
    }
    let total_bytes = args.total_mib << 20;
    let small_bytes = u64::from(args.small_writes) * SMALL_WRITE_BYTES as u64;
    ensure_space(&dir, total_bytes + small_bytes, "the disk measurement")?;
    // Removed with everything in it when dropped, whatever happens.
    let scratch = tempfile::Builder::new()
        .prefix(".proteus-bench-disk-")
        .tempdir_in(&dir)
        .map_err(|e| format!("cannot create a directory in {}: {e}", dir.display()))?;
    let path = scratch.path().join("data");
    let measured =
        write_and_time(&path, args).map_err(|e| format!("writing {} failed: {e}", path.display()));
    let removed = scratch
        .close()
        .map_err(|e| format!("removing the test file in {} failed: {e}", dir.display()));
    let (seconds, mut latencies_ms, stall_ms) = measured?;
    removed?;
    latencies_ms.sort_by(f64::total_cmp);
    let over = |ms: f64| stall_ms.iter().filter(|&&l| l > ms).count() as u64;
    let written = (total_bytes / (args.chunk_kib << 10)) * (args.chunk_kib << 10);
    Ok(DiskReport {
        dir: std::fs::canonicalize(&dir)
            .unwrap_or(dir)
            .display()
            .to_string(),
        total_bytes: written,
        chunk_kib: args.chunk_kib,
        seconds,
        sequential_mb_per_s: written as f64 / seconds.max(1e-9) / 1e6,
        small_writes: args.small_writes,
        small_write_p50_ms: percentile(&latencies_ms, 0.5),
        small_write_p99_ms: percentile(&latencies_ms, 0.99),
        small_write_max_ms: latencies_ms.last().copied().unwrap_or(0.0),
        stall_writes: stall_ms.len() as u64,
        stall_writes_over_10_ms: over(10.0),
        stall_writes_over_25_ms: over(25.0),
        stall_writes_over_50_ms: over(50.0),
        stall_write_max_ms: stall_ms.iter().copied().fold(0.0, f64::max),
    })
}

/// The sequential pass's seconds, and each small and stall-pass write's latency in ms.
fn write_and_time(path: &Path, args: &DiskArgs) -> std::io::Result<(f64, Vec<f64>, Vec<f64>)> {
    let mut file = File::create_new(path)?;
    // Not all zeroes, so no file system can skip or compress it.
    let chunk: Vec<u8> = (0..args.chunk_kib << 10)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let chunks = (args.total_mib << 10) / args.chunk_kib;
    let started = Instant::now();
    for _ in 0..chunks {
        file.write_all(&chunk)?;
        file.sync_data()?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let small = [0xA5u8; SMALL_WRITE_BYTES];
    let mut latencies_ms = Vec::with_capacity(args.small_writes as usize);
    for _ in 0..args.small_writes {
        let t = Instant::now();
        file.write_all(&small)?;
        file.sync_data()?;
        latencies_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    // The stall pass rewrites the start of the file, so it needs no more space.
    let batch = &chunk[..STALL_WRITE_BYTES.min(chunk.len())];
    let mut stall_ms = Vec::new();
    let mut position = 0u64;
    let stall_started = Instant::now();
    while stall_started.elapsed().as_secs() < args.stall_s {
        use std::os::unix::fs::FileExt;
        let t = Instant::now();
        file.write_all_at(batch, position)?;
        file.sync_data()?;
        stall_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        position = (position + batch.len() as u64) % (args.total_mib << 20).max(batch.len() as u64);
    }
    Ok((seconds, latencies_ms, stall_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> DiskArgs {
        DiskArgs {
            dir: Some(dir.to_owned()),
            total_mib: 2,
            chunk_kib: 256,
            small_writes: 10,
            stall_s: 1,
            output: Output::Json,
        }
    }

    #[test]
    fn a_small_measurement_reports_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let report = measure(&args(dir.path())).unwrap();
        assert_eq!(report.total_bytes, 2 << 20);
        assert!(report.sequential_mb_per_s > 0.0);
        assert!(report.small_write_p50_ms <= report.small_write_p99_ms);
        assert!(report.small_write_p99_ms <= report.small_write_max_ms);
        assert!(report.table().contains("4 KiB write+fdatasync"));
        assert!(report.stall_writes > 0 && report.stall_write_max_ms > 0.0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn bad_arguments_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.chunk_kib = 2;
        assert!(run(a).await.unwrap_err().contains("--chunk-kib"));
        let mut a = args(dir.path());
        a.total_mib = 0;
        assert!(run(a).await.unwrap_err().contains("--total-mib"));
        let mut a = args(dir.path());
        a.chunk_kib = 4096;
        assert!(
            run(a)
                .await
                .unwrap_err()
                .contains("larger than --total-mib")
        );
        let mut a = args(&dir.path().join("missing"));
        a.total_mib = 1;
        assert!(run(a).await.unwrap_err().contains("not a directory"));
    }
}
