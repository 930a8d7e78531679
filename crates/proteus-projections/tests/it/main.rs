//! Integration tests of the projections domain.

mod batching;
mod definitions;
mod projector;
mod query;
mod schemas;
mod support;
