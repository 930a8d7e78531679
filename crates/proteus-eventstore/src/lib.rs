//! Event sourcing, the domain.
//!
//! An event-sourced application stores what happened as events appended to *streams* (one per
//! aggregate, such as `order-123`) and rebuilds state by folding them. This crate owns what
//! that means, independent of any runtime or storage, with EventStoreDB/KurrentDB semantics:
//!
//! - [`name`]: stream names and their categories (`order-123` is in `order`), event ids and
//!   types;
//! - [`event`]: expected versions (optimistic concurrency), proposed and recorded events, append
//!   outcomes, read pages, filters, snapshots and aggregates;
//! - [`limits`]: the bound of every request and the checks every adapter runs before storage,
//!   including the idempotency rule;
//! - [`store`]: the [`EventStore`] port;
//! - [`memory`]: [`MemoryEventStore`], the store in process memory, which keeps every promise
//!   of the port except surviving the process;
//! - `conformance` (feature `conformance`): the suite every adapter runs;
//! - `crash` (feature `conformance`): appends through crashes of the backend server, for the
//!   adapters whose tests can kill theirs;
//! - `import_conformance` (feature `conformance`): the suite of the stores that import events
//!   with their positions (`proteus migrate` targets).
//!
//! Like `proteus-log`, it does no I/O and has no async runtime in its API. Durable stores live
//! in adapter crates (`proteus-eventstore-embedded`, `proteus-eventstore-postgres`).

pub mod error;
pub mod event;
pub mod limits;
pub mod memory;
pub mod name;
pub mod store;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "conformance")]
pub mod crash;
#[cfg(feature = "conformance")]
pub mod import_conformance;

pub use error::{ErrorKind, EventStoreError};
pub use event::{
    Aggregate, AppendOutcome, ByteString, DeleteOutcome, Direction, ExpectedVersion, FeedPage,
    ProposedEvent, ReadFilter, RecordedEvent, Snapshot, StreamInfo, StreamPage,
};
pub use limits::{
    APPEND_BYTES_MAX, EVENT_DATA_BYTES_MAX, EVENT_METADATA_BYTES_MAX, EVENTS_PER_APPEND_MAX,
    FILTER_EVENT_TYPES_MAX, IMPORT_EVENTS_MAX, READ_COUNT_MAX, READ_SCAN_EVENTS_MAX,
    SNAPSHOT_BYTES_MAX, ValidatedAppend, WAIT_MS_MAX,
};
pub use memory::MemoryEventStore;
pub use name::{Category, InvalidName, StreamName};
pub use store::EventStore;
