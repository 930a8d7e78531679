//! The port through which streams are written and read.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::EventStoreError;
use crate::event::{
    Aggregate, AppendOutcome, DeleteOutcome, Direction, ExpectedVersion, FeedPage, ProposedEvent,
    ReadFilter, Snapshot, StreamInfo, StreamPage,
};
use crate::limits::ValidatedAppend;
use crate::name::{Category, StreamName};

/// Durable storage of event streams, with EventStoreDB's semantics. Implementations:
/// `proteus-eventstore-embedded` (redb); the conformance suite in `conformance` (feature
/// `conformance`) states every promise.
///
/// - **Appends are atomic and durable.** All events of one append are written or none is, even
///   across a crash, and an append returns only once its events survive power loss.
/// - **Optimistic concurrency.** Every write carries an [`ExpectedVersion`] checked atomically
///   with it.
/// - **Idempotent by event id.** Appending again events whose ids are already the stream's at
///   the same consecutive versions answers the original outcome with `duplicate: true`,
///   whatever the expected version; an append that is only partly such a retry is refused
///   with [`EventStoreError::IdempotencyConflict`].
/// - **Positions.** Every event gets a global position in the `$all` feed, strictly increasing
///   in commit order, from 1, possibly with gaps. A reader never sees position N+1 before
///   every event below it is committed, so a catch-up reader that switches to live waiting
///   misses nothing.
/// - **Tombstones.** A deleted stream is gone for good: appends, reads and snapshots of it fail
///   with [`EventStoreError::StreamDeleted`]. Its events stay in the `$all` feed and in
///   category reads, since those are history other readers may already have consumed.
/// - **Inclusive starts.** Every read starts *at* the version or position it is given and its
///   page says where the next one starts.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends `events` (1 to [`crate::limits::EVENTS_PER_APPEND_MAX`]) to `stream`, creating
    /// it, if `expected` matches the stream's last version. Checks them first
    /// ([`ValidatedAppend::new`]).
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        events: Vec<ProposedEvent>,
    ) -> Result<AppendOutcome, EventStoreError> {
        self.append_validated(stream, expected, ValidatedAppend::new(events)?)
            .await
    }

    /// [`EventStore::append`] of events checked already: what adapters implement.
    async fn append_validated(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        append: ValidatedAppend,
    ) -> Result<AppendOutcome, EventStoreError>;

    /// Deletes `stream` for good (a tombstone) if `expected` matches. Deleting a stream that
    /// never existed (with `Any` or `NoStream`) reserves its name.
    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<DeleteOutcome, EventStoreError>;

    /// Up to `max_count` (1 to [`crate::limits::READ_COUNT_MAX`]) events of `stream` from
    /// version `from_version` (inclusive) in `direction`; backward from `u64::MAX` starts at
    /// the last event. [`EventStoreError::StreamNotFound`] if the stream has no event.
    async fn read_stream(
        &self,
        stream: &StreamName,
        from_version: u64,
        direction: Direction,
        max_count: usize,
    ) -> Result<StreamPage, EventStoreError>;

    /// Up to `max_count` events of every stream of `category`, forward in `$all` order from
    /// `from_position` (inclusive), that pass `filter`. An unknown category reads empty.
    async fn read_category(
        &self,
        category: &Category,
        from_position: u64,
        max_count: usize,
        filter: &ReadFilter,
    ) -> Result<FeedPage, EventStoreError>;

    /// Up to `max_count` events of the `$all` feed from `from_position` (inclusive) in
    /// `direction` that pass `filter`; backward from `u64::MAX` starts at the newest event.
    async fn read_all(
        &self,
        from_position: u64,
        direction: Direction,
        max_count: usize,
        filter: &ReadFilter,
    ) -> Result<FeedPage, EventStoreError>;

    /// What is known about `stream`; [`EventStoreError::StreamNotFound`] if it never existed.
    /// A deleted stream answers with `deleted: true`.
    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo, EventStoreError>;

    /// Stores the state of `stream` folded up to `version`, replacing the stored snapshot.
    /// The stream must have that version ([`EventStoreError::SnapshotAheadOfStream`]). Only the
    /// newest snapshot is kept: one at the stored version replaces it (the fold or its type
    /// may have changed), an older one is refused with [`EventStoreError::SnapshotOutdated`].
    async fn put_snapshot(
        &self,
        stream: &StreamName,
        version: u64,
        snapshot_type: &str,
        data: Bytes,
    ) -> Result<(), EventStoreError>;

    /// The latest snapshot of `stream`; `None` when none was stored or the stream does not
    /// exist. [`EventStoreError::StreamDeleted`] for a deleted stream.
    async fn get_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, EventStoreError>;

    /// Waits until an event with a position above `after` is committed, or `timeout` (at most
    /// [`crate::limits::WAIT_MS_MAX`]) passes. Returns whether there is one.
    async fn wait_for_position(
        &self,
        after: u64,
        timeout: Duration,
    ) -> Result<bool, EventStoreError>;

    /// Stops taking writes, finishes those already queued, and releases the storage. Calls
    /// made after it fail with [`EventStoreError::Unavailable`].
    async fn close(&self) -> Result<(), EventStoreError>;

    /// What loading an aggregate needs: the latest snapshot and up to `max_count` events after
    /// it. Events never change once written, so reading the snapshot and then the events is
    /// consistent without one transaction.
    async fn read_aggregate(
        &self,
        stream: &StreamName,
        max_count: usize,
    ) -> Result<Aggregate, EventStoreError> {
        crate::limits::validate_read_count(max_count)?;
        let snapshot = self.get_snapshot(stream).await?;
        let from_version = snapshot.as_ref().map_or(0, |s| s.version + 1);
        let page = self
            .read_stream(stream, from_version, Direction::Forward, max_count)
            .await?;
        Ok(Aggregate::from_page(stream, snapshot, page))
    }
}
