//! Compatibility modes and the schema policy of appends.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a new schema version must stay compatible with, with the meaning of Confluent Schema
/// Registry's modes so people who know Kafka read them without a manual.
///
/// *Backward*: the new schema can read data written with the previous one (consumers upgrade
/// first). *Forward*: the previous schema can read data written with the new one (producers
/// upgrade first). *Full*: both. The `*Transitive` modes check against every earlier version
/// instead of only the latest. `None` checks nothing.
///
/// Serialised as Confluent spells it (`BACKWARD_TRANSITIVE`); parsing also accepts lower case
/// (`backward_transitive`) and `-` for `_`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum CompatibilityMode {
    None,
    /// Confluent's default, and ours: consumers written for the new version read every event
    /// written with the previous one.
    #[default]
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

/// Every mode, in a fixed order (tests and documentation iterate over it).
pub const COMPATIBILITY_MODES: [CompatibilityMode; 7] = [
    CompatibilityMode::None,
    CompatibilityMode::Backward,
    CompatibilityMode::BackwardTransitive,
    CompatibilityMode::Forward,
    CompatibilityMode::ForwardTransitive,
    CompatibilityMode::Full,
    CompatibilityMode::FullTransitive,
];

impl CompatibilityMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CompatibilityMode::None => "NONE",
            CompatibilityMode::Backward => "BACKWARD",
            CompatibilityMode::BackwardTransitive => "BACKWARD_TRANSITIVE",
            CompatibilityMode::Forward => "FORWARD",
            CompatibilityMode::ForwardTransitive => "FORWARD_TRANSITIVE",
            CompatibilityMode::Full => "FULL",
            CompatibilityMode::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Whether a new version must read data of earlier versions.
    pub fn checks_backward(self) -> bool {
        matches!(
            self,
            CompatibilityMode::Backward
                | CompatibilityMode::BackwardTransitive
                | CompatibilityMode::Full
                | CompatibilityMode::FullTransitive
        )
    }

    /// Whether earlier versions must read data of a new version.
    pub fn checks_forward(self) -> bool {
        matches!(
            self,
            CompatibilityMode::Forward
                | CompatibilityMode::ForwardTransitive
                | CompatibilityMode::Full
                | CompatibilityMode::FullTransitive
        )
    }

    /// Whether the check covers every earlier version rather than only the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            CompatibilityMode::BackwardTransitive
                | CompatibilityMode::ForwardTransitive
                | CompatibilityMode::FullTransitive
        )
    }
}

/// A compatibility mode that is not one of the seven.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown compatibility mode {0:?}; use one of NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE"
)]
pub struct UnknownCompatibilityMode(pub String);

impl FromStr for CompatibilityMode {
    type Err = UnknownCompatibilityMode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let normal = text.trim().replace('-', "_").to_ascii_uppercase();
        COMPATIBILITY_MODES
            .into_iter()
            .find(|mode| mode.as_str() == normal)
            .ok_or_else(|| UnknownCompatibilityMode(text.chars().take(64).collect()))
    }
}

impl TryFrom<String> for CompatibilityMode {
    type Error = UnknownCompatibilityMode;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<CompatibilityMode> for &'static str {
    fn from(mode: CompatibilityMode) -> &'static str {
        mode.as_str()
    }
}

impl fmt::Display for CompatibilityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an append of an event type without a schema gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaPolicy {
    /// Event types without a schema are appended unchecked: schemas can be adopted one type at
    /// a time.
    #[default]
    Lenient,
    /// Every appended event type must have a registered schema; anything else is refused, so a
    /// typo in a type name cannot create a new, unvalidated stream of events.
    Strict,
}
