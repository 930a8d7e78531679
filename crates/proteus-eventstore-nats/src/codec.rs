//! How events, tombstones and snapshots are laid out in JetStream messages, and how names
//! become subject tokens.
//!
//! Payloads are a small binary framing (big-endian lengths), not JSON: event data and metadata
//! are stored byte for byte as the writer sent them (JSON re-encoding could change their
//! whitespace), and decoding slices them out of the message without copying.
//!
//! ```text
//! events message   headers  Proteus-Kind: events
//!                           Proteus-First-Version: <version of the first event>
//!                           Proteus-Count: <number of events>
//!                  payload  per event: u16 id length, id, u16 type length, type,
//!                           u8 flags (1: schema version, 2: metadata),
//!                           [u32 schema version], u32 data length, data,
//!                           [u32 metadata length, metadata]
//! tombstone        headers  Proteus-Kind: tombstone
//!                           Proteus-Last-Version, Proteus-Last-Position (absent: no event)
//!                  payload  empty
//! snapshot         payload  u64 version, u16 type length, type, data
//! ```

use async_nats::HeaderMap;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use proteus_eventstore::{ByteString, ProposedEvent};

pub const KIND_HEADER: &str = "Proteus-Kind";
pub const FIRST_VERSION_HEADER: &str = "Proteus-First-Version";
pub const COUNT_HEADER: &str = "Proteus-Count";
pub const LAST_VERSION_HEADER: &str = "Proteus-Last-Version";
pub const LAST_POSITION_HEADER: &str = "Proteus-Last-Position";
pub const KIND_EVENTS: &str = "events";
pub const KIND_TOMBSTONE: &str = "tombstone";

/// What one message of the events stream holds, from its headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// `count` events at versions `first_version..first_version + count`.
    Events { first_version: u64, count: u64 },
    /// The stream was deleted; its last version and position then.
    Tombstone {
        last_version: Option<u64>,
        last_position: Option<u64>,
    },
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|value| value.as_str())
}

fn number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, String> {
    match header(headers, name) {
        None => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| format!("header {name} is {text:?}, not a number")),
    }
}

/// Reads a message's kind from its headers.
pub fn record_of(headers: Option<&HeaderMap>) -> Result<Record, String> {
    let Some(headers) = headers else {
        return Err(format!(
            "it has no headers (no {KIND_HEADER}): something other than Proteus published to the event store's subjects"
        ));
    };
    match header(headers, KIND_HEADER) {
        Some(KIND_EVENTS) => {
            let first_version = number(headers, FIRST_VERSION_HEADER)?
                .ok_or_else(|| format!("header {FIRST_VERSION_HEADER} is missing"))?;
            let count = number(headers, COUNT_HEADER)?
                .ok_or_else(|| format!("header {COUNT_HEADER} is missing"))?;
            if count == 0 {
                return Err(format!("header {COUNT_HEADER} is 0"));
            }
            Ok(Record::Events {
                first_version,
                count,
            })
        }
        Some(KIND_TOMBSTONE) => Ok(Record::Tombstone {
            last_version: number(headers, LAST_VERSION_HEADER)?,
            last_position: number(headers, LAST_POSITION_HEADER)?,
        }),
        other => Err(format!(
            "header {KIND_HEADER} is {other:?}: something other than Proteus published to the event store's subjects"
        )),
    }
}

pub fn events_headers(first_version: u64, count: usize, expected_last_seq: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(KIND_HEADER, KIND_EVENTS);
    headers.insert(FIRST_VERSION_HEADER, first_version.to_string().as_str());
    headers.insert(COUNT_HEADER, count.to_string().as_str());
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        expected_last_seq.to_string().as_str(),
    );
    headers
}

pub fn tombstone_headers(
    last_version: Option<u64>,
    last_position: Option<u64>,
    expected_last_seq: u64,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(KIND_HEADER, KIND_TOMBSTONE);
    if let Some(version) = last_version {
        headers.insert(LAST_VERSION_HEADER, version.to_string().as_str());
    }
    if let Some(position) = last_position {
        headers.insert(LAST_POSITION_HEADER, position.to_string().as_str());
    }
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        expected_last_seq.to_string().as_str(),
    );
    headers
}

/// The payload of one append.
pub fn encode_events(events: &[ProposedEvent]) -> Bytes {
    let size: usize = events
        .iter()
        .map(|e| {
            2 + e.id.len()
                + 2
                + e.event_type.len()
                + 1
                + 4
                + 4
                + e.data.len()
                + 4
                + e.metadata.as_ref().map_or(0, |m| m.len())
        })
        .sum();
    let mut out = BytesMut::with_capacity(size);
    for event in events {
        // Lengths were bounded by validation: ids 128 bytes, types 200, data 1 MiB,
        // metadata 64 KiB.
        out.put_u16(event.id.len() as u16);
        out.put_slice(event.id.as_bytes());
        out.put_u16(event.event_type.len() as u16);
        out.put_slice(event.event_type.as_bytes());
        let flags =
            u8::from(event.schema_version.is_some()) | (u8::from(event.metadata.is_some()) << 1);
        out.put_u8(flags);
        if let Some(version) = event.schema_version {
            out.put_u32(version);
        }
        out.put_u32(event.data.len() as u32);
        out.put_slice(&event.data);
        if let Some(metadata) = &event.metadata {
            out.put_u32(metadata.len() as u32);
            out.put_slice(metadata);
        }
    }
    out.freeze()
}

