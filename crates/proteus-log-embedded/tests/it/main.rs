//! Integration tests of the embedded log: the shared conformance suite, a property test against
//! an in-memory model, and recovery from torn and corrupt files.

mod conformance;
mod corruption;
mod model;
mod support;
