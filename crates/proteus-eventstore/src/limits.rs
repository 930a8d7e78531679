//! The limits of every request and the checks every adapter applies before it touches
//! storage, so all adapters refuse the same inputs with the same messages.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::value::RawValue;

use crate::error::EventStoreError;
use crate::event::{ExpectedVersion, ProposedEvent, ReadFilter, RecordedEvent};
use crate::name::{
    InvalidName, STREAM_NAME_BYTES_MAX, StreamName, validate_event_id, validate_event_type,
};

/// Most events in one append. An append is one atomic write; bigger ones would hold the
/// writer (and every other writer in its batch) too long.
pub const EVENTS_PER_APPEND_MAX: usize = 1_000;
/// Largest `data` of one event, in bytes.
pub const EVENT_DATA_BYTES_MAX: usize = 1024 * 1024;
/// Largest `metadata` of one event, in bytes.
pub const EVENT_METADATA_BYTES_MAX: usize = 64 * 1024;
/// Largest append, in bytes: the sum of [`append_bytes`] over its events.
pub const APPEND_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most events one read returns.
pub const READ_COUNT_MAX: usize = 10_000;
/// Most events a filtered `$all` or category read examines before it answers (with what it
/// found and where to continue), so a filter matching nothing cannot scan the whole store.
pub const READ_SCAN_EVENTS_MAX: usize = 100_000;
/// Most event types in one [`ReadFilter`].
pub const FILTER_EVENT_TYPES_MAX: usize = 100;
/// Largest snapshot `data`, in bytes.
pub const SNAPSHOT_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Most events one import (`proteus migrate` into a store that keeps positions) writes in one
/// transaction.
pub const IMPORT_EVENTS_MAX: usize = 10_000;
/// Longest `wait_for_position`, in milliseconds: long polls beyond a minute only hold
/// connections open through proxies that cut them anyway.
pub const WAIT_MS_MAX: u64 = 60_000;

/// The bytes an event counts for against [`APPEND_BYTES_MAX`]: id, type, data and metadata.
pub fn append_bytes(event: &ProposedEvent) -> usize {
    event.id.len()
        + event.event_type.len()
        + event.data.len()
        + event.metadata.as_ref().map_or(0, |m| m.len())
}

fn invalid_event(index: usize, event: &ProposedEvent, reason: String) -> EventStoreError {
    let mut id = event.id.to_string();
    if id.len() > 140 {
        let mut end = 128;
        while !id.is_char_boundary(end) {
            end -= 1;
        }
        id.truncate(end);
        id.push('…');
    }
    EventStoreError::InvalidEvent { index, id, reason }
}

fn check_json(bytes: &[u8], what: &str) -> Result<(), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("{what} is not UTF-8: {e}"))?;
    let raw: &RawValue = serde_json::from_str(text)
        .map_err(|e| format!("{what} is not valid JSON ({e}); send one JSON value"))?;
    if raw.get().is_empty() {
        return Err(format!("{what} is empty; send one JSON value"));
    }
    Ok(())
}

/// Whether an event's data and metadata still need their JSON checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Json {
    Unchecked,
    /// Taken from a document a JSON parser read whole (an HTTP body), so valid JSON already.
    AlreadyParsed,
}

/// Checks one event: its id, type, data (one JSON value) and metadata (a JSON object).
pub fn validate_event(index: usize, event: &ProposedEvent) -> Result<(), EventStoreError> {
    check_event(index, event, Json::Unchecked)
}

