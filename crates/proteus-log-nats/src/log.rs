//! [`NatsLog`]: the log port on JetStream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::{ContextBuilder, PublishErrorKind};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, context::PublishAckFuture};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::try_join_all;
use futures_util::{StreamExt, TryStreamExt};
use proteus_log::port::{
    EventAppender, EventReader, EventSubscriber, Log, READ_BYTES_MAX, READ_EVENTS_MAX, TopicAdmin,
};
use proteus_log::topic::InvalidTopicConfig;
use proteus_log::{
    AppendReceipt, Cursor, Event, LogError, Offset, PartitionDescription, PartitionId,
    PutTopicOutcome, ReadBatch, ReadFrom, ReadLimits, StoredEvent, TopicConfig, TopicDescription,
    TopicName,
};
use proteus_nats::client::next_fetched;
use tokio::sync::watch;

use crate::config::NatsLogConfig;
use crate::meta::{StreamRole, TopicMeta};
use crate::names;

mod import;

/// Bytes of headers and subject a stored message may carry beyond its event, reserved when
/// checking sizes against the server's `max_payload` and the stream's `max_msg_size`.
pub const HEADER_BYTES_RESERVED: usize = 1024;
/// After a wake-up message, `wait_for_events` re-checks this soon, a few times, since the
/// stream may store the message a moment after core NATS delivered it.
const QUICK_RECHECK_MS: u64 = 5;
const QUICK_RECHECKS: u32 = 4;
/// Ephemeral read consumers are removed by the server after this idle time if the adapter
/// could not delete them itself.
const READ_CONSUMER_IDLE_MS: u64 = 30_000;
/// Read consumers kept between reads, over all partitions, so that a reader continuing where
/// its last read stopped (a group's coordinator, a tail) fetches at once instead of creating
/// and deleting a consumer for every read. Past it the least recently used is deleted.
const READ_CURSORS_MAX: usize = 256;
/// A kept read consumer is reused only if it was last used this recently: well before the
/// server removes it as idle.
const READ_CURSOR_REUSE_MS: u64 = READ_CONSUMER_IDLE_MS / 2;
/// Publishes whose acknowledgement may be awaited at once by one instance (all appends
/// together); past it an append fails with `Unavailable` rather than queueing without bound.
const ACKS_IN_FLIGHT_MAX: usize = 1 << 20;
/// Most events a read by direct gets returns (one request per event): the reader goes on from
/// where it stops, by then perhaps through a consumer again.
const DIRECT_READ_EVENTS_MAX: u32 = 1_000;
/// Direct gets of one read in flight at once.
const DIRECT_GETS_IN_FLIGHT: usize = 16;
/// Streams of one topic created, updated, described or deleted at once.
const STREAM_REQUESTS_IN_FLIGHT: usize = 16;
/// How long a claim is kept when the topic has no dedup window (claims are then not used).
const CLAIMS_AGE_DEFAULT_MS: u64 = 120_000;
/// JetStream's "stream not found" error code.
const STREAM_NOT_FOUND: u64 = 10059;
/// JetStream's "stream name already in use with a different configuration" error code.
const STREAM_NAME_IN_USE: u64 = 10058;
/// JetStream's "subjects overlap with an existing stream" error code.
const SUBJECTS_OVERLAP: u64 = 10065;
/// How JetStream says a message is larger than its stream's `max_msg_size` (error code 10054).
const MESSAGE_TOO_LARGE: &str = "error code 10054";

/// The log on NATS JetStream. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct NatsLog {
    inner: Arc<Inner>,
}

struct Inner {
    config: NatsLogConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    closed: AtomicBool,
    /// Per topic: the next round-robin partition for keyless batches.
    round_robin: StdMutex<HashMap<TopicName, u32>>,
    /// Read consumers parked after a read, by partition stream and the sequence they deliver
    /// next; a reader takes one out while it fetches, so none is ever shared.
    read_cursors: StdMutex<HashMap<CursorKey, ReadCursor>>,
    /// How many times the client has (re)connected: a consumer parked before the last
    /// reconnection may have been lost with the server's memory, and is not reused.
    connections: Arc<AtomicU64>,
    /// Topics' settings, for appends and reads (`NatsLog::topic`).
    topics: StdMutex<HashMap<TopicName, CachedTopic>>,
    /// Counted up each time a topic's settings are forgotten: a load in the background that
    /// began before does not bring back what it read then.
    topics_forgotten: AtomicU64,
    stop: watch::Sender<bool>,
}

/// A partition stream, told apart from a stream of the same name created later (a topic
/// deleted and created again) by its creation time, and the sequence a consumer delivers next.
#[derive(Clone, PartialEq, Eq, Hash)]
struct CursorKey {
    stream: String,
    created_ns: i128,
    next_seq: u64,
}

impl CursorKey {
    fn new(stream: &stream::Stream, next_seq: u64) -> CursorKey {
        let info = stream.cached_info();
        CursorKey {
            stream: info.config.name.clone(),
            created_ns: info.created.unix_timestamp_nanos(),
            next_seq,
        }
    }
}

/// What one read asks of a partition.
struct Read<'a> {
    topic: &'a Topic,
    stream: &'a stream::Stream,
    partition: PartitionId,
    /// Where the read starts, when it starts at a sequence (not at a time).
    start_seq: Option<u64>,
    events_max: u32,
    bytes_max: u32,
}

struct ReadCursor {
    consumer: consumer::PullConsumer,
    stream: stream::Stream,
    used: Instant,
    /// The client's connection count when it was parked.
    connection: u64,
}

/// A topic's name and settings, as kept in its partition 0 stream's description.
#[derive(Clone)]
struct Topic {
    name: TopicName,
    config: TopicConfig,
}

/// A topic's settings as last loaded, kept so that appends and reads need no JetStream API
/// request of their own for them: one request fewer per call, and a topic's other partitions
/// stay writable while its partition 0 stream (which holds the settings) elects a leader.
struct CachedTopic {
    topic: Arc<Topic>,
    loaded: Instant,
    /// Whether a load in the background is under way.
    refreshing: bool,
}

/// For this long after loading, a topic's cached settings are used as they are.
const TOPIC_FRESH_MS: u64 = 1_000;
/// Past `TOPIC_FRESH_MS` and up to this age, they are still used while a load in the background
/// replaces them (so a call never waits on a slow or leaderless partition 0 stream); older, a
/// call loads them itself. Another instance's change of a topic's settings is seen here one
/// call after `TOPIC_FRESH_MS`, once that load returns.
const TOPIC_STALE_MAX_MS: u64 = 60_000;
/// Most topics whose settings are cached; when full, every entry older than `TOPIC_FRESH_MS`
/// is dropped (and, should all be fresh, the new one is not cached).
const TOPICS_CACHED_MAX: usize = 4_096;

impl Topic {
    fn check_partition(&self, partition: PartitionId) -> Result<(), LogError> {
        if partition < self.config.partitions {
            Ok(())
        } else {
            Err(LogError::PartitionNotFound {
                topic: self.name.clone(),
                partition,
                partitions: self.config.partitions,
            })
        }
    }
}

/// A partition's offsets and times, from its stream's state: offset = stream sequence − 1.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    first_offset: Offset,
    end_offset: Offset,
    messages: u64,
    bytes: u64,
    first_ms: i64,
    last_ms: i64,
}

impl Bounds {
    fn of(state: &stream::State) -> Bounds {
        let end_offset = state.last_sequence;
        let first_offset = if state.messages == 0 {
            end_offset
        } else {
            state.first_sequence.saturating_sub(1).min(end_offset)
        };
        Bounds {
            first_offset,
            end_offset,
            messages: state.messages,
            bytes: state.bytes,
            first_ms: time_ms(state.first_timestamp),
            last_ms: time_ms(state.last_timestamp),
        }
    }
}

fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn time_ms(time: time::OffsetDateTime) -> i64 {
    (time.unix_timestamp_nanos() / 1_000_000) as i64
}

fn start_time(at_ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms.max(0)) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Reads retried while the server serving a read consumer is behind the stream's leader (a
/// replica catching up after a restart): the consumer delivers nothing where the leader has
/// events. With [`BEHIND_LEADER_RETRY_MS`], about five seconds before `Unavailable`.
const BEHIND_LEADER_READS_MAX: u32 = 250;
/// Pause before a read behind the leader asks again, in milliseconds.
const BEHIND_LEADER_RETRY_MS: u64 = 20;

/// Maps a client error: unreachable or slow servers are [`LogError::Unavailable`] (retry);
/// anything else is [`LogError::Storage`].
fn nats_error<E: std::fmt::Display + std::fmt::Debug>(context: &str, error: E) -> LogError {
    let text = format!("{error} {error:?}");
    if proteus_nats::client::is_transient_error(&text) {
        LogError::Unavailable {
            reason: format!(
                "NATS JetStream did not answer while {context}: {error}; the request can be retried once the server is reachable"
            ),
        }
    } else {
        LogError::Storage {
            context: format!("{context} on NATS JetStream"),
            source: std::io::Error::other(error.to_string()),
        }
    }
}

/// Deletes a read consumer in the background (the server removes it anyway once idle).
fn delete_consumer(stream: &stream::Stream, consumer: &consumer::PullConsumer) {
    delete_consumer_named(stream, consumer.cached_info().name.clone());
}

fn delete_consumer_named(stream: &stream::Stream, name: String) {
    let stream = stream.clone();
    tokio::spawn(async move {
        let _ = stream.delete_consumer(&name).await;
    });
}

