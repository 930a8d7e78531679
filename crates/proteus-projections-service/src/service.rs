//! The service: projections by name, their runners, and the control operations.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proteus_cache::TieredCache;
use proteus_eventstore::{Category, Direction, EventStore, ReadFilter};
use proteus_projections::definition::{SchemaLookup, Source};
use proteus_projections::{
    DefinitionError, DefinitionErrors, Page, ProjectionDefinition, ProjectionName,
    ProjectionRecord, Projector, Query, ReadModelStore, RunState, validate,
};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::runner::{Runner, Slot, Stop};
use crate::{ProjectionServiceConfig, ProjectionStatus, ServiceError, lag, now_ms};

/// The projection runtime. Clones share the same service. Dropping the last clone asks every
/// runner to stop (they finish their commit in flight); [`ProjectionService::close`] also
/// waits for them.
#[derive(Clone)]
pub struct ProjectionService {
    inner: Arc<Inner>,
}

struct Inner {
    events: Arc<dyn EventStore>,
    store: Arc<dyn ReadModelStore>,
    config: ProjectionServiceConfig,
    /// Documents' cache for `get` (see [`crate::cache`]).
    cache: Option<TieredCache>,
    /// By name. Locked briefly, never across an await.
    entries: Mutex<BTreeMap<ProjectionName, Arc<Entry>>>,
    /// `true` (or dropped) stops every runner.
    shutdown: watch::Sender<bool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// One projection: its shared state, and its control lock, which serialises the control
/// operations with each other and with the runner's lifetime.
struct Entry {
    slot: Arc<Slot>,
    control: tokio::sync::Mutex<Control>,
}

#[derive(Default)]
struct Control {
    runner: Option<RunnerHandle>,
}

struct RunnerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Control {
    /// Asks the runner to stop and waits until it has: after this, no commit of it is in
    /// flight or can start.
    async fn stop_runner(&mut self) {
        if let Some(runner) = self.runner.take() {
            runner.stop.send_replace(true);
            if let Err(error) = runner.task.await
                && error.is_panic()
            {
                tracing::error!(%error, "a projection runner panicked");
            }
        }
    }
}

fn name_of(name: &str) -> Result<ProjectionName, ServiceError> {
    Ok(ProjectionName::parse(name)?)
}

fn not_found(name: &ProjectionName) -> ServiceError {
    ServiceError::NotFound {
        name: name.to_string(),
    }
}

/// Checks what the event store requires of a definition beyond its own rules: a category it
/// accepts.
fn check_source(definition: &ProjectionDefinition) -> Result<(), DefinitionErrors> {
    if let Source::Category(category) = &definition.source
        && let Err(error) = Category::parse(category)
    {
        return Err(DefinitionErrors(vec![DefinitionError {
            path: "/source/category".into(),
            message: error.to_string(),
        }]));
    }
    Ok(())
}

impl ProjectionService {
    /// Loads every saved projection and starts a runner for each one that is running.
    pub async fn open(
        events: Arc<dyn EventStore>,
        store: Arc<dyn ReadModelStore>,
        config: ProjectionServiceConfig,
    ) -> Result<ProjectionService, ServiceError> {
        ProjectionService::open_with_cache(events, store, config, None).await
    }

