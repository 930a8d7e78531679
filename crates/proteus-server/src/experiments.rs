//! `/v1/experiments`: experiments on feature flags (definitions, lifecycle, results).
//!
//! - `GET /v1/experiments`: every experiment (with API keys: those on the key's flag set).
//! - `POST /v1/experiments` (a definition): creates a draft, 201. An invalid definition is a 400
//!   problem listing each error with its JSON pointer (`errors`); the flag set, the flag and
//!   every arm's variant must exist.
//! - `GET /v1/experiments/{id}`; `PUT /v1/experiments/{id}` (a definition) redefines a draft.
//! - `POST /v1/experiments/{id}/start`, `…/stop`, `…/decide` (`{"variant", "rollout"?,
//!   "reason"?}`; `rollout: true` makes the flag serve the variant to everyone). A transition
//!   the state does not allow is 409 naming the `allowed_actions`.
//! - `GET /v1/experiments/{id}/results`: the results (SRM first, decision hint, per arm and
//!   metric n, mean, lift with intervals, p-values, chance to beat control). Never NaN: absent
//!   numbers are `null`.
//!
//! With flag API keys configured, a key may only see and change experiments on its flag set.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use proteus_experiments_service::proteus_experiments::{
    DefinitionErrors, ExperimentDefinition, LifecycleError,
};
use proteus_experiments_service::{ExperimentService, ExperimentServiceError};
use proteus_flagsets::FlagSetName;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::extract::PathParams;
use crate::flagsets::{author, check_read};
use crate::ofrep::authenticate;
use crate::problem::Problem;

fn definition_problem(errors: &DefinitionErrors) -> Problem {
    Problem::bad_request(
        "invalid-experiment-definition",
        "Invalid experiment definition",
        format!("{errors}; fix the fields named and send the definition again"),
    )
    .with(
        "errors",
        serde_json::to_value(&errors.0).unwrap_or_default(),
    )
}

impl From<ExperimentServiceError> for Problem {
    fn from(error: ExperimentServiceError) -> Problem {
        let detail = error.to_string();
        match error {
            ExperimentServiceError::Definition(errors) => definition_problem(&errors),
            ExperimentServiceError::NotFound { id } => Problem::new(
                StatusCode::NOT_FOUND,
                "experiment-not-found",
                "Experiment not found",
                detail,
            )
            .with("experiment", id),
            ExperimentServiceError::AlreadyExists { id, state } => Problem::new(
                StatusCode::CONFLICT,
                "experiment-exists",
                "Experiment already exists",
                detail,
            )
            .with("experiment", id)
            .with("state", state),
            ExperimentServiceError::Lifecycle {
                error,
                allowed_actions,
            } => {
                let (status, kind, title) = match &error {
                    LifecycleError::NotAllowed { .. }
                    | LifecycleError::TimeBeforePrevious { .. } => (
                        StatusCode::CONFLICT,
                        "experiment-transition-not-allowed",
                        "Transition not allowed",
                    ),
                    LifecycleError::UnknownVariant { .. } => (
                        StatusCode::BAD_REQUEST,
                        "unknown-variant",
                        "Unknown variant",
                    ),
                    _ => (
                        StatusCode::BAD_REQUEST,
                        "invalid-experiment-change",
                        "Invalid experiment change",
                    ),
                };
                let detail = if allowed_actions.is_empty() {
                    format!("{detail} (nothing more can be done with it)")
                } else {
                    format!("{detail} (allowed now: {})", allowed_actions.join(", "))
                };
                let problem = Problem::new(status, kind, title, detail)
                    .with("allowed_actions", allowed_actions);
                match error {
                    LifecycleError::UnknownVariant { variant, arms } => {
                        problem.with("variant", variant).with("arms", arms)
                    }
                    _ => problem,
                }
            }
            ExperimentServiceError::Conflict { id } => Problem::new(
                StatusCode::CONFLICT,
                "experiment-conflict",
                "Experiment changed concurrently",
                detail,
            )
            .with("experiment", id),
            ExperimentServiceError::Rollout(_) => Problem::new(
                StatusCode::CONFLICT,
                "rollout-not-possible",
                "Rollout not possible",
                detail,
            ),
            ExperimentServiceError::TooMany { max, .. } => Problem::new(
                StatusCode::CONFLICT,
                "too-many-experiments",
                "Too many experiments",
                detail,
            )
            .with("limit", max),
            ExperimentServiceError::Flag(error) => error.into(),
            ExperimentServiceError::Log(error) => error.into(),
            ExperimentServiceError::Store(error) if error.is_retriable() => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "metadata-unavailable",
                "Metadata store unavailable",
                format!("{detail}; retry the request"),
            ),
            other => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "experiments-failure",
                "Experiments failure",
                other.to_string(),
            ),
        }
    }
}

fn service(state: &AppState) -> Result<&ExperimentService, Problem> {
    state.experiments.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "experiments-disabled",
            "Experiments disabled",
            "this server runs without experiments",
        )
    })
}

fn parse_definition(body: &Bytes) -> Result<ExperimentDefinition, Problem> {
    let text = std::str::from_utf8(body).map_err(|e| {
        Problem::bad_request(
            "invalid-experiment-definition",
            "Invalid experiment definition",
            format!("the body is not UTF-8 text: {e}; send the definition as JSON"),
        )
    })?;
    ExperimentDefinition::from_json(text).map_err(|errors| definition_problem(&errors))
}

