//! OFREP, the OpenFeature Remote Evaluation Protocol (`../shared/data/ofrep/openapi.yaml`):
//! single and bulk evaluation, and the SSE change stream of `event-streams.yaml`.
//!
//! Responses use OFREP's own shapes, not problem details, so OpenFeature providers understand
//! them: `{key, value, reason, variant, metadata}` on success, `{key, errorCode, errorDetails}`
//! on failure (404 for `FLAG_NOT_FOUND`, 400 for the others), `{errorDetails}` for 401/403.
//!
//! Which flag set a request evaluates: with API keys configured, the key's set (`X-API-Key` or
//! `Authorization: Bearer`); without any, the `default` set.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use proteus_flags::{Evaluation, Reason};
use proteus_flagsets::FlagSetName;
use proteus_flagsets_service::LiveSet;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::AppState;
use crate::extract::PathParams;

/// Largest OFREP request body (the evaluation context), in bytes.
pub const OFREP_BODY_BYTES_MAX: usize = 256 * 1024;
/// Reconnection delay suggested to SSE clients.
const SSE_RETRY: Duration = Duration::from_secs(1);

/// An API key: its secret, the name recorded in audit entries, and the one flag set it may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    pub name: String,
    pub secret: String,
    pub flag_set: FlagSetName,
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn general_error(status: StatusCode, details: impl Into<String>) -> Response {
    json_response(status, json!({ "errorDetails": details.into() }))
}

/// The secret a request presents: `X-API-Key`, else `Authorization: Bearer`.
pub(crate) fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(key.trim());
    }
    let authorization = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = authorization.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The API key a request authenticates with: `Ok(None)` when no key is configured and none was
/// given; an error (401) when one is needed or the given one is unknown.
pub(crate) fn authenticate<'s>(
    state: &'s AppState,
    headers: &HeaderMap,
) -> Result<Option<&'s ApiKey>, String> {
    let keys = &state.config.flag_api_keys;
    match presented_key(headers) {
        Some(secret) => keys
            .iter()
            .find(|k| constant_time_eq(k.secret.as_bytes(), secret.as_bytes()))
            .map(Some)
            .ok_or_else(|| "the API key is not one this server knows".to_owned()),
        None if keys.is_empty() => Ok(None),
        None => {
            Err("an API key is required: send it as X-API-Key or Authorization: Bearer".to_owned())
        }
    }
}

/// Compares secrets without returning early, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The name of the set a request evaluates, or why it is refused (401).
fn evaluated_set_name(state: &AppState, headers: &HeaderMap) -> Result<FlagSetName, String> {
    Ok(match authenticate(state, headers)? {
        Some(key) => key.flag_set.clone(),
        None => FlagSetName::default_set(),
    })
}

/// The set a request evaluates (`None`: it does not exist yet), or why it is refused (401).
fn evaluated_set(state: &AppState, headers: &HeaderMap) -> Result<Option<Arc<LiveSet>>, String> {
    evaluated_set_name(state, headers).map(|name| state.flags.get(&name))
}

