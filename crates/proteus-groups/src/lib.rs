//! Consumer groups, the domain.
//!
//! A group reads one topic at its own pace. This crate owns what a group *is* and how it
//! behaves, independent of any runtime or storage:
//!
//! - [`config`]: a group's settings (start position, ack deadline, retry policy, unacked-event
//!   bound, batching, optional webhook push) and their limits;
//! - [`assign`]: the sticky assignor that gives each partition exactly one member and moves as
//!   few partitions as possible when members come and go;
//! - [`backoff`]: exponential backoff with full jitter;
//! - [`state`]: the state machine of one group — members and sessions, generations and fencing,
//!   deliveries, acks, nacks, deadlines, redeliveries and dead-lettering — driven by explicit
//!   `now_ms` arguments so tests control time;
//! - [`store`]: the port through which committed positions are made durable;
//! - [`dead_letter`]: how a dead letter is written to and read back from its topic;
//! - [`memory`]: [`MemoryGroupStore`], the store in process memory, which keeps every promise of
//!   the port except surviving the process;
//! - `conformance` and `crash` (feature `conformance`): the suite every adapter runs, and the
//!   check the adapters whose tests can kill their server run.
//!
//! Like `proteus-log`, it does no I/O and has no async runtime in its API. The runtime lives in
//! `proteus-groups-service`; durable stores in adapter crates (`proteus-groups-embedded`,
//! `proteus-groups-postgres`).

pub mod assign;
pub mod backoff;
pub mod config;
pub mod dead_letter;
pub mod error;
pub mod memory;
pub mod name;
pub mod ranges;
pub mod state;
pub mod store;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "conformance")]
pub mod crash;

pub use config::{GroupConfig, PushConfig, RetryPolicy, StartPosition};
pub use error::GroupError;
pub use memory::MemoryGroupStore;
pub use name::{GroupName, MemberId};
pub use state::GroupState;
pub use store::{GroupRecord, GroupStore, PartitionProgress, StoreError};
