//! [`MemoryEventStore`]: the [`EventStore`] port in process memory, for tests and for runtimes
//! that need no durability. Keeps every promise of the port except surviving the process.
//!
//! Everything sits behind one lock: an append checks the tombstone, idempotency and the
//! expected version, then writes all its events, at consecutive positions, before the lock is
//! released, so readers see whole appends only and positions are gap-free from 1. The committed
//! head is published (and waiters woken) while the lock is still held, so a reader woken for
//! position N can read it, and the head never goes back.
//!
//! [`EventStore::wait_for_position`] needs no runtime: waiters park their `Waker` beside the
//! head and are woken by the commit that moves it past them; timeouts come from
//! `proteus-timer` (one small thread shared by the process, started by the first wait that
//! needs it).
//!
//! [`EventStore::close`] closes a handle (and its clones): later calls through it fail with
//! [`EventStoreError::Unavailable`] and its waits end. The events stay in memory as long as
//! some handle holds them; [`MemoryEventStore::reopen`] gives a new, open handle over them,
//! which is what opening the same storage again is for a durable store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use proteus_timer::{Wait, WaitUntil};

use crate::error::EventStoreError;
use crate::event::{
    Aggregate, AppendOutcome, DeleteOutcome, Direction, ExpectedVersion, FeedPage, ProposedEvent,
    ReadFilter, RecordedEvent, Snapshot, StreamInfo, StreamPage,
};
use crate::limits::{
    Idempotency, READ_SCAN_EVENTS_MAX, ValidatedAppend, check_expected_version, check_idempotency,
    validate_filter, validate_read_count, validate_snapshot, validate_wait,
};
use crate::name::{Category, StreamName};
use crate::store::EventStore;

/// An event store in memory. Clones share the store and its open or closed state;
/// [`reopen`](Self::reopen) shares the store with a state of its own.
#[derive(Clone, Default)]
pub struct MemoryEventStore {
    shared: Arc<Shared>,
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for MemoryEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEventStore")
            .field("head_position", &self.shared.read().head())
            .field("closed", &self.closed.load(Ordering::Acquire))
            .finish()
    }
}

#[derive(Default)]
struct Shared {
    state: RwLock<State>,
    waiters: Mutex<Waiters>,
}

impl Shared {
    // A poisoned lock only means another thread panicked mid-call; writes change the state
    // only after every check, so it is still whole.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a new head and wakes the waits it ends. Called with the state's write lock
    /// held, after the events below `head` are in the state.
    fn publish(&self, head: u64) {
        let woken;
        {
            let mut waiters = self.waiters();
            waiters.head = waiters.head.max(head);
            let head = waiters.head;
            woken = waiters.waiting.take_where(|after| *after < head);
        }
        woken.into_iter().for_each(Waker::wake);
    }

    /// Wakes every wait, so waits of a closed handle end.
    fn wake_all(&self) {
        let woken = self.waiters().waiting.take_all();
        woken.into_iter().for_each(Waker::wake);
    }
}

/// The published head and the waits parked on it.
#[derive(Default)]
struct Waiters {
    head: u64,
    /// Per wait: the position it waits to be passed.
    waiting: proteus_timer::Parked<u64>,
}

#[derive(Default)]
struct State {
    /// The `$all` feed: the event at position `p` is `events[p - 1]`.
    events: Vec<RecordedEvent>,
    streams: HashMap<StreamName, StreamState>,
    /// The positions of each category's events, ascending.
    categories: HashMap<Category, Vec<u64>>,
}

#[derive(Default)]
struct StreamState {
    deleted: bool,
    /// `(last_version, last_position)`, `None` before the first event.
    last: Option<(u64, u64)>,
    /// The position of each version (emptied by a tombstone).
    positions: Vec<u64>,
    /// The version of each event id (emptied by a tombstone).
    ids: HashMap<String, u64>,
    snapshot: Option<Snapshot>,
}

impl StreamState {
    fn last_version(&self) -> Option<u64> {
        self.last.map(|(version, _)| version)
    }
}

impl State {
    /// The last committed position (0 when the store is empty).
    fn head(&self) -> u64 {
        self.events.len() as u64
    }

    fn event(&self, position: u64) -> &RecordedEvent {
        // Positions come from the indexes, which only hold positions of stored events.
        &self.events[position as usize - 1]
    }
}

