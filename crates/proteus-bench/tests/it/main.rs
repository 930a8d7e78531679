//! `proteus bench produce` against real targets: the embedded log in a temporary directory, and
//! the machine's Redis (127.0.0.1:6379), NATS with JetStream (127.0.0.1:4222) and PostgreSQL
//! (postgres://postgres@127.0.0.1:5432/test). `scripts/services` starts them; a test whose
//! service is down fails saying how to start it, it never skips.
//!
//! Each run is short (1 s, 4 producers) and checks what the target really holds afterwards:
//! exactly the events the producers saw acknowledged, each id once.

use std::collections::HashSet;

use clap::Parser;
use proteus_bench::{BenchCommand, ProduceReport};
use proteus_log::port::{EventReader, Log, TopicAdmin};
use proteus_log::{ReadFrom, ReadLimits, TopicName};
use proteus_log_embedded::{EmbeddedConfig, EmbeddedLog};

const REDIS_URL: &str = "redis://127.0.0.1:6379";
const NATS_URL: &str = "nats://127.0.0.1:4222";
const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

fn parse(argv: &[&str]) -> Result<BenchCommand, String> {
    Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
        .map(|cli| cli.command)
        .map_err(|e| e.to_string())
}

/// A short produce run: 1 s, no warm-up, 4 producers, batches of 50 events of 512 bytes.
async fn produce(target: &str, extra: &[&str]) -> Result<ProduceReport, String> {
    let mut argv = vec![
        "produce",
        "--target",
        target,
        "--duration-s",
        "1",
        "--warmup-s",
        "0",
        "--producers",
        "4",
        "--batch-events",
        "50",
        "--event-bytes",
        "512",
        "--output",
        "json",
    ];
    argv.extend_from_slice(extra);
    match parse(&argv)? {
        BenchCommand::Produce(args) => proteus_bench::produce(args).await,
        _ => unreachable!("the command line names produce"),
    }
}

/// A name no other run uses: lower-case letters, digits and `_`.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

fn check_report(report: &ProduceReport) {
    assert!(report.events > 0, "no event acknowledged: {report:?}");
    assert_eq!(report.failed_batches, 0, "{report:?}");
    assert!(report.batches > 0 && report.p50_ms > 0.0, "{report:?}");
    assert!(
        report.p50_ms <= report.p99_ms && report.p99_ms <= report.max_ms,
        "{report:?}"
    );
    assert!(report.acknowledged_events >= report.events, "{report:?}");
    assert_eq!(report.acknowledged_events % 50, 0, "{report:?}");
}

