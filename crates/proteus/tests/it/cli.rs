//! The command-line client against a real server.

use serde_json::Value;

use crate::support::{ServerProcess, run_cli};

#[test]
fn topics_publish_and_tail_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let s = ["--server", server.url.as_str()];
    let cli = |args: &[&str], stdin: Option<&str>| {
        let all: Vec<&str> = args.iter().chain(s.iter()).copied().collect();
        run_cli(&all, stdin)
    };

    let (code, out, err) = cli(
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "2",
            "--retention-ms",
            "3600000",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("topic orders") && out.contains("1h"), "{out}");

    let (code, out, err) = cli(
        &[
            "publish",
            "orders",
            "--type",
            "order.placed",
            "--subject",
            "order-1",
            "--data",
            r#"{"total":12}"#,
            "--id",
            "o1",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("DUPLICATE") && out.contains("no"), "{out}");

    let lines = "{\"type\":\"order.paid\",\"subject\":\"order-1\",\"id\":\"o2\"}\n\n{\"type\":\"order.shipped\",\"subject\":\"order-1\",\"id\":\"o3\"}\n";
    let (code, out, err) = cli(&["publish", "orders", "--output", "json"], Some(lines));
    assert_eq!(code, 0, "{err}");
    let results: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 2);
    assert_eq!(results[1]["line"], 3, "results name the stdin line");

    let (code, out, err) = cli(
        &[
            "tail",
            "orders",
            "--from",
            "beginning",
            "--count",
            "3",
            "--output",
            "json",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let ids: Vec<String> = out
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["event"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        ids,
        ["o1", "o2", "o3"],
        "one subject, one partition, in order"
    );

    let (code, out, _) = cli(&["topic", "list"], None);
    assert_eq!(code, 0);
    assert!(out.lines().nth(1).unwrap().starts_with("orders"), "{out}");
    let (code, out, _) = cli(&["topic", "describe", "orders", "--output", "json"], None);
    assert_eq!(code, 0);
    let described: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(described["config"]["retention_ms"], 3_600_000);
    assert_eq!(described["partitions"][0]["segments"], 1, "{described}");
    let (code, out, _) = cli(&["topic", "describe", "orders"], None);
    assert_eq!(code, 0);
    assert!(
        out.contains("segment: 64.0 MiB") && out.contains("SEGMENTS"),
        "{out}"
    );

    let (code, _, err) = cli(&["publish", "orders"], Some("{\"id\":\"x\"}\n"));
    assert_eq!(code, 1);
    assert!(err.contains("line 1 has no \"type\""), "{err}");
    let (code, _, err) = cli(&["publish", "orders"], Some("not json\n"));
    assert_eq!(code, 1);
    assert!(err.contains("line 1 is not JSON"), "{err}");
    let (code, _, err) = cli(&["publish", "nowhere", "--type", "t"], None);
    assert_eq!(code, 1);
    assert!(err.contains("proteus topic create nowhere"), "{err}");

    let (code, out, _) = cli(&["topic", "delete", "orders"], None);
    assert_eq!(code, 0);
    assert!(out.contains("deleted topic orders"));

    let (code, out, err) = cli(&["status"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ready"), "{out}");
    assert!(out.contains("every store is embedded"), "{out}");
    let (code, out, _) = cli(&["status", "--output", "json"], None);
    assert_eq!(code, 0);
    let readiness: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(readiness["backends"], serde_json::json!([]), "{readiness}");
}

#[test]
fn an_unreachable_server_is_explained() {
    let (code, _, err) = run_cli(&["topic", "list", "--server", "http://127.0.0.1:1"], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach Proteus at http://127.0.0.1:1"),
        "{err}"
    );
    assert!(err.contains("proteus serve"), "{err}");
    let (code, _, err) = run_cli(&["status", "--server", "http://127.0.0.1:1"], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach Proteus at http://127.0.0.1:1"),
        "{err}"
    );
    let (code, _, err) = run_cli(&["topic", "list", "--server", "not a url"], None);
    assert_eq!(code, 1);
    assert!(err.contains("invalid server URL"), "{err}");
}

#[test]
fn bad_server_settings_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (code, _, err) = run_cli(
        &["serve", "--data-dir", data, "--durability", "sometimes"],
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("interval_ms=N"), "{err}");
    let config = dir.path().join("proteus.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nretention = 5\n").unwrap();
    let (code, _, err) = run_cli(
        &[
            "serve",
            "--data-dir",
            data,
            "--config",
            config.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("unknown field `retention`"), "{err}");
    // Two servers cannot share a data directory.
    let _first = ServerProcess::start(dir.path());
    let (code, _, err) = run_cli(
        &["serve", "--data-dir", data, "--listen", "127.0.0.1:0"],
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("another Proteus process"), "{err}");
}

#[test]
fn settings_come_from_the_environment_and_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proteus.toml");
    std::fs::write(
        &config,
        "durability = \"interval_ms=25\"\nlog_level = \"debug\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start_with(
        &data,
        &[],
        &[
            ("PROTEUS_CONFIG", config.to_str().unwrap()),
            ("PROTEUS_HTTP_BODY_BYTES_MAX", "2048"),
        ],
    );
    let log = server.log_text();
    assert!(
        log.contains("interval_ms=25"),
        "the file's durability is used: {log}"
    );
    let (code, _, _) = run_cli(&["topic", "create", "t", "--server", &server.url], None);
    assert_eq!(code, 0);
    let big = format!("{{\"type\":\"t\",\"data\":\"{}\"}}\n", "x".repeat(4000));
    let (code, _, err) = run_cli(&["publish", "t", "--server", &server.url], Some(&big));
    assert_eq!(code, 1);
    assert!(
        err.contains("2048 bytes"),
        "the environment's body limit is used: {err}"
    );
}