fn unavailable() -> EventStoreError {
    EventStoreError::Unavailable {
        reason: "the event store was closed (the server is shutting down)".into(),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl MemoryEventStore {
    /// An empty store.
    pub fn new() -> MemoryEventStore {
        MemoryEventStore::default()
    }

    /// A new handle over the same events, open even when this one was closed: what opening the
    /// same storage again is for a durable store.
    pub fn reopen(&self) -> MemoryEventStore {
        MemoryEventStore {
            shared: self.shared.clone(),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    fn check_open(&self) -> Result<(), EventStoreError> {
        if self.closed.load(Ordering::Acquire) {
            Err(unavailable())
        } else {
            Ok(())
        }
    }

    /// The state for a read, once the handle is known to be open.
    fn read(&self) -> Result<RwLockReadGuard<'_, State>, EventStoreError> {
        self.check_open()?;
        Ok(self.shared.read())
    }

    /// The state for a write. The handle is checked under the lock, so no write starts after
    /// [`EventStore::close`] returned.
    fn write(&self) -> Result<RwLockWriteGuard<'_, State>, EventStoreError> {
        let state = self.shared.write();
        self.check_open()?;
        Ok(state)
    }
}

fn append_events(
    state: &mut State,
    stream: &StreamName,
    expected: ExpectedVersion,
    events: Vec<ProposedEvent>,
) -> Result<AppendOutcome, EventStoreError> {
    let first_position = state.head() + 1;
    let record = state.streams.get(stream);
    if record.is_some_and(|r| r.deleted) {
        return Err(EventStoreError::StreamDeleted {
            stream: stream.clone(),
        });
    }
    let last_version = record.and_then(StreamState::last_version);
    // A stream without events has no ids to match.
    if let Some(record) = record.filter(|r| r.last.is_some()) {
        let versions: Vec<Option<u64>> = events
            .iter()
            .map(|e| record.ids.get(&*e.id).copied())
            .collect();
        if let Idempotency::Duplicate { first_version } =
            check_idempotency(stream, &events, &versions)?
        {
            let last_version = first_version + events.len() as u64 - 1;
            return Ok(AppendOutcome {
                first_version,
                last_version,
                first_position: record.positions[first_version as usize],
                last_position: record.positions[last_version as usize],
                duplicate: true,
            });
        }
    }
    check_expected_version(stream, expected, last_version)?;
    let first_version = last_version.map_or(0, |v| v + 1);
    let count = events.len() as u64;
    let recorded_ms = now_ms();
    let category = stream.category();
    let record = state.streams.entry(stream.clone()).or_default();
    let category_positions = state.categories.entry(category).or_default();
    for (offset, event) in (0..).zip(events) {
        let (version, position) = (first_version + offset, first_position + offset);
        record.positions.push(position);
        record.ids.insert(event.id.to_string(), version);
        category_positions.push(position);
        state.events.push(RecordedEvent {
            stream: stream.clone(),
            version,
            position,
            id: event.id,
            event_type: event.event_type,
            schema_version: event.schema_version,
            data: event.data,
            metadata: event.metadata,
            recorded_ms,
        });
    }
    let (last_version, last_position) = (first_version + count - 1, first_position + count - 1);
    record.last = Some((last_version, last_position));
    Ok(AppendOutcome {
        first_version,
        last_version,
        first_position,
        last_position,
        duplicate: false,
    })
}

fn read_stream_page(
    state: &State,
    stream: &StreamName,
    from_version: u64,
    direction: Direction,
    max_count: usize,
) -> Result<StreamPage, EventStoreError> {
    let record = state.streams.get(stream);
    let last_version = match record {
        Some(record) if record.deleted => {
            return Err(EventStoreError::StreamDeleted {
                stream: stream.clone(),
            });
        }
        Some(StreamState {
            last: Some((version, _)),
            ..
        }) => *version,
        _ => {
            return Err(EventStoreError::StreamNotFound {
                stream: stream.clone(),
            });
        }
    };
    let positions = record.map_or(&[][..], |r| r.positions.as_slice());
    let head_position = state.head();
    let page = |events: Vec<RecordedEvent>, next_version: u64, is_end: bool| StreamPage {
        stream: stream.clone(),
        events,
        next_version,
        is_end,
        last_version,
        head_position,
    };
    match direction {
        Direction::Forward => {
            let events: Vec<RecordedEvent> = if from_version <= last_version {
                positions[from_version as usize..]
                    .iter()
                    .take(max_count)
                    .map(|&p| state.event(p).clone())
                    .collect()
            } else {
                Vec::new()
            };
            let next_version = events.last().map_or(from_version, |e| e.version + 1);
            Ok(page(events, next_version, next_version > last_version))
        }
        Direction::Backward => {
            let start = from_version.min(last_version) as usize;
            let events: Vec<RecordedEvent> = positions[..=start]
                .iter()
                .rev()
                .take(max_count)
                .map(|&p| state.event(p).clone())
                .collect();
            let lowest = events.last().map_or(0, |e| e.version);
            Ok(page(events, lowest.saturating_sub(1), lowest == 0))
        }
    }
}

/// Reads the positions of `candidates` (ascending or descending, as the read goes) that pass
/// `filter`: up to `max_count` events, examining at most [`READ_SCAN_EVENTS_MAX`]. Returns the
/// events, the last position examined, and whether every candidate was examined.
fn scan(
    state: &State,
    candidates: impl Iterator<Item = u64>,
    max_count: usize,
    filter: &ReadFilter,
) -> (Vec<RecordedEvent>, Option<u64>, bool) {
    let filter = (!filter.is_empty()).then_some(filter);
    let mut candidates = candidates.peekable();
    let mut events = Vec::new();
    let mut last_scanned = None;
    let mut scanned = 0;
    while events.len() < max_count && scanned < READ_SCAN_EVENTS_MAX {
        let Some(position) = candidates.next() else {
            break;
        };
        scanned += 1;
        last_scanned = Some(position);
        let event = state.event(position);
        if filter.is_none_or(|f| f.matches(event.stream.as_str(), &event.event_type)) {
            events.push(event.clone());
        }
    }
    let exhausted = candidates.peek().is_none();
    (events, last_scanned, exhausted)
}

fn read_all_page(
    state: &State,
    from_position: u64,
    direction: Direction,
    max_count: usize,
    filter: &ReadFilter,
) -> FeedPage {
    let head_position = state.head();
    match direction {
        Direction::Forward => {
            let (events, last_scanned, _) = scan(
                state,
                from_position.max(1)..=head_position,
                max_count,
                filter,
            );
            let next_position = match last_scanned {
                Some(position) => position + 1,
                None => from_position.max(head_position + 1),
            };
            FeedPage {
                events,
                next_position,
                is_end: next_position > head_position,
                head_position,
            }
        }
        Direction::Backward => {
            let start = from_position.min(head_position);
            let (events, last_scanned, is_end) = scan(state, (1..=start).rev(), max_count, filter);
            FeedPage {
                events,
                next_position: if is_end {
                    0
                } else {
                    last_scanned.map_or(0, |p| p.saturating_sub(1))
                },
                is_end,
                head_position,
            }
        }
    }
}

fn read_category_page(
    state: &State,
    category: &Category,
    from_position: u64,
    max_count: usize,
    filter: &ReadFilter,
) -> FeedPage {
    let head_position = state.head();
    let positions = state
        .categories
        .get(category)
        .map_or(&[][..], Vec::as_slice);
    let start = positions.partition_point(|&p| p < from_position);
    let (events, last_scanned, is_end) =
        scan(state, positions[start..].iter().copied(), max_count, filter);
    // At the end, nothing of the category lies below the head: continue after it.
    let next_position = if is_end {
        from_position.max(head_position + 1)
    } else {
        last_scanned.map_or(from_position, |p| p + 1)
    };
    FeedPage {
        events,
        next_position,
        is_end,
        head_position,
    }
}

fn get_snapshot(state: &State, stream: &StreamName) -> Result<Option<Snapshot>, EventStoreError> {
    match state.streams.get(stream) {
        Some(record) if record.deleted => Err(EventStoreError::StreamDeleted {
            stream: stream.clone(),
        }),
        Some(record) => Ok(record.snapshot.clone()),
        None => Ok(None),
    }
}

#[async_trait]
impl EventStore for MemoryEventStore {
    async fn append_validated(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        append: ValidatedAppend,
    ) -> Result<AppendOutcome, EventStoreError> {
        let mut state = self.write()?;
        let outcome = append_events(&mut state, stream, expected, append.into_events())?;
        if !outcome.duplicate {
            self.shared.publish(state.head());
        }
        Ok(outcome)
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<DeleteOutcome, EventStoreError> {
        let mut state = self.write()?;
        let record = state.streams.get(stream);
        if record.is_some_and(|r| r.deleted) {
            return Err(EventStoreError::StreamDeleted {
                stream: stream.clone(),
            });
        }
        let last_version = record.and_then(StreamState::last_version);
        check_expected_version(stream, expected, last_version)?;
        let record = state.streams.entry(stream.clone()).or_default();
        record.deleted = true;
        // Nothing can read or match them any more; the events stay in `$all`.
        record.positions = Vec::new();
        record.ids = HashMap::new();
        record.snapshot = None;
        Ok(DeleteOutcome { last_version })
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_version: u64,
        direction: Direction,
        max_count: usize,
    ) -> Result<StreamPage, EventStoreError> {
        validate_read_count(max_count)?;
        read_stream_page(&*self.read()?, stream, from_version, direction, max_count)
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
        Ok(read_category_page(
            &*self.read()?,
            category,
            from_position,
            max_count,
            filter,
        ))
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
        Ok(read_all_page(
            &*self.read()?,
            from_position,
            direction,
            max_count,
            filter,
        ))
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo, EventStoreError> {
        let state = self.read()?;
        let Some(record) = state.streams.get(stream) else {
            return Err(EventStoreError::StreamNotFound {
                stream: stream.clone(),
            });
        };
        Ok(StreamInfo {
            stream: stream.clone(),
            last_version: record.last_version(),
            last_position: record.last.map(|(_, position)| position),
            deleted: record.deleted,
            snapshot_version: record.snapshot.as_ref().map(|s| s.version),
        })
    }

    async fn put_snapshot(
        &self,
        stream: &StreamName,
        version: u64,
        snapshot_type: &str,
        data: Bytes,
    ) -> Result<(), EventStoreError> {
        validate_snapshot(snapshot_type, &data)?;
        let mut state = self.write()?;
        let Some(record) = state.streams.get_mut(stream) else {
            return Err(EventStoreError::StreamNotFound {
                stream: stream.clone(),
            });
        };
        if record.deleted {
            return Err(EventStoreError::StreamDeleted {
                stream: stream.clone(),
            });
        }
        let last_version = record.last_version();
        if last_version.is_none_or(|last| version > last) {
            return Err(EventStoreError::SnapshotAheadOfStream {
                stream: stream.clone(),
                version,
                last_version,
            });
        }
        if let Some(stored) = &record.snapshot
            && stored.version > version
        {
            return Err(EventStoreError::SnapshotOutdated {
                stream: stream.clone(),
                version,
                stored_version: stored.version,
            });
        }
        record.snapshot = Some(Snapshot {
            stream: stream.clone(),
            version,
            snapshot_type: snapshot_type.to_owned(),
            data,
            recorded_ms: now_ms(),
        });
        Ok(())
    }

    /// The snapshot and the events after it under one lock, so loading an aggregate sees one
    /// consistent state.
    async fn read_aggregate(
        &self,
        stream: &StreamName,
        max_count: usize,
    ) -> Result<Aggregate, EventStoreError> {
        validate_read_count(max_count)?;
        let state = self.read()?;
        let snapshot = get_snapshot(&state, stream)?;
        let from_version = snapshot.as_ref().map_or(0, |s| s.version + 1);
        let page = read_stream_page(&state, stream, from_version, Direction::Forward, max_count)?;
        Ok(Aggregate::from_page(stream, snapshot, page))
    }

    async fn get_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, EventStoreError> {
        get_snapshot(&*self.read()?, stream)
    }

    async fn wait_for_position(
        &self,
        after: u64,
        timeout: Duration,
    ) -> Result<bool, EventStoreError> {
        validate_wait(timeout)?;
        self.check_open()?;
        let deadline = Instant::now() + timeout;
        WaitUntil::new(
            PositionPassed {
                shared: &self.shared,
                closed: &self.closed,
                after,
            },
            deadline,
        )
        .await
    }

    async fn close(&self) -> Result<(), EventStoreError> {
        {
            // Under the write lock: a write in progress finishes first, later ones see it.
            let _state = self.shared.write();
            self.closed.store(true, Ordering::Release);
        }
        self.shared.wake_all();
        Ok(())
    }
}

/// A wait for the head to pass `after`, or for the handle to close (its deadline is the
/// [`WaitUntil`]'s).
struct PositionPassed<'a> {
    shared: &'a Shared,
    closed: &'a AtomicBool,
    after: u64,
}

impl Wait for PositionPassed<'_> {
    type Output = Result<bool, EventStoreError>;

    fn check_or_park(&self, slot: &mut Option<u64>, waker: &Waker) -> Option<Self::Output> {
        // The head is checked and the waker parked under one lock, which every commit takes
        // to publish a new head: no commit slips between them unnoticed.
        let mut waiters = self.shared.waiters();
        let done = if self.closed.load(Ordering::Acquire) {
            Some(Err(unavailable()))
        } else if waiters.head > self.after {
            Some(Ok(true))
        } else {
            None
        };
        match done {
            Some(done) => {
                waiters.waiting.unpark(slot);
                Some(done)
            }
            None => {
                waiters.waiting.park(slot, self.after, waker);
                None
            }
        }
    }

    fn unpark(&self, slot: &mut Option<u64>) {
        self.shared.waiters().waiting.unpark(slot);
    }

    fn timed_out(&self) -> Self::Output {
        Ok(false)
    }

    fn timer_failed(&self, reason: String) -> Self::Output {
        Err(EventStoreError::Unavailable { reason })
    }
}
