//! Flag-set management under `/v1/flagsets`: documents, single flags, the kill switch, history,
//! rollback and restore, and a change stream.
//!
//! Who made a change is the API key's name (`anonymous` when the server has no keys). With keys
//! configured every request needs one, and a key may only touch its own flag set.

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use proteus_flagsets::{Change, FlagSetName, FlagStateChange, Revision, ValidationMode};
use proteus_flagsets_service::{Author, FlagServiceError, LiveSet};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::extract::{PathParams, QueryParams};
use crate::ofrep::authenticate;
use crate::problem::Problem;

/// Revisions returned by one history request unless `limit` says otherwise.
const HISTORY_LIMIT_DEFAULT: usize = 50;

fn set_name(name: &str) -> Result<FlagSetName, Problem> {
    FlagSetName::parse(name).map_err(|e| {
        Problem::bad_request(
            "invalid-flag-set-name",
            "Invalid flag set name",
            e.to_string(),
        )
    })
}

/// The author of a change to `set`, checking the request's API key may touch it.
pub(crate) fn author(
    state: &AppState,
    headers: &HeaderMap,
    set: &FlagSetName,
    comment: Option<String>,
) -> Result<Author, Problem> {
    let key = authenticate(state, headers).map_err(|details| {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            details,
        )
    })?;
    check_scope(key, set)?;
    if let Some(comment) = &comment
        && comment.len() > proteus_flagsets::COMMENT_BYTES_MAX
    {
        return Err(Problem::bad_request(
            "invalid-comment",
            "Comment too long",
            format!(
                "the comment is {} bytes, the most is {}",
                comment.len(),
                proteus_flagsets::COMMENT_BYTES_MAX
            ),
        ));
    }
    Ok(Author {
        actor: key.map_or_else(|| "anonymous".to_owned(), |k| k.name.clone()),
        comment,
    })
}

fn check_scope(key: Option<&crate::ofrep::ApiKey>, set: &FlagSetName) -> Result<(), Problem> {
    match key {
        Some(key) if &key.flag_set != set => Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
            format!(
                "API key '{}' is for flag set '{}', not '{set}'",
                key.name, key.flag_set
            ),
        )),
        _ => Ok(()),
    }
}

/// Reading needs the same rights as writing: a key sees only its own set.
pub(crate) fn check_read(
    state: &AppState,
    headers: &HeaderMap,
    set: &FlagSetName,
) -> Result<(), Problem> {
    let key = authenticate(state, headers).map_err(|details| {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            details,
        )
    })?;
    check_scope(key, set)
}

impl From<FlagServiceError> for Problem {
    fn from(error: FlagServiceError) -> Problem {
        let detail = error.to_string();
        match error {
            FlagServiceError::SetNotFound { set } => Problem::new(
                StatusCode::NOT_FOUND,
                "flag-set-not-found",
                "Flag set not found",
                detail,
            )
            .with("flag_set", set.as_str()),
            FlagServiceError::FlagNotFound { set, key } => Problem::new(
                StatusCode::NOT_FOUND,
                "flag-not-found",
                "Flag not found",
                detail,
            )
            .with("flag_set", set.as_str())
            .with("flag", key),
            FlagServiceError::VersionNotFound { latest, .. } => Problem::new(
                StatusCode::NOT_FOUND,
                "flag-set-version-not-found",
                "Version not found",
                detail,
            )
            .with("latest_version", latest),
            FlagServiceError::Conflict {
                actual, expected, ..
            } => Problem::new(
                StatusCode::CONFLICT,
                "flag-set-version-conflict",
                "Version conflict",
                format!("{detail}; read the set again and retry with expected_version={actual}"),
            )
            .with("actual_version", actual)
            .with("expected_version", expected),
            FlagServiceError::ScheduleNotFound { .. } => Problem::new(
                StatusCode::NOT_FOUND,
                "schedule-not-found",
                "Schedule not found",
                detail,
            ),
            FlagServiceError::InvalidChange(_) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-flag-change",
                "Invalid change",
                detail,
            ),
            FlagServiceError::InvalidDefinitions(errors) => {
                let list: Vec<Value> = errors
                    .errors()
                    .iter()
                    .map(|e| json!({ "path": e.path, "reason": e.kind.to_string() }))
                    .collect();
                Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-flag-definitions",
                    "Invalid flag definitions",
                    detail,
                )
                .with("errors", list)
            }
            FlagServiceError::Log(e) => e.into(),
            FlagServiceError::CorruptAudit { .. } => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "corrupt-flag-audit",
                "Flag history unreadable",
                detail,
            ),
        }
    }
}