    /// [`open`](Self::open), with `get` served through `cache` (see [`crate::cache`] for how
    /// it stays fresh).
    pub async fn open_with_cache(
        events: Arc<dyn EventStore>,
        store: Arc<dyn ReadModelStore>,
        config: ProjectionServiceConfig,
        cache: Option<TieredCache>,
    ) -> Result<ProjectionService, ServiceError> {
        config.validate()?;
        let records = store.list_projections().await?;
        let service = ProjectionService {
            inner: Arc::new(Inner {
                events,
                store,
                config,
                cache,
                entries: Mutex::new(BTreeMap::new()),
                shutdown: watch::channel(false).0,
            }),
        };
        for record in records {
            let checkpoint = service
                .inner
                .store
                .checkpoint(&record.name)
                .await?
                .unwrap_or_default();
            let name = record.name.clone();
            let running = record.state == RunState::Running;
            let definition = record.definition.clone();
            let entry = Arc::new(Entry {
                slot: Arc::new(Slot::new(name.clone(), Some(record))),
                control: tokio::sync::Mutex::new(Control::default()),
            });
            entry
                .slot
                .set_positions(checkpoint.clone(), checkpoint.position);
            if running {
                let mut control = entry.control.lock().await;
                service.start(&entry, &mut control, &definition);
            }
            service.entries().insert(name, entry);
        }
        Ok(service)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<ProjectionName, Arc<Entry>>> {
        self.inner.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry(&self, name: &ProjectionName) -> Result<Arc<Entry>, ServiceError> {
        self.entries()
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    /// Whether `entry` is still the one registered under its name (a delete may have removed
    /// it while we waited for its control lock).
    fn is_current(&self, entry: &Arc<Entry>) -> bool {
        self.entries()
            .get(&entry.slot.name)
            .is_some_and(|e| Arc::ptr_eq(e, entry))
    }

    /// Starts a runner; the caller holds the control lock and has stopped any previous one.
    fn start(&self, entry: &Entry, control: &mut Control, definition: &ProjectionDefinition) {
        let (stop, own) = watch::channel(false);
        let runner = Runner::new(
            entry.slot.clone(),
            self.inner.events.clone(),
            self.inner.store.clone(),
            definition,
            Arc::new(Projector::new(definition.clone())),
            self.inner.config.clone(),
            Stop {
                own,
                service: self.inner.shutdown.subscribe(),
            },
        )
        .with_cache(self.inner.cache.clone());
        let task = tokio::spawn(runner.run());
        control.runner = Some(RunnerHandle { stop, task });
    }

    /// Creates a projection and starts it, after validating `definition` (and, with
    /// `schema_lookup`, its reads against the schemas of the event types it names). Creating
    /// again the same name with the same definition returns its status (idempotent); with a
    /// different definition it is a [`ServiceError::Conflict`].
    ///
    /// Validation runs before the returned future is first polled, so the future is `Send`
    /// whatever `schema_lookup` is.
    pub fn create<'a>(
        &'a self,
        name: &str,
        definition: &Value,
        schema_lookup: Option<SchemaLookup<'_>>,
    ) -> impl Future<Output = Result<ProjectionStatus, ServiceError>> + Send + 'a {
        let checked = name_of(name).and_then(|name| {
            let definition = validate(definition, schema_lookup)?;
            check_source(&definition)?;
            Ok((name, definition))
        });
        async move {
            let (name, definition) = checked?;
            self.create_checked(name, definition).await
        }
    }

    async fn create_checked(
        &self,
        name: ProjectionName,
        definition: ProjectionDefinition,
    ) -> Result<ProjectionStatus, ServiceError> {
        loop {
            self.check_open()?;
            let entry = self
                .entries()
                .entry(name.clone())
                .or_insert_with(|| {
                    Arc::new(Entry {
                        slot: Arc::new(Slot::new(name.clone(), None)),
                        control: tokio::sync::Mutex::new(Control::default()),
                    })
                })
                .clone();
            let mut control = entry.control.lock().await;
            if !self.is_current(&entry) {
                continue; // deleted meanwhile: register anew
            }
            let existing = entry.slot.lock().record.clone();
            if let Some(existing) = existing {
                if existing.definition.json() != definition.json() {
                    return Err(ServiceError::Conflict {
                        name: name.to_string(),
                    });
                }
                drop(control);
                return self.status(name.as_str()).await;
            }
            let result = self
                .save_new(&entry, &mut control, &name, &definition)
                .await;
            if let Err(error) = result {
                // Leave no half-created entry behind.
                if entry.slot.lock().record.is_none() {
                    let mut entries = self.entries();
                    if entries.get(&name).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                        entries.remove(&name);
                    }
                }
                return Err(error);
            }
            drop(control);
            return self.status(name.as_str()).await;
        }
    }

