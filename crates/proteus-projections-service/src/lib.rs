//! The projection runtime: the read side of CQRS, over the [`EventStore`] and
//! [`ReadModelStore`] ports.
//!
//! [`ProjectionService`] keeps one *runner* task per running projection. A runner reads the
//! projection's source (a category or `$all`, with its `event_types` as a server-side filter)
//! from the checkpoint in batches of at most [`ProjectionServiceConfig::batch_events_max`]
//! events, loads the documents the batch touches, applies the batch with the projector
//! ([`proteus_projections::plan_batch`]) and commits the writes **and** the checkpoint in one
//! store transaction. So after any crash, the read model is exactly the fold of the events
//! before its checkpoint, and continuing from there gives what a rebuild from zero gives.
//! Once caught up, the runner waits for new events (`wait_for_position`) and goes on live.
//!
//! - An event the projection cannot process stops it: the batch is committed up to the event
//!   before, and the projection is saved `failed` with the error naming the event's position,
//!   stream and version. Nothing is skipped. `resume` retries that event (useful when the error
//!   came from something outside the events); a wrong definition is fixed by deleting the
//!   projection and creating it again, which rebuilds it from the first event.
//! - Storage errors (reads, loads, commits) are retried with exponential backoff up to
//!   [`ProjectionServiceConfig::retry_backoff_ms_max`] and shown in the status meanwhile.
//! - Control operations (`pause`, `resume`, `reset`, `delete`) and the runner are serialised
//!   per projection: an operation stops the runner and waits for it to finish its commit in
//!   flight, so no commit can land after a reset or a delete.
//!
//! - Shared mode ([`ProjectionService::open_shared`], see [`SharedMode`]): several instances
//!   over one shared read-model store run each projection on exactly one of them at a time
//!   (a runner lease in a [`proteus_kv::KvStore`]), follow each other's definitions, and
//!   serve reads, statuses and read-your-writes waits for every projection.
//!
//! Metrics (the `metrics` facade): `proteus_projection_events_total` (counter, events applied)
//! and `proteus_projection_lag_events` (gauge, positions between the runner and the head of
//! the event store), both labelled `projection`.

mod cache;
mod runner;
mod service;
mod shared;

use std::time::Duration;

use proteus_eventstore::{EventStoreError, WAIT_MS_MAX};
use proteus_projections::store::COMMIT_WRITES_MAX;
use proteus_projections::{
    Checkpoint, DefinitionErrors, InvalidProjectionName, ProjectionDefinition, ProjectionName,
    QueryError, RunState, StoreError,
};
use serde::{Deserialize, Serialize};

pub use service::ProjectionService;
pub use shared::{
    DEFINITIONS_REFRESH_MS_MAX, DEFINITIONS_REFRESH_MS_MIN, HANDOFF_NAMESPACE, RUNNERS_NAMESPACE,
    SharedMode,
};

/// The most events one batch may hold: a batch is one read (at most
/// [`proteus_eventstore::READ_COUNT_MAX`] events) and one commit (at most
/// [`COMMIT_WRITES_MAX`] writes, and an event writes at most one document).
pub const BATCH_EVENTS_MAX_LIMIT: usize = if proteus_eventstore::READ_COUNT_MAX < COMMIT_WRITES_MAX
{
    proteus_eventstore::READ_COUNT_MAX
} else {
    COMMIT_WRITES_MAX
};

/// Settings of the runtime. Every value is bounded; the defaults suit a small server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectionServiceConfig {
    /// Most events one batch reads, applies and commits (1 to [`BATCH_EVENTS_MAX_LIMIT`]).
    /// One commit is one fsync, so bigger batches catch up faster; they also hold more events
    /// and documents in memory. Default 2,000.
    pub batch_events_max: usize,
    /// How long a caught-up runner waits for a new event before it looks again, in
    /// milliseconds (1 to [`WAIT_MS_MAX`]). A new event wakes it at once; this only bounds
    /// how long a stop request or a missed wake-up can go unnoticed. Default 5,000.
    pub live_wait_ms: u64,
    /// First delay before retrying a failed read or commit, in milliseconds; it doubles with
    /// every failure. Default 50.
    pub retry_backoff_ms_min: u64,
    /// Longest delay between retries, in milliseconds. Default 30,000.
    pub retry_backoff_ms_max: u64,
    /// Shortest time between two commits that only move the checkpoint past events the
    /// projection does not read (no document changes), in milliseconds. They cost an fsync
    /// each and a lost one only means scanning those events again, so they are rate-limited.
    /// The in-memory read position (and so the lag) moves at once. Default 1,000.
    pub skip_checkpoint_interval_ms: u64,
}

