//! A client for the Proteus HTTP API, used by the `proteus` CLI and by Rust services.
//!
//! ```no_run
//! # async fn example() -> Result<(), proteus_client::ClientError> {
//! let client = proteus_client::Client::new("http://127.0.0.1:7070")?;
//! client.put_topic("orders", &serde_json::json!({"partitions": 3})).await?;
//! let event = serde_json::json!({
//!     "specversion": "1.0", "id": "1", "source": "/shop", "type": "order.placed",
//!     "subject": "order-1", "data": {"total": 12}
//! });
//! let results = client.publish("orders", &[event]).await?;
//! println!("stored at partition {} offset {}", results[0].partition, results[0].offset);
//! # Ok(()) }
//! ```

mod experiments;
mod flags;
mod groups;
mod local_flags;
mod outage;
mod projections;
mod schemas;
mod streams;

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use proteus_log::port::{AppendReceipt, TopicDescription};
use serde::Deserialize;
use serde_json::value::RawValue;

pub use flags::ChangeOptions;
pub use groups::{Assignment, Consumer, ConsumerOptions, Delivered, Membership, Pulled};
pub use local_flags::{FlagsSnapshot, LocalFlags};
pub use outage::Outage;
pub use proteus_eventstore;
pub use streams::FeedQuery;

/// `text` percent-encoded for a URL path segment or query value.
fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// What went wrong talking to Proteus, worded for the person running the command.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    #[error(
        "cannot reach Proteus at {url}: {reason}. Is it running? Start it with `proteus serve`, or point --server (PROTEUS_SERVER) at it"
    )]
    Unreachable { url: String, reason: String },

    /// The server answered with an RFC 9457 problem.
    #[error("{title} ({status}): {detail}")]
    Problem {
        status: u16,
        title: String,
        detail: String,
        /// The whole problem document.
        body: serde_json::Value,
    },

    #[error("unexpected response from {url}: {reason}")]
    Protocol { url: String, reason: String },
}

/// One stored event, as reads and streams return it.
#[derive(Debug, Clone, Deserialize)]
pub struct EventRecord {
    pub partition: u32,
    pub offset: u64,
    pub append_time_ms: i64,
    pub event: Box<RawValue>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReadResponse {
    pub events: Vec<EventRecord>,
    pub next_offset: u64,
    pub first_offset: u64,
    pub end_offset: u64,
}

/// An event received from a stream, with the position to resume after it.
#[derive(Debug, Clone)]
pub struct StreamedEvent {
    pub record: EventRecord,
    /// Pass as `resume_from` to continue right after this event.
    pub position: String,
}

/// Where a tail starts.
#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    /// `beginning`, `end`, an offset (with `partition`) or a position such as `0:12,1:7`.
    pub from: Option<String>,
    /// RFC 3339 timestamp or milliseconds since the epoch.
    pub from_time: Option<String>,
    pub partition: Option<u32>,
    /// A position from a previous stream (its `Last-Event-ID`).
    pub resume_from: Option<String>,
}

#[derive(Clone)]
pub struct Client {
    base_url: String,
    http: reqwest::Client,
    /// Sent as `X-API-Key` on flag requests (OFREP and `/v1/flagsets`).
    api_key: Option<String>,
}

#[derive(Deserialize)]
struct AppendResponse {
    results: Vec<AppendReceipt>,
}

#[derive(Deserialize)]
struct TopicList {
    topics: Vec<TopicDescription>,
}

