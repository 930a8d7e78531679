//! [`NatsEventStore`]: the `EventStore` port on JetStream: the store, its connection and
//! streams, what reads and writes share, and the port's implementation. Writes, reads, the
//! id index and scans are in the submodules.

mod ids;
mod read;
mod scan;
mod write;

use ids::{IdCacheMetrics, IdIndex, IndexSlot, id_key};
use read::{BackwardRest, BackwardStreamRest};
use scan::{FeedCursor, Parkable, ParkedScans, Scan, ScanReadMetrics, StreamCursor};

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::{GetStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{
    self, DiscardPolicy, RawMessageError, RawMessageErrorKind, RetentionPolicy, StorageType,
};
use async_nats::jetstream::{self, ErrorCode};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use proteus_eventstore::limits::{
    Idempotency, READ_SCAN_EVENTS_MAX, ValidatedAppend, check_expected_version, check_idempotency,
    validate_filter, validate_read_count, validate_snapshot, validate_wait,
};
use proteus_eventstore::{
    Aggregate, AppendOutcome, Category, DeleteOutcome, Direction, EVENTS_PER_APPEND_MAX,
    EventStore, EventStoreError, ExpectedVersion, FeedPage, ProposedEvent, ReadFilter,
    RecordedEvent, Snapshot, StreamInfo, StreamName, StreamPage,
};
use proteus_nats::client::next_fetched;
use tokio::sync::{Mutex, RwLock, RwLockReadGuard};

use crate::codec::{self, Record};
use crate::config::{NatsEventStoreConfig, redact};
use crate::error::{closed, corrupt, nats, storage};

/// Positions each JetStream message (one append) owns in the `$all` feed: the event at index
/// `i` of the message at stream sequence `s` is at position `(s - 1) * POSITIONS_PER_MESSAGE +
/// i + 1`. An append holds at most [`EVENTS_PER_APPEND_MAX`] events, so positions never
/// collide, grow with the sequence (commit order), and start at 1.
pub const POSITIONS_PER_MESSAGE: u64 = EVENTS_PER_APPEND_MAX as u64;
/// Bytes of headers and subject a message may carry beyond its payload, reserved when
/// checking sizes against the server's `max_payload`.
pub const HEADER_BYTES_RESERVED: usize = 2048;
/// Most probes of the search for the message holding a version before a read falls back to
/// scanning from the lower bound.
const SEARCH_PROBES_MAX: u32 = 64;
/// Most messages one fetch from a read consumer asks for.
const FETCH_MESSAGES_MAX: usize = 512;
/// Messages the first fetch of a read asks for at most, before it knows how many events a
/// message holds here: one message holds a whole append (up to 1,000 events), so asking for
/// as many messages as the read wants events could fetch a hundred times what it returns.
const FIRST_FETCH_MESSAGES_MAX: usize = 16;
/// Most bytes one fetch asks for (a larger single message is still fetched alone).
const FETCH_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most sequences one window of a backward `$all` read covers.
const BACKWARD_WINDOW_MAX: u64 = 1024;
/// After a wake-up message, `wait_for_position` re-checks this soon, a few times, since the
/// stream may store the message a moment after core NATS delivered it.
const QUICK_RECHECK_MS: u64 = 5;
const QUICK_RECHECKS: u32 = 4;
/// Ephemeral read consumers are removed by the server after this idle time if the adapter
/// could not delete them itself.
const READ_CONSUMER_IDLE_MS: u64 = 30_000;

/// How many messages the next fetch of a read asks for, to find `events_wanted` more events
/// (or matching events) when `messages_seen` messages gave `events_seen` of them: the
/// average so far, plus one for the remainder; as many as allowed while none has been seen.
fn messages_to_fetch(events_wanted: usize, messages_seen: usize, events_seen: usize) -> usize {
    if events_seen == 0 {
        return FETCH_MESSAGES_MAX;
    }
    (events_wanted.saturating_mul(messages_seen) / events_seen + 1).clamp(1, FETCH_MESSAGES_MAX)
}

/// The position of the event at `index` in the message at stream sequence `seq`.
pub fn position_of(seq: u64, index: u64) -> u64 {
    (seq - 1) * POSITIONS_PER_MESSAGE + index + 1
}

/// The stream sequence and index a position names (position 0: the first message).
fn seq_of(position: u64) -> u64 {
    if position == 0 {
        1
    } else {
        (position - 1) / POSITIONS_PER_MESSAGE + 1
    }
}

fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

/// A stored message reduced to what the adapter needs.
struct Msg {
    seq: u64,
    subject: String,
    headers: Option<HeaderMap>,
    payload: Bytes,
    time_ms: i64,
}

impl From<StreamMessage> for Msg {
    fn from(message: StreamMessage) -> Self {
        Msg {
            seq: message.sequence,
            subject: message.subject.to_string(),
            headers: Some(message.headers),
            payload: message.payload,
            time_ms: (message.time.unix_timestamp_nanos() / 1_000_000) as i64,
        }
    }
}

/// A stream as its subject's newest message says.
enum State {
    None,
    Live {
        last: Msg,
        first_version: u64,
        count: u64,
    },
    Deleted {
        last_version: Option<u64>,
        last_position: Option<u64>,
    },
}

impl State {
    /// A live stream's end; for a stream that never existed or was deleted, the error a read
    /// or a snapshot of it gets.
    fn live(self, stream: &StreamName) -> Result<LiveEnd, EventStoreError> {
        match self {
            State::None => Err(EventStoreError::StreamNotFound {
                stream: stream.clone(),
            }),
            State::Deleted { .. } => Err(EventStoreError::StreamDeleted {
                stream: stream.clone(),
            }),
            State::Live {
                last,
                first_version,
                count,
            } => Ok(LiveEnd {
                last,
                first_version,
                count,
            }),
        }
    }
}

/// The end of a live stream: its subject's newest message and the versions it holds.
struct LiveEnd {
    last: Msg,
    /// The version of the newest message's first event.
    first_version: u64,
    /// How many events the newest message holds (at least one).
    count: u64,
}

impl LiveEnd {
    fn last_version(&self) -> u64 {
        self.first_version + self.count - 1
    }

    /// Whether the newest message, read with the end, holds every event from `version` on:
    /// a read from there needs no consumer.
    fn holds_from(&self, version: u64) -> bool {
        version >= self.first_version
    }
}

/// The events stream's end and the `$all` feed's head at one moment.
struct FeedEnd {
    last_seq: u64,
    /// The newest event's position (0 when there is none).
    head: u64,
    /// When the events stream was created: a stream deleted and created again is another.
    stream_created_ns: i128,
}

/// The NATS JetStream event store. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct NatsEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: NatsEventStoreConfig,
    /// The URL with secrets redacted, for messages.
    url: String,
    client: async_nats::Client,
    js: jetstream::Context,
    events: stream::Stream,
    snapshots: stream::Stream,
    closed: AtomicBool,
    /// Writes hold it shared; `close` takes it exclusively to let them finish.
    gate: RwLock<()>,
    /// Per event stream: its id index; the async mutex also serialises this process's writes
    /// to the stream, so they do not race each other at the server.
    indexes: StdMutex<HashMap<String, Arc<IndexSlot>>>,
    /// About how many ids `indexes` hold (exact after each eviction).
    cached_ids: AtomicUsize,
    /// Counts uses of indexes, so the least recently used can be evicted first.
    index_uses: AtomicU64,
    /// What the id cache does, for `/metrics`: a cache that keeps reading histories again is
    /// one too small for the streams being written (`id_cache_events_max`).
    id_cache_metrics: IdCacheMetrics,
    /// `(s, h)`: the newest events message at or below stream sequence `s` ends at position
    /// `h`. Messages never change, so this only moves forward.
    head: StdMutex<(u64, u64)>,
    /// Forward feed scans kept between pages (`read_forward`).
    parked_feed_scans: ParkedScans<FeedCursor>,
    /// Forward scans of one stream kept between pages (`stream_events`).
    parked_stream_scans: ParkedScans<StreamCursor>,
    /// What backward feed pages' windows held past the page (`read_backward`).
    parked_backward_reads: ParkedScans<FeedCursor, BackwardRest>,
    /// What backward pages of one stream read below the page (`stream_events_backward`).
    parked_backward_stream_reads: ParkedScans<StreamCursor, BackwardStreamRest>,
    /// How many times the client has (re)connected: a scan parked before the last
    /// reconnection may have lost its consumer with the server's memory, and is not resumed.
    connections: Arc<AtomicU64>,
}

