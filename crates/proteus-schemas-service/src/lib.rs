//! The schema registry's runtime.
//!
//! - **The log is the store.** Every [`RegistryChange`] is appended (fsync) to the topic
//!   `proteus.schemas` before it is applied; [`SchemaService::open`] replays the topic. A
//!   registration acknowledged to its author survives kill -9, and there is no separate table to
//!   drift from the history (the same rule as flag sets).
//! - **Readers never wait for writers.** The registry is an immutable snapshot behind an `Arc`;
//!   a change builds the next snapshot and swaps it in. Appends validate and reads upcast
//!   against whichever snapshot they took.
//! - **Changes are serialised** by one writer lock, so versions are numbered without gaps.
//! - **Several instances sharing the log** hold the same registry: each reads what the others
//!   append every 250 ms and before each change it makes. A change applies only if it applies
//!   to the registry as the records before it left it (a registration must be its type's next
//!   version), on every instance alike, so of two registrations of one type made at once the
//!   first in the log wins and the other is refused everywhere
//!   ([`SchemaServiceError::Conflict`] for its writer).

use std::sync::{Arc, Mutex, RwLock, Weak};

use proteus_eventstore::{
    Aggregate, AppendOutcome, Category, DeleteOutcome, Direction, EventStore, EventStoreError,
    ExpectedVersion, FeedPage, ReadFilter, RecordedEvent, Snapshot, StreamInfo, StreamName,
    StreamPage, ValidatedAppend,
};
use proteus_log::port::{FollowStep, Log, follow_step};
use proteus_log::{Event, LogError, Offset, TopicConfig, TopicName};
use proteus_schemas::{
    CompatibilityMode, EventTypeName, Registration, RegistryChange, RegistryConfig, SchemaError,
    SchemaPolicy, SchemaRegistry, Upcaster,
};
use serde_json::{Value, json};

pub use proteus_schemas;

/// The topic registry changes go to.
pub const TOPIC: &str = "proteus.schemas";
/// The CloudEvent type of a registry change.
pub const EVENT_TYPE: &str = "dev.proteus.schema.changed";
/// How often changes other instances appended are looked for, in ms.
const FOLLOW_EVERY_MS: u64 = 250;
/// Changes read per request while replaying the topic at start-up.
const REPLAY_EVENTS_PER_READ: u32 = 1_000;
/// Largest change event, in bytes: a schema (64 KiB at most) and its upcaster, with room.
const CHANGE_EVENT_BYTES_MAX: u32 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SchemaServiceError {
    #[error("{0}")]
    Schema(#[from] SchemaError),
    #[error("the schema registry's store (the log) failed: {0}")]
    Log(#[from] LogError),
    #[error(
        "the schemas of '{event_type}' were changed through another instance at the same time, so this change was not applied: {reason}; read them again and retry if it still applies"
    )]
    Conflict { event_type: String, reason: String },
    #[error("a registry change cannot be encoded as an event: {0}")]
    Encoding(String),
    #[error("event {offset} of the topic '{TOPIC}' cannot be replayed: {reason}")]
    CorruptChange { offset: Offset, reason: String },
}

struct Inner {
    log: Arc<dyn Log>,
    topic: TopicName,
    registry: RwLock<Arc<SchemaRegistry>>,
    /// The next offset of the topic to process: every change before it was applied (or
    /// refused) here. Moved only with the writer lock held.
    followed: Mutex<Offset>,
    writer: tokio::sync::Mutex<()>,
    policy: SchemaPolicy,
}

/// The registry, shared by the HTTP handlers. Cloning shares it.
#[derive(Clone)]
pub struct SchemaService {
    inner: Arc<Inner>,
}

