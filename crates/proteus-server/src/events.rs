//! Appending and reading events.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use proteus_log::event::BatchError;
use proteus_log::port::{READ_BYTES_MAX, READ_EVENTS_MAX};
use proteus_log::{
    Cursor, Event, EventError, Offset, PartitionId, ReadBatch, ReadFrom, ReadLimits, StoredEvent,
};
use serde::Deserialize;

use crate::AppState;
use crate::extract::{PathParams, QueryParams, check_content_length, read_body, topic_name};
use crate::problem::Problem;

const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";

/// The media type without parameters, lower-cased: `Application/JSON; charset=utf-8` is
/// `application/json`.
fn media_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
}

/// `POST /v1/topics/{topic}/events`: the CloudEvents HTTP binding in its three modes.
pub async fn append(
    State(state): State<AppState>,
    PathParams(topic): PathParams<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let name = topic_name(&topic)?;
    let limit = state.config.body_bytes_max;
    check_content_length(&headers, limit)?;
    let media_type = media_type(&headers);
    let binary_mode = headers.contains_key("ce-specversion");
    let events = match media_type.as_deref() {
        Some(STRUCTURED) => {
            let bytes = read_body(body, limit).await?;
            vec![Event::from_bytes(bytes).map_err(invalid_event)?]
        }
        Some(BATCH) => {
            let bytes = read_body(body, limit).await?;
            Event::batch_from_bytes(bytes).map_err(|e| match e {
                BatchError::TooManyEvents => Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "batch-too-large",
                    "Batch too large",
                    e.to_string(),
                )
                .with("limit_events", proteus_log::event::BATCH_EVENTS_MAX),
                BatchError::Invalid(error) => invalid_event(error),
            })?
        }
        _ if binary_mode => {
            let attributes = binary_attributes(&headers)?;
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .map(|v| {
                    v.to_str().map_err(|_| {
                        Problem::bad_request(
                            "invalid-event",
                            "Invalid CloudEvent",
                            "the Content-Type header is not valid ASCII",
                        )
                    })
                })
                .transpose()?;
            let bytes = read_body(body, limit).await?;
            vec![Event::from_binary(&attributes, content_type, &bytes).map_err(invalid_event)?]
        }
        other => {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                format!(
                    "Content-Type {} is not a CloudEvents HTTP binding: send {STRUCTURED} (one event), {BATCH} (a JSON array of events), or binary mode (the data as the body with ce-specversion, ce-id, ce-source and ce-type headers)",
                    other.map_or_else(|| "(none)".to_owned(), |t| format!("'{t}'"))
                ),
            ));
        }
    };
    let receipts = state.log.append(&name, events).await?;
    Ok(axum::Json(AppendResponse { results: receipts }).into_response())
}

#[derive(serde::Serialize)]
struct AppendResponse {
    results: Vec<proteus_log::AppendReceipt>,
}

fn invalid_event(error: EventError) -> Problem {
    let mut problem =
        Problem::bad_request("invalid-event", "Invalid CloudEvent", error.to_string());
    if let Some(index) = error.index {
        problem = problem.with("event_index", index);
    }
    if let Some(attribute) = &error.attribute {
        problem = problem.with("attribute", attribute.as_str());
    }
    problem
}

/// The `ce-` headers of a binary-mode request, names without the prefix and values
/// percent-decoded as the HTTP binding specifies.
fn binary_attributes(headers: &HeaderMap) -> Result<Vec<(String, String)>, Problem> {
    let mut attributes: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let invalid = |reason: String| {
            Problem::bad_request("invalid-event", "Invalid CloudEvent", reason)
                .with("attribute", attribute)
        };
        let raw = value.to_str().map_err(|_| {
            invalid(format!(
                "header 'ce-{attribute}' is not valid ASCII; percent-encode other characters"
            ))
        })?;
        let decoded = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| {
                invalid(format!(
                    "header 'ce-{attribute}' does not percent-decode to UTF-8"
                ))
            })?;
        if attributes.iter().any(|(seen, _)| seen == attribute) {
            return Err(invalid(format!("header 'ce-{attribute}' is given twice")));
        }
        attributes.push((attribute.to_owned(), decoded.into_owned()));
    }
    Ok(attributes)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    from: Option<String>,
    from_time: Option<String>,
    limit: Option<u32>,
    bytes_max: Option<u32>,
    wait_ms: Option<u64>,
}

/// Where a read starts: `from` is an offset, `beginning` or `end`; `from_time` an RFC 3339
/// timestamp or milliseconds since the epoch.
pub enum Start {
    Offset(Offset),
    Beginning,
    End,
    TimeMs(i64),
}

