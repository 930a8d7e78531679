//! The one writer: group commit.
//!
//! Every write (append, delete, snapshot) is queued to a dedicated thread. It takes every
//! pending request up to the batch bounds, applies them one after the other inside ONE redb
//! write transaction — so two appends to the same stream in one batch see each other — commits
//! it once with `Durability::Immediate` (fsync), and only then answers each request and
//! publishes the new head position. One fsync thus acknowledges many appends, and a crash
//! before the commit leaves nothing of the batch (redb's commit is atomic).
//!
//! An import (`proteus migrate` into this store) is one more kind of request: events another
//! store recorded, written with their positions, versions and times, after which positions
//! continue from the last imported one.
//!
//! A request whose check fails (expected version, idempotency, tombstone...) is refused
//! before it writes anything, so it does not affect the others of its batch. A storage error
//! aborts the whole transaction and every request of the batch is answered with it.

use std::sync::Arc;

use bytes::Bytes;
use proteus_eventstore::limits::{
    Idempotency, check_expected_version, check_idempotency, check_import_position,
    check_imported_stream, validate_import,
};
use proteus_eventstore::{
    AppendOutcome, DeleteOutcome, EventStoreError, ExpectedVersion, ProposedEvent, RecordedEvent,
    StreamName,
};
use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};

use crate::codec::{self, StreamRecord};
use crate::tables::{
    CATEGORY_EVENTS, EVENT_IDS, EVENTS, SNAPSHOTS, STREAM_EVENTS, STREAMS, storage,
};

pub enum Command {
    Append {
        stream: StreamName,
        expected: ExpectedVersion,
        events: Vec<ProposedEvent>,
        reply: oneshot::Sender<Result<AppendOutcome, EventStoreError>>,
    },
    Delete {
        stream: StreamName,
        expected: ExpectedVersion,
        reply: oneshot::Sender<Result<DeleteOutcome, EventStoreError>>,
    },
    Snapshot {
        stream: StreamName,
        version: u64,
        snapshot_type: String,
        data: Bytes,
        reply: oneshot::Sender<Result<(), EventStoreError>>,
    },
    Import {
        events: Vec<RecordedEvent>,
        reply: oneshot::Sender<Result<(), EventStoreError>>,
    },
}

pub struct Request {
    pub command: Command,
    /// How many events it writes, for `write_batch_events_max`.
    pub events: usize,
    /// How many bytes it writes, for `write_batch_bytes_max`.
    pub bytes: usize,
    /// Its share of `queue_bytes_max`, released once it is answered.
    pub _permit: OwnedSemaphorePermit,
}

pub struct BatchLimits {
    pub events_max: usize,
    pub bytes_max: usize,
}

/// What one request did inside the transaction, answered after the commit.
enum Done {
    Append(Result<AppendOutcome, EventStoreError>),
    Delete(Result<DeleteOutcome, EventStoreError>),
    Snapshot(Result<(), EventStoreError>),
    Import(Result<(), EventStoreError>),
}

