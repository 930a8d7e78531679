//! Events as proposed by writers and as recorded by the store, and the shapes of reads.
//!
//! Versions are 0-based event numbers within one stream (the first event is version 0), as in
//! EventStoreDB. Positions are global: every recorded event has a position in the `$all` feed,
//! strictly increasing in commit order, starting at 1 (so 0 means "before everything"). An
//! adapter may leave gaps between positions; readers must not assume they are contiguous.
//!
//! Event data and metadata are raw JSON bytes, validated on append and serialised embedded
//! (not as strings), so an HTTP answer carries them as written.

use std::fmt;

use bytes::Bytes;
pub use bytestring::ByteString;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::name::StreamName;

/// The version a writer expects a stream to be at, checked atomically with the append: the
/// optimistic-concurrency guard of event sourcing. As JSON: `"any"`, `"no_stream"`,
/// `"exists"`, or the expected last version as a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ExpectedVersion {
    /// No check.
    #[default]
    Any,
    /// The stream must not exist yet (it has no event and was never deleted).
    NoStream,
    /// The stream must exist (it has at least one event).
    StreamExists,
    /// The stream's last version must be exactly this one.
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose last version is `actual` (`None`: no stream) meets this
    /// expectation.
    pub fn matches(self, actual: Option<u64>) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual.is_none(),
            ExpectedVersion::StreamExists => actual.is_some(),
            ExpectedVersion::Exact(version) => actual == Some(version),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no_stream"),
            ExpectedVersion::StreamExists => f.write_str("exists"),
            ExpectedVersion::Exact(version) => write!(f, "{version}"),
        }
    }
}

impl std::str::FromStr for ExpectedVersion {
    type Err = String;

    /// Parses the forms of the JSON encoding, also used in query strings and headers.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "any" => Ok(ExpectedVersion::Any),
            "no_stream" => Ok(ExpectedVersion::NoStream),
            "exists" => Ok(ExpectedVersion::StreamExists),
            _ => text.parse::<u64>().map(ExpectedVersion::Exact).map_err(|_| {
                format!(
                    "invalid expected version {text:?}: use \"any\", \"no_stream\", \"exists\", or the stream's last version as a number (the first event is version 0)"
                )
            }),
        }
    }
}

impl Serialize for ExpectedVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ExpectedVersion::Exact(version) => serializer.serialize_u64(*version),
            other => serializer.serialize_str(&other.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectedVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ExpectedVisitor;
        impl Visitor<'_> for ExpectedVisitor {
            type Value = ExpectedVersion;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"any\", \"no_stream\", \"exists\", or a version number (0 or more)")
            }
            fn visit_u64<E: de::Error>(self, version: u64) -> Result<ExpectedVersion, E> {
                Ok(ExpectedVersion::Exact(version))
            }
            fn visit_i64<E: de::Error>(self, version: i64) -> Result<ExpectedVersion, E> {
                u64::try_from(version)
                    .map(ExpectedVersion::Exact)
                    .map_err(|_| E::custom(format!("expected version {version} is negative; versions start at 0, use \"no_stream\" for a new stream")))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<ExpectedVersion, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(ExpectedVisitor)
    }
}

/// Which way a read goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Forward,
    Backward,
}

/// An event a writer wants appended. Validated by [`crate::limits::validate_append`]; the
/// store assigns its version and position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposedEvent {
    /// Chosen by the client (a UUID, say) and kept across retries: appending the same ids again
    /// is recognised as a retry and not written twice. A [`ByteString`], like `data` a `Bytes`,
    /// so a server can cut it out of the request body rather than allocate it: two allocations
    /// per event (id and type) were a tenth of the server's time on small batched appends.
    pub id: ByteString,
    /// What happened, such as `OrderPlaced`.
    pub event_type: ByteString,
    /// The version of the event type's schema, when the writer tracks one.
    pub schema_version: Option<u32>,
    /// Raw JSON (any value).
    pub data: Bytes,
    /// Raw JSON object (correlation ids, causation ids, user...).
    pub metadata: Option<Bytes>,
}

