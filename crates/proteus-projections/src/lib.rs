//! Projections, the read side of CQRS, as a domain.
//!
//! A projection consumes a category or `$all` and maintains a queryable read model: documents
//! by key, with a checkpoint committed atomically with them. This crate owns:
//!
//! - [`event`]: the view of an event a projection consumes (the event store maps onto it);
//! - [`definition`]: declarative definitions in JSON (`state`, `aggregate`, `list`), parsed
//!   and validated with errors naming JSON paths, and checked against event schemas;
//! - [`projector`]: the [`Projection`] port (declarative now, WASM later), the deterministic
//!   [`Projector`] and the batch planner;
//! - [`query`] and [`value`]: filters, sorts, pagination and the one order of JSON values every
//!   store uses;
//! - [`store`]: the [`ReadModelStore`] port, its records and limits, and (feature
//!   `conformance`) the suite every adapter runs;
//! - [`memory`]: [`MemoryReadModelStore`], the store in process memory, which keeps every promise
//!   of the port except surviving the process.
//!
//! It does no I/O and has no async runtime in its API; durable stores live in adapter crates
//! (`proteus-projections-embedded`, `proteus-projections-postgres`).

pub mod definition;
pub mod error;
pub mod event;
pub mod memory;
pub mod name;
pub mod projector;
pub mod query;
pub mod store;
pub mod value;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use definition::{ProjectionDefinition, validate};
pub use error::{DefinitionError, DefinitionErrors, ProcessingError};
pub use event::EventView;
pub use memory::MemoryReadModelStore;
pub use name::{InvalidProjectionName, ProjectionName};
pub use projector::{
    BatchPlan, DocAccess, DocBatch, Projection, Projector, keys_for_batch, plan_batch,
};
pub use query::{Condition, Op, Order, Page, Query, QueryError, Sort, SortBy};
pub use store::{
    Checkpoint, EventMark, ListItem, ProjectionRecord, ProjectionStatus, ReadModelStore, RunState,
    StoreError, Write, append_to_list_document, list_document, list_item_bytes_max,
};
