//! Consumer groups: `/v1/topics/{topic}/groups/...`.

use std::io::Write as _;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use proteus_groups::config::StartPosition;
use proteus_groups::state::Position;
use proteus_groups::{GroupConfig, GroupError, GroupName, MemberId};
use proteus_groups_service::{PullRequest, ReplaySelection};
use proteus_log::{Offset, PartitionId, TopicName};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::AppState;
use crate::extract::{PathParams, QueryParams, check_content_length, read_body, topic_name};
use crate::problem::Problem;

/// Group requests (settings, acks of up to 10,000 positions) fit in this.
const GROUP_BODY_BYTES_MAX: usize = 1024 * 1024;

/// Marks a request forwarded to a group's coordinator (value: the forwarding instance's id).
/// A forwarded request is never forwarded again.
pub const FORWARDED_HEADER: &str = "proteus-forwarded-by";

/// How long a forwarded request may take, beyond a pull's `wait_ms`.
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Request headers a forwarded request carries over.
const FORWARDED_REQUEST_HEADERS: [&str; 6] = [
    "content-type",
    "accept",
    "authorization",
    "traceparent",
    "tracestate",
    "x-request-id",
];

/// `(topic, group)` of a path under `/v1/topics/{topic}/groups/{group}`, percent-decoded.
fn group_of_path(path: &str) -> Option<(String, String)> {
    let mut segments = path.split('/');
    let (Some(""), Some("v1"), Some("topics"), Some(topic), Some("groups"), Some(group)) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return None;
    };
    if group.is_empty() {
        return None;
    }
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .ok()
            .map(|t| t.into_owned())
    };
    Some((decode(topic)?, decode(group)?))
}

fn coordinator_unavailable(detail: String) -> Response {
    let mut response = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "coordinator-unavailable",
        "Group coordinator unavailable",
        detail,
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Middleware in front of every route: a request about one group goes to the instance that
/// coordinates the group. Handled here when this instance is its coordinator (or becomes it);
/// otherwise forwarded once to the coordinator, whose answer is returned unchanged.
pub async fn route_to_coordinator(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(router) = state.group_router.clone() else {
        return next.run(request).await;
    };
    let Some((topic, group)) = group_of_path(request.uri().path()) else {
        return next.run(request).await;
    };
    // Invalid names: the handler says what is wrong.
    let (Ok(topic), Ok(group)) = (TopicName::parse(&topic), GroupName::parse(&group)) else {
        return next.run(request).await;
    };
    match router.route(&topic, &group).await {
        Ok(proteus_groups_service::coordination::Route::Local) => next.run(request).await,
        Ok(proteus_groups_service::coordination::Route::Remote(url)) => {
            if request.headers().contains_key(FORWARDED_HEADER) {
                return coordinator_unavailable(format!(
                    "the coordinator of group '{group}' is moving (this instance was asked by \
                     another one, but {url} holds the group now); retry"
                ));
            }
            match forward(&state, router.instance_id(), &url, request).await {
                Ok(response) => response,
                Err(ForwardError::Problem(problem)) => problem.into_response(),
                Err(ForwardError::Unreachable(error)) => {
                    router.forward_failed(&topic, &group, &url);
                    tracing::warn!(%topic, %group, coordinator = %url, %error,
                        "forwarding a group request to its coordinator failed");
                    coordinator_unavailable(format!(
                        "the coordinator of group '{group}' ({url}) did not answer: {error}; \
                         retry (another instance takes over once its lease expires)"
                    ))
                }
            }
        }
        Err(error) => coordinator_unavailable(format!(
            "cannot tell which instance coordinates group '{group}': {error}; retry"
        )),
    }
}

enum ForwardError {
    Problem(Problem),
    Unreachable(String),
}

async fn forward(
    state: &AppState,
    instance_id: &str,
    base_url: &str,
    request: Request,
) -> Result<Response, ForwardError> {
    let (parts, body) = request.into_parts();
    check_content_length(&parts.headers, GROUP_BODY_BYTES_MAX).map_err(ForwardError::Problem)?;
    let bytes = read_body(body, GROUP_BODY_BYTES_MAX)
        .await
        .map_err(ForwardError::Problem)?;
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    // A long poll may take its whole wait_ms before the coordinator answers.
    let mut timeout = FORWARD_TIMEOUT;
    if parts.uri.path().ends_with("/pull")
        && let Ok(pull) = serde_json::from_slice::<serde_json::Value>(&bytes)
        && let Some(wait_ms) = pull.get("wait_ms").and_then(serde_json::Value::as_u64)
    {
        timeout += std::time::Duration::from_millis(wait_ms.min(state.config.wait_ms_max));
    }
    let mut builder = state
        .forwarder
        .request(parts.method, format!("{base_url}{path_and_query}"))
        .timeout(timeout)
        .header(FORWARDED_HEADER, instance_id);
    for name in FORWARDED_REQUEST_HEADERS {
        if let Some(value) = parts.headers.get(name) {
            builder = builder.header(name, value);
        }
    }
    let answer = builder
        .body(bytes)
        .send()
        .await
        .map_err(|e| ForwardError::Unreachable(e.to_string()))?;
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !matches!(
            name.as_str(),
            "connection" | "keep-alive" | "transfer-encoding" | "content-length" | "date"
        ) {
            response = response.header(name, value);
        }
    }
    response
        .body(Body::from_stream(answer.bytes_stream()))
        .map_err(|e| ForwardError::Unreachable(e.to_string()))
}