fn lock<T>(mutex: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere mid-call; the map stays valid.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn jetstream_code<K: std::fmt::Debug>(kind: &K) -> Option<u64> {
    // The kinds of async-nats errors that wrap a JetStream API error print it as
    // `JetStream(Error { code: .., err_code: ErrorCode(n), .. })`.
    let text = format!("{kind:?}");
    let start = text.find("ErrorCode(")? + "ErrorCode(".len();
    let end = text[start..].find(')')? + start;
    text[start..end].parse().ok()
}

impl NatsLog {
    /// Whether its NATS server is reachable on this handle's connection and answers JetStream
    /// requests within `timeout` (for `/readyz` and `proteus_backend_up`); `Err` says why not.
    pub async fn check_health(&self, timeout: std::time::Duration) -> Result<(), String> {
        proteus_nats::client::check_health(&self.inner.client, &self.inner.config.url, timeout)
            .await
    }

    /// Connects to NATS and checks that JetStream answers. Fails with
    /// [`LogError::Unavailable`] if the server cannot be reached.
    pub async fn connect(config: NatsLogConfig) -> Result<NatsLog, LogError> {
        config.validate().map_err(|reason| LogError::Unavailable {
            reason: format!("invalid NATS log settings: {reason}"),
        })?;
        let connections = Arc::new(AtomicU64::new(0));
        let client = proteus_nats::client::connect(&proteus_nats::client::ClientSettings {
            url: &config.url,
            name: "proteus-log",
            connect_timeout_ms: config.connect_timeout_ms,
            request_timeout_ms: config.request_timeout_ms,
            reconnect_delay_max_ms: config.reconnect_delay_max_ms,
            connections: Some(connections.clone()),
            security: &config.security,
        })
        .await
        .map_err(|reason| LogError::Unavailable { reason })?;
        proteus_nats::client::check_replicas_supported(&client, &config.url, config.replicas)
            .map_err(|reason| LogError::Unavailable {
                reason: format!("invalid NATS log settings: {reason}"),
            })?;
        // Appends pipeline their publishes: allow many acknowledgements in flight, and fail
        // (rather than wait, which could deadlock appends holding part of the budget) past it.
        let js = ContextBuilder::new()
            .timeout(ms(config.request_timeout_ms))
            .max_ack_inflight(ACKS_IN_FLIGHT_MAX)
            .backpressure_on_inflight(false)
            .build(client.clone());
        let (stop, _) = watch::channel(false);
        let log = NatsLog {
            inner: Arc::new(Inner {
                config,
                client,
                js,
                closed: AtomicBool::new(false),
                round_robin: StdMutex::new(HashMap::new()),
                read_cursors: StdMutex::new(HashMap::new()),
                connections,
                topics: StdMutex::new(HashMap::new()),
                topics_forgotten: AtomicU64::new(0),
                stop,
            }),
        };
        if log.inner.config.retention_interval_ms > 0 {
            tokio::spawn(retention_task(
                Arc::downgrade(&log.inner),
                log.inner.stop.subscribe(),
                ms(log.inner.config.retention_interval_ms),
            ));
        }
        Ok(log)
    }

    pub fn config(&self) -> &NatsLogConfig {
        &self.inner.config
    }

    fn check_open(&self) -> Result<(), LogError> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(LogError::Unavailable {
                reason: "the NATS log has been shut down; open it again to use it".into(),
            })
        } else {
            Ok(())
        }
    }

    fn partition_stream(&self, topic: &TopicName, partition: PartitionId) -> String {
        names::partition_stream(&self.inner.config.stream_prefix, topic, partition)
    }

    fn claims_stream(&self, topic: &TopicName) -> String {
        names::claims_stream(&self.inner.config.stream_prefix, topic)
    }

    fn subject(&self, topic: &TopicName, partition: PartitionId) -> String {
        names::partition_subject(&self.inner.config.subject_prefix, topic, partition)
    }

    /// The largest event the server can take: its `max_payload` less room for headers. The
    /// client's own copy of the limit (one atomic load), where `server_info()` would clone the
    /// server's whole INFO on every append.
    fn payload_bytes_max(&self) -> usize {
        self.inner
            .client
            .max_payload()
            .saturating_sub(HEADER_BYTES_RESERVED)
    }

    /// A stream, or `None` if it does not exist.
    async fn get_stream(
        &self,
        name: &str,
        context: &str,
    ) -> Result<Option<stream::Stream>, LogError> {
        match self.inner.js.get_stream(name).await {
            Ok(stream) => Ok(Some(stream)),
            Err(error) if jetstream_code(&error.kind()) == Some(STREAM_NOT_FOUND) => Ok(None),
            Err(error) => Err(nats_error(context, error)),
        }
    }

    /// The error for a topic without a partition 0 stream: `TopicConflict` if the topic exists
    /// in the first layout of this adapter (one stream per topic), else `TopicNotFound`.
    async fn missing_topic(&self, name: &TopicName) -> LogError {
        let old = names::old_layout_stream(&self.inner.config.stream_prefix, name);
        if let Ok(Some(stream)) = self.get_stream(&old, "looking for an old topic").await
            && TopicMeta::old_layout_topic(stream.cached_info().config.description.as_deref())
                .is_some_and(|topic| &topic == name)
        {
            return old_layout_conflict(name, &old);
        }
        LogError::TopicNotFound {
            topic: name.clone(),
        }
    }

    /// The topic's settings for an append or a read: cached (see `CachedTopic`), loaded when
    /// not cached or too old.
    async fn topic(&self, name: &TopicName) -> Result<Arc<Topic>, LogError> {
        {
            let mut topics = lock(&self.inner.topics);
            if let Some(cached) = topics.get_mut(name) {
                let age = cached.loaded.elapsed();
                if age < ms(TOPIC_FRESH_MS) {
                    return Ok(cached.topic.clone());
                }
                if age < ms(TOPIC_STALE_MAX_MS) {
                    if !cached.refreshing {
                        cached.refreshing = true;
                        let (log, name) = (self.clone(), name.clone());
                        let forgotten = self.inner.topics_forgotten.load(Ordering::SeqCst);
                        tokio::spawn(async move {
                            let loaded = log.load_topic(&name).await;
                            let loaded = loaded.map(|(topic, _)| Arc::new(topic));
                            log.remember_topic(&name, loaded, forgotten);
                        });
                    }
                    return Ok(cached.topic.clone());
                }
            }
        }
        let forgotten = self.inner.topics_forgotten.load(Ordering::SeqCst);
        let (topic, _) = self.load_topic(name).await?;
        let topic = Arc::new(topic);
        self.remember_topic(name, Ok(topic.clone()), forgotten);
        Ok(topic)
    }

    /// Caches what loading `name` gave: its settings, or its absence (a topic deleted is
    /// forgotten). Any other failure keeps what was cached. Nothing is cached when a topic
    /// was forgotten since the load began (`forgotten`, the count then): it may have read
    /// settings changed meanwhile.
    fn remember_topic(
        &self,
        name: &TopicName,
        loaded: Result<Arc<Topic>, LogError>,
        forgotten: u64,
    ) {
        let mut topics = lock(&self.inner.topics);
        if self.inner.topics_forgotten.load(Ordering::SeqCst) != forgotten {
            if let Some(cached) = topics.get_mut(name) {
                cached.refreshing = false;
            }
            return;
        }
        match loaded {
            Ok(topic) => {
                if topics.len() >= TOPICS_CACHED_MAX && !topics.contains_key(name) {
                    topics.retain(|_, cached| cached.loaded.elapsed() < ms(TOPIC_FRESH_MS));
                    if topics.len() >= TOPICS_CACHED_MAX {
                        return;
                    }
                }
                topics.insert(
                    name.clone(),
                    CachedTopic {
                        topic,
                        loaded: Instant::now(),
                        refreshing: false,
                    },
                );
            }
            Err(LogError::TopicNotFound { .. }) => {
                topics.remove(name);
            }
            Err(_) => {
                if let Some(cached) = topics.get_mut(name) {
                    cached.refreshing = false;
                }
            }
        }
    }

    /// Drops the cached settings of `name` (created, changed or deleted through this log, or
    /// found gone).
    fn forget_topic(&self, name: &TopicName) {
        let mut topics = lock(&self.inner.topics);
        self.inner.topics_forgotten.fetch_add(1, Ordering::SeqCst);
        topics.remove(name);
    }

    /// Drops the cached settings of `name` when `result` says the topic is gone, so that the
    /// next call loads them (a topic deleted through another instance, or created again).
    fn forget_if_gone<T>(&self, name: &TopicName, result: &Result<T, LogError>) {
        if matches!(result, Err(LogError::TopicNotFound { .. })) {
            self.forget_topic(name);
        }
    }

    /// The topic's settings and its partition 0 stream, read from JetStream now.
    async fn load_topic(&self, name: &TopicName) -> Result<(Topic, stream::Stream), LogError> {
        let stream_name = self.partition_stream(name, 0);
        let Some(first) = self
            .get_stream(&stream_name, &format!("loading topic '{name}'"))
            .await?
        else {
            return Err(self.missing_topic(name).await);
        };
        let meta = TopicMeta::from_description(first.cached_info().config.description.as_deref())
            .filter(|meta| &meta.topic == name && meta.role == StreamRole::Partition(0))
            .ok_or_else(|| LogError::TopicNotFound {
                topic: name.clone(),
            })?;
        Ok((
            Topic {
                name: name.clone(),
                config: meta.config,
            },
            first,
        ))
    }

    /// A partition's stream with its current state.
    async fn partition(
        &self,
        topic: &Topic,
        partition: PartitionId,
    ) -> Result<stream::Stream, LogError> {
        let name = self.partition_stream(&topic.name, partition);
        self.get_stream(
            &name,
            &format!("loading partition {partition} of topic '{}'", topic.name),
        )
        .await?
        .ok_or_else(|| LogError::TopicNotFound {
            topic: topic.name.clone(),
        })
    }

    async fn bounds(&self, topic: &Topic, partition: PartitionId) -> Result<Bounds, LogError> {
        let stream = self.partition(topic, partition).await?;
        Ok(Bounds::of(&stream.cached_info().state))
    }

    fn stream_config(
        &self,
        name: &TopicName,
        config: &TopicConfig,
        role: StreamRole,
    ) -> stream::Config {
        let description = TopicMeta {
            topic: name.clone(),
            config: config.clone(),
            role,
        }
        .to_description();
        let common = stream::Config {
            description: Some(description),
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            storage: StorageType::File,
            num_replicas: self.inner.config.replicas,
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            allow_direct: true,
            ..Default::default()
        };
        match role {
            StreamRole::Partition(partition) => {
                let max_message_size = (config.event_bytes_max as usize + HEADER_BYTES_RESERVED)
                    .min(i32::MAX as usize);
                stream::Config {
                    name: self.partition_stream(name, partition),
                    subjects: vec![self.subject(name, partition)],
                    max_age: Duration::ZERO,
                    max_message_size: max_message_size as i32,
                    // 0 leaves the server's default; without a window no Nats-Msg-Id is sent.
                    duplicate_window: ms(config.dedup_window_ms),
                    ..common
                }
            }
            StreamRole::Claims => {
                // A claim matters only within the dedup window: it is removed after it.
                let window = if config.dedup_window_ms == 0 {
                    CLAIMS_AGE_DEFAULT_MS
                } else {
                    config.dedup_window_ms
                };
                stream::Config {
                    name: self.claims_stream(name),
                    subjects: vec![names::claims_subject(
                        &self.inner.config.subject_prefix,
                        name,
                    )],
                    max_age: ms(window),
                    max_message_size: 1024,
                    duplicate_window: ms(window),
                    ..common
                }
            }
        }
    }

    fn check_supported(&self, config: &TopicConfig) -> Result<(), LogError> {
        config.validate()?;
        if config.retention_bytes.is_some() {
            return Err(LogError::InvalidTopicConfig(InvalidTopicConfig {
                field: "retention_bytes",
                reason: "is not supported by the NATS JetStream backend: JetStream limits bytes per stream and removing a partition's newest event could lose its offset counter on servers before 2.10; leave it null (use retention_ms) or use the embedded backend".into(),
            }));
        }
        Ok(())
    }

    /// Creates a stream of the topic, or updates it if it is already this topic's stream in
    /// this role. `Ok(false)`: it existed (and was updated).
    async fn ensure_stream(
        &self,
        name: &TopicName,
        config: &TopicConfig,
        role: StreamRole,
    ) -> Result<bool, LogError> {
        let stream_config = self.stream_config(name, config, role);
        let stream_name = stream_config.name.clone();
        let subjects = stream_config.subjects.join(", ");
        let error = match self.inner.js.create_stream(stream_config.clone()).await {
            Ok(_) => return Ok(true),
            Err(error) => error,
        };
        match jetstream_code(&error.kind()) {
            Some(STREAM_NAME_IN_USE) => {
                let existing = self
                    .get_stream(&stream_name, &format!("creating topic '{name}'"))
                    .await?;
                let ours = existing.as_ref().is_some_and(|stream| {
                    TopicMeta::from_description(stream.cached_info().config.description.as_deref())
                        .is_some_and(|meta| &meta.topic == name && meta.role == role)
                });
                if !ours {
                    if let Some(stream) = &existing
                        && TopicMeta::old_layout_topic(
                            stream.cached_info().config.description.as_deref(),
                        )
                        .is_some()
                    {
                        return Err(LogError::TopicConflict {
                            topic: name.clone(),
                            reason: format!(
                                "the JetStream stream '{stream_name}' holds a topic in the old layout of the NATS log (one stream per topic), which this version cannot read; delete that stream or use another stream prefix"
                            ),
                        });
                    }
                    return Err(LogError::TopicConflict {
                        topic: name.clone(),
                        reason: format!(
                            "a JetStream stream named '{stream_name}' already exists and was not created by Proteus for this topic"
                        ),
                    });
                }
                // Replicas are chosen when a stream is created; an update keeps the stream's
                // own, so a topic's settings change never moves its data between servers
                // (`nats stream edit --replicas` does that, on purpose).
                let mut stream_config = stream_config;
                if let Some(stream) = &existing {
                    stream_config.num_replicas = stream.cached_info().config.num_replicas;
                }
                self.inner
                    .js
                    .update_stream(stream_config)
                    .await
                    .map_err(|e| nats_error(&format!("updating topic '{name}'"), e))?;
                Ok(false)
            }
            Some(SUBJECTS_OVERLAP) => Err(LogError::TopicConflict {
                topic: name.clone(),
                reason: format!(
                    "another JetStream stream already listens on its subject '{subjects}' (a topic in the old layout of the NATS log, or another deployment sharing the subject prefix)"
                ),
            }),
            _ => Err(nats_error(&format!("creating topic '{name}'"), error)),
        }
    }

    /// Creates or updates every stream of the topic but partition 0, which comes last: the
    /// topic exists once partition 0's stream does.
    async fn ensure_other_streams(
        &self,
        name: &TopicName,
        config: &TopicConfig,
    ) -> Result<(), LogError> {
        let mut roles: Vec<StreamRole> =
            (1..config.partitions).map(StreamRole::Partition).collect();
        if config.partitions > 1 {
            roles.push(StreamRole::Claims);
        }
        futures_util::stream::iter(roles)
            .map(|role| self.ensure_stream(name, config, role))
            .buffer_unordered(STREAM_REQUESTS_IN_FLIGHT)
            .try_collect::<Vec<bool>>()
            .await?;
        Ok(())
    }

    async fn put_topic_impl(
        &self,
        name: &TopicName,
        config: TopicConfig,
    ) -> Result<PutTopicOutcome, LogError> {
        self.check_open()?;
        self.check_supported(&config)?;
        for _ in 0..3 {
            match self.load_topic(name).await {
                Ok((existing, _)) => {
                    if existing.config.partitions != config.partitions {
                        return Err(LogError::partition_count_fixed(
                            name,
                            existing.config.partitions,
                            config.partitions,
                        ));
                    }
                    if existing.config == config {
                        return Ok(PutTopicOutcome::Unchanged);
                    }
                    self.ensure_other_streams(name, &config).await?;
                    self.ensure_stream(name, &config, StreamRole::Partition(0))
                        .await?;
                    return Ok(PutTopicOutcome::Updated);
                }
                Err(LogError::TopicNotFound { .. }) => {
                    self.ensure_other_streams(name, &config).await?;
                    if self
                        .ensure_stream(name, &config, StreamRole::Partition(0))
                        .await?
                    {
                        return Ok(PutTopicOutcome::Created);
                    }
                    // Created meanwhile by another instance (and now updated to this
                    // configuration): look again.
                }
                Err(other) => return Err(other),
            }
        }
        Err(LogError::Unavailable {
            reason: format!(
                "topic '{name}' kept changing while it was being created; retry the request"
            ),
        })
    }

    /// Every topic of this adapter's stream prefix.
    async fn own_topics(&self) -> Result<Vec<(Topic, stream::Stream)>, LogError> {
        let prefix = format!("{}_", self.inner.config.stream_prefix);
        let mut names = Vec::new();
        let mut streams = self.inner.js.streams();
        while let Some(info) = streams.next().await {
            let info = info.map_err(|e| nats_error("listing topics", e))?;
            if !info.config.name.starts_with(&prefix) {
                continue;
            }
            if let Some(meta) = TopicMeta::from_description(info.config.description.as_deref())
                && meta.role == StreamRole::Partition(0)
                && self.partition_stream(&meta.topic, 0) == info.config.name
            {
                names.push(meta.topic);
            }
        }
        names.sort();
        let mut topics = Vec::with_capacity(names.len());
        for name in names {
            match self.load_topic(&name).await {
                Ok(loaded) => topics.push(loaded),
                Err(LogError::TopicNotFound { .. }) => {} // deleted meanwhile
                Err(other) => return Err(other),
            }
        }
        Ok(topics)
    }

    /// The topic with its partitions' offsets; `first` is its partition 0 stream as just
    /// loaded.
    async fn describe(
        &self,
        topic: &Topic,
        first: &stream::Stream,
    ) -> Result<TopicDescription, LogError> {
        let partitions = futures_util::stream::iter(0..topic.config.partitions)
            .map(|partition| async move {
                let bounds = if partition == 0 {
                    Bounds::of(&first.cached_info().state)
                } else {
                    self.bounds(topic, partition).await?
                };
                Ok::<_, LogError>(PartitionDescription {
                    partition,
                    first_offset: bounds.first_offset,
                    next_offset: bounds.end_offset,
                    bytes: bounds.bytes,
                    segments: None,
                })
            })
            .buffered(STREAM_REQUESTS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(TopicDescription {
            name: topic.name.clone(),
            config: topic.config.clone(),
            partitions,
        })
    }

    async fn publish_error(
        &self,
        topic: &Topic,
        partition: PartitionId,
        index: usize,
        event: &Event,
        error: async_nats::jetstream::context::PublishError,
    ) -> LogError {
        match error.kind() {
            PublishErrorKind::StreamNotFound => {
                let stream_name = self.partition_stream(&topic.name, partition);
                self.no_stream_answered(topic, &stream_name).await
            }
            PublishErrorKind::MaxPayloadExceeded => LogError::EventTooLarge {
                topic: topic.name.clone(),
                index,
                bytes: event.json().len(),
                max: self.payload_bytes_max() as u32,
            },
            // The stream's own size limit refused it: the topic's `event_bytes_max` was
            // lowered (through another instance) since this log cached its settings.
            _ if error.to_string().contains(MESSAGE_TOO_LARGE) => {
                self.forget_topic(&topic.name);
                let max = match self.load_topic(&topic.name).await {
                    Ok((current, _)) => current.config.event_bytes_max,
                    Err(_) => topic.config.event_bytes_max,
                };
                LogError::EventTooLarge {
                    topic: topic.name.clone(),
                    index,
                    bytes: event.json().len(),
                    max: max.min(self.payload_bytes_max() as u32),
                }
            }
            _ => nats_error(
                &format!(
                    "appending event {index} to partition {partition} of topic '{}' (it may or may not have been stored; retry with the same ids)",
                    topic.name
                ),
                error,
            ),
        }
    }

    /// What a publish answered "no stream found for given subject" (no responders) means:
    /// the topic is gone if its stream is, else the stream has no leader at the moment, as
    /// while a JetStream cluster elects one after losing a server, and a retry will be taken.
    async fn no_stream_answered(&self, topic: &Topic, stream_name: &str) -> LogError {
        match self
            .get_stream(stream_name, &format!("appending to topic '{}'", topic.name))
            .await
        {
            Ok(None) => LogError::TopicNotFound {
                topic: topic.name.clone(),
            },
            Ok(Some(_)) => LogError::Unavailable {
                reason: format!(
                    "no NATS server took the append to topic '{}': its stream {stream_name} has no leader right now (a JetStream cluster elects a new one within seconds of losing a server); nothing was stored, retry",
                    topic.name
                ),
            },
            Err(error) => error,
        }
    }

    /// Appends one partition's events in order: every publish is sent, then the
    /// acknowledgements are awaited in order. The server assigns the stream sequences, so the
    /// offsets (sequence − 1) are gapless and unique whatever the number of writers.
    async fn append_partition(
        &self,
        topic: &Topic,
        partition: PartitionId,
        events: Vec<(usize, &Event)>,
    ) -> Result<Vec<(usize, AppendReceipt)>, LogError> {
        let subject = self.subject(&topic.name, partition);
        let stream_name = self.partition_stream(&topic.name, partition);
        let dedup = topic.config.dedup_window_ms > 0;
        let mut pending: Vec<PublishAckFuture> = Vec::with_capacity(events.len());
        for &(index, event) in &events {
            let mut headers = HeaderMap::new();
            if dedup {
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    format!("{:032x}", event.dedup_key().0).as_str(),
                );
            }
            let sent = self
                .inner
                .js
                .publish_with_headers(
                    subject.clone(),
                    headers,
                    Bytes::copy_from_slice(event.json()),
                )
                .await;
            match sent {
                Ok(future) => pending.push(future),
                Err(error) => {
                    return Err(self
                        .publish_error(topic, partition, index, event, error)
                        .await);
                }
            }
        }
        let mut receipts = Vec::with_capacity(events.len());
        for ((index, event), future) in events.into_iter().zip(pending) {
            let ack = match future.await {
                Ok(ack) => ack,
                Err(error) => {
                    return Err(self
                        .publish_error(topic, partition, index, event, error)
                        .await);
                }
            };
            if ack.stream != stream_name || ack.sequence == 0 {
                return Err(LogError::Storage {
                    context: format!(
                        "appending event {index} to partition {partition} of topic '{}' on NATS JetStream",
                        topic.name
                    ),
                    source: std::io::Error::other(format!(
                        "the message was stored in stream '{}' at sequence {}, not in '{stream_name}': another stream listens on the partition's subject '{subject}'",
                        ack.stream, ack.sequence
                    )),
                });
            }
            receipts.push((
                index,
                AppendReceipt {
                    partition,
                    offset: ack.sequence - 1,
                    duplicate: ack.duplicate,
                },
            ));
        }
        Ok(receipts)
    }

    /// The partition of a call's keyless events. Round-robin, except that a retried batch must
    /// land where it first did, since deduplication is per partition stream: the batch claims
    /// the round-robin choice in the topic's claims stream under its first keyless event's
    /// dedup key, and a retry finds the original claim (a duplicate) and uses its partition.
    async fn keyless_partition(
        &self,
        topic: &Topic,
        first: &Event,
    ) -> Result<PartitionId, LogError> {
        let partitions = topic.config.partitions;
        if partitions == 1 {
            return Ok(0);
        }
        let chosen = {
            let mut round_robin = self.inner.round_robin.lock().expect("round-robin poisoned");
            let next = round_robin.entry(topic.name.clone()).or_insert(0);
            let partition = *next % partitions;
            *next = next.wrapping_add(1) % partitions;
            partition
        };
        if topic.config.dedup_window_ms == 0 {
            return Ok(chosen);
        }
        let context = || {
            format!(
                "choosing the partition of keyless events of topic '{}'",
                topic.name
            )
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{:032x}", first.dedup_key().0).as_str(),
        );
        let subject = names::claims_subject(&self.inner.config.subject_prefix, &topic.name);
        let sent = self
            .inner
            .js
            .publish_with_headers(subject, headers, Bytes::from(chosen.to_string()))
            .await;
        let acked = match sent {
            Ok(future) => future.await,
            Err(error) => Err(error),
        };
        let ack = match acked {
            Ok(ack) => ack,
            Err(error) if matches!(error.kind(), PublishErrorKind::StreamNotFound) => {
                // The claims stream is created with the topic; without it the topic is gone
                // (or was being created or deleted meanwhile). With it, it has no leader.
                let claims = self.claims_stream(&topic.name);
                return Err(self.no_stream_answered(topic, &claims).await);
            }
            Err(error) => return Err(nats_error(&context(), error)),
        };
        if !ack.duplicate {
            return Ok(chosen);
        }
        let claims = self
            .get_stream(&self.claims_stream(&topic.name), &context())
            .await?
            .ok_or_else(|| LogError::TopicNotFound {
                topic: topic.name.clone(),
            })?;
        match claims.get_raw_message(ack.sequence).await {
            Ok(message) => Ok(std::str::from_utf8(&message.payload)
                .ok()
                .and_then(|text| text.parse::<PartitionId>().ok())
                .filter(|&partition| partition < partitions)
                .unwrap_or(chosen)),
            // The claim aged out between the acknowledgement and the read: so did the batch's
            // ids, and the round-robin choice is as good as any.
            Err(error)
                if matches!(
                    error.kind(),
                    async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound
                ) =>
            {
                Ok(chosen)
            }
            Err(error) => Err(nats_error(&context(), error)),
        }
    }

    async fn append_impl(
        &self,
        name: &TopicName,
        events: Vec<Event>,
    ) -> Result<Vec<AppendReceipt>, LogError> {
        self.check_open()?;
        let topic = self.topic(name).await?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let max = (topic.config.event_bytes_max as usize).min(self.payload_bytes_max());
        for (index, event) in events.iter().enumerate() {
            if event.json().len() > max {
                return Err(LogError::EventTooLarge {
                    topic: name.clone(),
                    index,
                    bytes: event.json().len(),
                    max: max as u32,
                });
            }
        }
        let partitions = topic.config.partitions;
        let keyless = match events.iter().find(|e| e.routing_key().is_none()) {
            Some(first) => self.keyless_partition(&topic, first).await?,
            None => 0,
        };
        // A repeat within the call is answered from its first occurrence, without a request.
        let dedup = topic.config.dedup_window_ms > 0;
        let mut first_of: HashMap<u128, usize> = HashMap::new();
        let mut repeats: Vec<(usize, usize)> = Vec::new();
        let mut per_partition: HashMap<PartitionId, Vec<(usize, &Event)>> = HashMap::new();
        for (index, event) in events.iter().enumerate() {
            if dedup {
                if let Some(&first) = first_of.get(&event.dedup_key().0) {
                    repeats.push((index, first));
                    continue;
                }
                first_of.insert(event.dedup_key().0, index);
            }
            let partition = match event.routing_key() {
                Some(key) => proteus_log::partitioner::partition_for_key(key, partitions),
                None => keyless,
            };
            per_partition
                .entry(partition)
                .or_default()
                .push((index, event));
        }
        let results = try_join_all(
            per_partition
                .into_iter()
                .map(|(partition, events)| self.append_partition(&topic, partition, events)),
        )
        .await?;
        let mut receipts: Vec<Option<AppendReceipt>> = vec![None; events.len()];
        for (index, receipt) in results.into_iter().flatten() {
            receipts[index] = Some(receipt);
        }
        for (index, first) in repeats {
            let original = receipts[first].expect("a first occurrence is appended");
            receipts[index] = Some(AppendReceipt {
                duplicate: true,
                ..original
            });
        }
        Ok(receipts
            .into_iter()
            .map(|r| r.expect("every event has a receipt"))
            .collect())
    }

    /// Reads from an ephemeral consumer of the partition's stream: the one parked by the read
    /// that stopped exactly where this one starts, if any, else a new one. The consumer is
    /// parked again afterwards when it stopped exactly after the events returned.
    async fn fetch(
        &self,
        topic: &Topic,
        stream: &stream::Stream,
        partition: PartitionId,
        deliver_policy: DeliverPolicy,
        events_max: u32,
        bytes_max: u32,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let context = || format!("reading partition {partition} of topic '{}'", topic.name);
        let start_seq = match deliver_policy {
            DeliverPolicy::ByStartSequence { start_sequence } => Some(start_sequence),
            _ => None,
        };
        let read = Read {
            topic,
            stream,
            partition,
            start_seq,
            events_max,
            bytes_max,
        };
        let parked = start_seq.and_then(|seq| self.take_cursor(&CursorKey::new(stream, seq)));
        if let Some(consumer) = parked {
            // A consumer the server dropped meanwhile (it restarted: read consumers are kept in
            // memory) never answers a fetch: the fetch times out (`next_fetched`) and deletes
            // it, then the read goes on with a new one.
            if let Ok(events) = self.fetch_and_park(&read, consumer).await {
                return Ok(events);
            }
        }
        let config = consumer::pull::Config {
            deliver_policy,
            ack_policy: AckPolicy::None,
            inactive_threshold: ms(READ_CONSUMER_IDLE_MS),
            memory_storage: true,
            ..Default::default()
        };
        let created = proteus_nats::client::consumer_in_time(stream, config)
            .await
            .map_err(|e| nats_error(&context(), e))?;
        match created {
            Some(consumer) => self.fetch_and_park(&read, consumer).await,
            // No answer in time: the metadata leader may be being elected. The partition's
            // stream (its leader or any replica) serves its messages by sequence without it
            // (a read by time first finds its time by bisection).
            None => {
                let start_seq = match deliver_policy {
                    DeliverPolicy::ByStartTime { start_time } => {
                        self.first_seq_at(&read, time_ms(start_time)).await?
                    }
                    // Reads start at a time or at a sequence; any other at the first.
                    _ => start_seq.unwrap_or(stream.cached_info().state.first_sequence),
                };
                self.fetch_direct(&read, start_seq).await
            }
        }
    }

    /// The first sequence of the partition's stream stored at or after `at_ms` (after its
    /// last if none), found with direct gets by bisection: the stream's leader stamps messages
    /// in order as it stores them. At most about 64 gets; a message not found (a replica
    /// catching up answered) fails the read retriably.
    async fn first_seq_at(&self, read: &Read<'_>, at_ms: i64) -> Result<u64, LogError> {
        let state = &read.stream.cached_info().state;
        let (mut low, mut high) = (state.first_sequence, state.last_sequence + 1);
        while low < high {
            let middle = low + (high - low) / 2;
            let message = read.stream.direct_get(middle).await.map_err(|error| {
                let what = format!(
                    "looking for time {at_ms} ms in partition {} of topic '{}' by direct gets",
                    read.partition, read.topic.name
                );
                if matches!(error.kind(), stream::DirectGetErrorKind::NotFound) {
                    LogError::Unavailable {
                        reason: format!(
                            "{what}: the server answering lacks offset {} (a replica catching \
                             up), and no consumer could be created (the cluster may be electing \
                             its metadata leader); retry",
                            middle - 1
                        ),
                    }
                } else {
                    nats_error(&what, error)
                }
            })?;
            if time_ms(message.time) < at_ms {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        Ok(low)
    }

    /// Reads from `start_seq` with a direct get per message (served by the partition stream's
    /// leader or any replica, without a consumer), up to the end the stream's description gave
    /// and [`DIRECT_READ_EVENTS_MAX`] events. Stops at the first message not found: a replica
    /// still catching up answers so for messages it lacks. When that is the first one, the
    /// read fails retriably rather than returning nothing (which the caller would take for a
    /// lagging consumer and read again, each time after another wait for a consumer).
    async fn fetch_direct(
        &self,
        read: &Read<'_>,
        start_seq: u64,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let context = || {
            format!(
                "reading partition {} of topic '{}' by direct gets",
                read.partition, read.topic.name
            )
        };
        let last_seq = read.stream.cached_info().state.last_sequence;
        let events_max = read.events_max.min(DIRECT_READ_EVENTS_MAX);
        let end_seq = last_seq.min(start_seq.saturating_add(u64::from(events_max) - 1));
        let mut gets = futures_util::stream::iter(start_seq..=end_seq)
            .map(|seq| read.stream.direct_get(seq))
            .buffered(DIRECT_GETS_IN_FLIGHT);
        let mut events: Vec<StoredEvent> = Vec::new();
        let mut bytes = 0usize;
        while let Some(got) = gets.next().await {
            let message = match got {
                Ok(message) => message,
                Err(error) if matches!(error.kind(), stream::DirectGetErrorKind::NotFound) => {
                    if events.is_empty() && start_seq <= last_seq {
                        return Err(LogError::Unavailable {
                            reason: format!(
                                "{}: the server answering lacks offset {} (a replica catching \
                                 up, or events removed by retention meanwhile), and no consumer \
                                 could be created (the cluster may be electing its metadata \
                                 leader); nothing was skipped, retry",
                                context(),
                                start_seq - 1
                            ),
                        });
                    }
                    break;
                }
                Err(error) => return Err(nats_error(&context(), error)),
            };
            let json = message.payload;
            if !events.is_empty() && bytes + json.len() > read.bytes_max as usize {
                break;
            }
            bytes += json.len();
            events.push(StoredEvent {
                partition: read.partition,
                offset: message.sequence.saturating_sub(1),
                append_time_ms: time_ms(message.time),
                json,
            });
        }
        Ok(events)
    }

    /// Fetches one read's events with `consumer`, then parks the consumer or deletes it.
    async fn fetch_and_park(
        &self,
        read: &Read<'_>,
        consumer: consumer::PullConsumer,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let subject_len = self.subject(&read.topic.name, read.partition).len();
        let fetched = self
            .fetch_from(
                &consumer,
                read.topic,
                read.partition,
                subject_len,
                read.events_max,
                read.bytes_max,
            )
            .await;
        match fetched {
            Ok((events, whole)) => {
                self.park_cursor(read.stream, consumer, read.start_seq, &events, whole);
                Ok(events)
            }
            Err(error) => {
                delete_consumer(read.stream, &consumer);
                Err(error)
            }
        }
    }

    /// The consumer parked at `key`, if it was used recently enough.
    fn take_cursor(&self, key: &CursorKey) -> Option<consumer::PullConsumer> {
        let mut cursors = lock(&self.inner.read_cursors);
        let cursor = cursors.remove(key)?;
        let connection = self.inner.connections.load(Ordering::SeqCst);
        if cursor.used.elapsed() < ms(READ_CURSOR_REUSE_MS) && cursor.connection == connection {
            Some(cursor.consumer)
        } else {
            delete_consumer(&cursor.stream, &cursor.consumer);
            None
        }
    }

    /// Parks `consumer` under the sequence it delivers next, or deletes it when that is not
    /// known exactly: some delivered events were not returned (`whole` false), or a read by
    /// time returned nothing.
    fn park_cursor(
        &self,
        stream: &stream::Stream,
        consumer: consumer::PullConsumer,
        start_seq: Option<u64>,
        events: &[StoredEvent],
        whole: bool,
    ) {
        // Offsets are sequences − 1.
        let next_seq = events.last().map(|last| last.offset + 2).or(start_seq);
        let Some(next_seq) = next_seq.filter(|_| whole) else {
            delete_consumer(stream, &consumer);
            return;
        };
        let key = CursorKey::new(stream, next_seq);
        let mut cursors = lock(&self.inner.read_cursors);
        if cursors.len() >= READ_CURSORS_MAX
            && let Some(oldest) = cursors
                .iter()
                .min_by_key(|(_, cursor)| cursor.used)
                .map(|(key, _)| key.clone())
            && let Some(evicted) = cursors.remove(&oldest)
        {
            delete_consumer(&evicted.stream, &evicted.consumer);
        }
        let parked = ReadCursor {
            consumer,
            stream: stream.clone(),
            used: Instant::now(),
            connection: self.inner.connections.load(Ordering::SeqCst),
        };
        if let Some(displaced) = cursors.insert(key, parked) {
            delete_consumer(&displaced.stream, &displaced.consumer);
        }
    }

    async fn fetch_from(
        &self,
        consumer: &consumer::PullConsumer,
        topic: &Topic,
        partition: PartitionId,
        subject_len: usize,
        events_max: u32,
        bytes_max: u32,
    ) -> Result<(Vec<StoredEvent>, bool), LogError> {
        let context = || format!("reading partition {partition} of topic '{}'", topic.name);
        // Whether every event the server delivered is returned, so the consumer stands just
        // after the last one.
        let mut whole = true;
        // The server counts headers and subject too; ask for enough and trim here.
        let overhead = HEADER_BYTES_RESERVED / 2 + subject_len;
        let server_bytes = (bytes_max as usize).saturating_add(events_max as usize * overhead);
        let mut events: Vec<StoredEvent> = Vec::new();
        let mut bytes = 0usize;
        let mut unanswered_fetches = 0;
        let mut attempt = 0;
        while attempt < 2 {
            let mut fetch = consumer.fetch().max_messages(events_max as usize);
            if attempt == 0 {
                fetch = fetch.max_bytes(server_bytes);
            } else {
                // The first message alone is larger than the byte budget: at least one event
                // is returned anyway.
                fetch = fetch.max_messages(1);
            }
            let mut batch = fetch
                .messages()
                .await
                .map_err(|e| nats_error(&context(), e))?;
            let mut refused_for_size = false;
            let mut unanswered = false;
            let idle = ms(self.inner.config.request_timeout_ms);
            while let Some(item) = next_fetched(&mut batch, idle)
                .await
                .map_err(|e| nats_error(&context(), e))?
            {
                let message = match item {
                    Ok(message) => message,
                    Err(error) => {
                        let text = error.to_string();
                        if text.contains("409") || text.to_ascii_lowercase().contains("maxbytes") {
                            refused_for_size = true;
                            break;
                        }
                        // On a cluster a new consumer's leader may not take pull requests
                        // yet: its first fetch is answered 503 (no responders). Ask again.
                        if proteus_nats::client::is_unanswered_fetch(&text)
                            && events.is_empty()
                            && unanswered_fetches < proteus_nats::client::FRESH_CONSUMER_FETCHES_MAX
                        {
                            unanswered = true;
                            break;
                        }
                        return Err(nats_error(&context(), error));
                    }
                };
                let info = message.info().map_err(|e| nats_error(&context(), e))?;
                let (seq, published) = (info.stream_sequence, info.published);
                let json = message.message.payload.clone();
                if !events.is_empty() && bytes + json.len() > bytes_max as usize {
                    whole = false;
                    break;
                }
                bytes += json.len();
                events.push(StoredEvent {
                    partition,
                    offset: seq.saturating_sub(1),
                    append_time_ms: time_ms(published),
                    json,
                });
                if events.len() >= events_max as usize {
                    break;
                }
            }
            if unanswered {
                unanswered_fetches += 1;
                tokio::time::sleep(ms(proteus_nats::client::FRESH_CONSUMER_RETRY_MS)).await;
                continue;
            }
            if !(events.is_empty() && refused_for_size) {
                break;
            }
            // The second attempt fetches one event after a refusal: keep it simple, do not
            // reuse the consumer.
            whole = false;
            attempt += 1;
        }
        Ok((events, whole))
    }

    async fn read_impl(
        &self,
        name: &TopicName,
        partition: PartitionId,
        from: ReadFrom,
        limits: ReadLimits,
    ) -> Result<ReadBatch, LogError> {
        self.check_open()?;
        let topic = self.topic(name).await?;
        topic.check_partition(partition)?;
        let events_max = limits.events_max.clamp(1, READ_EVENTS_MAX);
        let bytes_max = limits.bytes_max.min(READ_BYTES_MAX);
        let stream = self.partition(&topic, partition).await?;
        let bounds = Bounds::of(&stream.cached_info().state);
        let (first_offset, end_offset) = (bounds.first_offset, bounds.end_offset);
        let empty = |next_offset| ReadBatch {
            events: Vec::new(),
            next_offset,
            first_offset,
            end_offset,
        };
        let mut policy = match from {
            ReadFrom::Offset(offset) => {
                if offset > end_offset {
                    return Err(LogError::OffsetOutOfRange {
                        topic: name.clone(),
                        partition,
                        offset,
                        end_offset,
                    });
                }
                if offset == end_offset {
                    return Ok(empty(offset));
                }
                DeliverPolicy::ByStartSequence {
                    start_sequence: offset.max(first_offset) + 1,
                }
            }
            ReadFrom::TimeMs(at) => {
                if bounds.messages == 0 || bounds.last_ms < at {
                    return Ok(empty(end_offset));
                }
                DeliverPolicy::ByStartTime {
                    start_time: start_time(at),
                }
            }
        };
        let mut behind_leader_reads = 0;
        let too_far_behind = |end_offset| LogError::Unavailable {
            reason: format!(
                "reading partition {partition} of topic '{name}': the server holding the read \
                 is behind the stream's leader (a replica catching up after a restart) and \
                 delivered none of the events the leader has up to offset {end_offset}; \
                 nothing was skipped, retry"
            ),
        };
        loop {
            let mut events = self
                .fetch(&topic, &stream, partition, policy, events_max, bytes_max)
                .await?;
            if let ReadFrom::TimeMs(at) = from {
                // A consumer placed on a replica still catching up finds the start time in
                // that replica's copy: when the copy ends before `at`, the consumer starts at
                // its end and then delivers, as they are copied, events older than `at`. Skip
                // them and read on from after them.
                let older = events.iter().take_while(|e| e.append_time_ms < at).count();
                if older > 0 {
                    let after_older = events[older - 1].offset + 2;
                    events.drain(..older);
                    if events.is_empty() {
                        policy = DeliverPolicy::ByStartSequence {
                            start_sequence: after_older,
                        };
                        behind_leader_reads += 1;
                        if behind_leader_reads >= BEHIND_LEADER_READS_MAX {
                            return Err(too_far_behind(end_offset));
                        }
                        continue;
                    }
                }
            }
            if let Some(last) = events.last() {
                let next_offset = last.offset + 1;
                return Ok(ReadBatch {
                    next_offset,
                    first_offset: first_offset.min(events[0].offset),
                    end_offset: end_offset.max(next_offset),
                    events,
                });
            }
            // The stream's leader counted events from here on, yet the consumer delivered
            // none. Either they were removed meanwhile (retention), or the consumer was placed
            // on a replica still catching up after a restart: answering "nothing until the
            // end" would make the reader skip them. Ask the leader again, and wait for the
            // replica while it still counts them.
            let now = self.bounds(&topic, partition).await?;
            let still_there = now.messages > 0
                && match from {
                    ReadFrom::Offset(offset) => now.end_offset > offset,
                    ReadFrom::TimeMs(at) => now.last_ms >= at,
                };
            if !still_there {
                return Ok(ReadBatch {
                    events: Vec::new(),
                    next_offset: now.end_offset,
                    first_offset: now.first_offset,
                    end_offset: now.end_offset,
                });
            }
            behind_leader_reads += 1;
            if behind_leader_reads >= BEHIND_LEADER_READS_MAX {
                return Err(too_far_behind(now.end_offset));
            }
            tokio::time::sleep(ms(BEHIND_LEADER_RETRY_MS)).await;
        }
    }

    /// Whether a watched partition has an event at or after the cursor's offset.
    async fn any_ready(
        &self,
        topic: &Topic,
        watched: &[(PartitionId, Offset)],
    ) -> Result<bool, LogError> {
        let ends = try_join_all(watched.iter().map(|&(partition, _)| async move {
            Ok::<_, LogError>(self.bounds(topic, partition).await?.end_offset)
        }))
        .await?;
        Ok(watched
            .iter()
            .zip(ends)
            .any(|(&(_, offset), end)| end > offset))
    }

    async fn wait_impl(
        &self,
        name: &TopicName,
        positions: &Cursor,
        timeout: Duration,
    ) -> Result<bool, LogError> {
        self.check_open()?;
        let deadline = Instant::now() + proteus_log::port::bounded_wait(timeout);
        let topic = self.topic(name).await?;
        let watched: Vec<(PartitionId, Offset)> = positions.iter().collect();
        for &(partition, _) in &watched {
            topic.check_partition(partition)?;
        }
        if watched.is_empty() {
            tokio::time::sleep_until(deadline.into()).await;
            return Ok(false);
        }
        // Subscribe before the first check, so an append between the two still wakes us.
        let mut wakeups = self
            .inner
            .client
            .subscribe(names::topic_subjects(
                &self.inner.config.subject_prefix,
                name,
            ))
            .await
            .map_err(|e| nats_error(&format!("watching topic '{name}'"), e))?;
        self.inner
            .client
            .flush()
            .await
            .map_err(|e| nats_error(&format!("watching topic '{name}'"), e))?;
        let poll = ms(self.inner.config.wait_poll_interval_ms);
        let mut quick = 0;
        loop {
            self.check_open()?;
            if self.any_ready(&topic, &watched).await? {
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
            loop {
                tokio::select! {
                    message = wakeups.next() => match message {
                        Some(message) => {
                            let partition = names::partition_of_subject(&message.subject);
                            if watched.iter().any(|&(p, _)| Some(p) == partition) {
                                quick = QUICK_RECHECKS;
                                break;
                            }
                        }
                        None => {
                            tokio::time::sleep_until(tick.into()).await;
                            break;
                        }
                    },
                    _ = tokio::time::sleep_until(tick.into()) => break,
                }
            }
        }
    }

    /// Applies `retention_ms` to every topic of this stream prefix now: in each partition,
    /// removes the events older than the retention, always keeping the partition's newest
    /// event. Returns how many events were removed.
    pub async fn apply_retention(&self) -> Result<u64, LogError> {
        self.check_open()?;
        let mut removed = 0;
        for (topic, _) in self.own_topics().await? {
            if let Some(retention_ms) = topic.config.retention_ms {
                removed += self.retain(&topic, retention_ms).await?;
            }
        }
        Ok(removed)
    }

    async fn retain(&self, topic: &Topic, retention_ms: u64) -> Result<u64, LogError> {
        let cutoff_ms = now_ms().saturating_sub(i64::try_from(retention_ms).unwrap_or(i64::MAX));
        let mut removed = 0;
        for partition in 0..topic.config.partitions {
            let stream = self.partition(topic, partition).await?;
            let bounds = Bounds::of(&stream.cached_info().state);
            if bounds.messages <= 1 || bounds.first_ms >= cutoff_ms {
                continue;
            }
            // Sequences are offsets + 1.
            let last_seq = bounds.end_offset;
            let keep_from = if bounds.last_ms < cutoff_ms {
                last_seq
            } else {
                let first_kept = self
                    .fetch(
                        topic,
                        &stream,
                        partition,
                        DeliverPolicy::ByStartTime {
                            start_time: start_time(cutoff_ms),
                        },
                        1,
                        0,
                    )
                    .await?;
                first_kept
                    .first()
                    .map_or(last_seq, |event| (event.offset + 1).min(last_seq))
            };
            if keep_from <= bounds.first_offset + 1 {
                continue;
            }
            let response = stream.purge().sequence(keep_from).await.map_err(|e| {
                nats_error(
                    &format!(
                        "removing old events of partition {partition} of topic '{}'",
                        topic.name
                    ),
                    e,
                )
            })?;
            removed += response.purged;
        }
        Ok(removed)
    }

    async fn delete_stream(&self, topic: &TopicName, stream: String) -> Result<bool, LogError> {
        match self.inner.js.delete_stream(&stream).await {
            Ok(_) => Ok(true),
            Err(error) if jetstream_code(&error.kind()) == Some(STREAM_NOT_FOUND) => Ok(false),
            Err(error) => Err(nats_error(&format!("deleting topic '{topic}'"), error)),
        }
    }
}

fn old_layout_conflict(name: &TopicName, stream: &str) -> LogError {
    LogError::TopicConflict {
        topic: name.clone(),
        reason: format!(
            "it is stored in the JetStream stream '{stream}' in the old layout of the NATS log (one stream per topic), which this version cannot read; its events are not migrated: delete that stream or use another stream prefix"
        ),
    }
}

async fn retention_task(inner: Weak<Inner>, mut stop: watch::Receiver<bool>, every: Duration) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let log = NatsLog { inner };
        if let Err(error) = log.apply_retention().await {
            tracing::warn!(%error, "applying retention to NATS JetStream topics failed");
        }
    }
}