/// The evaluation context of an OFREP body: `{"context": {...}}` (an absent context is empty).
fn parse_context(body: &[u8]) -> Result<Map<String, Value>, String> {
    if body.len() > OFREP_BODY_BYTES_MAX {
        return Err(format!(
            "the request body is {} bytes, more than the {OFREP_BODY_BYTES_MAX} an evaluation request may be",
            body.len()
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let request: Value =
        serde_json::from_slice(body).map_err(|e| format!("the request body is not JSON: {e}"))?;
    match request {
        Value::Object(mut request) => match request.remove("context") {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(context)) => {
                if let Some(key) = context.get("targetingKey")
                    && !key.is_string()
                {
                    return Err(format!("context.targetingKey must be a string, got {key}"));
                }
                Ok(context)
            }
            Some(other) => Err(format!(
                "\"context\" must be a JSON object, got {}",
                json_type(&other)
            )),
        },
        other => Err(format!(
            "the request body must be a JSON object {{\"context\": {{...}}}}, got {}",
            json_type(&other)
        )),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// OFREP's body for one evaluation, serialised straight from the evaluation's borrowed parts
/// (no intermediate JSON tree on the hot path).
#[derive(Serialize)]
#[serde(untagged)]
enum Answer<'a> {
    Success {
        key: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<&'a Value>,
        /// Always present, `""` when there is none (a disabled flag, no default variant), as
        /// flagd sends it: some providers (the Python one) read `variant` unconditionally.
        variant: &'a str,
        reason: &'static str,
        metadata: &'a Map<String, Value>,
    },
    Failure {
        key: &'a str,
        #[serde(rename = "errorCode")]
        error_code: &'static str,
        #[serde(rename = "errorDetails")]
        error_details: &'a str,
        #[serde(skip_serializing_if = "Map::is_empty")]
        metadata: &'a Map<String, Value>,
    },
}

/// The answer for one evaluation, and its status when it is the whole response.
fn render<'a>(key: &'a str, evaluation: &'a Evaluation<'_>) -> (StatusCode, Answer<'a>) {
    if let Some(code) = evaluation.error {
        let status = if code == proteus_flags::ErrorCode::FlagNotFound {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::BAD_REQUEST
        };
        let answer = Answer::Failure {
            key,
            error_code: code.as_str(),
            error_details: evaluation.error_message.as_deref().unwrap_or(code.as_str()),
            metadata: evaluation.metadata,
        };
        return (status, answer);
    }
    debug_assert!(evaluation.reason != Reason::Error);
    let answer = Answer::Success {
        key,
        value: evaluation.value,
        variant: evaluation.variant.unwrap_or_default(),
        reason: evaluation.reason.as_str(),
        metadata: evaluation.metadata,
    };
    (StatusCode::OK, answer)
}

fn serialized_response(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        // Evaluations are JSON values and strings already; this cannot fail.
        Err(e) => general_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn flag_not_found(key: &str, set: Option<&LiveSet>) -> Response {
    let details = match set {
        Some(set) => format!("flag '{key}' was not found in flag set '{}'", set.name),
        None => format!("flag '{key}' was not found: the flag set does not exist yet"),
    };
    json_response(
        StatusCode::NOT_FOUND,
        json!({ "key": key, "errorCode": "FLAG_NOT_FOUND", "errorDetails": details }),
    )
}

/// `POST /ofrep/v1/evaluate/flags/{key}`
pub async fn evaluate_flag(
    State(state): State<AppState>,
    PathParams(key): PathParams<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let set = match evaluated_set(&state, &headers) {
        Ok(set) => set,
        Err(details) => return general_error(StatusCode::UNAUTHORIZED, details),
    };
    let context = match parse_context(&body) {
        Ok(context) => context,
        Err(details) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({ "key": key, "errorCode": "INVALID_CONTEXT", "errorDetails": details }),
            );
        }
    };
    let Some(set) = set else {
        return flag_not_found(&key, None);
    };
    let Some(flag) = set.flags.flag(&key) else {
        return flag_not_found(&key, Some(&set));
    };
    let now_ms = now_ms();
    let evaluation = flag.evaluate(&context, now_ms / 1_000);
    set.record_evaluation(flag, now_ms);
    record_exposure(&state, &set, &key, &context, &evaluation, now_ms);
    let (status, answer) = render(&key, &evaluation);
    serialized_response(status, &answer)
}

/// Reports a served variant to the exposure topic, when its targeting key is sampled.
/// Bulk evaluations are not exposures: a client-side provider fetches every flag whether or not
/// the application uses it.
fn record_exposure(
    state: &AppState,
    set: &LiveSet,
    key: &str,
    context: &Map<String, Value>,
    evaluation: &Evaluation<'_>,
    now_ms: i64,
) {
    let sink = state.flags.exposures();
    let Some(targeting_key) = context.get("targetingKey").and_then(Value::as_str) else {
        return;
    };
    let (Some(variant), None) = (evaluation.variant, evaluation.error) else {
        return;
    };
    if !sink.samples(targeting_key) {
        return;
    }
    sink.record(proteus_flagsets_service::exposures::Exposure {
        flag_set: set.name.to_string(),
        flag: key.to_owned(),
        variant: variant.to_owned(),
        targeting_key: targeting_key.to_owned(),
        reason: evaluation.reason.as_str(),
        time_ms: now_ms,
    });
}

/// `POST /ofrep/v1/evaluate/flags`: every flag of the set, with `ETag`/`If-None-Match`.
pub async fn evaluate_all(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let set = match evaluated_set(&state, &headers) {
        Ok(set) => set,
        Err(details) => return general_error(StatusCode::UNAUTHORIZED, details),
    };
    let context = match parse_context(&body) {
        Ok(context) => context,
        Err(details) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                json!({ "errorCode": "INVALID_CONTEXT", "errorDetails": details }),
            );
        }
    };
    let Some(set) = set else {
        // No set yet: no flags, and an ETag that changes once one exists.
        return json_response(
            StatusCode::OK,
            json!({ "flags": [], "eventStreams": event_streams() }),
        );
    };
    let etag = set.etag.as_str();
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        // The client keeps using every flag it cached: that is usage too.
        let now_ms = now_ms();
        for flag in set.flags.flags() {
            set.record_evaluation(flag, now_ms);
        }
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(value) = HeaderValue::from_str(etag) {
            response.headers_mut().insert(header::ETAG, value);
        }
        return response;
    }
    let now_ms = now_ms();
    let evaluations: Vec<(&str, Evaluation<'_>)> = set
        .flags
        .flags()
        .map(|flag| {
            set.record_evaluation(flag, now_ms);
            (flag.key(), flag.evaluate(&context, now_ms / 1_000))
        })
        .collect();
    let flags: Vec<Answer<'_>> = evaluations
        .iter()
        .map(|(key, evaluation)| render(key, evaluation).1)
        .collect();
    let mut metadata = set.flags.metadata().clone();
    metadata.insert("flagSetVersion".into(), json!(set.version));
    let body = json!({ "metadata": metadata, "eventStreams": event_streams() });
    #[derive(Serialize)]
    struct Bulk<'a> {
        flags: Vec<Answer<'a>>,
        #[serde(flatten)]
        rest: Value,
    }
    let mut response = serialized_response(StatusCode::OK, &Bulk { flags, rest: body });
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// Where providers connect for change notifications (relative to their OFREP base URL).
fn event_streams() -> Value {
    json!([{ "type": "sse", "endpoint": { "requestUri": "/ofrep/v1/events" } }])
}