fn check_event(index: usize, event: &ProposedEvent, json: Json) -> Result<(), EventStoreError> {
    let name_error = |error: InvalidName| invalid_event(index, event, error.to_string());
    validate_event_id(&event.id).map_err(name_error)?;
    validate_event_type(&event.event_type).map_err(name_error)?;
    if event.data.len() > EVENT_DATA_BYTES_MAX {
        return Err(invalid_event(
            index,
            event,
            format!(
                "data is {} bytes, the most is {EVENT_DATA_BYTES_MAX} (event_data_bytes_max); store large payloads elsewhere and reference them",
                event.data.len()
            ),
        ));
    }
    if json == Json::Unchecked {
        check_json(&event.data, "data").map_err(|reason| invalid_event(index, event, reason))?;
    }
    if let Some(metadata) = &event.metadata {
        if metadata.len() > EVENT_METADATA_BYTES_MAX {
            return Err(invalid_event(
                index,
                event,
                format!(
                    "metadata is {} bytes, the most is {EVENT_METADATA_BYTES_MAX} (event_metadata_bytes_max); keep metadata to ids and small attributes",
                    metadata.len()
                ),
            ));
        }
        if json == Json::Unchecked {
            check_json(metadata, "metadata")
                .map_err(|reason| invalid_event(index, event, reason))?;
        }
        let first = metadata.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(invalid_event(
                index,
                event,
                "metadata must be a JSON object, such as {\"correlation_id\": \"...\"}".into(),
            ));
        }
    }
    Ok(())
}

/// Checks a whole append before it is queued: 1 to [`EVENTS_PER_APPEND_MAX`] valid events,
/// distinct ids, at most [`APPEND_BYTES_MAX`] bytes. Returns its size in bytes.
pub fn validate_append(events: &[ProposedEvent]) -> Result<usize, EventStoreError> {
    check_append(events, Json::Unchecked)
}

fn check_append(events: &[ProposedEvent], json: Json) -> Result<usize, EventStoreError> {
    if events.is_empty() {
        return Err(EventStoreError::invalid_request(
            "an append needs at least one event",
        ));
    }
    if events.len() > EVENTS_PER_APPEND_MAX {
        return Err(EventStoreError::LimitExceeded {
            limit: "events_per_append_max",
            what: "the number of events in one append",
            value: events.len() as u64,
            max: EVENTS_PER_APPEND_MAX as u64,
            hint: "split it into several appends with expected versions, or use fewer, coarser events",
        });
    }
    // foldhash rather than the default SipHash: the set lives for one append and is seeded at
    // random, so a body's ids cannot be picked to collide; SipHash was 2% of the server's time
    // on batched appends (2026-11-29).
    let mut ids: HashSet<&str, foldhash::fast::RandomState> =
        HashSet::with_capacity_and_hasher(events.len(), Default::default());
    let mut bytes = 0usize;
    for (index, event) in events.iter().enumerate() {
        check_event(index, event, json)?;
        if !ids.insert(&*event.id) {
            return Err(invalid_event(
                index,
                event,
                "its id is also used by an earlier event of the same append; every event needs its own id".into(),
            ));
        }
        bytes += append_bytes(event);
    }
    if bytes > APPEND_BYTES_MAX {
        return Err(EventStoreError::LimitExceeded {
            limit: "append_bytes_max",
            what: "the size of the append in bytes",
            value: bytes as u64,
            max: APPEND_BYTES_MAX as u64,
            hint: "split it into several appends",
        });
    }
    Ok(bytes)
}

/// The events of one append, checked ([`validate_append`]): what [`EventStore::append_validated`]
/// takes, so a store never checks twice what its caller checked already. Read-only once
/// built, so nothing can change an event after its check.
///
/// [`EventStore::append_validated`]: crate::EventStore::append_validated
#[derive(Debug)]
pub struct ValidatedAppend {
    events: Vec<ProposedEvent>,
    bytes: usize,
}

impl ValidatedAppend {
    /// Checks `events` as [`validate_append`] does.
    pub fn new(events: Vec<ProposedEvent>) -> Result<Self, EventStoreError> {
        let bytes = check_append(&events, Json::Unchecked)?;
        Ok(ValidatedAppend { events, bytes })
    }