fn group_name(name: &str) -> Result<GroupName, Problem> {
    GroupName::parse(name).map_err(|e| {
        Problem::bad_request("invalid-group-name", "Invalid group name", e.to_string())
    })
}

fn member_id(id: &str) -> Result<MemberId, Problem> {
    MemberId::parse(id)
        .map_err(|e| Problem::bad_request("invalid-member-id", "Invalid member id", e.to_string()))
}

fn names(topic: &str, group: &str) -> Result<(TopicName, GroupName), Problem> {
    Ok((topic_name(topic)?, group_name(group)?))
}

/// Reads a JSON body; an empty body is `T::default()`.
async fn json_body<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: Body,
    what: &str,
    fields: &str,
) -> Result<T, Problem> {
    check_content_length(headers, GROUP_BODY_BYTES_MAX)?;
    let bytes = read_body(body, GROUP_BODY_BYTES_MAX).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        Problem::bad_request(
            "invalid-body",
            "Invalid request body",
            format!("the body is not a valid {what}: {e}; expected fields: {fields}"),
        )
    })
}

impl From<GroupError> for Problem {
    fn from(error: GroupError) -> Self {
        let detail = error.to_string();
        match error {
            GroupError::Log(log) => log.into(),
            GroupError::GroupNotFound { topic, group } => Problem::new(
                StatusCode::NOT_FOUND,
                "group-not-found",
                "Group not found",
                format!(
                    "{detail}; create it with PUT /v1/topics/{topic}/groups/{group} or `proteus group create {topic} {group}`"
                ),
            ),
            GroupError::GroupExists { .. } => Problem::new(
                StatusCode::CONFLICT,
                "group-exists",
                "Group already exists",
                detail,
            ),
            GroupError::InvalidName(_) => {
                Problem::bad_request("invalid-name", "Invalid name", detail)
            }
            GroupError::InvalidConfig(invalid) => Problem::bad_request(
                "invalid-group-config",
                "Invalid group configuration",
                detail,
            )
            .with("field", invalid.field),
            GroupError::UnknownMember { .. } => Problem::new(
                StatusCode::NOT_FOUND,
                "unknown-member",
                "Unknown member",
                detail,
            ),
            GroupError::StaleGeneration {
                current,
                assigned_at,
                ..
            } => Problem::new(
                StatusCode::CONFLICT,
                "stale-generation",
                "Stale generation",
                detail,
            )
            .with("generation", current)
            .with("assigned_at", assigned_at),
            GroupError::FutureGeneration { current, .. } => {
                Problem::bad_request("invalid-generation", "Invalid generation", detail)
                    .with("generation", current)
            }
            GroupError::NotOwner { partition, .. } => Problem::new(
                StatusCode::CONFLICT,
                "not-owner",
                "Partition not owned",
                detail,
            )
            .with("partition", partition),
            GroupError::NotDelivered { .. } => Problem::new(
                StatusCode::CONFLICT,
                "not-delivered",
                "Position never delivered",
                detail,
            ),
            GroupError::NotInFlight { .. } => Problem::new(
                StatusCode::CONFLICT,
                "not-in-flight",
                "Event not in flight",
                detail,
            ),
            GroupError::InvalidPosition { .. } => {
                Problem::bad_request("invalid-position", "Invalid position", detail)
            }
            GroupError::PartitionNotFound { partitions, .. } => Problem::new(
                StatusCode::NOT_FOUND,
                "partition-not-found",
                "Partition not found",
                detail,
            )
            .with("partitions", partitions),
            GroupError::DelayTooLong { max_ms, .. } => {
                Problem::bad_request("invalid-delay", "Invalid nack delay", detail)
                    .with("limit_ms", max_ms)
            }
            GroupError::TooManyPositions { max, .. } => {
                Problem::bad_request("too-many-positions", "Too many positions", detail)
                    .with("limit", max)
            }
            GroupError::PushGroup { .. } => {
                Problem::new(StatusCode::CONFLICT, "push-group", "Push group", detail)
            }
            GroupError::TooManyMembers { max, .. } => Problem::new(
                StatusCode::CONFLICT,
                "too-many-members",
                "Too many members",
                detail,
            )
            .with("limit", max),
            GroupError::DeadLetterNotFound { .. } => Problem::new(
                StatusCode::NOT_FOUND,
                "dead-letter-not-found",
                "Dead letter not found",
                detail,
            ),
            GroupError::Store(proteus_groups_service::proteus_groups::StoreError::Fenced {
                ..
            }) => {
                // Another instance coordinates the group now: the client retries and its
                // request is routed there.
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "coordinator-unavailable",
                    "Group coordinator unavailable",
                    detail,
                )
            }
            GroupError::Store(proteus_groups_service::proteus_groups::StoreError::Unavailable(
                _,
            )) => {
                // The store's server restarts or elects a leader, or the group's coordinator
                // moved: the client asks again.
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store-unavailable",
                    "Group store unavailable",
                    detail,
                )
            }
            GroupError::Store(_) => {
                tracing::error!(error = %detail, "group store error");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage-error",
                    "Storage error",
                    detail,
                )
            }
        }
    }
}

