//! Consumer groups over HTTP: the whole member cycle, and a precise problem for each mistake.

use serde_json::{Value, json};

use crate::support::{TestServer, event, problem};

async fn post(server: &TestServer, path: &str, body: Value) -> reqwest::Response {
    server
        .http
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn setup(server: &TestServer, group_config: Value) -> (String, u64) {
    server
        .create_topic("orders", json!({"partitions": 2}))
        .await;
    let events: Vec<Value> = (0..4).map(|i| event(&format!("e{i}"))).collect();
    assert!(
        server
            .post_batch("orders", &events)
            .await
            .status()
            .is_success()
    );
    let response = server
        .http
        .put(server.url("/v1/topics/orders/groups/billing"))
        .json(&group_config)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let joined: Value = post(
        server,
        "/v1/topics/orders/groups/billing/members",
        json!({}),
    )
    .await
    .json()
    .await
    .unwrap();
    (
        joined["member_id"].as_str().unwrap().to_owned(),
        joined["generation"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn pull_ack_and_describe() {
    let server = TestServer::start().await;
    let (member, generation) = setup(&server, json!({})).await;
    let base = format!("/v1/topics/orders/groups/billing/members/{member}");
    let pulled: Value = post(&server, &format!("{base}/pull"), json!({"max_events": 10}))
        .await
        .json()
        .await
        .unwrap();
    let events = pulled["events"].as_array().unwrap();
    assert_eq!(events.len(), 4);
    assert_eq!(events[0]["delivery_count"], 1);
    assert!(events[0]["event"]["id"].as_str().unwrap().starts_with('e'));
    let positions: Vec<Value> = events.iter().map(|e| e["position"].clone()).collect();
    let acked: Value = post(
        &server,
        &format!("{base}/ack"),
        json!({"generation": generation, "positions": positions}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(acked["acked"], 4);
    let described = server.get_json("/v1/topics/orders/groups/billing").await;
    assert_eq!(described["lag_events"], 0);
    assert_eq!(described["members"][0]["member_id"], member.as_str());
    let listed = server.get_json("/v1/topics/orders/groups").await;
    assert_eq!(listed["groups"].as_array().unwrap().len(), 1);
    // Long poll: nothing to deliver, returns after the wait with no events.
    let started = std::time::Instant::now();
    let empty: Value = post(&server, &format!("{base}/pull"), json!({"wait_ms": 300}))
        .await
        .json()
        .await
        .unwrap();
    assert!(empty["events"].as_array().unwrap().is_empty());
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
}

#[tokio::test]
async fn mistakes_get_precise_problems() {
    let server = TestServer::start().await;
    let (member, generation) = setup(&server, json!({})).await;
    let base = format!("/v1/topics/orders/groups/billing/members/{member}");

    let response = server
        .http
        .get(server.url("/v1/topics/orders/groups/nope"))
        .send()
        .await
        .unwrap();
    let body = problem(response, 404, "group-not-found").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("proteus group create orders nope")
    );

    let response = server
        .http
        .put(server.url("/v1/topics/orders/groups/bad"))
        .json(&json!({"retry": {"deliveries_max": 0}}))
        .send()
        .await
        .unwrap();
    let body = problem(response, 400, "invalid-group-config").await;
    assert_eq!(body["field"], "retry.deliveries_max");

    let response = server
        .http
        .put(server.url("/v1/topics/orders/groups/bad"))
        .json(&json!({"ack_wait": 5}))
        .send()
        .await
        .unwrap();
    problem(response, 400, "invalid-body").await;

    let response = post(
        &server,
        &format!("{base}/ack"),
        json!({"generation": generation, "positions": ["0:99"]}),
    )
    .await;
    problem(response, 409, "not-delivered").await;

    let response = post(
        &server,
        &format!("{base}/ack"),
        json!({"generation": generation, "positions": ["zero"]}),
    )
    .await;
    problem(response, 400, "invalid-position").await;

    let response = post(
        &server,
        &format!("{base}/ack"),
        json!({"generation": generation, "positions": []}),
    )
    .await;
    problem(response, 400, "invalid-body").await;

    let response = post(
        &server,
        "/v1/topics/orders/groups/billing/members/ghost/pull",
        json!({}),
    )
    .await;
    problem(response, 404, "unknown-member").await;

    post(&server, &format!("{base}/pull"), json!({"max_events": 1})).await;
    let pulled_position = "0:0";
    let response = post(
        &server,
        &format!("{base}/nack"),
        json!({"generation": generation, "positions": [pulled_position], "delay_ms": 10_000_000_000u64}),
    )
    .await;
    problem(response, 400, "invalid-delay").await;

    let response = post(
        &server,
        &format!("{base}/ack"),
        json!({"generation": generation + 5, "positions": [pulled_position]}),
    )
    .await;
    problem(response, 400, "invalid-generation").await;

    let response = post(
        &server,
        "/v1/topics/orders/groups/billing/dead-letters/replay",
        json!({}),
    )
    .await;
    problem(response, 400, "invalid-body").await;

    let response = server
        .http
        .get(server.url("/v1/topics/orders/groups/billing/dead-letters/7"))
        .send()
        .await
        .unwrap();
    problem(response, 404, "dead-letter-not-found").await;

    let response = server
        .http
        .put(server.url("/v1/topics/orders/groups/pushed"))
        .json(&json!({"push": {"url": "http://127.0.0.1:9/hook"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let response = post(
        &server,
        "/v1/topics/orders/groups/pushed/members",
        json!({}),
    )
    .await;
    problem(response, 409, "push-group").await;

    let response = post(&server, "/v1/topics/nosuch/groups/x/members", json!({})).await;
    problem(response, 404, "group-not-found").await;
    let response = server
        .http
        .put(server.url("/v1/topics/nosuch/groups/x"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    problem(response, 404, "topic-not-found").await;
}

#[tokio::test]
async fn deleting_the_topic_deletes_its_groups() {
    let server = TestServer::start().await;
    setup(&server, json!({})).await;
    let response = server
        .http
        .delete(server.url("/v1/topics/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    server
        .create_topic("orders", json!({"partitions": 2}))
        .await;
    let response = server
        .http
        .get(server.url("/v1/topics/orders/groups/billing"))
        .send()
        .await
        .unwrap();
    problem(response, 404, "group-not-found").await;
}
