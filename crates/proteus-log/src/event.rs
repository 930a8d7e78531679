//! CloudEvents 1.0 events as they enter the log.
//!
//! An [`Event`] is validated once, when it is appended, and then carried as the bytes of its JSON
//! (structured-mode) form: the log stores and returns those bytes unchanged, so every optional
//! attribute and extension keeps its exact value and type. Events that arrive in HTTP binary mode
//! (`ce-*` headers) are turned into that same JSON form by [`Event::from_binary`].

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use xxhash_rust::xxh3::Xxh3Default;

/// The hash of an event's (`source`, `id`) pair, used to recognise a retried append.
///
/// xxh3-128 of `source`, a 0xFF byte (which never occurs in UTF-8, so pairs cannot collide by
/// concatenation) and `id`. The value is written to disk, so the function never changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DedupKey(pub u128);

impl DedupKey {
    pub fn of(source: &str, id: &str) -> Self {
        // Streaming gives the same digest as hashing the concatenation, without building it.
        let mut hasher = Xxh3Default::new();
        hasher.update(source.as_bytes());
        hasher.update(&[0xFF]);
        hasher.update(id.as_bytes());
        DedupKey(hasher.digest128())
    }
}

/// A valid CloudEvent, ready to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    json: Bytes,
    dedup_key: DedupKey,
    routing_key: Option<String>,
}

/// Why an event was refused. `index` is the event's position in a batch, when it came in one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct EventError {
    pub index: Option<usize>,
    pub attribute: Option<String>,
    pub reason: String,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(index) = self.index {
            write!(f, "event {index}: ")?;
        }
        if let Some(attribute) = &self.attribute {
            write!(f, "attribute '{attribute}' ")?;
        }
        f.write_str(&self.reason)
    }
}

impl EventError {
    fn attribute(name: &str, reason: impl Into<String>) -> Self {
        EventError {
            index: None,
            attribute: Some(name.to_owned()),
            reason: reason.into(),
        }
    }

    fn general(reason: impl Into<String>) -> Self {
        EventError {
            index: None,
            attribute: None,
            reason: reason.into(),
        }
    }

    fn at(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }
}

/// Why a batch was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("a batch holds at most {BATCH_EVENTS_MAX} events, this one has more")]
    TooManyEvents,
    #[error(transparent)]
    Invalid(EventError),
}

/// The attributes every event must carry.
const REQUIRED: [&str; 4] = ["id", "source", "specversion", "type"];
/// Longest extension attribute name. The specification only recommends 20 characters; we bound
/// names so a hostile event cannot carry megabyte-long attribute names.
pub const EXTENSION_NAME_BYTES_MAX: usize = 64;
/// Most events in one batch.
pub const BATCH_EVENTS_MAX: usize = 10_000;

impl Event {
    /// The event in CloudEvents JSON format, exactly as stored.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// The event's CloudEvents JSON, without copying it.
    pub fn into_json(self) -> Bytes {
        self.json
    }

    pub fn dedup_key(&self) -> DedupKey {
        self.dedup_key
    }

    /// The key that chooses the partition: the `partitionkey` extension, else `subject`.
    pub fn routing_key(&self) -> Option<&str> {
        self.routing_key.as_deref()
    }

    /// Parses and validates one event in CloudEvents JSON format
    /// (`application/cloudevents+json`). The bytes are kept as given.
    pub fn from_json(bytes: &[u8]) -> Result<Event, EventError> {
        Event::from_bytes(Bytes::copy_from_slice(bytes))
    }

    /// Like [`Event::from_json`], keeping a slice of `bytes` rather than a copy.
    pub fn from_bytes(bytes: Bytes) -> Result<Event, EventError> {
        // Parsed as text when it is UTF-8 (see `batch_from_bytes`); else as bytes, whose
        // error says where the bad byte is.
        let members: Members = match std::str::from_utf8(&bytes) {
            Ok(text) => serde_json::from_str(text),
            Err(_) => serde_json::from_slice(&bytes),
        }
        .map_err(not_an_event)?;
        let start = skip_whitespace(&bytes, 0);
        let end = bytes.trim_ascii_end().len();
        Event::from_members(members, bytes.slice(start..end))
    }

