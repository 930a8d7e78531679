//! Event type names.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest event type name, in bytes (the same bound as event types in the event store).
pub const EVENT_TYPE_NAME_BYTES_MAX: usize = 200;

/// The name of an event type with a schema: 1 to [`EVENT_TYPE_NAME_BYTES_MAX`] bytes of ASCII
/// letters, digits, `.`, `_`, `-` and `:`, such as `OrderPlaced` or `com.shop.order.placed`.
/// The alphabet is narrow so a name appears unescaped in URLs, topic names and log lines.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventTypeName(String);

/// Why an event type name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid event type name {text:?}: {reason}")]
pub struct InvalidEventTypeName {
    /// The refused text, cut to its first 256 bytes so an error never echoes a huge input.
    pub text: String,
    pub reason: String,
}

fn shorten(text: &str) -> String {
    const SHOWN_BYTES_MAX: usize = 256;
    if text.len() <= SHOWN_BYTES_MAX {
        return text.to_owned();
    }
    let mut end = SHOWN_BYTES_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl EventTypeName {
    pub fn parse(text: &str) -> Result<Self, InvalidEventTypeName> {
        let invalid = |reason: String| InvalidEventTypeName {
            text: shorten(text),
            reason,
        };
        if text.is_empty() {
            return Err(invalid(
                "it is empty; name the event type, e.g. OrderPlaced".into(),
            ));
        }
        if text.len() > EVENT_TYPE_NAME_BYTES_MAX {
            return Err(invalid(format!(
                "it is {} bytes long, the most is {EVENT_TYPE_NAME_BYTES_MAX}; use a shorter name",
                text.len()
            )));
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
        {
            return Err(invalid(format!(
                "{bad:?} is not allowed; use ASCII letters, digits, '.', '_', '-' and ':'"
            )));
        }
        Ok(EventTypeName(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lets maps keyed by names be looked up by text without parsing it into a name first: a
/// name's ordering, equality and hash are its text's, and text that is not a valid name is
/// simply not found.
impl std::borrow::Borrow<str> for EventTypeName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EventTypeName {
    type Error = InvalidEventTypeName;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        EventTypeName::parse(&text)
    }
}

impl From<EventTypeName> for String {
    fn from(name: EventTypeName) -> String {
        name.0
    }
}

impl fmt::Display for EventTypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