fn take(payload: &mut Bytes, len: usize, what: &str) -> Result<Bytes, String> {
    if payload.remaining() < len {
        return Err(format!("the payload ends inside {what}"));
    }
    Ok(payload.split_to(len))
}

/// `bytes` as text, sharing its buffer (an event's id and type are slices of the message).
fn text(bytes: Bytes, what: &str) -> Result<ByteString, String> {
    ByteString::try_from(bytes).map_err(|_| format!("{what} is not UTF-8"))
}

fn u16_of(payload: &mut Bytes, what: &str) -> Result<usize, String> {
    Ok(take(payload, 2, what)?.get_u16() as usize)
}

fn u32_of(payload: &mut Bytes, what: &str) -> Result<u32, String> {
    Ok(take(payload, 4, what)?.get_u32())
}

/// The events of one append message; `count` from its headers must match.
pub fn decode_events(payload: &Bytes, count: u64) -> Result<Vec<ProposedEvent>, String> {
    let mut rest = payload.clone();
    let mut events = Vec::with_capacity(count.min(1024) as usize);
    while rest.has_remaining() {
        let len = u16_of(&mut rest, "an id length")?;
        let id = text(take(&mut rest, len, "an id")?, "an id")?;
        let len = u16_of(&mut rest, "a type length")?;
        let event_type = text(take(&mut rest, len, "a type")?, "a type")?;
        let flags = take(&mut rest, 1, "flags")?.get_u8();
        let schema_version = if flags & 1 != 0 {
            Some(u32_of(&mut rest, "a schema version")?)
        } else {
            None
        };
        let len = u32_of(&mut rest, "a data length")? as usize;
        let data = take(&mut rest, len, "data")?;
        let metadata = if flags & 2 != 0 {
            let len = u32_of(&mut rest, "a metadata length")? as usize;
            Some(take(&mut rest, len, "metadata")?)
        } else {
            None
        };
        events.push(ProposedEvent {
            id,
            event_type,
            schema_version,
            data,
            metadata,
        });
    }
    if events.len() as u64 != count {
        return Err(format!(
            "it holds {} events but its {COUNT_HEADER} header says {count}",
            events.len()
        ));
    }
    Ok(events)
}

pub fn encode_snapshot(version: u64, snapshot_type: &str, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + 2 + snapshot_type.len() + data.len());
    out.put_u64(version);
    out.put_u16(snapshot_type.len() as u16);
    out.put_slice(snapshot_type.as_bytes());
    out.put_slice(data);
    out.freeze()
}

/// `(version, type, data)` of a snapshot message.
pub fn decode_snapshot(payload: &Bytes) -> Result<(u64, String, Bytes), String> {
    let mut rest = payload.clone();
    let version = take(&mut rest, 8, "the version")?.get_u64();
    let len = u16_of(&mut rest, "the type length")?;
    let snapshot_type = text(take(&mut rest, len, "the type")?, "the type")?;
    Ok((version, snapshot_type.into(), rest))
}

/// A name as one subject token: `[A-Za-z0-9_-]` as is, every other byte (including `~`) as
/// `~` and two uppercase hex digits. One-to-one, ASCII only, never empty for a non-empty name,
/// and free of `.`, `*`, `>` and whitespace, which subjects reserve.
pub fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            out.push(byte as char);
        } else {
            out.push('~');
            out.push_str(&format!("{byte:02X}"));
        }
    }
    out
}

/// The name a [`token`] encodes.
pub fn untoken(token: &str) -> Option<String> {
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'~' {
            let hex = token.get(index + 1..index + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_avoid_subject_syntax() {
        for name in [
            "order-123",
            "bank.account-42",
            "café-1",
            "a*b>c~d",
            "x_y",
            "$%",
        ] {
            let token = token(name);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'.' && b != b'*' && b != b'>'),
                "{token}"
            );
            assert_eq!(untoken(&token).as_deref(), Some(name));
        }
        assert_eq!(token("order-1"), "order-1");
        assert_ne!(token("a.b"), token("a~2Eb"));
        assert_eq!(untoken("bad~Z"), None);
    }

    #[test]
    fn events_round_trip_byte_for_byte() {
        let events = vec![
            ProposedEvent::new("a", "T", &b" {\"x\": 1 } "[..])
                .with_metadata(&b" {}"[..])
                .with_schema_version(3),
            ProposedEvent::new("b", "U", &b"[]"[..]),
        ];
        let payload = encode_events(&events);
        assert_eq!(decode_events(&payload, 2).unwrap(), events);
        assert!(decode_events(&payload, 3).is_err());
        assert!(decode_events(&payload.slice(..payload.len() - 1), 2).is_err());
    }

    #[test]
    fn snapshots_and_headers_round_trip() {
        let payload = encode_snapshot(7, "State.v1", br#"{"n":1}"#);
        let (version, snapshot_type, data) = decode_snapshot(&payload).unwrap();
        assert_eq!(
            (version, snapshot_type.as_str(), data.as_ref()),
            (7, "State.v1", &br#"{"n":1}"#[..])
        );
        let headers = events_headers(4, 2, 9);
        assert_eq!(
            record_of(Some(&headers)).unwrap(),
            Record::Events {
                first_version: 4,
                count: 2
            }
        );
        let headers = tombstone_headers(None, None, 0);
        assert_eq!(
            record_of(Some(&headers)).unwrap(),
            Record::Tombstone {
                last_version: None,
                last_position: None
            }
        );
        assert!(record_of(None).is_err());
        assert!(record_of(Some(&HeaderMap::new())).is_err());
    }
}
