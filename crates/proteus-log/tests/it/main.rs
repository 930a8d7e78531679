//! The log port's in-memory adapter: the conformance suite every adapter runs, and what only
//! a memory log has (its bound, its handles).

mod memory;
