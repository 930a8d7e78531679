//! Request parsing shared by handlers, with errors as problems.

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use proteus_log::TopicName;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// Query parameters; an invalid one is a 400 problem naming it.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| QueryParams(value))
            .map_err(|rejection| Problem::invalid_query(rejection.body_text()))
    }
}

/// Path parameters; an invalid one is a 400 problem.
pub struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| PathParams(value))
            .map_err(|rejection| {
                Problem::bad_request(
                    "invalid-path",
                    "Invalid path parameter",
                    rejection.body_text(),
                )
            })
    }
}

pub fn topic_name(name: &str) -> Result<TopicName, Problem> {
    TopicName::parse(name).map_err(|e| {
        Problem::bad_request("invalid-topic-name", "Invalid topic name", e.to_string())
    })
}

/// Reads the whole body, refusing more than `limit_bytes` with 413.
pub async fn read_body(body: Body, limit_bytes: usize) -> Result<axum::body::Bytes, Problem> {
    match Limited::new(body, limit_bytes).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Problem::body_too_large(limit_bytes))
        }
        Err(e) => Err(Problem::bad_request(
            "invalid-body",
            "Could not read the request body",
            format!("reading the request body failed: {e}"),
        )),
    }
}

/// Rejects a body whose declared length is already over the limit, before reading it.
pub fn check_content_length(
    headers: &axum::http::HeaderMap,
    limit_bytes: usize,
) -> Result<(), Problem> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit_bytes as u64 => Err(Problem::body_too_large(limit_bytes)),
        _ => Ok(()),
    }
}
