//! How events, stream records and snapshots are laid out in the redb values. Little formats of
//! our own rather than JSON: decoding a stored event must not re-parse its data, and a read
//! with a filter looks at the stream and type before it copies anything.
//!
//! Event (version 1): `format u8 = 1 | flags u8 (1: schema_version, 2: metadata) | version u64
//! | recorded_ms i64 | schema_version u32 | stream_len u16 | stream | type_len u16 | type |
//! id_len u16 | id | data_len u32 | data | [metadata_len u32 | metadata]`, integers
//! big-endian.
//!
//! Stream record: `flags u8 (1: deleted, 2: has events) | last_version u64 | last_position
//! u64`.
//!
//! Snapshot: `format u8 = 1 | version u64 | recorded_ms i64 | type_len u16 | type | data`.

use bytes::Bytes;
use proteus_eventstore::{
    ByteString, EventStoreError, ProposedEvent, ReadFilter, RecordedEvent, Snapshot, StreamName,
};

const EVENT_FORMAT: u8 = 1;
const SNAPSHOT_FORMAT: u8 = 1;
const HAS_SCHEMA: u8 = 1;
const HAS_METADATA: u8 = 2;

/// What the store keeps per stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamRecord {
    pub deleted: bool,
    /// `(last_version, last_position)`, `None` before the first event.
    pub last: Option<(u64, u64)>,
}

impl StreamRecord {
    pub fn last_version(&self) -> Option<u64> {
        self.last.map(|(version, _)| version)
    }

    pub fn encode(&self) -> [u8; 17] {
        let mut out = [0u8; 17];
        out[0] = u8::from(self.deleted) | if self.last.is_some() { 2 } else { 0 };
        let (version, position) = self.last.unwrap_or_default();
        out[1..9].copy_from_slice(&version.to_be_bytes());
        out[9..17].copy_from_slice(&position.to_be_bytes());
        out
    }

    pub fn decode(stream: &str, bytes: &[u8]) -> Result<Self, EventStoreError> {
        let mut reader = Reader::new(bytes, || format!("the record of stream '{stream}'"));
        let flags = reader.u8()?;
        let version = reader.u64()?;
        let position = reader.u64()?;
        Ok(StreamRecord {
            deleted: flags & 1 != 0,
            last: (flags & 2 != 0).then_some((version, position)),
        })
    }
}

/// The parts of an event its encoding stores besides its stream, version and time: borrowed
/// from a proposed event (an append) or a recorded one (an import).
pub struct EventParts<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
    pub schema_version: Option<u32>,
    pub data: &'a [u8],
    pub metadata: Option<&'a [u8]>,
}

impl EventParts<'_> {
    /// The bytes it counts for against the write queue's bounds, as an append's events do
    /// (`proteus_eventstore::limits::append_bytes`): id, type, data and metadata.
    pub fn bytes(&self) -> usize {
        self.id.len()
            + self.event_type.len()
            + self.data.len()
            + self.metadata.map_or(0, <[u8]>::len)
    }
}

impl<'a> From<&'a ProposedEvent> for EventParts<'a> {
    fn from(event: &'a ProposedEvent) -> Self {
        EventParts {
            id: &event.id,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            data: &event.data,
            metadata: event.metadata.as_deref(),
        }
    }
}

impl<'a> From<&'a RecordedEvent> for EventParts<'a> {
    fn from(event: &'a RecordedEvent) -> Self {
        EventParts {
            id: &event.id,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            data: &event.data,
            metadata: event.metadata.as_deref(),
        }
    }
}