impl ProposedEvent {
    /// An event with JSON data and no metadata nor schema version.
    pub fn new(
        id: impl Into<ByteString>,
        event_type: impl Into<ByteString>,
        data: impl Into<Bytes>,
    ) -> Self {
        ProposedEvent {
            id: id.into(),
            event_type: event_type.into(),
            schema_version: None,
            data: data.into(),
            metadata: None,
        }
    }

    pub fn with_metadata(mut self, metadata: impl Into<Bytes>) -> Self {
        self.metadata = Some(metadata.into());
        self
    }

    pub fn with_schema_version(mut self, schema_version: u32) -> Self {
        self.schema_version = Some(schema_version);
        self
    }
}

/// An event as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    pub stream: StreamName,
    /// Its number in its stream, from 0.
    pub version: u64,
    /// Its place in the `$all` feed: strictly increasing in commit order, from 1, gaps allowed.
    pub position: u64,
    pub id: ByteString,
    pub event_type: ByteString,
    pub schema_version: Option<u32>,
    /// Raw JSON.
    pub data: Bytes,
    /// Raw JSON object.
    pub metadata: Option<Bytes>,
    /// When the store committed it, in milliseconds since the Unix epoch.
    pub recorded_ms: i64,
}

/// Borrows bytes validated as JSON on the way in as a raw JSON value, so serialising embeds
/// them verbatim.
fn raw_json<'a, E: serde::ser::Error>(bytes: &'a [u8], what: &str) -> Result<&'a RawValue, E> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| E::custom(format!("stored {what} is not UTF-8: {e}")))?;
    serde_json::from_str::<&RawValue>(text)
        .map_err(|e| E::custom(format!("stored {what} is not JSON: {e}")))
}

fn raw_bytes(raw: Box<RawValue>) -> Bytes {
    let text: Box<str> = raw.into();
    Bytes::from(text.into_string().into_bytes())
}

#[derive(Serialize)]
struct EventOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<&'a StreamName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema_version: Option<u32>,
    data: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recorded_ms: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposedIn {
    id: String,
    #[serde(rename = "type", alias = "event_type")]
    event_type: String,
    #[serde(default)]
    schema_version: Option<u32>,
    data: Box<RawValue>,
    #[serde(default)]
    metadata: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct RecordedIn {
    stream: StreamName,
    version: u64,
    position: u64,
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    schema_version: Option<u32>,
    data: Box<RawValue>,
    #[serde(default)]
    metadata: Option<Box<RawValue>>,
    recorded_ms: i64,
}

/// As JSON: `{"id", "type", "schema_version"?, "data", "metadata"?}` with `data` and
/// `metadata` embedded JSON.
impl Serialize for ProposedEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        EventOut {
            stream: None,
            version: None,
            position: None,
            id: &self.id,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            data: raw_json(&self.data, "data")?,
            metadata: self
                .metadata
                .as_deref()
                .map(|m| raw_json(m, "metadata"))
                .transpose()?,
            recorded_ms: None,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ProposedEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let event = ProposedIn::deserialize(deserializer)?;
        Ok(ProposedEvent {
            id: event.id.into(),
            event_type: event.event_type.into(),
            schema_version: event.schema_version,
            data: raw_bytes(event.data),
            metadata: event.metadata.map(raw_bytes),
        })
    }
}

/// As JSON: `{"stream", "version", "position", "id", "type", "schema_version"?, "data",
/// "metadata"?, "recorded_ms"}` with `data` and `metadata` embedded JSON.
impl Serialize for RecordedEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        EventOut {
            stream: Some(&self.stream),
            version: Some(self.version),
            position: Some(self.position),
            id: &self.id,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            data: raw_json(&self.data, "data")?,
            metadata: self
                .metadata
                .as_deref()
                .map(|m| raw_json(m, "metadata"))
                .transpose()?,
            recorded_ms: Some(self.recorded_ms),
        }
        .serialize(serializer)
    }
}

