use proteus_server::HttpConfig;

use crate::support::{TestServer, problem};

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let server = TestServer::start().await;
    let response = server
        .http
        .get(server.url("/v2/nothing"))
        .send()
        .await
        .unwrap();
    let body = problem(response, 404, "not-found").await;
    assert!(body["detail"].as_str().unwrap().contains("/v2/nothing"));
    let response = server
        .http
        .patch(server.url("/v1/topics"))
        .send()
        .await
        .unwrap();
    problem(response, 405, "method-not-allowed").await;
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let server = TestServer::start().await;
    assert_eq!(server.get_json("/healthz").await["status"], "ok");
    let ready = server.get_json("/readyz").await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(
        ready["backends"],
        serde_json::json!([]),
        "all embedded: {ready}"
    );
    server.create_topic("metered", serde_json::json!({})).await;
    server
        .post_batch("metered", &[crate::support::event("1")])
        .await;
    let metrics = server.metrics().await;
    for name in [
        "proteus_log_append_events_total",
        "proteus_log_append_bytes_total",
        "proteus_log_fsync_duration_seconds_bucket",
        "proteus_log_group_commit_events_bucket",
        "proteus_log_partition_end_offset",
        "proteus_http_request_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    assert!(
        metrics.contains(r#"route="/v1/topics/{topic}/events""#),
        "routes are templates, not raw paths"
    );

    server.signal.trigger();
    let response = server.http.get(server.url("/readyz")).send().await;
    // Either the listener is already closed or readiness says it is going away.
    if let Ok(response) = response {
        problem(response, 503, "unavailable").await;
    }
}

/// `/metrics` shows the async runtime the server runs on: its workers, and per worker the
/// time it spent running tasks and how often it parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_runtime_and_what_each_worker_did() {
    let server = TestServer::start().await;
    server.create_topic("busy", serde_json::json!({})).await;
    server
        .post_batch("busy", &[crate::support::event("1")])
        .await;
    let metrics = server.metrics().await;
    let sample = |series: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|line| line.starts_with(&format!("{series} ")))
            .unwrap_or_else(|| panic!("/metrics lacks {series}:\n{metrics}"));
        line[series.len() + 1..].parse().unwrap()
    };
    assert_eq!(sample("proteus_runtime_workers"), 2.0);
    assert!(
        sample("proteus_runtime_alive_tasks") >= 1.0,
        "the server's own task"
    );
    sample("proteus_runtime_global_queue_depth");
    let busy_seconds = sample(r#"proteus_runtime_worker_busy_seconds_total{worker="0"}"#)
        + sample(r#"proteus_runtime_worker_busy_seconds_total{worker="1"}"#);
    assert!(busy_seconds > 0.0, "the workers ran the requests");
    sample(r#"proteus_runtime_worker_parks_total{worker="1"}"#);
    assert!(!metrics.contains(r#"worker="2""#), "two workers, not three");
    assert!(metrics.contains("# TYPE proteus_runtime_worker_busy_seconds_total counter"));
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_before_parsing() {
    let server = TestServer::with_config(HttpConfig {
        body_bytes_max: 4096,
        ..HttpConfig::default()
    })
    .await;
    server.create_topic("limited", serde_json::json!({})).await;
    let events: Vec<_> = (0..100)
        .map(|i| crate::support::event(&i.to_string()))
        .collect();
    let body = problem(
        server.post_batch("limited", &events).await,
        413,
        "body-too-large",
    )
    .await;
    assert_eq!(body["limit_bytes"], 4096);
    // Without a Content-Length (chunked), the limit still holds.
    let chunks =
        futures_util::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])));
    let response = server
        .http
        .post(server.url("/v1/topics/limited/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    problem(response, 413, "body-too-large").await;
}
