//! `/v1/projections`: the CQRS read side.
//!
//! - `PUT /v1/projections/{name}` with a definition creates a projection (201; 200 when the
//!   same definition exists; 409 for a different one) that starts projecting from the first
//!   event; definitions are checked against the registered event schemas.
//! - `GET /v1/projections` and `GET /v1/projections/{name}`: status (state, checkpoint, head,
//!   lag, the error and position of a failed one).
//! - `POST …/pause`, `…/resume`, `…/reset` (rebuild from zero); `DELETE` drops it and its read
//!   model.
//! - `GET …/docs/{key}` reads one document; `GET …/docs?filter=status:eq:placed&sort=-total&
//!   limit=50&cursor=…` lists them with keyset pagination.
//! - `?wait_for_position=N&wait_ms=M` on reads waits until the projection has processed
//!   position `N` (read your own writes).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use proteus_projections::Query;
use proteus_projections_service::{ErrorKind, ProjectionService, ServiceError};
use serde_json::{Value, json};

use crate::AppState;
use crate::extract::{PathParams, QueryParams};
use crate::problem::Problem;

impl From<ServiceError> for Problem {
    fn from(error: ServiceError) -> Problem {
        let detail = error.to_string();
        let (status, kind, title) = match error.kind() {
            ErrorKind::InvalidInput => match &error {
                ServiceError::InvalidDefinition(_) => (
                    StatusCode::BAD_REQUEST,
                    "invalid-projection-definition",
                    "Invalid projection definition",
                ),
                ServiceError::InvalidQuery(_) | ServiceError::QueryTooBroad(_) => (
                    StatusCode::BAD_REQUEST,
                    "invalid-projection-query",
                    "Invalid projection query",
                ),
                _ => (
                    StatusCode::BAD_REQUEST,
                    "invalid-projection-request",
                    "Invalid projection request",
                ),
            },
            ErrorKind::NotFound => (
                StatusCode::NOT_FOUND,
                "projection-not-found",
                "Projection not found",
            ),
            ErrorKind::Conflict => (
                StatusCode::CONFLICT,
                "projection-conflict",
                "Projection conflict",
            ),
            ErrorKind::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "projections-unavailable",
                "Projections unavailable",
            ),
            ErrorKind::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "projection-store-failure",
                "Projection store failure",
            ),
        };
        let problem = Problem::new(status, kind, title, detail);
        match &error {
            ServiceError::InvalidDefinition(errors) => problem.with(
                "errors",
                serde_json::to_value(&errors.0).unwrap_or_default(),
            ),
            _ => problem,
        }
    }
}

fn service(state: &AppState) -> Result<&ProjectionService, Problem> {
    state.projections.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "projections-disabled",
            "Projections disabled",
            "this server runs without projections",
        )
    })
}

/// `GET /v1/projections`
pub async fn list(State(state): State<AppState>) -> Result<Response, Problem> {
    let projections = service(&state)?.list().await;
    Ok(axum::Json(json!({ "projections": projections })).into_response())
}

/// `PUT /v1/projections/{name}`: creates a projection from its definition.
pub async fn create(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let service = service(&state)?;
    let definition: Value = serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request(
            "invalid-projection-definition",
            "Invalid projection definition",
            format!("the body is not JSON: {e}; send a definition such as {{\"source\": {{\"category\": \"order\"}}, \"state\": {{…}}}}"),
        )
    })?;
    let existed = service.status(&name).await.is_ok();
    // Fields a definition reads must exist in the event types' registered schemas.
    // The lookup is used (and dropped) before the returned future is awaited, so the handler's
    // future stays `Send`.
    let creating = {
        let registry = state.schemas.as_ref().map(|s| s.registry());
        let lookup = |event_type: &str| {
            let registry = registry.as_ref()?;
            let name = proteus_schemas::EventTypeName::parse(event_type).ok()?;
            registry.latest(&name).ok().map(|s| s.schema.clone())
        };
        let lookup_ref: &dyn Fn(&str) -> Option<Value> = &lookup;
        service.create(&name, &definition, registry.as_ref().map(|_| lookup_ref))
    };
    let status = creating.await?;
    let code = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((code, axum::Json(status)).into_response())
}