impl RecordedEvent {
    /// Appends the event's JSON (exactly what its `Serialize` gives) to `out`, copying `data`
    /// and `metadata` as stored instead of parsing them again: they were checked to be JSON
    /// when appended, and a store hands back what it was given. For large reads (an aggregate
    /// of thousands of events), where re-validating every payload dominates.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let string = |out: &mut Vec<u8>, text: &str| {
            // Writing a string to a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, text);
        };
        out.extend_from_slice(b"{\"stream\":");
        string(out, self.stream.as_str());
        out.extend_from_slice(
            format!(
                ",\"version\":{},\"position\":{},\"id\":",
                self.version, self.position
            )
            .as_bytes(),
        );
        string(out, &self.id);
        out.extend_from_slice(b",\"type\":");
        string(out, &self.event_type);
        if let Some(version) = self.schema_version {
            out.extend_from_slice(format!(",\"schema_version\":{version}").as_bytes());
        }
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(&self.data);
        if let Some(metadata) = &self.metadata {
            out.extend_from_slice(b",\"metadata\":");
            out.extend_from_slice(metadata);
        }
        out.extend_from_slice(format!(",\"recorded_ms\":{}}}", self.recorded_ms).as_bytes());
    }
}

impl<'de> Deserialize<'de> for RecordedEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let event = RecordedIn::deserialize(deserializer)?;
        Ok(RecordedEvent {
            stream: event.stream,
            version: event.version,
            position: event.position,
            id: event.id.into(),
            event_type: event.event_type.into(),
            schema_version: event.schema_version,
            data: raw_bytes(event.data),
            metadata: event.metadata.map(raw_bytes),
            recorded_ms: event.recorded_ms,
        })
    }
}

/// What an append wrote (or, for a recognised retry, had written).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendOutcome {
    pub first_version: u64,
    pub last_version: u64,
    pub first_position: u64,
    pub last_position: u64,
    /// True when every event id was already in the stream at these versions: the append was a
    /// retry of a write that had succeeded, and nothing new was written.
    pub duplicate: bool,
}

/// What a tombstone left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteOutcome {
    /// The stream's last version when it was deleted; `None` if it had no event.
    pub last_version: Option<u64>,
}

/// A server-side filter of category and `$all` reads. Empty means everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadFilter {
    /// Only events of these types; empty: every type. At most
    /// [`crate::limits::FILTER_EVENT_TYPES_MAX`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<String>,
    /// Only events of streams whose name starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_prefix: Option<String>,
}

impl ReadFilter {
    pub fn is_empty(&self) -> bool {
        self.event_types.is_empty() && self.stream_prefix.is_none()
    }

    /// Whether an event of `event_type` in `stream` passes.
    pub fn matches(&self, stream: &str, event_type: &str) -> bool {
        (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
            && self
                .stream_prefix
                .as_deref()
                .is_none_or(|prefix| stream.starts_with(prefix))
    }
}

/// A page of one stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPage {
    pub stream: StreamName,
    pub events: Vec<RecordedEvent>,
    /// Where the next read in the same direction starts (inclusive). Forward: the version after
    /// the last one returned. Backward: the version before the first one returned.
    pub next_version: u64,
    /// True when nothing is left in this direction: forward, the stream's last event was
    /// returned (more may come later, from `next_version`); backward, version 0 was returned.
    pub is_end: bool,
    /// The stream's last version at the time of the read.
    pub last_version: u64,
    /// The last committed position of the whole store at the time of the read.
    pub head_position: u64,
}

/// A page of the `$all` feed or of a category.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedPage {
    pub events: Vec<RecordedEvent>,
    /// Where the next read in the same direction starts (inclusive). It moves past filtered-out
    /// events too, so a filtered reader does not scan them again. Forward, at the end:
    /// `head_position + 1`, where a live reader waits with `wait_for_position(head_position)`.
    pub next_position: u64,
    /// True when nothing is left in this direction at the time of the read.
    pub is_end: bool,
    /// The last committed position at the time of the read (0 when the store is empty). A
    /// catch-up subscriber is live once it has read up to here.
    pub head_position: u64,
}

