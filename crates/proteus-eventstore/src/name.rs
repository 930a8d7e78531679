//! Names: streams, categories, event ids and event types.
//!
//! Stream names follow the message-db / EventStoreDB convention: the part before the first `-`
//! is the stream's *category* (`order-123` is in category `order`), so one read of a category
//! gives every event of every aggregate of one type. Names starting with `$` are reserved for
//! system streams such as `$all`, as in EventStoreDB.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest stream name, in bytes of UTF-8.
pub const STREAM_NAME_BYTES_MAX: usize = 200;
/// Longest category name, in bytes of UTF-8 (a category is a prefix of a stream name).
pub const CATEGORY_BYTES_MAX: usize = STREAM_NAME_BYTES_MAX;
/// Longest event id, in bytes of UTF-8 (a UUID takes 36).
pub const EVENT_ID_BYTES_MAX: usize = 128;
/// Longest event type, in bytes of UTF-8.
pub const EVENT_TYPE_BYTES_MAX: usize = 200;

/// Why a name was refused: what it is, the text, and what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {text:?}: {reason}")]
pub struct InvalidName {
    pub what: &'static str,
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

/// The rules every name shares: 1 to `bytes_max` bytes, no control characters and no
/// whitespace (they make names ambiguous in URLs, logs and CLI arguments).
fn check_text(what: &'static str, text: &str, bytes_max: usize) -> Result<(), InvalidName> {
    let invalid = |reason: String| InvalidName {
        what,
        text: shorten(text),
        reason,
    };
    if text.is_empty() {
        return Err(invalid("it is empty; give at least one character".into()));
    }
    if text.len() > bytes_max {
        return Err(invalid(format!(
            "it is {} bytes long, the most is {bytes_max}; use a shorter one",
            text.len()
        )));
    }
    // Printable ASCII (the usual UUIDs and type names) has neither; only other text needs the
    // Unicode tables, which cost 3% of an append over HTTP in a profile (2026-11-26). Every
    // byte is looked at, with no early exit, so the check runs on whole vectors: stopping at
    // the first other byte (`all`) went byte by byte, 2% of the server's time (2026-11-29).
    if text
        .bytes()
        .fold(true, |graphic, b| graphic & b.is_ascii_graphic())
    {
        return Ok(());
    }
    if let Some(bad) = text.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(format!(
            "it contains {bad:?}; control characters and whitespace are not allowed"
        )));
    }
    Ok(())
}

/// A stream's name: 1 to [`STREAM_NAME_BYTES_MAX`] bytes of UTF-8 without control characters
/// or whitespace, not starting with `$` (reserved for system streams like `$all`) nor with `-`
/// (its category would be empty).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamName(String);

/// A category: the part of stream names before their first `-`. 1 to [`CATEGORY_BYTES_MAX`]
/// bytes with the rules of stream names, and no `-` (a category with one could match no
/// stream).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Category(String);