/// Runs until every sender is gone, then returns (after answering everything queued).
pub fn run(
    db: Arc<Database>,
    mut requests: mpsc::Receiver<Request>,
    limits: BatchLimits,
    head: watch::Sender<u64>,
) {
    let mut next_position = *head.borrow() + 1;
    let mut carried: Option<Request> = None;
    loop {
        let first = match carried.take() {
            Some(request) => request,
            None => match requests.blocking_recv() {
                Some(request) => request,
                None => return,
            },
        };
        let (mut events, mut bytes) = (first.events, first.bytes);
        let mut batch = vec![first];
        // Everything already waiting joins the batch, up to its bounds; the first request is
        // always taken, even alone above them, so nothing waits forever.
        while events < limits.events_max && bytes < limits.bytes_max {
            match requests.try_recv() {
                Ok(request) => {
                    if events + request.events > limits.events_max
                        || bytes + request.bytes > limits.bytes_max
                    {
                        carried = Some(request);
                        break;
                    }
                    events += request.events;
                    bytes += request.bytes;
                    batch.push(request);
                }
                Err(_) => break,
            }
        }
        commit_batch(&db, batch, &mut next_position, &head);
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn commit_batch(
    db: &Database,
    batch: Vec<Request>,
    next_position: &mut u64,
    head: &watch::Sender<u64>,
) {
    let start_position = *next_position;
    let recorded_ms = now_ms();
    let result = (|| -> Result<Vec<Done>, EventStoreError> {
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        let done = apply_all(&txn, &batch, next_position, recorded_ms)?;
        txn.commit().map_err(storage)?;
        Ok(done)
    })();
    match result {
        Ok(done) => {
            if *next_position != start_position {
                head.send_replace(*next_position - 1);
            }
            for (request, done) in batch.into_iter().zip(done) {
                answer(request.command, done);
            }
        }
        Err(error) => {
            // Nothing of the batch was committed: positions are handed out again.
            *next_position = start_position;
            let message = error.to_string();
            for request in batch {
                let error = EventStoreError::Storage(message.clone());
                let done = match &request.command {
                    Command::Append { .. } => Done::Append(Err(error)),
                    Command::Delete { .. } => Done::Delete(Err(error)),
                    Command::Snapshot { .. } => Done::Snapshot(Err(error)),
                    Command::Import { .. } => Done::Import(Err(error)),
                };
                answer(request.command, done);
            }
        }
    }
}

/// Answers one request. A caller that gave up (its future dropped) is not an error.
fn answer(command: Command, done: Done) {
    match (command, done) {
        (Command::Append { reply, .. }, Done::Append(result)) => drop(reply.send(result)),
        (Command::Delete { reply, .. }, Done::Delete(result)) => drop(reply.send(result)),
        (Command::Snapshot { reply, .. }, Done::Snapshot(result)) => drop(reply.send(result)),
        (Command::Import { reply, .. }, Done::Import(result)) => drop(reply.send(result)),
        // `apply_all` answers each command with its own kind.
        (command, _) => drop(command),
    }
}

struct Tables<'txn> {
    events: Table<'txn, u64, &'static [u8]>,
    stream_events: Table<'txn, (&'static str, u64), u64>,
    category_events: Table<'txn, (&'static str, u64), u64>,
    streams: Table<'txn, &'static str, &'static [u8]>,
    event_ids: Table<'txn, (&'static str, &'static str), u64>,
    snapshots: Table<'txn, &'static str, &'static [u8]>,
}

fn apply_all(
    txn: &WriteTransaction,
    batch: &[Request],
    next_position: &mut u64,
    recorded_ms: i64,
) -> Result<Vec<Done>, EventStoreError> {
    let mut tables = Tables {
        events: txn.open_table(EVENTS).map_err(storage)?,
        stream_events: txn.open_table(STREAM_EVENTS).map_err(storage)?,
        category_events: txn.open_table(CATEGORY_EVENTS).map_err(storage)?,
        streams: txn.open_table(STREAMS).map_err(storage)?,
        event_ids: txn.open_table(EVENT_IDS).map_err(storage)?,
        snapshots: txn.open_table(SNAPSHOTS).map_err(storage)?,
    };
    let mut done = Vec::with_capacity(batch.len());
    let mut buffer = Vec::new();
    for request in batch {
        // The outer `?` is a storage failure (abort everything); the inner result is this
        // request's own answer.
        done.push(match &request.command {
            Command::Append {
                stream,
                expected,
                events,
                ..
            } => Done::Append(append(
                &mut tables,
                stream,
                *expected,
                events,
                next_position,
                recorded_ms,
                &mut buffer,
            )?),
            Command::Delete {
                stream, expected, ..
            } => Done::Delete(delete(&mut tables, stream, *expected)?),
            Command::Snapshot {
                stream,
                version,
                snapshot_type,
                data,
                ..
            } => Done::Snapshot(snapshot(
                &mut tables,
                stream,
                *version,
                snapshot_type,
                data,
                recorded_ms,
            )?),
            Command::Import { events, .. } => {
                Done::Import(import(&mut tables, events, next_position, &mut buffer)?)
            }
        });
    }
    Ok(done)
}

type Answer<T> = Result<Result<T, EventStoreError>, EventStoreError>;