    /// Checks `events` as [`validate_append`] does except that their data and metadata are
    /// not parsed again: the caller took them out of a document a JSON parser read whole and
    /// accepted (an HTTP body parsed with serde_json), so they are valid JSON values already.
    /// Parsing 1 KiB of data again cost about a quarter of the server's time per event on the
    /// NATS event store (2026-11-26). Only for that case: anything else uses [`Self::new`].
    pub fn of_parsed_json(events: Vec<ProposedEvent>) -> Result<Self, EventStoreError> {
        let bytes = check_append(&events, Json::AlreadyParsed)?;
        Ok(ValidatedAppend { events, bytes })
    }

    /// The events' size, as [`append_bytes`] counts it.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn into_events(self) -> Vec<ProposedEvent> {
        self.events
    }
}

/// Checks the `max_count` of a read: 1 to [`READ_COUNT_MAX`].
pub fn validate_read_count(max_count: usize) -> Result<(), EventStoreError> {
    if max_count == 0 {
        return Err(EventStoreError::invalid_request(
            "max_count is 0; ask for at least one event",
        ));
    }
    if max_count > READ_COUNT_MAX {
        return Err(EventStoreError::LimitExceeded {
            limit: "read_count_max",
            what: "max_count",
            value: max_count as u64,
            max: READ_COUNT_MAX as u64,
            hint: "read in pages, continuing from the next position or version each page gives",
        });
    }
    Ok(())
}

/// Checks a read filter: at most [`FILTER_EVENT_TYPES_MAX`] valid event types and a non-empty
/// stream prefix no longer than a stream name.
pub fn validate_filter(filter: &ReadFilter) -> Result<(), EventStoreError> {
    if filter.event_types.len() > FILTER_EVENT_TYPES_MAX {
        return Err(EventStoreError::LimitExceeded {
            limit: "filter_event_types_max",
            what: "the number of event types in the filter",
            value: filter.event_types.len() as u64,
            max: FILTER_EVENT_TYPES_MAX as u64,
            hint: "read without a type filter and filter on the client, or read by category",
        });
    }
    for event_type in &filter.event_types {
        validate_event_type(event_type)?;
    }
    if let Some(prefix) = &filter.stream_prefix {
        if prefix.is_empty() {
            return Err(EventStoreError::invalid_request(
                "stream_prefix is empty; leave it out to read every stream",
            ));
        }
        if prefix.len() > STREAM_NAME_BYTES_MAX {
            return Err(EventStoreError::LimitExceeded {
                limit: "stream_name_bytes_max",
                what: "the length of stream_prefix in bytes",
                value: prefix.len() as u64,
                max: STREAM_NAME_BYTES_MAX as u64,
                hint: "a prefix longer than a stream name matches nothing",
            });
        }
    }
    Ok(())
}

/// Checks the timeout of `wait_for_position`: at most [`WAIT_MS_MAX`].
pub fn validate_wait(timeout: Duration) -> Result<(), EventStoreError> {
    if timeout > Duration::from_millis(WAIT_MS_MAX) {
        return Err(EventStoreError::LimitExceeded {
            limit: "wait_ms_max",
            what: "the wait in milliseconds",
            value: timeout.as_millis().min(u128::from(u64::MAX)) as u64,
            max: WAIT_MS_MAX,
            hint: "wait again when a wait ends without news",
        });
    }
    Ok(())
}

/// Checks a snapshot before it is stored: a valid type, JSON data of at most
/// [`SNAPSHOT_BYTES_MAX`] bytes.
pub fn validate_snapshot(snapshot_type: &str, data: &[u8]) -> Result<(), EventStoreError> {
    validate_event_type(snapshot_type)
        .map_err(|e| EventStoreError::invalid_request(format!("snapshot type: {e}")))?;
    if data.len() > SNAPSHOT_BYTES_MAX {
        return Err(EventStoreError::LimitExceeded {
            limit: "snapshot_bytes_max",
            what: "the snapshot's size in bytes",
            value: data.len() as u64,
            max: SNAPSHOT_BYTES_MAX as u64,
            hint: "keep only the state decisions need in a snapshot",
        });
    }
    check_json(data, "snapshot data").map_err(EventStoreError::invalid_request)?;
    Ok(())
}

