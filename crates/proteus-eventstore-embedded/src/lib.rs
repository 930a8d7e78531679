//! The embedded [`EventStore`]: one redb file, `<data_dir>/eventstore.redb`.
//!
//! Tables (module `tables`): `events` (position → event, the `$all` feed), `stream_events`
//! (`(stream, version)` → position), `category_events` (`(category, position)`), `streams`
//! (last version and position, deleted flag), `event_ids` (`(stream, id)` → version, for
//! idempotency) and `snapshots` (the latest per stream).
//!
//! Writes go through one writer thread that group-commits them (module `writer`): an append
//! returns only after the redb transaction holding it committed with
//! `Durability::Immediate` (fsync), and all events of one append are in the same transaction,
//! so a crash keeps all or none of them. Positions are handed out by that one writer in commit
//! order, and a read transaction sees whole commits only, so a reader never sees position
//! N+1 without N. (An import, `proteus migrate --to embedded:DIR`, writes another store's
//! positions as they were, gaps included; appends then continue after the last one.) Reads run on tokio's blocking pool with their own read transaction.

mod codec;
mod tables;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use proteus_eventstore::limits::{
    READ_SCAN_EVENTS_MAX, ValidatedAppend, validate_filter, validate_read_count, validate_snapshot,
    validate_wait,
};
use proteus_eventstore::{
    Aggregate, AppendOutcome, Category, DeleteOutcome, Direction, EventStore, EventStoreError,
    ExpectedVersion, FeedPage, ReadFilter, RecordedEvent, Snapshot, StreamInfo, StreamName,
    StreamPage,
};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::codec::StreamRecord;
use crate::tables::{
    CATEGORY_EVENTS, EVENT_IDS, EVENTS, SNAPSHOTS, STREAM_EVENTS, STREAMS, storage,
};
use crate::writer::{BatchLimits, Command, Request};

/// The name of the store's file inside the data directory.
pub const FILE_NAME: &str = "eventstore.redb";

/// Settings of the embedded store. Every queue and batch is bounded; the defaults suit a
/// small server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Most events one group commit writes. Bigger batches amortise the fsync over more
    /// appends but make each wait longer. Default 20,000.
    pub write_batch_events_max: usize,
    /// Most bytes of event data one group commit writes. Default 32 MiB.
    pub write_batch_bytes_max: usize,
    /// Most writes waiting for the writer; further writers wait for room (back-pressure).
    /// Default 4,096.
    pub queue_writes_max: usize,
    /// Most bytes of writes waiting for the writer; further writers wait for room. Default
    /// 128 MiB.
    pub queue_bytes_max: usize,
    /// redb's page cache, in bytes. Default 64 MiB.
    pub cache_bytes_max: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            write_batch_events_max: 20_000,
            write_batch_bytes_max: 32 * 1024 * 1024,
            queue_writes_max: 4_096,
            queue_bytes_max: 128 * 1024 * 1024,
            cache_bytes_max: 64 * 1024 * 1024,
        }
    }
}

impl EmbeddedConfig {
    fn validate(&self) -> Result<(), EventStoreError> {
        let invalid = |reason: String| EventStoreError::InvalidRequest { reason };
        for (name, value) in [
            ("write_batch_events_max", self.write_batch_events_max),
            ("write_batch_bytes_max", self.write_batch_bytes_max),
            ("queue_writes_max", self.queue_writes_max),
            ("queue_bytes_max", self.queue_bytes_max),
        ] {
            if value == 0 {
                return Err(invalid(format!("{name} is 0; it must be at least 1")));
            }
        }
        // The queue's byte bound is a semaphore counted in u32 permits.
        if self.queue_bytes_max > u32::MAX as usize {
            return Err(invalid(format!(
                "queue_bytes_max is {}, the most is {} (4 GiB)",
                self.queue_bytes_max,
                u32::MAX
            )));
        }
        Ok(())
    }
}