/// What is known about one stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    pub stream: StreamName,
    /// The last version; `None` when the stream was deleted before any event was appended.
    pub last_version: Option<u64>,
    /// The position of the last event.
    pub last_position: Option<u64>,
    /// Deleted for good (tombstoned).
    pub deleted: bool,
    /// The version of the latest snapshot, if one was stored.
    pub snapshot_version: Option<u64>,
}

/// A stream's state folded up to `version`, stored so loading an aggregate does not replay
/// its whole history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub stream: StreamName,
    /// The last version the snapshot includes.
    pub version: u64,
    /// The snapshot's type or schema, such as `OrderState.v2`, so a reader can tell whether it
    /// still understands it.
    pub snapshot_type: String,
    /// Raw JSON.
    pub data: Bytes,
    pub recorded_ms: i64,
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    stream: &'a StreamName,
    version: u64,
    #[serde(rename = "type")]
    snapshot_type: &'a str,
    data: &'a RawValue,
    recorded_ms: i64,
}

#[derive(Deserialize)]
struct SnapshotIn {
    stream: StreamName,
    version: u64,
    #[serde(rename = "type")]
    snapshot_type: String,
    data: Box<RawValue>,
    recorded_ms: i64,
}

/// As JSON: `{"stream", "version", "type", "data", "recorded_ms"}`, `data` embedded.
impl Serialize for Snapshot {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        SnapshotOut {
            stream: &self.stream,
            version: self.version,
            snapshot_type: &self.snapshot_type,
            data: raw_json(&self.data, "snapshot data")?,
            recorded_ms: self.recorded_ms,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Snapshot {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let snapshot = SnapshotIn::deserialize(deserializer)?;
        Ok(Snapshot {
            stream: snapshot.stream,
            version: snapshot.version,
            snapshot_type: snapshot.snapshot_type,
            data: raw_bytes(snapshot.data),
            recorded_ms: snapshot.recorded_ms,
        })
    }
}

/// What loading an aggregate needs: the latest snapshot and the events after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregate {
    pub stream: StreamName,
    pub snapshot: Option<Snapshot>,
    /// Events after the snapshot's version (all of them from 0 without a snapshot), at most
    /// the `max_count` asked for.
    pub events: Vec<RecordedEvent>,
    /// Where to continue with `read_stream` when `is_end` is false.
    pub next_version: u64,
    /// True when `events` reach the stream's last version.
    pub is_end: bool,
    pub last_version: u64,
}