impl Default for ProjectionServiceConfig {
    fn default() -> Self {
        ProjectionServiceConfig {
            batch_events_max: 2_000,
            live_wait_ms: 5_000,
            retry_backoff_ms_min: 50,
            retry_backoff_ms_max: 30_000,
            skip_checkpoint_interval_ms: 1_000,
        }
    }
}

impl ProjectionServiceConfig {
    /// Checks every bound; the error names the setting and its allowed range.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let invalid = |reason: String| Err(ServiceError::InvalidConfig { reason });
        if !(1..=BATCH_EVENTS_MAX_LIMIT).contains(&self.batch_events_max) {
            return invalid(format!(
                "batch_events_max is {}; it must be 1 to {BATCH_EVENTS_MAX_LIMIT}",
                self.batch_events_max
            ));
        }
        if !(1..=WAIT_MS_MAX).contains(&self.live_wait_ms) {
            return invalid(format!(
                "live_wait_ms is {}; it must be 1 to {WAIT_MS_MAX}",
                self.live_wait_ms
            ));
        }
        if self.retry_backoff_ms_min == 0 {
            return invalid("retry_backoff_ms_min is 0; it must be at least 1".into());
        }
        if self.retry_backoff_ms_max < self.retry_backoff_ms_min {
            return invalid(format!(
                "retry_backoff_ms_max ({}) is below retry_backoff_ms_min ({}); raise it",
                self.retry_backoff_ms_max, self.retry_backoff_ms_min
            ));
        }
        if self.retry_backoff_ms_max > 3_600_000 {
            return invalid(format!(
                "retry_backoff_ms_max is {}; the most is 3600000 (one hour)",
                self.retry_backoff_ms_max
            ));
        }
        if self.skip_checkpoint_interval_ms > 3_600_000 {
            return invalid(format!(
                "skip_checkpoint_interval_ms is {}; the most is 3600000 (one hour)",
                self.skip_checkpoint_interval_ms
            ));
        }
        Ok(())
    }

    /// The delay before retry number `attempt` (from 1): doubling from the minimum, capped.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(32);
        Duration::from_millis(
            self.retry_backoff_ms_min
                .saturating_mul(factor)
                .min(self.retry_backoff_ms_max),
        )
    }
}

/// A storage operation of the runner that is failing and being retried.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retrying {
    /// What failed: `read events`, `load documents`, `commit`, `load checkpoint` or `save state`.
    pub operation: String,
    /// The last error.
    pub error: String,
    /// Failures in a row.
    pub attempts: u32,
    /// When the first of them happened, in milliseconds since the Unix epoch.
    pub since_ms: i64,
    /// The delay before the next attempt, in milliseconds.
    pub retry_in_ms: u64,
}

/// What the runtime shows of one projection. As JSON:
///
/// ```text
/// { "name": "orders", "state": "running" | "paused" | "failed",
///   "error": {"position", "stream", "version", "event_type", "reason"},   // when failed
///   "checkpoint": {"position", "events_processed", "updated_ms"},
///   "read_position": 1043, "head_position": 1100, "lag": 58, "live": false,
///   "retrying": {"operation", "error", "attempts", "since_ms", "retry_in_ms"},  // or null
///   "definition": {...}, "created_ms": ..., "updated_ms": ...,
///   "runner": "instance-a" }   // shared mode only
/// ```
///
/// In shared mode, an instance that does not run the projection shows the checkpoint, state
/// and definition as stored, `read_position` = the checkpoint's position, no `retrying`, and
/// `live` when the checkpoint is past the head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProjectionStatus {
    pub name: ProjectionName,
    /// `state`, and `error` when failed: the event it stopped at (its `position` is where the
    /// checkpoint stands).
    #[serde(flatten)]
    pub state: RunState,
    /// The last committed checkpoint: `position` is the next position to read; every event
    /// before it is reflected in the documents.
    pub checkpoint: Checkpoint,
    /// Where the runner reads next. Ahead of `checkpoint.position` when it moved past events
    /// the projection does not read and has not saved that yet (see
    /// [`ProjectionServiceConfig::skip_checkpoint_interval_ms`]).
    pub read_position: u64,
    /// The last committed position of the event store (0 when it is empty).
    pub head_position: u64,
    /// Positions between `read_position` and the head: an upper bound of the events still to
    /// read (positions may have gaps, and events the projection does not read count too).
    pub lag: u64,
    /// How far behind in time, in milliseconds: the age of the oldest event at or after
    /// `read_position` (an upper bound of the age of the oldest event still to read, as for
    /// consumer groups' `lag_s`); 0 when caught up. Unlike `lag`, it means the same on every
    /// store (positions are sparse on NATS JetStream). Absent when the event store could not
    /// be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
    /// True when the runner's last read reached the head (it is waiting for new events).
    pub live: bool,
    /// A storage operation failing and being retried, if any.
    pub retrying: Option<Retrying>,
    pub definition: ProjectionDefinition,
    pub created_ms: i64,
    /// The later of the last state change and the last checkpoint commit.
    pub updated_ms: i64,
    /// Shared mode: the instance that holds the projection's runner lease (and so runs it),
    /// if any. Absent in single-instance mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<String>,
}

