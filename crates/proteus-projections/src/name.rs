//! Projection names.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest projection name, in bytes.
pub const PROJECTION_NAME_BYTES_MAX: usize = 128;

/// A projection's name: 1 to 128 bytes of `[A-Za-z0-9._-]`, starting with a letter or a digit.
/// The alphabet is the one of topic and group names, so a name is safe in URLs, file names and
/// store table names without escaping.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProjectionName(String);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid projection name {text:?}: {reason}")]
pub struct InvalidProjectionName {
    pub text: String,
    pub reason: String,
}

impl ProjectionName {
    pub fn parse(text: &str) -> Result<Self, InvalidProjectionName> {
        let invalid = |reason: String| InvalidProjectionName {
            text: text.to_owned(),
            reason,
        };
        proteus_log::name::check_name(text, PROJECTION_NAME_BYTES_MAX).map_err(invalid)?;
        Ok(ProjectionName(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ProjectionName {
    type Error = InvalidProjectionName;
    fn try_from(text: String) -> Result<Self, InvalidProjectionName> {
        ProjectionName::parse(&text)
    }
}

impl From<ProjectionName> for String {
    fn from(name: ProjectionName) -> String {
        name.0
    }
}

impl fmt::Display for ProjectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_topic_alphabet() {
        assert!(ProjectionName::parse("orders-by-customer.v2_eu").is_ok());
        assert!(ProjectionName::parse("").is_err());
        assert!(ProjectionName::parse(".x").is_err());
        assert!(ProjectionName::parse("a/b").is_err());
        assert!(ProjectionName::parse(&"a".repeat(129)).is_err());
        assert!(ProjectionName::parse(&"a".repeat(128)).is_ok());
    }
}
