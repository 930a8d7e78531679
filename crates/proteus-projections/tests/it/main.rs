//! Integration tests of the projections domain, and the ReadModelStore conformance suite on the
//! in-memory store.

mod batching;
mod definitions;
mod memory_store;
mod projector;
mod query;
mod schemas;
mod support;
