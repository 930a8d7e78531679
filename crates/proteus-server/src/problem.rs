//! RFC 9457 problem details: every error the API returns.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use proteus_log::LogError;
use serde_json::{Map, Value, json};

pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem response. `kind` becomes the `type` URI `/problems/{kind}`, documented in
/// `docs/http-api.md`.
#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub extensions: Map<String, Value>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            status,
            kind,
            title,
            detail: detail.into(),
            extensions: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_owned(), value.into());
        self
    }

    pub fn bad_request(kind: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, kind, title, detail)
    }

    pub fn invalid_query(detail: impl Into<String>) -> Self {
        Problem::bad_request("invalid-query", "Invalid query parameter", detail)
    }

    pub fn body_too_large(limit_bytes: usize) -> Self {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            format!("the request body is larger than the {limit_bytes} bytes this server accepts (http_body_bytes_max); split it into smaller batches"),
        )
        .with("limit_bytes", limit_bytes)
    }

    pub fn body(&self) -> Value {
        let mut body = json!({
            "type": format!("/problems/{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Value::Object(object) = &mut body {
            object.extend(self.extensions.clone());
        }
        body
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body().to_string()).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

impl From<LogError> for Problem {
    fn from(error: LogError) -> Self {
        let detail = error.to_string();
        match error {
            LogError::TopicNotFound { topic } => Problem::new(
                StatusCode::NOT_FOUND,
                "topic-not-found",
                "Topic not found",
                format!("{detail}; create it with PUT /v1/topics/{topic} or `proteus topic create {topic}`"),
            )
            .with("topic", topic.as_str()),
            LogError::TopicConflict { topic, .. } => {
                Problem::new(StatusCode::CONFLICT, "topic-conflict", "Topic configuration conflict", detail)
                    .with("topic", topic.as_str())
            }
            LogError::InvalidTopicConfig(invalid) => {
                Problem::bad_request("invalid-topic-config", "Invalid topic configuration", detail)
                    .with("field", invalid.field)
            }
            LogError::PartitionNotFound { partitions, .. } => {
                Problem::new(StatusCode::NOT_FOUND, "partition-not-found", "Partition not found", detail)
                    .with("partitions", partitions)
            }
            LogError::OffsetOutOfRange { end_offset, .. } => {
                Problem::bad_request("offset-out-of-range", "Offset past the end of the partition", detail)
                    .with("end_offset", end_offset)
            }
            LogError::EventTooLarge { index, max, .. } => Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "event-too-large",
                "Event too large",
                detail,
            )
            .with("event_index", index)
            .with("limit_bytes", max),
            LogError::Corrupt { offset, file, position, .. } => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "corrupt-partition",
                "Corrupt data in the partition",
                detail,
            )
            .with("offset", offset)
            .with("file", file)
            .with("position", position),
            LogError::InvalidImport { .. } => {
                Problem::bad_request("invalid-import", "Invalid import", detail)
            }
            LogError::Unavailable { .. } => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", detail)
            }
            LogError::Storage { .. } => {
                tracing::error!(error = %detail, "storage error");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "storage-error", "Storage error", detail)
            }
        }
    }
}