/// Appends the encoding of `event` to `out`. The lengths fit: names are validated to at most
/// 200 bytes, data and metadata to at most a few MiB.
pub fn encode_event(
    out: &mut Vec<u8>,
    stream: &StreamName,
    version: u64,
    recorded_ms: i64,
    event: EventParts<'_>,
) {
    let mut flags = 0;
    if event.schema_version.is_some() {
        flags |= HAS_SCHEMA;
    }
    if event.metadata.is_some() {
        flags |= HAS_METADATA;
    }
    out.push(EVENT_FORMAT);
    out.push(flags);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&recorded_ms.to_be_bytes());
    out.extend_from_slice(&event.schema_version.unwrap_or(0).to_be_bytes());
    for text in [stream.as_str(), event.event_type, event.id] {
        out.extend_from_slice(&(text.len() as u16).to_be_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(&(event.data.len() as u32).to_be_bytes());
    out.extend_from_slice(event.data);
    if let Some(metadata) = event.metadata {
        out.extend_from_slice(&(metadata.len() as u32).to_be_bytes());
        out.extend_from_slice(metadata);
    }
}

/// Decodes the event stored at `position`, or `None` when `filter` rejects it (checked before
/// the data is copied).
pub fn decode_event(
    position: u64,
    bytes: &[u8],
    filter: Option<&ReadFilter>,
) -> Result<Option<RecordedEvent>, EventStoreError> {
    decode_event_of(position, bytes, filter, None)
}

/// [`decode_event`] of an event read through the index of `known_stream`, whose name is then
/// cloned rather than parsed again (stream reads decode up to thousands of events).
pub fn decode_event_of(
    position: u64,
    bytes: &[u8],
    filter: Option<&ReadFilter>,
    known_stream: Option<&StreamName>,
) -> Result<Option<RecordedEvent>, EventStoreError> {
    let mut reader = Reader::new(bytes, || format!("the event at position {position}"));
    let format = reader.u8()?;
    if format != EVENT_FORMAT {
        return Err(reader.corrupt(&format!("unknown format {format}")));
    }
    let flags = reader.u8()?;
    let version = reader.u64()?;
    let recorded_ms = reader.u64()? as i64;
    let schema_version = reader.u32()?;
    let stream = reader.str16()?;
    let event_type = reader.str16()?;
    if let Some(filter) = filter
        && !filter.matches(stream, event_type)
    {
        return Ok(None);
    }
    let stream = match known_stream {
        Some(known) if known.as_str() == stream => known.clone(),
        _ => StreamName::parse(stream).map_err(|e| reader.corrupt(&e.to_string()))?,
    };
    // One copy of the record, of which the event's id, type, data and metadata are slices:
    // one allocation per event read instead of four.
    let record = Bytes::copy_from_slice(bytes);
    let share = |part: &[u8]| {
        let start = part.as_ptr() as usize - bytes.as_ptr() as usize;
        record.slice(start..start + part.len())
    };
    let text = |part: &str| {
        ByteString::try_from(share(part.as_bytes())).expect("a str16 was checked as UTF-8")
    };
    let event_type = text(event_type);
    let id = text(reader.str16()?);
    let data = share(reader.bytes32()?);
    let metadata = if flags & HAS_METADATA != 0 {
        Some(share(reader.bytes32()?))
    } else {
        None
    };
    Ok(Some(RecordedEvent {
        stream,
        version,
        position,
        id,
        event_type,
        schema_version: (flags & HAS_SCHEMA != 0).then_some(schema_version),
        data,
        metadata,
        recorded_ms,
    }))
}

pub fn encode_snapshot(
    version: u64,
    recorded_ms: i64,
    snapshot_type: &str,
    data: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(19 + snapshot_type.len() + data.len());
    out.push(SNAPSHOT_FORMAT);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&recorded_ms.to_be_bytes());
    out.extend_from_slice(&(snapshot_type.len() as u16).to_be_bytes());
    out.extend_from_slice(snapshot_type.as_bytes());
    out.extend_from_slice(data);
    out
}

/// The version of a stored snapshot, without copying it.
pub fn snapshot_version(stream: &StreamName, bytes: &[u8]) -> Result<u64, EventStoreError> {
    let mut reader = Reader::new(bytes, || format!("the snapshot of stream '{stream}'"));
    reader.u8()?;
    reader.u64()
}

pub fn decode_snapshot(stream: &StreamName, bytes: &[u8]) -> Result<Snapshot, EventStoreError> {
    let mut reader = Reader::new(bytes, || format!("the snapshot of stream '{stream}'"));
    let format = reader.u8()?;
    if format != SNAPSHOT_FORMAT {
        return Err(reader.corrupt(&format!("unknown format {format}")));
    }
    let version = reader.u64()?;
    let recorded_ms = reader.u64()? as i64;
    let snapshot_type = reader.str16()?.to_owned();
    let data = Bytes::copy_from_slice(reader.rest());
    Ok(Snapshot {
        stream: stream.clone(),
        version,
        snapshot_type,
        data,
        recorded_ms,
    })
}

