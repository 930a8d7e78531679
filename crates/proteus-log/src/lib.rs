//! The event log domain of Proteus.
//!
//! This crate owns what an event log *is*, independent of where it is stored:
//!
//! - [`topic`]: topic names and per-topic configuration, with their validation rules;
//! - [`event`]: CloudEvents 1.0 events as they are appended (JSON format, batch format and the
//!   HTTP binary-mode attributes), validated once at the edge;
//! - [`partitioner`]: the stable key hash that places an event in a partition;
//! - [`position`]: offsets, partitions and the multi-partition cursor used to resume a stream;
//! - [`port`]: the traits every storage adapter implements (admin, append, read, subscribe);
//! - [`import`]: copying events into a partition at the offsets they had in another log
//!   (`proteus migrate-topics`), for the adapters a migration writes to;
//! - [`error`]: the errors those traits return;
//! - [`memory`]: [`MemoryLog`](memory::MemoryLog), the ports in process memory (every promise
//!   but durability), for tests and runtimes without storage.
//!
//! It is deliberately free of I/O: no files, no sockets, no async runtime. Adapters
//! (`proteus-log-embedded`, `proteus-log-nats`) depend on it, never the reverse.

pub mod error;
pub mod event;
pub mod import;
pub mod memory;
pub mod name;
pub mod partitioner;
pub mod port;
pub mod position;
pub mod topic;

pub use error::LogError;
pub use event::{DedupKey, Event, EventError};
pub use port::{
    AppendReceipt, Log, PartitionDescription, PutTopicOutcome, ReadBatch, ReadFrom, ReadLimits,
    StoredEvent, TopicDescription,
};
pub use position::{Cursor, Offset, PartitionId};
pub use topic::{TopicConfig, TopicName};