/// `GET /ofrep/v1/events`: one `refetchEvaluation` message per new version of the set the
/// request's key evaluates (OFREP `event-streams.yaml`).
pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Response> {
    match evaluated_set_name(&state, &headers) {
        Ok(set) => Ok(change_stream(state, set)),
        Err(details) => Err(general_error(StatusCode::UNAUTHORIZED, details)),
    }
}

/// The SSE stream of changes to `set`, until the server shuts down.
pub(crate) fn change_stream(
    state: AppState,
    set: FlagSetName,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let changes = state.flags.subscribe();
    let keep_alive = Duration::from_millis(state.config.sse_keep_alive_ms);
    let stream = futures_util::stream::unfold(
        (changes, set, state),
        |(mut changes, set, state)| async move {
            loop {
                let change = tokio::select! {
                    () = state.shutting_down() => return None,
                    change = changes.recv() => change,
                };
                let event = match change {
                    Ok(change) if change.set == set => {
                        let data = json!({
                            "type": "refetchEvaluation",
                            "etag": change.etag,
                            "lastModified": change.updated_ms / 1_000,
                        });
                        SseEvent::default()
                            .event("message")
                            .id(change.version.to_string())
                            .retry(SSE_RETRY)
                            .data(data.to_string())
                    }
                    Ok(_) => continue,
                    // Fell behind: some change was missed, so refetch to be safe.
                    Err(RecvError::Lagged(_)) => SseEvent::default()
                        .event("message")
                        .data(json!({ "type": "refetchEvaluation" }).to_string()),
                    Err(RecvError::Closed) => return None,
                };
                return Some((Ok(event), (changes, set, state)));
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(keep_alive))
}