pub async fn list(
    State(state): State<AppState>,
    PathParams(topic): PathParams<String>,
) -> Result<impl IntoResponse, Problem> {
    let topic = topic_name(&topic)?;
    let groups = state.groups.list(&topic).await?;
    Ok(Json(json!({ "groups": groups })))
}

pub async fn put(
    State(state): State<AppState>,
    PathParams((topic, group)): PathParams<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, Problem> {
    let (topic, group) = names(&topic, &group)?;
    let config: GroupConfig = json_body(
        &headers,
        body,
        "group configuration",
        "start, ack_wait_ms, unacked_events_max, session_timeout_ms, retry {backoff_base_ms, backoff_max_ms, deliveries_max}, dead_letter_topic, batch {events_max, bytes_max, linger_ms}, push {url, mode, concurrency_max, timeout_ms, hmac_secret}",
    )
    .await?;
    let created = state.groups.put_group(&topic, &group, config).await?;
    let description = state.groups.describe(&topic, &group).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(description)))
}

pub async fn describe(
    State(state): State<AppState>,
    PathParams((topic, group)): PathParams<(String, String)>,
) -> Result<impl IntoResponse, Problem> {
    let (topic, group) = names(&topic, &group)?;
    Ok(Json(state.groups.describe(&topic, &group).await?))
}

pub async fn delete(
    State(state): State<AppState>,
    PathParams((topic, group)): PathParams<(String, String)>,
) -> Result<impl IntoResponse, Problem> {
    let (topic, group) = names(&topic, &group)?;
    state.groups.delete(&topic, &group).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    #[serde(default)]
    to: StartPosition,
    #[serde(default)]
    partitions: Option<Vec<PartitionId>>,
}

