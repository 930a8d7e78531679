//! `proteus group`, `proteus dlq` and `proteus consume` against a real server: a group created,
//! listed and described, an event dead-lettered (by a member over HTTP), listed and replayed from
//! the command line and consumed again, the group reset and deleted, and bad input explained.

use serde_json::{Value, json};

use crate::support::{ServerProcess, run_cli};

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[test]
fn groups_and_dead_letters_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let url = server.url.clone();
    let cli = |args: &[&str]| {
        let all: Vec<&str> = args.iter().copied().chain(["--server", &url]).collect();
        run_cli(&all, None)
    };
    let http = reqwest::blocking::Client::new();
    let group_url = format!("{url}/v1/topics/orders/groups/billing");

    let (code, _, err) = cli(&["topic", "create", "orders", "--partitions", "1"]);
    assert_eq!(code, 0, "{err}");
    for id in ["o1", "o2", "o3"] {
        let (code, _, err) = cli(&["publish", "orders", "--type", "order.placed", "--id", id]);
        assert_eq!(code, 0, "{err}");
    }
    let (code, _, err) = cli(&[
        "group",
        "create",
        "orders",
        "billing",
        "--deliveries-max",
        "1",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&["group", "list", "orders", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let listed = json_lines(&out);
    assert_eq!(listed.len(), 1, "{out}");
    assert_eq!(
        (&listed[0]["group"], &listed[0]["lag_events"]),
        (&json!("billing"), &json!(3)),
        "{out}"
    );

    // A member fails o2 once: with deliveries_max 1 it is dead-lettered with the error.
    let joined: Value = http
        .post(format!("{group_url}/members"))
        .json(&json!({}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let member = format!(
        "{group_url}/members/{}",
        joined["member_id"].as_str().unwrap()
    );
    let pulled: Value = http
        .post(format!("{member}/pull"))
        .json(&json!({"max_events": 10}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let position_of = |id: &str| {
        pulled["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["event"]["id"] == id)
            .unwrap_or_else(|| panic!("{id} not pulled: {pulled}"))["position"]
            .clone()
    };
    let generation = &joined["generation"];
    let nacked: Value = http
        .post(format!("{member}/nack"))
        .json(&json!({"generation": generation, "positions": [position_of("o2")], "error": "card declined"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        nacked["dead_lettered"],
        json!([position_of("o2")]),
        "{nacked}"
    );
    let acked = http
        .post(format!("{member}/ack"))
        .json(
            &json!({"generation": generation, "positions": [position_of("o1"), position_of("o3")]}),
        )
        .send()
        .unwrap();
    assert!(acked.status().is_success(), "{}", acked.status());
    let left = http.delete(&member).send().unwrap();
    assert!(left.status().is_success(), "{}", left.status());

    let (code, out, err) = cli(&["dlq", "list", "orders", "billing"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("o2") && out.contains("card declined"), "{out}");
    let (code, out, err) = cli(&["dlq", "list", "orders", "billing", "--from", "1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "no dead letters at or after DLQ offset 1");

    let (code, out, err) = cli(&["dlq", "replay", "orders", "billing", "--all"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("1 dead letters queued for redelivery"),
        "{out}"
    );
    let (code, out, err) = cli(&[
        "consume", "orders", "--group", "billing", "--count", "1", "--output", "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let consumed = json_lines(&out);
    assert_eq!(consumed.len(), 1, "{out}");
    assert_eq!(
        (&consumed[0]["event"]["id"], &consumed[0]["replay"]),
        (&json!("o2"), &json!(true)),
        "{out}"
    );

    let (code, out, err) = cli(&["group", "describe", "orders", "billing", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let described: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(described["counters"]["dead_lettered"], 1, "{described}");
    assert_eq!(described["partitions"][0]["committed"], 3, "{described}");
    let (code, _, err) = cli(&["group", "reset", "orders", "billing", "--to", "beginning"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = cli(&["group", "list", "orders", "--output", "json"]);
    assert_eq!(code, 0);
    assert_eq!(json_lines(&out)[0]["lag_events"], 3, "{out}");

    // Bad input: what was wrong, and what to do.
    let (code, _, err) = cli(&["group", "create", "orders", "late", "--start", "soon"]);
    assert_eq!(code, 1);
    assert!(err.contains("soon") && err.contains("beginning"), "{err}");
    let (code, _, err) = cli(&["dlq", "list", "orders", "nobody"]);
    assert_eq!(code, 1);
    assert!(err.contains("nobody"), "{err}");

    let (code, _, err) = cli(&["group", "delete", "orders", "billing"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = cli(&["group", "list", "orders", "--output", "json"]);
    assert_eq!(code, 0);
    assert!(json_lines(&out).is_empty(), "{out}");
}

/// `proteus consume` rides out a server it cannot reach for at most `--unavailable-wait-max-ms`,
/// then exits saying so and how to wait longer (with the server killed, nothing answers).
#[test]
fn consume_gives_up_once_the_server_is_gone_longer_than_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path());
    let url = server.url.clone();
    let (code, _, err) = run_cli(
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "1",
            "--server",
            &url,
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let consumer = std::process::Command::new(crate::support::BINARY)
        .args(["consume", "orders", "--group", "g", "--create"])
        .args(["--unavailable-wait-max-ms", "1000", "--server", &url])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let it join and start pulling before the server goes.
    std::thread::sleep(std::time::Duration::from_millis(500));
    server.kill_9();
    let killed_at = std::time::Instant::now();
    let output = consumer.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("retrying for up to 1000 ms")
            && stderr.contains("still unavailable after 1000 ms")
            && stderr.contains("--unavailable-wait-max-ms"),
        "{stderr}"
    );
    assert!(
        killed_at.elapsed() < std::time::Duration::from_secs(15),
        "it gave up {:?} after the kill",
        killed_at.elapsed()
    );
}

/// `proteus consume` started while its server cannot be reached (a proxy in front of it not
/// listening yet) waits for it within `--unavailable-wait-max-ms`, saying so once, then
/// consumes.
#[test]
fn consume_waits_for_a_server_it_cannot_reach_yet() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    for args in [
        vec!["topic", "create", "orders", "--partitions", "1"],
        vec!["group", "create", "orders", "g"],
        vec!["publish", "orders", "--type", "order.placed", "--id", "o1"],
    ] {
        let all: Vec<&str> = args.into_iter().chain(["--server", &server.url]).collect();
        let (code, _, err) = run_cli(&all, None);
        assert_eq!(code, 0, "{err}");
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream = server.url.trim_start_matches("http://").to_owned();
    let proxy = runtime.block_on(proteus_nats::test_support::Proxy::start(upstream));
    proxy.stop();
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let consumer = std::process::Command::new(crate::support::BINARY)
        .args(["consume", "orders", "--group", "g", "--count", "1"])
        .args(["--output", "json", "--unavailable-wait-max-ms", "30000"])
        .args(["--server", &url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    runtime.block_on(proxy.restart());
    let output = consumer.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: joining the group") && stderr.contains("served again after"),
        "{stderr}"
    );
    assert_eq!(json_lines(&stdout)[0]["event"]["id"], "o1", "{stdout}");
}
