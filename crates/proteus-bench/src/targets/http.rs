//! Proteus over its HTTP API: one shared client, one batch per `POST`.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;

use super::{Bench, Setup, Sink, connecting};
use crate::events::Batch;

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub struct HttpBench {
    http: reqwest::Client,
    endpoint: String,
}

/// A client for many concurrent requests to one server.
pub fn client(connections: usize) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .connect_timeout(super::CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("cannot set up the HTTP client: {e}"))
}

/// The sentence for an error response: a problem's `detail` (RFC 9457), else the body.
pub fn problem_message(status: reqwest::StatusCode, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Problem {
        title: Option<String>,
        detail: Option<String>,
    }
    match serde_json::from_slice::<Problem>(body) {
        Ok(Problem {
            detail: Some(detail),
            ..
        }) => format!("HTTP {status}: {detail}"),
        Ok(Problem {
            title: Some(title),
            detail: None,
        }) => format!("HTTP {status}: {title}"),
        _ => {
            let text = String::from_utf8_lossy(&body[..body.len().min(500)]);
            format!("HTTP {status}: {}", text.trim())
        }
    }
}

/// The hint for a server that cannot be reached.
pub fn unreachable(url: &str, error: &reqwest::Error) -> String {
    format!(
        "cannot reach Proteus at {url}: {error}; start it with `proteus serve --listen HOST:PORT --data-dir DIR` or fix --target"
    )
}

/// Creates the topic with `partitions` partitions, or checks it exists.
pub async fn put_topic(
    http: &reqwest::Client,
    url: &str,
    topic: &str,
    partitions: u32,
) -> Result<(), String> {
    let response = connecting(&format!("Proteus at {url}"), async {
        http.put(format!("{url}/v1/topics/{topic}"))
            .json(&serde_json::json!({ "partitions": partitions }))
            .send()
            .await
            .map_err(|e| unreachable(url, &e))
    })
    .await?;
    let status = response.status();
    if !status.is_success() {
        let body = response.bytes().await.unwrap_or_default();
        return Err(format!(
            "creating topic '{topic}' with {partitions} partitions failed: {}",
            problem_message(status, &body)
        ));
    }
    Ok(())
}

impl HttpBench {
    pub async fn prepare(url: &str, setup: &Setup) -> Result<HttpBench, String> {
        let http = client(setup.producers)?;
        put_topic(&http, url, setup.topic.as_str(), setup.partitions).await?;
        Ok(HttpBench::on(http, url, setup.topic.as_str()))
    }

    /// Sinks appending to an existing `topic` of the server at `url`.
    pub fn on(http: reqwest::Client, url: &str, topic: &str) -> HttpBench {
        HttpBench {
            http,
            endpoint: format!("{url}/v1/topics/{topic}/events"),
        }
    }
}

#[async_trait]
impl Bench for HttpBench {
    async fn sink(&self) -> Result<Box<dyn Sink>, String> {
        Ok(Box::new(HttpSink {
            http: self.http.clone(),
            endpoint: self.endpoint.clone(),
            staged: None,
        }))
    }

    async fn finish(&self) -> Result<(), String> {
        // The topic stays: it is the server's, and replay may read it next.
        Ok(())
    }
}

struct HttpSink {
    http: reqwest::Client,
    endpoint: String,
    staged: Option<(Bytes, usize)>,
}

#[derive(Deserialize)]
struct AppendResponse {
    results: Vec<AppendResult>,
}

#[derive(Deserialize)]
struct AppendResult {
    duplicate: bool,
}

/// Checks an append response: one result per event, none a duplicate.
pub fn check_append_response(body: &[u8], events: usize) -> Result<(), String> {
    let parsed: AppendResponse = serde_json::from_slice(body)
        .map_err(|e| format!("the server's answer to an append is not the expected JSON: {e}"))?;
    if parsed.results.len() != events {
        return Err(format!(
            "the server answered {} results for {events} events",
            parsed.results.len()
        ));
    }
    let duplicates = parsed.results.iter().filter(|r| r.duplicate).count();
    if duplicates > 0 {
        return Err(format!(
            "{duplicates} of {events} events were taken for duplicates of earlier ones and not appended"
        ));
    }
    Ok(())
}

#[async_trait]
impl Sink for HttpSink {
    fn stage(&mut self, batch: Batch) -> Result<(), String> {
        let events = batch.len();
        self.staged = Some((batch.body, events));
        Ok(())
    }

    async fn send(&mut self) -> Result<(), String> {
        let (body, events) = self.staged.take().ok_or("no batch staged")?;
        let response = self
            .http
            .post(&self.endpoint)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/cloudevents-batch+json",
            )
            .body(body)
            .send()
            .await
            .map_err(|e| format!("append request failed: {e}"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| format!("reading the append response failed: {e}"))?;
        if !status.is_success() {
            return Err(problem_message(status, &body));
        }
        check_append_response(&body, events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_print_their_detail() {
        let body = br#"{"type":"/problems/x","title":"Topic not found","status":404,"detail":"there is no topic 'a'"}"#;
        assert_eq!(
            problem_message(reqwest::StatusCode::NOT_FOUND, body),
            "HTTP 404 Not Found: there is no topic 'a'"
        );
        assert_eq!(
            problem_message(reqwest::StatusCode::BAD_REQUEST, br#"{"title":"Bad"}"#),
            "HTTP 400 Bad Request: Bad"
        );
        assert_eq!(
            problem_message(reqwest::StatusCode::BAD_GATEWAY, b"upstream down\n"),
            "HTTP 502 Bad Gateway: upstream down"
        );
    }

    #[test]
    fn append_responses_must_acknowledge_every_event_once() {
        let ok = br#"{"results":[{"partition":0,"offset":1,"duplicate":false},{"partition":0,"offset":2,"duplicate":false}]}"#;
        assert!(check_append_response(ok, 2).is_ok());
        assert!(
            check_append_response(ok, 3)
                .unwrap_err()
                .contains("2 results for 3")
        );
        let duplicate = br#"{"results":[{"partition":0,"offset":1,"duplicate":true}]}"#;
        assert!(
            check_append_response(duplicate, 1)
                .unwrap_err()
                .contains("duplicates")
        );
        assert!(check_append_response(b"[]", 0).is_err());
    }
}