    /// Parses and validates a CloudEvents JSON batch (`application/cloudevents-batch+json`):
    /// a JSON array of at most [`BATCH_EVENTS_MAX`] events. An error names the index of the
    /// first invalid event.
    pub fn batch_from_json(bytes: &[u8]) -> Result<Vec<Event>, BatchError> {
        Event::batch_from_bytes(Bytes::copy_from_slice(bytes))
    }

    /// Like [`Event::batch_from_json`]; each event keeps a slice of `body`, not a copy. The
    /// body is read once: each element is checked as it is parsed, and its byte span becomes the
    /// stored event.
    pub fn batch_from_bytes(body: Bytes) -> Result<Vec<Event>, BatchError> {
        // A body checked to be UTF-8 once, as a whole, is parsed as text: serde_json then
        // checks none of its keys and values again, one by one (a batch of 100 events parsed
        // 15% to 20% faster, `benches/append_body.rs` of proteus-server). One that is not is
        // parsed as bytes, whose error names the event.
        match std::str::from_utf8(&body) {
            Ok(text) => Event::parse_batch(&body, |at| serde_json::de::StrRead::new(&text[at..])),
            Err(_) => Event::parse_batch(&body, |at| serde_json::de::SliceRead::new(&body[at..])),
        }
    }

    /// [`Event::batch_from_bytes`] with `read_at(at)`, a reader of the body from byte `at`.
    fn parse_batch<'b, R: serde_json::de::Read<'b>>(
        body: &'b Bytes,
        read_at: impl Fn(usize) -> R,
    ) -> Result<Vec<Event>, BatchError> {
        let not_an_array = |reason: String| {
            BatchError::Invalid(EventError::general(format!(
                "the batch is not a JSON array of CloudEvents objects: {reason}"
            )))
        };
        let mut at = skip_whitespace(body, 0);
        if body.get(at) != Some(&b'[') {
            return Err(not_an_array(format!("expected '[' at byte {at}")));
        }
        at = skip_whitespace(body, at + 1);
        let mut events = Vec::new();
        if body.get(at) == Some(&b']') {
            at += 1;
        } else {
            loop {
                let index = events.len();
                if index == BATCH_EVENTS_MAX {
                    return Err(BatchError::TooManyEvents);
                }
                let mut elements =
                    serde_json::Deserializer::new(read_at(at)).into_iter::<Members>();
                let members = match elements.next() {
                    Some(Ok(members)) => members,
                    Some(Err(e)) => return Err(BatchError::Invalid(not_an_event(e).at(index))),
                    None => return Err(not_an_array("it ends before its closing ']'".into())),
                };
                let end = at + elements.byte_offset();
                let event = Event::from_members(members, body.slice(at..end))
                    .map_err(|e| BatchError::Invalid(e.at(index)))?;
                events.push(event);
                at = skip_whitespace(body, end);
                match body.get(at) {
                    Some(b',') => at = skip_whitespace(body, at + 1),
                    Some(b']') => {
                        at += 1;
                        break;
                    }
                    _ => {
                        return Err(not_an_array(format!(
                            "expected ',' or ']' after event {index}, at byte {at}"
                        )));
                    }
                }
            }
        }
        if skip_whitespace(body, at) != body.len() {
            return Err(not_an_array(format!(
                "unexpected data after the array, at byte {at}"
            )));
        }
        Ok(events)
    }

    /// Checks one event from its members; `json` is its text, which becomes the stored event.
    fn from_members(members: Members<'_>, json: Bytes) -> Result<Event, EventError> {
        let mut checked = CheckedAttributes::default();
        for (name, value) in &members.0 {
            checked.check(name, value)?;
        }
        for required in REQUIRED {
            if !checked.present(required) {
                return Err(EventError::attribute(
                    required,
                    "is required and missing (CloudEvents 1.0 needs id, source, specversion and type)",
                ));
            }
        }
        if checked.has_data && checked.has_data_base64 {
            return Err(EventError::attribute(
                "data_base64",
                "cannot be present together with 'data'",
            ));
        }
        let source = checked.source.as_deref().unwrap_or_default();
        let id = checked.id.as_deref().unwrap_or_default();
        Ok(Event {
            dedup_key: DedupKey::of(source, id),
            routing_key: checked.partitionkey.or(checked.subject),
            json,
        })
    }