impl SchemaService {
    /// Creates the topic if needed and replays it. `policy` says what appends of event types
    /// without a schema get.
    pub async fn open(
        log: Arc<dyn Log>,
        config: RegistryConfig,
        policy: SchemaPolicy,
    ) -> Result<SchemaService, SchemaServiceError> {
        let topic = TopicName::parse(TOPIC).expect("the schema topic name is valid");
        match log.describe_topic(&topic).await {
            Ok(_) => {}
            Err(LogError::TopicNotFound { .. }) => {
                let config = TopicConfig {
                    partitions: 1,
                    retention_ms: None,
                    retention_bytes: None,
                    event_bytes_max: CHANGE_EVENT_BYTES_MAX,
                    ..TopicConfig::default()
                };
                log.put_topic(&topic, config).await?;
            }
            Err(e) => return Err(e.into()),
        }
        let service = SchemaService {
            inner: Arc::new(Inner {
                log,
                topic,
                registry: RwLock::new(Arc::new(SchemaRegistry::new(config)?)),
                followed: Mutex::new(0),
                writer: tokio::sync::Mutex::new(()),
                policy,
            }),
        };
        {
            let _writer = service.inner.writer.lock().await;
            service.follow_until(None, true).await?;
        }
        spawn_follower(Arc::downgrade(&service.inner));
        Ok(service)
    }

    /// Applies (or refuses) every change of the topic from the followed offset on and before
    /// `end` (to the topic's end when `None`), in order. With `strict` (at open), a record that
    /// cannot be read fails the call; otherwise it is skipped with an error logged. Called
    /// with the writer lock.
    async fn follow_until(
        &self,
        end: Option<Offset>,
        strict: bool,
    ) -> Result<(), SchemaServiceError> {
        loop {
            let from = *lock(&self.inner.followed);
            let step = follow_step(
                self.inner.log.as_ref(),
                &self.inner.topic,
                from,
                end,
                REPLAY_EVENTS_PER_READ,
            )
            .await?;
            let (events, next_offset) = match step {
                FollowStep::CaughtUp => return Ok(()),
                FollowStep::Missing { from, reason } => {
                    return Err(SchemaServiceError::CorruptChange {
                        offset: from,
                        reason,
                    });
                }
                FollowStep::Records {
                    events,
                    next_offset,
                } => (events, next_offset),
            };
            let mut registry = (*self.registry()).clone();
            for stored in &events {
                match decode(&stored.json) {
                    Ok(Some(change)) => {
                        if let Err(error) = registry.apply(&change) {
                            tracing::warn!(offset = stored.offset, %error,
                                "a schema change made concurrently from an older registry is refused");
                        }
                    }
                    Ok(None) => {}
                    Err(reason) if strict => {
                        return Err(SchemaServiceError::CorruptChange {
                            offset: stored.offset,
                            reason,
                        });
                    }
                    Err(reason) => tracing::error!(offset = stored.offset, %reason,
                        "a schema change cannot be read; skipped"),
                }
            }
            self.publish(registry);
            let mut followed = lock(&self.inner.followed);
            *followed = (*followed).max(next_offset);
        }
    }

    fn publish(&self, registry: SchemaRegistry) {
        *self
            .inner
            .registry
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(registry);
    }

