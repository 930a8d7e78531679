//! Caching for Proteus: the [`RemoteCache`] port (an L2 shared by every instance, such as
//! Redis), its in-memory adapter [`MemoryRemoteCache`], the port's conformance suite (feature
//! `conformance`), and [`TieredCache`], an in-process L1 in front of an optional L2 whose
//! invalidations travel through the log so every instance drops stale entries.

pub mod memory;
pub mod port;
pub mod tiered;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use memory::MemoryRemoteCache;
pub use port::{
    CacheError, KEY_BYTES_MAX, KEYS_PER_CALL_MAX, RemoteCache, TTL_MS_MAX, VALUE_BYTES_MAX,
    check_keys, check_put,
};
pub use tiered::{FillToken, INVALIDATION_TOPIC, TieredCache, TieredConfig};
