//! `proteus experiment` against a real server: an A/B test on a fractional flag, from exposures
//! served over OFREP and conversions published as CloudEvents to the decision rolled out, and
//! the experiment surviving kill -9.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{ServerProcess, run_cli};

const USERS: usize = 200;

fn results_when(
    http: &reqwest::blocking::Client,
    url: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let results: Value = http
            .get(format!("{url}/v1/experiments/checkout-green/results"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if done(&results) {
            return results;
        }
        assert!(
            Instant::now() < deadline,
            "the results never got there: {results:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_experiment_runs_from_exposures_to_a_rolled_out_decision_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--flag-exposure-sample-rate", "1"];
    let mut server = ServerProcess::start_with(&data, &args, &[]);
    let url = server.url.clone();
    let cli = |args: &[&str]| {
        let all: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--server", url.as_str()])
            .collect();
        run_cli(&all, None)
    };
    let http = reqwest::blocking::Client::new();

    let flags = dir.path().join("flags.json");
    std::fs::write(
        &flags,
        json!({"flags": {"checkout": {
            "state": "ENABLED",
            "variants": {"control": "grey", "green": "green"},
            "defaultVariant": "control",
            "targeting": {"fractional": [["control", 50], ["green", 50]]}
        }}})
        .to_string(),
    )
    .unwrap();
    let (code, _, err) = cli(&["flags", "push", flags.to_str().unwrap(), "--set", "default"]);
    assert_eq!(code, 0, "{err}");
    let response = http
        .put(format!("{url}/v1/topics/shop"))
        .json(&json!({"partitions": 2}))
        .send()
        .unwrap();
    assert!(response.status().is_success(), "{:?}", response.text());

    let mut definition = json!({
        "id": "checkout-green",
        "name": "Green checkout button",
        "flag_set": "default",
        "flag": "checkout",
        "hypothesis": "A green button makes more people buy.",
        "arms": [{"variant": "control", "weight": 1}, {"variant": "green", "weight": 1}],
        "control": "control",
        "metrics": [{"id": "purchase", "kind": "conversion",
                     "source": {"topic": "shop", "event_type": "order.placed"}}],
        "primary_metric": "purchase",
        "minimum_detectable_effect": {"relative": 0.1}
    });
    // Bad input: an unknown variant is named with its JSON path.
    definition["arms"][1]["variant"] = json!("blue");
    let file = dir.path().join("experiment.json");
    std::fs::write(&file, definition.to_string()).unwrap();
    let at_file = format!("@{}", file.display());
    let (code, _, err) = cli(&["experiment", "create", "--definition", &at_file]);
    assert_eq!(code, 1);
    assert!(err.contains("/arms/1") && err.contains("blue"), "{err}");
    let response = http
        .post(format!("{url}/v1/experiments"))
        .json(&definition)
        .send()
        .unwrap();
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().unwrap();
    assert!(
        problem["errors"][0]["path"]
            .as_str()
            .unwrap()
            .starts_with("/arms/1"),
        "{problem}"
    );

    definition["arms"][1]["variant"] = json!("green");
    std::fs::write(&file, definition.to_string()).unwrap();
    let (code, out, err) = cli(&["experiment", "create", "--definition", &at_file]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("checkout-green is draft"), "{out}");
    let (code, out, err) = cli(&["experiment", "start", "checkout-green"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("is running"), "{out}");
    // A wrong transition is a 409 naming what is allowed.
    let response = http
        .post(format!("{url}/v1/experiments/checkout-green/decide"))
        .json(&json!({"variant": "green", "rollout": true}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 409);
    let problem: Value = response.json().unwrap();
    assert_eq!(problem["allowed_actions"], json!(["stop"]), "{problem}");

    // Exposures: every user evaluates the flag over OFREP.
    let mut arms: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for user in 0..USERS {
        let answer: Value = http
            .post(format!("{url}/ofrep/v1/evaluate/flags/checkout"))
            .json(&json!({"context": {"targetingKey": format!("user-{user}")}}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        arms.entry(answer["variant"].as_str().unwrap().to_owned())
            .or_default()
            .push(user);
    }
    let control = arms["control"].len();
    let green = arms["green"].len();
    assert_eq!(control + green, USERS);
    // Conversions: every other green user buys.
    let buyers: Vec<usize> = arms["green"].iter().copied().step_by(2).collect();
    let events: Vec<Value> = buyers
        .iter()
        .map(|user| {
            json!({"specversion": "1.0", "id": format!("order-{user}"), "source": "/shop",
                   "type": "order.placed", "partitionkey": format!("user-{user}"),
                   "data": {"amount": 12}})
        })
        .collect();
    let response = http
        .post(format!("{url}/v1/topics/shop/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .json(&events)
        .send()
        .unwrap();
    assert!(response.status().is_success(), "{:?}", response.text());

    let results = results_when(&http, &url, |r| {
        r["metrics"][0]["arms"][0]["n"] == control
            && r["metrics"][0]["arms"][1]["n"] == green
            && r["aggregation"]["metric_events_applied"] == buyers.len()
    });
    let metric = &results["metrics"][0];
    assert_eq!(metric["arms"][0]["mean"], 0.0);
    let mean = metric["arms"][1]["mean"].as_f64().unwrap();
    assert!(
        (mean - buyers.len() as f64 / green as f64).abs() < 1e-12,
        "{results:#}"
    );
    assert_eq!(results["srm"]["status"], "ok", "{results:#}");
    assert_eq!(results["state"], "running");
    assert!(!results.to_string().contains("NaN"));

    let (code, out, err) = cli(&["experiment", "results", "checkout-green"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("SRM: ok"), "{out}");
    assert!(
        lines[1].starts_with("ARM") && lines[1].contains("P-VALUE"),
        "{out}"
    );
    let green_row = lines
        .iter()
        .find(|l| l.starts_with("green"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        green_row.contains("purchase") && green_row.contains(&format!(" {green} ")),
        "{out}"
    );
    assert!(lines.iter().any(|l| l.starts_with("decision: ")), "{out}");
    let (code, out, _) = cli(&[
        "experiment",
        "results",
        "checkout-green",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0);
    let parsed: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(parsed["experiment_id"], "checkout-green");
    // The chart of the lift over time, from the results history.
    let chart = dir.path().join("lift.svg");
    let (code, _, err) = cli(&[
        "experiment",
        "results",
        "checkout-green",
        "--chart",
        chart.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("lift of purchase"),
        "{svg}"
    );
    assert!(
        svg.contains("<polyline") && svg.contains(">green "),
        "{svg}"
    );
    let history: Value = http
        .get(format!(
            "{url}/v1/experiments/checkout-green/results/history"
        ))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        history["points"][0]["arms"][0]["variant"], "green",
        "{history}"
    );
    let (code, out, _) = cli(&["experiment", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("checkout-green") && out.contains("running"),
        "{out}"
    );

    // Stop, decide with a rollout: every user now gets green.
    let (code, _, err) = cli(&["experiment", "stop", "checkout-green"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&[
        "experiment",
        "decide",
        "checkout-green",
        "--variant",
        "green",
        "--rollout",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("is decided") && out.contains("serves 'green'"),
        "{out}"
    );
    for user in &arms["control"][..5] {
        let answer: Value = http
            .post(format!("{url}/ofrep/v1/evaluate/flags/checkout"))
            .json(&json!({"context": {"targetingKey": format!("user-{user}")}}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(answer["variant"], "green", "{answer}");
    }

    // kill -9 and restart: the experiment and its results are still there.
    server.kill_9();
    let server = ServerProcess::start_with(&data, &args, &[]);
    let url = server.url.clone();
    let experiment: Value = http
        .get(format!("{url}/v1/experiments/checkout-green"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(experiment["state"], "decided", "{experiment}");
    assert_eq!(experiment["status"]["decision"]["variant"], "green");
    let results = results_when(&http, &url, |r| {
        r["metrics"][0]["arms"][0]["n"] == control
            && r["metrics"][0]["arms"][1]["n"] == green
            && r["aggregation"]["metric_events_applied"] == buyers.len()
    });
    assert_eq!(results["srm"]["status"], "ok");
    assert_eq!(results["state"], "decided");

    // A decided experiment can be deleted; then it is gone.
    let (code, out, err) = run_cli(
        &[
            "experiment",
            "delete",
            "checkout-green",
            "--server",
            url.as_str(),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted"), "{out}");
    let gone = http
        .get(format!("{url}/v1/experiments/checkout-green"))
        .send()
        .unwrap();
    assert_eq!(gone.status().as_u16(), 404);
}