    /// The registry as it is now: an immutable snapshot.
    pub fn registry(&self) -> Arc<SchemaRegistry> {
        self.inner
            .registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What appends of event types without a schema get.
    pub fn policy(&self) -> SchemaPolicy {
        self.inner.policy
    }

    /// Registers `schema` as the next version of `event_type` if the type's compatibility mode
    /// allows it; returns the version and whether it is new (registering the latest schema
    /// again is not a change).
    pub async fn register(
        &self,
        event_type: &EventTypeName,
        schema: Value,
        upcaster: Option<Upcaster>,
    ) -> Result<(u32, bool), SchemaServiceError> {
        let _writer = self.inner.writer.lock().await;
        self.follow_until(None, false).await?;
        let registry = self.registry();
        match registry.prepare_register(event_type, schema, upcaster)? {
            Registration::Existing(version) => Ok((version, false)),
            Registration::New(change) => {
                let version = match &change {
                    RegistryChange::Register { version, .. } => *version,
                    RegistryChange::SetMode { .. } => 0,
                };
                self.commit(&registry, change).await?;
                Ok((version, true))
            }
        }
    }

    /// Sets the compatibility mode of `event_type`.
    pub async fn set_mode(
        &self,
        event_type: &EventTypeName,
        mode: CompatibilityMode,
    ) -> Result<(), SchemaServiceError> {
        let _writer = self.inner.writer.lock().await;
        self.follow_until(None, false).await?;
        let registry = self.registry();
        let change = registry.prepare_set_mode(event_type, mode)?;
        self.commit(&registry, change).await
    }

    /// Appends `change` durably, applies what other instances appended before it, then applies
    /// it by the same rule as theirs and publishes the registry. Called with the writer lock
    /// held and `registry` the current snapshot.
    async fn commit(
        &self,
        registry: &SchemaRegistry,
        change: RegistryChange,
    ) -> Result<(), SchemaServiceError> {
        // Applied first on a copy: a change that does not apply never reaches the log.
        registry.clone().apply(&change)?;
        let event_type = match &change {
            RegistryChange::Register { event_type, .. }
            | RegistryChange::SetMode { event_type, .. } => event_type.to_string(),
        };
        let event = json!({
            "specversion": "1.0",
            "id": uuid::Uuid::now_v7().to_string(),
            "source": "/proteus/schemas",
            "type": EVENT_TYPE,
            "subject": event_type,
            "datacontenttype": "application/json",
            "data": serde_json::to_value(&change)
                .map_err(|e| SchemaServiceError::Encoding(e.to_string()))?,
        });
        let bytes = serde_json::to_vec(&event).unwrap_or_default();
        let event =
            Event::from_json(&bytes).map_err(|e| SchemaServiceError::Encoding(e.to_string()))?;
        let receipts = self
            .inner
            .log
            .append(&self.inner.topic, vec![event])
            .await?;
        let Some(offset) = receipts.first().map(|r| r.offset) else {
            return Err(SchemaServiceError::Encoding(
                "the log acknowledged no record".into(),
            ));
        };
        self.follow_until(Some(offset), false).await?;
        let mut next = (*self.registry()).clone();
        let applied = next.apply(&change);
        if applied.is_ok() {
            self.publish(next);
        }
        {
            let mut followed = lock(&self.inner.followed);
            *followed = (*followed).max(offset + 1);
        }
        applied.map_err(|error| SchemaServiceError::Conflict {
            event_type,
            reason: error.to_string(),
        })
    }
}

/// Locks `mutex`. A poisoned lock only means a thread panicked while holding it; the offset
/// behind it is replaced whole, so it is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The change an event of the topic holds; `None` for other events.
fn decode(json: &[u8]) -> Result<Option<RegistryChange>, String> {
    let envelope: Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    if envelope["type"] != EVENT_TYPE {
        return Ok(None);
    }
    serde_json::from_value(envelope["data"].clone())
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Every [`FOLLOW_EVERY_MS`] until the service is dropped: applies the changes other instances
/// appended. (A read per tick rather than a task waiting on the log: nothing holds the log
/// between ticks, so dropping the service releases it at once.)
fn spawn_follower(service: Weak<Inner>) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(FOLLOW_EVERY_MS)).await;
            let Some(inner) = service.upgrade() else {
                return;
            };
            let service = SchemaService { inner };
            let _writer = service.inner.writer.lock().await;
            if let Err(error) = service.follow_until(None, false).await {
                tracing::warn!(%error, "schema changes from other instances cannot be read; retrying");
            }
        }
    });
}

#[derive(Debug, thiserror::Error)]
#[error(
    "event at position {position} ({stream} version {version}) cannot be upcast to the latest schema of '{event_type}': {error}"
)]
pub struct UpcastFailure {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    pub event_type: String,
    /// Boxed: schema errors carry violation lists, and this travels in `Result`s.
    pub error: Box<SchemaError>,
}

