//! Integration tests of the embedded log: the shared conformance suite, a property test against
//! an in-memory model, recovery from torn and corrupt files, and partition ends read from the
//! files alone.

mod conformance;
mod corruption;
mod model;
mod on_disk;
mod support;