impl Aggregate {
    /// The aggregate of `stream` made of its snapshot and the page read after it.
    pub fn from_page(stream: &StreamName, snapshot: Option<Snapshot>, page: StreamPage) -> Self {
        Aggregate {
            stream: stream.clone(),
            snapshot,
            events: page.events,
            next_version: page.next_version,
            is_end: page.is_end,
            last_version: page.last_version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_json_is_what_serialize_gives() {
        let mut event = RecordedEvent {
            stream: StreamName::parse("order-1").unwrap(),
            version: 3,
            position: 42,
            id: "id \"quoted\"".into(),
            event_type: "OrderPlaced".into(),
            schema_version: None,
            data: Bytes::from_static(br#"{"total":12.5,"items":["a"]}"#),
            metadata: None,
            recorded_ms: 1_795_000_000_000,
        };
        for (schema_version, metadata) in [
            (None, None),
            (Some(2), Some(Bytes::from_static(br#"{"user":"u1"}"#))),
        ] {
            event.schema_version = schema_version;
            event.metadata = metadata;
            let mut written = Vec::new();
            event.write_json(&mut written);
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&event).unwrap()
            );
        }
    }

    #[test]
    fn expected_version_json_forms() {
        let cases = [
            (ExpectedVersion::Any, "\"any\""),
            (ExpectedVersion::NoStream, "\"no_stream\""),
            (ExpectedVersion::StreamExists, "\"exists\""),
            (ExpectedVersion::Exact(0), "0"),
            (ExpectedVersion::Exact(42), "42"),
            (ExpectedVersion::Exact(u64::MAX), "18446744073709551615"),
        ];
        for (version, json) in cases {
            assert_eq!(serde_json::to_string(&version).unwrap(), json);
            assert_eq!(
                serde_json::from_str::<ExpectedVersion>(json).unwrap(),
                version
            );
        }
        // Digits in a string are accepted too (query strings and headers carry text).
        assert_eq!(
            serde_json::from_str::<ExpectedVersion>("\"7\"").unwrap(),
            ExpectedVersion::Exact(7)
        );
        for bad in ["-1", "\"none\"", "1.5", "null", "\"\"", "{}"] {
            assert!(
                serde_json::from_str::<ExpectedVersion>(bad).is_err(),
                "{bad}"
            );
        }
        let error = serde_json::from_str::<ExpectedVersion>("\"latest\"").unwrap_err();
        assert!(error.to_string().contains("no_stream"), "{error}");
    }

    #[test]
    fn expected_version_matching() {
        use ExpectedVersion::*;
        assert!(Any.matches(None) && Any.matches(Some(3)));
        assert!(NoStream.matches(None) && !NoStream.matches(Some(0)));
        assert!(!StreamExists.matches(None) && StreamExists.matches(Some(0)));
        assert!(Exact(3).matches(Some(3)) && !Exact(3).matches(Some(4)));
        assert!(!Exact(0).matches(None));
    }

    #[test]
    fn recorded_events_embed_their_json() {
        let event = RecordedEvent {
            stream: StreamName::parse("order-1").unwrap(),
            version: 2,
            position: 17,
            id: "e-1".into(),
            event_type: "OrderPlaced".into(),
            schema_version: Some(3),
            data: Bytes::from_static(br#"{"total":12.5,"items":[1,2]}"#),
            metadata: Some(Bytes::from_static(br#"{"user":"ann"}"#)),
            recorded_ms: 1_700_000_000_000,
        };
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(
            json,
            r#"{"stream":"order-1","version":2,"position":17,"id":"e-1","type":"OrderPlaced","schema_version":3,"data":{"total":12.5,"items":[1,2]},"metadata":{"user":"ann"},"recorded_ms":1700000000000}"#
        );
        assert_eq!(serde_json::from_str::<RecordedEvent>(&json).unwrap(), event);
        let bare = RecordedEvent {
            schema_version: None,
            metadata: None,
            data: Bytes::from_static(b"\"text\""),
            ..event
        };
        let json = serde_json::to_string(&bare).unwrap();
        assert!(
            !json.contains("metadata") && !json.contains("schema_version"),
            "{json}"
        );
        assert!(json.contains(r#""data":"text""#), "{json}");
    }

    #[test]
    fn proposed_events_parse_from_json() {
        let event: ProposedEvent = serde_json::from_str(
            r#"{"id":"a","type":"T","data":{"x":1},"metadata":{"m":true},"schema_version":2}"#,
        )
        .unwrap();
        assert_eq!(event.data.as_ref(), br#"{"x":1}"#);
        assert_eq!(event.metadata.as_deref(), Some(&br#"{"m":true}"#[..]));
        assert_eq!(event.schema_version, Some(2));
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<ProposedEvent>(&json).unwrap(), event);
        assert!(serde_json::from_str::<ProposedEvent>(r#"{"id":"a","type":"T"}"#).is_err());
        assert!(
            serde_json::from_str::<ProposedEvent>(r#"{"id":"a","type":"T","data":1,"x":2}"#)
                .is_err()
        );
    }

    #[test]
    fn filters() {
        let all = ReadFilter::default();
        assert!(all.is_empty() && all.matches("a-1", "T"));
        let filter = ReadFilter {
            event_types: vec!["A".into(), "B".into()],
            stream_prefix: Some("order-".into()),
        };
        assert!(filter.matches("order-1", "A"));
        assert!(!filter.matches("order-1", "C"));
        assert!(!filter.matches("cart-1", "A"));
    }
}
