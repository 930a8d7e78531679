//! Consumer groups on NATS JetStream, for deployments whose only shared backend is NATS.
//!
//! Two JetStream key-value buckets, both created at open if missing:
//!
//! - `<bucket_prefix>_GROUPS`: one key per group (`<topic>.<group>`, each `.` of a name written
//!   `=`), whose value is the whole [`GroupRecord`](proteus_groups::GroupRecord) as JSON:
//!   settings, fencing token and every partition's progress. Every write reads the value and
//!   its revision, changes it, and writes it back only if the revision is still the last
//!   (`Nats-Expected-Last-Subject-Sequence`), re-reading when another writer came first, so a
//!   write's partitions change together or not at all and fencing is checked against the
//!   value the write replaces. [`NatsGroupStore`] implements the `GroupStore` port and passes
//!   its conformance suite.
//! - `<bucket_prefix>_LEASES`: the coordinator leases ([`proteus_kv::lease`]) that choose the
//!   one instance running each group. [`NatsLeaseStore`] implements the `KvStore` port for
//!   what leases use, reads and compare-and-set commits of one key, and refuses the rest with
//!   a clear error, because JetStream compares and sets one subject at a time (see its docs).
//!
//! What this does not do: keep groups as JetStream durable consumers. Proteus's groups
//! (partition ownership with generations, acks by position through any instance, resets,
//! replays, dead letters with reasons, delayed retries) behave the same on every backend; the
//! state behind them is what moves to NATS. `docs/backends/nats.md` explains the choice.

mod config;
mod error;
mod leases;
mod store;

pub use config::NatsGroupStoreConfig;
pub use leases::NatsLeaseStore;
pub use proteus_nats::{START_HINT, redact};
pub use store::NatsGroupStore;