fn jetstream_code<K: std::fmt::Debug>(kind: &K) -> Option<u64> {
    // The kinds of async-nats errors that wrap a JetStream API error print it as
    // `JetStream(Error { code: .., err_code: ErrorCode(n), .. })`.
    let text = format!("{kind:?}");
    let start = text.find("ErrorCode(")? + "ErrorCode(".len();
    let end = text[start..].find(')')? + start;
    text[start..end].parse().ok()
}

fn too_large(bytes: usize, max: usize, what: &'static str) -> EventStoreError {
    EventStoreError::LimitExceeded {
        limit: "nats_max_payload",
        what,
        value: bytes as u64,
        max: max as u64,
        hint: "the NATS server's max_payload (1 MB by default) bounds one message, and one append or snapshot is one message; raise max_payload on the server (16MB takes every append the event store allows) or write less at once",
    }
}

fn recorded(
    stream: &StreamName,
    msg: &Msg,
    first_version: u64,
    index: u64,
    event: ProposedEvent,
) -> RecordedEvent {
    RecordedEvent {
        stream: stream.clone(),
        version: first_version + index,
        position: position_of(msg.seq, index),
        id: event.id,
        event_type: event.event_type,
        schema_version: event.schema_version,
        data: event.data,
        metadata: event.metadata,
        recorded_ms: msg.time_ms,
    }
}

