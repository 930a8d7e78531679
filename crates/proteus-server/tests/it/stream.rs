use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::support::{TestServer, event, problem};

/// A minimal SSE reader: yields (id, data) of each message.
pub struct SseReader {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl SseReader {
    pub async fn open(server: &TestServer, path: &str, last_event_id: Option<&str>) -> SseReader {
        let mut request = server.http.get(server.url(path));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        SseReader {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    pub async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let message: String = self.buffer.drain(..end + 2).collect();
                let mut id = String::new();
                let mut data = String::new();
                for line in message.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                return (id, serde_json::from_str(&data).unwrap());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("an SSE message within 10 s")
                .expect("the stream stays open")
                .unwrap();
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

#[tokio::test]
async fn a_reconnecting_client_resumes_exactly_after_its_last_event() {
    let server = TestServer::start().await;
    server.create_topic("live", json!({"partitions": 3})).await;
    let first: Vec<Value> = (0..30).map(|i| event(&format!("a{i}"))).collect();
    for chunk in first.chunks(5) {
        server.post_batch("live", chunk).await;
    }
    let mut reader = SseReader::open(
        &server,
        "/v1/topics/live/events/stream?from=beginning",
        None,
    )
    .await;
    let mut seen = Vec::new();
    let mut last_id = String::new();
    for _ in 0..12 {
        let (id, data) = reader.next().await;
        seen.push(data["event"]["id"].as_str().unwrap().to_owned());
        last_id = id;
    }
    drop(reader);
    let second: Vec<Value> = (0..10).map(|i| event(&format!("b{i}"))).collect();
    server.post_batch("live", &second).await;
    let mut resumed =
        SseReader::open(&server, "/v1/topics/live/events/stream", Some(&last_id)).await;
    for _ in 0..28 {
        let (_, data) = resumed.next().await;
        seen.push(data["event"]["id"].as_str().unwrap().to_owned());
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        40,
        "every event exactly once across the reconnect: {seen:?}"
    );
    assert!(
        last_id.split(',').count() == 3,
        "the id covers every partition: {last_id}"
    );
}

#[tokio::test]
async fn a_live_tail_starts_at_the_end_and_sees_new_events() {
    let server = TestServer::start().await;
    server.create_topic("tail", json!({})).await;
    server.post_batch("tail", &[event("old")]).await;
    let mut reader = SseReader::open(&server, "/v1/topics/tail/events/stream", None).await;
    server.post_batch("tail", &[event("new")]).await;
    let (id, data) = reader.next().await;
    assert_eq!(data["event"]["id"], "new");
    assert_eq!(data["offset"], 1);
    assert_eq!(id, "0:2");
    let mut single = SseReader::open(
        &server,
        "/v1/topics/tail/events/stream?partition=0&from=0",
        None,
    )
    .await;
    assert_eq!(single.next().await.1["event"]["id"], "old");
}

#[tokio::test]
async fn bad_stream_requests_are_problems() {
    let server = TestServer::start().await;
    server.create_topic("s", json!({"partitions": 2})).await;
    let get = |path: &str| server.http.get(server.url(path)).send();
    problem(
        get("/v1/topics/none/events/stream").await.unwrap(),
        404,
        "topic-not-found",
    )
    .await;
    problem(
        get("/v1/topics/s/events/stream?partition=5").await.unwrap(),
        404,
        "partition-not-found",
    )
    .await;
    let body = problem(
        get("/v1/topics/s/events/stream?from=3").await.unwrap(),
        400,
        "invalid-query",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("partition"),
        "{body}"
    );
    let response = server
        .http
        .get(server.url("/v1/topics/s/events/stream"))
        .header("Last-Event-ID", "zz")
        .send()
        .await
        .unwrap();
    problem(response, 400, "invalid-cursor").await;
}
