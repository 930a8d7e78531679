//! The service: projections by name, their runners, and the control operations.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

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

use proteus_kv::lease::LeaseState;
use proteus_projections::Checkpoint;

use crate::runner::{LocalGuard, Runner, Slot, Stop};
use crate::shared::{self, LeaseHandle, SharedMode, Spaces};
use crate::{ProjectionServiceConfig, ProjectionStatus, ServiceError, lag, now_ms};

/// Shared mode: how often a control operation asks again for the runner lease while waiting
/// for its holder to hand it over, in ms.
const HANDOFF_POLL_MS: u64 = 50;
/// Shared mode: the longest pause between two looks at the stored checkpoint while waiting
/// for a position that another instance's runner will reach, in ms.
const REMOTE_WAIT_POLL_MS_MAX: u64 = 200;

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
    /// Shared mode (see [`crate::shared`]); `None` for a single instance.
    shared: Option<SharedCtx>,
}

struct SharedCtx {
    mode: SharedMode,
    spaces: Arc<Spaces>,
}

/// The control operations that, in shared mode, move the runner lease to the caller first.
#[derive(Clone, Copy)]
enum Op {
    Pause,
    Resume,
    Reset,
    Delete,
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
    /// Shared mode: this instance's runner lease, held while it runs the projection or
    /// performs a control operation on it.
    lease: Option<LeaseHandle>,
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
        ProjectionService::open_inner(events, store, config, cache, None).await
    }

    /// [`open_with_cache`](Self::open_with_cache) for one of several instances sharing the
    /// read-model store: each projection runs on one instance at a time, holding a lease in
    /// `shared.kv`; definitions and run states are re-read from the store every
    /// `shared.definitions_refresh_ms`; control operations take the projection over from the
    /// instance running it. See [`SharedMode`].
    pub async fn open_shared(
        events: Arc<dyn EventStore>,
        store: Arc<dyn ReadModelStore>,
        config: ProjectionServiceConfig,
        cache: Option<TieredCache>,
        shared: SharedMode,
    ) -> Result<ProjectionService, ServiceError> {
        shared.validate()?;
        ProjectionService::open_inner(events, store, config, cache, Some(shared)).await
    }

    async fn open_inner(
        events: Arc<dyn EventStore>,
        store: Arc<dyn ReadModelStore>,
        config: ProjectionServiceConfig,
        cache: Option<TieredCache>,
        shared: Option<SharedMode>,
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
                shared: shared.map(|mode| SharedCtx {
                    mode,
                    spaces: Arc::new(Spaces::new()),
                }),
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
            // In shared mode the first refresh starts what this instance gets the lease of.
            if running && service.inner.shared.is_none() {
                let mut control = entry.control.lock().await;
                service.start(&entry, &mut control, &definition);
            }
            service.entries().insert(name, entry);
        }
        if let Some(shared) = &service.inner.shared {
            service.refresh().await;
            spawn_refresher(
                Arc::downgrade(&service.inner),
                Duration::from_millis(shared.mode.definitions_refresh_ms),
                service.inner.shutdown.subscribe(),
            );
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
    /// In shared mode, only with the runner lease held.
    fn start(&self, entry: &Entry, control: &mut Control, definition: &ProjectionDefinition) {
        let lease = match &self.inner.shared {
            None => None,
            Some(_) => match &control.lease {
                Some(lease) if !lease.is_lost() => Some(lease.lost.clone()),
                _ => {
                    tracing::debug!(projection = %entry.slot.name, "not started: this instance does not hold its runner lease");
                    return;
                }
            },
        };
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
                lease,
            },
        )
        .with_cache(self.inner.cache.clone());
        let local = LocalGuard::new(entry.slot.clone());
        let task = tokio::spawn(async move {
            let _local = local;
            runner.run().await;
        });
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
        if self.inner.shared.is_some() {
            return self.create_shared(name, definition).await;
        }
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

    /// [`create_checked`](Self::create_checked) in shared mode: the store says whether the
    /// projection exists, and it is saved holding its runner lease.
    async fn create_shared(
        &self,
        name: ProjectionName,
        definition: ProjectionDefinition,
    ) -> Result<ProjectionStatus, ServiceError> {
        loop {
            self.check_open()?;
            // Created by another instance: idempotent or a conflict, as locally.
            if let Some(stored) = self.inner.store.load_projection(&name).await? {
                if stored.definition.json() != definition.json() {
                    return Err(ServiceError::Conflict {
                        name: name.to_string(),
                    });
                }
                self.adopt(stored);
                return self.status(name.as_str()).await;
            }
            let entry = self
                .entries()
                .entry(name.clone())
                .or_insert_with(|| new_entry(name.clone(), None))
                .clone();
            let mut control = entry.control.lock().await;
            if !self.is_current(&entry) {
                continue;
            }
            let result = self
                .create_locked(&entry, &mut control, &name, &definition)
                .await;
            self.settle_lease(&entry, &mut control).await;
            if result.is_err() && entry.slot.lock().record.is_none() {
                self.forget(&entry);
            }
            drop(control);
            match result {
                Ok(true) => return self.status(name.as_str()).await,
                Ok(false) => {
                    return Err(ServiceError::Conflict {
                        name: name.to_string(),
                    });
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Saves and starts a new projection holding its lease; `Ok(false)` when another instance
    /// created it with a different definition meanwhile.
    async fn create_locked(
        &self,
        entry: &Entry,
        control: &mut Control,
        name: &ProjectionName,
        definition: &ProjectionDefinition,
    ) -> Result<bool, ServiceError> {
        self.take_over(entry, control).await?;
        if let Some(stored) = self.inner.store.load_projection(name).await? {
            let same = stored.definition.json() == definition.json();
            self.apply_record(entry, control, stored.clone()).await;
            if same && stored.state == RunState::Running && control.runner.is_none() {
                self.start(entry, control, &stored.definition);
            }
            return Ok(same);
        }
        // A runner of a deleted incarnation cannot be running (its instance handed the lease
        // over), but never leave one behind.
        control.stop_runner().await;
        entry.slot.lock().record = None;
        self.save_new(entry, control, name, definition).await?;
        Ok(true)
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

    /// The instance id in shared mode.
    fn me(&self) -> Option<&str> {
        self.inner
            .shared
            .as_ref()
            .map(|s| s.mode.instance_id.as_str())
    }

    fn status_of(slot: &Slot, head: Option<u64>, me: Option<&str>) -> Option<ProjectionStatus> {
        let shared = slot.lock();
        // Shared mode: who runs it (this instance, or the holder last seen).
        let runner = me.and_then(|me| match shared.local {
            true => Some(me.to_owned()),
            false => shared.holder.clone(),
        });
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
            lag_ms: None,
            live: record.state == RunState::Running && shared.live,
            retrying: shared.retrying.clone(),
            definition: record.definition.clone(),
            created_ms: record.created_ms,
            updated_ms: record.updated_ms.max(shared.checkpoint.updated_ms),
            runner,
        })
    }

    /// Shared mode: the status of a projection another instance runs (or nobody), from the
    /// store.
    fn stored_status(
        record: ProjectionRecord,
        checkpoint: Checkpoint,
        head: Option<u64>,
        runner: Option<String>,
    ) -> ProjectionStatus {
        let head_position = head.unwrap_or(0);
        let read_position = checkpoint.position;
        ProjectionStatus {
            name: record.name,
            live: record.state == RunState::Running && read_position > head_position,
            state: record.state,
            read_position,
            head_position,
            lag: lag(head_position, read_position),
            lag_ms: None,
            retrying: None,
            definition: record.definition,
            created_ms: record.created_ms,
            updated_ms: record.updated_ms.max(checkpoint.updated_ms),
            checkpoint,
            runner,
        }
    }

    /// Fills `status.lag_ms`: 0 when nothing is left to read, else the age of the event at
    /// its read position, read from the event store (one event).
    async fn with_lag_ms(&self, mut status: ProjectionStatus) -> ProjectionStatus {
        if status.lag == 0 {
            status.lag_ms = Some(0);
            return status;
        }
        let page = self
            .inner
            .events
            .read_all(
                status.read_position,
                Direction::Forward,
                1,
                &ReadFilter::default(),
            )
            .await;
        status.lag_ms = match page {
            Ok(page) => Some(page.events.first().map_or(0, |event| {
                now_ms().saturating_sub(event.recorded_ms).max(0) as u64
            })),
            Err(error) => {
                tracing::debug!(%error, "cannot read the oldest unread event for a status");
                None
            }
        };
        status
    }

    /// Every projection, sorted by name.
    pub async fn list(&self) -> Vec<ProjectionStatus> {
        let head = self.head().await;
        let slots: Vec<Arc<Slot>> = self.entries().values().map(|e| e.slot.clone()).collect();
        // One read per lagging projection, all at once rather than one after another.
        let statuses = slots
            .iter()
            .filter_map(|slot| Self::status_of(slot, head, self.me()))
            .map(|status| self.with_lag_ms(status));
        futures_util::future::join_all(statuses).await
    }

    /// In shared mode, a projection this instance does not run is shown as stored (see
    /// [`ProjectionStatus`]).
    pub async fn status(&self, name: &str) -> Result<ProjectionStatus, ServiceError> {
        let name = name_of(name)?;
        let slot = self.lookup(&name).await?.slot.clone();
        if let Some(shared) = &self.inner.shared
            && !slot.lock().local
        {
            let store = &self.inner.store;
            let record = store
                .load_projection(&name)
                .await?
                .ok_or_else(|| not_found(&name))?;
            let checkpoint = store.checkpoint(&name).await?.unwrap_or_default();
            let head = self.head().await;
            let runner = match shared::holder(&shared.mode, &shared.spaces, &name).await {
                Ok(holder) => holder,
                Err(error) => {
                    tracing::debug!(%error, "cannot read a runner lease for a status");
                    slot.lock().holder.clone()
                }
            };
            let status = Self::stored_status(record, checkpoint, head, runner);
            return Ok(self.with_lag_ms(status).await);
        }
        let head = self.head().await;
        let status = Self::status_of(&slot, head, self.me()).ok_or_else(|| not_found(&name))?;
        Ok(self.with_lag_ms(status).await)
    }

    /// Whether this instance runs the projection now (in shared mode, exactly one instance
    /// does while it is running; in single-instance mode, this one whenever it runs).
    pub fn runs_here(&self, name: &str) -> bool {
        let Ok(name) = name_of(name) else {
            return false;
        };
        self.entry(&name).is_ok_and(|entry| entry.slot.lock().local)
    }

    /// The entry of `name`; in shared mode, one created by another instance and not yet
    /// seen by a refresh is loaded from the store.
    async fn lookup(&self, name: &ProjectionName) -> Result<Arc<Entry>, ServiceError> {
        match self.entry(name) {
            Ok(entry) => Ok(entry),
            Err(error) if self.inner.shared.is_none() => Err(error),
            Err(error) => match self.inner.store.load_projection(name).await? {
                Some(record) => Ok(self.adopt(record)),
                None => Err(error),
            },
        }
    }

    /// Registers a projection found in the store (unless an entry exists already).
    fn adopt(&self, record: ProjectionRecord) -> Arc<Entry> {
        self.entries()
            .entry(record.name.clone())
            .or_insert_with(|| new_entry(record.name.clone(), Some(record)))
            .clone()
    }

    /// Removes `entry` (if it is still the one registered), marking it gone.
    fn forget(&self, entry: &Arc<Entry>) {
        entry.slot.lock().record = None;
        let mut entries = self.entries();
        if entries
            .get(&entry.slot.name)
            .is_some_and(|e| Arc::ptr_eq(e, entry))
        {
            entries.remove(&entry.slot.name);
        }
    }

    /// Locks a projection's control, checking it still exists.
    async fn control(&self, name: &str) -> Result<(Arc<Entry>, ProjectionRecord), ServiceError> {
        self.check_open()?;
        let name = name_of(name)?;
        let entry = self.lookup(&name).await?;
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
        self.operate(name, Op::Pause).await?;
        self.status(name).await
    }

    /// Starts a paused or failed projection again from its checkpoint. A failed one retries
    /// the event it stopped at: it fails again there unless what made it fail was outside
    /// the event (to change a wrong definition, delete the projection and create it again).
    pub async fn resume(&self, name: &str) -> Result<ProjectionStatus, ServiceError> {
        self.operate(name, Op::Resume).await?;
        self.status(name).await
    }

    /// Drops the read model and the checkpoint in one transaction and rebuilds from the first
    /// event. A failed projection is set running again (its failure belonged to the dropped
    /// read model; it fails again at the same event if the events are the same); a paused one
    /// stays paused, empty, until resumed.
    pub async fn reset(&self, name: &str) -> Result<ProjectionStatus, ServiceError> {
        self.operate(name, Op::Reset).await?;
        self.status(name).await
    }

    /// Stops the projection and removes it with its documents and checkpoint.
    pub async fn delete(&self, name: &str) -> Result<(), ServiceError> {
        self.operate(name, Op::Delete).await
    }

    /// Runs a control operation under the projection's control lock; in shared mode, with
    /// its runner lease taken over from whichever instance holds it, and on the record as
    /// stored (another instance may have changed it).
    async fn operate(&self, name: &str, op: Op) -> Result<(), ServiceError> {
        let (entry, record) = self.control(name).await?;
        let mut control = entry.control.lock().await;
        let Some(shared) = &self.inner.shared else {
            return self.operate_locked(&entry, &mut control, record, op).await;
        };
        let name = &entry.slot.name;
        // Resuming what runs already (here or elsewhere) changes nothing: no need to move it.
        if let Op::Resume = op {
            let stored = self.inner.store.load_projection(name).await?;
            let Some(stored) = stored else {
                self.let_go(&entry, &mut control).await;
                self.forget(&entry);
                return Err(not_found(name));
            };
            if stored.state == RunState::Running
                && control.runner.is_none()
                && shared::holder(&shared.mode, &shared.spaces, name)
                    .await
                    .map_err(|e| shared::coordination("reading a runner lease", e))?
                    .is_some_and(|holder| holder != shared.mode.instance_id)
            {
                self.apply_record(&entry, &mut control, stored).await;
                return Ok(());
            }
        }
        self.take_over(&entry, &mut control).await?;
        let stored = match self.inner.store.load_projection(name).await {
            Ok(stored) => stored,
            Err(error) => {
                self.settle_lease(&entry, &mut control).await;
                return Err(error.into());
            }
        };
        let Some(stored) = stored else {
            self.let_go(&entry, &mut control).await;
            self.forget(&entry);
            return Err(not_found(name));
        };
        self.apply_record(&entry, &mut control, stored.clone())
            .await;
        let result = self.operate_locked(&entry, &mut control, stored, op).await;
        self.settle_lease(&entry, &mut control).await;
        result
    }

    async fn operate_locked(
        &self,
        entry: &Arc<Entry>,
        control: &mut Control,
        record: ProjectionRecord,
        op: Op,
    ) -> Result<(), ServiceError> {
        match op {
            Op::Pause => self.pause_locked(entry, control).await,
            Op::Resume => self.resume_locked(entry, control).await,
            Op::Reset => self.reset_locked(entry, control).await,
            Op::Delete => self.delete_locked(entry, control, record).await,
        }
    }

    async fn pause_locked(&self, entry: &Entry, control: &mut Control) -> Result<(), ServiceError> {
        control.stop_runner().await;
        let state = entry.slot.lock().record.as_ref().map(|r| r.state.clone());
        match state {
            None => return Err(not_found(&entry.slot.name)),
            Some(RunState::Running) => {
                if let Err(error) = self.set_state(entry, RunState::Paused).await {
                    // Keep running what is saved as running.
                    let definition = entry
                        .slot
                        .lock()
                        .record
                        .as_ref()
                        .map(|r| r.definition.clone());
                    if let Some(definition) = definition {
                        self.start(entry, control, &definition);
                    }
                    return Err(error);
                }
            }
            Some(RunState::Paused | RunState::Failed { .. }) => {}
        }
        Ok(())
    }

    async fn resume_locked(
        &self,
        entry: &Entry,
        control: &mut Control,
    ) -> Result<(), ServiceError> {
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
                self.set_state(entry, RunState::Running).await?;
            }
            self.start(entry, control, &record.definition);
        }
        Ok(())
    }

    async fn reset_locked(&self, entry: &Entry, control: &mut Control) -> Result<(), ServiceError> {
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
                    self.start(entry, control, &record.definition);
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
            self.set_state(entry, RunState::Running).await?;
        }
        if record.state != RunState::Paused {
            self.start(entry, control, &record.definition);
        }
        Ok(())
    }

    async fn delete_locked(
        &self,
        entry: &Arc<Entry>,
        control: &mut Control,
        record: ProjectionRecord,
    ) -> Result<(), ServiceError> {
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
                    self.start(entry, control, &record.definition);
                }
                return Err(error.into());
            }
        };
        if let Some(cache) = &self.inner.cache {
            crate::cache::invalidate_with_retries(cache, &keys).await;
        }
        self.forget(entry);
        Ok(())
    }

    /// Shared mode: makes this instance the holder of the projection's runner lease, asking
    /// the holder to hand it over and waiting (at most [`SharedMode::handoff_wait_ms`]) when
    /// another instance has it. Nothing in single-instance mode.
    async fn take_over(&self, entry: &Entry, control: &mut Control) -> Result<(), ServiceError> {
        let Some(shared) = &self.inner.shared else {
            return Ok(());
        };
        let name = &entry.slot.name;
        if control.lease.as_ref().is_some_and(|l| !l.is_lost()) {
            return Ok(());
        }
        if let Some(lost) = control.lease.take() {
            control.stop_runner().await;
            lost.release(&shared.mode, &shared.spaces, name).await;
        }
        let wait_ms = shared.mode.handoff_wait_ms();
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let mut request: Option<Vec<u8>> = None;
        let result = loop {
            if let Err(error) = self.check_open() {
                break Err(error);
            }
            match shared::try_acquire(&shared.mode, &shared.spaces, name).await {
                Ok(LeaseState::Held(lease)) => {
                    control.lease = Some(LeaseHandle::keep(
                        &shared.mode,
                        &shared.spaces,
                        name,
                        lease,
                        self.inner.shutdown.subscribe(),
                    ));
                    entry.slot.lock().holder = Some(shared.mode.instance_id.clone());
                    break Ok(());
                }
                Ok(LeaseState::HeldByOther(other)) => {
                    entry.slot.lock().holder = Some(other.holder.clone());
                    if request.is_none() {
                        match shared::request_handoff(&shared.mode, &shared.spaces, name).await {
                            Ok(written) => request = Some(written),
                            Err(error) => {
                                break Err(shared::coordination("asking for a hand-over", error));
                            }
                        }
                    }
                    if Instant::now() >= deadline {
                        break Err(ServiceError::Coordination {
                            reason: format!(
                                "instance '{}' runs projection '{name}' and did not hand it over within {wait_ms} ms",
                                other.holder
                            ),
                        });
                    }
                }
                Err(error) => {
                    if Instant::now() >= deadline {
                        break Err(shared::coordination("taking the runner lease", error));
                    }
                    tracing::debug!(projection = %name, %error, "taking a runner lease failed; retrying");
                }
            }
            tokio::time::sleep(Duration::from_millis(HANDOFF_POLL_MS)).await;
        };
        if let Some(request) = request {
            shared::withdraw_handoff(&shared.mode, &shared.spaces, name, request).await;
        }
        result
    }

    /// Shared mode: stops the runner and gives the lease up.
    async fn let_go(&self, entry: &Entry, control: &mut Control) {
        control.stop_runner().await;
        if let (Some(shared), Some(lease)) = (&self.inner.shared, control.lease.take()) {
            lease
                .release(&shared.mode, &shared.spaces, &entry.slot.name)
                .await;
        }
    }

    /// Shared mode: gives the lease up unless this instance runs the projection.
    async fn settle_lease(&self, entry: &Entry, control: &mut Control) {
        if control.runner.is_none() {
            self.let_go(entry, control).await;
        }
    }

    /// Shared mode: takes `stored` as the projection's record; a different incarnation
    /// (deleted and created again elsewhere) stops the local runner and starts from its
    /// stored checkpoint.
    async fn apply_record(&self, entry: &Entry, control: &mut Control, stored: ProjectionRecord) {
        let local = entry.slot.lock().record.clone();
        if local.as_ref() == Some(&stored) {
            return;
        }
        let other_incarnation = local.as_ref().is_some_and(|l| {
            l.created_ms != stored.created_ms || l.definition.json() != stored.definition.json()
        });
        if other_incarnation {
            control.stop_runner().await;
            entry.slot.set_positions(Default::default(), 0);
        }
        entry.slot.lock().record = Some(stored);
    }

    /// Shared mode: one reconciliation with the store and the other instances (see
    /// [`crate::shared`]); the background refresher calls it every `definitions_refresh_ms`.
    async fn refresh(&self) {
        let Some(shared) = &self.inner.shared else {
            return;
        };
        let records = match self.inner.store.list_projections().await {
            Ok(records) => records,
            Err(error) => {
                tracing::warn!(%error, "cannot list the projections to refresh them; retrying later");
                return;
            }
        };
        let requested: BTreeSet<ProjectionName> =
            match shared::foreign_requests(&shared.mode, &shared.spaces).await {
                Ok(names) => names.into_iter().collect(),
                Err(error) => {
                    tracing::debug!(%error, "cannot read the projections' hand-off requests");
                    BTreeSet::new()
                }
            };
        let listed: BTreeMap<ProjectionName, ProjectionRecord> =
            records.into_iter().map(|r| (r.name.clone(), r)).collect();
        // Projections deleted through another instance.
        let gone: Vec<Arc<Entry>> = self
            .entries()
            .iter()
            .filter(|(name, entry)| {
                !listed.contains_key(*name) && entry.slot.lock().record.is_some()
            })
            .map(|(_, entry)| entry.clone())
            .collect();
        for entry in gone {
            let Ok(mut control) = entry.control.try_lock() else {
                continue; // an operation is under way: next time
            };
            if !self.is_current(&entry) {
                continue;
            }
            // The list may predate a create on this instance: ask again.
            match self.inner.store.load_projection(&entry.slot.name).await {
                Ok(None) => {
                    self.let_go(&entry, &mut control).await;
                    self.forget(&entry);
                }
                Ok(Some(_)) => {}
                Err(error) => tracing::debug!(%error, "cannot load a projection to refresh it"),
            }
        }
        for (name, record) in listed {
            if self.check_open().is_err() {
                return;
            }
            let entry = self.adopt(record.clone());
            let Ok(mut control) = entry.control.try_lock() else {
                continue;
            };
            if !self.is_current(&entry) {
                continue;
            }
            self.reconcile(
                shared,
                &entry,
                &mut control,
                record,
                requested.contains(&name),
            )
            .await;
        }
    }

    async fn reconcile(
        &self,
        shared: &SharedCtx,
        entry: &Arc<Entry>,
        control: &mut Control,
        listed: ProjectionRecord,
        handoff_requested: bool,
    ) {
        let name = &entry.slot.name;
        // A runner that ended by itself (failed, lost its lease, projection gone) is joined.
        if control
            .runner
            .as_ref()
            .is_some_and(|r| r.task.is_finished())
        {
            control.stop_runner().await;
        }
        if control.lease.as_ref().is_some_and(|l| l.is_lost()) {
            self.let_go(entry, control).await;
        }
        // The store's record is the truth; a listed one that differs from ours may predate
        // our own last change, so it is read again.
        let local = entry.slot.lock().record.clone();
        let record = if local.as_ref() == Some(&listed) {
            listed
        } else {
            match self.inner.store.load_projection(name).await {
                Ok(Some(record)) => record,
                Ok(None) => {
                    self.let_go(entry, control).await;
                    self.forget(entry);
                    return;
                }
                Err(error) => {
                    tracing::debug!(%error, "cannot load a projection to refresh it");
                    return;
                }
            }
        };
        if local.is_some_and(|l| {
            l.created_ms != record.created_ms || l.definition.json() != record.definition.json()
        }) {
            // Deleted and created again elsewhere: start over from what is stored.
            self.let_go(entry, control).await;
            entry.slot.set_positions(Default::default(), 0);
        }
        entry.slot.lock().record = Some(record.clone());
        let wanted = record.state == RunState::Running && !handoff_requested;
        if !wanted {
            // Paused or failed elsewhere, or asked for by another instance.
            self.let_go(entry, control).await;
            if record.state != RunState::Running {
                entry.slot.lock().holder = None;
            }
        } else if control.runner.is_none() {
            if control.lease.is_none() {
                match shared::try_acquire(&shared.mode, &shared.spaces, name).await {
                    Ok(LeaseState::Held(lease)) => {
                        tracing::info!(projection = %name, instance = %shared.mode.instance_id, "running the projection on this instance");
                        control.lease = Some(LeaseHandle::keep(
                            &shared.mode,
                            &shared.spaces,
                            name,
                            lease,
                            self.inner.shutdown.subscribe(),
                        ));
                    }
                    Ok(LeaseState::HeldByOther(other)) => {
                        entry.slot.lock().holder = Some(other.holder);
                    }
                    Err(error) => {
                        tracing::debug!(projection = %name, %error, "cannot take a runner lease; retrying later");
                    }
                }
            }
            if control.lease.is_some() {
                entry.slot.lock().holder = Some(shared.mode.instance_id.clone());
                self.start(entry, control, &record.definition);
            }
        }
        // Where a projection run elsewhere stands, for lists and waits.
        if control.runner.is_none() {
            match self.inner.store.checkpoint(name).await {
                Ok(checkpoint) => {
                    let checkpoint = checkpoint.unwrap_or_default();
                    let position = checkpoint.position;
                    entry.slot.set_positions(checkpoint, position);
                }
                Err(error) => tracing::debug!(%error, "cannot load a checkpoint to refresh it"),
            }
        }
    }

    /// One document of a projection's read model.
    pub async fn get(&self, name: &str, key: &str) -> Result<Option<Value>, ServiceError> {
        let name = name_of(name)?;
        self.exists(&name).await?;
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
        self.exists(&name).await?;
        Ok(self.inner.store.query(&name, query).await?)
    }

    async fn exists(&self, name: &ProjectionName) -> Result<(), ServiceError> {
        let entry = self.lookup(name).await?;
        if entry.slot.lock().record.is_none() {
            return Err(not_found(name));
        }
        Ok(())
    }

    /// Waits until the projection has read past `position` (every event at or before it is
    /// reflected in its documents, or was not for it), or `timeout` passes; returns whether
    /// it has. Read-your-writes for a client: append, then wait for the position the append
    /// answered before querying.
    ///
    /// In shared mode, on an instance that does not run the projection, the stored checkpoint
    /// is polled (every 20 ms, slowing to 200 ms): it may trail the runner's read position by
    /// up to [`ProjectionServiceConfig::skip_checkpoint_interval_ms`] when the last events
    /// were not for the projection.
    pub async fn wait_for_position(
        &self,
        name: &str,
        position: u64,
        timeout: Duration,
    ) -> Result<bool, ServiceError> {
        let name = name_of(name)?;
        if self.inner.shared.is_none() {
            let entry = self.entry(&name)?;
            let mut progress = entry.slot.progress.subscribe();
            drop(entry);
            let reached =
                tokio::time::timeout(timeout, progress.wait_for(|read| *read > position)).await;
            return Ok(matches!(reached, Ok(Ok(_))));
        }
        let slot = self.lookup(&name).await?.slot.clone();
        let mut progress = slot.progress.subscribe();
        // Capped at a day: a timeout too long to add to the clock (Duration::MAX) would panic.
        let deadline = Instant::now() + timeout.min(Duration::from_secs(24 * 60 * 60));
        let mut poll = Duration::from_millis(20);
        loop {
            let local = slot.lock().local;
            if local {
                if *progress.borrow_and_update() > position {
                    return Ok(true);
                }
            } else if let Some(checkpoint) = self.inner.store.checkpoint(&name).await?
                && checkpoint.position > position
            {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            // A local runner wakes the waiter; the poll only catches it moving elsewhere.
            let nap = (deadline - now).min(poll);
            tokio::select! {
                _ = progress.changed() => {}
                _ = tokio::time::sleep(nap) => {}
            }
            if !local {
                poll = (poll * 2).min(Duration::from_millis(REMOTE_WAIT_POLL_MS_MAX));
            }
        }
    }

    /// Stops every runner and waits for them (each finishes its commit in flight). The
    /// stores are left open: they belong to the caller. Operations after it fail with
    /// [`ServiceError::Closed`].
    ///
    /// In shared mode, the runner leases are released once their runners have stopped, so
    /// other instances take the projections over at their next refresh.
    pub async fn close(&self) {
        self.inner.shutdown.send_replace(true);
        let entries: Vec<Arc<Entry>> = self.entries().values().cloned().collect();
        for entry in entries {
            let mut control = entry.control.lock().await;
            control.stop_runner().await;
            self.let_go(&entry, &mut control).await;
        }
    }
}

fn new_entry(name: ProjectionName, record: Option<ProjectionRecord>) -> Arc<Entry> {
    Arc::new(Entry {
        slot: Arc::new(Slot::new(name, record)),
        control: tokio::sync::Mutex::new(Control::default()),
    })
}

/// Shared mode: refreshes the service every `period` until it is closed or dropped (it holds
/// it only during a refresh).
fn spawn_refresher(inner: Weak<Inner>, period: Duration, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(period) => {}
            }
            let Some(inner) = inner.upgrade() else {
                return;
            };
            ProjectionService { inner }.refresh().await;
        }
    });
}