impl NatsEventStore {
    /// Whether its NATS server is reachable on this handle's connection and answers JetStream
    /// requests within `timeout` (for `/readyz` and `proteus_backend_up`); `Err` says why not.
    pub async fn check_health(&self, timeout: std::time::Duration) -> Result<(), String> {
        proteus_nats::client::check_health(&self.inner.client, &self.inner.config.url, timeout)
            .await
    }

    /// Connects to NATS, checks that JetStream answers, and creates the store's two streams if
    /// they do not exist (or, with `create_streams` off, refuses with `InvalidRequest`). Fails
    /// with [`EventStoreError::Unavailable`] when the server cannot be reached, saying how to
    /// start it.
    pub async fn open(config: NatsEventStoreConfig) -> Result<NatsEventStore, EventStoreError> {
        config
            .validate()
            .map_err(|reason| EventStoreError::InvalidRequest {
                reason: format!("invalid NATS event store settings: {reason}"),
            })?;
        let url = redact(&config.url);
        let connections = Arc::new(AtomicU64::new(0));
        let client = proteus_nats::client::connect(&proteus_nats::client::ClientSettings {
            url: &config.url,
            name: "proteus-eventstore",
            connect_timeout_ms: config.connect_timeout_ms,
            request_timeout_ms: config.request_timeout_ms,
            reconnect_delay_max_ms: config.reconnect_delay_max_ms,
            connections: Some(connections.clone()),
            security: &config.security,
        })
        .await
        .map_err(|reason| EventStoreError::Unavailable { reason })?;
        proteus_nats::client::check_replicas_supported(&client, &config.url, config.replicas)
            .map_err(|reason| EventStoreError::InvalidRequest {
                reason: format!("invalid NATS event store settings: {reason}"),
            })?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(ms(config.request_timeout_ms));
        let subject_prefix = &config.subject_prefix;
        let events_config = stream::Config {
            name: config.events_stream(),
            description: Some("Proteus event store: events and tombstones".into()),
            subjects: vec![format!("{subject_prefix}.s.>")],
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            storage: StorageType::File,
            num_replicas: config.replicas,
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            max_age: Duration::ZERO,
            allow_direct: true,
            // Events never change: refuse removals through the API.
            deny_delete: true,
            deny_purge: true,
            ..Default::default()
        };
        let snapshots_config = stream::Config {
            name: config.snapshots_stream(),
            description: Some("Proteus event store: the latest snapshot of each stream".into()),
            subjects: vec![format!("{subject_prefix}.snap.>")],
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            storage: StorageType::File,
            num_replicas: config.replicas,
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: 1,
            max_age: Duration::ZERO,
            allow_direct: true,
            ..Default::default()
        };
        let create = config.create_streams;
        let events = ensure_stream(&js, &url, events_config, create).await?;
        let snapshots = ensure_stream(&js, &url, snapshots_config, create).await?;
        let id_cache_metrics = IdCacheMetrics::new(&config.stream_prefix);
        let parked_feed_scans = ParkedScans::new(ScanReadMetrics::feeds(&config.stream_prefix));
        let parked_stream_scans = ParkedScans::new(ScanReadMetrics::streams(&config.stream_prefix));
        let parked_backward_reads =
            ParkedScans::new(ScanReadMetrics::backward_feeds(&config.stream_prefix));
        let parked_backward_stream_reads =
            ParkedScans::new(ScanReadMetrics::backward_streams(&config.stream_prefix));
        Ok(NatsEventStore {
            inner: Arc::new(Inner {
                config,
                url,
                client,
                js,
                events,
                snapshots,
                closed: AtomicBool::new(false),
                gate: RwLock::new(()),
                indexes: StdMutex::new(HashMap::new()),
                cached_ids: AtomicUsize::new(0),
                index_uses: AtomicU64::new(0),
                id_cache_metrics,
                head: StdMutex::new((0, 0)),
                parked_feed_scans,
                parked_stream_scans,
                parked_backward_reads,
                parked_backward_stream_reads,
                connections,
            }),
        })
    }

