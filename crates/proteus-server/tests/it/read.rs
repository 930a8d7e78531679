use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{TestServer, event, problem};

#[tokio::test]
async fn reads_page_through_a_partition() {
    let server = TestServer::start().await;
    server.create_topic("pages", json!({})).await;
    let events: Vec<Value> = (0..25).map(|i| event(&i.to_string())).collect();
    server.post_batch("pages", &events).await;
    let page = server
        .get_json("/v1/topics/pages/partitions/0/events?from=10&limit=10")
        .await;
    let offsets: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, (10..20).collect::<Vec<_>>());
    assert_eq!(page["next_offset"], 20);
    assert_eq!(page["end_offset"], 25);
    assert_eq!(page["events"][0]["event"]["id"], "10");
    assert!(page["events"][0]["append_time_ms"].as_i64().unwrap() > 1_700_000_000_000);
    let end = server
        .get_json("/v1/topics/pages/partitions/0/events?from=end")
        .await;
    assert_eq!(end["events"], json!([]));
    assert_eq!(end["next_offset"], 25);
    let from_time = page["events"][0]["append_time_ms"].as_i64().unwrap();
    let timed = server
        .get_json(&format!(
            "/v1/topics/pages/partitions/0/events?from_time={from_time}&limit=1"
        ))
        .await;
    assert_eq!(
        timed["events"][0]["offset"], 0,
        "all 25 were appended in one call, at one time"
    );
    let rfc3339 = server
        .get_json("/v1/topics/pages/partitions/0/events?from_time=2100-01-01T00:00:00Z")
        .await;
    assert_eq!(rfc3339["events"], json!([]));
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_an_event_arrives() {
    let server = TestServer::start().await;
    server.create_topic("poll", json!({})).await;
    let started = Instant::now();
    let poll = server
        .http
        .get(server.url("/v1/topics/poll/partitions/0/events?from=0&wait_ms=20000"))
        .send();
    let append = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.post_batch("poll", &[event("late")]).await
    };
    let (polled, _) = tokio::join!(poll, append);
    let body: Value = polled.unwrap().json().await.unwrap();
    assert_eq!(body["events"][0]["event"]["id"], "late");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woke on the append, not the timeout"
    );

    let started = Instant::now();
    let empty = server
        .get_json("/v1/topics/poll/partitions/0/events?from=1&wait_ms=300")
        .await;
    assert_eq!(empty["events"], json!([]));
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn bad_read_parameters_are_named() {
    let server = TestServer::start().await;
    server
        .create_topic("params", json!({"partitions": 2}))
        .await;
    server.post_batch("params", &[event("1")]).await;
    let get = |query: &str| {
        server
            .http
            .get(server.url(&format!("/v1/topics/params/partitions/0/events?{query}")))
            .send()
    };
    let cases = [
        ("limit=0", "'limit'"),
        ("limit=10001", "'limit'"),
        ("from=abc", "'from'"),
        ("from=1&from_time=2020-01-01T00:00:00Z", "not both"),
        ("from_time=yesterday", "RFC 3339"),
        ("wait_ms=3600000", "'wait_ms'"),
        ("bytes_max=0", "'bytes_max'"),
        ("colour=blue", "colour"),
        ("limit=-1", "limit"),
    ];
    for (query, words) in cases {
        let body = problem(get(query).await.unwrap(), 400, "invalid-query").await;
        assert!(
            body["detail"].as_str().unwrap().contains(words),
            "{query}: {body}"
        );
    }
    let past = problem(get("from=5").await.unwrap(), 400, "offset-out-of-range").await;
    assert_eq!(past["end_offset"], 1);
    let response = server
        .http
        .get(server.url("/v1/topics/params/partitions/7/events"))
        .send()
        .await
        .unwrap();
    let body = problem(response, 404, "partition-not-found").await;
    assert_eq!(body["partitions"], 2);
    let response = server
        .http
        .get(server.url("/v1/topics/params/partitions/x/events"))
        .send()
        .await
        .unwrap();
    problem(response, 400, "invalid-path").await;
}