fn set_of(name: &str) -> Result<FlagSetName, Problem> {
    FlagSetName::parse(name).map_err(|e| {
        Problem::bad_request(
            "invalid-experiment-definition",
            "Invalid experiment definition",
            format!("/flag_set: {e}"),
        )
    })
}

/// The experiment `id`, after checking the request may see (and change) its flag set.
fn authorised(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
) -> Result<proteus_experiments_service::ExperimentInfo, Problem> {
    let info = service(state)?.get(id)?;
    check_read(state, headers, &set_of(&info.definition.flag_set)?)?;
    Ok(info)
}

/// The actor of a change to the experiment on `flag_set`.
fn actor(state: &AppState, headers: &HeaderMap, flag_set: &str) -> Result<String, Problem> {
    Ok(author(state, headers, &set_of(flag_set)?, None)?.actor)
}

fn json(status: StatusCode, value: Value) -> Response {
    (status, axum::Json(value)).into_response()
}

/// `GET /v1/experiments`
pub async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, Problem> {
    let service = service(&state)?;
    let key = authenticate(&state, &headers).map_err(|details| {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            details,
        )
    })?;
    let experiments: Vec<_> = service
        .list()
        .into_iter()
        .filter(|e| key.is_none_or(|k| k.flag_set.as_str() == e.definition.flag_set))
        .collect();
    Ok(json(StatusCode::OK, json!({ "experiments": experiments })))
}

/// `POST /v1/experiments`
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let service = service(&state)?;
    let definition = parse_definition(&body)?;
    let actor = actor(&state, &headers, &definition.flag_set)?;
    let info = service.create(definition, &actor).await?;
    let mut response = json(StatusCode::CREATED, json!(info));
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/experiments/{}", info.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /v1/experiments/{id}`
pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
) -> Result<Response, Problem> {
    Ok(json(
        StatusCode::OK,
        json!(authorised(&state, &headers, &id)?),
    ))
}

/// `PUT /v1/experiments/{id}`
pub async fn redefine(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let service = service(&state)?;
    authorised(&state, &headers, &id)?;
    let definition = parse_definition(&body)?;
    let actor = actor(&state, &headers, &definition.flag_set)?;
    let info = service.redefine(&id, definition, &actor).await?;
    Ok(json(StatusCode::OK, json!(info)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideBody {
    variant: String,
    #[serde(default, alias = "roll_out")]
    rollout: bool,
    #[serde(default)]
    reason: Option<String>,
}

/// `DELETE /v1/experiments/{id}`: a draft or a decided experiment; 204.
pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
) -> Result<Response, Problem> {
    let service = service(&state)?;
    let info = authorised(&state, &headers, &id)?;
    let actor = actor(&state, &headers, &info.definition.flag_set)?;
    service.delete(&id, &actor).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/experiments/{id}/{start|stop|decide}`
pub async fn action(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams((id, action)): PathParams<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    let service = service(&state)?;
    let info = authorised(&state, &headers, &id)?;
    let actor = actor(&state, &headers, &info.definition.flag_set)?;
    let answer = match action.as_str() {
        "start" => json!(service.start(&id, &actor).await?),
        "stop" => json!(service.stop(&id, &actor).await?),
        "decide" => {
            let body: DecideBody = serde_json::from_slice(&body).map_err(|e| {
                Problem::bad_request(
                    "invalid-decision",
                    "Invalid decision",
                    format!(
                        "the body is not a decision: {e}; send {{\"variant\": \"…\", \"rollout\": true|false, \"reason\": \"…\"}}"
                    ),
                )
            })?;
            json!(
                service
                    .decide(&id, &body.variant, body.rollout, body.reason, &actor)
                    .await?
            )
        }
        other => {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "unknown-action",
                "Unknown action",
                format!(
                    "'{other}' is not an experiment action; use start, stop or decide (allowed now: {})",
                    info.allowed_actions.join(", ")
                ),
            )
            .with("allowed_actions", info.allowed_actions));
        }
    };
    Ok(json(StatusCode::OK, answer))
}

/// `GET /v1/experiments/{id}/results`
/// `GET /v1/experiments/{id}/results/history`: the primary metric's lift of every treatment
/// arm with its interval over time, `{"points": [{"time_ms", "arms": [{"variant", "n",
/// "scale", "lift", "lower", "upper"}]}]}`, oldest first.
pub async fn history(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
) -> Result<Response, Problem> {
    let service = service(&state)?;
    authorised(&state, &headers, &id)?;
    let points = service.history(&id)?;
    Ok(json(StatusCode::OK, json!({"id": id, "points": points})))
}

pub async fn results(
    State(state): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
) -> Result<Response, Problem> {
    let service = service(&state)?;
    authorised(&state, &headers, &id)?;
    let (info, results) = service.results(&id)?;
    let mut body = serde_json::to_value(&results).map_err(|e| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "experiments-failure",
            "Experiments failure",
            format!("the results cannot be encoded: {e}"),
        )
    })?;
    if let Value::Object(object) = &mut body {
        object.insert("state".into(), json!(info.state));
        object.insert("status".into(), json!(info.status));
    }
    Ok(json(StatusCode::OK, body))
}
