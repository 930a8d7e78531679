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
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
