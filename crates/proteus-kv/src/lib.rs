//! The key-value metadata port: what runtimes keep beside the log that is not an event (for
//! example an experiment's per-unit state and checkpoint).
//!
//! - **Namespaces** separate owners (`experiments.checkout-button`); every call names one.
//! - **Commits are atomic, checked and durable**: a [`KvCommit`] applies all its writes or none,
//!   only when every [`KvCheck`] holds (compare-and-set on whole values, so two writers of the
//!   same namespace cannot both win), and returns only once durable (fsync, or the database's
//!   COMMIT).
//! - **Reads are consistent**: [`KvStore::get_many`] reads its keys from one snapshot.
//! - **Scans are ordered and paged**: by key bytes, resumable after the last key seen.
//! - **Limits on everything**: keys, values, writes and bytes per commit, keys per read, entries
//!   per scan ([`check_commit`], [`check_keys`], [`check_scan`]); adapters refuse more with
//!   [`KvError::Invalid`], changing nothing.
//!
//! Adapters: [`MemoryKvStore`] here, `proteus-kv-embedded` (redb) and `proteus-kv-postgres`.
//! Each runs the whole conformance suite (feature `conformance`).

pub mod lease;
pub mod memory;
pub mod port;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use memory::MemoryKvStore;
pub use port::{
    COMMIT_BYTES_MAX, COMMIT_WRITES_MAX, GET_KEYS_MAX, KEY_BYTES_MAX, KvCheck, KvCommit, KvError,
    KvStore, KvWrite, NAMESPACE_BYTES_MAX, Namespace, SCAN_ENTRIES_MAX, VALUE_BYTES_MAX,
    check_commit, check_keys, check_scan, display_key,
};