    pub fn config(&self) -> &NatsEventStoreConfig {
        &self.inner.config
    }

    fn check_open(&self) -> Result<(), EventStoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(closed())
        } else {
            Ok(())
        }
    }

    async fn write_gate(&self) -> Result<RwLockReadGuard<'_, ()>, EventStoreError> {
        let guard = self.inner.gate.read().await;
        self.check_open()?;
        Ok(guard)
    }

    fn error<E: std::fmt::Display + std::fmt::Debug>(
        &self,
        what: &str,
        error: E,
        write: bool,
    ) -> EventStoreError {
        nats(&self.inner.url, what, error, write)
    }

    fn subject(&self, stream: &StreamName) -> String {
        format!(
            "{}.s.{}.{}",
            self.inner.config.subject_prefix,
            codec::token(stream.category().as_str()),
            codec::token(stream.as_str())
        )
    }

    fn category_subjects(&self, category: &Category) -> String {
        format!(
            "{}.s.{}.*",
            self.inner.config.subject_prefix,
            codec::token(category.as_str())
        )
    }

    fn snapshot_subject(&self, stream: &StreamName) -> String {
        format!(
            "{}.snap.{}",
            self.inner.config.subject_prefix,
            codec::token(stream.as_str())
        )
    }

    /// The subjects a `$all` read needs: one category's when the filter's stream prefix
    /// names it (it contains a `-`), every stream's otherwise.
    fn all_subjects(&self, filter: &ReadFilter) -> String {
        match filter
            .stream_prefix
            .as_deref()
            .and_then(|p| p.split_once('-'))
        {
            Some((category, _)) if !category.is_empty() => format!(
                "{}.s.{}.*",
                self.inner.config.subject_prefix,
                codec::token(category)
            ),
            _ => format!("{}.s.>", self.inner.config.subject_prefix),
        }
    }

    /// The largest payload the server takes. Read from the client's own copy of the server's
    /// limit (one atomic load), not from `server_info()`, which clones the server's whole
    /// INFO, strings included: 0.4% of the server's time on small batched appends.
    fn payload_bytes_max(&self) -> usize {
        self.inner
            .client
            .max_payload()
            .saturating_sub(HEADER_BYTES_RESERVED)
    }

    fn stream_of(&self, msg: &Msg) -> Result<StreamName, EventStoreError> {
        let token = msg.subject.rsplit('.').next().unwrap_or_default();
        let name = codec::untoken(token).ok_or_else(|| {
            corrupt(
                &self.inner.config.events_stream(),
                msg.seq,
                format!("its subject '{}' does not name a stream", msg.subject),
            )
        })?;
        StreamName::parse(&name)
            .map_err(|e| corrupt(&self.inner.config.events_stream(), msg.seq, e))
    }

    fn record(&self, msg: &Msg) -> Result<Record, EventStoreError> {
        codec::record_of(msg.headers.as_ref())
            .map_err(|reason| corrupt(&self.inner.config.events_stream(), msg.seq, reason))
    }

    fn decode(&self, msg: &Msg, count: u64) -> Result<Vec<ProposedEvent>, EventStoreError> {
        codec::decode_events(&msg.payload, count)
            .map_err(|reason| corrupt(&self.inner.config.events_stream(), msg.seq, reason))
    }

    fn raw_error(
        &self,
        error: RawMessageError,
        what: &str,
    ) -> Result<Option<Msg>, EventStoreError> {
        match error.kind() {
            RawMessageErrorKind::NoMessageFound => Ok(None),
            _ => Err(self.error(what, error, false)),
        }
    }

    async fn last_on(
        &self,
        stream: &stream::Stream,
        subject: &str,
        what: &str,
    ) -> Result<Option<Msg>, EventStoreError> {
        match stream
            .raw_message_builder()
            .last_by_subject(subject)
            .send()
            .await
        {
            Ok(message) => Ok(Some(message.into())),
            Err(error) => self.raw_error(error, what),
        }
    }

    async fn next_on(
        &self,
        subject: &str,
        from_seq: u64,
        what: &str,
    ) -> Result<Option<Msg>, EventStoreError> {
        match self
            .inner
            .events
            .raw_message_builder()
            .next_by_subject(subject)
            .sequence(from_seq.max(1))
            .send()
            .await
        {
            Ok(message) => Ok(Some(message.into())),
            Err(error) => self.raw_error(error, what),
        }
    }

    async fn state(&self, stream: &StreamName, subject: &str) -> Result<State, EventStoreError> {
        let what = format!("reading the end of stream '{stream}'");
        let Some(last) = self.last_on(&self.inner.events, subject, &what).await? else {
            return Ok(State::None);
        };
        Ok(match self.record(&last)? {
            Record::Events {
                first_version,
                count,
            } => State::Live {
                last,
                first_version,
                count,
            },
            Record::Tombstone {
                last_version,
                last_position,
            } => State::Deleted {
                last_version,
                last_position,
            },
        })
    }

    async fn scan(
        &self,
        stream: &stream::Stream,
        filter: &str,
        start_seq: u64,
        end_seq: u64,
        batch: usize,
        what: &str,
    ) -> Result<Scan, EventStoreError> {
        let mut scan = Scan {
            consumer: None,
            stream: stream.clone(),
            end_seq,
            batch: batch.clamp(1, FETCH_MESSAGES_MAX),
            buffer: VecDeque::new(),
            drained: true,
            filter: filter.to_owned(),
            cursor: start_seq,
            by_gets: false,
            resumed_unconfirmed: false,
            keep_fetched_past_end: false,
            fetch_idle: ms(self.inner.config.request_timeout_ms),
            url: self.inner.url.clone(),
            what: what.to_owned(),
        };
        if start_seq == 0 || start_seq > end_seq {
            return Ok(scan);
        }
        let config = consumer::pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start_seq,
            },
            ack_policy: AckPolicy::None,
            filter_subject: filter.to_owned(),
            inactive_threshold: ms(READ_CONSUMER_IDLE_MS),
            memory_storage: true,
            ..Default::default()
        };
        scan.consumer = proteus_nats::client::consumer_in_time(stream, config)
            .await
            .map_err(|e| self.error(what, e, false))?;
        // No consumer in time: the metadata leader, which places consumers, may be being
        // elected. The stream's leader answers message gets without it.
        scan.by_gets = scan.consumer.is_none();
        scan.drained = false;
        Ok(scan)
    }

    /// `(last stream sequence, head position)`: the newest event's position at the time of
    /// the call (0 when there is none).
    async fn head(&self) -> Result<(u64, u64), EventStoreError> {
        let end = self.feed_end().await?;
        Ok((end.last_seq, end.head))
    }

    /// The events stream's end and the `$all` feed's head, as one request saw them.
    async fn feed_end(&self) -> Result<FeedEnd, EventStoreError> {
        let mut events = self.inner.events.clone();
        let info = events
            .info()
            .await
            .map_err(|e| self.error("reading the head of the $all feed", e, false))?;
        let stream_created_ns = info.created.unix_timestamp_nanos();
        let (first_seq, last_seq) = (info.state.first_sequence, info.state.last_sequence);
        let (cached_seq, cached_head) = *self.inner.head.lock().expect("head lock poisoned");
        if last_seq == cached_seq {
            return Ok(FeedEnd {
                last_seq,
                head: cached_head,
                stream_created_ns,
            });
        }
        // A stream with fewer messages than seen before was deleted and created again.
        let (floor_seq, mut head) = if last_seq > cached_seq {
            (cached_seq, cached_head)
        } else {
            (0, 0)
        };
        // Tombstones hold no event: walk back to the newest events message.
        let mut seq = last_seq;
        while seq > floor_seq && seq >= first_seq.max(1) {
            match self
                .inner
                .events
                .raw_message_builder()
                .sequence(seq)
                .send()
                .await
            {
                Ok(message) => {
                    let msg = Msg::from(message);
                    if let Record::Events { count, .. } = self.record(&msg)? {
                        head = position_of(seq, count - 1);
                        break;
                    }
                }
                Err(error) => {
                    self.raw_error(error, "reading the head of the $all feed")?;
                }
            }
            seq -= 1;
        }
        let mut cache = self.inner.head.lock().expect("head lock poisoned");
        if last_seq > cache.0 || (last_seq < cached_seq && cache.0 == cached_seq) {
            *cache = (last_seq, head);
        }
        Ok(FeedEnd {
            last_seq,
            head,
            stream_created_ns,
        })
    }

    fn advance_head(&self, seq: u64, position: u64) {
        let mut cache = self.inner.head.lock().expect("head lock poisoned");
        if seq > cache.0 {
            *cache = (seq, position);
        }
    }

    async fn snapshot_of(&self, stream: &StreamName) -> Result<Option<Snapshot>, EventStoreError> {
        let what = format!("reading the snapshot of stream '{stream}'");
        let Some(msg) = self
            .last_on(&self.inner.snapshots, &self.snapshot_subject(stream), &what)
            .await?
        else {
            return Ok(None);
        };
        let (version, snapshot_type, data) = codec::decode_snapshot(&msg.payload)
            .map_err(|reason| corrupt(&self.inner.config.snapshots_stream(), msg.seq, reason))?;
        Ok(Some(Snapshot {
            stream: stream.clone(),
            version,
            snapshot_type,
            data,
            recorded_ms: msg.time_ms,
        }))
    }

    async fn wait_impl(&self, after: u64, timeout: Duration) -> Result<bool, EventStoreError> {
        validate_wait(timeout)?;
        self.check_open()?;
        if self.inner.head.lock().expect("head lock poisoned").1 > after {
            return Ok(true);
        }
        let deadline = Instant::now() + timeout;
        let what = "waiting for new events";
        // Subscribe before the first check, so an append between the two still wakes us.
        let mut wakeups = self
            .inner
            .client
            .subscribe(format!("{}.s.>", self.inner.config.subject_prefix))
            .await
            .map_err(|e| self.error(what, e, false))?;
        self.inner
            .client
            .flush()
            .await
            .map_err(|e| self.error(what, e, false))?;
        let poll = ms(self.inner.config.wait_poll_interval_ms);
        let mut quick = 0;
        loop {
            self.check_open()?;
            if self.head().await?.1 > after {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let pause = if quick > 0 {
                quick -= 1;
                ms(QUICK_RECHECK_MS)
            } else {
                poll
            };
            let tick = (now + pause).min(deadline);
            tokio::select! {
                message = wakeups.next() => match message {
                    Some(_) => quick = QUICK_RECHECKS,
                    None => tokio::time::sleep_until(tick.into()).await,
                },
                _ = tokio::time::sleep_until(tick.into()) => {}
            }
        }
    }
}