    /// Builds an event from the HTTP binary mode: `attributes` are the `ce-` headers with the
    /// prefix removed, names lower-cased and values percent-decoded; `content_type` becomes
    /// `datacontenttype`; `body` becomes the data. JSON bodies are embedded as JSON, text as a
    /// string, anything else as `data_base64`, as the JSON format specifies.
    pub fn from_binary(
        attributes: &[(String, String)],
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Event, EventError> {
        let mut object = serde_json::Map::new();
        for (name, value) in attributes {
            if matches!(name.as_str(), "data" | "data_base64" | "datacontenttype") {
                return Err(EventError::attribute(
                    name,
                    format!(
                        "cannot be sent as a 'ce-{name}' header: in binary mode the body is the data and Content-Type is its datacontenttype"
                    ),
                ));
            }
            if object
                .insert(name.clone(), serde_json::Value::String(value.clone()))
                .is_some()
            {
                return Err(EventError::attribute(
                    name,
                    format!("is given twice (header 'ce-{name}')"),
                ));
            }
        }
        if let Some(content_type) = content_type {
            object.insert(
                "datacontenttype".into(),
                serde_json::Value::String(content_type.to_owned()),
            );
        }
        if !body.is_empty() {
            match DataKind::of(content_type) {
                DataKind::Json => {
                    let data: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
                        EventError::attribute(
                            "data",
                            format!("Content-Type says JSON but the body is not valid JSON: {e}"),
                        )
                    })?;
                    object.insert("data".into(), data);
                }
                DataKind::Text if std::str::from_utf8(body).is_ok() => {
                    let text = String::from_utf8_lossy(body).into_owned();
                    object.insert("data".into(), serde_json::Value::String(text));
                }
                DataKind::Text | DataKind::Binary => {
                    let encoded = base64::engine::general_purpose::STANDARD.encode(body);
                    object.insert("data_base64".into(), serde_json::Value::String(encoded));
                }
            }
        }
        let json = serde_json::to_vec(&object).expect("a JSON map always serialises");
        Event::from_json(&json)
    }
}

enum DataKind {
    Json,
    Text,
    Binary,
}

impl DataKind {
    fn of(content_type: Option<&str>) -> DataKind {
        let Some(content_type) = content_type else {
            return DataKind::Binary;
        };
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if essence == "application/json" || essence == "text/json" || essence.ends_with("+json") {
            DataKind::Json
        } else if essence.starts_with("text/")
            || essence == "application/xml"
            || essence.ends_with("+xml")
        {
            DataKind::Text
        } else {
            DataKind::Binary
        }
    }
}

/// A JSON object read as its members, each value kept as raw JSON. Duplicate member names are
/// refused: JSON parsers disagree on them, so an event carrying them is ambiguous.
struct Members<'de>(Vec<(Cow<'de, str>, &'de RawValue)>);