    async fn save_new(
        &self,
        entry: &Entry,
        control: &mut Control,
        name: &ProjectionName,
        definition: &ProjectionDefinition,
    ) -> Result<(), ServiceError> {
        let store = &self.inner.store;
        let now = now_ms();
        let record = ProjectionRecord {
            name: name.clone(),
            definition: definition.clone(),
            state: RunState::Running,
            created_ms: now,
            updated_ms: now,
        };
        store.save_projection(&record).await?;
        // Documents left by a projection of this name that was not dropped completely (a
        // crash during a delete) must not seed the new one.
        if store.checkpoint(name).await?.is_some() {
            let keys = self.cached_keys(name).await?;
            store.reset(name).await?;
            if let Some(cache) = &self.inner.cache {
                crate::cache::invalidate_with_retries(cache, &keys).await;
            }
        }
        entry.slot.lock().record = Some(record);
        entry.slot.set_positions(Default::default(), 0);
        self.start(entry, control, definition);
        Ok(())
    }

    fn check_open(&self) -> Result<(), ServiceError> {
        if *self.inner.shutdown.borrow() {
            return Err(ServiceError::Closed);
        }
        Ok(())
    }

    /// The last committed position of the event store; `None` when it cannot answer now.
    async fn head(&self) -> Option<u64> {
        let page = self
            .inner
            .events
            .read_all(u64::MAX, Direction::Forward, 1, &ReadFilter::default())
            .await;
        match page {
            Ok(page) => Some(page.head_position),
            Err(error) => {
                tracing::debug!(%error, "cannot read the head of the event store for a status");
                None
            }
        }
    }

    fn status_of(slot: &Slot, head: Option<u64>) -> Option<ProjectionStatus> {
        let shared = slot.lock();
        let record = shared.record.as_ref()?;
        let head_position = head.unwrap_or(0).max(shared.head_position);
        let read_position = shared.read_position.max(shared.checkpoint.position);
        Some(ProjectionStatus {
            name: record.name.clone(),
            state: record.state.clone(),
            checkpoint: shared.checkpoint.clone(),
            read_position,
            head_position,
            lag: lag(head_position, read_position),
            live: record.state == RunState::Running && shared.live,
            retrying: shared.retrying.clone(),
            definition: record.definition.clone(),
            created_ms: record.created_ms,
            updated_ms: record.updated_ms.max(shared.checkpoint.updated_ms),
        })
    }

    /// Every projection, sorted by name.
    pub async fn list(&self) -> Vec<ProjectionStatus> {
        let head = self.head().await;
        let slots: Vec<Arc<Slot>> = self.entries().values().map(|e| e.slot.clone()).collect();
        slots
            .iter()
            .filter_map(|slot| Self::status_of(slot, head))
            .collect()
    }

    pub async fn status(&self, name: &str) -> Result<ProjectionStatus, ServiceError> {
        let name = name_of(name)?;
        let slot = self.entry(&name)?.slot.clone();
        let head = self.head().await;
        Self::status_of(&slot, head).ok_or_else(|| not_found(&name))
    }

    /// Locks a projection's control, checking it still exists.
    async fn control(&self, name: &str) -> Result<(Arc<Entry>, ProjectionRecord), ServiceError> {
        self.check_open()?;
        let name = name_of(name)?;
        let entry = self.entry(&name)?;
        let record = entry.slot.lock().record.clone();
        match record {
            Some(record) => Ok((entry, record)),
            None => Err(not_found(&name)),
        }
    }

    /// Sets the state durably, then in memory.
    async fn set_state(&self, entry: &Entry, state: RunState) -> Result<(), ServiceError> {
        let now = now_ms();
        self.inner
            .store
            .set_state(&entry.slot.name, &state, now)
            .await?;
        if let Some(record) = entry.slot.lock().record.as_mut() {
            record.state = state;
            record.updated_ms = now;
        }
        Ok(())
    }