/// The optimistic-concurrency rule: `expected` against the stream's last version (`None`: no
/// stream).
pub fn check_expected_version(
    stream: &StreamName,
    expected: ExpectedVersion,
    actual: Option<u64>,
) -> Result<(), EventStoreError> {
    if expected.matches(actual) {
        Ok(())
    } else {
        Err(EventStoreError::WrongExpectedVersion {
            stream: stream.clone(),
            expected,
            actual,
        })
    }
}

/// How an append relates to the events already in its stream, decided from where each of its
/// ids already is (`versions[i]`: the version of the stream's event with the id of
/// `events[i]`, if any).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idempotency {
    /// No id is in the stream: a new write, subject to the expected version.
    New,
    /// Every id is in the stream, in order, at consecutive versions from this one: a retry of
    /// a write that succeeded. Answer its outcome again, whatever the expected version.
    Duplicate { first_version: u64 },
}

/// Decides [`Idempotency`], or refuses an append that is partly a retry: some ids already in
/// the stream and some not, or all of them but in another order.
pub fn check_idempotency(
    stream: &StreamName,
    events: &[ProposedEvent],
    versions: &[Option<u64>],
) -> Result<Idempotency, EventStoreError> {
    let conflict = |reason: String| EventStoreError::IdempotencyConflict {
        stream: stream.clone(),
        reason,
    };
    let known = versions.iter().filter(|v| v.is_some()).count();
    if known == 0 {
        return Ok(Idempotency::New);
    }
    if known < events.len() {
        let (index, version) = versions
            .iter()
            .enumerate()
            .find_map(|(i, v)| v.map(|v| (i, v)))
            .unwrap_or_default();
        return Err(conflict(format!(
            "{known} of the {} event ids are already in the stream (event {index}, id {:?}, is version {version}) and {} are not",
            events.len(),
            events.get(index).map_or("", |e| &*e.id),
            events.len() - known
        )));
    }
    let first = versions[0].unwrap_or_default();
    for (index, version) in versions.iter().enumerate() {
        let wanted = first + index as u64;
        if *version != Some(wanted) {
            return Err(conflict(format!(
                "every event id is already in the stream, but not in this order: event {index} (id {:?}) is version {}, not {wanted}",
                events[index].id,
                version.unwrap_or_default()
            )));
        }
    }
    Ok(Idempotency::Duplicate {
        first_version: first,
    })
}

/// What an import writes to one stream: its first and last version and the position of its
/// last event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImportedStream {
    pub first_version: u64,
    pub last_version: u64,
    pub last_position: u64,
}

/// The checks of an import (events recorded by another store, copied with their positions,
/// versions, ids and times) that need no storage: at most [`IMPORT_EVENTS_MAX`] events, in
/// strictly increasing position order (gaps allowed, as in any `$all` feed), each stream's
/// versions consecutive within the import. Returns what it writes to each stream, by name;
/// the store then checks each stream continues its own versions, is not deleted, and that the
/// first position comes after its head.
pub fn validate_import(
    events: &[RecordedEvent],
) -> Result<BTreeMap<&StreamName, ImportedStream>, EventStoreError> {
    let invalid = |reason: String| EventStoreError::InvalidRequest { reason };
    check_import_count(events.len())?;
    if let Some(pair) = events.windows(2).find(|w| w[0].position >= w[1].position) {
        return Err(invalid(format!(
            "imported events must be in strictly increasing position order, but position {} follows {}",
            pair[1].position, pair[0].position
        )));
    }
    let mut streams: BTreeMap<&StreamName, ImportedStream> = BTreeMap::new();
    for event in events {
        let stream = &event.stream;
        // What the source store checked on the way in, checked again: the encodings of
        // stores rely on these bounds.
        let of_event = |reason: String| {
            invalid(format!(
                "the event at position {} (stream '{stream}', version {}): {reason}",
                event.position, event.version
            ))
        };
        validate_event_id(&event.id).map_err(|e| of_event(e.to_string()))?;
        validate_event_type(&event.event_type).map_err(|e| of_event(e.to_string()))?;
        if event.data.len() > EVENT_DATA_BYTES_MAX {
            return Err(of_event(format!(
                "data is {} bytes, the most is {EVENT_DATA_BYTES_MAX}",
                event.data.len()
            )));
        }
        if let Some(metadata) = &event.metadata
            && metadata.len() > EVENT_METADATA_BYTES_MAX
        {
            return Err(of_event(format!(
                "metadata is {} bytes, the most is {EVENT_METADATA_BYTES_MAX}",
                metadata.len()
            )));
        }
        match streams.get_mut(stream) {
            Some(imported) => {
                if event.version != imported.last_version + 1 {
                    return Err(invalid(format!(
                        "stream '{stream}' jumps from version {} to {} within the import",
                        imported.last_version, event.version
                    )));
                }
                imported.last_version = event.version;
                imported.last_position = event.position;
            }
            None => {
                streams.insert(
                    stream,
                    ImportedStream {
                        first_version: event.version,
                        last_version: event.version,
                        last_position: event.position,
                    },
                );
            }
        }
    }
    Ok(streams)
}