#[async_trait]
impl TopicAdmin for NatsLog {
    async fn put_topic(
        &self,
        name: &TopicName,
        config: TopicConfig,
    ) -> Result<PutTopicOutcome, LogError> {
        let outcome = self.put_topic_impl(name, config).await;
        self.forget_topic(name);
        outcome
    }

    async fn list_topics(&self) -> Result<Vec<TopicDescription>, LogError> {
        self.check_open()?;
        let mut described = Vec::new();
        for (topic, first) in self.own_topics().await? {
            described.push(self.describe(&topic, &first).await?);
        }
        Ok(described)
    }

    async fn describe_topic(&self, name: &TopicName) -> Result<TopicDescription, LogError> {
        self.check_open()?;
        let (topic, first) = self.load_topic(name).await?;
        self.describe(&topic, &first).await
    }

    async fn delete_topic(&self, name: &TopicName) -> Result<(), LogError> {
        self.check_open()?;
        self.forget_topic(name);
        let (topic, _) = self.load_topic(name).await?;
        // Partition 0 last: until it is gone the topic is still visible, and a deletion cut
        // short can be repeated.
        let mut others: Vec<String> = (1..topic.config.partitions)
            .map(|partition| self.partition_stream(name, partition))
            .collect();
        others.push(self.claims_stream(name));
        futures_util::stream::iter(others)
            .map(|stream| self.delete_stream(name, stream))
            .buffer_unordered(STREAM_REQUESTS_IN_FLIGHT)
            .try_collect::<Vec<bool>>()
            .await?;
        if !self
            .delete_stream(name, self.partition_stream(name, 0))
            .await?
        {
            return Err(LogError::TopicNotFound {
                topic: name.clone(),
            });
        }
        self.inner
            .round_robin
            .lock()
            .expect("round-robin poisoned")
            .remove(name);
        Ok(())
    }
}

