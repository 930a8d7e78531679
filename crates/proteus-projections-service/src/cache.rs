//! How projections' documents are kept in a [`TieredCache`].
//!
//! A document is cached under `proj:{projection}:{key}` as one tag byte (`1` present, `0`
//! absent: misses are cached too) followed by its JSON. Correctness rests on three rules:
//!
//! * the runner reads documents from the store, never from the cache;
//! * after every successful commit the runner invalidates the keys it wrote (locally, in the
//!   L2, and on every instance through the log) before it goes on;
//! * reset and delete list the projection's keys while its runner is stopped (so the list is
//!   exact), drop the read model, then invalidate every listed key.
//!
//! Readers fill the cache through [`TieredCache::fill`] with a token taken before reading the
//! store, so a document read before a commit never outlives the commit's invalidation.

use bytes::Bytes;
use proteus_cache::{KEY_BYTES_MAX, TieredCache};
use proteus_projections::ProjectionName;
use serde_json::Value;

/// The cache key of a document, or `None` when it would be longer than the cache accepts (such
/// documents are simply not cached).
pub(crate) fn key_of(name: &ProjectionName, key: &str) -> Option<String> {
    let cache_key = format!("proj:{name}:{key}");
    (cache_key.len() <= KEY_BYTES_MAX).then_some(cache_key)
}

pub(crate) fn keys_of<'a>(
    name: &ProjectionName,
    keys: impl Iterator<Item = &'a str>,
) -> Vec<String> {
    let mut keys: Vec<String> = keys.filter_map(|key| key_of(name, key)).collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

pub(crate) fn encode(doc: &Option<Value>) -> Bytes {
    match doc {
        None => Bytes::from_static(b"0"),
        Some(doc) => {
            let mut bytes = vec![b'1'];
            // Serialising a Value cannot fail.
            bytes.extend(serde_json::to_vec(doc).unwrap_or_default());
            Bytes::from(bytes)
        }
    }
}

/// `None` for bytes that are not an encoded document (then the store is read).
pub(crate) fn decode(bytes: &[u8]) -> Option<Option<Value>> {
    match bytes.split_first()? {
        (b'0', []) => Some(None),
        (b'1', json) => serde_json::from_slice(json).ok().map(Some),
        _ => None,
    }
}

/// Invalidates `keys` with a few retries; when every attempt fails, clears this instance's L1
/// and logs it (other instances then rely on their L1 lifetime).
pub(crate) async fn invalidate_with_retries(cache: &TieredCache, keys: &[String]) {
    const ATTEMPTS: u32 = 5;
    for attempt in 1..=ATTEMPTS {
        match cache.invalidate(keys).await {
            Ok(()) => return,
            Err(error) if attempt == ATTEMPTS => {
                tracing::error!(%error, "cache invalidation failed; clearing the local L1");
                cache.clear_l1();
            }
            Err(error) => {
                tracing::warn!(%error, attempt, "cache invalidation failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
            }
        }
    }
}
