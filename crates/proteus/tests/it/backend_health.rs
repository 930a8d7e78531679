//! `GET /readyz` and `proteus_backend_up` report each shared backend as the server sees it:
//! a NATS server killed under a running `proteus serve` shows as down within one check
//! interval (readiness stays 200, "degraded", unless the probe asks for the backends), and as
//! up again once it is back, while the PostgreSQL and Redis stores beside it stay up; and a
//! server whose NATS is gone still stops on SIGTERM.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proteus_nats::test_support::PrivateNatsServer;
use serde_json::Value;

use crate::support::{ServerProcess, drop_schema, postgres_url, run_cli};

/// A schema of its own, dropped when the test ends (even when it fails).
struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        drop_schema(&self.0);
    }
}

fn readyz(http: &reqwest::blocking::Client, server: &str, query: &str) -> (u16, String, Value) {
    let response = http
        .get(format!("{server}/readyz{query}"))
        .send()
        .expect("GET /readyz");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (status, content_type, response.json().expect("a JSON body"))
}

fn backend<'a>(body: &'a Value, store: &str) -> &'a Value {
    body["backends"]
        .as_array()
        .and_then(|backends| backends.iter().find(|b| b["store"] == store))
        .unwrap_or_else(|| panic!("no backend for store {store} in {body}"))
}

/// Polls `/readyz` until `done` holds, at most 20 s (a check runs every 5 s).
fn until(
    http: &reqwest::blocking::Client,
    server: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, body) = readyz(http, server, "");
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what} within 20 s: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn backend_up_gauge(http: &reqwest::blocking::Client, server: &str) -> Option<String> {
    let metrics = crate::support::metrics_text(http, server);
    metrics
        .lines()
        .find(|line| {
            line.starts_with("proteus_backend_up{")
                && line.contains(r#"store="log""#)
                && line.contains(r#"backend="nats""#)
        })
        .map(str::to_owned)
}

#[test]
fn readiness_reports_a_backend_that_goes_down_and_comes_back() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let nats = runtime.block_on(PrivateNatsServer::start());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let schema = Schema(format!("it_health_{}_{nanos}", std::process::id()));
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start_with(
        dir.path(),
        &[
            "--storage-log",
            &nats.url(),
            "--event-store",
            &postgres_url(),
            "--event-store-schema",
            &schema.0,
            "--cache",
            "redis://127.0.0.1:6379",
            "--cache-prefix",
            &format!("it-health-{nanos}:"),
        ],
        &[],
    );
    let http = reqwest::blocking::Client::new();

    // Checked before the server said it was serving: every backend is there at once.
    let (status, _, body) = readyz(&http, &server.url, "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready", "{body}");
    for (store, kind) in [
        ("log", "nats"),
        ("event_store", "postgres"),
        ("cache", "redis"),
    ] {
        let backend = backend(&body, store);
        assert_eq!(backend["backend"], kind, "{body}");
        assert_eq!(backend["up"], true, "{body}");
    }
    assert_eq!(
        body["backends"].as_array().unwrap().len(),
        3,
        "embedded stores are not listed: {body}"
    );
    let gauge = backend_up_gauge(&http, &server.url).expect("proteus_backend_up for the log");
    assert!(gauge.ends_with(" 1"), "{gauge}");
    let (code, out, err) = run_cli(&["status", "--server", &server.url], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ready"), "{out}");
    assert!(
        out.contains("event_store") && out.contains("postgres"),
        "{out}"
    );

    nats.kill();
    let body = until(&http, &server.url, "the log shown down", |body| {
        backend(body, "log")["up"] == false
    });
    assert_eq!(body["status"], "degraded", "{body}");
    let error = backend(&body, "log")["error"].as_str().unwrap().to_owned();
    assert!(error.contains(&nats.url()), "names the server: {error}");
    assert_eq!(backend(&body, "event_store")["up"], true, "{body}");
    assert_eq!(backend(&body, "cache")["up"], true, "{body}");
    // Readiness stays 200 unless the probe asks for the backends.
    let (status, _, _) = readyz(&http, &server.url, "");
    assert_eq!(status, 200);
    let (status, content_type, problem) = readyz(&http, &server.url, "?require_backends=true");
    assert_eq!(status, 503, "{problem}");
    assert_eq!(content_type, "application/problem+json");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("log (nats)"), "{detail}");
    let gauge = backend_up_gauge(&http, &server.url).unwrap();
    assert!(gauge.ends_with(" 0"), "{gauge}");
    let (status, _, problem) = readyz(&http, &server.url, "?require_backend=true");
    assert_eq!(status, 400, "a misspelt parameter is refused: {problem}");
    // `proteus status` shows it too, and fails so a script can wait on it.
    let (code, out, err) = run_cli(&["status", "--server", &server.url], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with("degraded"), "{out}");
    assert!(out.contains("DOWN"), "{out}");
    assert!(err.contains("a shared backend is down"), "{err}");

    runtime.block_on(nats.restart());
    let body = until(&http, &server.url, "the log shown up again", |body| {
        body["status"] == "ready"
    });
    assert_eq!(backend(&body, "log")["up"], true, "{body}");
    let (status, _, _) = readyz(&http, &server.url, "?require_backends=true");
    assert_eq!(status, 200);
    let log = server.log_text();
    assert!(log.contains("a backend is down"), "{log}");
    assert!(log.contains("a backend is back"), "{log}");
    assert_eq!(server.terminate(), Some(0), "{}", server.log_text());
}

/// A server whose NATS is gone (stopped first, as a careless `docker compose down` does) still
/// stops on SIGTERM: the log gives up closing its connection after its request timeout (it
/// waited for a reconnection for ever), and every closing step is bounded (10 s in all).
#[test]
fn a_server_stops_on_sigterm_after_its_nats_is_gone() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let nats = runtime.block_on(PrivateNatsServer::start());
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start_with(dir.path(), &["--storage-log", &nats.url()], &[]);
    nats.kill();
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    let code = server.terminate();
    let took = asked.elapsed();
    let log = server.log_text();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        took < Duration::from_secs(20),
        "stopping took {took:?}: {log}"
    );
    assert!(
        log.contains("not every store closed in time")
            || log.contains("NATS did not answer while the log closed its connection"),
        "it says it did not close cleanly: {log}"
    );
}
