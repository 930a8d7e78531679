use serde_json::json;

use crate::support::{TestServer, event, problem};

#[tokio::test]
async fn topics_are_created_described_listed_updated_and_deleted() {
    let server = TestServer::start().await;
    let put = |body: serde_json::Value| {
        server
            .http
            .put(server.url("/v1/topics/orders"))
            .json(&body)
            .send()
    };
    let created = put(json!({"partitions": 3, "retention_ms": 3_600_000}))
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let described: serde_json::Value = created.json().await.unwrap();
    assert_eq!(described["config"]["partitions"], 3);
    assert_eq!(described["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(
        put(json!({"partitions": 3, "retention_ms": 3_600_000}))
            .await
            .unwrap()
            .status(),
        200
    );
    let updated = put(json!({"partitions": 3, "retention_ms": null}))
        .await
        .unwrap();
    assert_eq!(updated.status(), 200);
    assert_eq!(
        updated.json::<serde_json::Value>().await.unwrap()["config"]["retention_ms"],
        json!(null)
    );

    assert_eq!(
        server.post_batch("orders", &[event("1")]).await.status(),
        200
    );
    let described = server.get_json("/v1/topics/orders").await;
    let events: u64 = described["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["next_offset"].as_u64().unwrap())
        .sum();
    assert_eq!(events, 1);
    let listed = server.get_json("/v1/topics").await;
    assert_eq!(listed["topics"][0]["name"], "orders");

    let deleted = server
        .http
        .delete(server.url("/v1/topics/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = server
        .http
        .get(server.url("/v1/topics/orders"))
        .send()
        .await
        .unwrap();
    problem(gone, 404, "topic-not-found").await;
}

#[tokio::test]
async fn an_empty_body_creates_a_topic_with_defaults() {
    let server = TestServer::start().await;
    let response = server
        .http
        .put(server.url("/v1/topics/plain"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["config"]["partitions"], 1);
    assert_eq!(body["config"]["retention_ms"], 604_800_000);
}

#[tokio::test]
async fn bad_topic_requests_get_precise_problems() {
    let server = TestServer::start().await;
    let put = |path: &str, body: &str| {
        server
            .http
            .put(server.url(path))
            .body(body.to_owned())
            .send()
    };
    let body = problem(
        put("/v1/topics/bad%20name", "{}").await.unwrap(),
        400,
        "invalid-topic-name",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("' '"), "{body}");
    let body = problem(
        put("/v1/topics/x", r#"{"partition": 2}"#).await.unwrap(),
        400,
        "invalid-topic-config",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `partition`"),
        "{body}"
    );
    let body = problem(
        put("/v1/topics/x", r#"{"partitions": 0}"#).await.unwrap(),
        400,
        "invalid-topic-config",
    )
    .await;
    assert_eq!(body["field"], "partitions");
    problem(
        put("/v1/topics/x", "{").await.unwrap(),
        400,
        "invalid-topic-config",
    )
    .await;
    problem(
        put("/v1/topics/x", &"x".repeat(100_000)).await.unwrap(),
        413,
        "body-too-large",
    )
    .await;
    put("/v1/topics/x", r#"{"partitions": 2}"#).await.unwrap();
    let body = problem(
        put("/v1/topics/x", r#"{"partitions": 4}"#).await.unwrap(),
        409,
        "topic-conflict",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("fixed at creation"),
        "{body}"
    );
    let delete = server
        .http
        .delete(server.url("/v1/topics/never"))
        .send()
        .await
        .unwrap();
    problem(delete, 404, "topic-not-found").await;
}
