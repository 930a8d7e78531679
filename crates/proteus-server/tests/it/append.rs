use serde_json::{Value, json};

use crate::support::{TestServer, event, problem};

async fn read_partition(server: &TestServer, topic: &str, partition: u32) -> Vec<Value> {
    let body = server
        .get_json(&format!(
            "/v1/topics/{topic}/partitions/{partition}/events?from=0"
        ))
        .await;
    body["events"].as_array().unwrap().clone()
}

#[tokio::test]
async fn the_three_http_binding_modes_are_accepted() {
    let server = TestServer::start().await;
    server.create_topic("modes", json!({})).await;
    let structured = server
        .http
        .post(server.url("/v1/topics/modes/events"))
        .header("content-type", "application/cloudevents+json; charset=utf-8")
        .body(r#"{"specversion":"1.0","id":"s1","source":"/t","type":"t","ext1":7,"data":{"a":[1,2]}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(structured.status(), 200);
    let results: Value = structured.json().await.unwrap();
    assert_eq!(
        results,
        json!({"results": [{"partition": 0, "offset": 0, "duplicate": false}]})
    );

    let batch = server
        .post_batch("modes", &[event("b1"), event("b2")])
        .await;
    let results: Value = batch.json().await.unwrap();
    assert_eq!(results["results"][1]["offset"], 2);

    let binary = server
        .http
        .post(server.url("/v1/topics/modes/events"))
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "bin1")
        .header("ce-source", "/t")
        .header("ce-type", "t")
        .header("ce-subject", "caf%C3%A9")
        .header(
            "ce-traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(r#"{"total": 3}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(binary.status(), 200);

    let events = read_partition(&server, "modes", 0).await;
    assert_eq!(events.len(), 4);
    assert_eq!(events[0]["event"]["ext1"], 7, "extensions keep their type");
    assert_eq!(events[0]["event"]["data"], json!({"a": [1, 2]}));
    let binary = &events[3]["event"];
    assert_eq!(binary["subject"], "café", "ce- headers are percent-decoded");
    assert_eq!(binary["data"], json!({"total": 3}));
    assert_eq!(binary["datacontenttype"], "application/json");
    assert_eq!(
        binary["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
}

#[tokio::test]
async fn a_retried_append_is_marked_duplicate_with_the_original_position() {
    let server = TestServer::start().await;
    server.create_topic("dedup", json!({"partitions": 4})).await;
    let first: Value = server
        .post_batch("dedup", &[event("x"), event("y")])
        .await
        .json()
        .await
        .unwrap();
    let retry: Value = server
        .post_batch("dedup", &[event("x"), event("y")])
        .await
        .json()
        .await
        .unwrap();
    for i in 0..2 {
        assert_eq!(retry["results"][i]["duplicate"], true);
        assert_eq!(retry["results"][i]["offset"], first["results"][i]["offset"]);
        assert_eq!(
            retry["results"][i]["partition"],
            first["results"][i]["partition"]
        );
    }
}

#[tokio::test]
async fn invalid_events_name_the_event_and_attribute() {
    let server = TestServer::start().await;
    server.create_topic("strict", json!({})).await;
    let mut bad = event("2");
    bad["specversion"] = "0.3".into();
    let body = problem(
        server.post_batch("strict", &[event("1"), bad]).await,
        400,
        "invalid-event",
    )
    .await;
    assert_eq!(body["event_index"], 1);
    assert_eq!(body["attribute"], "specversion");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("event 1: attribute 'specversion'"),
        "{body}"
    );

    let mut missing = event("3");
    missing.as_object_mut().unwrap().remove("source");
    let body = problem(
        server.post_batch("strict", &[missing]).await,
        400,
        "invalid-event",
    )
    .await;
    assert_eq!(body["attribute"], "source");

    let not_json = server
        .http
        .post(server.url("/v1/topics/strict/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body("[{")
        .send()
        .await
        .unwrap();
    problem(not_json, 400, "invalid-event").await;

    let binary_without_type = server
        .http
        .post(server.url("/v1/topics/strict/events"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "1")
        .header("ce-source", "/t")
        .body("hello")
        .send()
        .await
        .unwrap();
    let body = problem(binary_without_type, 400, "invalid-event").await;
    assert_eq!(body["attribute"], "type");

    let no_content_type = server
        .http
        .post(server.url("/v1/topics/strict/events"))
        .body("{}")
        .send()
        .await
        .unwrap();
    let body = problem(no_content_type, 415, "unsupported-media-type").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("application/cloudevents-batch+json")
    );
    let described = server.get_json("/v1/topics/strict").await;
    assert_eq!(
        described["partitions"][0]["next_offset"], 0,
        "nothing of a refused request is stored"
    );
}

#[tokio::test]
async fn oversized_events_and_batches_get_413() {
    let server = TestServer::start().await;
    server
        .create_topic("small", json!({"event_bytes_max": 300}))
        .await;
    let mut big = event("big");
    big["data"] = "x".repeat(400).into();
    let body = problem(
        server.post_batch("small", &[event("ok"), big]).await,
        413,
        "event-too-large",
    )
    .await;
    assert_eq!(body["event_index"], 1);
    assert_eq!(body["limit_bytes"], 300);

    let many: Vec<Value> = (0..10_001).map(|i| event(&i.to_string())).collect();
    let body = problem(
        server.post_batch("small", &many).await,
        413,
        "batch-too-large",
    )
    .await;
    assert_eq!(body["limit_events"], 10_000);
}

#[tokio::test]
async fn appends_to_unknown_topics_say_how_to_create_them() {
    let server = TestServer::start().await;
    let body = problem(
        server.post_batch("ghost", &[event("1")]).await,
        404,
        "topic-not-found",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("proteus topic create ghost"),
        "{body}"
    );
}
