//! Errors of the registry: each says what was wrong and how to fix it, and maps to an HTTP
//! status for the runtime's problem documents.

use crate::compat::Incompatibility;
use crate::mode::CompatibilityMode;
use crate::name::InvalidEventTypeName;
use crate::validate::Violation;

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    const SHOWN_MAX: usize = 5;
    let mut text: Vec<String> = items
        .iter()
        .take(SHOWN_MAX)
        .map(|i| i.to_string())
        .collect();
    if items.len() > SHOWN_MAX {
        text.push(format!("and {} more", items.len() - SHOWN_MAX));
    }
    text.join("; ")
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SchemaError {
    #[error(transparent)]
    InvalidName(#[from] InvalidEventTypeName),

    #[error(
        "the schema of '{event_type}' is {bytes} bytes, the most is {max_bytes}; split it or drop descriptions and examples"
    )]
    SchemaTooLarge {
        event_type: String,
        bytes: usize,
        max_bytes: usize,
    },

    #[error("the schema of '{event_type}' was refused: {reason}")]
    InvalidSchema { event_type: String, reason: String },

    #[error("event type '{event_type}' has no schema; register one first (versions start at 1)")]
    UnknownEventType { event_type: String },

    #[error(
        "event type '{event_type}' has no schema and the schema policy is strict; register a schema for it, or fix the type name"
    )]
    UnregisteredEventType { event_type: String },

    #[error("event type '{event_type}' has no version {version}; its versions are 1 to {latest}")]
    UnknownVersion {
        event_type: String,
        version: u32,
        latest: u32,
    },

    #[error(
        "the new schema of '{event_type}' breaks its compatibility mode {mode}: {}",
        list(incompatibilities)
    )]
    Incompatible {
        event_type: String,
        mode: CompatibilityMode,
        incompatibilities: Vec<Incompatibility>,
    },

    #[error(
        "the new version {to} of '{event_type}' cannot read version {from} as it is, so its upcaster from version {from} to {to} is missing and the chain would have a gap: {}; send an upcaster {{\"from_version\":{from},\"to_version\":{to},\"steps\":[...]}} (empty steps accept reading version {from} as it is)",
        list(incompatibilities)
    )]
    UpcasterMissing {
        event_type: String,
        from: u32,
        to: u32,
        incompatibilities: Vec<Incompatibility>,
    },

    #[error(
        "the upcaster goes from version {got_from} to {got_to} but the new schema of '{event_type}' will be version {to}, after {from}; declare \"from_version\": {from}, \"to_version\": {to}"
    )]
    UpcasterVersions {
        event_type: String,
        got_from: u32,
        got_to: u32,
        from: u32,
        to: u32,
    },

    #[error("the upcaster of '{event_type}' was refused: {reason}")]
    InvalidUpcaster { event_type: String, reason: String },

    #[error(
        "the schema is already version {version} of '{event_type}' with a different upcaster; upcasters cannot be replaced, register a new version instead"
    )]
    UpcasterConflict { event_type: String, version: u32 },

    #[error(
        "the upcaster to version {to} of '{event_type}' turns example {example} of version {from} into data the new schema rejects: {}; fix the steps or the example",
        list(violations)
    )]
    UpcasterExampleRejected {
        event_type: String,
        from: u32,
        to: u32,
        example: usize,
        violations: Vec<Violation>,
    },

    #[error(
        "event type '{event_type}' already has {max} versions, the most; create a new event type for a new shape"
    )]
    TooManyVersions { event_type: String, max: usize },

    #[error(
        "the registry already has {max} event types, the most; remove unused types or raise event_types_max"
    )]
    TooManyEventTypes { max: usize },

    #[error("the data does not match version {version} of '{event_type}': {}{}", list(violations), if *truncated { " (more violations were cut)" } else { "" })]
    Invalid {
        event_type: String,
        version: u32,
        violations: Vec<Violation>,
        truncated: bool,
    },

    #[error(
        "upcasting '{event_type}' from version {from} to {to} failed at step {step} ({op}): {reason}; the event is kept as written, fix the upcaster in a new version or read it at version {from}"
    )]
    UpcastFailed {
        event_type: String,
        from: u32,
        to: u32,
        step: usize,
        op: &'static str,
        reason: String,
    },

    #[error(
        "'{event_type}' has no upcaster from version {from} to {to}, so version {from} cannot be read as version {to}"
    )]
    UpcastGap {
        event_type: String,
        from: u32,
        to: u32,
    },

    #[error(
        "cannot upcast '{event_type}' from version {from} to the older version {to}; upcasting only goes forward"
    )]
    UpcastBackwards {
        event_type: String,
        from: u32,
        to: u32,
    },

    #[error(
        "the change registers version {got} of '{event_type}' but the next version is {expected}; changes must be applied in the order they were made"
    )]
    ChangeOutOfOrder {
        event_type: String,
        got: u32,
        expected: u32,
    },

    #[error("invalid registry limits: {0}")]
    InvalidLimits(String),
}

impl SchemaError {
    /// The HTTP status of this error: 400 for malformed input, 404 for unknown types and
    /// versions, 409 for a schema that breaks the mode (as Confluent), 413 for size, 422 for
    /// well-formed input the rules refuse.
    pub fn status(&self) -> u16 {
        use SchemaError::*;
        match self {
            InvalidName(_) | InvalidSchema { .. } | InvalidUpcaster { .. } | InvalidLimits(_) => {
                400
            }
            UnknownEventType { .. } | UnknownVersion { .. } => 404,
            Incompatible { .. } | UpcasterConflict { .. } | ChangeOutOfOrder { .. } => 409,
            SchemaTooLarge { .. } => 413,
            UnregisteredEventType { .. }
            | UpcasterMissing { .. }
            | UpcasterVersions { .. }
            | UpcasterExampleRejected { .. }
            | TooManyVersions { .. }
            | TooManyEventTypes { .. }
            | Invalid { .. }
            | UpcastFailed { .. }
            | UpcastGap { .. }
            | UpcastBackwards { .. } => 422,
        }
    }

    /// A stable, machine-readable name of the error, kebab-case like every problem type of the
    /// HTTP API (`/problems/{code}`).
    pub fn code(&self) -> &'static str {
        use SchemaError::*;
        match self {
            InvalidName(_) => "invalid-event-type-name",
            SchemaTooLarge { .. } => "schema-too-large",
            InvalidSchema { .. } => "invalid-schema",
            UnknownEventType { .. } => "unknown-event-type",
            UnregisteredEventType { .. } => "unregistered-event-type",
            UnknownVersion { .. } => "unknown-version",
            Incompatible { .. } => "incompatible-schema",
            UpcasterMissing { .. } => "upcaster-missing",
            UpcasterVersions { .. } => "upcaster-versions",
            InvalidUpcaster { .. } => "invalid-upcaster",
            UpcasterConflict { .. } => "upcaster-conflict",
            UpcasterExampleRejected { .. } => "upcaster-example-rejected",
            TooManyVersions { .. } => "too-many-versions",
            TooManyEventTypes { .. } => "too-many-event-types",
            Invalid { .. } => "schema-violation",
            UpcastFailed { .. } => "upcast-failed",
            UpcastGap { .. } => "upcast-gap",
            UpcastBackwards { .. } => "upcast-backwards",
            ChangeOutOfOrder { .. } => "change-out-of-order",
            InvalidLimits(_) => "invalid-limits",
        }
    }
}
