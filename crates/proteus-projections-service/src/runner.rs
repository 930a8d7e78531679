//! One projection's runner: the read → load → plan → commit loop, live waiting, retries, and
//! stopping at an event it cannot process.

use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use proteus_cache::TieredCache;
use proteus_eventstore::{Category, Direction, EventStore, FeedPage, ReadFilter, RecordedEvent};
use proteus_projections::Write;
use proteus_projections::definition::Source;
use proteus_projections::{
    Checkpoint, EventMark, EventView, ProcessingError, Projection, ProjectionDefinition,
    ProjectionName, ProjectionRecord, ReadModelStore, RunState, StoreError, keys_for_batch,
    plan_batch,
};
use serde_json::Value;
use tokio::sync::watch;

use crate::{ProjectionServiceConfig, Retrying, lag, now_ms};

/// What the runner shares with status readers. Locked only briefly, never across an await.
#[derive(Debug)]
pub(crate) struct Shared {
    /// `None` while the projection is being created, or once it was deleted.
    pub record: Option<ProjectionRecord>,
    pub checkpoint: Checkpoint,
    pub read_position: u64,
    pub head_position: u64,
    pub live: bool,
    pub retrying: Option<Retrying>,
    /// Whether a runner of this instance is running the projection (maintained by the runner).
    pub local: bool,
    /// Shared mode: the instance last seen holding the runner lease.
    pub holder: Option<String>,
}

/// A projection's runtime state: what status shows, and progress for waiters.
#[derive(Debug)]
pub(crate) struct Slot {
    pub name: ProjectionName,
    pub shared: Mutex<Shared>,
    /// The read position, for [`crate::ProjectionService::wait_for_position`].
    pub progress: watch::Sender<u64>,
}

impl Slot {
    pub fn new(name: ProjectionName, record: Option<ProjectionRecord>) -> Self {
        Slot {
            name,
            shared: Mutex::new(Shared {
                record,
                checkpoint: Checkpoint::default(),
                read_position: 0,
                head_position: 0,
                live: false,
                retrying: None,
                local: false,
                holder: None,
            }),
            progress: watch::channel(0).0,
        }
    }

    /// The shared state; a poisoned lock (a panic while holding it) still holds valid data,
    /// since every update is a plain assignment.
    pub fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the checkpoint and the read position (the read position never goes back except by
    /// a reset, which calls this with a default checkpoint).
    pub fn set_positions(&self, checkpoint: Checkpoint, read_position: u64) {
        {
            let mut shared = self.lock();
            shared.checkpoint = checkpoint;
            shared.read_position = read_position;
        }
        self.progress.send_replace(read_position);
    }
}

/// A stop request: the runner's own (pause, reset, delete), the whole service's (close or
/// drop), or, in shared mode, the loss of the runner lease. Any sender closing counts as a
/// request.
pub(crate) struct Stop {
    pub own: watch::Receiver<bool>,
    pub service: watch::Receiver<bool>,
    pub lease: Option<watch::Receiver<bool>>,
}

impl Stop {
    pub fn is_requested(&self) -> bool {
        *self.own.borrow()
            || *self.service.borrow()
            || self.lease.as_ref().is_some_and(|lost| *lost.borrow())
    }

