//! `proteus bench consume` against a real server and against NATS JetStream: short runs whose
//! reports must account for every event produced.

use serde_json::Value;

use crate::support::{ServerProcess, run_cli};

fn consume(target: &str, topic: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "bench", "consume", "--target", target, "--topic", topic, "--output", "json",
    ];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = run_cli(&args, None);
    assert_eq!(code, 0, "proteus {args:?} failed: {stderr}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn check(target: &str, topic: &str) {
    let latency = consume(
        target,
        topic,
        &["--rate", "2000", "--seconds", "2", "--event-bytes", "256"],
    );
    assert_eq!(latency["events"], 4_000, "{latency}");
    assert_eq!(latency["duplicates"], 0, "{latency}");
    let p99 = latency["latency_p99_ms"].as_f64().unwrap();
    assert!(p99 > 0.0 && p99 < 30_000.0, "{latency}");

    let drain = consume(
        target,
        topic,
        &[
            "--mode",
            "drain",
            "--events",
            "20000",
            "--event-bytes",
            "256",
        ],
    );
    assert_eq!(drain["events"], 20_000, "{drain}");
    assert!(drain["events_per_s"].as_f64().unwrap() > 0.0, "{drain}");
}

#[test]
fn a_proteus_group_consumes_everything_produced() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    check(&server.url, "bench-consume-it");
}

#[test]
fn the_nats_peer_consumes_everything_produced() {
    let topic = format!("bench-consume-it-{}", std::process::id());
    check("nats://127.0.0.1:4222", &topic);
}
