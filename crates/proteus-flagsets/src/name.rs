//! Flag-set names.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest flag-set name, in bytes.
pub const FLAG_SET_NAME_BYTES_MAX: usize = 64;

/// A flag set's name: 1 to 64 bytes of `[A-Za-z0-9._-]` starting with a letter or a digit, so
/// it can appear in URLs, topic names and file names unescaped.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FlagSetName(String);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid flag set name {text:?}: {reason}")]
pub struct InvalidFlagSetName {
    pub text: String,
    pub reason: String,
}

impl FlagSetName {
    /// The set `proteus serve --flags` loads into, and that OFREP requests without an API key
    /// evaluate.
    pub fn default_set() -> FlagSetName {
        FlagSetName("default".to_owned())
    }

    pub fn parse(text: &str) -> Result<FlagSetName, InvalidFlagSetName> {
        let invalid = |reason: String| InvalidFlagSetName {
            text: text.to_owned(),
            reason,
        };
        proteus_log::name::check_name(text, FLAG_SET_NAME_BYTES_MAX).map_err(invalid)?;
        Ok(FlagSetName(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FlagSetName {
    type Error = InvalidFlagSetName;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        FlagSetName::parse(&text)
    }
}

impl From<FlagSetName> for String {
    fn from(name: FlagSetName) -> String {
        name.0
    }
}

impl fmt::Display for FlagSetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