/// Opens the stream `config` names, creating it if it does not exist and `create` allows.
async fn ensure_stream(
    js: &jetstream::Context,
    url: &str,
    config: stream::Config,
    create: bool,
) -> Result<stream::Stream, EventStoreError> {
    let name = config.name.clone();
    let what = format!("opening JetStream stream {name}");
    for attempt in 0..5 {
        match js.get_stream(&name).await {
            Ok(stream) => {
                let subjects = &stream.cached_info().config.subjects;
                if subjects != &config.subjects {
                    return Err(storage(format!(
                        "JetStream stream {name} exists but listens on {subjects:?}, not {:?}; it is not this event store's (choose another stream_prefix or subject_prefix)",
                        config.subjects
                    )));
                }
                return Ok(stream);
            }
            Err(error) => {
                let missing = matches!(error.kind(), GetStreamErrorKind::JetStream(api) if api.error_code() == ErrorCode::STREAM_NOT_FOUND);
                if !missing {
                    return Err(nats(url, &what, error, false));
                }
                if !create {
                    return Err(EventStoreError::InvalidRequest {
                        reason: format!(
                            "JetStream stream {name} does not exist on {url}: there is no event store with this stream prefix there"
                        ),
                    });
                }
            }
        }
        match js.create_stream(config.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(error) => match jetstream_code(&error.kind()) {
                // Created meanwhile by another instance: open it.
                Some(10058) => continue,
                // "Error creating store": NATS 2.9 removes the account's stream directory
                // when its last stream is deleted, which can race a creation; try again.
                Some(10049) if attempt < 4 => {
                    tokio::time::sleep(ms(50 << attempt)).await;
                    continue;
                }
                Some(10065) => {
                    return Err(storage(format!(
                        "cannot create JetStream stream {name}: another stream already listens on {:?}; choose another subject_prefix",
                        config.subjects
                    )));
                }
                _ => {
                    return Err(nats(
                        url,
                        &format!("creating JetStream stream {name}"),
                        error,
                        false,
                    ));
                }
            },
        }
    }
    Err(EventStoreError::Unavailable {
        reason: format!(
            "JetStream stream {name} kept changing while it was being opened; open the store again"
        ),
    })
}

