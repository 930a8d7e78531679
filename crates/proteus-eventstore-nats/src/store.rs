//! [`NatsEventStore`]: the `EventStore` port on JetStream.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
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
    AppendOutcome, Category, DeleteOutcome, Direction, EVENTS_PER_APPEND_MAX, EventStore,
    EventStoreError, ExpectedVersion, FeedPage, ProposedEvent, ReadFilter, RecordedEvent, Snapshot,
    StreamInfo, StreamName, StreamPage,
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
/// Most bytes one fetch asks for (a larger single message is still fetched alone).
const FETCH_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Sequences the first window of a backward `$all` read covers at least, and at most as it
/// doubles.
const BACKWARD_WINDOW_MIN: u64 = 64;
const BACKWARD_WINDOW_MAX: u64 = 1024;
/// After a wake-up message, `wait_for_position` re-checks this soon, a few times, since the
/// stream may store the message a moment after core NATS delivered it.
const QUICK_RECHECK_MS: u64 = 5;
const QUICK_RECHECKS: u32 = 4;
/// Ephemeral read consumers are removed by the server after this idle time if the adapter
/// could not delete them itself.
const READ_CONSUMER_IDLE_MS: u64 = 30_000;

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

/// The key of an event id in an [`IdIndex`]: its 64-bit xxh3 hash. About 32 bytes per cached
/// id with the version and position, instead of about 110 with the id itself, so the same
/// memory keeps three to four times more ids (and a stream's history is read again that much
/// less often).
fn id_key(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

/// The hasher of [`IdIndex::ids`], whose keys are already hashes ([`id_key`]): hashing them
/// again with the default SipHash was 2.5% of the server's time on small batched appends.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed with it; any other input is folded in, never lost.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
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

/// Where each event id of one stream is, up to a stream sequence: what idempotency needs.
#[derive(Default)]
struct IdIndex {
    /// The stream sequence up to which the stream's messages are indexed.
    seq: u64,
    /// [`id_key`] of an event id → (version, position). A hit is confirmed against the stored
    /// event before it decides anything (`confirm_hits`).
    ids: HashMap<u64, (u64, u64), BuildHasherDefault<Prehashed>>,
    /// The stream's end as this instance's last append left it: (the subject's last stream
    /// sequence, the stream's last version). The next append publishes against it without
    /// reading the end first; the server's expected-sequence check refuses it if anyone wrote
    /// since, and the end is then read again.
    tail: Option<(u64, u64)>,
}

/// A stream's [`IdIndex`] and when it was last used (a tick of `index_uses`).
#[derive(Default)]
struct IndexSlot {
    index: Mutex<IdIndex>,
    last_used: AtomicU64,
}

/// What an eviction keeps: this share of `id_cache_events_max`, so evictions are rare.
const ID_CACHE_KEPT_PERCENT: usize = 75;

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
    /// `(s, h)`: the newest events message at or below stream sequence `s` ends at position
    /// `h`. Messages never change, so this only moves forward.
    head: StdMutex<(u64, u64)>,
}

/// Reads a range of stream sequences of one subject filter through an ephemeral pull
/// consumer (no acks, memory storage), deleted when dropped.
struct Scan {
    consumer: Option<consumer::PullConsumer>,
    stream: stream::Stream,
    end_seq: u64,
    batch: usize,
    buffer: VecDeque<Msg>,
    drained: bool,
    /// The subject filter.
    filter: String,
    /// The sequence from which the next message is looked for.
    cursor: u64,
    /// Whether the scan reads with message gets, the consumer having missed a message.
    by_gets: bool,
    /// Longest wait for the next message of a fetch (the request timeout).
    fetch_idle: Duration,
    url: String,
    what: String,
}

impl Scan {
    async fn next(&mut self) -> Result<Option<Msg>, EventStoreError> {
        if self.buffer.is_empty() && !self.drained {
            self.fill().await?;
        }
        match self.buffer.pop_front() {
            Some(message) if message.seq <= self.end_seq => Ok(Some(message)),
            _ => {
                self.drained = true;
                self.buffer.clear();
                Ok(None)
            }
        }
    }

