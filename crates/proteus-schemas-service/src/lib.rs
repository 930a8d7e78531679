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

use std::sync::{Arc, RwLock};

use proteus_eventstore::{
    Aggregate, AppendOutcome, Category, DeleteOutcome, Direction, EventStore, EventStoreError,
    ExpectedVersion, FeedPage, ProposedEvent, ReadFilter, RecordedEvent, Snapshot, StreamInfo,
    StreamName, StreamPage,
};
use proteus_log::port::Log;
use proteus_log::{Event, LogError, Offset, ReadFrom, ReadLimits, TopicConfig, TopicName};
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
    #[error("a registry change cannot be encoded as an event: {0}")]
    Encoding(String),
    #[error("event {offset} of the topic '{TOPIC}' cannot be replayed: {reason}")]
    CorruptChange { offset: Offset, reason: String },
}

struct Inner {
    log: Arc<dyn Log>,
    topic: TopicName,
    registry: RwLock<Arc<SchemaRegistry>>,
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
        let mut registry = SchemaRegistry::new(config)?;
        let limits = ReadLimits {
            events_max: REPLAY_EVENTS_PER_READ,
            bytes_max: proteus_log::port::READ_BYTES_MAX,
        };
        let mut from = 0;
        loop {
            let batch = log.read(&topic, 0, ReadFrom::Offset(from), limits).await?;
            if batch.events.is_empty() {
                break;
            }
            for stored in &batch.events {
                let corrupt = |reason: String| SchemaServiceError::CorruptChange {
                    offset: stored.offset,
                    reason,
                };
                let envelope: Value =
                    serde_json::from_slice(&stored.json).map_err(|e| corrupt(e.to_string()))?;
                if envelope["type"] != EVENT_TYPE {
                    continue;
                }
                let change: RegistryChange = serde_json::from_value(envelope["data"].clone())
                    .map_err(|e| corrupt(e.to_string()))?;
                registry
                    .apply(&change)
                    .map_err(|e| corrupt(e.to_string()))?;
            }
            from = batch.next_offset;
        }
        Ok(SchemaService {
            inner: Arc::new(Inner {
                log,
                topic,
                registry: RwLock::new(Arc::new(registry)),
                writer: tokio::sync::Mutex::new(()),
                policy,
            }),
        })
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
        let registry = self.registry();
        let change = registry.prepare_set_mode(event_type, mode)?;
        self.commit(&registry, change).await
    }

    /// Appends `change` durably, then publishes the registry with it applied. Called with the
    /// writer lock held and `registry` the current snapshot.
    async fn commit(
        &self,
        registry: &SchemaRegistry,
        change: RegistryChange,
    ) -> Result<(), SchemaServiceError> {
        let mut next = registry.clone();
        // Applied first on a copy: a change that does not apply never reaches the log.
        next.apply(&change)?;
        let event = json!({
            "specversion": "1.0",
            "id": uuid::Uuid::now_v7().to_string(),
            "source": "/proteus/schemas",
            "type": EVENT_TYPE,
            "subject": match &change {
                RegistryChange::Register { event_type, .. }
                | RegistryChange::SetMode { event_type, .. } => event_type.to_string(),
            },
            "datacontenttype": "application/json",
            "data": serde_json::to_value(&change)
                .map_err(|e| SchemaServiceError::Encoding(e.to_string()))?,
        });
        let bytes = serde_json::to_vec(&event).unwrap_or_default();
        let event =
            Event::from_json(&bytes).map_err(|e| SchemaServiceError::Encoding(e.to_string()))?;
        self.inner
            .log
            .append(&self.inner.topic, vec![event])
            .await?;
        *self
            .inner
            .registry
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(())
    }
}

/// An event that could not be upcast, and why.
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
                    event_type: event.event_type.clone(),
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
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<ProposedEvent>,
    ) -> Result<AppendOutcome, EventStoreError> {
        self.inner.append(stream, expected, events).await
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
