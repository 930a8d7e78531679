//! The event store on NATS JetStream: the `EventStore` port of `proteus-eventstore` kept in
//! two JetStream streams, with the port's promises checked by the server rather than by a
//! lock of ours, so any number of Proteus instances can share one store.
//!
//! ```text
//! stream   <stream_prefix>_EVENTS     subjects <subject_prefix>.s.>        (deny delete/purge)
//!          <stream_prefix>_SNAPSHOTS  subjects <subject_prefix>.snap.>     (1 message per subject)
//! subject  <subject_prefix>.s.<token(category)>.<token(stream)>   one per event stream
//!          <subject_prefix>.snap.<token(stream)>                  its latest snapshot
//! message  one per append: headers Proteus-Kind: events, Proteus-First-Version, Proteus-Count,
//!          Nats-Expected-Last-Subject-Sequence; payload the events (module `codec`)
//!          one per deletion: Proteus-Kind: tombstone, Proteus-Last-Version/-Position
//! position (stream sequence - 1) * 1000 + index in the message + 1
//! ```
//!
//! A token keeps `[A-Za-z0-9_-]` and writes every other byte as `~XX`, so names map one to one
//! to subject tokens and a category read is the subject filter `<prefix>.s.<category>.*`.
//!
//! # Atomic appends without batch publishing
//!
//! NATS 2.9 has no atomic multi-message publish, so an append is ONE message holding all its
//! events: the server stores it whole or not at all, and a reader sees all of it or none.
//! The price: an append (and a snapshot) must fit the server's `max_payload` (1 MB by default,
//! at most 64 MB). Appends the port allows but the server cannot take are refused before
//! anything is sent with `LimitExceeded { limit: "nats_max_payload" }`, saying to raise
//! `max_payload` (16 MB takes every append of at most `APPEND_BYTES_MAX`).
//!
//! # Positions
//!
//! The event at index `i` of the message at stream sequence `s` is at position
//! `(s - 1) * 1000 + i + 1` ([`POSITIONS_PER_MESSAGE`] = `EVENTS_PER_APPEND_MAX`): positions
//! start at 1, never collide, and follow stream sequences, which the server hands out in the
//! order it stores messages. A message is readable only once stored, and once sequence `s`
//! is stored every lower one is, so a reader never sees position N+1 before an event below it
//! can still appear. Gaps (the port allows them) are the unused slots of each message and the
//! tombstones. The head position is the last event of the newest events message (tombstones
//! skipped), read from the stream's last sequence and cached per sequence.
//!
//! # Expected versions
//!
//! A stream's version is read from its subject's newest message (`last_by_subj`, through the
//! stream leader's message-get API, so never a lagging replica). The append then carries
//! `Nats-Expected-Last-Subject-Sequence` = that message's sequence (0 for a new stream): if
//! any other writer, in this process or another, stored anything on the subject meanwhile,
//! the server refuses the message, and the adapter reads the end again and decides again
//! (an `Exact` expectation then fails with the actual version; `Any` is sent again, at most
//! `append_conflict_retries_max` times). So versions are gapless and each is taken once.
//! Writes to one stream are also serialised within a process, so one instance does not race
//! itself.
//!
//! # Idempotency by event id
//!
//! The domain's rule (`check_idempotency`) is applied to the stream's whole history, not a
//! deduplication window: before publishing, the adapter knows where each id of the stream
//! is. That index is built from the stream's own messages (read once through a consumer of
//! its subject) and cached per stream up to the sequence it covers, so later appends read
//! only messages they have not seen (none when this instance wrote last). The decision is
//! taken against the state whose sequence the publish then asserts, so it cannot be stale. A
//! retry of a write whose acknowledgement was lost (the connection dropped) is recognised as
//! a duplicate, and `Nats-Expected-Last-Subject-Sequence` makes sure that a publish buffered
//! during an outage and a retry can never both be stored.
//!
//! # Tombstones, snapshots and waits
//!
//! Deleting a stream publishes a tombstone on its subject under the same expected-sequence
//! check; once it is the subject's newest message, writes and reads of the stream fail with
//! `StreamDeleted`, while its events stay in `$all` and category reads (which skip
//! tombstones). Snapshots are messages on the snapshot subject of a second stream that keeps
//! one message per subject; a newer snapshot is published with the expected sequence of the
//! one it replaces, so an older one can never overwrite it. `wait_for_position` subscribes
//! (core NATS) to the event subjects and re-reads the head on each message, with a fallback
//! poll every `wait_poll_interval_ms`.
//!
//! # Failures
//!
//! Every request is bounded by `request_timeout_ms`; a server that cannot be reached or does
//! not answer in time gives [`EventStoreError::Unavailable`] (retriable) naming the URL
//! (passwords redacted) and how to start NATS. `docs/backends/nats.md` has the details,
//! what is not supported and why, and the settings.
//!
//! [`EventStoreError::Unavailable`]: proteus_eventstore::EventStoreError::Unavailable

mod codec;
mod config;
mod error;
mod store;

pub use config::{
    ID_CACHE_EVENTS_MAX, NatsEventStoreConfig, STREAM_PREFIX_BYTES_MAX, SUBJECT_PREFIX_BYTES_MAX,
    TIMEOUT_MS_MIN, redact,
};
pub use error::START_HINT;
pub use store::{HEADER_BYTES_RESERVED, NatsEventStore, POSITIONS_PER_MESSAGE, position_of};