    /// Whether another message at or below the end follows.
    async fn has_more(&mut self) -> Result<bool, EventStoreError> {
        if self.buffer.is_empty() && !self.drained {
            self.fill().await?;
        }
        Ok(self.buffer.front().is_some_and(|m| m.seq <= self.end_seq))
    }

    /// Fetches the next batch. When the consumer finds nothing more before the end, that is
    /// checked with a message get (`next_by_subj` from the next sequence): NATS 2.9 answers a
    /// no-wait fetch from its count of pending messages, which can be short for filtered
    /// consumers that start mid-stream. If the get finds a message the consumer did not
    /// deliver, the rest of the scan reads message by message with gets.
    async fn fill(&mut self) -> Result<(), EventStoreError> {
        let Some(consumer) = self.consumer.as_ref() else {
            self.drained = true;
            return Ok(());
        };
        let error = |e: &dyn std::fmt::Display| nats(&self.url, &self.what, e.to_string(), false);
        if !self.by_gets {
            let mut refused_for_size = false;
            for _ in 0..2 {
                let mut fetch = consumer.fetch().max_messages(self.batch);
                if refused_for_size {
                    // The next message alone is larger than the byte budget: fetch it alone.
                    fetch = fetch.max_messages(1);
                } else {
                    fetch = fetch.max_bytes(FETCH_BYTES_MAX);
                }
                let mut messages = fetch.messages().await.map_err(|e| error(&e))?;
                let mut received = 0;
                while let Some(item) = next_fetched(&mut messages, self.fetch_idle)
                    .await
                    .map_err(|e| error(&e))?
                {
                    let message = match item {
                        Ok(message) => message,
                        Err(e) => {
                            let text = e.to_string();
                            if text.contains("409")
                                || text.to_ascii_lowercase().contains("maxbytes")
                            {
                                refused_for_size = true;
                                break;
                            }
                            return Err(error(&e));
                        }
                    };
                    let (seq, time_ms) = {
                        let info = message.info().map_err(|e| error(&e))?;
                        (
                            info.stream_sequence,
                            (info.published.unix_timestamp_nanos() / 1_000_000) as i64,
                        )
                    };
                    received += 1;
                    self.cursor = seq + 1;
                    self.buffer.push_back(Msg {
                        seq,
                        subject: message.message.subject.to_string(),
                        headers: message.message.headers.clone(),
                        payload: message.message.payload.clone(),
                        time_ms,
                    });
                    if seq >= self.end_seq {
                        self.drained = true;
                        return Ok(());
                    }
                }
                if received > 0 {
                    return Ok(());
                }
                if !refused_for_size {
                    break;
                }
            }
        }
        if self.cursor > self.end_seq {
            self.drained = true;
            return Ok(());
        }
        match self
            .stream
            .raw_message_builder()
            .next_by_subject(self.filter.clone())
            .sequence(self.cursor)
            .send()
            .await
        {
            Ok(message) if message.sequence <= self.end_seq => {
                self.buffer.push_back(message.into());
            }
            Ok(_) => self.drained = true,
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => {
                self.drained = true
            }
            Err(e) => return Err(error(&e)),
        }
        Ok(())
    }
}