impl Client {
    pub fn new(base_url: &str) -> Result<Client, ClientError> {
        let trimmed = base_url.trim_end_matches('/');
        let parsed = reqwest::Url::parse(trimmed).map_err(|e| ClientError::InvalidUrl {
            url: base_url.to_owned(),
            reason: format!("{e}; expected something like http://127.0.0.1:7070"),
        })?;
        if parsed.scheme() != "http" && parsed.scheme() != "https" {
            return Err(ClientError::InvalidUrl {
                url: base_url.to_owned(),
                reason: "the scheme must be http or https".into(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ClientError::InvalidUrl {
                url: base_url.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Client {
            base_url: trimmed.to_owned(),
            http,
            api_key: None,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let body: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        let field = |name: &str| body.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        Err(ClientError::Problem {
            status,
            title: field("title").unwrap_or_else(|| format!("HTTP {status}")),
            detail: field("detail").unwrap_or(text),
            body,
        })
    }

    fn transport_error(&self, error: reqwest::Error) -> ClientError {
        let mut reason = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(inner) = source {
            reason = inner.to_string();
            source = inner.source();
        }
        ClientError::Unreachable {
            url: self.base_url.clone(),
            reason,
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, ClientError> {
        let url = response.url().to_string();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            url,
            reason: e.to_string(),
        })
    }

    /// `GET /readyz`: `{"status": "ready"|"degraded", "backends": [...]}` (a 503 problem once
    /// the server is shutting down).
    pub async fn readiness(&self) -> Result<serde_json::Value, ClientError> {
        let response = self.send(self.http.get(self.url("/readyz"))).await?;
        self.json(response).await
    }

    /// Creates a topic or updates its settings; `config` is the JSON body of
    /// `PUT /v1/topics/{topic}` (`{"partitions": 3, "retention_ms": …}`).
    pub async fn put_topic(
        &self,
        topic: &str,
        config: &serde_json::Value,
    ) -> Result<TopicDescription, ClientError> {
        let response = self
            .send(
                self.http
                    .put(self.url(&format!("/v1/topics/{topic}")))
                    .json(config),
            )
            .await?;
        self.json(response).await
    }

    pub async fn list_topics(&self) -> Result<Vec<TopicDescription>, ClientError> {
        let response = self.send(self.http.get(self.url("/v1/topics"))).await?;
        Ok(self.json::<TopicList>(response).await?.topics)
    }

    pub async fn describe_topic(&self, topic: &str) -> Result<TopicDescription, ClientError> {
        let response = self
            .send(self.http.get(self.url(&format!("/v1/topics/{topic}"))))
            .await?;
        self.json(response).await
    }

    pub async fn delete_topic(&self, topic: &str) -> Result<(), ClientError> {
        self.send(self.http.delete(self.url(&format!("/v1/topics/{topic}"))))
            .await?;
        Ok(())
    }

    /// Appends CloudEvents (in JSON format) as one batch; returns where each landed.
    pub async fn publish(
        &self,
        topic: &str,
        events: &[serde_json::Value],
    ) -> Result<Vec<AppendReceipt>, ClientError> {
        let body = serde_json::to_vec(events).map_err(|e| ClientError::Protocol {
            url: self.base_url.clone(),
            reason: e.to_string(),
        })?;
        self.publish_raw(topic, body).await
    }

    /// Appends a batch already encoded as a JSON array of CloudEvents.
    pub async fn publish_raw(
        &self,
        topic: &str,
        batch_json: Vec<u8>,
    ) -> Result<Vec<AppendReceipt>, ClientError> {
        let request = self
            .http
            .post(self.url(&format!("/v1/topics/{topic}/events")))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/cloudevents-batch+json",
            )
            .body(batch_json);
        let response = self.send(request).await?;
        Ok(self.json::<AppendResponse>(response).await?.results)
    }

    /// Reads one page of a partition. `from` is an offset, `beginning` or `end`.
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        from: &str,
        limit: u32,
        wait_ms: u64,
    ) -> Result<ReadResponse, ClientError> {
        let request = self
            .http
            .get(self.url(&format!("/v1/topics/{topic}/partitions/{partition}/events")))
            .query(&[
                ("from", from.to_owned()),
                ("limit", limit.to_string()),
                ("wait_ms", wait_ms.to_string()),
            ]);
        let response = self.send(request).await?;
        self.json(response).await
    }

    /// Streams events as they are appended (Server-Sent Events). The stream ends when the
    /// server closes it; resume with the last [`StreamedEvent::position`].
    pub async fn tail(
        &self,
        topic: &str,
        options: &TailOptions,
    ) -> Result<impl Stream<Item = Result<StreamedEvent, ClientError>> + use<>, ClientError> {
        let mut query = Vec::new();
        if let Some(from) = &options.from {
            query.push(("from", from.clone()));
        }
        if let Some(from_time) = &options.from_time {
            query.push(("from_time", from_time.clone()));
        }
        if let Some(partition) = options.partition {
            query.push(("partition", partition.to_string()));
        }
        let mut request = self
            .http
            .get(self.url(&format!("/v1/topics/{topic}/events/stream")))
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .query(&query);
        if let Some(position) = &options.resume_from {
            request = request.header("Last-Event-ID", position);
        }
        let response = self.send(request).await?;
        let url = response.url().to_string();
        let base_url = self.base_url.clone();
        let events = eventsource_stream::Eventsource::eventsource(response.bytes_stream());
        Ok(events.filter_map(move |item| {
            let url = url.clone();
            let base_url = base_url.clone();
            async move {
                match item {
                    Err(e) => Some(Err(ClientError::Unreachable {
                        url: base_url,
                        reason: format!("the stream broke: {e}"),
                    })),
                    Ok(message) if message.event == "problem" => {
                        let body: serde_json::Value =
                            serde_json::from_str(&message.data).unwrap_or_default();
                        let field = |name: &str| {
                            body.get(name)
                                .and_then(|v| v.as_str())
                                .unwrap_or_default()
                                .to_owned()
                        };
                        Some(Err(ClientError::Problem {
                            status: body.get("status").and_then(|v| v.as_u64()).unwrap_or(500)
                                as u16,
                            title: field("title"),
                            detail: field("detail"),
                            body,
                        }))
                    }
                    Ok(message) if message.data.is_empty() => None,
                    Ok(message) => Some(
                        serde_json::from_str::<EventRecord>(&message.data)
                            .map(|record| StreamedEvent {
                                record,
                                position: message.id,
                            })
                            .map_err(|e| ClientError::Protocol {
                                url,
                                reason: e.to_string(),
                            }),
                    ),
                }
            }
        }))
    }
}
