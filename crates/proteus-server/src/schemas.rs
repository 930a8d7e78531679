//! `/v1/schemas`: the schema registry (JSON Schemas per event type and version, compatibility
//! modes with Confluent Schema Registry's meaning, upcasters).
//!
//! - `GET /v1/schemas`: every event type with its mode and latest version.
//! - `GET /v1/schemas/{type}`: its versions (schema and upcaster of each) and mode.
//! - `GET /v1/schemas/{type}/versions/{n|latest}`
//! - `POST /v1/schemas/{type}` `{"schema", "upcaster"?}`: registers the next version if the mode
//!   allows it (201; 200 when it is already the latest); an incompatible schema is 409 with each
//!   incompatibility.
//! - `POST /v1/schemas/{type}/check`: the same, as a dry run.
//! - `PUT /v1/schemas/{type}/mode` `{"mode": "FULL_TRANSITIVE"}`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use proteus_schemas::{CompatibilityMode, EventTypeName, SchemaError, Upcaster};
use proteus_schemas_service::{SchemaService, SchemaServiceError};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::extract::PathParams;
use crate::problem::Problem;

impl From<SchemaError> for Problem {
    fn from(error: SchemaError) -> Problem {
        let status =
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
        let problem = Problem::new(
            status,
            error.code(),
            "Schema registry refusal",
            error.to_string(),
        );
        match &error {
            SchemaError::Incompatible {
                incompatibilities, ..
            } => problem.with(
                "incompatibilities",
                serde_json::to_value(incompatibilities).unwrap_or_default(),
            ),
            SchemaError::Invalid { violations, .. } => problem.with(
                "violations",
                serde_json::to_value(violations).unwrap_or_default(),
            ),
            _ => problem,
        }
    }
}

impl From<SchemaServiceError> for Problem {
    fn from(error: SchemaServiceError) -> Problem {
        match error {
            SchemaServiceError::Schema(error) => error.into(),
            SchemaServiceError::Log(error) => error.into(),
            SchemaServiceError::Conflict { ref event_type, .. } => Problem::new(
                StatusCode::CONFLICT,
                "schema-conflict",
                "Schemas changed concurrently",
                error.to_string(),
            )
            .with("event_type", event_type.as_str()),
            other => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "schema-registry-failure",
                "Schema registry failure",
                other.to_string(),
            ),
        }
    }
}

pub(crate) fn service(state: &AppState) -> Result<&SchemaService, Problem> {
    state.schemas.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "schema-registry-disabled",
            "Schema registry disabled",
            "this server runs without a schema registry",
        )
    })
}

fn type_name(name: &str) -> Result<EventTypeName, Problem> {
    EventTypeName::parse(name).map_err(|e| Problem::from(SchemaError::InvalidName(e)))
}

fn version_json(schema: &proteus_schemas::RegisteredSchema) -> Value {
    json!({
        "event_type": schema.event_type,
        "version": schema.version,
        "schema": schema.schema,
        "upcaster": schema.upcaster,
    })
}

/// `GET /v1/schemas`
pub async fn list(State(state): State<AppState>) -> Result<Response, Problem> {
    let registry = service(&state)?.registry();
    Ok(axum::Json(json!({ "event_types": registry.list() })).into_response())
}

/// `GET /v1/schemas/{type}`
pub async fn get_type(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
) -> Result<Response, Problem> {
    let registry = service(&state)?.registry();
    let event_type = type_name(&name)?;
    let versions: Vec<Value> = registry
        .versions(&event_type)?
        .iter()
        .map(version_json)
        .collect();
    Ok(axum::Json(json!({
        "event_type": event_type,
        "mode": registry.mode(&event_type),
        "versions": versions,
    }))
    .into_response())
}

/// `GET /v1/schemas/{type}/versions/{n|latest}`
pub async fn get_version(
    State(state): State<AppState>,
    PathParams((name, version)): PathParams<(String, String)>,
) -> Result<Response, Problem> {
    let registry = service(&state)?.registry();
    let event_type = type_name(&name)?;
    let schema = if version == "latest" {
        registry.latest(&event_type)?
    } else {
        let version: u32 = version.parse().map_err(|_| {
            Problem::bad_request(
                "invalid-path",
                "Invalid path parameter",
                format!("version '{version}' is not a number or 'latest'"),
            )
        })?;
        registry.get(&event_type, version)?
    };
    Ok(axum::Json(version_json(schema)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    schema: Value,
    upcaster: Option<Upcaster>,
}

fn register_body(body: &Bytes) -> Result<RegisterBody, Problem> {
    serde_json::from_slice(body).map_err(|e| {
        Problem::bad_request(
            "invalid-schema-request",
            "Invalid schema request",
            format!(
                "expected {{\"schema\": {{…JSON Schema…}}, \"upcaster\"?: {{\"from_version\", \"to_version\", \"steps\"}}}}: {e}"
            ),
        )
    })
}

/// `POST /v1/schemas/{type}`: registers the next version.
pub async fn register(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let service = service(&state)?;
    let event_type = type_name(&name)?;
    let request = register_body(&body)?;
    let (version, created) = service
        .register(&event_type, request.schema, request.upcaster)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(json!({ "event_type": event_type, "version": version, "created": created })),
    )
        .into_response())
}

/// `POST /v1/schemas/{type}/check`: would this schema be accepted, and if not, why.
pub async fn check(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let registry = service(&state)?.registry();
    let event_type = type_name(&name)?;
    let request = register_body(&body)?;
    let report = registry.check(&event_type, &request.schema, request.upcaster.as_ref())?;
    Ok(axum::Json(report).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeBody {
    mode: String,
}

/// `PUT /v1/schemas/{type}/mode`
pub async fn set_mode(
    State(state): State<AppState>,
    PathParams(name): PathParams<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let service = service(&state)?;
    let event_type = type_name(&name)?;
    let invalid = |detail: String| {
        Problem::bad_request("invalid-schema-request", "Invalid schema request", detail)
    };
    let request: ModeBody = serde_json::from_slice(&body)
        .map_err(|e| invalid(format!("expected {{\"mode\": \"BACKWARD\"}}: {e}")))?;
    let mode: CompatibilityMode = request.mode.parse().map_err(|_| {
        invalid(format!(
            "mode '{}' is not one of NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE",
            request.mode
        ))
    })?;
    service.set_mode(&event_type, mode).await?;
    Ok(axum::Json(json!({ "event_type": event_type, "mode": mode })).into_response())
}