impl SchemaService {
    /// Turns events written with an older schema version of their type into the latest one
    /// (data and `schema_version`). Events without a version, or of types without a schema,
    /// are left as written.
    pub fn upcast_events(&self, events: &mut [RecordedEvent]) -> Result<(), Box<UpcastFailure>> {
        let registry = self.registry();
        for event in events.iter_mut() {
            let Some(version) = event.schema_version else {
                continue;
            };
            let Ok(name) = EventTypeName::parse(&event.event_type) else {
                continue;
            };
            let Ok(latest) = registry.latest(&name) else {
                continue;
            };
            if latest.version <= version {
                continue;
            }
            let data: Value = serde_json::from_slice(&event.data).unwrap_or(Value::Null);
            let (to, data) = registry.upcast(&name, version, data).map_err(|error| {
                Box::new(UpcastFailure {
                    position: event.position,
                    stream: event.stream.as_str().to_owned(),
                    version: event.version,
                    event_type: event.event_type.to_string(),
                    error: Box::new(error),
                })
            })?;
            event.data = data.to_string().into_bytes().into();
            event.schema_version = Some(to);
        }
        Ok(())
    }
}

/// An [`EventStore`] whose reads return events upcast to their type's latest schema version:
/// what projections and other in-process consumers read, so a consumer written for the latest
/// version reads every older event. Writes pass through unchanged.
///
/// An event that cannot be upcast fails the read as [`EventStoreError::Unavailable`] naming its
/// position: a projection then shows it and retries rather than skipping it or reading it in a
/// shape it was not written for.
pub struct UpcastingEventStore {
    inner: Arc<dyn EventStore>,
    schemas: SchemaService,
}

impl UpcastingEventStore {
    pub fn new(inner: Arc<dyn EventStore>, schemas: SchemaService) -> UpcastingEventStore {
        UpcastingEventStore { inner, schemas }
    }

    fn upcast(&self, events: &mut [RecordedEvent]) -> Result<(), EventStoreError> {
        self.schemas
            .upcast_events(events)
            .map_err(|failure| EventStoreError::Unavailable {
                reason: failure.to_string(),
            })
    }
}

#[async_trait::async_trait]
impl EventStore for UpcastingEventStore {
    async fn append_validated(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        append: ValidatedAppend,
    ) -> Result<AppendOutcome, EventStoreError> {
        self.inner.append_validated(stream, expected, append).await
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<DeleteOutcome, EventStoreError> {
        self.inner.delete_stream(stream, expected).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_version: u64,
        direction: Direction,
        max_count: usize,
    ) -> Result<StreamPage, EventStoreError> {
        let mut page = self
            .inner
            .read_stream(stream, from_version, direction, max_count)
            .await?;
        self.upcast(&mut page.events)?;
        Ok(page)
    }

    async fn read_category(
        &self,
        category: &Category,
        from_position: u64,
        max_count: usize,
        filter: &ReadFilter,
    ) -> Result<FeedPage, EventStoreError> {
        let mut page = self
            .inner
            .read_category(category, from_position, max_count, filter)
            .await?;
        self.upcast(&mut page.events)?;
        Ok(page)
    }

    async fn read_all(
        &self,
        from_position: u64,
        direction: Direction,
        max_count: usize,
        filter: &ReadFilter,
    ) -> Result<FeedPage, EventStoreError> {
        let mut page = self
            .inner
            .read_all(from_position, direction, max_count, filter)
            .await?;
        self.upcast(&mut page.events)?;
        Ok(page)
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo, EventStoreError> {
        self.inner.stream_info(stream).await
    }

    async fn put_snapshot(
        &self,
        stream: &StreamName,
        version: u64,
        snapshot_type: &str,
        data: bytes::Bytes,
    ) -> Result<(), EventStoreError> {
        self.inner
            .put_snapshot(stream, version, snapshot_type, data)
            .await
    }

    async fn get_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, EventStoreError> {
        self.inner.get_snapshot(stream).await
    }

    async fn wait_for_position(
        &self,
        after: u64,
        timeout: std::time::Duration,
    ) -> Result<bool, EventStoreError> {
        self.inner.wait_for_position(after, timeout).await
    }

    async fn close(&self) -> Result<(), EventStoreError> {
        self.inner.close().await
    }

    async fn read_aggregate(
        &self,
        stream: &StreamName,
        max_count: usize,
    ) -> Result<Aggregate, EventStoreError> {
        let mut aggregate = self.inner.read_aggregate(stream, max_count).await?;
        self.upcast(&mut aggregate.events)?;
        Ok(aggregate)
    }
}