pub fn parse_start(from: Option<&str>, from_time: Option<&str>) -> Result<Start, Problem> {
    match (from, from_time) {
        (Some(_), Some(_)) => Err(Problem::invalid_query(
            "give either 'from' or 'from_time', not both",
        )),
        (None, Some(time)) => parse_time_ms(time).map(Start::TimeMs),
        (None, None) | (Some("beginning"), None) => Ok(Start::Beginning),
        (Some("end"), None) => Ok(Start::End),
        (Some(offset), None) => offset.parse().map(Start::Offset).map_err(|_| {
            Problem::invalid_query(format!(
                "'from' must be an offset (a whole number), 'beginning' or 'end', got {offset:?}"
            ))
        }),
    }
}

pub fn parse_time_ms(text: &str) -> Result<i64, Problem> {
    time_ms_from_text(text).map_err(|e| {
        Problem::invalid_query(format!(
            "'from_time' must be an RFC 3339 timestamp such as 2026-01-31T12:00:00Z or milliseconds since the Unix epoch, got {text:?} ({e})"
        ))
    })
}

/// Milliseconds since the Unix epoch from either that number or an RFC 3339 timestamp.
pub fn time_ms_from_text(text: &str) -> Result<i64, time::error::Parse> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
}

pub fn read_limits(limit: Option<u32>, bytes_max: Option<u32>) -> Result<ReadLimits, Problem> {
    let defaults = ReadLimits::default();
    let events_max = limit.unwrap_or(defaults.events_max);
    if !(1..=READ_EVENTS_MAX).contains(&events_max) {
        return Err(Problem::invalid_query(format!(
            "'limit' must be between 1 and {READ_EVENTS_MAX}, got {events_max}"
        )));
    }
    let bytes_max = bytes_max.unwrap_or(defaults.bytes_max);
    if !(1..=READ_BYTES_MAX).contains(&bytes_max) {
        return Err(Problem::invalid_query(format!(
            "'bytes_max' must be between 1 and {READ_BYTES_MAX}, got {bytes_max}"
        )));
    }
    Ok(ReadLimits {
        events_max,
        bytes_max,
    })
}

/// `GET /v1/topics/{topic}/partitions/{partition}/events`.
pub async fn read(
    State(state): State<AppState>,
    PathParams((topic, partition)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<ReadQuery>,
) -> Result<Response, Problem> {
    let name = topic_name(&topic)?;
    let partition: PartitionId = partition.parse().map_err(|_| {
        Problem::bad_request(
            "invalid-path",
            "Invalid path parameter",
            format!("partition must be a whole number, got {partition:?}"),
        )
    })?;
    let limits = read_limits(query.limit, query.bytes_max)?;
    let wait_ms = query.wait_ms.unwrap_or(0);
    if wait_ms > state.config.wait_ms_max {
        return Err(Problem::invalid_query(format!(
            "'wait_ms' must be at most {}, got {wait_ms}",
            state.config.wait_ms_max
        )));
    }
    let from = match parse_start(query.from.as_deref(), query.from_time.as_deref())? {
        Start::Offset(offset) => ReadFrom::Offset(offset),
        Start::Beginning => ReadFrom::Offset(0),
        Start::TimeMs(time_ms) => ReadFrom::TimeMs(time_ms),
        Start::End => {
            let description = state.log.describe_topic(&name).await?;
            let end = description
                .partitions
                .get(partition as usize)
                .map(|p| p.next_offset)
                .unwrap_or(0);
            ReadFrom::Offset(end)
        }
    };
    let mut batch = state.log.read(&name, partition, from, limits).await?;
    if batch.events.is_empty() && wait_ms > 0 {
        let mut cursor = Cursor::new();
        cursor.set(partition, batch.next_offset);
        let waited = tokio::select! {
            waited = state.log.wait_for_events(&name, &cursor, Duration::from_millis(wait_ms)) => waited?,
            () = state.shutting_down() => false,
        };
        if waited {
            batch = state
                .log
                .read(
                    &name,
                    partition,
                    ReadFrom::Offset(batch.next_offset),
                    limits,
                )
                .await?;
        }
    }
    Ok(json_response(render_batch(&batch)))
}

/// One stored event as the API returns it:
/// `{"partition":0,"offset":5,"append_time_ms":…,"event":{…}}`. The event's stored JSON is
/// copied as is, never re-encoded.
pub fn render_event(out: &mut Vec<u8>, event: &StoredEvent) {
    use std::io::Write;
    let _ = write!(
        out,
        r#"{{"partition":{},"offset":{},"append_time_ms":{},"event":"#,
        event.partition, event.offset, event.append_time_ms
    );
    out.extend_from_slice(&event.json);
    out.push(b'}');
}

fn render_batch(batch: &ReadBatch) -> Vec<u8> {
    use std::io::Write;
    let payload: usize = batch.events.iter().map(|e| e.json.len() + 80).sum();
    let mut out = Vec::with_capacity(payload + 100);
    out.extend_from_slice(b"{\"events\":[");
    for (i, event) in batch.events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        render_event(&mut out, event);
    }
    let _ = write!(
        out,
        r#"],"next_offset":{},"first_offset":{},"end_offset":{}}}"#,
        batch.next_offset, batch.first_offset, batch.end_offset
    );
    out
}

pub(crate) fn json_response(body: Vec<u8>) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
