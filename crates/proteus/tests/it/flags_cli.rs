//! `proteus flags` against a real server, and `serve --flags` reloading a changed file.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{ServerProcess, run_cli};

const FLAGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openfeature/flags.json");

#[test]
fn flags_are_validated_pushed_changed_audited_and_rolled_back_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let cli = |args: &[&str]| {
        let all: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--server", server.url.as_str(), "--set", "prod"])
            .collect();
        run_cli(&all, None)
    };

    let (code, out, err) = run_cli(&["flags", "validate", FLAGS], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("valid, 7 flags"), "{out}");
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"flags": {"x": {"state": "ENABLED", "variants": {"a": true}, "defaultVariant": "b"}}}"#,
    )
    .unwrap();
    let (code, _, err) = run_cli(&["flags", "validate", bad.to_str().unwrap()], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("/flags/x/defaultVariant") && err.contains("fix the definitions"),
        "{err}"
    );

    let (code, out, err) = cli(&["flags", "push", FLAGS, "--comment", "first release"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("now version 1"), "{out}");
    let (code, out, _) = cli(&["flags", "push", FLAGS]);
    assert_eq!(code, 0);
    assert!(out.contains("unchanged"), "{out}");

    let (code, out, err) = cli(&["flags", "get"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("legacy-search") && out.contains("DISABLED"),
        "{out}"
    );

    let (code, _, err) = cli(&[
        "flags",
        "set",
        "new-checkout",
        "--state",
        "disabled",
        "--comment",
        "incident 7",
    ]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = cli(&[
        "flags",
        "evaluate",
        "new-checkout",
        "--context",
        r#"{"targetingKey": "u", "email": "a@example.com"}"#,
    ]);
    // `--set` only matters for management; OFREP without keys evaluates `default`.
    let answer: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(answer["errorCode"], "FLAG_NOT_FOUND", "{answer}");

    let definition =
        json!({"state": "ENABLED", "variants": {"a": 1, "b": 2}, "defaultVariant": "b"});
    let (code, _, err) = cli(&[
        "flags",
        "set",
        "page-size",
        "--definition",
        &definition.to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&[
        "flags",
        "set",
        "page-size",
        "--definition",
        r#"{"state": "ON"}"#,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("/flags/page-size"), "{err}");

    let (code, out, err) = cli(&["flags", "history", "new-checkout"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("incident 7") && out.contains("first release"),
        "{out}"
    );
    assert!(
        !out.contains("page-size"),
        "only the changes to new-checkout: {out}"
    );

    let (code, out, err) = cli(&["flags", "rollback", "--to-version", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("now version 4"), "{out}");
    let (_, out, _) = cli(&["flags", "get", "new-checkout"]);
    assert!(out.contains("\"ENABLED\""), "{out}");
    let (code, _, err) = cli(&["flags", "rollback", "--to-version", "99"]);
    assert_eq!(code, 1);
    assert!(err.contains("versions are 1 to 4"), "{err}");
}

#[test]
fn serve_flags_applies_a_changed_file_within_the_watch_interval() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flags.json");
    let flag = |text: &str| {
        json!({"flags": {"banner": {"state": "ENABLED", "variants": {"v": text}, "defaultVariant": "v"}}})
            .to_string()
    };
    std::fs::write(&file, flag("one")).unwrap();
    let data = dir.path().join("data");
    let server = ServerProcess::start_with(
        &data,
        &["--flags", file.to_str().unwrap(), "--flags-watch-ms", "100"],
        &[],
    );
    let evaluate = || {
        reqwest::blocking::Client::new()
            .post(format!("{}/ofrep/v1/evaluate/flags/banner", server.url))
            .json(&json!({"context": {"targetingKey": "u"}}))
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap()
    };
    assert_eq!(evaluate()["value"], "one");
    std::fs::write(&file, flag("two")).unwrap();
    let started = Instant::now();
    while evaluate()["value"] != "two" {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the change was not applied"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A broken file keeps the last good version.
    std::fs::write(&file, "{ not json").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(evaluate()["value"], "two");
    let history: Value =
        reqwest::blocking::get(format!("{}/v1/flagsets/default/history", server.url))
            .unwrap()
            .json()
            .unwrap();
    assert_eq!(
        history["revisions"][0]["actor"],
        format!("file:{}", file.display())
    );
}

#[test]
fn bench_ofrep_measures_single_and_bulk_evaluations() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    for mode in ["single", "bulk"] {
        let (code, out, err) = run_cli(
            &[
                "bench",
                "ofrep",
                "--target",
                &server.url,
                "--mode",
                mode,
                "--seconds",
                "1",
                "--connections",
                "2",
                "--flags",
                "20",
                "--output",
                "json",
            ],
            None,
        );
        assert_eq!(code, 0, "{err}");
        let report: Value = serde_json::from_str(out.trim()).unwrap();
        assert!(report["requests"].as_u64().unwrap() > 10, "{report}");
        assert!(report["latency_p99_ms"].as_f64().unwrap() > 0.0, "{report}");
    }
    // The bench pushed its set through the management API: 20 flags, audited.
    let set: Value = reqwest::blocking::get(format!("{}/v1/flagsets/default", server.url))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(set["flags"], 20, "{set}");
}

#[test]
fn sampled_evaluations_become_exposure_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        &dir.path().join("data"),
        &["--flags", FLAGS, "--flag-exposure-sample-rate", "0.5"],
        &[],
    );
    let http = reqwest::blocking::Client::new();
    let users: Vec<String> = (0..40).map(|n| format!("user-{n}")).collect();
    for user in &users {
        for _ in 0..2 {
            let answer: Value = http
                .post(format!("{}/ofrep/v1/evaluate/flags/page-size", server.url))
                .json(&json!({"context": {"targetingKey": user}}))
                .send()
                .unwrap()
                .json()
                .unwrap();
            assert_eq!(answer["value"], 10);
        }
    }
    // Batches are appended within the linger time (200 ms).
    let started = Instant::now();
    let exposures = loop {
        let page: Value = http
            .get(format!(
                "{}/v1/topics/proteus.flags.exposures/partitions/0/events?from=0&limit=1000",
                server.url
            ))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let events = page["events"].as_array().cloned().unwrap_or_default();
        if started.elapsed() > Duration::from_secs(2) {
            break events;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut per_user = std::collections::BTreeMap::<String, usize>::new();
    for stored in &exposures {
        let event = &stored["event"];
        assert_eq!(event["type"], "dev.proteus.flag.exposure");
        let data = &event["data"];
        assert_eq!(
            (&data["flag"], &data["variant"], &data["reason"]),
            (&json!("page-size"), &json!("small"), &json!("STATIC"))
        );
        *per_user
            .entry(data["targetingKey"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    // Sampling is per unit: a sampled user has both of its evaluations, about half are sampled.
    assert!(per_user.values().all(|n| *n == 2), "{per_user:?}");
    assert!(
        (8..=32).contains(&per_user.len()),
        "{} of 40 users sampled",
        per_user.len()
    );
}

#[test]
fn changes_are_scheduled_listed_and_cancelled_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(&dir.path().join("data"), &["--flags", FLAGS], &[]);
    let cli = |args: &[&str]| {
        let all: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--server", server.url.as_str()])
            .collect();
        run_cli(&all, None)
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let soon = (now_ms + 500).to_string();
    let (code, out, err) = cli(&[
        "flags",
        "schedule",
        "banner-text",
        "--at",
        &soon,
        "--state",
        "disabled",
        "--comment",
        "end of campaign",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("scheduled banner-text"), "{out}");
    let tomorrow = (time::OffsetDateTime::now_utc() + time::Duration::days(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (code, out, err) = cli(&[
        "flags",
        "schedule",
        "page-size",
        "--at",
        &tomorrow,
        "--definition",
        r#"{"state": "ENABLED", "variants": {"small": 10, "large": 50}, "defaultVariant": "large"}"#,
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{err}");
    let later: Value = serde_json::from_str(out.trim()).unwrap();
    let (_, out, _) = cli(&["flags", "schedules"]);
    assert!(
        out.contains("set_state") && out.contains("put_flag") && out.contains("end of campaign"),
        "{out}"
    );

    let started = Instant::now();
    loop {
        let (_, out, _) = cli(&["flags", "get", "banner-text"]);
        if out.contains("DISABLED") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the scheduled change never applied: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, out, err) = cli(&[
        "flags",
        "schedules",
        "--cancel",
        later["id"].as_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cancelled"), "{out}");
    let (_, out, _) = cli(&["flags", "schedules", "--output", "json"]);
    assert!(out.trim().is_empty(), "nothing pending: {out}");
    let (code, _, err) = cli(&[
        "flags", "schedule", "nope", "--at", &soon, "--state", "disabled",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("flag 'nope' does not exist"), "{err}");
}

#[test]
fn stale_flags_are_reported_and_usage_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--flags", FLAGS, "--flag-usage-flush-ms", "200"];
    let mut server = ServerProcess::start_with(&data, &args, &[]);
    let http = reqwest::blocking::Client::new();
    let evaluate = |url: &str, key: &str| {
        let answer: Value = http
            .post(format!("{url}/ofrep/v1/evaluate/flags/{key}"))
            .json(&json!({"context": {"targetingKey": "user-1"}}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert!(answer["errorCode"].is_null(), "{answer}");
    };
    let stale = |url: &str, extra: &[&str]| {
        let mut all = vec!["flags", "stale", "--server", url, "--output", "json"];
        all.extend_from_slice(extra);
        let (code, out, err) = run_cli(&all, None);
        assert_eq!(code, 0, "{err}");
        let report: Value = serde_json::from_str(out.trim()).unwrap();
        report
    };
    let keys_with = |report: &Value, reason: &str| -> Vec<String> {
        report["flags"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["reasons"].as_array().unwrap().contains(&json!(reason)))
            .map(|f| f["key"].as_str().unwrap().to_owned())
            .collect()
    };

    evaluate(&server.url, "rollout");
    std::thread::sleep(Duration::from_secs(3));
    evaluate(&server.url, "theme");
    let report = stale(&server.url, &["--unused-for", "2s", "--uniform-for", "off"]);
    assert_eq!(
        keys_with(&report, "not_evaluated"),
        [
            "banner-text",
            "discount-rate",
            "legacy-search",
            "new-checkout",
            "page-size",
            "rollout"
        ],
        "{report}"
    );
    let rollout = report["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"] == "rollout")
        .unwrap();
    assert!(rollout["last_evaluated_ms"].is_i64(), "{rollout}");
    let report = stale(&server.url, &["--unused-for", "off", "--uniform-for", "2s"]);
    assert_eq!(
        keys_with(&report, "uniform"),
        ["discount-rate", "legacy-search", "page-size"],
        "{report}"
    );

    // A rollout plan from the CLI: 100 % now makes the flag uniform (fully rolled out).
    let (code, out, err) = run_cli(
        &[
            "flags",
            "rollout",
            "rollout",
            "--variant",
            "on",
            "--steps",
            "50,100",
            "--every",
            "1h",
            "--server",
            &server.url,
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("50%") && out.contains("100%"), "{out}");
    let started = Instant::now();
    while !run_cli(&["flags", "get", "rollout", "--server", &server.url], None)
        .1
        .contains("50")
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "step 1 never applied"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, out, err) = run_cli(
        &[
            "flags",
            "rollout",
            "rollout",
            "--pause",
            "--server",
            &server.url,
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 pending steps cancelled"), "{out}");
    let (code, _, err) = run_cli(
        &[
            "flags",
            "rollout",
            "rollout",
            "--variant",
            "on",
            "--steps",
            "100",
            "--server",
            &server.url,
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let started = Instant::now();
    loop {
        let report = stale(&server.url, &["--unused-for", "off", "--uniform-for", "0s"]);
        let rollout = report["flags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["key"] == "rollout")
            .cloned();
        if let Some(rollout) = rollout {
            assert_eq!(
                rollout["uniform"],
                json!({"kind": "fully_rolled_out", "variant": "on"})
            );
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{report}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _, err) = run_cli(
        &[
            "flags",
            "stale",
            "--fail",
            "--unused-for",
            "2s",
            "--server",
            &server.url,
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("stale flag(s) in flag set 'default'"), "{err}");
    let (code, _, err) = run_cli(
        &[
            "flags",
            "stale",
            "--unused-for",
            "soon",
            "--server",
            &server.url,
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("unused_for 'soon' is not a duration"), "{err}");

    // Usage is flushed every 200 ms: a kill -9 after that keeps it.
    let theme_before = stale(&server.url, &["--unused-for", "0s", "--uniform-for", "off"]);
    std::thread::sleep(Duration::from_millis(600));
    server.kill_9();
    let server = ServerProcess::start_with(&data, &args, &[]);
    let theme_after = stale(&server.url, &["--unused-for", "0s", "--uniform-for", "off"]);
    let last_evaluated = |report: &Value, key: &str| {
        report["flags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["key"] == key)
            .map(|f| f["last_evaluated_ms"].clone())
    };
    for key in ["theme", "rollout"] {
        let before = last_evaluated(&theme_before, key).unwrap();
        assert!(before.is_i64(), "{theme_before}");
        assert_eq!(last_evaluated(&theme_after, key), Some(before), "{key}");
    }
    assert_eq!(
        last_evaluated(&theme_after, "page-size"),
        Some(Value::Null),
        "{theme_after}"
    );
}
