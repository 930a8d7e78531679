//! [`NatsLog`]: the log port on JetStream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, context::GetStreamErrorKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::try_join_all;
use proteus_log::port::{
    EventAppender, EventReader, EventSubscriber, Log, READ_BYTES_MAX, READ_EVENTS_MAX, TopicAdmin,
};
use proteus_log::topic::InvalidTopicConfig;
use proteus_log::{
    AppendReceipt, Cursor, Event, LogError, Offset, PartitionDescription, PartitionId,
    PutTopicOutcome, ReadBatch, ReadFrom, ReadLimits, StoredEvent, TopicConfig, TopicDescription,
    TopicName,
};
use tokio::sync::{Mutex, watch};

use crate::config::NatsLogConfig;
use crate::meta::TopicMeta;
use crate::names;

/// The header holding an event's offset within its partition.
pub const OFFSET_HEADER: &str = "Proteus-Offset";
/// Bytes of headers and subject a stored message may carry beyond its event, reserved when
/// checking sizes against the server's `max_payload` and the stream's `max_msg_size`.
pub const HEADER_BYTES_RESERVED: usize = 1024;
/// Most probes of the offset search before a read falls back to scanning from a lower bound.
const SEARCH_PROBES_MAX: u32 = 64;
/// After a wake-up message, `wait_for_events` re-checks this soon, a few times, since the
/// stream may store the message a moment after core NATS delivered it.
const QUICK_RECHECK_MS: u64 = 5;
const QUICK_RECHECKS: u32 = 4;
/// Ephemeral read consumers are removed by the server after this idle time if the adapter
/// could not delete them itself.
const READ_CONSUMER_IDLE_MS: u64 = 30_000;

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
    /// Per (stream, partition): what this process last knew of the partition's end. The async
    /// mutex also serialises this process's appends to the partition.
    tails: StdMutex<HashMap<(String, PartitionId), TailLock>>,
    /// Per stream: the next round-robin partition for keyless events.
    round_robin: StdMutex<HashMap<String, u32>>,
    stop: watch::Sender<bool>,
}

type TailLock = Arc<Mutex<Option<Tail>>>;

#[derive(Clone, Copy, Debug)]
struct Tail {
    /// The stream's creation time: a topic deleted and created again is another stream.
    created: i128,
    /// Stream sequence of the partition's newest message (0: none yet).
    last_seq: u64,
    next_offset: Offset,
}

/// A topic as loaded from its stream.
struct Topic {
    name: TopicName,
    stream: stream::Stream,
    info: stream::Info,
    config: TopicConfig,
    created: i128,
}

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

/// A stored message reduced to what the adapter needs.
#[derive(Clone, Copy, Debug)]
struct Position {
    seq: u64,
    offset: Offset,
    time_ms: i64,
}

/// The first and last messages of a partition.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    first: Option<Position>,
    last: Option<Position>,
}

impl Bounds {
    fn end_offset(&self) -> Offset {
        self.last.map_or(0, |p| p.offset + 1)
    }