/// The embedded event store. Clones share the same store.
#[derive(Clone)]
pub struct EmbeddedEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    /// `None` once closed.
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    queue_bytes: Arc<Semaphore>,
    queue_bytes_max: usize,
    head: watch::Receiver<u64>,
    writer: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Let the writer finish what is queued so the file is released when this returns.
        if let Ok(mut requests) = self.requests.lock() {
            requests.take();
        }
        if let Ok(mut writer) = self.writer.lock()
            && let Some(handle) = writer.take()
        {
            let _ = handle.join();
        }
    }
}

fn unavailable() -> EventStoreError {
    EventStoreError::Unavailable {
        reason: "the event store was closed (the server is shutting down)".into(),
    }
}

impl EmbeddedEventStore {
    /// Opens (or creates) `<data_dir>/eventstore.redb` and starts its writer thread.
    pub fn open(data_dir: &Path, config: EmbeddedConfig) -> Result<Self, EventStoreError> {
        config.validate()?;
        std::fs::create_dir_all(data_dir).map_err(|e| {
            storage(format!(
                "cannot create the data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(FILE_NAME);
        let db = Database::builder()
            .set_cache_size(config.cache_bytes_max)
            .create(&path)
            .map_err(|e| storage(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(storage)?;
        txn.open_table(EVENTS).map_err(storage)?;
        txn.open_table(STREAM_EVENTS).map_err(storage)?;
        txn.open_table(CATEGORY_EVENTS).map_err(storage)?;
        txn.open_table(STREAMS).map_err(storage)?;
        txn.open_table(EVENT_IDS).map_err(storage)?;
        txn.open_table(SNAPSHOTS).map_err(storage)?;
        txn.commit().map_err(storage)?;
        let db = Arc::new(db);
        let head = {
            let txn = db.begin_read().map_err(storage)?;
            head_position(&txn)?
        };
        let (head_sender, head_receiver) = watch::channel(head);
        let (sender, receiver) = mpsc::channel(config.queue_writes_max);
        let limits = BatchLimits {
            events_max: config.write_batch_events_max,
            bytes_max: config.write_batch_bytes_max,
        };
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("eventstore-writer".into())
            .spawn(move || writer::run(writer_db, receiver, limits, head_sender))
            .map_err(|e| storage(format!("cannot start the writer thread: {e}")))?;
        Ok(EmbeddedEventStore {
            inner: Arc::new(Inner {
                db,
                requests: Mutex::new(Some(sender)),
                queue_bytes: Arc::new(Semaphore::new(config.queue_bytes_max)),
                queue_bytes_max: config.queue_bytes_max,
                head: head_receiver,
                writer: Mutex::new(Some(writer)),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// Queues a write and waits for its answer, which comes after its commit.
    async fn write<T>(
        &self,
        events: usize,
        bytes: usize,
        command: impl FnOnce(oneshot::Sender<Result<T, EventStoreError>>) -> Command,
    ) -> Result<T, EventStoreError> {
        let sender = self
            .inner
            .requests
            .lock()
            .map_err(|_| unavailable())?
            .clone()
            .ok_or_else(unavailable)?;
        let permits = bytes.clamp(1, self.inner.queue_bytes_max) as u32;
        let permit = self
            .inner
            .queue_bytes
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| unavailable())?;
        let (reply, answer) = oneshot::channel();
        let request = Request {
            command: command(reply),
            events,
            bytes,
            _permit: permit,
        };
        sender.send(request).await.map_err(|_| unavailable())?;
        drop(sender);
        answer.await.map_err(|_| EventStoreError::Unavailable {
            reason: "the event store's writer stopped before answering; the write may or may not have been committed, so retry it with the same event ids".into(),
        })?
    }

    /// Writes `events`, in position order, exactly as another store recorded them (positions,
    /// versions, ids and times kept): what `proteus migrate --to embedded:DIR` uses. They must
    /// all come after every position this store has handed out, and each stream's versions
    /// must continue its own without gap; appends then continue after the last imported
    /// position. Refused, writing nothing, when any of that does not hold, when a stream is
    /// deleted here, when an event id is already in its stream, or over
    /// [`proteus_eventstore::IMPORT_EVENTS_MAX`]. Committed with fsync like an append.
    pub async fn import(&self, events: Vec<RecordedEvent>) -> Result<(), EventStoreError> {
        if events.is_empty() {
            return Ok(());
        }
        // Checked before queueing too (the writer checks the rest), so a huge import never
        // takes the queue.
        proteus_eventstore::limits::check_import_count(events.len())?;
        let bytes = events
            .iter()
            .map(|event| codec::EventParts::from(event).bytes())
            .sum();
        let count = events.len();
        self.write(count, bytes, move |reply| Command::Import { events, reply })
            .await
    }

    /// Runs a read on the blocking pool with its own read transaction.
    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&ReadTransaction) -> Result<T, EventStoreError> + Send + 'static,
    ) -> Result<T, EventStoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(unavailable());
        }
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(storage)?;
            work(&txn)
        })
        .await
        .map_err(|e| storage(format!("a read task failed: {e}")))?
    }
}

/// The last committed position (0 when the store is empty).
fn head_position(txn: &ReadTransaction) -> Result<u64, EventStoreError> {
    let events = txn.open_table(EVENTS).map_err(storage)?;
    Ok(events
        .last()
        .map_err(storage)?
        .map_or(0, |(k, _)| k.value()))
}

fn stream_record(
    txn: &ReadTransaction,
    stream: &StreamName,
) -> Result<Option<StreamRecord>, EventStoreError> {
    let streams = txn.open_table(STREAMS).map_err(storage)?;
    match streams.get(stream.as_str()).map_err(storage)? {
        Some(value) => Ok(Some(StreamRecord::decode(stream.as_str(), value.value())?)),
        None => Ok(None),
    }
}

fn read_event(
    events: &redb::ReadOnlyTable<u64, &'static [u8]>,
    position: u64,
    filter: Option<&ReadFilter>,
) -> Result<Option<RecordedEvent>, EventStoreError> {
    match events.get(position).map_err(storage)? {
        Some(value) => codec::decode_event(position, value.value(), filter),
        None => Err(EventStoreError::Storage(format!(
            "an index points at position {position}, which has no event; restore the store from a backup"
        ))),
    }
}

/// Entries a walk over `events` skips before it seeks instead: past that, a B-tree descent
/// costs less than stepping over the entries of other streams.
const WALK_SKIP_ENTRIES_MAX: usize = 32;

/// The events at `positions` (ascending), all of `stream`. Positions of one stream are often
/// near each other (appends of many events are contiguous in `$all`), so the events table is
/// walked with one cursor, seeking again only across long gaps, rather than descended once
/// per event.
fn read_events_ascending(
    events_table: &redb::ReadOnlyTable<u64, &'static [u8]>,
    positions: &[u64],
    stream: &StreamName,
) -> Result<Vec<RecordedEvent>, EventStoreError> {
    let missing = |position: u64| {
        EventStoreError::Storage(format!(
            "an index points at position {position}, which has no event; restore the store from a backup"
        ))
    };
    let mut events = Vec::with_capacity(positions.len());
    let mut cursor: Option<redb::Range<'_, u64, &'static [u8]>> = None;
    for &position in positions {
        let mut found = None;
        if let Some(walk) = cursor.as_mut() {
            for entry in walk.by_ref().take(WALK_SKIP_ENTRIES_MAX) {
                let (key, value) = entry.map_err(storage)?;
                match key.value().cmp(&position) {
                    std::cmp::Ordering::Less => continue,
                    std::cmp::Ordering::Equal => found = Some(value),
                    std::cmp::Ordering::Greater => return Err(missing(position)),
                }
                break;
            }
        }
        let value = match found {
            Some(value) => value,
            None => {
                let mut walk = events_table.range(position..).map_err(storage)?;
                let value = match walk.next() {
                    Some(entry) => {
                        let (key, value) = entry.map_err(storage)?;
                        if key.value() != position {
                            return Err(missing(position));
                        }
                        value
                    }
                    None => return Err(missing(position)),
                };
                cursor = Some(walk);
                value
            }
        };
        events.extend(codec::decode_event_of(
            position,
            value.value(),
            None,
            Some(stream),
        )?);
    }
    Ok(events)
}

fn read_stream_page(
    txn: &ReadTransaction,
    stream: &StreamName,
    from_version: u64,
    direction: Direction,
    max_count: usize,
) -> Result<StreamPage, EventStoreError> {
    let record = stream_record(txn, stream)?;
    let last_version = match record {
        Some(record) if record.deleted => {
            return Err(EventStoreError::StreamDeleted {
                stream: stream.clone(),
            });
        }
        Some(StreamRecord {
            last: Some((version, _)),
            ..
        }) => version,
        _ => {
            return Err(EventStoreError::StreamNotFound {
                stream: stream.clone(),
            });
        }
    };
    let head_position = head_position(txn)?;
    let index = txn.open_table(STREAM_EVENTS).map_err(storage)?;
    let events_table = txn.open_table(EVENTS).map_err(storage)?;
    let name = stream.as_str();
    let mut events = Vec::new();
    match direction {
        Direction::Forward => {
            if from_version <= last_version {
                let positions: Vec<u64> = index
                    .range((name, from_version)..=(name, last_version))
                    .map_err(storage)?
                    .take(max_count)
                    .map(|entry| entry.map(|(_, position)| position.value()))
                    .collect::<Result<_, _>>()
                    .map_err(storage)?;
                events = read_events_ascending(&events_table, &positions, stream)?;
            }
            let next_version = events.last().map_or(from_version, |e| e.version + 1);
            Ok(StreamPage {
                stream: stream.clone(),
                events,
                next_version,
                is_end: next_version > last_version,
                last_version,
                head_position,
            })
        }
        Direction::Backward => {
            let start = from_version.min(last_version);
            for entry in index
                .range((name, 0)..=(name, start))
                .map_err(storage)?
                .rev()
                .take(max_count)
            {
                let (_, position) = entry.map_err(storage)?;
                events.extend(read_event(&events_table, position.value(), None)?);
            }
            let lowest = events.last().map_or(0, |e| e.version);
            Ok(StreamPage {
                stream: stream.clone(),
                events,
                next_version: lowest.saturating_sub(1),
                is_end: lowest == 0,
                last_version,
                head_position,
            })
        }
    }
}

fn read_all_page(
    txn: &ReadTransaction,
    from_position: u64,
    direction: Direction,
    max_count: usize,
    filter: &ReadFilter,
) -> Result<FeedPage, EventStoreError> {
    let head_position = head_position(txn)?;
    let table = txn.open_table(EVENTS).map_err(storage)?;
    let filter = (!filter.is_empty()).then_some(filter);
    let mut events = Vec::new();
    let mut last_scanned = None;
    let mut scanned = 0;
    match direction {
        Direction::Forward => {
            for entry in table.range(from_position..).map_err(storage)? {
                if events.len() == max_count || scanned == READ_SCAN_EVENTS_MAX {
                    break;
                }
                let (key, value) = entry.map_err(storage)?;
                let position = key.value();
                scanned += 1;
                last_scanned = Some(position);
                events.extend(codec::decode_event(position, value.value(), filter)?);
            }
            let next_position = match last_scanned {
                Some(position) => position + 1,
                None => from_position.max(head_position + 1),
            };
            Ok(FeedPage {
                events,
                next_position,
                is_end: next_position > head_position,
                head_position,
            })
        }
        Direction::Backward => {
            let mut range = table.range(..=from_position).map_err(storage)?.rev();
            let mut exhausted = true;
            for entry in range.by_ref() {
                let (key, value) = entry.map_err(storage)?;
                let position = key.value();
                scanned += 1;
                last_scanned = Some(position);
                events.extend(codec::decode_event(position, value.value(), filter)?);
                if events.len() == max_count || scanned == READ_SCAN_EVENTS_MAX {
                    exhausted = false;
                    break;
                }
            }
            let is_end = exhausted || range.next().is_none();
            Ok(FeedPage {
                events,
                next_position: if is_end {
                    0
                } else {
                    last_scanned.map_or(0, |p| p.saturating_sub(1))
                },
                is_end,
                head_position,
            })
        }
    }
}

fn read_category_page(
    txn: &ReadTransaction,
    category: &Category,
    from_position: u64,
    max_count: usize,
    filter: &ReadFilter,
) -> Result<FeedPage, EventStoreError> {
    let head_position = head_position(txn)?;
    let index = txn.open_table(CATEGORY_EVENTS).map_err(storage)?;
    let events_table = txn.open_table(EVENTS).map_err(storage)?;
    let filter = (!filter.is_empty()).then_some(filter);
    let name = category.as_str();
    let mut range = index
        .range((name, from_position)..=(name, u64::MAX))
        .map_err(storage)?;
    let mut events = Vec::new();
    let mut last_scanned = None;
    let mut scanned = 0;
    let mut exhausted = true;
    for entry in range.by_ref() {
        let (key, _) = entry.map_err(storage)?;
        let position = key.value().1;
        scanned += 1;
        last_scanned = Some(position);
        events.extend(read_event(&events_table, position, filter)?);
        if events.len() == max_count || scanned == READ_SCAN_EVENTS_MAX {
            exhausted = false;
            break;
        }
    }
    let is_end = exhausted || range.next().is_none();
    // At the end, nothing of the category lies below the head: continue after it.
    let next_position = if is_end {
        from_position.max(head_position + 1)
    } else {
        last_scanned.map_or(from_position, |p| p + 1)
    };
    Ok(FeedPage {
        events,
        next_position,
        is_end,
        head_position,
    })
}

#[async_trait]
impl EventStore for EmbeddedEventStore {
    async fn append_validated(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        append: ValidatedAppend,
    ) -> Result<AppendOutcome, EventStoreError> {
        let bytes = append.bytes();
        let events = append.into_events();
        let count = events.len();
        let stream = stream.clone();
        self.write(count, bytes, move |reply| Command::Append {
            stream,
            expected,
            events,
            reply,
        })
        .await
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<DeleteOutcome, EventStoreError> {
        let stream = stream.clone();
        self.write(0, 1, move |reply| Command::Delete {
            stream,
            expected,
            reply,
        })
        .await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_version: u64,
        direction: Direction,
        max_count: usize,
    ) -> Result<StreamPage, EventStoreError> {
        validate_read_count(max_count)?;
        let stream = stream.clone();
        self.read(move |txn| read_stream_page(txn, &stream, from_version, direction, max_count))
            .await
    }

    async fn read_category(
        &self,
        category: &Category,
        from_position: u64,
        max_count: usize,
        filter: &ReadFilter,
    ) -> Result<FeedPage, EventStoreError> {
        validate_read_count(max_count)?;
        validate_filter(filter)?;
        let (category, filter) = (category.clone(), filter.clone());
        self.read(move |txn| read_category_page(txn, &category, from_position, max_count, &filter))
            .await
    }

    async fn read_all(
        &self,
        from_position: u64,
        direction: Direction,
        max_count: usize,
        filter: &ReadFilter,
    ) -> Result<FeedPage, EventStoreError> {
        validate_read_count(max_count)?;
        validate_filter(filter)?;
        let filter = filter.clone();
        self.read(move |txn| read_all_page(txn, from_position, direction, max_count, &filter))
            .await
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo, EventStoreError> {
        let stream = stream.clone();
        self.read(move |txn| {
            let Some(record) = stream_record(txn, &stream)? else {
                return Err(EventStoreError::StreamNotFound { stream });
            };
            let snapshots = txn.open_table(SNAPSHOTS).map_err(storage)?;
            let snapshot_version = match snapshots.get(stream.as_str()).map_err(storage)? {
                Some(value) => Some(codec::snapshot_version(&stream, value.value())?),
                None => None,
            };
            Ok(StreamInfo {
                stream,
                last_version: record.last_version(),
                last_position: record.last.map(|(_, position)| position),
                deleted: record.deleted,
                snapshot_version,
            })
        })
        .await
    }

    async fn put_snapshot(
        &self,
        stream: &StreamName,
        version: u64,
        snapshot_type: &str,
        data: Bytes,
    ) -> Result<(), EventStoreError> {
        validate_snapshot(snapshot_type, &data)?;
        let (stream, snapshot_type) = (stream.clone(), snapshot_type.to_owned());
        let bytes = data.len() + snapshot_type.len();
        self.write(0, bytes, move |reply| Command::Snapshot {
            stream,
            version,
            snapshot_type,
            data,
            reply,
        })
        .await
    }

    /// One read transaction and one blocking-pool hop for the snapshot and the events after it
    /// (the port's default takes two of each), so loading an aggregate sees one consistent
    /// state and costs one round trip.
    async fn read_aggregate(
        &self,
        stream: &StreamName,
        max_count: usize,
    ) -> Result<Aggregate, EventStoreError> {
        validate_read_count(max_count)?;
        let stream = stream.clone();
        self.read(move |txn| {
            let snapshots = txn.open_table(SNAPSHOTS).map_err(storage)?;
            let snapshot = match snapshots.get(stream.as_str()).map_err(storage)? {
                Some(value) => Some(codec::decode_snapshot(&stream, value.value())?),
                None => None,
            };
            let from_version = snapshot.as_ref().map_or(0, |s| s.version + 1);
            let page = read_stream_page(txn, &stream, from_version, Direction::Forward, max_count)?;
            Ok(Aggregate::from_page(&stream, snapshot, page))
        })
        .await
    }

    async fn get_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, EventStoreError> {
        let stream = stream.clone();
        self.read(move |txn| {
            if stream_record(txn, &stream)?.is_some_and(|r| r.deleted) {
                return Err(EventStoreError::StreamDeleted { stream });
            }
            let snapshots = txn.open_table(SNAPSHOTS).map_err(storage)?;
            match snapshots.get(stream.as_str()).map_err(storage)? {
                Some(value) => Ok(Some(codec::decode_snapshot(&stream, value.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn wait_for_position(
        &self,
        after: u64,
        timeout: Duration,
    ) -> Result<bool, EventStoreError> {
        validate_wait(timeout)?;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(unavailable());
        }
        let mut head = self.inner.head.clone();
        if *head.borrow_and_update() > after {
            return Ok(true);
        }
        match tokio::time::timeout(timeout, head.wait_for(|position| *position > after)).await {
            Ok(Ok(_)) => Ok(true),
            // The writer is gone: the store was closed.
            Ok(Err(_)) => Err(unavailable()),
            Err(_) => Ok(false),
        }
    }

    async fn close(&self) -> Result<(), EventStoreError> {
        self.inner.closed.store(true, Ordering::Release);
        // Dropping the sender lets the writer drain the queue and stop.
        self.inner
            .requests
            .lock()
            .map_err(|_| unavailable())?
            .take();
        let handle = self.inner.writer.lock().map_err(|_| unavailable())?.take();
        if let Some(handle) = handle {
            tokio::task::spawn_blocking(move || handle.join())
                .await
                .map_err(|e| storage(format!("cannot stop the writer: {e}")))?
                .map_err(|_| storage("the writer thread panicked"))?;
        }
        Ok(())
    }
}