/// A bounds-checked cursor: a stored value that is too short or not UTF-8 is reported as
/// corrupt with what it was, never a panic.
struct Reader<'a, W: Fn() -> String> {
    bytes: &'a [u8],
    at: usize,
    what: W,
}

impl<'a, W: Fn() -> String> Reader<'a, W> {
    fn new(bytes: &'a [u8], what: W) -> Self {
        Reader { bytes, at: 0, what }
    }

    fn corrupt(&self, reason: &str) -> EventStoreError {
        EventStoreError::Storage(format!(
            "{} is corrupt ({reason} at byte {}); restore the store from a backup",
            (self.what)(),
            self.at
        ))
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], EventStoreError> {
        let end = self
            .at
            .checked_add(count)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| self.corrupt("it ends early"))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, EventStoreError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, EventStoreError> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes(bytes.try_into().unwrap_or_default()))
    }

    fn u64(&mut self) -> Result<u64, EventStoreError> {
        let bytes = self.take(8)?;
        Ok(u64::from_be_bytes(bytes.try_into().unwrap_or_default()))
    }

    fn str16(&mut self) -> Result<&'a str, EventStoreError> {
        let length = self.take(2)?;
        let length = u16::from_be_bytes([length[0], length[1]]) as usize;
        let bytes = self.take(length)?;
        std::str::from_utf8(bytes).map_err(|_| self.corrupt("a name is not UTF-8"))
    }

    fn bytes32(&mut self) -> Result<&'a [u8], EventStoreError> {
        let length = self.u32()? as usize;
        self.take(length)
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.at.min(self.bytes.len())..];
        self.at = self.bytes.len();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_truncations_are_errors() {
        let stream = StreamName::parse("order-1").unwrap();
        let event = ProposedEvent::new("id-1", "Placed", &br#"{"a":1}"#[..])
            .with_metadata(&br#"{"m":2}"#[..])
            .with_schema_version(4);
        let mut bytes = Vec::new();
        encode_event(&mut bytes, &stream, 9, 1_700_000_000_123, (&event).into());
        let decoded = decode_event(77, &bytes, None).unwrap().unwrap();
        assert_eq!(decoded.stream, stream);
        assert_eq!((decoded.version, decoded.position), (9, 77));
        assert_eq!(decoded.id, "id-1");
        assert_eq!(decoded.event_type, "Placed");
        assert_eq!(decoded.schema_version, Some(4));
        assert_eq!(decoded.data, event.data);
        assert_eq!(decoded.metadata, event.metadata);
        assert_eq!(decoded.recorded_ms, 1_700_000_000_123);
        let other_type = ReadFilter {
            event_types: vec!["Paid".into()],
            stream_prefix: None,
        };
        assert!(
            decode_event(77, &bytes, Some(&other_type))
                .unwrap()
                .is_none()
        );
        for cut in 0..bytes.len() {
            let error = decode_event(77, &bytes[..cut], None).unwrap_err();
            assert!(error.to_string().contains("position 77"), "{error}");
        }
    }

    #[test]
    fn stream_records_and_snapshots_round_trip() {
        for record in [
            StreamRecord::default(),
            StreamRecord {
                deleted: true,
                last: None,
            },
            StreamRecord {
                deleted: false,
                last: Some((3, 99)),
            },
        ] {
            assert_eq!(StreamRecord::decode("s", &record.encode()).unwrap(), record);
        }
        assert!(StreamRecord::decode("s", &[2, 0]).is_err());
        let stream = StreamName::parse("s-1").unwrap();
        let bytes = encode_snapshot(5, 42, "State.v1", b"{\"x\":1}");
        let snapshot = decode_snapshot(&stream, &bytes).unwrap();
        assert_eq!(snapshot.version, 5);
        assert_eq!(snapshot.snapshot_type, "State.v1");
        assert_eq!(snapshot.data.as_ref(), b"{\"x\":1}");
        assert_eq!(snapshot_version(&stream, &bytes).unwrap(), 5);
        assert!(decode_snapshot(&stream, &bytes[..10]).is_err());
    }
}