    fn first_offset(&self) -> Offset {
        self.first.map_or(self.end_offset(), |p| p.offset)
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

/// Whether an error means the server could not be reached or did not answer in time.
fn is_transient(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    [
        "timed out",
        "timedout",
        "no responders",
        "noresponders",
        "broken pipe",
        "brokenpipe",
        "disconnect",
        "connection",
        "jetstreamunavailable",
        "request",
        "flush",
        "subscribe",
        "pull",
    ]
    .iter()
    .any(|word| text.contains(word))
}

/// Maps a client error: unreachable or slow servers are [`LogError::Unavailable`] (retry);
/// anything else is [`LogError::Storage`].
fn nats_error<E: std::fmt::Display + std::fmt::Debug>(context: &str, error: E) -> LogError {
    let text = format!("{error} {error:?}");
    if is_transient(&text) {
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

fn jetstream_code<K: std::fmt::Debug>(kind: &K) -> Option<u64> {
    // The kinds of async-nats errors that wrap a JetStream API error print it as
    // `JetStream(Error { code: .., err_code: ErrorCode(n), .. })`.
    let text = format!("{kind:?}");
    let start = text.find("ErrorCode(")? + "ErrorCode(".len();
    let end = text[start..].find(')')? + start;
    text[start..end].parse().ok()
}

impl NatsLog {
    /// Connects to NATS and checks that JetStream answers. Fails with
    /// [`LogError::Unavailable`] if the server cannot be reached.
    pub async fn connect(config: NatsLogConfig) -> Result<NatsLog, LogError> {
        config.validate().map_err(|reason| LogError::Unavailable {
            reason: format!("invalid NATS log settings: {reason}"),
        })?;
        let delay_max = ms(config.reconnect_delay_max_ms);
        let client = async_nats::ConnectOptions::new()
            .name("proteus-log")
            .connection_timeout(ms(config.connect_timeout_ms))
            .request_timeout(Some(ms(config.request_timeout_ms)))
            .reconnect_delay_callback(move |attempts| {
                let exponent = attempts.min(16) as u32;
                ms(10u64.saturating_mul(1u64 << exponent)).min(delay_max)
            })
            .connect(config.url.as_str())
            .await
            .map_err(|error| LogError::Unavailable {
                reason: format!("cannot connect to NATS at {}: {error}", config.url),
            })?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(ms(config.request_timeout_ms));
        // The account info request answers on every JetStream version (the typed
        // `query_account` expects fields older servers do not send).
        let no_jetstream = |why: String| LogError::Unavailable {
            reason: format!(
                "NATS at {} does not answer JetStream requests ({why}); start the server with JetStream enabled (-js)",
                config.url
            ),
        };
        let answer = client
            .request("$JS.API.INFO", Bytes::new())
            .await
            .map_err(|error| no_jetstream(error.to_string()))?;
        let answer: serde_json::Value = serde_json::from_slice(&answer.payload)
            .map_err(|error| no_jetstream(error.to_string()))?;
        if let Some(error) = answer.get("error") {
            return Err(no_jetstream(error.to_string()));
        }
        let (stop, _) = watch::channel(false);
        let log = NatsLog {
            inner: Arc::new(Inner {
                config,
                client,
                js,
                closed: AtomicBool::new(false),
                tails: StdMutex::new(HashMap::new()),
                round_robin: StdMutex::new(HashMap::new()),
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

    fn stream_name(&self, topic: &TopicName) -> String {
        names::stream_name(&self.inner.config.stream_prefix, topic)
    }

    fn subject(&self, topic: &TopicName, partition: PartitionId) -> String {
        names::partition_subject(&self.inner.config.subject_prefix, topic, partition)
    }

    /// The largest event the server can take: its `max_payload` less room for headers.
    fn payload_bytes_max(&self) -> usize {
        self.inner
            .client
            .server_info()
            .max_payload
            .saturating_sub(HEADER_BYTES_RESERVED)
    }

    async fn topic(&self, name: &TopicName) -> Result<Topic, LogError> {
        let stream_name = self.stream_name(name);
        let stream = match self.inner.js.get_stream(&stream_name).await {
            Ok(stream) => stream,
            Err(error) => {
                if let GetStreamErrorKind::JetStream(api) = error.kind()
                    && api.error_code() == ErrorCode::STREAM_NOT_FOUND
                {
                    return Err(LogError::TopicNotFound {
                        topic: name.clone(),
                    });
                }
                return Err(nats_error(&format!("loading topic '{name}'"), error));
            }
        };
        let info = stream.cached_info().clone();
        let meta = TopicMeta::from_description(info.config.description.as_deref())
            .filter(|meta| &meta.topic == name)
            .ok_or_else(|| LogError::TopicNotFound {
                topic: name.clone(),
            })?;
        Ok(Topic {
            name: name.clone(),
            created: info.created.unix_timestamp_nanos(),
            stream,
            info,
            config: meta.config,
        })
    }

    fn stream_config(&self, meta: &TopicMeta) -> stream::Config {
        let config = &meta.config;
        let max_message_size =
            (config.event_bytes_max as usize + HEADER_BYTES_RESERVED).min(i32::MAX as usize);
        stream::Config {
            name: self.stream_name(&meta.topic),
            subjects: vec![names::stream_subjects(
                &self.inner.config.subject_prefix,
                &meta.topic,
            )],
            description: Some(meta.to_description()),
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            storage: StorageType::File,
            num_replicas: self.inner.config.replicas,
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            max_age: Duration::ZERO,
            max_message_size: max_message_size as i32,
            // 0 leaves the server's default; without a window no Nats-Msg-Id is sent anyway.
            duplicate_window: ms(config.dedup_window_ms),
            allow_direct: true,
            ..Default::default()
        }
    }

    fn check_supported(&self, config: &TopicConfig) -> Result<(), LogError> {
        config.validate()?;
        if config.retention_bytes.is_some() {
            return Err(LogError::InvalidTopicConfig(InvalidTopicConfig {
                field: "retention_bytes",
                reason: "is not supported by the NATS JetStream backend: JetStream limits bytes per stream, not per partition, and removing a partition's newest event would lose its offset counter; leave it null (use retention_ms) or use the embedded backend".into(),
            }));
        }
        Ok(())
    }

    async fn put_topic_impl(
        &self,
        name: &TopicName,
        config: TopicConfig,
    ) -> Result<PutTopicOutcome, LogError> {
        self.check_open()?;
        self.check_supported(&config)?;
        let meta = TopicMeta {
            topic: name.clone(),
            config,
        };
        for _ in 0..3 {
            match self.topic(name).await {
                Ok(existing) => {
                    if existing.config.partitions != meta.config.partitions {
                        return Err(LogError::TopicConflict {
                            topic: name.clone(),
                            reason: format!(
                                "it has {} partitions and the partition count is fixed at creation (asked for {})",
                                existing.config.partitions, meta.config.partitions
                            ),
                        });
                    }
                    if existing.config == meta.config {
                        return Ok(PutTopicOutcome::Unchanged);
                    }
                    self.inner
                        .js
                        .update_stream(self.stream_config(&meta))
                        .await
                        .map_err(|e| nats_error(&format!("updating topic '{name}'"), e))?;
                    return Ok(PutTopicOutcome::Updated);
                }
                Err(LogError::TopicNotFound { .. }) => {
                    match self.inner.js.create_stream(self.stream_config(&meta)).await {
                        Ok(_) => return Ok(PutTopicOutcome::Created),
                        Err(error) => match jetstream_code(&error.kind()) {
                            // Created meanwhile by another instance, or a stream of that name
                            // that is not a Proteus topic: look again.
                            Some(10058) => {
                                if let Ok(stream) =
                                    self.inner.js.get_stream(self.stream_name(name)).await
                                    && TopicMeta::from_description(
                                        stream.cached_info().config.description.as_deref(),
                                    )
                                    .is_none_or(|m| &m.topic != name)
                                {
                                    return Err(LogError::TopicConflict {
                                        topic: name.clone(),
                                        reason: format!(
                                            "a JetStream stream named '{}' already exists and was not created by Proteus for this topic",
                                            self.stream_name(name)
                                        ),
                                    });
                                }
                                continue;
                            }
                            Some(10065) => {
                                return Err(LogError::TopicConflict {
                                    topic: name.clone(),
                                    reason: format!(
                                        "another JetStream stream already listens on its subjects '{}'",
                                        names::stream_subjects(
                                            &self.inner.config.subject_prefix,
                                            name
                                        )
                                    ),
                                });
                            }
                            _ => {
                                return Err(nats_error(&format!("creating topic '{name}'"), error));
                            }
                        },
                    }
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
    async fn own_topics(&self) -> Result<Vec<Topic>, LogError> {
        let prefix = format!("{}_", self.inner.config.stream_prefix);
        let mut names = Vec::new();
        let mut streams = self.inner.js.streams();
        while let Some(info) = streams.next().await {
            let info = info.map_err(|e| nats_error("listing topics", e))?;
            if !info.config.name.starts_with(&prefix) {
                continue;
            }
            if let Some(meta) = TopicMeta::from_description(info.config.description.as_deref())
                && self.stream_name(&meta.topic) == info.config.name
            {
                names.push(meta.topic);
            }
        }
        names.sort();
        let mut topics = Vec::with_capacity(names.len());
        for name in names {
            match self.topic(&name).await {
                Ok(topic) => topics.push(topic),
                Err(LogError::TopicNotFound { .. }) => {} // deleted meanwhile
                Err(other) => return Err(other),
            }
        }
        Ok(topics)
    }

    fn position(
        &self,
        topic: &Topic,
        partition: PartitionId,
        message: &StreamMessage,
    ) -> Result<Position, LogError> {
        let offset = offset_header(Some(&message.headers))
            .ok_or_else(|| missing_offset(topic, partition, message.sequence, &message.subject))?;
        Ok(Position {
            seq: message.sequence,
            offset,
            time_ms: time_ms(message.time),
        })
    }

    async fn last_message(
        &self,
        topic: &Topic,
        subject: &str,
    ) -> Result<Option<StreamMessage>, LogError> {
        match topic
            .stream
            .raw_message_builder()
            .last_by_subject(subject)
            .send()
            .await
        {
            Ok(message) => Ok(Some(message)),
            Err(error) => raw_get_error(topic, error),
        }
    }

    async fn next_message(
        &self,
        topic: &Topic,
        subject: &str,
        from_seq: u64,
    ) -> Result<Option<StreamMessage>, LogError> {
        match topic
            .stream
            .raw_message_builder()
            .next_by_subject(subject)
            .sequence(from_seq.max(1))
            .send()
            .await
        {
            Ok(message) => Ok(Some(message)),
            Err(error) => raw_get_error(topic, error),
        }
    }

    async fn bounds(&self, topic: &Topic, partition: PartitionId) -> Result<Bounds, LogError> {
        let subject = self.subject(&topic.name, partition);
        let Some(last) = self.last_message(topic, &subject).await? else {
            return Ok(Bounds {
                first: None,
                last: None,
            });
        };
        let last = self.position(topic, partition, &last)?;
        let first = match self.next_message(topic, &subject, 1).await? {
            Some(first) => self.position(topic, partition, &first)?,
            None => last,
        };
        Ok(Bounds {
            first: Some(first),
            last: Some(last),
        })
    }

    async fn describe(&self, topic: &Topic) -> Result<TopicDescription, LogError> {
        let bounds = try_join_all(
            (0..topic.config.partitions).map(|partition| self.bounds(topic, partition)),
        )
        .await?;
        let state = &topic.info.state;
        let partitions = bounds
            .iter()
            .zip(0..)
            .map(|(bounds, partition)| {
                let count = bounds.end_offset() - bounds.first_offset();
                // JetStream counts bytes per stream; a partition's share is estimated from
                // its share of the messages.
                let bytes = if state.messages == 0 {
                    0
                } else {
                    (u128::from(state.bytes) * u128::from(count) / u128::from(state.messages))
                        as u64
                };
                PartitionDescription {
                    partition,
                    first_offset: bounds.first_offset(),
                    next_offset: bounds.end_offset(),
                    bytes,
                    segments: 0,
                }
            })
            .collect();
        Ok(TopicDescription {
            name: topic.name.clone(),
            config: topic.config.clone(),
            partitions,
        })
    }

    fn tail_lock(&self, stream: &str, partition: PartitionId) -> TailLock {
        let mut tails = self.inner.tails.lock().expect("tails lock poisoned");
        tails
            .entry((stream.to_owned(), partition))
            .or_default()
            .clone()
    }

    async fn load_tail(&self, topic: &Topic, partition: PartitionId) -> Result<Tail, LogError> {
        let subject = self.subject(&topic.name, partition);
        let tail = match self.last_message(topic, &subject).await? {
            Some(last) => {
                let position = self.position(topic, partition, &last)?;
                Tail {
                    created: topic.created,
                    last_seq: position.seq,
                    next_offset: position.offset + 1,
                }
            }
            None => Tail {
                created: topic.created,
                last_seq: 0,
                next_offset: 0,
            },
        };
        Ok(tail)
    }

    /// Checks that the topic's stream is still the one the append started on.
    async fn check_same_stream(&self, topic: &Topic) -> Result<(), LogError> {
        let current = self.topic(&topic.name).await?;
        if current.created != topic.created {
            return Err(LogError::TopicNotFound {
                topic: topic.name.clone(),
            });
        }
        Ok(())
    }

    /// Appends one partition's events in order, one at a time: each carries its offset and
    /// the stream sequence of the partition's previous message, which the server checks.
    async fn append_partition(
        &self,
        topic: &Topic,
        partition: PartitionId,
        events: Vec<(usize, &Event)>,
    ) -> Result<Vec<(usize, AppendReceipt)>, LogError> {
        let subject = self.subject(&topic.name, partition);
        let stream_name = self.stream_name(&topic.name);
        let lock = self.tail_lock(&stream_name, partition);
        let mut tail = lock.lock().await;
        let dedup = topic.config.dedup_window_ms > 0;
        let mut receipts = Vec::with_capacity(events.len());
        for (index, event) in events {
            let mut conflicts = 0;
            loop {
                let current = match *tail {
                    Some(current) if current.created == topic.created => current,
                    _ => {
                        let loaded = self.load_tail(topic, partition).await?;
                        *tail = Some(loaded);
                        loaded
                    }
                };
                let mut headers = HeaderMap::new();
                if dedup {
                    headers.insert(
                        async_nats::header::NATS_MESSAGE_ID,
                        format!("{:032x}", event.dedup_key().0).as_str(),
                    );
                }
                headers.insert(
                    async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    current.last_seq.to_string().as_str(),
                );
                headers.insert(OFFSET_HEADER, current.next_offset.to_string().as_str());
                let sent = self
                    .inner
                    .js
                    .publish_with_headers(
                        subject.clone(),
                        headers,
                        Bytes::copy_from_slice(event.json()),
                    )
                    .await;
                let acked = match sent {
                    Ok(future) => future.await,
                    Err(error) => Err(error),
                };
                match acked {
                    Ok(ack) if ack.duplicate => {
                        let receipt = self.original(topic, partition, ack.sequence).await?;
                        receipts.push((index, receipt));
                        break;
                    }
                    Ok(ack) => {
                        *tail = Some(Tail {
                            created: topic.created,
                            last_seq: ack.sequence,
                            next_offset: current.next_offset + 1,
                        });
                        receipts.push((
                            index,
                            AppendReceipt {
                                partition,
                                offset: current.next_offset,
                                duplicate: false,
                            },
                        ));
                        break;
                    }
                    Err(error) => {
                        *tail = None;
                        match error.kind() {
                            PublishErrorKind::WrongLastSequence => {
                                // Another writer appended to the partition: learn its end and
                                // send again, unless the topic was deleted meanwhile.
                                conflicts += 1;
                                if conflicts > self.inner.config.append_conflict_retries_max {
                                    return Err(LogError::Unavailable {
                                        reason: format!(
                                            "partition {partition} of topic '{}' is being appended to by other writers so fast that event {index} lost {conflicts} offset races; retry the request",
                                            topic.name
                                        ),
                                    });
                                }
                                self.check_same_stream(topic).await?;
                            }
                            PublishErrorKind::StreamNotFound => {
                                return Err(LogError::TopicNotFound {
                                    topic: topic.name.clone(),
                                });
                            }
                            PublishErrorKind::MaxPayloadExceeded => {
                                return Err(LogError::EventTooLarge {
                                    topic: topic.name.clone(),
                                    index,
                                    bytes: event.json().len(),
                                    max: self.payload_bytes_max() as u32,
                                });
                            }
                            _ => {
                                return Err(nats_error(
                                    &format!(
                                        "appending event {index} to partition {partition} of topic '{}'",
                                        topic.name
                                    ),
                                    error,
                                ));
                            }
                        }
                    }
                }
            }
        }
        Ok(receipts)
    }

    /// The receipt of the message a duplicate matched.
    async fn original(
        &self,
        topic: &Topic,
        routed_to: PartitionId,
        seq: u64,
    ) -> Result<AppendReceipt, LogError> {
        match topic
            .stream
            .raw_message_builder()
            .sequence(seq)
            .send()
            .await
        {
            Ok(message) => {
                let partition = names::partition_of_subject(&message.subject).unwrap_or(routed_to);
                let position = self.position(topic, partition, &message)?;
                Ok(AppendReceipt {
                    partition,
                    offset: position.offset,
                    duplicate: true,
                })
            }
            Err(error) => {
                if matches!(
                    error.kind(),
                    async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound
                ) {
                    // The original was removed by retention while its id is still in the
                    // dedup window: name the partition the retry was routed to and its first
                    // retained offset.
                    let bounds = self.bounds(topic, routed_to).await?;
                    return Ok(AppendReceipt {
                        partition: routed_to,
                        offset: bounds.first_offset(),
                        duplicate: true,
                    });
                }
                Err(nats_error(
                    "reading the original of a duplicate event",
                    error,
                ))
            }
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
        let keyless = if events.iter().any(|e| e.routing_key().is_none()) {
            let stream = self.stream_name(name);
            let mut round_robin = self.inner.round_robin.lock().expect("round-robin poisoned");
            let next = round_robin.entry(stream).or_insert(0);
            let partition = *next % partitions;
            *next = next.wrapping_add(1) % partitions;
            partition
        } else {
            0
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

    /// A stream sequence from which the partition's first message has an offset at most
    /// `offset`, and exactly `offset` whenever the search converges (it always does unless
    /// retention removes messages while it runs). Interpolation between known messages,
    /// narrowed by the rule that each offset takes at least one stream sequence.
    async fn locate(
        &self,
        topic: &Topic,
        subject: &str,
        partition: PartitionId,
        bounds: &Bounds,
        offset: Offset,
    ) -> Result<u64, LogError> {
        let (Some(first), Some(last)) = (bounds.first, bounds.last) else {
            return Ok(1);
        };
        if offset <= first.offset {
            return Ok(first.seq);
        }
        if offset >= last.offset {
            return Ok(last.seq);
        }
        let (mut a_seq, mut a_off) = (first.seq, first.offset);
        let (mut b_seq, mut b_off) = (last.seq, last.offset);
        let mut lo = a_seq + (offset - a_off);
        let mut hi = b_seq.saturating_sub(b_off - offset);
        for _ in 0..SEARCH_PROBES_MAX {
            if lo >= hi {
                return Ok(lo);
            }
            let span = u128::from(b_seq - a_seq);
            let guess =
                a_seq + (u128::from(offset - a_off) * span / u128::from(b_off - a_off)) as u64;
            let guess = guess.clamp(lo, hi);
            let Some(message) = self.next_message(topic, subject, guess).await? else {
                return Ok(lo);
            };
            let found = self.position(topic, partition, &message)?;
            if found.offset == offset {
                return Ok(found.seq);
            }
            if found.offset < offset {
                (a_seq, a_off) = (found.seq, found.offset);
                lo = lo.max(found.seq + (offset - found.offset));
            } else {
                (b_seq, b_off) = (found.seq, found.offset);
                hi = hi
                    .min(guess.saturating_sub(1))
                    .min(found.seq.saturating_sub(found.offset - offset));
            }
        }
        Ok(lo)
    }

    /// Reads from an ephemeral consumer of the partition's subject.
    #[allow(clippy::too_many_arguments)]
    async fn fetch(
        &self,
        topic: &Topic,
        partition: PartitionId,
        subject: &str,
        deliver_policy: DeliverPolicy,
        min_offset: Offset,
        events_max: u32,
        bytes_max: u32,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let context = || format!("reading partition {partition} of topic '{}'", topic.name);
        let consumer: consumer::PullConsumer = topic
            .stream
            .create_consumer(consumer::pull::Config {
                deliver_policy,
                ack_policy: AckPolicy::None,
                filter_subject: subject.to_owned(),
                inactive_threshold: ms(READ_CONSUMER_IDLE_MS),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_error(&context(), e))?;
        let consumer_name = consumer.cached_info().name.clone();
        let result = self
            .fetch_from(
                &consumer, topic, partition, subject, min_offset, events_max, bytes_max,
            )
            .await;
        let stream = topic.stream.clone();
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&consumer_name).await;
        });
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_from(
        &self,
        consumer: &consumer::PullConsumer,
        topic: &Topic,
        partition: PartitionId,
        subject: &str,
        min_offset: Offset,
        events_max: u32,
        bytes_max: u32,
    ) -> Result<Vec<StoredEvent>, LogError> {
        let context = || format!("reading partition {partition} of topic '{}'", topic.name);
        // The server counts headers and subject too; ask for enough and trim here.
        let overhead = HEADER_BYTES_RESERVED / 2 + subject.len();
        let server_bytes = (bytes_max as usize).saturating_add(events_max as usize * overhead);
        let mut events: Vec<StoredEvent> = Vec::new();
        let mut bytes = 0usize;
        for attempt in 0..2 {
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
            while let Some(item) = batch.next().await {
                let message = match item {
                    Ok(message) => message,
                    Err(error) => {
                        let text = error.to_string();
                        if text.contains("409") || text.to_ascii_lowercase().contains("maxbytes") {
                            refused_for_size = true;
                            break;
                        }
                        return Err(nats_error(&context(), error));
                    }
                };
                let info = message.info().map_err(|e| nats_error(&context(), e))?;
                let (seq, published) = (info.stream_sequence, info.published);
                let offset = offset_header(message.message.headers.as_ref()).ok_or_else(|| {
                    missing_offset(topic, partition, seq, &message.message.subject)
                })?;
                if offset < min_offset {
                    continue;
                }
                let json = message.message.payload.clone();
                if !events.is_empty() && bytes + json.len() > bytes_max as usize {
                    break;
                }
                bytes += json.len();
                events.push(StoredEvent {
                    partition,
                    offset,
                    append_time_ms: time_ms(published),
                    json,
                });
                if events.len() >= events_max as usize {
                    break;
                }
            }
            if !(events.is_empty() && refused_for_size) {
                break;
            }
        }
        Ok(events)
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
        let subject = self.subject(name, partition);
        let bounds = self.bounds(&topic, partition).await?;
        let (first_offset, end_offset) = (bounds.first_offset(), bounds.end_offset());
        let empty = |next_offset| ReadBatch {
            events: Vec::new(),
            next_offset,
            first_offset,
            end_offset,
        };
        let (policy, min_offset) = match from {
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
                let offset = offset.max(first_offset);
                let seq = self
                    .locate(&topic, &subject, partition, &bounds, offset)
                    .await?;
                (
                    DeliverPolicy::ByStartSequence {
                        start_sequence: seq,
                    },
                    offset,
                )
            }
            ReadFrom::TimeMs(at) => {
                match bounds.last {
                    Some(last) if last.time_ms >= at => {}
                    _ => return Ok(empty(end_offset)),
                }
                let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(at.max(0)) * 1_000_000,
                )
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                (DeliverPolicy::ByStartTime { start_time }, 0)
            }
        };
        let events = self
            .fetch(
                &topic, partition, &subject, policy, min_offset, events_max, bytes_max,
            )
            .await?;
        let Some(last) = events.last() else {
            return Ok(empty(end_offset));
        };
        let next_offset = last.offset + 1;
        Ok(ReadBatch {
            next_offset,
            first_offset: first_offset.min(events[0].offset),
            end_offset: end_offset.max(next_offset),
            events,
        })
    }

    /// Whether a watched partition has an event at or after the cursor's offset.
    async fn any_ready(
        &self,
        topic: &Topic,
        watched: &[(PartitionId, Offset)],
    ) -> Result<bool, LogError> {
        let ends = try_join_all(watched.iter().map(|&(partition, _)| async move {
            let subject = self.subject(&topic.name, partition);
            let last = self.last_message(topic, &subject).await?;
            match last {
                Some(message) => {
                    Ok::<_, LogError>(self.position(topic, partition, &message)?.offset + 1)
                }
                None => Ok(0),
            }
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
        let deadline = Instant::now() + timeout;
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
            .subscribe(names::stream_subjects(
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
    /// event (its offset is the partition's counter). Returns how many events were removed.
    pub async fn apply_retention(&self) -> Result<u64, LogError> {
        self.check_open()?;
        let mut removed = 0;
        for topic in self.own_topics().await? {
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
            let bounds = self.bounds(topic, partition).await?;
            let (Some(first), Some(last)) = (bounds.first, bounds.last) else {
                continue;
            };
            if first.time_ms >= cutoff_ms || first.seq == last.seq {
                continue;
            }
            let subject = self.subject(&topic.name, partition);
            let keep_from = if last.time_ms < cutoff_ms {
                last.seq
            } else {
                let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(cutoff_ms.max(0)) * 1_000_000,
                )
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                let first_kept = self
                    .fetch(
                        topic,
                        partition,
                        &subject,
                        DeliverPolicy::ByStartTime { start_time },
                        0,
                        1,
                        0,
                    )
                    .await?;
                match first_kept.first() {
                    Some(event) => {
                        // The sequence of that event: search by its offset.
                        self.locate(topic, &subject, partition, &bounds, event.offset)
                            .await?
                            .min(last.seq)
                    }
                    None => last.seq,
                }
            };
            if keep_from <= first.seq {
                continue;
            }
            let response = topic
                .stream
                .purge()
                .filter(subject)
                .sequence(keep_from)
                .await
                .map_err(|e| {
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
}

fn offset_header(headers: Option<&HeaderMap>) -> Option<Offset> {
    headers?.get(OFFSET_HEADER)?.as_str().parse().ok()
}

fn missing_offset(topic: &Topic, partition: PartitionId, seq: u64, subject: &str) -> LogError {
    LogError::Corrupt {
        topic: topic.name.clone(),
        partition,
        offset: 0,
        file: format!("JetStream stream {}", topic.info.config.name),
        position: seq,
        reason: format!(
            "the message at stream sequence {seq} on subject '{subject}' has no {OFFSET_HEADER} header: something other than Proteus published to the partition's subject"
        ),
    }
}

fn raw_get_error(
    topic: &Topic,
    error: async_nats::jetstream::stream::RawMessageError,
) -> Result<Option<StreamMessage>, LogError> {
    use async_nats::jetstream::stream::RawMessageErrorKind;
    match error.kind() {
        RawMessageErrorKind::NoMessageFound => Ok(None),
        RawMessageErrorKind::JetStream(api) if api.error_code() == ErrorCode::STREAM_NOT_FOUND => {
            Err(LogError::TopicNotFound {
                topic: topic.name.clone(),
            })
        }
        _ => Err(nats_error(
            &format!("reading topic '{}'", topic.name),
            error,
        )),
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
        self.put_topic_impl(name, config).await
    }

    async fn list_topics(&self) -> Result<Vec<TopicDescription>, LogError> {
        self.check_open()?;
        let mut described = Vec::new();
        for topic in self.own_topics().await? {
            described.push(self.describe(&topic).await?);
        }
        Ok(described)
    }

    async fn describe_topic(&self, name: &TopicName) -> Result<TopicDescription, LogError> {
        self.check_open()?;
        let topic = self.topic(name).await?;
        self.describe(&topic).await
    }

    async fn delete_topic(&self, name: &TopicName) -> Result<(), LogError> {
        self.check_open()?;
        let topic = self.topic(name).await?;
        let stream_name = topic.info.config.name.clone();
        match self.inner.js.delete_stream(&stream_name).await {
            Ok(_) => {}
            Err(error) => {
                if let GetStreamErrorKind::JetStream(api) = error.kind()
                    && api.error_code() == ErrorCode::STREAM_NOT_FOUND
                {
                    return Err(LogError::TopicNotFound {
                        topic: name.clone(),
                    });
                }
                return Err(nats_error(&format!("deleting topic '{name}'"), error));
            }
        }
        self.inner
            .tails
            .lock()
            .expect("tails lock poisoned")
            .retain(|(stream, _), _| stream != &stream_name);
        self.inner
            .round_robin
            .lock()
            .expect("round-robin poisoned")
            .remove(&stream_name);
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
        self.append_impl(topic, events).await
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
        self.read_impl(topic, partition, from, limits).await
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
        self.wait_impl(topic, positions, timeout).await
    }
}

#[async_trait]
impl Log for NatsLog {
    async fn shutdown(&self) -> Result<(), LogError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let _ = self.inner.stop.send(true);
        // Every append already waited for its acknowledgement; flushing sends what is left
        // (consumer deletions) before the connection closes.
        let _ = self.inner.client.flush().await;
        let _ = self.inner.client.drain().await;
        Ok(())
    }
}