fn read_record(
    tables: &Tables<'_>,
    stream: &StreamName,
) -> Result<Option<StreamRecord>, EventStoreError> {
    match tables.streams.get(stream.as_str()).map_err(storage)? {
        Some(value) => Ok(Some(StreamRecord::decode(stream.as_str(), value.value())?)),
        None => Ok(None),
    }
}

fn position_of(
    tables: &Tables<'_>,
    stream: &StreamName,
    version: u64,
) -> Result<u64, EventStoreError> {
    match tables
        .stream_events
        .get((stream.as_str(), version))
        .map_err(storage)?
    {
        Some(position) => Ok(position.value()),
        None => Err(EventStoreError::Storage(format!(
            "the index of stream '{stream}' has no version {version} although its event ids say so; restore the store from a backup"
        ))),
    }
}

fn append(
    tables: &mut Tables<'_>,
    stream: &StreamName,
    expected: ExpectedVersion,
    events: &[ProposedEvent],
    next_position: &mut u64,
    recorded_ms: i64,
    buffer: &mut Vec<u8>,
) -> Answer<AppendOutcome> {
    let record = read_record(tables, stream)?.unwrap_or_default();
    if record.deleted {
        return Ok(Err(EventStoreError::StreamDeleted {
            stream: stream.clone(),
        }));
    }
    // A stream without events has no ids to match: skip the lookups.
    if record.last.is_some() {
        let mut versions = Vec::with_capacity(events.len());
        for event in events {
            let version = tables
                .event_ids
                .get((stream.as_str(), &*event.id))
                .map_err(storage)?
                .map(|v| v.value());
            versions.push(version);
        }
        match check_idempotency(stream, events, &versions) {
            Err(error) => return Ok(Err(error)),
            Ok(Idempotency::Duplicate { first_version }) => {
                let last_version = first_version + events.len() as u64 - 1;
                return Ok(Ok(AppendOutcome {
                    first_version,
                    last_version,
                    first_position: position_of(tables, stream, first_version)?,
                    last_position: position_of(tables, stream, last_version)?,
                    duplicate: true,
                }));
            }
            Ok(Idempotency::New) => {}
        }
    }
    if let Err(error) = check_expected_version(stream, expected, record.last_version()) {
        return Ok(Err(error));
    }
    let first_version = record.last_version().map_or(0, |v| v + 1);
    let first_position = *next_position;
    let category = stream.category();
    for (index, event) in events.iter().enumerate() {
        let version = first_version + index as u64;
        let position = *next_position;
        *next_position += 1;
        buffer.clear();
        codec::encode_event(buffer, stream, version, recorded_ms, event.into());
        tables
            .events
            .insert(position, buffer.as_slice())
            .map_err(storage)?;
        tables
            .stream_events
            .insert((stream.as_str(), version), position)
            .map_err(storage)?;
        tables
            .category_events
            .insert((category.as_str(), position), version)
            .map_err(storage)?;
        tables
            .event_ids
            .insert((stream.as_str(), &*event.id), version)
            .map_err(storage)?;
    }
    let last_version = first_version + events.len() as u64 - 1;
    let last_position = *next_position - 1;
    let updated = StreamRecord {
        deleted: false,
        last: Some((last_version, last_position)),
    };
    tables
        .streams
        .insert(stream.as_str(), updated.encode().as_slice())
        .map_err(storage)?;
    Ok(Ok(AppendOutcome {
        first_version,
        last_version,
        first_position,
        last_position,
        duplicate: false,
    }))
}

