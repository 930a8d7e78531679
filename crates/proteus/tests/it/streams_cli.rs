//! `proteus stream` and `proteus schema` against a real server, and `proteus bench streams`
//! against Proteus and PostgreSQL.

use serde_json::Value;

use crate::support::{ServerProcess, run_cli};

#[test]
fn streams_and_schemas_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let cli = |args: &[&str]| {
        let all: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--server", server.url.as_str()])
            .collect();
        run_cli(&all, None)
    };
    let v1 = r#"{"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"], "additionalProperties": false}"#;
    let (code, out, err) = cli(&["schema", "register", "ItemAdded", "--schema", v1]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("registered ItemAdded version 1"), "{out}");

    let (code, out, err) = cli(&[
        "stream",
        "append",
        "cart-1",
        "--type",
        "ItemAdded",
        "--data",
        r#"{"sku": "a"}"#,
        "--expected-version",
        "no-stream",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("versions 0..=0"), "{out}");
    let (code, _, err) = cli(&[
        "stream",
        "append",
        "cart-1",
        "--type",
        "ItemAdded",
        "--data",
        r#"{"sku": 1}"#,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("event 0") && err.contains("/sku"), "{err}");
    let (code, _, err) = cli(&[
        "stream",
        "append",
        "cart-1",
        "--type",
        "ItemAdded",
        "--data",
        r#"{"sku": "b"}"#,
        "--expected-version",
        "7",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("its last version is 0"), "{err}");
    let (code, _, err) = cli(&[
        "stream",
        "append",
        "cart-1",
        "--type",
        "ItemAdded",
        "--expected-version",
        "soon",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--expected-version") && err.contains(r#"use "any", "no_stream""#),
        "{err}"
    );

    // Data that starts with '-' (a negative number is JSON too) is a value, not a flag.
    let (code, _, err) = cli(&[
        "stream",
        "append",
        "temperature-1",
        "--type",
        "Measured",
        "--data",
        "-5",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&["stream", "read", "temperature-1", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let event: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(event["data"], -5, "{out}");

    // A breaking version: check says why and exits 1; with an upcaster it registers.
    let v2 = r#"{"type": "object", "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"}}, "required": ["sku", "quantity"], "additionalProperties": false}"#;
    let (code, out, _) = cli(&["schema", "check", "ItemAdded", "--schema", v2]);
    assert_eq!(code, 1);
    assert!(
        out.contains("required_property_added") || out.contains("incompatible"),
        "{out}"
    );
    let upcaster = r#"{"from_version": 1, "to_version": 2, "steps": [{"op": "add", "path": "/quantity", "default": 1}]}"#;
    let (code, out, err) = cli(&[
        "schema",
        "register",
        "ItemAdded",
        "--schema",
        v2,
        "--upcaster",
        upcaster,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("version 2"), "{out}");

    let (code, out, err) = cli(&["stream", "read", "cart-1", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let event: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        event["data"],
        serde_json::json!({"sku": "a", "quantity": 1})
    );
    let (code, out, _) = cli(&["stream", "read", "$ce-cart"]);
    assert_eq!(code, 0);
    assert!(out.contains("ItemAdded") && out.contains("cart-1"), "{out}");
    let (code, out, _) = cli(&["schema", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("ItemAdded") && out.contains("BACKWARD"),
        "{out}"
    );

    // A projection over the cart category, queried and rebuilt from the CLI.
    let definition = r#"{"source": {"category": "cart"}, "state": {"key": "stream", "handlers": {"ItemAdded": {"increment": {"items": {"path": "/data/quantity"}}}}}}"#;
    let (code, out, err) = cli(&["projection", "create", "carts", "--definition", definition]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("carts"), "{out}");
    let typo = r#"{"source": {"category": "cart"}, "state": {"key": "stream", "handlers": {"ItemAdded": {"increment": {"items": {"path": "/data/quantiy"}}}}}}"#;
    let (code, _, err) = cli(&["projection", "create", "typo", "--definition", typo]);
    assert_eq!(code, 1);
    assert!(err.contains("quantiy"), "{err}");
    let started = std::time::Instant::now();
    loop {
        let (code, out, _) = cli(&["projection", "query", "carts", "--key", "cart-1"]);
        if code == 0 {
            assert_eq!(
                serde_json::from_str::<Value>(out.trim()).unwrap()["items"],
                1
            );
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "never projected"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (code, out, err) = cli(&["projection", "rebuild", "carts"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("carts"), "{out}");
    let (code, out, _) = cli(&["projection", "status"]);
    assert_eq!(code, 0);
    assert!(out.contains("carts") && out.contains("running"), "{out}");
    assert!(out.lines().next().unwrap().contains("LAG S"), "{out}");
    let (code, out, _) = cli(&["projection", "status", "carts", "--output", "json"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(status["lag_ms"].is_u64(), "{status}");
    // A descending sort starts with '-', as the docs write it, and is not taken for a flag.
    let (code, out, err) = cli(&[
        "projection",
        "query",
        "carts",
        "--filter",
        "items:gte:1",
        "--sort",
        "-items",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cart-1"), "{out}");
}

/// Proteus beside PostgreSQL and JetStream directly, and Proteus's NATS event store used
/// in-process (`--nats-adapter`): every system appends whole appends and loads the aggregate.
#[test]
fn bench_streams_measures_proteus_beside_postgresql_and_nats() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let nats = crate::support::nats_url();
    let (code, out, err) = run_cli(
        &[
            "bench",
            "streams",
            "--target",
            &server.url,
            "--postgres",
            "postgres://postgres@127.0.0.1:5432/test",
            "--nats",
            &nats,
            "--nats-adapter",
            &nats,
            "--streams",
            "200",
            "--connections",
            "4",
            "--seconds",
            "1",
            "--aggregate-events",
            "100",
            "--output",
            "json",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    let systems = report["systems"].as_array().unwrap();
    let names: Vec<&str> = systems
        .iter()
        .map(|s| s["system"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "proteus",
            "postgresql",
            "postgresql-same-indexes",
            "nats-jetstream",
            "proteus-nats-adapter"
        ],
        "{report}"
    );
    for system in systems {
        assert!(system["events"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(
            system["events"].as_u64().unwrap() % 10,
            0,
            "whole appends: {report}"
        );
        assert!(system["aggregate_reads"].as_u64().unwrap() > 0, "{report}");
    }
}

#[test]
fn bench_projection_catches_up_and_checks_its_result() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let (code, out, err) = run_cli(
        &[
            "bench",
            "projection",
            "--data-dir",
            data_dir,
            "--events",
            "20000",
            "--streams",
            "100",
            "--output",
            "json",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["events"], 20_000, "{report}");
    assert_eq!(report["documents"], 100, "{report}");
    assert_eq!(report["filled"], true, "{report}");
    assert!(report["events_per_s"].as_f64().unwrap() > 0.0, "{report}");

    // A second run reuses the events and measures another kind.
    let (code, out, err) = run_cli(
        &[
            "bench",
            "projection",
            "--data-dir",
            data_dir,
            "--events",
            "20000",
            "--streams",
            "100",
            "--kind",
            "aggregate",
            "--output",
            "json",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["filled"], false, "{report}");
    assert_eq!(report["documents"], 4, "{report}");
}