impl Drop for Scan {
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            let name = consumer.cached_info().name.clone();
            let stream = self.stream.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = stream.delete_consumer(&name).await;
                });
            }
        }
    }
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
    /// they do not exist. Fails with [`EventStoreError::Unavailable`] when the server cannot be
    /// reached, saying how to start it.
    pub async fn open(config: NatsEventStoreConfig) -> Result<NatsEventStore, EventStoreError> {
        config
            .validate()
            .map_err(|reason| EventStoreError::InvalidRequest {
                reason: format!("invalid NATS event store settings: {reason}"),
            })?;
        let url = redact(&config.url);
        let client = proteus_nats::client::connect(&proteus_nats::client::ClientSettings {
            url: &config.url,
            name: "proteus-eventstore",
            connect_timeout_ms: config.connect_timeout_ms,
            request_timeout_ms: config.request_timeout_ms,
            reconnect_delay_max_ms: config.reconnect_delay_max_ms,
            connections: None,
        })
        .await
        .map_err(|reason| EventStoreError::Unavailable { reason })?;
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
        let events = ensure_stream(&js, &url, events_config).await?;
        let snapshots = ensure_stream(&js, &url, snapshots_config).await?;
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
                head: StdMutex::new((0, 0)),
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

    /// The largest payload the server takes.
    fn payload_bytes_max(&self) -> usize {
        self.inner
            .client
            .server_info()
            .max_payload
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
            fetch_idle: ms(self.inner.config.request_timeout_ms),
            url: self.inner.url.clone(),
            what: what.to_owned(),
        };
        if start_seq == 0 || start_seq > end_seq {
            return Ok(scan);
        }
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start_seq,
                },
                ack_policy: AckPolicy::None,
                filter_subject: filter.to_owned(),
                inactive_threshold: ms(READ_CONSUMER_IDLE_MS),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| self.error(what, e, false))?;
        scan.consumer = Some(consumer);
        scan.drained = false;
        Ok(scan)
    }

    /// `(last stream sequence, head position)`: the newest event's position at the time of
    /// the call (0 when there is none).
    async fn head(&self) -> Result<(u64, u64), EventStoreError> {
        let mut events = self.inner.events.clone();
        let info = events
            .info()
            .await
            .map_err(|e| self.error("reading the head of the $all feed", e, false))?;
        let (first_seq, last_seq) = (info.state.first_sequence, info.state.last_sequence);
        let (cached_seq, cached_head) = *self.inner.head.lock().expect("head lock poisoned");
        if last_seq == cached_seq {
            return Ok((last_seq, cached_head));
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
        Ok((last_seq, head))
    }

    fn advance_head(&self, seq: u64, position: u64) {
        let mut cache = self.inner.head.lock().expect("head lock poisoned");
        if seq > cache.0 {
            *cache = (seq, position);
        }
    }

    fn index_lock(&self, stream: &StreamName) -> Arc<IndexSlot> {
        let slot = {
            let mut indexes = self.inner.indexes.lock().expect("index lock poisoned");
            indexes
                .entry(stream.as_str().to_owned())
                .or_default()
                .clone()
        };
        let tick = self.inner.index_uses.fetch_add(1, Ordering::Relaxed);
        slot.last_used.store(tick, Ordering::Relaxed);
        slot
    }

    fn account_ids(&self, added: usize) {
        let total = self.inner.cached_ids.fetch_add(added, Ordering::AcqRel) + added;
        if total > self.inner.config.id_cache_events_max {
            self.evict_ids();
        }
    }

    /// Drops the indexes of the least recently used streams until the cache holds at most
    /// [`ID_CACHE_KEPT_PERCENT`] of `id_cache_events_max` ids. Indexes in use (locked) stay;
    /// a dropped one is read again from its stream on its next append.
    fn evict_ids(&self) {
        let target = self.inner.config.id_cache_events_max / 100 * ID_CACHE_KEPT_PERCENT;
        let mut indexes = self.inner.indexes.lock().expect("index lock poisoned");
        // (last use, size, stream) of every index not in use; those in use are kept.
        let mut idle: Vec<(u64, usize, String)> = Vec::new();
        for (stream, slot) in indexes.iter() {
            if let Ok(index) = slot.index.try_lock() {
                idle.push((
                    slot.last_used.load(Ordering::Relaxed),
                    index.ids.len(),
                    stream.clone(),
                ));
            }
        }
        let mut total: usize = idle.iter().map(|(_, size, _)| size).sum();
        idle.sort_unstable();
        for (_, size, stream) in idle {
            if total <= target {
                break;
            }
            indexes.remove(&stream);
            total -= size;
        }
        self.inner.cached_ids.store(total, Ordering::Release);
    }

    /// Keeps only the hits of `found` whose stored event really has the id: the index keys ids
    /// by hash, and two ids can share one. Reads each message holding a hit once (at most one
    /// per event of the append; hits are retries, rare).
    async fn confirm_hits(
        &self,
        stream: &StreamName,
        subject: &str,
        events: &[ProposedEvent],
        found: &mut [Option<(u64, u64)>],
    ) -> Result<(), EventStoreError> {
        let what = format!("confirming the event ids of stream '{stream}'");
        let mut stored: HashMap<u64, Vec<ProposedEvent>> = HashMap::new();
        for (event, hit) in events.iter().zip(found.iter_mut()) {
            let Some((_, position)) = *hit else {
                continue;
            };
            let seq = seq_of(position);
            if let Entry::Vacant(slot) = stored.entry(seq) {
                let events = match self.next_on(subject, seq, &what).await? {
                    Some(msg) if msg.seq == seq => match self.record(&msg)? {
                        Record::Events { count, .. } => self.decode(&msg, count)?,
                        _ => Vec::new(),
                    },
                    _ => Vec::new(),
                };
                slot.insert(events);
            }
            let at = ((position - 1) % POSITIONS_PER_MESSAGE) as usize;
            let same = stored
                .get(&seq)
                .and_then(|events| events.get(at))
                .is_some_and(|stored| stored.id == event.id);
            if !same {
                *hit = None;
            }
        }
        Ok(())
    }

    /// Brings `index` up to `last_seq`, reading the stream's messages it has not seen.
    async fn refresh_index(
        &self,
        stream: &StreamName,
        subject: &str,
        index: &mut IdIndex,
        last_seq: u64,
    ) -> Result<(), EventStoreError> {
        if index.seq > last_seq {
            *index = IdIndex::default();
        }
        if index.seq == last_seq {
            return Ok(());
        }
        let before = index.ids.len();
        let what = format!("reading the event ids of stream '{stream}'");
        let mut scan = self
            .scan(
                &self.inner.events,
                subject,
                index.seq + 1,
                last_seq,
                FETCH_MESSAGES_MAX,
                &what,
            )
            .await?;
        while let Some(msg) = scan.next().await? {
            if let Record::Events {
                first_version,
                count,
            } = self.record(&msg)?
            {
                let decoded = self.decode(&msg, count)?;
                index.ids.reserve(decoded.len());
                for (i, event) in decoded.into_iter().enumerate() {
                    let i = i as u64;
                    index.ids.insert(
                        id_key(&event.id),
                        (first_version + i, position_of(msg.seq, i)),
                    );
                }
            }
        }
        index.seq = last_seq;
        self.account_ids(index.ids.len().saturating_sub(before));
        Ok(())
    }

    async fn publish(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Result<u64, PublishErrorKind>, async_nats::jetstream::context::PublishError> {
        let sent = self
            .inner
            .js
            .publish_with_headers(subject, headers, payload)
            .await;
        let acked = match sent {
            Ok(future) => future.await,
            Err(error) => Err(error),
        };
        match acked {
            Ok(ack) => Ok(Ok(ack.sequence)),
            Err(error) => match error.kind() {
                PublishErrorKind::WrongLastSequence => Ok(Err(PublishErrorKind::WrongLastSequence)),
                PublishErrorKind::MaxPayloadExceeded => {
                    Ok(Err(PublishErrorKind::MaxPayloadExceeded))
                }
                _ => Err(error),
            },
        }
    }

    fn too_many_conflicts(&self, stream: &StreamName, conflicts: u32) -> EventStoreError {
        EventStoreError::Unavailable {
            reason: format!(
                "stream '{stream}' is being written by other writers so fast that this write lost {conflicts} races in a row; retry it"
            ),
        }
    }

    async fn append_impl(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<ProposedEvent>,
    ) -> Result<AppendOutcome, EventStoreError> {
        let _gate = self.write_gate().await?;
        let payload = codec::encode_events(&events);
        let max = self.payload_bytes_max();
        if payload.len() > max {
            return Err(too_large(
                payload.len(),
                max,
                "the append's size in NATS (its events' ids, types, data and metadata, framed)",
            ));
        }
        let subject = self.subject(stream);
        let slot = self.index_lock(stream);
        let mut index = slot.index.lock().await;
        let count = events.len() as u64;
        let keys: Vec<u64> = events.iter().map(|event| id_key(&event.id)).collect();
        let mut conflicts = 0;
        loop {
            let (last_seq, actual) = match index.tail.take() {
                // The index is complete up to the cached end: nothing to read.
                Some((last_seq, last_version)) if index.seq == last_seq => {
                    (last_seq, Some(last_version))
                }
                // A stream this instance knows nothing of (new, or its index evicted), with an
                // expectation an empty stream meets: publish as its first append without
                // reading first, as a client of JetStream would. The server refuses it
                // (expected last subject sequence 0) if the subject holds anything at all,
                // events or a tombstone; then the end is read below and the append decided
                // again. An empty stream has no event ids, so nothing can be a duplicate.
                None if conflicts == 0
                    && index.seq == 0
                    && index.ids.is_empty()
                    && matches!(expected, ExpectedVersion::Any | ExpectedVersion::NoStream) =>
                {
                    (0, None)
                }
                _ => {
                    let (last_seq, actual) = match self.state(stream, &subject).await? {
                        State::Deleted { .. } => {
                            return Err(EventStoreError::StreamDeleted {
                                stream: stream.clone(),
                            });
                        }
                        State::None => {
                            *index = IdIndex::default();
                            (0, None)
                        }
                        State::Live {
                            last,
                            first_version,
                            count,
                        } => (last.seq, Some(first_version + count - 1)),
                    };
                    self.refresh_index(stream, &subject, &mut index, last_seq)
                        .await?;
                    (last_seq, actual)
                }
            };
            let mut found: Vec<Option<(u64, u64)>> =
                keys.iter().map(|key| index.ids.get(key).copied()).collect();
            if found.iter().any(Option::is_some) {
                self.confirm_hits(stream, &subject, &events, &mut found)
                    .await?;
            }
            let versions: Vec<Option<u64>> = found.iter().map(|f| f.map(|(v, _)| v)).collect();
            if let Idempotency::Duplicate { first_version } =
                check_idempotency(stream, &events, &versions)?
            {
                let position = |at: usize| found[at].map_or(0, |(_, p)| p);
                return Ok(AppendOutcome {
                    first_version,
                    last_version: first_version + count - 1,
                    first_position: position(0),
                    last_position: position(events.len() - 1),
                    duplicate: true,
                });
            }
            check_expected_version(stream, expected, actual)?;
            let first_version = actual.map_or(0, |v| v + 1);
            let headers = codec::events_headers(first_version, events.len(), last_seq);
            let what = format!("appending to stream '{stream}'");
            match self
                .publish(subject.clone(), headers, payload.clone())
                .await
            {
                Ok(Ok(seq)) => {
                    // Grown once per append rather than doubling several times within it.
                    index.ids.reserve(keys.len());
                    for (i, key) in keys.iter().enumerate() {
                        let i = i as u64;
                        index
                            .ids
                            .insert(*key, (first_version + i, position_of(seq, i)));
                    }
                    index.seq = seq;
                    index.tail = Some((seq, first_version + count - 1));
                    self.account_ids(events.len());
                    let outcome = AppendOutcome {
                        first_version,
                        last_version: first_version + count - 1,
                        first_position: position_of(seq, 0),
                        last_position: position_of(seq, count - 1),
                        duplicate: false,
                    };
                    self.advance_head(seq, outcome.last_position);
                    return Ok(outcome);
                }
                Ok(Err(PublishErrorKind::WrongLastSequence)) => {
                    // Another writer changed the stream since we read its end: read it again
                    // and decide again (a retry may now be a duplicate, an Exact expectation
                    // may now fail).
                    conflicts += 1;
                    if conflicts > self.inner.config.append_conflict_retries_max {
                        return Err(self.too_many_conflicts(stream, conflicts));
                    }
                }
                Ok(Err(_)) => {
                    return Err(too_large(
                        payload.len(),
                        max,
                        "the append's size in NATS (its events' ids, types, data and metadata, framed)",
                    ));
                }
                Err(error) => return Err(self.error(&what, error, true)),
            }
        }
    }

    async fn delete_impl(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<DeleteOutcome, EventStoreError> {
        let _gate = self.write_gate().await?;
        let subject = self.subject(stream);
        let slot = self.index_lock(stream);
        let mut index = slot.index.lock().await;
        let mut conflicts = 0;
        loop {
            let (last_seq, actual, last_position) = match self.state(stream, &subject).await? {
                State::Deleted { .. } => {
                    return Err(EventStoreError::StreamDeleted {
                        stream: stream.clone(),
                    });
                }
                State::None => (0, None, None),
                State::Live {
                    last,
                    first_version,
                    count,
                } => (
                    last.seq,
                    Some(first_version + count - 1),
                    Some(position_of(last.seq, count - 1)),
                ),
            };
            check_expected_version(stream, expected, actual)?;
            let headers = codec::tombstone_headers(actual, last_position, last_seq);
            let what = format!("deleting stream '{stream}'");
            match self.publish(subject.clone(), headers, Bytes::new()).await {
                Ok(Ok(_)) => {
                    *index = IdIndex::default();
                    return Ok(DeleteOutcome {
                        last_version: actual,
                    });
                }
                Ok(Err(PublishErrorKind::WrongLastSequence)) => {
                    conflicts += 1;
                    if conflicts > self.inner.config.append_conflict_retries_max {
                        return Err(self.too_many_conflicts(stream, conflicts));
                    }
                }
                Ok(Err(_)) => {
                    return Err(storage(format!(
                        "{what}: the tombstone was refused as too large"
                    )));
                }
                Err(error) => return Err(self.error(&what, error, true)),
            }
        }
    }

    /// The message of the stream's subject from which reading finds `version`: the last one
    /// whose first version is at most `version`, or a sequence before it. A binary search
    /// over stream sequences with `next_by_subj` gets.
    async fn locate(
        &self,
        stream: &StreamName,
        subject: &str,
        version: u64,
        last_seq: u64,
        last_first_version: u64,
    ) -> Result<u64, EventStoreError> {
        if version == 0 {
            return Ok(1);
        }
        if version >= last_first_version {
            return Ok(last_seq);
        }
        let what = format!("finding version {version} of stream '{stream}'");
        let (mut lo, mut hi) = (1u64, last_seq);
        for _ in 0..SEARCH_PROBES_MAX {
            if hi - lo <= 1 {
                break;
            }
            let mid = lo + (hi - lo) / 2;
            match self.next_on(subject, mid, &what).await? {
                Some(msg) if msg.seq < hi => match self.record(&msg)? {
                    Record::Events { first_version, .. } if first_version <= version => {
                        lo = msg.seq
                    }
                    _ => hi = msg.seq,
                },
                _ => hi = mid,
            }
        }
        Ok(lo)
    }

    /// The events of a live stream at versions `low..=high`, oldest first.
    #[allow(clippy::too_many_arguments)]
    async fn stream_events(
        &self,
        stream: &StreamName,
        subject: &str,
        last: &Msg,
        last_first_version: u64,
        last_count: u64,
        low: u64,
        high: u64,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let mut events = Vec::new();
        if low >= last_first_version {
            for (i, event) in self.decode(last, last_count)?.into_iter().enumerate() {
                let version = last_first_version + i as u64;
                if (low..=high).contains(&version) {
                    events.push(recorded(stream, last, last_first_version, i as u64, event));
                }
            }
            return Ok(events);
        }
        let start = self
            .locate(stream, subject, low, last.seq, last_first_version)
            .await?;
        let what = format!("reading stream '{stream}'");
        let wanted = (high - low + 1) as usize;
        let mut scan = self
            .scan(&self.inner.events, subject, start, last.seq, wanted, &what)
            .await?;
        'messages: while let Some(msg) = scan.next().await? {
            let Record::Events {
                first_version,
                count,
            } = self.record(&msg)?
            else {
                continue;
            };
            if first_version + count <= low {
                continue;
            }
            for (i, event) in self.decode(&msg, count)?.into_iter().enumerate() {
                let version = first_version + i as u64;
                if version < low {
                    continue;
                }
                if version > high {
                    break 'messages;
                }
                events.push(recorded(stream, &msg, first_version, i as u64, event));
                if version == high {
                    break 'messages;
                }
            }
        }
        Ok(events)
    }

    async fn read_stream_impl(
        &self,
        stream: &StreamName,
        from_version: u64,
        direction: Direction,
        max_count: usize,
    ) -> Result<StreamPage, EventStoreError> {
        validate_read_count(max_count)?;
        self.check_open()?;
        let subject = self.subject(stream);
        // The stream's end and the feed's head are asked for together: one round trip less
        // for every read (an aggregate load is usually one read).
        let (state, (_, head_position)) =
            futures_util::future::try_join(self.state(stream, &subject), self.head()).await?;
        let (last, first_version, count) = match state {
            State::None => {
                return Err(EventStoreError::StreamNotFound {
                    stream: stream.clone(),
                });
            }
            State::Deleted { .. } => {
                return Err(EventStoreError::StreamDeleted {
                    stream: stream.clone(),
                });
            }
            State::Live {
                last,
                first_version,
                count,
            } => (last, first_version, count),
        };
        let last_version = first_version + count - 1;
        // The head was read beside the stream's end, perhaps just before an append to this
        // stream: it is at least where the stream ends.
        let head_position = head_position.max(position_of(last.seq, count - 1));
        let span = max_count as u64 - 1;
        match direction {
            Direction::Forward => {
                let events = if from_version > last_version {
                    Vec::new()
                } else {
                    let high = last_version.min(from_version.saturating_add(span));
                    self.stream_events(
                        stream,
                        &subject,
                        &last,
                        first_version,
                        count,
                        from_version,
                        high,
                    )
                    .await?
                };
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
                let top = from_version.min(last_version);
                let low = top.saturating_sub(span);
                let mut events = self
                    .stream_events(stream, &subject, &last, first_version, count, low, top)
                    .await?;
                events.reverse();
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

    /// A forward read of the `$all` feed or a category (`subjects`), from `from_position`.
    async fn read_forward(
        &self,
        subjects: &str,
        from_position: u64,
        max_count: usize,
        filter: &ReadFilter,
    ) -> Result<FeedPage, EventStoreError> {
        let (last_seq, head) = self.head().await?;
        if head == 0 || from_position > head {
            return Ok(FeedPage {
                events: Vec::new(),
                next_position: from_position.max(head + 1),
                is_end: true,
                head_position: head,
            });
        }
        let from = from_position.max(1);
        let mut scan = self
            .scan(
                &self.inner.events,
                subjects,
                seq_of(from),
                last_seq,
                max_count + 1,
                "reading the $all feed",
            )
            .await?;
        let mut events = Vec::new();
        let mut scanned = 0usize;
        let mut last_scanned = None;
        let mut more = None;
        'messages: while let Some(msg) = scan.next().await? {
            let Record::Events {
                first_version,
                count,
            } = self.record(&msg)?
            else {
                continue;
            };
            if position_of(msg.seq, count - 1) < from {
                continue;
            }
            let stream = self.stream_of(&msg)?;
            let decoded = self.decode(&msg, count)?;
            let n = decoded.len();
            for (i, event) in decoded.into_iter().enumerate() {
                let position = position_of(msg.seq, i as u64);
                if position < from {
                    continue;
                }
                scanned += 1;
                last_scanned = Some(position);
                if filter.matches(stream.as_str(), &event.event_type) {
                    events.push(recorded(&stream, &msg, first_version, i as u64, event));
                }
                if events.len() == max_count || scanned == READ_SCAN_EVENTS_MAX {
                    more = Some(i + 1 < n);
                    break 'messages;
                }
            }
        }
        let more = match more {
            Some(true) => true,
            Some(false) => scan.has_more().await?,
            None => false,
        };
        let (next_position, is_end) = match (more, last_scanned) {
            (true, Some(position)) => (position + 1, false),
            // Everything up to the head was examined.
            _ => (from_position.max(head + 1), true),
        };
        Ok(FeedPage {
            events,
            next_position,
            is_end,
            head_position: head,
        })
    }

    /// A backward read of the `$all` feed: windows of stream sequences read forward, newest
    /// window first, each twice as large as the one before.
    async fn read_backward(
        &self,
        from_position: u64,
        max_count: usize,
        filter: &ReadFilter,
    ) -> Result<FeedPage, EventStoreError> {
        let (_, head) = self.head().await?;
        let top = from_position.min(head);
        if top == 0 {
            return Ok(FeedPage {
                events: Vec::new(),
                next_position: 0,
                is_end: true,
                head_position: head,
            });
        }
        let subjects = self.all_subjects(filter);
        let mut hi = seq_of(top);
        let mut window = (max_count as u64).clamp(BACKWARD_WINDOW_MIN, BACKWARD_WINDOW_MAX);
        let mut events = Vec::new();
        let mut scanned = 0usize;
        let mut last_scanned = None;
        let mut more = false;
        'windows: loop {
            let lo = hi.saturating_sub(window - 1).max(1);
            let mut scan = self
                .scan(
                    &self.inner.events,
                    &subjects,
                    lo,
                    hi,
                    window as usize,
                    "reading the $all feed backward",
                )
                .await?;
            let mut messages = Vec::new();
            while let Some(msg) = scan.next().await? {
                messages.push(msg);
            }
            drop(scan);
            for (m, msg) in messages.iter().enumerate().rev() {
                let Record::Events {
                    first_version,
                    count,
                } = self.record(msg)?
                else {
                    continue;
                };
                let stream = self.stream_of(msg)?;
                let decoded = self.decode(msg, count)?;
                for (i, event) in decoded.into_iter().enumerate().rev() {
                    let position = position_of(msg.seq, i as u64);
                    if position > top {
                        continue;
                    }
                    scanned += 1;
                    last_scanned = Some(position);
                    if filter.matches(stream.as_str(), &event.event_type) {
                        events.push(recorded(&stream, msg, first_version, i as u64, event));
                    }
                    if events.len() == max_count || scanned == READ_SCAN_EVENTS_MAX {
                        more = i > 0 || m > 0 || lo > 1;
                        break 'windows;
                    }
                }
            }
            if lo == 1 {
                break;
            }
            hi = lo - 1;
            window = (window * 2).min(BACKWARD_WINDOW_MAX);
        }
        let is_end = !more;
        Ok(FeedPage {
            events,
            next_position: if is_end {
                0
            } else {
                last_scanned.map_or(0, |p| p.saturating_sub(1))
            },
            is_end,
            head_position: head,
        })
    }

    async fn put_snapshot_impl(
        &self,
        stream: &StreamName,
        version: u64,
        snapshot_type: &str,
        data: Bytes,
    ) -> Result<(), EventStoreError> {
        validate_snapshot(snapshot_type, &data)?;
        let _gate = self.write_gate().await?;
        let payload = codec::encode_snapshot(version, snapshot_type, &data);
        let max = self.payload_bytes_max();
        if payload.len() > max {
            return Err(too_large(payload.len(), max, "the snapshot's size in NATS"));
        }
        let subject = self.subject(stream);
        let snapshot_subject = self.snapshot_subject(stream);
        let what = format!("storing the snapshot of stream '{stream}'");
        let mut conflicts = 0;
        loop {
            match self.state(stream, &subject).await? {
                State::None => {
                    return Err(EventStoreError::StreamNotFound {
                        stream: stream.clone(),
                    });
                }
                State::Deleted { .. } => {
                    return Err(EventStoreError::StreamDeleted {
                        stream: stream.clone(),
                    });
                }
                State::Live {
                    first_version,
                    count,
                    ..
                } => {
                    let last_version = first_version + count - 1;
                    if version > last_version {
                        return Err(EventStoreError::SnapshotAheadOfStream {
                            stream: stream.clone(),
                            version,
                            last_version: Some(last_version),
                        });
                    }
                }
            }
            let stored = self
                .last_on(&self.inner.snapshots, &snapshot_subject, &what)
                .await?;
            let stored_seq = stored.as_ref().map_or(0, |m| m.seq);
            if let Some(stored) = stored {
                let (stored_version, _, _) =
                    codec::decode_snapshot(&stored.payload).map_err(|reason| {
                        corrupt(&self.inner.config.snapshots_stream(), stored.seq, reason)
                    })?;
                if stored_version > version {
                    return Err(EventStoreError::SnapshotOutdated {
                        stream: stream.clone(),
                        version,
                        stored_version,
                    });
                }
            }
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                stored_seq.to_string().as_str(),
            );
            match self
                .publish(snapshot_subject.clone(), headers, payload.clone())
                .await
            {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(PublishErrorKind::WrongLastSequence)) => {
                    conflicts += 1;
                    if conflicts > self.inner.config.append_conflict_retries_max {
                        return Err(self.too_many_conflicts(stream, conflicts));
                    }
                }
                Ok(Err(_)) => {
                    return Err(too_large(payload.len(), max, "the snapshot's size in NATS"));
                }
                Err(error) => return Err(self.error(&what, error, true)),
            }
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

/// Opens the stream `config` names, creating it if it does not exist.
async fn ensure_stream(
    js: &jetstream::Context,
    url: &str,
    config: stream::Config,
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