/// Writes `events` (another store's, in position order) with their positions, versions and
/// times, or nothing when any check fails: everything is checked before the first write, so a
/// refused import leaves the rest of its batch unaffected.
fn import(
    tables: &mut Tables<'_>,
    events: &[RecordedEvent],
    next_position: &mut u64,
    buffer: &mut Vec<u8>,
) -> Answer<()> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok(Ok(()));
    };
    let streams = match validate_import(events) {
        Ok(streams) => streams,
        Err(error) => return Ok(Err(error)),
    };
    if let Err(error) = check_import_position(first.position, *next_position - 1) {
        return Ok(Err(error));
    }
    for (stream, imported) in &streams {
        let record = read_record(tables, stream)?.unwrap_or_default();
        if let Err(error) = check_imported_stream(
            stream.as_str(),
            imported,
            record.last_version(),
            record.deleted,
        ) {
            return Ok(Err(error));
        }
    }
    // An id already in its stream here, or twice in one stream of the import, would break the
    // id index: refused, as the stores with a unique (stream, id) index refuse it.
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    for event in events {
        let known = tables
            .event_ids
            .get((event.stream.as_str(), &*event.id))
            .map_err(storage)?
            .map(|v| v.value());
        let reason = match known {
            Some(version) => format!(
                "event id {:?} of the import's stream '{}' version {} is already in that stream in this store (version {version})",
                event.id, event.stream, event.version
            ),
            None if !seen.insert((event.stream.as_str(), &*event.id)) => format!(
                "event id {:?} is twice in stream '{}' within the import",
                event.id, event.stream
            ),
            None => continue,
        };
        return Ok(Err(EventStoreError::InvalidRequest { reason }));
    }
    for event in events {
        buffer.clear();
        codec::encode_event(
            buffer,
            &event.stream,
            event.version,
            event.recorded_ms,
            event.into(),
        );
        tables
            .events
            .insert(event.position, buffer.as_slice())
            .map_err(storage)?;
        tables
            .stream_events
            .insert((event.stream.as_str(), event.version), event.position)
            .map_err(storage)?;
        tables
            .category_events
            .insert(
                (event.stream.category().as_str(), event.position),
                event.version,
            )
            .map_err(storage)?;
        tables
            .event_ids
            .insert((event.stream.as_str(), &*event.id), event.version)
            .map_err(storage)?;
    }
    for (stream, imported) in &streams {
        let updated = StreamRecord {
            deleted: false,
            last: Some((imported.last_version, imported.last_position)),
        };
        tables
            .streams
            .insert(stream.as_str(), updated.encode().as_slice())
            .map_err(storage)?;
    }
    *next_position = last.position + 1;
    Ok(Ok(()))
}

fn delete(
    tables: &mut Tables<'_>,
    stream: &StreamName,
    expected: ExpectedVersion,
) -> Answer<DeleteOutcome> {
    let record = read_record(tables, stream)?.unwrap_or_default();
    if record.deleted {
        return Ok(Err(EventStoreError::StreamDeleted {
            stream: stream.clone(),
        }));
    }
    if let Err(error) = check_expected_version(stream, expected, record.last_version()) {
        return Ok(Err(error));
    }
    let updated = StreamRecord {
        deleted: true,
        ..record
    };
    tables
        .streams
        .insert(stream.as_str(), updated.encode().as_slice())
        .map_err(storage)?;
    // The snapshot can no longer be read; free its space.
    tables.snapshots.remove(stream.as_str()).map_err(storage)?;
    Ok(Ok(DeleteOutcome {
        last_version: record.last_version(),
    }))
}

fn snapshot(
    tables: &mut Tables<'_>,
    stream: &StreamName,
    version: u64,
    snapshot_type: &str,
    data: &[u8],
    recorded_ms: i64,
) -> Answer<()> {
    let Some(record) = read_record(tables, stream)? else {
        return Ok(Err(EventStoreError::StreamNotFound {
            stream: stream.clone(),
        }));
    };
    if record.deleted {
        return Ok(Err(EventStoreError::StreamDeleted {
            stream: stream.clone(),
        }));
    }
    let last_version = record.last_version();
    if last_version.is_none_or(|last| version > last) {
        return Ok(Err(EventStoreError::SnapshotAheadOfStream {
            stream: stream.clone(),
            version,
            last_version,
        }));
    }
    if let Some(stored) = tables.snapshots.get(stream.as_str()).map_err(storage)? {
        let stored_version = codec::snapshot_version(stream, stored.value())?;
        if stored_version > version {
            return Ok(Err(EventStoreError::SnapshotOutdated {
                stream: stream.clone(),
                version,
                stored_version,
            }));
        }
    }
    let bytes = codec::encode_snapshot(version, recorded_ms, snapshot_type, data);
    tables
        .snapshots
        .insert(stream.as_str(), bytes.as_slice())
        .map_err(storage)?;
    Ok(Ok(()))
}