#[async_trait]
impl EventStore for NatsEventStore {
    async fn append_validated(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        append: ValidatedAppend,
    ) -> Result<AppendOutcome, EventStoreError> {
        self.append_impl(stream, expected, append.into_events())
            .await
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<DeleteOutcome, EventStoreError> {
        self.delete_impl(stream, expected).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_version: u64,
        direction: Direction,
        max_count: usize,
    ) -> Result<StreamPage, EventStoreError> {
        self.read_stream_impl(stream, from_version, direction, max_count)
            .await
    }

    async fn read_aggregate(
        &self,
        stream: &StreamName,
        max_count: usize,
    ) -> Result<Aggregate, EventStoreError> {
        self.read_aggregate_impl(stream, max_count).await
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
        self.check_open()?;
        self.read_forward(
            &self.category_subjects(category),
            from_position,
            max_count,
            filter,
        )
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
        self.check_open()?;
        match direction {
            Direction::Forward => {
                self.read_forward(&self.all_subjects(filter), from_position, max_count, filter)
                    .await
            }
            Direction::Backward => self.read_backward(from_position, max_count, filter).await,
        }
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo, EventStoreError> {
        self.check_open()?;
        let (last_version, last_position, deleted) =
            match self.state(stream, &self.subject(stream)).await? {
                State::None => {
                    return Err(EventStoreError::StreamNotFound {
                        stream: stream.clone(),
                    });
                }
                State::Live {
                    last,
                    first_version,
                    count,
                } => (
                    Some(first_version + count - 1),
                    Some(position_of(last.seq, count - 1)),
                    false,
                ),
                State::Deleted {
                    last_version,
                    last_position,
                } => (last_version, last_position, true),
            };
        let snapshot_version = self.snapshot_of(stream).await?.map(|s| s.version);
        Ok(StreamInfo {
            stream: stream.clone(),
            last_version,
            last_position,
            deleted,
            snapshot_version,
        })
    }

    async fn put_snapshot(
        &self,
        stream: &StreamName,
        version: u64,
        snapshot_type: &str,
        data: Bytes,
    ) -> Result<(), EventStoreError> {
        self.put_snapshot_impl(stream, version, snapshot_type, data)
            .await
    }

    async fn get_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, EventStoreError> {
        self.check_open()?;
        match self.state(stream, &self.subject(stream)).await? {
            State::Deleted { .. } => Err(EventStoreError::StreamDeleted {
                stream: stream.clone(),
            }),
            State::None => Ok(None),
            State::Live { .. } => self.snapshot_of(stream).await,
        }
    }

    async fn wait_for_position(
        &self,
        after: u64,
        timeout: Duration,
    ) -> Result<bool, EventStoreError> {
        self.wait_impl(after, timeout).await
    }

    /// Refuses new calls, waits for the writes in flight to be acknowledged, and closes the
    /// connection.
    async fn close(&self) -> Result<(), EventStoreError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let _writes = self.inner.gate.write().await;
        let _ = self.inner.client.flush().await;
        let _ = self.inner.client.drain().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetches_are_sized_from_the_events_a_message_held_so_far() {
        // Appends of 100 events: a page of 1,000 needs about ten messages, not a thousand.
        assert_eq!(messages_to_fetch(900, 1, 100), 10);
        // One event per message: one message per event wanted, within one fetch's bound.
        assert_eq!(messages_to_fetch(300, 16, 16), 301);
        assert_eq!(messages_to_fetch(10_000, 16, 16), FETCH_MESSAGES_MAX);
        // Nothing matched yet (a filter): as many as one fetch may ask.
        assert_eq!(messages_to_fetch(1_000, 40, 0), FETCH_MESSAGES_MAX);
        // Nothing more wanted: the one message that says whether more follow.
        assert_eq!(messages_to_fetch(0, 5, 500), 1);
    }
}