pub async fn reset(
    State(state): State<AppState>,
    PathParams((topic, group)): PathParams<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, Problem> {
    let (topic, group) = names(&topic, &group)?;
    let request: ResetBody = json_body(
        &headers,
        body,
        "reset request",
        r#"to ("beginning", "end", {"offset": N} or {"time_ms": T}), partitions ([0, 1, …], all when absent)"#,
    )
    .await?;
    let positions = state
        .groups
        .reset(&topic, &group, request.to, request.partitions)
        .await?;
    let positions: serde_json::Map<String, serde_json::Value> = positions
        .into_iter()
        .map(|(p, o)| (p.to_string(), o.into()))
        .collect();
    Ok(Json(json!({ "committed": positions })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    #[serde(default)]
    member_id: Option<String>,
}

pub async fn join(
    State(state): State<AppState>,
    PathParams((topic, group)): PathParams<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, Problem> {
    let (topic, group) = names(&topic, &group)?;
    let request: JoinBody = json_body(&headers, body, "join request", "member_id").await?;
    let member = request.member_id.as_deref().map(member_id).transpose()?;
    let joined = state.groups.join(&topic, &group, member).await?;
    Ok((StatusCode::CREATED, Json(joined)))
}

pub async fn heartbeat(
    State(state): State<AppState>,
    PathParams((topic, group, member)): PathParams<(String, String, String)>,
) -> Result<impl IntoResponse, Problem> {
    let (topic, group) = names(&topic, &group)?;
    let member = member_id(&member)?;
    Ok(Json(state.groups.heartbeat(&topic, &group, &member).await?))
}

pub async fn leave(
    State(state): State<AppState>,
    PathParams((topic, group, member)): PathParams<(String, String, String)>,
) -> Result<impl IntoResponse, Problem> {
    let (topic, group) = names(&topic, &group)?;
    let member = member_id(&member)?;
    state.groups.leave(&topic, &group, &member).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullBody {
    #[serde(default = "default_events_max")]
    max_events: u32,
    #[serde(default = "default_bytes_max")]
    max_bytes: u32,
    #[serde(default)]
    wait_ms: u64,
}

fn default_events_max() -> u32 {
    100
}

fn default_bytes_max() -> u32 {
    1024 * 1024
}

impl Default for PullBody {
    fn default() -> Self {
        PullBody {
            max_events: default_events_max(),
            max_bytes: default_bytes_max(),
            wait_ms: 0,
        }
    }
}

/// Delivers events as `{"generation", "partitions", "events": [{"position", "partition",
/// "offset", "delivery_count", "deadline_ms", "replay", "append_time_ms", "event"}]}`. The event
/// bytes are copied as stored, not re-serialised.
pub async fn pull(
    State(state): State<AppState>,
    PathParams((topic, group, member)): PathParams<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let (topic, group) = names(&topic, &group)?;
    let member = member_id(&member)?;
    let request: PullBody = json_body(
        &headers,
        body,
        "pull request",
        "max_events, max_bytes, wait_ms",
    )
    .await?;
    if request.wait_ms > state.config.wait_ms_max {
        return Err(Problem::invalid_query(format!(
            "wait_ms {} is more than the {} this server allows",
            request.wait_ms, state.config.wait_ms_max
        )));
    }
    let pull = state.groups.pull(
        &topic,
        &group,
        &member,
        PullRequest {
            events_max: request.max_events,
            bytes_max: request.max_bytes,
            wait_ms: request.wait_ms,
        },
    );
    let response = tokio::select! {
        response = pull => response?,
        () = state.shutting_down() => return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable",
            "the server is shutting down; pull again from another instance or after restart")),
    };
    let size: usize = response.deliveries.iter().map(|d| d.json.len() + 160).sum();
    let mut out = Vec::with_capacity(size + 128);
    let _ = write!(
        out,
        r#"{{"generation":{},"partitions":{},"events":["#,
        response.generation,
        serde_json::to_string(&response.partitions).unwrap_or_else(|_| "[]".into())
    );
    for (index, delivery) in response.deliveries.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        let _ = write!(
            out,
            r#"{{"position":"{}","partition":{},"offset":{},"delivery_count":{},"deadline_ms":{},"replay":{},"append_time_ms":{},"event":"#,
            delivery.position,
            delivery.position.partition,
            delivery.position.offset,
            delivery.deliveries,
            delivery.deadline_ms,
            delivery.replay,
            delivery.append_time_ms
        );
        out.extend_from_slice(&delivery.json);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    let mut http = Response::new(Body::from(out));
    http.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(http)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PositionsBody {
    #[serde(default)]
    generation: u64,
    #[serde(default)]
    positions: Vec<String>,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    error: Option<String>,
}

fn parse_positions(texts: &[String]) -> Result<Vec<Position>, Problem> {
    if texts.is_empty() {
        return Err(Problem::bad_request(
            "invalid-body",
            "Invalid request body",
            "positions is empty; list the positions (\"partition:offset\") you received",
        ));
    }
    texts
        .iter()
        .map(|text| text.parse::<Position>().map_err(Problem::from))
        .collect()
}

const POSITIONS_FIELDS: &str =
    r#"generation, positions (["0:42", …]), and for nack: delay_ms, error"#;

pub async fn ack(
    State(state): State<AppState>,
    PathParams((topic, group, member)): PathParams<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, Problem> {
    let (topic, group) = names(&topic, &group)?;
    let member = member_id(&member)?;
    let request: PositionsBody = json_body(&headers, body, "ack request", POSITIONS_FIELDS).await?;
    let positions = parse_positions(&request.positions)?;
    let outcome = state
        .groups
        .ack(&topic, &group, &member, request.generation, &positions)
        .await?;
    Ok(Json(
        json!({"acked": outcome.acked, "duplicates": outcome.duplicates}),
    ))
}

pub async fn nack(
    State(state): State<AppState>,
    PathParams((topic, group, member)): PathParams<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, Problem> {
    let (topic, group) = names(&topic, &group)?;
    let member = member_id(&member)?;
    let request: PositionsBody =
        json_body(&headers, body, "nack request", POSITIONS_FIELDS).await?;
    let positions = parse_positions(&request.positions)?;
    let outcome = state
        .groups
        .nack(
            &topic,
            &group,
            &member,
            request.generation,
            &positions,
            request.delay_ms,
            request.error.as_deref(),
        )
        .await?;
    let dead_lettered: Vec<String> = outcome
        .dead_letters
        .iter()
        .map(|d| d.position.to_string())
        .collect();
    Ok(Json(
        json!({"nacked": outcome.nacked, "dead_lettered": dead_lettered}),
    ))
}

pub async fn in_progress(
    State(state): State<AppState>,
    PathParams((topic, group, member)): PathParams<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, Problem> {
    let (topic, group) = names(&topic, &group)?;
    let member = member_id(&member)?;
    let request: PositionsBody =
        json_body(&headers, body, "in-progress request", POSITIONS_FIELDS).await?;
    let positions = parse_positions(&request.positions)?;
    let deadline_ms = state
        .groups
        .in_progress(&topic, &group, &member, request.generation, &positions)
        .await?;
    Ok(Json(
        json!({"extended": positions.len(), "deadline_ms": deadline_ms}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    #[serde(default)]
    from: Offset,
    #[serde(default = "default_dead_letter_limit")]
    limit: u32,
}

fn default_dead_letter_limit() -> u32 {
    100
}

pub async fn dead_letters(
    State(state): State<AppState>,
    PathParams((topic, group)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<DeadLetterQuery>,
) -> Result<impl IntoResponse, Problem> {
    let (topic, group) = names(&topic, &group)?;
    let (letters, next) = state
        .groups
        .dead_letters(&topic, &group, query.from, query.limit)
        .await?;
    Ok(Json(json!({"dead_letters": letters, "next_offset": next})))
}

pub async fn dead_letter(
    State(state): State<AppState>,
    PathParams((topic, group, offset)): PathParams<(String, String, String)>,
) -> Result<impl IntoResponse, Problem> {
    let (topic, group) = names(&topic, &group)?;
    let offset: Offset = offset.parse().map_err(|_| {
        Problem::bad_request(
            "invalid-path",
            "Invalid path parameter",
            format!("{offset:?} is not a dead-letter offset (a non-negative integer)"),
        )
    })?;
    let (letters, _) = state.groups.dead_letters(&topic, &group, offset, 1).await?;
    match letters
        .into_iter()
        .next()
        .filter(|l| l.dead_letter_offset == offset)
    {
        Some(letter) => Ok(Json(letter)),
        None => Err(GroupError::DeadLetterNotFound { group, offset }.into()),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    offsets: Option<Vec<Offset>>,
}

pub async fn replay(
    State(state): State<AppState>,
    PathParams((topic, group)): PathParams<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, Problem> {
    let (topic, group) = names(&topic, &group)?;
    let request: ReplayBody = json_body(
        &headers,
        body,
        "replay request",
        r#"{"all": true} or {"offsets": [dead-letter offsets]}"#,
    )
    .await?;
    let selection = match (request.all, request.offsets) {
        (true, None) => ReplaySelection::All,
        (false, Some(offsets)) if !offsets.is_empty() => ReplaySelection::Offsets(offsets),
        _ => {
            return Err(Problem::bad_request(
                "invalid-body",
                "Invalid request body",
                r#"say which dead letters to replay: {"all": true}, or {"offsets": [3, 7]} with offsets from GET …/dead-letters"#,
            ));
        }
    };
    let replayed = state.groups.replay(&topic, &group, selection).await?;
    Ok(Json(json!({"replayed": replayed})))
}