/// `GET /v1/projections/{name}`
pub async fn status(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
) -> Result<Response, Problem> {
    Ok(axum::Json(service(&state)?.status(&name).await?).into_response())
}

/// `DELETE /v1/projections/{name}`
pub async fn delete(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
) -> Result<Response, Problem> {
    service(&state)?.delete(&name).await?;
    Ok(axum::Json(json!({ "name": name, "deleted": true })).into_response())
}

/// `POST /v1/projections/{name}/{pause|resume|reset}`
pub async fn control(
    State(state): State<AppState>,
    PathParams((name, action)): PathParams<(String, String)>,
) -> Result<Response, Problem> {
    let service = service(&state)?;
    let status = match action.as_str() {
        "pause" => service.pause(&name).await?,
        "resume" => service.resume(&name).await?,
        "reset" | "rebuild" => service.reset(&name).await?,
        other => {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                format!("projections have no action '{other}': use pause, resume or reset"),
            ));
        }
    };
    Ok(axum::Json(status).into_response())
}

/// Waits for `wait_for_position` when the request asks to read its own writes; takes that
/// parameter and `wait_ms` out of `pairs` (the rest is the query). Pairs, not a struct: `filter`
/// repeats.
async fn wait_if_asked(
    state: &AppState,
    service: &ProjectionService,
    name: &str,
    pairs: &mut Vec<(String, String)>,
) -> Result<(), Problem> {
    let mut position = None;
    let mut wait_ms = 5_000;
    let mut error = None;
    pairs.retain(|(key, value)| match key.as_str() {
        "wait_for_position" => {
            position = value.parse::<u64>().ok();
            if position.is_none() {
                error = Some(format!("wait_for_position '{value}' is not a position"));
            }
            false
        }
        "wait_ms" => {
            match value.parse::<u64>() {
                Ok(ms) => wait_ms = ms,
                Err(_) => {
                    error = Some(format!("wait_ms '{value}' is not a number of milliseconds"))
                }
            }
            false
        }
        _ => true,
    });
    if let Some(error) = error {
        return Err(Problem::invalid_query(error));
    }
    let wait_ms_max = state.config.wait_ms_max;
    if wait_ms > wait_ms_max {
        return Err(Problem::invalid_query(format!(
            "'wait_ms' must be at most {wait_ms_max}, got {wait_ms}"
        )));
    }
    if let Some(position) = position {
        let reached = service
            .wait_for_position(name, position, Duration::from_millis(wait_ms))
            .await?;
        if !reached {
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "projection-behind",
                "Projection behind",
                format!(
                    "projection '{name}' had not processed position {position} within {wait_ms} ms; read its status for its lag or error, or wait longer"
                ),
            )
            .with("position", position));
        }
    }
    Ok(())
}

/// `GET /v1/projections/{name}/docs/{key}`
pub async fn get_doc(
    State(state): State<AppState>,
    PathParams((name, key)): PathParams<(String, String)>,
    QueryParams(mut pairs): QueryParams<Vec<(String, String)>>,
) -> Result<Response, Problem> {
    let service = service(&state)?;
    wait_if_asked(&state, service, &name, &mut pairs).await?;
    match service.get(&name, &key).await? {
        Some(doc) => Ok(axum::Json(json!({ "key": key, "doc": doc })).into_response()),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "document-not-found",
            "Document not found",
            format!("projection '{name}' has no document '{key}' (yet: check its status for lag)"),
        )),
    }
}

/// `GET /v1/projections/{name}/docs`: `filter=PATH:OP:VALUE` (repeatable), `sort=[-]PATH`,
/// `limit`, `cursor`.
pub async fn query(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    QueryParams(mut pairs): QueryParams<Vec<(String, String)>>,
) -> Result<Response, Problem> {
    let service = service(&state)?;
    wait_if_asked(&state, service, &name, &mut pairs).await?;
    let query = Query::from_params(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| Problem::from(ServiceError::InvalidQuery(e)))?;
    let page = service.query(&name, &query).await?;
    let items: Vec<Value> = page
        .items
        .into_iter()
        .map(|(key, doc)| json!({ "key": key, "doc": doc }))
        .collect();
    Ok(axum::Json(json!({ "items": items, "next_cursor": page.next_cursor })).into_response())
}