    /// Resolves once a stop is requested.
    pub async fn requested(&mut self) {
        let lease = async {
            match &mut self.lease {
                Some(lost) => {
                    let _ = lost.wait_for(|s| *s).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.own.wait_for(|s| *s) => {}
            _ = self.service.wait_for(|s| *s) => {}
            _ = lease => {}
        }
    }
}

/// Marks the slot as run by this instance from the runner's spawn until its task ends.
pub(crate) struct LocalGuard(Arc<Slot>);

impl LocalGuard {
    pub fn new(slot: Arc<Slot>) -> LocalGuard {
        slot.lock().local = true;
        LocalGuard(slot)
    }
}

impl Drop for LocalGuard {
    fn drop(&mut self) {
        self.0.lock().local = false;
    }
}

/// Where the runner reads from.
enum Feed {
    All,
    Category(Category),
}

pub(crate) struct Runner {
    pub slot: Arc<Slot>,
    pub events: Arc<dyn EventStore>,
    pub store: Arc<dyn ReadModelStore>,
    pub projection: Arc<dyn Projection>,
    pub config: ProjectionServiceConfig,
    pub stop: Stop,
    /// Documents' cache: the keys of every commit are invalidated right after it succeeds.
    pub cache: Option<TieredCache>,
    feed: Feed,
    filter: ReadFilter,
    /// Whether the definition may read metadata; when not, it is not parsed.
    parse_metadata: bool,
}

/// How a loop step ended.
enum Flow {
    Continue,
    Exit,
}

impl Runner {
    pub fn new(
        slot: Arc<Slot>,
        events: Arc<dyn EventStore>,
        store: Arc<dyn ReadModelStore>,
        definition: &ProjectionDefinition,
        projection: Arc<dyn Projection>,
        config: ProjectionServiceConfig,
        stop: Stop,
    ) -> Self {
        // A category the event store refuses cannot have events: reading `$all` and letting
        // the projection filter is then still correct, only slower.
        let feed = match &definition.source {
            Source::All => Feed::All,
            Source::Category(category) => match Category::parse(category) {
                Ok(category) => Feed::Category(category),
                Err(_) => Feed::All,
            },
        };
        // The server-side filter is an optimisation: the projection checks the types again
        // (`Projection::wants`), so a list the store refuses (too long, a name it does not
        // accept) is simply not sent.
        let filter = definition
            .event_types
            .as_ref()
            .map(|types| ReadFilter {
                event_types: types.clone(),
                stream_prefix: None,
            })
            .filter(|f| proteus_eventstore::limits::validate_filter(f).is_ok())
            .unwrap_or_default();
        // Re-serialised JSON spells every member name literally, so a definition that never
        // mentions `metadata` has no pointer into it.
        let parse_metadata = definition.json().to_string().contains("metadata");
        Runner {
            slot,
            events,
            store,
            projection,
            config,
            stop,
            cache: None,
            feed,
            filter,
            parse_metadata,
        }
    }

    /// Invalidates the keys of every commit in `cache`.
    pub fn with_cache(mut self, cache: Option<TieredCache>) -> Self {
        self.cache = cache;
        self
    }

    fn name(&self) -> &ProjectionName {
        &self.slot.name
    }

    pub async fn run(mut self) {
        tracing::debug!(projection = %self.name(), "projection runner started");
        let store = self.store.clone();
        let name = self.name().clone();
        let Some(checkpoint) = self
            .retry("load checkpoint", || store.checkpoint(&name))
            .await
        else {
            return;
        };
        let mut checkpoint = checkpoint.unwrap_or_default();
        let mut read_position = checkpoint.position;
        self.slot
            .set_positions(checkpoint.clone(), checkpoint.position);
        if let Some(mark) = checkpoint.last_event.clone() {
            match self.check_mark(&mark).await {
                None => return,
                Some(Ok(())) => {}
                Some(Err(error)) => {
                    self.fail(error).await;
                    return;
                }
            }
        }
        let mut last_commit_ms = now_ms();
        let mut prefetched: Option<FeedPage> = None;
        // Registered once: the loop sets them for every page.
        let projection = self.name().to_string();
        let lag_events =
            metrics::gauge!("proteus_projection_lag_events", "projection" => projection.clone());
        let lag_seconds =
            metrics::gauge!("proteus_projection_lag_seconds", "projection" => projection);
        loop {
            if self.stop.is_requested() {
                break;
            }
            let page = match prefetched.take() {
                Some(page) => page,
                None => match self.read(read_position).await {
                    Some(page) => page,
                    None => break,
                },
            };
            self.slot.lock().head_position = page.head_position;
            if let Some(oldest) = page.events.first() {
                // The oldest event not processed yet, until this page is committed.
                let behind_ms = now_ms().saturating_sub(oldest.recorded_ms).max(0);
                lag_seconds.set(behind_ms as f64 / 1000.0);
            }
            let flow = if page.events.is_empty() {
                read_position = read_position.max(page.next_position);
                let due = now_ms().saturating_sub(last_commit_ms)
                    >= self.config.skip_checkpoint_interval_ms as i64;
                if read_position > checkpoint.position && due {
                    let next = Checkpoint {
                        position: read_position,
                        events_processed: checkpoint.events_processed,
                        updated_ms: now_ms(),
                        last_event: checkpoint.last_event.clone(),
                    };
                    match self.commit(Vec::new(), next.clone(), None).await {
                        (CommitOutcome::Done, _) => {
                            checkpoint = next;
                            last_commit_ms = now_ms();
                        }
                        (CommitOutcome::Restart(stored), _) => {
                            checkpoint = stored;
                            read_position = checkpoint.position;
                        }
                        (CommitOutcome::Exit, _) => break,
                    }
                }
                self.slot.set_positions(checkpoint.clone(), read_position);
                Flow::Continue
            } else {
                match self
                    .process(page, &mut checkpoint, &mut read_position, &mut prefetched)
                    .await
                {
                    Some(flow) => {
                        last_commit_ms = now_ms();
                        flow
                    }
                    None => break,
                }
            };
            if let Flow::Exit = flow {
                break;
            }
            let head = self.slot.lock().head_position;
            lag_events.set(lag(head, read_position) as f64);
            let live = read_position > head;
            if live {
                lag_seconds.set(0.0);
            }
            self.slot.lock().live = live;
            if live && prefetched.is_none() {
                let wait = Duration::from_millis(self.config.live_wait_ms);
                let events = self.events.clone();
                let after = read_position - 1;
                tokio::select! {
                    _ = self.stop.requested() => break,
                    waited = events.wait_for_position(after, wait) => {
                        if let Err(error) = waited {
                            // A closed or failing store: back off like a failed read.
                            self.note_failure("wait for events", &error, 1).await;
                        }
                    }
                }
            }
        }
        tracing::debug!(projection = %self.name(), "projection runner stopped");
    }

    /// Reads one page from `position`, retrying; `None` when stopped.
    async fn read(&mut self, position: u64) -> Option<FeedPage> {
        let events = self.events.clone();
        let count = self.config.batch_events_max;
        let filter = self.filter.clone();
        let feed = match &self.feed {
            Feed::All => None,
            Feed::Category(c) => Some(c.clone()),
        };
        self.retry("read events", move || {
            read_page(
                events.clone(),
                feed.clone(),
                position,
                count,
                filter.clone(),
            )
        })
        .await
    }

    /// Applies one non-empty page: returns `None` when stopped or the projection is gone.
    async fn process(
        &mut self,
        page: FeedPage,
        checkpoint: &mut Checkpoint,
        read_position: &mut u64,
        prefetched: &mut Option<FeedPage>,
    ) -> Option<Flow> {
        let decoded = decode(&page.events, self.parse_metadata);
        let views: Vec<EventView<'_>> = decoded
            .ok
            .iter()
            .zip(&page.events)
            .map(|((data, metadata), event)| view(event, data, metadata.as_ref()))
            .collect();
        let keys = keys_for_batch(self.projection.as_ref(), &views);
        let docs = if keys.is_empty() {
            Vec::new()
        } else {
            let (store, name) = (self.store.clone(), self.name().clone());
            let keys = &keys;
            self.retry("load documents", || store.get_many(&name, keys))
                .await?
        };
        let mut plan = plan_batch(self.projection.as_ref(), &views, keys.into_iter().zip(docs));
        if plan.error.is_none() {
            plan.error = decoded.error;
        }
        drop(views);
        // Every event before the failing one is handled (read, or skipped by the filter), so
        // the checkpoint moves right up to it; without an error, past the whole page.
        let position = match &plan.error {
            Some(error) => error.position,
            None => page.next_position,
        };
        // The last event read before the new position: the store must still hold it there
        // when a runner resumes from this checkpoint.
        let last_event = page
            .events
            .iter()
            .rev()
            .find(|event| event.position < position)
            .map(|event| EventMark {
                position: event.position,
                id: event.id.to_string(),
            })
            .or_else(|| checkpoint.last_event.clone());
        let next = Checkpoint {
            position,
            events_processed: checkpoint.events_processed + plan.applied,
            updated_ms: now_ms(),
            last_event,
        };
        // Reading the next page does not depend on this commit, so it overlaps with it.
        let prefetch_from = (plan.error.is_none() && !page.is_end).then_some(position);
        let applied = plan.applied;
        if position > checkpoint.position || !plan.writes.is_empty() {
            let (outcome, page) = self.commit(plan.writes, next.clone(), prefetch_from).await;
            match outcome {
                CommitOutcome::Done => {
                    *checkpoint = next;
                    *read_position = position;
                    *prefetched = page;
                }
                CommitOutcome::Restart(stored) => {
                    *checkpoint = stored;
                    *read_position = checkpoint.position;
                    self.slot.set_positions(checkpoint.clone(), *read_position);
                    return Some(Flow::Continue);
                }
                CommitOutcome::Exit => return None,
            }
        }
        if applied > 0 {
            metrics::counter!("proteus_projection_events_total", "projection" => self.name().to_string())
                .increment(applied);
        }
        self.slot.set_positions(checkpoint.clone(), *read_position);
        let Some(error) = plan.error else {
            return Some(Flow::Continue);
        };
        self.fail(error).await?;
        Some(Flow::Exit)
    }

    /// Whether the store holds the checkpoint's last event at its position (the store this
    /// checkpoint was counted in); `None` when stopped meanwhile.
    async fn check_mark(&mut self, mark: &EventMark) -> Option<Result<(), ProcessingError>> {
        let events = self.events.clone();
        let position = mark.position;
        let page = self
            .retry("check the checkpoint", move || {
                let events = events.clone();
                async move {
                    events
                        .read_all(position, Direction::Forward, 1, &ReadFilter::default())
                        .await
                }
            })
            .await?;
        let found = page.events.first().filter(|e| e.position == position);
        if found.is_some_and(|event| event.id == mark.id) {
            return Some(Ok(()));
        }
        let held = match found {
            Some(event) => format!("event {} of stream '{}'", event.id, event.stream),
            None => "no event".to_owned(),
        };
        Some(Err(ProcessingError {
            position,
            stream: found.map(|e| e.stream.to_string()).unwrap_or_default(),
            version: found.map_or(0, |e| e.version),
            event_type: found.map(|e| e.event_type.to_string()).unwrap_or_default(),
            reason: format!(
                "its checkpoint follows event {} at position {position}, but this event store holds {held} there: the event store was replaced (a copy to NATS numbers positions anew) or is not the one the projection was built from (check --event-store-schema or --event-store-prefix); rebuild it on this store (proteus projection rebuild {})",
                mark.id,
                self.name()
            ),
        }))
    }

    /// Saves the projection as failed at `error` and stops; `None` when stopped meanwhile.
    async fn fail(&mut self, error: ProcessingError) -> Option<()> {
        tracing::warn!(projection = %self.name(), %error, "projection failed");
        let state = RunState::Failed { error };
        let (store, name) = (self.store.clone(), self.name().clone());
        let updated_ms = now_ms();
        // Not abandoned in flight: a save landing after a control operation's own change
        // would overwrite it.
        let mut attempts = 0;
        while let Err(error) = store.set_state(&name, &state, updated_ms).await {
            attempts += 1;
            if !self.note_failure("save state", &error, attempts).await {
                return None;
            }
        }
        if attempts > 0 {
            self.slot.lock().retrying = None;
        }
        if let Some(record) = self.slot.lock().record.as_mut() {
            record.state = state;
            record.updated_ms = updated_ms;
        }
        Some(())
    }

    /// Commits, retrying until done (a commit is never abandoned half-way: only between
    /// attempts does a stop request end it). With `prefetch_from`, reads the next page at the
    /// same time.
    async fn commit(
        &mut self,
        writes: Vec<proteus_projections::Write>,
        checkpoint: Checkpoint,
        prefetch_from: Option<u64>,
    ) -> (CommitOutcome, Option<FeedPage>) {
        let keys = match &self.cache {
            Some(_) => crate::cache::keys_of(self.name(), writes.iter().map(Write::key)),
            None => Vec::new(),
        };
        let result = self.commit_once(writes, checkpoint, prefetch_from).await;
        // Whatever the outcome: an attempt that failed ambiguously (the answer lost after the
        // store committed) may have written too, and a needless invalidation is harmless.
        self.invalidate_cached(&keys).await;
        result
    }

    async fn commit_once(
        &mut self,
        writes: Vec<proteus_projections::Write>,
        checkpoint: Checkpoint,
        prefetch_from: Option<u64>,
    ) -> (CommitOutcome, Option<FeedPage>) {
        let (store, name) = (self.store.clone(), self.name().clone());
        let prefetch = prefetch_from.map(|position| {
            let feed = match &self.feed {
                Feed::All => None,
                Feed::Category(c) => Some(c.clone()),
            };
            read_page(
                self.events.clone(),
                feed,
                position,
                self.config.batch_events_max,
                self.filter.clone(),
            )
        });
        let first = store.commit(&name, writes.clone(), checkpoint.clone());
        let (mut result, page) = match prefetch {
            Some(read) => {
                let (result, page) = tokio::join!(first, read);
                (result, page.ok())
            }
            None => (first.await, None),
        };
        let mut attempts = 0;
        loop {
            match result {
                Ok(()) => {
                    if attempts > 0 {
                        self.slot.lock().retrying = None;
                    }
                    return (CommitOutcome::Done, page);
                }
                Err(StoreError::NotFound { .. }) => return (CommitOutcome::Exit, None),
                Err(StoreError::CheckpointBehind { .. }) => {
                    // Someone committed further (it cannot happen while control operations
                    // are serialised with the runner, but never move a checkpoint back).
                    let loaded = self
                        .retry("load checkpoint", || store.checkpoint(&name))
                        .await;
                    return match loaded {
                        Some(stored) => (CommitOutcome::Restart(stored.unwrap_or_default()), None),
                        None => (CommitOutcome::Exit, None),
                    };
                }
                Err(error) => {
                    attempts += 1;
                    if !self.note_failure("commit", &error, attempts).await {
                        return (CommitOutcome::Exit, None);
                    }
                }
            }
            result = store
                .commit(&name, writes.clone(), checkpoint.clone())
                .await;
        }
    }

    /// Drops the committed documents from every instance's cache, retrying until it is done:
    /// a reader must not be served a document older than a commit that succeeded. If a stop
    /// ends the retries, this instance's whole L1 is cleared (other instances then rely on
    /// their L1 lifetime, see `proteus_cache::tiered`).
    async fn invalidate_cached(&mut self, keys: &[String]) {
        let Some(cache) = self.cache.clone() else {
            return;
        };
        if keys.is_empty() {
            return;
        }
        let done = self
            .retry("invalidate cached documents", || cache.invalidate(keys))
            .await;
        if done.is_none() {
            cache.clear_l1();
        }
    }

    /// Runs `operation` until it succeeds, backing off between failures; `None` when a stop
    /// is requested (the operation in flight is dropped, so only use it for operations that
    /// are harmless to abandon: reads, and writes that change nothing when abandoned).
    async fn retry<T, E: Display + Sync, F, Fut>(
        &mut self,
        what: &str,
        mut operation: F,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempts = 0;
        loop {
            let result = tokio::select! {
                biased;
                _ = self.stop.requested() => return None,
                result = operation() => result,
            };
            match result {
                Ok(value) => {
                    if attempts > 0 {
                        self.slot.lock().retrying = None;
                    }
                    return Some(value);
                }
                Err(error) => {
                    attempts += 1;
                    if !self.note_failure(what, &error, attempts).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Shows a failure in the status and waits the backoff; false when stopped meanwhile.
    async fn note_failure(
        &mut self,
        what: &str,
        error: &(dyn Display + Sync),
        attempts: u32,
    ) -> bool {
        let delay = self.config.backoff(attempts);
        tracing::warn!(projection = %self.name(), operation = what, attempts, %error, "projection storage error; retrying");
        {
            let mut shared = self.slot.lock();
            let since_ms = match &shared.retrying {
                Some(r) if r.operation == what && attempts > 1 => r.since_ms,
                _ => now_ms(),
            };
            shared.retrying = Some(Retrying {
                operation: what.to_owned(),
                error: error.to_string(),
                attempts,
                since_ms,
                retry_in_ms: delay.as_millis() as u64,
            });
        }
        tokio::select! {
            _ = self.stop.requested() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

enum CommitOutcome {
    Done,
    /// The stored checkpoint is ahead: continue from it.
    Restart(Checkpoint),
    /// Stopped, or the projection is gone.
    Exit,
}

async fn read_page(
    events: Arc<dyn EventStore>,
    feed: Option<Category>,
    position: u64,
    count: usize,
    filter: ReadFilter,
) -> Result<FeedPage, proteus_eventstore::EventStoreError> {
    // Positions start at 1; reading from 0 reads the same.
    let from = position.max(1);
    match feed {
        None => {
            events
                .read_all(from, Direction::Forward, count, &filter)
                .await
        }
        Some(category) => events.read_category(&category, from, count, &filter).await,
    }
}

/// The parsed data and metadata of a page's events, up to the first that does not parse.
struct Decoded {
    ok: Vec<(Value, Option<Value>)>,
    error: Option<ProcessingError>,
}

fn decode(events: &[RecordedEvent], parse_metadata: bool) -> Decoded {
    let mut ok = Vec::with_capacity(events.len());
    for event in events {
        let data = match serde_json::from_slice::<Value>(&event.data) {
            Ok(data) => data,
            Err(e) => {
                return Decoded {
                    ok,
                    error: Some(stored_error(event, "data", e)),
                };
            }
        };
        let metadata = match (&event.metadata, parse_metadata) {
            (Some(bytes), true) => match serde_json::from_slice::<Value>(bytes) {
                Ok(metadata) => Some(metadata),
                Err(e) => {
                    return Decoded {
                        ok,
                        error: Some(stored_error(event, "metadata", e)),
                    };
                }
            },
            _ => None,
        };
        ok.push((data, metadata));
    }
    Decoded { ok, error: None }
}

fn stored_error(event: &RecordedEvent, what: &str, error: serde_json::Error) -> ProcessingError {
    ProcessingError {
        position: event.position,
        stream: event.stream.to_string(),
        version: event.version,
        event_type: event.event_type.to_string(),
        reason: format!(
            "its stored {what} is not valid JSON ({error}); the event store is damaged there: restore it from a backup"
        ),
    }
}

fn view<'a>(
    event: &'a RecordedEvent,
    data: &'a Value,
    metadata: Option<&'a Value>,
) -> EventView<'a> {
    let stream = event.stream.as_str();
    EventView {
        stream,
        category: stream.split_once('-').map_or(stream, |(c, _)| c),
        version: event.version,
        position: event.position,
        event_type: &event.event_type,
        data,
        metadata,
        recorded_ms: event.recorded_ms,
    }
}
