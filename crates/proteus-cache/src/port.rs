//! The port of a remote (L2) cache, shared by every Proteus instance.

use async_trait::async_trait;
use bytes::Bytes;

/// Most keys one call may name.
pub const KEYS_PER_CALL_MAX: usize = 1_000;
/// Longest key, in bytes of UTF-8 (before any adapter prefix).
pub const KEY_BYTES_MAX: usize = 1_024;
/// Largest value, in bytes.
pub const VALUE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Longest time to live, in milliseconds (30 days).
pub const TTL_MS_MAX: u64 = 30 * 24 * 60 * 60 * 1_000;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    #[error("{count} keys in one call; at most {max} are allowed, split the call")]
    TooManyKeys { count: usize, max: usize },
    #[error("an empty key was given; cache keys must be 1 to {max} bytes")]
    EmptyKey { max: usize },
    #[error("key of {bytes} bytes is too long; keys are at most {max} bytes")]
    KeyTooLong { bytes: usize, max: usize },
    #[error("the value of key {key:?} is {bytes} bytes; values are at most {max} bytes")]
    ValueTooLarge {
        key: String,
        bytes: usize,
        max: usize,
    },
    #[error("ttl_ms {ttl_ms} is out of range; it must be 1 to {max}")]
    TtlOutOfRange { ttl_ms: u64, max: u64 },
    #[error("the cache is unavailable: {0}")]
    Unavailable(String),
}

/// Checks the keys of one call against the limits.
pub fn check_keys<'a>(keys: impl ExactSizeIterator<Item = &'a str>) -> Result<(), CacheError> {
    if keys.len() > KEYS_PER_CALL_MAX {
        return Err(CacheError::TooManyKeys {
            count: keys.len(),
            max: KEYS_PER_CALL_MAX,
        });
    }
    for key in keys {
        check_key(key)?;
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), CacheError> {
    if key.is_empty() {
        return Err(CacheError::EmptyKey { max: KEY_BYTES_MAX });
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(CacheError::KeyTooLong {
            bytes: key.len(),
            max: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

/// Checks the entries and time to live of one `put_many` against the limits.
pub fn check_put(entries: &[(String, Bytes)], ttl_ms: u64) -> Result<(), CacheError> {
    if ttl_ms == 0 || ttl_ms > TTL_MS_MAX {
        return Err(CacheError::TtlOutOfRange {
            ttl_ms,
            max: TTL_MS_MAX,
        });
    }
    check_keys(entries.iter().map(|(key, _)| key.as_str()))?;
    for (key, value) in entries {
        if value.len() > VALUE_BYTES_MAX {
            return Err(CacheError::ValueTooLarge {
                key: key.clone(),
                bytes: value.len(),
                max: VALUE_BYTES_MAX,
            });
        }
    }
    Ok(())
}

/// A cache shared by every instance (the L2). Keys live in the adapter's namespace: two caches
/// opened with different namespaces never see each other's entries. A call refused by a limit
/// changes nothing.
#[async_trait]
pub trait RemoteCache: Send + Sync {
    /// The values of `keys`, in the same order; `None` for a key that is absent or expired.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, CacheError>;

    /// Stores every entry (replacing any value), each expiring `ttl_ms` after the call.
    async fn put_many(&self, entries: Vec<(String, Bytes)>, ttl_ms: u64) -> Result<(), CacheError>;

    /// Removes `keys`; absent keys are not an error.
    async fn delete_many(&self, keys: &[String]) -> Result<(), CacheError>;
}