impl StreamName {
    pub fn parse(text: &str) -> Result<Self, InvalidName> {
        check_text("stream name", text, STREAM_NAME_BYTES_MAX)?;
        let invalid = |reason: &str| InvalidName {
            what: "stream name",
            text: shorten(text),
            reason: reason.to_owned(),
        };
        if text.starts_with('$') {
            return Err(invalid(
                "names starting with '$' are reserved for system streams such as $all; drop the '$'",
            ));
        }
        if text.starts_with('-') {
            return Err(invalid(
                "it starts with '-', which would leave its category (the part before the first '-') empty; start with the category, as in order-123",
            ));
        }
        Ok(StreamName(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first `-`: `order-123` → `order`; `order` → `order`.
    pub fn category(&self) -> Category {
        let category = self.0.split_once('-').map_or(self.0.as_str(), |(c, _)| c);
        Category(category.to_owned())
    }
}

impl Category {
    pub fn parse(text: &str) -> Result<Self, InvalidName> {
        check_text("category", text, CATEGORY_BYTES_MAX)?;
        let invalid = |reason: &str| InvalidName {
            what: "category",
            text: shorten(text),
            reason: reason.to_owned(),
        };
        if text.starts_with('$') {
            return Err(invalid(
                "names starting with '$' are reserved for system streams; drop the '$'",
            ));
        }
        if text.contains('-') {
            return Err(invalid(
                "a category is the part of a stream name before its first '-', so it contains no '-'; for stream order-123 the category is order",
            ));
        }
        Ok(Category(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a client-chosen event id (such as a UUID): 1 to [`EVENT_ID_BYTES_MAX`] bytes, no
/// control characters or whitespace. Ids make appends idempotent, so they must be stable
/// across retries of the same write.
pub fn validate_event_id(id: &str) -> Result<(), InvalidName> {
    check_text("event id", id, EVENT_ID_BYTES_MAX)
}

/// Checks an event type such as `OrderPlaced`: 1 to [`EVENT_TYPE_BYTES_MAX`] bytes, no control
/// characters or whitespace.
pub fn validate_event_type(event_type: &str) -> Result<(), InvalidName> {
    check_text("event type", event_type, EVENT_TYPE_BYTES_MAX)
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
        impl std::str::FromStr for $type {
            type Err = InvalidName;
            fn from_str(text: &str) -> Result<Self, InvalidName> {
                $type::parse(text)
            }
        }
    };
}
string_conversions!(StreamName);
string_conversions!(Category);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_accept_the_usual_shapes() {
        for name in [
            "order-123",
            "order",
            "Order-0190b1e2-7c3a-7000-8000-000000000000",
            "bank.account-42",
            "café-1",
            "a",
        ] {
            assert!(StreamName::parse(name).is_ok(), "{name}");
        }
        assert!(StreamName::parse(&"x".repeat(STREAM_NAME_BYTES_MAX)).is_ok());
    }

    #[test]
    fn stream_names_refuse_what_is_ambiguous_or_reserved() {
        let cases = [
            ("", "empty"),
            ("$all", "reserved"),
            ("$ce-order", "reserved"),
            ("-order", "category"),
            ("order 1", "whitespace"),
            ("order\t1", "control"),
            ("order\n1", "control"),
            ("order\u{7f}1", "control"),
            // Beyond ASCII, the Unicode properties decide.
            ("order\u{a0}1", "whitespace"),
            ("café\u{2028}1", "whitespace"),
            ("order\u{85}1", "control"),
        ];
        for (name, reason) in cases {
            let error = StreamName::parse(name).unwrap_err();
            assert!(error.to_string().contains(reason), "{name:?}: {error}");
        }
        let long = "x".repeat(STREAM_NAME_BYTES_MAX + 1);
        let error = StreamName::parse(&long).unwrap_err();
        assert!(error.to_string().contains("201 bytes"), "{error}");
        // Multi-byte characters count in bytes, not characters.
        assert!(StreamName::parse(&"é".repeat(101)).is_err());
        assert!(StreamName::parse(&"é".repeat(100)).is_ok());
    }

    #[test]
    fn errors_do_not_echo_huge_inputs() {
        let error = StreamName::parse(&"é".repeat(10_000)).unwrap_err();
        assert!(error.text.len() <= 260, "{}", error.text.len());
    }

    #[test]
    fn category_is_the_part_before_the_first_dash() {
        let category = |s: &str| StreamName::parse(s).unwrap().category().to_string();
        assert_eq!(category("order-123"), "order");
        assert_eq!(category("order-123-456"), "order");
        assert_eq!(category("order"), "order");
        assert_eq!(category("order-"), "order");
        assert_eq!(category("bank.account-7"), "bank.account");
        // The derived category always parses back.
        for s in ["order-1", "a", "x-y-z", "é-1"] {
            let c = StreamName::parse(s).unwrap().category();
            assert_eq!(Category::parse(c.as_str()).unwrap(), c);
        }
    }

    #[test]
    fn categories_refuse_dashes_and_reserved_names() {
        assert!(Category::parse("order").is_ok());
        assert!(Category::parse("order-1").is_err());
        assert!(Category::parse("$all").is_err());
        assert!(Category::parse("").is_err());
        assert!(Category::parse("a b").is_err());
    }

    #[test]
    fn serde_validates_names() {
        let name: StreamName = serde_json::from_str("\"order-1\"").unwrap();
        assert_eq!(name.as_str(), "order-1");
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"order-1\"");
        assert!(serde_json::from_str::<StreamName>("\"$all\"").is_err());
        assert!(serde_json::from_str::<Category>("\"a-b\"").is_err());
    }

    #[test]
    fn event_ids_and_types() {
        assert!(validate_event_id("0190b1e2-7c3a-7000-8000-000000000000").is_ok());
        assert!(validate_event_id("").is_err());
        assert!(validate_event_id(&"i".repeat(EVENT_ID_BYTES_MAX + 1)).is_err());
        assert!(validate_event_id("a b").is_err());
        assert!(validate_event_type("OrderPlaced").is_ok());
        assert!(validate_event_type("order.placed.v2").is_ok());
        assert!(validate_event_type("").is_err());
        assert!(validate_event_type("Order Placed").is_err());
        assert!(validate_event_type(&"t".repeat(EVENT_TYPE_BYTES_MAX + 1)).is_err());
    }
}
