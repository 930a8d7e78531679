//! Errors of event-store operations. Each says what was wrong and how to fix it; [`ErrorKind`]
//! tells a transport (the HTTP layer) which status to answer without matching every variant.

use crate::event::ExpectedVersion;
use crate::name::{InvalidName, StreamName};

/// How an error should be reported: the HTTP layer maps these to 400, 404, 409, 410, 503 and
/// 500.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong (400): fix it before sending it again.
    InvalidInput,
    /// The stream does not exist (404).
    NotFound,
    /// The request conflicts with the stream's current state (409): read it and decide again.
    Conflict,
    /// The stream was deleted for good (410).
    Gone,
    /// The store cannot serve now (503): retry later.
    Unavailable,
    /// The storage failed (500).
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum EventStoreError {
    #[error(transparent)]
    InvalidName(#[from] InvalidName),

    #[error("event {index} (id {id:?}) is invalid: {reason}")]
    InvalidEvent {
        /// The event's index in the append, from 0.
        index: usize,
        id: String,
        reason: String,
    },

    #[error("invalid request: {reason}")]
    InvalidRequest { reason: String },

    #[error("{what} is {value}, the most is {max} ({limit}); {hint}")]
    LimitExceeded {
        /// The limit's name, unit last, as in `events_per_append_max`.
        limit: &'static str,
        what: &'static str,
        value: u64,
        max: u64,
        hint: &'static str,
    },

    #[error("stream '{stream}' does not exist; append to it to create it")]
    StreamNotFound { stream: StreamName },

    #[error(
        "stream '{stream}' was deleted; its name cannot be used again (its events stay in the $all feed); write to a new stream name"
    )]
    StreamDeleted { stream: StreamName },

    #[error(
        "wrong expected version for stream '{stream}': expected {}, but {}; read the stream, apply your decision to its current state, and append again with the version you read",
        describe_expected(expected),
        describe_actual(actual)
    )]
    WrongExpectedVersion {
        stream: StreamName,
        expected: ExpectedVersion,
        /// The stream's last version; `None` when it does not exist.
        actual: Option<u64>,
    },

    #[error(
        "idempotency conflict on stream '{stream}': {reason}; a retried append must carry the same event ids in the same order as the original, and new events need new ids"
    )]
    IdempotencyConflict { stream: StreamName, reason: String },

    #[error(
        "snapshot of stream '{stream}' at version {version} is ahead of the stream, {}; snapshot only versions the stream has",
        describe_actual(last_version)
    )]
    SnapshotAheadOfStream {
        stream: StreamName,
        version: u64,
        last_version: Option<u64>,
    },

    #[error(
        "snapshot of stream '{stream}' at version {version} is older than the stored one at version {stored_version}; the newest snapshot is kept, so there is nothing to do"
    )]
    SnapshotOutdated {
        stream: StreamName,
        version: u64,
        stored_version: u64,
    },

    #[error("the event store is unavailable: {reason}; retry later")]
    Unavailable { reason: String },

    #[error("the event store's storage failed: {0}")]
    Storage(String),
}

fn describe_expected(expected: &ExpectedVersion) -> String {
    match expected {
        ExpectedVersion::Any => "any version".into(),
        ExpectedVersion::NoStream => "no stream (\"no_stream\")".into(),
        ExpectedVersion::StreamExists => "an existing stream (\"exists\")".into(),
        ExpectedVersion::Exact(version) => format!("last version {version}"),
    }
}

fn describe_actual(actual: &Option<u64>) -> String {
    match actual {
        None => "the stream does not exist".into(),
        Some(version) => format!("its last version is {version}"),
    }
}

impl EventStoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EventStoreError::InvalidName(_)
            | EventStoreError::InvalidEvent { .. }
            | EventStoreError::InvalidRequest { .. }
            | EventStoreError::LimitExceeded { .. } => ErrorKind::InvalidInput,
            EventStoreError::StreamNotFound { .. } => ErrorKind::NotFound,
            EventStoreError::WrongExpectedVersion { .. }
            | EventStoreError::IdempotencyConflict { .. }
            | EventStoreError::SnapshotAheadOfStream { .. }
            | EventStoreError::SnapshotOutdated { .. } => ErrorKind::Conflict,
            EventStoreError::StreamDeleted { .. } => ErrorKind::Gone,
            EventStoreError::Unavailable { .. } => ErrorKind::Unavailable,
            EventStoreError::Storage(_) => ErrorKind::Internal,
        }
    }

    pub(crate) fn invalid_request(reason: impl Into<String>) -> Self {
        EventStoreError::InvalidRequest {
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_and_how() {
        let stream = StreamName::parse("order-1").unwrap();
        let error = EventStoreError::WrongExpectedVersion {
            stream: stream.clone(),
            expected: ExpectedVersion::Exact(3),
            actual: Some(5),
        };
        let text = error.to_string();
        assert!(text.contains("expected last version 3"), "{text}");
        assert!(text.contains("its last version is 5"), "{text}");
        assert!(text.contains("append again"), "{text}");
        assert_eq!(error.kind(), ErrorKind::Conflict);
        let error = EventStoreError::WrongExpectedVersion {
            stream: stream.clone(),
            expected: ExpectedVersion::StreamExists,
            actual: None,
        };
        assert!(error.to_string().contains("does not exist"), "{error}");
        assert_eq!(
            EventStoreError::StreamDeleted { stream }.kind(),
            ErrorKind::Gone
        );
    }
}
