//! Errors of definitions and of processing. Each says what was wrong, where, and how to fix it;
//! the HTTP layer maps [`DefinitionErrors`] to a 4xx problem listing every error with its path.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::EventView;

/// One thing wrong with a projection definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefinitionError {
    /// Where in the definition, as a JSON pointer (`""` is the whole definition), such as
    /// `/state/handlers/OrderPlaced/set/total/path`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "(definition): {}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Everything wrong with a definition (at most [`crate::definition::ERRORS_MAX`]), in the order
/// found, so one round trip fixes them all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct DefinitionErrors(pub Vec<DefinitionError>);

impl fmt::Display for DefinitionErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid projection definition: ")?;
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl DefinitionErrors {
    /// Whether some error is at `path`.
    pub fn has_path(&self, path: &str) -> bool {
        self.0.iter().any(|e| e.path == path)
    }
}

/// An event a projection could not process. The projection stops here: its checkpoint stays
/// before this event, and its status shows this error until the definition or the data is
/// fixed and the projection resumed or rebuilt. Events are never skipped silently.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error(
    "event at position {position} (stream '{stream}' version {version}, type '{event_type}') cannot be processed: {reason}"
)]
pub struct ProcessingError {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    pub event_type: String,
    pub reason: String,
}

impl ProcessingError {
    pub fn at(event: &EventView<'_>, reason: impl Into<String>) -> Self {
        ProcessingError {
            position: event.position,
            stream: event.stream.to_owned(),
            version: event.version,
            event_type: event.event_type.to_owned(),
            reason: reason.into(),
        }
    }
}