impl<'de> de::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(8);
                while let Some(KeyName(name)) = map.next_key()? {
                    if members
                        .iter()
                        .any(|(seen, _): &(Cow<'_, str>, _)| *seen == name)
                    {
                        return Err(de::Error::custom(format!(
                            "attribute '{name}' appears twice"
                        )));
                    }
                    let value: &'de RawValue = map.next_value()?;
                    members.push((name, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

struct KeyName<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for KeyName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeyName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an attribute name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyName(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyName(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

fn not_an_event(error: serde_json::Error) -> EventError {
    match error.classify() {
        serde_json::error::Category::Data => {
            EventError::general(format!("is not a valid CloudEvent: {error}"))
        }
        _ => EventError::general(format!("is not a JSON object: {error}")),
    }
}

fn skip_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(|b| b.is_ascii_whitespace()) {
        at += 1;
    }
    at
}

/// The attributes seen so far while checking an event, and the values the log needs.
#[derive(Default)]
struct CheckedAttributes {
    id: Option<String>,
    source: Option<String>,
    has_specversion: bool,
    has_type: bool,
    subject: Option<String>,
    partitionkey: Option<String>,
    has_data: bool,
    has_data_base64: bool,
}

impl CheckedAttributes {
    fn present(&self, name: &str) -> bool {
        match name {
            "id" => self.id.is_some(),
            "source" => self.source.is_some(),
            "specversion" => self.has_specversion,
            "type" => self.has_type,
            _ => false,
        }
    }

    fn check(&mut self, name: &str, value: &RawValue) -> Result<(), EventError> {
        let json = value.get();
        // The JSON format treats an attribute whose value is null as absent.
        if json == "null" {
            return Ok(());
        }
        match name {
            "data" => self.has_data = true,
            "data_base64" => {
                let text = string_value(name, value)?;
                base64::engine::general_purpose::STANDARD
                    .decode(text.as_bytes())
                    .map_err(|e| {
                        EventError::attribute(name, format!("is not valid base64: {e}"))
                    })?;
                self.has_data_base64 = true;
            }
            "specversion" => {
                let version = string_value(name, value)?;
                if version != "1.0" {
                    return Err(EventError::attribute(
                        name,
                        format!("must be \"1.0\", got {version:?}"),
                    ));
                }
                self.has_specversion = true;
            }
            "id" => self.id = Some(non_empty(name, value)?.into_owned()),
            "source" => {
                let source = non_empty(name, value)?;
                if source.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(EventError::attribute(
                        name,
                        "must be a URI-reference, which cannot contain spaces or control characters",
                    ));
                }
                self.source = Some(source.into_owned());
            }
            "type" => {
                non_empty(name, value)?;
                self.has_type = true;
            }
            "subject" => self.subject = Some(non_empty(name, value)?.into_owned()),
            "datacontenttype" | "dataschema" => {
                non_empty(name, value)?;
            }
            "time" => {
                let text = string_value(name, value)?;
                time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| {
                        EventError::attribute(
                            name,
                            format!("must be an RFC 3339 timestamp such as 2026-01-31T12:00:00Z, got {text:?} ({e})"),
                        )
                    })?;
            }
            extension => {
                check_extension_name(extension)?;
                check_extension_value(extension, value)?;
                if extension == "partitionkey" {
                    self.partitionkey = Some(string_value(name, value)?.into_owned());
                }
            }
        }
        Ok(())
    }
}

fn check_extension_name(name: &str) -> Result<(), EventError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(EventError::attribute(
            name,
            "is not a valid attribute name: CloudEvents attribute names use only lower-case letters a-z and digits 0-9",
        ));
    }
    if name.len() > EXTENSION_NAME_BYTES_MAX {
        return Err(EventError::attribute(
            name,
            format!("has a name longer than {EXTENSION_NAME_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

/// Extension values use the CloudEvents type system, which maps to JSON strings, booleans and
/// integers (32-bit signed); objects, arrays and fractions have no CloudEvents type.
fn check_extension_value(name: &str, value: &RawValue) -> Result<(), EventError> {
    let json = value.get();
    match json.as_bytes().first() {
        Some(b'"') => string_value(name, value).map(drop),
        Some(b't' | b'f') => Ok(()),
        Some(b'-' | b'0'..=b'9') => match json.parse::<i32>() {
            Ok(_) => Ok(()),
            Err(_) => Err(EventError::attribute(
                name,
                format!(
                    "has the number {json}, but a CloudEvents Integer is a whole number from -2147483648 to 2147483647; send other values as strings"
                ),
            )),
        },
        _ => Err(EventError::attribute(
            name,
            "must be a string, a boolean or an integer: CloudEvents extensions cannot hold objects or arrays",
        )),
    }
}

fn string_value<'a>(name: &str, value: &'a RawValue) -> Result<Cow<'a, str>, EventError> {
    let json = value.get();
    // Fast path: a string without escapes is its own contents.
    if json.len() >= 2 && json.starts_with('"') && json.ends_with('"') && !json.contains('\\') {
        return Ok(Cow::Borrowed(&json[1..json.len() - 1]));
    }
    serde_json::from_str::<String>(json)
        .map(Cow::Owned)
        .map_err(|_| EventError::attribute(name, format!("must be a string, got {json}")))
}

fn non_empty<'a>(name: &str, value: &'a RawValue) -> Result<Cow<'a, str>, EventError> {
    let text = string_value(name, value)?;
    if text.is_empty() {
        return Err(EventError::attribute(name, "must not be empty"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#;

    fn error_of(json: &str) -> EventError {
        Event::from_json(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn the_dedup_key_is_xxh3_128_of_source_separator_id() {
        // Stored on disk: this value must never change.
        let expected = xxhash_rust::xxh3::xxh3_128(b"/s\xFFab");
        assert_eq!(DedupKey::of("/s", "ab"), DedupKey(expected));
        assert_ne!(DedupKey::of("/sa", "b"), DedupKey::of("/s", "ab"));
    }

    #[test]
    fn a_valid_event_is_kept_byte_for_byte() {
        let json = r#"{ "specversion" : "1.0", "id":"a\u0062", "source":"/s", "type":"t",
            "comexampleext": 12, "flag": true, "time": "2026-11-23T10:00:00.123+01:00",
            "data": {"nested": [1, 2.5, null]} }"#;
        let event = Event::from_json(json.as_bytes()).unwrap();
        assert_eq!(event.json(), json.as_bytes());
        assert_eq!(event.dedup_key(), DedupKey::of("/s", "ab"));
    }

    #[test]
    fn each_required_attribute_is_named_when_missing() {
        for missing in REQUIRED {
            let mut object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(MINIMAL).unwrap();
            object.remove(missing);
            let error = error_of(&serde_json::to_string(&object).unwrap());
            assert_eq!(error.attribute.as_deref(), Some(missing));
            assert!(error.reason.contains("required"), "{error}");
        }
    }

    #[test]
    fn attribute_errors_are_precise() {
        let cases = [
            (
                r#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#,
                "specversion",
                "\"0.3\"",
            ),
            (
                r#"{"specversion":"1.0","id":"","source":"/s","type":"t"}"#,
                "id",
                "empty",
            ),
            (
                r#"{"specversion":"1.0","id":1,"source":"/s","type":"t"}"#,
                "id",
                "string",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"a b","type":"t"}"#,
                "source",
                "URI",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"yesterday"}"#,
                "time",
                "RFC 3339",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","Bad":"x"}"#,
                "Bad",
                "lower-case",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":{"a":1}}"#,
                "ext",
                "objects",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":1.5}"#,
                "ext",
                "whole number",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}"#,
                "data_base64",
                "together",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"%%"}"#,
                "data_base64",
                "base64",
            ),
        ];
        for (json, attribute, words) in cases {
            let error = error_of(json);
            assert_eq!(
                error.attribute.as_deref(),
                Some(attribute),
                "{json}: {error}"
            );
            assert!(error.to_string().contains(words), "{json}: {error}");
        }
        assert!(
            error_of(r#"{"id":"1","id":"2"}"#)
                .to_string()
                .contains("twice")
        );
        assert!(error_of("[1]").to_string().contains("object"));
        assert!(error_of("{").to_string().contains("JSON"));
    }

    #[test]
    fn null_optional_attributes_count_as_absent() {
        let event = Event::from_json(
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":null,"data":null,"data_base64":"AA=="}"#,
        )
        .unwrap();
        assert_eq!(event.routing_key(), None);
    }

    #[test]
    fn partitionkey_wins_over_subject() {
        let event = Event::from_json(
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":"sub","partitionkey":"pk"}"#,
        )
        .unwrap();
        assert_eq!(event.routing_key(), Some("pk"));
        let event = Event::from_json(
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","subject":"sub"}"#,
        )
        .unwrap();
        assert_eq!(event.routing_key(), Some("sub"));
    }

    #[test]
    fn batch_errors_name_the_index() {
        let batch = format!("[{MINIMAL},{{\"specversion\":\"1.0\"}}]");
        let BatchError::Invalid(error) = Event::batch_from_json(batch.as_bytes()).unwrap_err()
        else {
            panic!("expected an invalid event")
        };
        assert_eq!(error.index, Some(1));
        assert!(
            error.to_string().starts_with("event 1: attribute 'id'"),
            "{error}"
        );
        assert_eq!(
            Event::batch_from_json(format!("[{MINIMAL},{MINIMAL}]").as_bytes())
                .unwrap()
                .len(),
            2
        );
        assert!(Event::batch_from_json(MINIMAL.as_bytes()).is_err());
        let too_many = format!("[{}]", vec![MINIMAL; BATCH_EVENTS_MAX + 1].join(","));
        assert_eq!(
            Event::batch_from_json(too_many.as_bytes()).unwrap_err(),
            BatchError::TooManyEvents
        );
        let spaced = format!(" [ {MINIMAL} ,\n {MINIMAL} ] ");
        let events = Event::batch_from_json(spaced.as_bytes()).unwrap();
        assert_eq!(
            events[1].json(),
            MINIMAL.as_bytes(),
            "each event is exactly its element"
        );
        assert!(Event::batch_from_json(b"[]").unwrap().is_empty());
        for bad in [
            "[",
            "[{}",
            "[1,]",
            "{}",
            "[] x",
            &format!("[{MINIMAL}{MINIMAL}]"),
        ] {
            assert!(Event::batch_from_json(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    /// Bodies are parsed as text when they are UTF-8 and as bytes when not: both ways keep
    /// each event's bytes and name the event a bad byte is in.
    #[test]
    fn batches_in_utf8_and_not_are_told_apart_by_event() {
        let accented = r#"{"specversion":"1.0","id":"é-1","source":"/café","type":"t","data":"ü"}"#;
        let events = Event::batch_from_json(format!("[{MINIMAL},{accented}]").as_bytes()).unwrap();
        assert_eq!(events[1].json(), accented.as_bytes());
        let mut not_utf8 = format!("[{MINIMAL},{MINIMAL}]").into_bytes();
        let id_at = not_utf8.len() - MINIMAL.len() + MINIMAL.find("\"id\":\"").unwrap() + 6;
        not_utf8[id_at] = 0xff;
        let BatchError::Invalid(error) = Event::batch_from_json(&not_utf8).unwrap_err() else {
            panic!("expected an invalid event")
        };
        assert_eq!(error.index, Some(1), "{error}");
        assert!(Event::from_json(&not_utf8[1 + MINIMAL.len() + 1..not_utf8.len() - 1]).is_err());
        assert!(Event::from_json(accented.as_bytes()).is_ok());
    }

    #[test]
    fn binary_mode_maps_the_body_by_content_type() {
        let attributes = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
            [
                ("specversion", "1.0"),
                ("id", "1"),
                ("source", "/s"),
                ("type", "t"),
            ]
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
        };
        let as_value =
            |event: &Event| -> serde_json::Value { serde_json::from_slice(event.json()).unwrap() };
        let json =
            Event::from_binary(&attributes(&[]), Some("application/json"), br#"{"a":1}"#).unwrap();
        assert_eq!(as_value(&json)["data"]["a"], 1);
        assert_eq!(as_value(&json)["datacontenttype"], "application/json");
        let text = Event::from_binary(
            &attributes(&[("traceparent", "00-ab")]),
            Some("text/plain; charset=utf-8"),
            b"hello",
        )
        .unwrap();
        assert_eq!(as_value(&text)["data"], "hello");
        assert_eq!(as_value(&text)["traceparent"], "00-ab");
        let binary = Event::from_binary(
            &attributes(&[]),
            Some("application/octet-stream"),
            &[0, 159, 255],
        )
        .unwrap();
        assert_eq!(as_value(&binary)["data_base64"], "AJ//");
        let bad = Event::from_binary(&attributes(&[]), Some("application/json"), b"{").unwrap_err();
        assert_eq!(bad.attribute.as_deref(), Some("data"));
        let missing = Event::from_binary(&attributes(&[])[1..], None, b"").unwrap_err();
        assert_eq!(missing.attribute.as_deref(), Some("specversion"));
    }
}
