//! Topic administration: `/v1/topics` and `/v1/topics/{topic}`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use proteus_log::{PutTopicOutcome, TopicConfig};
use serde_json::json;

use crate::AppState;
use crate::extract::{PathParams, check_content_length, read_body, topic_name};
use crate::problem::Problem;

/// Topic configurations are small; this bounds what a PUT may send.
const TOPIC_BODY_BYTES_MAX: usize = 64 * 1024;

pub async fn list(State(state): State<AppState>) -> Result<impl IntoResponse, Problem> {
    let topics = state.log.list_topics().await?;
    Ok(Json(json!({ "topics": topics })))
}

pub async fn describe(
    State(state): State<AppState>,
    PathParams(topic): PathParams<String>,
) -> Result<impl IntoResponse, Problem> {
    let name = topic_name(&topic)?;
    Ok(Json(state.log.describe_topic(&name).await?))
}

pub async fn put(
    State(state): State<AppState>,
    PathParams(topic): PathParams<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, Problem> {
    let name = topic_name(&topic)?;
    check_content_length(&headers, TOPIC_BODY_BYTES_MAX)?;
    let bytes = read_body(body, TOPIC_BODY_BYTES_MAX).await?;
    let config: TopicConfig = if bytes.iter().all(u8::is_ascii_whitespace) {
        TopicConfig::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            Problem::bad_request(
                "invalid-topic-config",
                "Invalid topic configuration",
                format!(
                    "the body is not a valid topic configuration: {e}; fields are partitions, retention_ms, retention_bytes, event_bytes_max, segment_bytes, segment_ms, dedup_window_ms, dedup_entries_max"
                ),
            )
        })?
    };
    let outcome = state.log.put_topic(&name, config).await?;
    let status = match outcome {
        PutTopicOutcome::Created => StatusCode::CREATED,
        PutTopicOutcome::Updated | PutTopicOutcome::Unchanged => StatusCode::OK,
    };
    let description = state.log.describe_topic(&name).await?;
    Ok((status, Json(description)))
}

pub async fn delete(
    State(state): State<AppState>,
    PathParams(topic): PathParams<String>,
) -> Result<impl IntoResponse, Problem> {
    let name = topic_name(&topic)?;
    // Groups first: a crash in between leaves a topic to delete again, never groups whose
    // topic is gone (which a restart keeps, since their topic may only be on another log).
    state.groups.topic_deleted(&name).await?;
    state.log.delete_topic(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