    /// Stops the projection's runner and saves it paused. Pausing a failed projection keeps
    /// it failed (it is stopped already, and the error is what its user needs to see).
    pub async fn pause(&self, name: &str) -> Result<ProjectionStatus, ServiceError> {
        let (entry, _) = self.control(name).await?;
        let mut control = entry.control.lock().await;
        control.stop_runner().await;
        let state = entry.slot.lock().record.as_ref().map(|r| r.state.clone());
        match state {
            None => return Err(not_found(&entry.slot.name)),
            Some(RunState::Running) => {
                if let Err(error) = self.set_state(&entry, RunState::Paused).await {
                    // Keep running what is saved as running.
                    let definition = entry
                        .slot
                        .lock()
                        .record
                        .as_ref()
                        .map(|r| r.definition.clone());
                    if let Some(definition) = definition {
                        self.start(&entry, &mut control, &definition);
                    }
                    return Err(error);
                }
            }
            Some(RunState::Paused | RunState::Failed { .. }) => {}
        }
        drop(control);
        self.status(name).await
    }

    /// Starts a paused or failed projection again from its checkpoint. A failed one retries
    /// the event it stopped at: it fails again there unless what made it fail was outside
    /// the event (to change a wrong definition, delete the projection and create it again).
    pub async fn resume(&self, name: &str) -> Result<ProjectionStatus, ServiceError> {
        let (entry, _) = self.control(name).await?;
        let mut control = entry.control.lock().await;
        let record = entry.slot.lock().record.clone();
        let Some(record) = record else {
            return Err(not_found(&entry.slot.name));
        };
        let runner_alive = control
            .runner
            .as_ref()
            .is_some_and(|r| !r.task.is_finished());
        if record.state != RunState::Running || !runner_alive {
            control.stop_runner().await;
            if record.state != RunState::Running {
                self.set_state(&entry, RunState::Running).await?;
            }
            self.start(&entry, &mut control, &record.definition);
        }
        drop(control);
        self.status(name).await
    }

    /// Drops the read model and the checkpoint in one transaction and rebuilds from the first
    /// event. A failed projection is set running again (its failure belonged to the dropped
    /// read model; it fails again at the same event if the events are the same); a paused one
    /// stays paused, empty, until resumed.
    pub async fn reset(&self, name: &str) -> Result<ProjectionStatus, ServiceError> {
        let (entry, _) = self.control(name).await?;
        let mut control = entry.control.lock().await;
        control.stop_runner().await;
        let record = entry.slot.lock().record.clone();
        let Some(record) = record else {
            return Err(not_found(&entry.slot.name));
        };
        let reset = match self.cached_keys(&entry.slot.name).await {
            Ok(keys) => self.inner.store.reset(&entry.slot.name).await.map(|_| keys),
            Err(error) => Err(error),
        };
        let keys = match reset {
            Ok(keys) => keys,
            Err(error) => {
                if record.state == RunState::Running {
                    self.start(&entry, &mut control, &record.definition);
                }
                return Err(error.into());
            }
        };
        if let Some(cache) = &self.inner.cache {
            crate::cache::invalidate_with_retries(cache, &keys).await;
        }
        entry.slot.set_positions(Default::default(), 0);
        {
            let mut shared = entry.slot.lock();
            shared.live = false;
            shared.retrying = None;
        }
        if matches!(record.state, RunState::Failed { .. }) {
            self.set_state(&entry, RunState::Running).await?;
        }
        if record.state != RunState::Paused {
            self.start(&entry, &mut control, &record.definition);
        }
        drop(control);
        self.status(name).await
    }