fn summary(set: &LiveSet) -> Value {
    json!({
        "name": set.name,
        "version": set.version,
        "updated_ms": set.updated_ms,
        "flags": set.flags.len(),
        "validation": set.validation,
        "etag": set.etag,
        "warnings": set.warnings,
    })
}

fn with_etag(set: &LiveSet, body: Value, status: StatusCode) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&set.etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

fn revision_json(revision: &Revision) -> Value {
    serde_json::to_value(revision).unwrap_or(Value::Null)
}

/// The answer to a change: the set's summary after it, and whether a version was made.
fn changed(state: &AppState, set: &FlagSetName, revision: Option<Revision>) -> Response {
    let Some(live) = state.flags.get(set) else {
        // Deleted.
        return StatusCode::NO_CONTENT.into_response();
    };
    let status = match &revision {
        Some(r) if r.version == 1 => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    let mut body = summary(&live);
    body["changed"] = json!(revision.is_some());
    with_etag(&live, body, status)
}

fn parse_json(body: &Bytes, what: &str) -> Result<Value, Problem> {
    serde_json::from_slice(body).map_err(|e| {
        Problem::bad_request(
            "invalid-json",
            "Invalid JSON",
            format!("{what} is not valid JSON: {e}"),
        )
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ChangeQuery {
    /// The version the change was based on (optimistic concurrency).
    expected_version: Option<u64>,
    /// Why: recorded in the audit entry.
    comment: Option<String>,
    /// `strict` (default) or `flagd`.
    validation: Option<ValidationMode>,
}

pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, Problem> {
    let key = authenticate(&state, &headers).map_err(|details| {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            details,
        )
    })?;
    let sets: Vec<Value> = state
        .flags
        .list()
        .iter()
        .filter(|s| key.is_none_or(|k| k.flag_set == s.name))
        .map(|s| summary(s))
        .collect();
    Ok(axum::Json(json!({ "flag_sets": sets })).into_response())
}

pub async fn get_set(
    State(state): State<AppState>,
    PathParams(set): PathParams<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let set = set_name(&set)?;
    check_read(&state, &headers, &set)?;
    let live = state
        .flags
        .get(&set)
        .ok_or(FlagServiceError::SetNotFound { set })?;
    let mut body = summary(&live);
    body["document"] = live.document.clone();
    Ok(with_etag(&live, body, StatusCode::OK))
}

pub async fn put_set(
    State(state): State<AppState>,
    PathParams(set): PathParams<String>,
    QueryParams(query): QueryParams<ChangeQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let set = set_name(&set)?;
    let author = author(&state, &headers, &set, query.comment)?;
    let document = parse_json(&body, "the flag set document")?;
    let revision = state
        .flags
        .apply(
            &set,
            Change::PutSet { document },
            author,
            query.validation.unwrap_or_default(),
            query.expected_version,
        )
        .await?;
    Ok(changed(&state, &set, revision))
}

pub async fn delete_set(
    State(state): State<AppState>,
    PathParams(set): PathParams<String>,
    QueryParams(query): QueryParams<ChangeQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let set = set_name(&set)?;
    let author = author(&state, &headers, &set, query.comment)?;
    state
        .flags
        .apply(
            &set,
            Change::DeleteSet,
            author,
            ValidationMode::Strict,
            query.expected_version,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn get_flag(
    State(state): State<AppState>,
    PathParams((set, key)): PathParams<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let set = set_name(&set)?;
    check_read(&state, &headers, &set)?;
    let live = state
        .flags
        .get(&set)
        .ok_or_else(|| FlagServiceError::SetNotFound { set: set.clone() })?;
    let flag = live
        .document
        .get("flags")
        .and_then(|f| f.get(&key))
        .cloned()
        .ok_or_else(|| FlagServiceError::FlagNotFound {
            set: set.clone(),
            key: key.clone(),
        })?;
    Ok(with_etag(
        &live,
        json!({ "flag_set": set, "key": key, "version": live.version, "definition": flag }),
        StatusCode::OK,
    ))
}

/// Applies a change to one flag of `set`: validated as the query says, else as the set
/// already is (a set loaded from flagd files stays flagd-compatible).
async fn change_flag(
    state: &AppState,
    set: &str,
    headers: &HeaderMap,
    query: ChangeQuery,
    change: Change,
) -> Result<Response, Problem> {
    let set = set_name(set)?;
    let author = author(state, headers, &set, query.comment)?;
    let validation = query
        .validation
        .or_else(|| state.flags.get(&set).map(|s| s.validation))
        .unwrap_or_default();
    let revision = state
        .flags
        .apply(&set, change, author, validation, query.expected_version)
        .await?;
    Ok(changed(state, &set, revision))
}

pub async fn put_flag(
    State(state): State<AppState>,
    PathParams((set, key)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<ChangeQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let flag = parse_json(&body, "the flag definition")?;
    change_flag(&state, &set, &headers, query, Change::PutFlag { key, flag }).await
}

pub async fn delete_flag(
    State(state): State<AppState>,
    PathParams((set, key)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<ChangeQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    change_flag(&state, &set, &headers, query, Change::DeleteFlag { key }).await
}

/// `POST …/flags/{key}/kill`: the kill switch, the flag is `DISABLED` for everyone at once.
pub async fn kill_flag(
    State(state): State<AppState>,
    PathParams((set, key)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<ChangeQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let change = Change::SetState {
        key,
        state: FlagStateChange::Disabled,
    };
    change_flag(&state, &set, &headers, query, change).await
}

/// `POST …/flags/{key}/enable`: undoes the kill switch.
pub async fn enable_flag(
    State(state): State<AppState>,
    PathParams((set, key)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<ChangeQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let change = Change::SetState {
        key,
        state: FlagStateChange::Enabled,
    };
    change_flag(&state, &set, &headers, query, change).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    flag: Option<String>,
    before_version: Option<u64>,
    limit: Option<usize>,
}

async fn history_of(
    state: &AppState,
    headers: &HeaderMap,
    set: &str,
    flag: Option<&str>,
    query: &HistoryQuery,
) -> Result<Response, Problem> {
    let set = set_name(set)?;
    check_read(state, headers, &set)?;
    let revisions = state
        .flags
        .history(
            &set,
            flag,
            query.before_version,
            query.limit.unwrap_or(HISTORY_LIMIT_DEFAULT),
        )
        .await?;
    // Listings carry what changed (the patch); a version's whole document is one request away.
    let list: Vec<Value> = revisions
        .iter()
        .map(|revision| {
            let mut entry = revision_json(revision);
            if let Some(entry) = entry.as_object_mut() {
                entry.remove("document");
            }
            entry
        })
        .collect();
    Ok(axum::Json(json!({ "flag_set": set, "revisions": list })).into_response())
}

/// `GET /v1/flagsets/{set}/history`: every change, newest first (`?flag=` narrows it).
pub async fn history(
    State(state): State<AppState>,
    PathParams(set): PathParams<String>,
    QueryParams(query): QueryParams<HistoryQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let flag = query.flag.clone();
    history_of(&state, &headers, &set, flag.as_deref(), &query).await
}

/// `GET /v1/flagsets/{set}/flags/{key}/history`
pub async fn flag_history(
    State(state): State<AppState>,
    PathParams((set, key)): PathParams<(String, String)>,
    QueryParams(query): QueryParams<HistoryQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    history_of(&state, &headers, &set, Some(&key), &query).await
}

/// `GET /v1/flagsets/{set}/versions/{version}`: one revision with its whole document.
pub async fn version(
    State(state): State<AppState>,
    PathParams((set, version)): PathParams<(String, u64)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let set = set_name(&set)?;
    check_read(&state, &headers, &set)?;
    let revision = state.flags.revision(&set, version).await?;
    Ok(axum::Json(revision_json(&revision)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    version: u64,
    comment: Option<String>,
    expected_version: Option<u64>,
}

fn restore_body(body: &Bytes) -> Result<RestoreBody, Problem> {
    serde_json::from_slice(body).map_err(|e| {
        Problem::bad_request(
            "invalid-body",
            "Invalid request body",
            format!(
                "expected {{\"version\": N, \"comment\"?: \"…\", \"expected_version\"?: N}}: {e}"
            ),
        )
    })
}

/// `POST /v1/flagsets/{set}/rollback`: the whole set back to an earlier version's document.
pub async fn rollback(
    State(state): State<AppState>,
    PathParams(set): PathParams<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let set = set_name(&set)?;
    let request = restore_body(&body)?;
    let author = author(&state, &headers, &set, request.comment)?;
    let revision = state
        .flags
        .rollback(&set, request.version, author, request.expected_version)
        .await?;
    Ok(changed(&state, &set, Some(revision)))
}

/// `POST /v1/flagsets/{set}/flags/{key}/restore`: one flag back to its definition at a version.
pub async fn restore_flag(
    State(state): State<AppState>,
    PathParams((set, key)): PathParams<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let set = set_name(&set)?;
    let request = restore_body(&body)?;
    let author = author(&state, &headers, &set, request.comment)?;
    let revision = state
        .flags
        .restore_flag(
            &set,
            &key,
            request.version,
            author,
            request.expected_version,
        )
        .await?;
    Ok(changed(&state, &set, revision))
}

/// `GET /v1/flagsets/{set}/events`: SSE, one message per new version.
pub async fn events(
    State(state): State<AppState>,
    PathParams(set): PathParams<String>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Problem> {
    let set = set_name(&set)?;
    check_read(&state, &headers, &set)?;
    Ok(crate::ofrep::change_stream(state, set))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    /// When: RFC 3339, or milliseconds since the Unix epoch.
    at: Value,
    /// The change, as `{"kind": "put_flag", "key": …, "flag": {…}}`, `{"kind": "set_state",
    /// "key": …, "state": "DISABLED"}`, `{"kind": "delete_flag", "key": …}`, `{"kind":
    /// "put_set", "document": {…}}` or `{"kind": "delete_set"}`.
    change: Change,
    comment: Option<String>,
    validation: Option<ValidationMode>,
}

fn parse_time_ms(at: &Value) -> Result<i64, Problem> {
    let invalid =
        |detail: String| Problem::bad_request("invalid-schedule", "Invalid schedule", detail);
    match at {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| invalid(format!("\"at\" {n} is not a whole number of milliseconds"))),
        Value::String(text) => crate::events::time_ms_from_text(text)
            .map_err(|e| invalid(format!("\"at\" {text:?} is not an RFC 3339 time: {e}"))),
        other => Err(invalid(format!(
            "\"at\" must be an RFC 3339 time or milliseconds since the epoch, got {other}"
        ))),
    }
}

/// `POST /v1/flagsets/{set}/schedules`: apply a change at a given time.
pub async fn schedule(
    State(state): State<AppState>,
    PathParams(set): PathParams<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let set = set_name(&set)?;
    let request: ScheduleBody = serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request(
            "invalid-schedule",
            "Invalid schedule",
            format!("expected {{\"at\": RFC 3339 or ms, \"change\": {{\"kind\": …}}, \"comment\"?: …}}: {e}"),
        )
    })?;
    let at_ms = parse_time_ms(&request.at)?;
    let author = author(&state, &headers, &set, request.comment)?;
    let validation = request
        .validation
        .or_else(|| state.flags.get(&set).map(|s| s.validation))
        .unwrap_or_default();
    let schedule = state
        .flags
        .schedule(&set, request.change, at_ms, author, validation)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(schedule)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaleQuery {
    unused_for: Option<String>,
    uniform_for: Option<String>,
}

/// A staleness window: a duration such as `30d`, `12h` or `90m`, or `off`; absent, 30 days.
fn stale_window(parameter: &str, value: Option<&str>) -> Result<Option<i64>, Problem> {
    match value {
        None => Ok(Some(proteus_flagsets::stale::STALE_WINDOW_MS_DEFAULT)),
        Some("off") => Ok(None),
        Some(text) => humantime::parse_duration(text)
            .map(|d| Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
            .map_err(|e| {
                Problem::bad_request(
                    "invalid-query",
                    "Invalid query parameter",
                    format!(
                        "{parameter} '{text}' is not a duration ({e}): write it like 30d, 12h or \
                         90m, or 'off' to leave that test out"
                    ),
                )
            }),
    }
}

/// `GET /v1/flagsets/{set}/stale`: flags not evaluated for `unused_for`, or serving one
/// outcome to everyone for `uniform_for` (both 30 days unless given).
pub async fn stale(
    State(state): State<AppState>,
    PathParams(set): PathParams<String>,
    QueryParams(query): QueryParams<StaleQuery>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let set = set_name(&set)?;
    check_read(&state, &headers, &set)?;
    let criteria = proteus_flagsets::stale::StaleCriteria {
        unused_for_ms: stale_window("unused_for", query.unused_for.as_deref())?,
        uniform_for_ms: stale_window("uniform_for", query.uniform_for.as_deref())?,
    };
    let report = state
        .flags
        .stale_flags(&set, criteria, crate::ofrep::now_ms())?;
    Ok(axum::Json(report).into_response())
}

/// `GET /v1/flagsets/{set}/schedules`: pending scheduled changes, soonest first.
pub async fn schedules(
    State(state): State<AppState>,
    PathParams(set): PathParams<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let set = set_name(&set)?;
    check_read(&state, &headers, &set)?;
    let pending = state.flags.schedules(&set);
    Ok(axum::Json(json!({ "flag_set": set, "schedules": pending })).into_response())
}

/// `DELETE /v1/flagsets/{set}/schedules/{id}`: cancels a pending schedule.
pub async fn cancel_schedule(
    State(state): State<AppState>,
    PathParams((set, id)): PathParams<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let set = set_name(&set)?;
    let author = author(&state, &headers, &set, None)?;
    state.flags.cancel_schedule(&set, &id, author).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Most steps one rollout plan may have.
const ROLLOUT_STEPS_MAX: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStep {
    percent: u8,
    /// When this step applies: RFC 3339 or ms since the epoch; absent on the first step: now.
    at: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutBody {
    /// The variant being rolled out; the flag's `defaultVariant` serves everyone else.
    variant: String,
    steps: Vec<RolloutStep>,
    comment: Option<String>,
}

/// `POST /v1/flagsets/{set}/flags/{key}/rollout`: a progressive rollout plan (e.g. 1% → 5% →
/// 25% → 100%), one scheduled step per entry, each applying on its own when due.
pub async fn rollout(
    State(state): State<AppState>,
    PathParams((set, key)): PathParams<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let set = set_name(&set)?;
    let invalid =
        |detail: String| Problem::bad_request("invalid-rollout", "Invalid rollout plan", detail);
    let plan: RolloutBody = serde_json::from_slice(&body).map_err(|e| {
        invalid(format!(
            "expected {{\"variant\": …, \"steps\": [{{\"percent\": 1}}, {{\"percent\": 5, \"at\": …}}, …]}}: {e}"
        ))
    })?;
    if plan.steps.is_empty() || plan.steps.len() > ROLLOUT_STEPS_MAX {
        return Err(invalid(format!(
            "a plan has 1 to {ROLLOUT_STEPS_MAX} steps, got {}",
            plan.steps.len()
        )));
    }
    let now_ms = crate::ofrep::now_ms();
    let mut previous: Option<(i64, u8)> = None;
    let mut steps = Vec::with_capacity(plan.steps.len());
    for (n, step) in plan.steps.iter().enumerate() {
        let at_ms = match &step.at {
            Some(at) => parse_time_ms(at)?,
            None if n == 0 => now_ms,
            None => {
                return Err(invalid(format!(
                    "step {n} has no \"at\"; only the first step may start now"
                )));
            }
        };
        if step.percent > 100 {
            return Err(invalid(format!(
                "step {n}: percent is 0 to 100, got {}",
                step.percent
            )));
        }
        if let Some((at, percent)) = previous
            && (at_ms < at || step.percent < percent)
        {
            return Err(invalid(format!(
                "step {n} ({}% at {at_ms}) goes back in time or percentage; steps must not decrease",
                step.percent
            )));
        }
        previous = Some((at_ms, step.percent));
        steps.push((at_ms, step.percent));
    }
    let author = author(&state, &headers, &set, plan.comment)?;
    let validation = state
        .flags
        .get(&set)
        .map(|s| s.validation)
        .unwrap_or_default();
    let mut scheduled = Vec::with_capacity(steps.len());
    for (at_ms, percent) in steps {
        let change = Change::SetRollout {
            key: key.clone(),
            variant: plan.variant.clone(),
            percent,
        };
        let step_author = Author {
            actor: author.actor.clone(),
            comment: Some(match &author.comment {
                Some(comment) => format!("rollout of '{key}' to {percent}%: {comment}"),
                None => format!("rollout of '{key}' to {percent}%"),
            }),
        };
        scheduled.push(
            state
                .flags
                .schedule(&set, change, at_ms, step_author, validation)
                .await?,
        );
    }
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "flag": key, "steps": scheduled })),
    )
        .into_response())
}

/// `POST /v1/flagsets/{set}/flags/{key}/rollout/pause`: cancels the plan's steps not yet
/// applied; the flag stays at its current percentage. Resuming is posting the remaining steps.
pub async fn pause_rollout(
    State(state): State<AppState>,
    PathParams((set, key)): PathParams<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let set = set_name(&set)?;
    let author = author(&state, &headers, &set, None)?;
    let mut cancelled = Vec::new();
    for schedule in state.flags.schedules(&set) {
        if matches!(&schedule.change, Change::SetRollout { key: k, .. } if k == &key) {
            match state
                .flags
                .cancel_schedule(&set, &schedule.id, author.clone())
                .await
            {
                Ok(()) => cancelled.push(schedule.id),
                // Applied (its time came) since the list was read: no longer pending.
                Err(FlagServiceError::ScheduleNotFound { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(axum::Json(json!({ "flag": key, "cancelled": cancelled })).into_response())
}