#[async_trait]
impl EventAppender for NatsLog {
    async fn append(
        &self,
        topic: &TopicName,
        events: Vec<Event>,
    ) -> Result<Vec<AppendReceipt>, LogError> {
        let appended = self.append_impl(topic, events).await;
        self.forget_if_gone(topic, &appended);
        appended
    }
}

#[async_trait]
impl EventReader for NatsLog {
    async fn read(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        from: ReadFrom,
        limits: ReadLimits,
    ) -> Result<ReadBatch, LogError> {
        let read = self.read_impl(topic, partition, from, limits).await;
        self.forget_if_gone(topic, &read);
        read
    }
}

#[async_trait]
impl EventSubscriber for NatsLog {
    async fn wait_for_events(
        &self,
        topic: &TopicName,
        positions: &Cursor,
        timeout: Duration,
    ) -> Result<bool, LogError> {
        let waited = self.wait_impl(topic, positions, timeout).await;
        self.forget_if_gone(topic, &waited);
        waited
    }
}

#[async_trait]
impl Log for NatsLog {
    async fn shutdown(&self) -> Result<(), LogError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let _ = self.inner.stop.send(true);
        // Every append already waited for its acknowledgements; flushing sends what is left
        // (consumer deletions) before the connection closes. Bounded: with the server out of
        // reach both would wait for a reconnection that may never come.
        let closed = tokio::time::timeout(ms(self.inner.config.request_timeout_ms), async {
            let _ = self.inner.client.flush().await;
            let _ = self.inner.client.drain().await;
        })
        .await;
        if closed.is_err() {
            tracing::warn!(
                url = %proteus_nats::redact(&self.inner.config.url),
                "NATS did not answer while the log closed its connection; read consumers it \
                 leaves behind expire by themselves"
            );
        }
        Ok(())
    }
}
