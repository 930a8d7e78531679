//! Names of groups and members.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest group name, in bytes.
pub const GROUP_NAME_BYTES_MAX: usize = 128;
/// Longest member id, in bytes.
pub const MEMBER_ID_BYTES_MAX: usize = 128;

/// A consumer group's name: 1 to 128 bytes of `[A-Za-z0-9._-]`, starting with a letter or a
/// digit — the same alphabet as topic names, so `{topic}.{group}.dlq` is a valid topic name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupName(String);

/// A member's id inside a group: 1 to 128 bytes of `[A-Za-z0-9._-]`. The server makes one up
/// when a member joins without one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MemberId(String);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {text:?}: {reason}")]
pub struct InvalidName {
    pub what: &'static str,
    pub text: String,
    pub reason: String,
}

fn check(what: &'static str, text: &str, bytes_max: usize) -> Result<(), InvalidName> {
    proteus_log::name::check_name(text, bytes_max).map_err(|reason| InvalidName {
        what,
        text: text.to_owned(),
        reason,
    })
}

impl GroupName {
    pub fn parse(text: &str) -> Result<Self, InvalidName> {
        check("group name", text, GROUP_NAME_BYTES_MAX)?;
        Ok(GroupName(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl MemberId {
    pub fn parse(text: &str) -> Result<Self, InvalidName> {
        check("member id", text, MEMBER_ID_BYTES_MAX)?;
        Ok(MemberId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_conversions {
    ($type:ident) => {
        impl TryFrom<String> for $type {
            type Error = InvalidName;
            fn try_from(text: String) -> Result<Self, InvalidName> {
                $type::parse(&text)
            }
        }
        impl From<$type> for String {
            fn from(name: $type) -> String {
                name.0
            }
        }
        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
string_conversions!(GroupName);
string_conversions!(MemberId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_topic_alphabet() {
        assert!(GroupName::parse("billing-v2.eu_1").is_ok());
        assert!(GroupName::parse("").is_err());
        assert!(GroupName::parse("-x").is_err());
        assert!(GroupName::parse("a/b").is_err());
        assert!(GroupName::parse(&"a".repeat(129)).is_err());
        assert!(MemberId::parse("host-1.pid-42").is_ok());
    }
}