    /// Stops the projection and removes it with its documents and checkpoint.
    pub async fn delete(&self, name: &str) -> Result<(), ServiceError> {
        let (entry, record) = self.control(name).await?;
        let mut control = entry.control.lock().await;
        control.stop_runner().await;
        if entry.slot.lock().record.is_none() {
            return Err(not_found(&entry.slot.name));
        }
        let dropped = match self.cached_keys(&entry.slot.name).await {
            Ok(keys) => self
                .inner
                .store
                .drop_projection(&entry.slot.name)
                .await
                .map(|_| keys),
            Err(error) => Err(error),
        };
        let keys = match dropped {
            Ok(keys) => keys,
            Err(error) => {
                if record.state == RunState::Running {
                    self.start(&entry, &mut control, &record.definition);
                }
                return Err(error.into());
            }
        };
        if let Some(cache) = &self.inner.cache {
            crate::cache::invalidate_with_retries(cache, &keys).await;
        }
        entry.slot.lock().record = None;
        let mut entries = self.entries();
        if entries
            .get(&entry.slot.name)
            .is_some_and(|e| Arc::ptr_eq(e, &entry))
        {
            entries.remove(&entry.slot.name);
        }
        Ok(())
    }

    /// One document of a projection's read model.
    pub async fn get(&self, name: &str, key: &str) -> Result<Option<Value>, ServiceError> {
        let name = name_of(name)?;
        self.exists(&name)?;
        let cache_key = self
            .inner
            .cache
            .as_ref()
            .and_then(|cache| Some((cache, crate::cache::key_of(&name, key)?)));
        let Some((cache, cache_key)) = cache_key else {
            return Ok(self.inner.store.get(&name, key).await?);
        };
        if let Some(doc) = cache
            .get(&cache_key)
            .await
            .and_then(|bytes| crate::cache::decode(bytes.as_ref()))
        {
            return Ok(doc);
        }
        let token = cache.fill_token(&cache_key);
        let doc = self.inner.store.get(&name, key).await?;
        cache
            .fill(&cache_key, crate::cache::encode(&doc), token)
            .await;
        Ok(doc)
    }

    /// The cache keys of every document of a projection (empty without a cache). Called with
    /// the runner stopped, so no commit changes the set meanwhile.
    async fn cached_keys(
        &self,
        name: &ProjectionName,
    ) -> Result<Vec<String>, proteus_projections::StoreError> {
        if self.inner.cache.is_none() {
            return Ok(Vec::new());
        }
        let mut keys = Vec::new();
        let mut query = Query {
            limit: proteus_projections::query::QUERY_LIMIT_MAX,
            ..Query::default()
        };
        loop {
            let page = self.inner.store.query(name, &query).await?;
            keys.extend(
                page.items
                    .iter()
                    .filter_map(|(key, _)| crate::cache::key_of(name, key)),
            );
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => return Ok(keys),
            }
        }
    }

    /// One page of the documents matching `query` (see [`proteus_projections::query`]).
    pub async fn query(&self, name: &str, query: &Query) -> Result<Page, ServiceError> {
        let name = name_of(name)?;
        self.exists(&name)?;
        Ok(self.inner.store.query(&name, query).await?)
    }

    fn exists(&self, name: &ProjectionName) -> Result<(), ServiceError> {
        let entry = self.entry(name)?;
        if entry.slot.lock().record.is_none() {
            return Err(not_found(name));
        }
        Ok(())
    }

    /// Waits until the projection has read past `position` (every event at or before it is
    /// reflected in its documents, or was not for it), or `timeout` passes; returns whether
    /// it has. Read-your-writes for a client: append, then wait for the position the append
    /// answered before querying.
    pub async fn wait_for_position(
        &self,
        name: &str,
        position: u64,
        timeout: Duration,
    ) -> Result<bool, ServiceError> {
        let name = name_of(name)?;
        let entry = self.entry(&name)?;
        let mut progress = entry.slot.progress.subscribe();
        drop(entry);
        let reached =
            tokio::time::timeout(timeout, progress.wait_for(|read| *read > position)).await;
        Ok(matches!(reached, Ok(Ok(_))))
    }

    /// Stops every runner and waits for them (each finishes its commit in flight). The
    /// stores are left open: they belong to the caller. Operations after it fail with
    /// [`ServiceError::Closed`].
    pub async fn close(&self) {
        self.inner.shutdown.send_replace(true);
        let entries: Vec<Arc<Entry>> = self.entries().values().cloned().collect();
        for entry in entries {
            entry.control.lock().await.stop_runner().await;
        }
    }
}