/// The bound of one import: at most [`IMPORT_EVENTS_MAX`] events.
pub fn check_import_count(events: usize) -> Result<(), EventStoreError> {
    if events > IMPORT_EVENTS_MAX {
        return Err(EventStoreError::InvalidRequest {
            reason: format!("{events} events in one import; the most is {IMPORT_EVENTS_MAX}"),
        });
    }
    Ok(())
}

/// The check of one imported stream against what the store holds of it (`last_version`:
/// `None` without events, `deleted`: a tombstone).
pub fn check_imported_stream(
    stream: &str,
    imported: &ImportedStream,
    last_version: Option<u64>,
    deleted: bool,
) -> Result<(), EventStoreError> {
    let invalid = |reason: String| EventStoreError::InvalidRequest { reason };
    if deleted {
        return Err(invalid(format!(
            "stream '{stream}' is deleted in this store"
        )));
    }
    let expected = last_version.map_or(0, |v| v + 1);
    if imported.first_version != expected {
        return Err(invalid(format!(
            "stream '{stream}' continues at version {expected} in this store, but the import starts it at {}",
            imported.first_version
        )));
    }
    Ok(())
}

/// The check of an import's first position against the store's head (0: empty).
pub fn check_import_position(first_position: u64, head: u64) -> Result<(), EventStoreError> {
    if first_position <= head {
        return Err(EventStoreError::InvalidRequest {
            reason: format!(
                "the first imported event is at position {first_position}, not after this store's head {head}; import only what follows it"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> ProposedEvent {
        ProposedEvent::new(id, "T", &b"{}"[..])
    }

    #[test]
    fn appends_are_bounded_and_checked() {
        assert!(validate_append(&[]).is_err());
        assert!(validate_append(&[event("a")]).is_ok());
        let many: Vec<_> = (0..=EVENTS_PER_APPEND_MAX)
            .map(|i| event(&i.to_string()))
            .collect();
        let error = validate_append(&many).unwrap_err();
        assert!(
            error.to_string().contains("events_per_append_max"),
            "{error}"
        );
        let error = validate_append(&[event("a"), event("b"), event("a")]).unwrap_err();
        assert!(
            matches!(error, EventStoreError::InvalidEvent { index: 2, .. }),
            "{error}"
        );
        for (data, reason) in [
            (&b"{"[..], "not valid JSON"),
            (&b""[..], "not valid JSON"),
            (&b"{} {}"[..], "not valid JSON"),
            (&b"\xff"[..], "UTF-8"),
        ] {
            let error = validate_append(&[ProposedEvent::new("a", "T", data)]).unwrap_err();
            assert!(error.to_string().contains(reason), "{error}");
        }
        let error = validate_append(&[event("a").with_metadata(&b"[1]"[..])]).unwrap_err();
        assert!(error.to_string().contains("JSON object"), "{error}");
        assert!(validate_append(&[event("a").with_metadata(&b" {\"k\":1}"[..])]).is_ok());
        let big = vec![b'1'; EVENT_DATA_BYTES_MAX + 1];
        let error = validate_append(&[ProposedEvent::new("a", "T", big)]).unwrap_err();
        assert!(
            error.to_string().contains("event_data_bytes_max"),
            "{error}"
        );
        let nine: Vec<_> = (0..9)
            .map(|i| ProposedEvent::new(i.to_string(), "T", vec![b'1'; EVENT_DATA_BYTES_MAX]))
            .collect();
        let error = validate_append(&nine).unwrap_err();
        assert!(error.to_string().contains("append_bytes_max"), "{error}");
    }

    /// `of_parsed_json` skips only the JSON parse of data and metadata (its caller parsed
    /// them); every other check, the metadata's shape included, still applies.
    #[test]
    fn an_append_of_parsed_json_is_checked_for_all_but_its_json() {
        let unparsable = ProposedEvent::new("a", "T", &b"{"[..]);
        assert!(ValidatedAppend::new(vec![unparsable.clone()]).is_err());
        let append = ValidatedAppend::of_parsed_json(vec![unparsable]).unwrap();
        assert_eq!(append.bytes(), 3);
        for refused in [
            vec![],
            vec![event("a"), event("a")],
            vec![ProposedEvent::new("", "T", &b"{}"[..])],
            vec![ProposedEvent::new("a", "bad type", &b"{}"[..])],
            vec![event("a").with_metadata(&b"[1]"[..])],
            vec![ProposedEvent::new(
                "a",
                "T",
                vec![b'1'; EVENT_DATA_BYTES_MAX + 1],
            )],
        ] {
            let checked = validate_append(&refused).map(|_| ());
            let parsed = ValidatedAppend::of_parsed_json(refused).map(|_| ());
            assert!(parsed.is_err(), "{checked:?}");
            assert_eq!(
                parsed.unwrap_err().to_string(),
                checked.unwrap_err().to_string()
            );
        }
    }

    #[test]
    fn reads_filters_and_waits_are_bounded() {
        assert!(validate_read_count(0).is_err());
        assert!(validate_read_count(1).is_ok());
        assert!(validate_read_count(READ_COUNT_MAX).is_ok());
        assert!(validate_read_count(READ_COUNT_MAX + 1).is_err());
        let filter = ReadFilter {
            event_types: (0..=FILTER_EVENT_TYPES_MAX)
                .map(|i| i.to_string())
                .collect(),
            stream_prefix: None,
        };
        assert!(validate_filter(&filter).is_err());
        let filter = ReadFilter {
            event_types: vec!["bad type".into()],
            stream_prefix: None,
        };
        assert!(validate_filter(&filter).is_err());
        let filter = ReadFilter {
            event_types: vec![],
            stream_prefix: Some(String::new()),
        };
        assert!(validate_filter(&filter).is_err());
        assert!(validate_wait(Duration::from_millis(WAIT_MS_MAX)).is_ok());
        assert!(validate_wait(Duration::from_millis(WAIT_MS_MAX + 1)).is_err());
        assert!(validate_wait(Duration::MAX).is_err());
    }

    #[test]
    fn idempotency_rules() {
        let stream = StreamName::parse("s-1").unwrap();
        let events = [event("a"), event("b"), event("c")];
        assert_eq!(
            check_idempotency(&stream, &events, &[None, None, None]).unwrap(),
            Idempotency::New
        );
        assert_eq!(
            check_idempotency(&stream, &events, &[Some(4), Some(5), Some(6)]).unwrap(),
            Idempotency::Duplicate { first_version: 4 }
        );
        let error = check_idempotency(&stream, &events, &[Some(4), Some(5), None]).unwrap_err();
        assert!(error.to_string().contains("2 of the 3"), "{error}");
        let error = check_idempotency(&stream, &events, &[Some(4), Some(6), Some(5)]).unwrap_err();
        assert!(error.to_string().contains("not in this order"), "{error}");
    }
}