/// Positions from `read_position` (the next to read; 0 counts as 1) to `head` (the last
/// committed).
pub(crate) fn lag(head: u64, read_position: u64) -> u64 {
    (head + 1).saturating_sub(read_position.max(1))
}

/// How an error should be reported: the HTTP layer maps these to 400, 404, 409, 503 and 500.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong (400): fix it before sending it again.
    InvalidInput,
    /// No such projection (404).
    NotFound,
    /// It conflicts with what exists (409).
    Conflict,
    /// Cannot serve now (503): retry later.
    Unavailable,
    /// Storage failed (500).
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    InvalidName(#[from] InvalidProjectionName),

    /// Every error of the definition, each with its JSON pointer.
    #[error(transparent)]
    InvalidDefinition(#[from] DefinitionErrors),

    #[error(
        "projection '{name}' does not exist; create it first (list the projections to see their names)"
    )]
    NotFound { name: String },

    #[error(
        "projection '{name}' already exists with a different definition; to change it, delete it and create it again (its read model is rebuilt from the first event), or create the new definition under another name"
    )]
    Conflict { name: String },

    #[error(transparent)]
    InvalidQuery(QueryError),

    /// The query would read more documents than the store allows for one page.
    #[error("{0}")]
    QueryTooBroad(String),

    #[error("invalid projection service configuration: {reason}")]
    InvalidConfig { reason: String },

    #[error("the read-model store failed: {0}; retry later")]
    Store(StoreError),

    #[error("the event store failed: {0}")]
    EventStore(#[from] EventStoreError),

    #[error(
        "the projection service was closed (the server is shutting down); retry against a running server"
    )]
    Closed,

    /// Shared mode: the instances could not agree who runs a projection now (the lease store
    /// failed, or the running instance did not hand the projection over in time).
    #[error("projection coordination between instances failed: {reason}; retry later")]
    Coordination { reason: String },
}

impl ServiceError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ServiceError::InvalidName(_)
            | ServiceError::InvalidDefinition(_)
            | ServiceError::InvalidQuery(_)
            | ServiceError::QueryTooBroad(_)
            | ServiceError::InvalidConfig { .. } => ErrorKind::InvalidInput,
            ServiceError::NotFound { .. } => ErrorKind::NotFound,
            ServiceError::Conflict { .. } => ErrorKind::Conflict,
            ServiceError::Closed | ServiceError::Coordination { .. } => ErrorKind::Unavailable,
            ServiceError::EventStore(e) => match e.kind() {
                proteus_eventstore::ErrorKind::Unavailable => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            ServiceError::Store(_) => ErrorKind::Internal,
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound { projection } => ServiceError::NotFound {
                name: projection.to_string(),
            },
            StoreError::InvalidQuery(e) => ServiceError::InvalidQuery(e),
            e @ StoreError::QueryTooBroad { .. } => ServiceError::QueryTooBroad(e.to_string()),
            e => ServiceError::Store(e),
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bounds() {
        assert!(ProjectionServiceConfig::default().validate().is_ok());
        let bad = ProjectionServiceConfig {
            batch_events_max: 0,
            ..Default::default()
        };
        let error = bad.validate().unwrap_err().to_string();
        assert!(error.contains("batch_events_max is 0"), "{error}");
        let bad = ProjectionServiceConfig {
            batch_events_max: BATCH_EVENTS_MAX_LIMIT + 1,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let bad = ProjectionServiceConfig {
            live_wait_ms: WAIT_MS_MAX + 1,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let bad = ProjectionServiceConfig {
            retry_backoff_ms_min: 100,
            retry_backoff_ms_max: 10,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("raise it"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = ProjectionServiceConfig {
            retry_backoff_ms_min: 10,
            retry_backoff_ms_max: 100,
            ..Default::default()
        };
        let delays: Vec<u64> = (1..=6)
            .map(|a| config.backoff(a).as_millis() as u64)
            .collect();
        assert_eq!(delays, [10, 20, 40, 80, 100, 100]);
        assert_eq!(config.backoff(u32::MAX).as_millis(), 100);
    }

    #[test]
    fn lag_counts_positions_to_the_head() {
        assert_eq!(lag(0, 0), 0);
        assert_eq!(lag(10, 0), 10);
        assert_eq!(lag(10, 1), 10);
        assert_eq!(lag(10, 11), 0);
        assert_eq!(lag(10, 20), 0);
    }
}