fn down(service: &str, how: &str, error: String) -> ! {
    panic!(
        "{service} is needed by this test and is not usable: {error}\nStart it with `scripts/services`, or: {how}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_target_appends_every_acknowledged_event_durably() {
    let dir = tempfile::tempdir().unwrap();
    let target = format!("embedded:{}", dir.path().display());
    let report = produce(&target, &["--topic", "it", "--partitions", "2"])
        .await
        .unwrap();
    check_report(&report);
    assert!(
        report.target.starts_with("proteus in-process"),
        "{report:?}"
    );

    // Reopened from disk, the log holds exactly the acknowledged events, each id once.
    let log = EmbeddedLog::open(EmbeddedConfig::new(dir.path()))
        .await
        .unwrap();
    let topic = TopicName::parse("it").unwrap();
    let description = log.describe_topic(&topic).await.unwrap();
    assert_eq!(description.partitions.len(), 2);
    let mut ids = HashSet::new();
    for partition in &description.partitions {
        let mut from = partition.first_offset;
        while from < partition.next_offset {
            let limits = ReadLimits {
                events_max: 10_000,
                bytes_max: 16 << 20,
            };
            let batch = log
                .read(&topic, partition.partition, ReadFrom::Offset(from), limits)
                .await
                .unwrap();
            for event in &batch.events {
                assert_eq!(event.json.len(), 512);
                let value: serde_json::Value = serde_json::from_slice(&event.json).unwrap();
                assert!(ids.insert(value["id"].as_str().unwrap().to_owned()));
            }
            from = batch.next_offset;
        }
    }
    assert_eq!(ids.len() as u64, report.acknowledged_events);
    log.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_target_accepts_interval_durability_and_a_paced_rate() {
    let dir = tempfile::tempdir().unwrap();
    let target = format!("embedded:{}", dir.path().display());
    let report = produce(
        &target,
        &["--durability", "interval_ms=50", "--rate", "4000"],
    )
    .await
    .unwrap();
    check_report(&report);
    assert_eq!(report.rate_events_per_s, Some(4000));
    // 4000 events/s for 1 s, in batches of 50: about 80 batches, not as many as it can.
    assert!(
        (1000..=6000).contains(&report.events),
        "pacing not applied: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_target_appends_to_a_stream() {
    let key = unique("proteus_bench_it");
    let report = produce(REDIS_URL, &["--topic", &key, "--keep"])
        .await
        .unwrap_or_else(|e| {
            down(
                "Redis on 127.0.0.1:6379",
                "redis-server --daemonize yes --bind 127.0.0.1 --port 6379",
                e,
            )
        });
    check_report(&report);
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let length: u64 = redis::cmd("XLEN")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    redis::cmd("DEL")
        .arg(&key)
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
    assert_eq!(length, report.acknowledged_events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_target_publishes_to_a_jetstream_stream() {
    let stream = unique("proteus_bench_it");
    let report = produce(NATS_URL, &["--topic", &stream, "--keep"])
        .await
        .unwrap_or_else(|e| {
            down(
                "NATS with JetStream on 127.0.0.1:4222",
                "nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server",
                e,
            )
        });
    let client = async_nats::connect(NATS_URL).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut handle = jetstream.get_stream(&stream).await.unwrap();
    let info = handle.info().await.cloned();
    jetstream.delete_stream(&stream).await.unwrap();
    check_report(&report);
    let info = info.unwrap();
    assert_eq!(info.state.messages, report.acknowledged_events);
    assert_eq!(
        info.config.storage,
        async_nats::jetstream::stream::StorageType::File
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_target_inserts_rows() {
    let table = unique("proteus_bench_it");
    let report = produce(POSTGRES_URL, &["--postgres-table", &table, "--keep"])
        .await
        .unwrap_or_else(|e| {
            down(
                "PostgreSQL on 127.0.0.1:5432",
                "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
                e,
            )
        });
    let (client, connection) = tokio_postgres::connect(POSTGRES_URL, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), count(DISTINCT event_id), min(octet_length(body)) FROM {table}"
            ),
            &[],
        )
        .await;
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
    check_report(&report);
    let row = row.unwrap();
    let (rows, distinct, body_bytes): (i64, i64, i32) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(rows as u64, report.acknowledged_events);
    assert_eq!(distinct, rows);
    assert_eq!(body_bytes, 512);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_drop_what_they_created_unless_kept() {
    let table = unique("proteus_bench_it");
    let report = produce(POSTGRES_URL, &["--postgres-table", &table])
        .await
        .unwrap_or_else(|e| {
            down(
                "PostgreSQL on 127.0.0.1:5432",
                "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
                e,
            )
        });
    check_report(&report);
    let (client, connection) = tokio_postgres::connect(POSTGRES_URL, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT to_regclass($1)::text", &[&table])
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0),
        None,
        "table {table} left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_is_down_fails_with_how_to_start_it() {
    // Port 9 (discard) has no listener on this machine.
    for (target, hint) in [
        ("redis://127.0.0.1:9", "redis-server"),
        ("nats://127.0.0.1:9", "nats-server"),
        ("postgres://postgres@127.0.0.1:9/test", "pg_ctlcluster"),
        ("http://127.0.0.1:9", "proteus serve"),
    ] {
        let error = produce(target, &[]).await.unwrap_err();
        assert!(error.contains(hint), "{target}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_fail_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let target = format!("embedded:{}", dir.path().display());
    for (extra, flag) in [
        (&["--producers", "0"][..], "--producers"),
        (&["--event-bytes", "100000000"], "--event-bytes"),
        (&["--batch-events", "20000"], "--batch-events"),
        (&["--topic", "../etc"], "--topic"),
    ] {
        let mut argv = vec!["produce", "--target", target.as_str()];
        argv.extend_from_slice(extra);
        let error = proteus_bench::run(parse(&argv).unwrap()).await.unwrap_err();
        assert!(error.contains(flag), "{extra:?}: {error}");
    }
    let error = parse(&["produce", "--target", &target, "--durability", "never"]).unwrap_err();
    assert!(error.contains("interval_ms=N"), "{error}");
    // Nothing was created for a refused run.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reads_back_a_filled_embedded_topic() {
    let dir = tempfile::tempdir().unwrap();
    let target = format!("embedded:{}", dir.path().display());
    let replay = [
        "replay",
        "--target",
        target.as_str(),
        "--events",
        "5000",
        "--partitions",
        "2",
        "--output",
        "json",
    ];
    proteus_bench::run(parse(&replay).unwrap()).await.unwrap();
    // A second run finds the events there and appends nothing more.
    proteus_bench::run(parse(&replay).unwrap()).await.unwrap();
    let log = EmbeddedLog::open(EmbeddedConfig::new(dir.path()))
        .await
        .unwrap();
    let description = log
        .describe_topic(&TopicName::parse("bench").unwrap())
        .await
        .unwrap();
    let held: u64 = description.partitions.iter().map(|p| p.next_offset).sum();
    assert_eq!(held, 5000);
    log.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_measures_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().display().to_string();
    let disk = [
        "disk",
        "--dir",
        dir_arg.as_str(),
        "--total-mib",
        "4",
        "--chunk-kib",
        "512",
        "--small-writes",
        "20",
        "--stall-s",
        "1",
    ];
    proteus_bench::run(parse(&disk).unwrap()).await.unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
