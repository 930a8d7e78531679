//! The conformance suite of the [`RemoteCache`] port. Every adapter runs all of it through
//! [`remote_cache_conformance_tests!`](crate::remote_cache_conformance_tests):
//!
//! ```text
//! struct Harness { ... }
//! impl proteus_cache::conformance::CacheHarness for Harness { ... }
//! proteus_cache::remote_cache_conformance_tests!(Harness::new());
//! ```
//!
//! Every test deletes the keys it wrote before it returns, then calls
//! [`CacheHarness::clean_up`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::port::{
    CacheError, KEY_BYTES_MAX, KEYS_PER_CALL_MAX, RemoteCache, TTL_MS_MAX, VALUE_BYTES_MAX,
};

/// What the suite needs from an adapter's test set-up.
#[async_trait]
pub trait CacheHarness: Send + Sync {
    /// A cache whose keys live in `namespace`, unique to this harness: two namespaces never
    /// see each other's entries.
    async fn open(&self, namespace: &str) -> Arc<dyn RemoteCache>;

    /// Removes anything the test left behind (called at the end of every test).
    async fn clean_up(&self) {}
}

const TTL_MS: u64 = 60_000;

fn keys(names: &[&str]) -> Vec<String> {
    names.iter().map(|k| (*k).to_owned()).collect()
}

fn entry(key: &str, value: &[u8]) -> (String, Bytes) {
    (key.to_owned(), Bytes::copy_from_slice(value))
}

pub async fn values_round_trip(harness: &impl CacheHarness) {
    let cache = harness.open("a").await;
    cache
        .put_many(vec![entry("k1", b"one"), entry("k2", b"two")], TTL_MS)
        .await
        .unwrap();
    let got = cache.get_many(&keys(&["k2", "k1"])).await.unwrap();
    assert_eq!(
        got,
        vec![
            Some(Bytes::from_static(b"two")),
            Some(Bytes::from_static(b"one"))
        ]
    );
    cache.delete_many(&keys(&["k1", "k2"])).await.unwrap();
    harness.clean_up().await;
}

pub async fn misses_are_none_in_order(harness: &impl CacheHarness) {
    let cache = harness.open("a").await;
    cache
        .put_many(vec![entry("here", b"x")], TTL_MS)
        .await
        .unwrap();
    let got = cache
        .get_many(&keys(&["absent", "here", "also-absent"]))
        .await
        .unwrap();
    assert_eq!(got, vec![None, Some(Bytes::from_static(b"x")), None]);
    assert_eq!(
        cache.get_many(&[]).await.unwrap(),
        Vec::<Option<Bytes>>::new()
    );
    cache.delete_many(&keys(&["here"])).await.unwrap();
    harness.clean_up().await;
}

pub async fn puts_overwrite(harness: &impl CacheHarness) {
    let cache = harness.open("a").await;
    cache
        .put_many(vec![entry("k", b"old")], TTL_MS)
        .await
        .unwrap();
    cache
        .put_many(vec![entry("k", b"new")], TTL_MS)
        .await
        .unwrap();
    let got = cache.get_many(&keys(&["k"])).await.unwrap();
    assert_eq!(got, vec![Some(Bytes::from_static(b"new"))]);
    cache.delete_many(&keys(&["k"])).await.unwrap();
    harness.clean_up().await;
}

pub async fn deletes_remove_only_the_named_keys(harness: &impl CacheHarness) {
    let cache = harness.open("a").await;
    cache
        .put_many(vec![entry("k1", b"1"), entry("k2", b"2")], TTL_MS)
        .await
        .unwrap();
    cache
        .delete_many(&keys(&["k1", "never-written"]))
        .await
        .unwrap();
    let got = cache.get_many(&keys(&["k1", "k2"])).await.unwrap();
    assert_eq!(got, vec![None, Some(Bytes::from_static(b"2"))]);
    cache.delete_many(&[]).await.unwrap();
    cache.delete_many(&keys(&["k2"])).await.unwrap();
    assert_eq!(cache.get_many(&keys(&["k2"])).await.unwrap(), vec![None]);
    harness.clean_up().await;
}

pub async fn entries_expire_after_their_ttl(harness: &impl CacheHarness) {
    let cache = harness.open("a").await;
    cache
        .put_many(vec![entry("short", b"s")], 150)
        .await
        .unwrap();
    cache
        .put_many(vec![entry("long", b"l")], TTL_MS)
        .await
        .unwrap();
    let got = cache.get_many(&keys(&["short", "long"])).await.unwrap();
    assert_eq!(got[0], Some(Bytes::from_static(b"s")));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let got = cache.get_many(&keys(&["short", "long"])).await.unwrap();
    assert_eq!(got, vec![None, Some(Bytes::from_static(b"l"))]);
    // A put renews the time to live.
    cache
        .put_many(vec![entry("short", b"s2")], TTL_MS)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = cache.get_many(&keys(&["short"])).await.unwrap();
    assert_eq!(got, vec![Some(Bytes::from_static(b"s2"))]);
    cache.delete_many(&keys(&["short", "long"])).await.unwrap();
    harness.clean_up().await;
}

pub async fn limits_are_refused_with_a_clear_error(harness: &impl CacheHarness) {
    let cache = harness.open("a").await;
    let too_many: Vec<String> = (0..=KEYS_PER_CALL_MAX).map(|i| format!("k{i}")).collect();
    let error = cache.get_many(&too_many).await.unwrap_err();
    assert!(matches!(error, CacheError::TooManyKeys { count, max }
        if count == KEYS_PER_CALL_MAX + 1 && max == KEYS_PER_CALL_MAX));
    assert!(error.to_string().contains("at most"), "{error}");
    let error = cache.delete_many(&too_many).await.unwrap_err();
    assert!(matches!(error, CacheError::TooManyKeys { .. }));
    let entries: Vec<(String, Bytes)> = too_many
        .iter()
        .map(|k| (k.clone(), Bytes::from_static(b"v")))
        .collect();
    let error = cache.put_many(entries, TTL_MS).await.unwrap_err();
    assert!(matches!(error, CacheError::TooManyKeys { .. }));

    let long_key = "k".repeat(KEY_BYTES_MAX + 1);
    let error = cache
        .get_many(std::slice::from_ref(&long_key))
        .await
        .unwrap_err();
    assert!(matches!(error, CacheError::KeyTooLong { bytes, max }
        if bytes == KEY_BYTES_MAX + 1 && max == KEY_BYTES_MAX));
    let error = cache.get_many(&keys(&[""])).await.unwrap_err();
    assert!(matches!(error, CacheError::EmptyKey { .. }));

    // The longest key and the largest value fit.
    let longest_key = "k".repeat(KEY_BYTES_MAX);
    let largest = Bytes::from(vec![7u8; VALUE_BYTES_MAX]);
    cache
        .put_many(vec![(longest_key.clone(), largest.clone())], TTL_MS)
        .await
        .unwrap();
    let got = cache
        .get_many(std::slice::from_ref(&longest_key))
        .await
        .unwrap();
    assert_eq!(got, vec![Some(largest)]);

    // A refused put changes nothing, not even its valid entries.
    let error = cache
        .put_many(
            vec![
                entry("valid", b"v"),
                (
                    "big".to_owned(),
                    Bytes::from(vec![0u8; VALUE_BYTES_MAX + 1]),
                ),
            ],
            TTL_MS,
        )
        .await
        .unwrap_err();
    assert!(matches!(&error, CacheError::ValueTooLarge { key, .. } if key == "big"));
    assert!(error.to_string().contains("big"), "{error}");
    assert_eq!(cache.get_many(&keys(&["valid"])).await.unwrap(), vec![None]);

    for ttl_ms in [0, TTL_MS_MAX + 1] {
        let error = cache
            .put_many(vec![entry("valid", b"v")], ttl_ms)
            .await
            .unwrap_err();
        assert!(matches!(error, CacheError::TtlOutOfRange { .. }), "{error}");
    }
    assert_eq!(cache.get_many(&keys(&["valid"])).await.unwrap(), vec![None]);
    cache.delete_many(&[longest_key]).await.unwrap();
    harness.clean_up().await;
}

pub async fn binary_values_are_kept_byte_exact(harness: &impl CacheHarness) {
    let cache = harness.open("a").await;
    let all_bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    cache
        .put_many(
            vec![
                entry("bin", &all_bytes),
                entry("empty", b""),
                entry("clé/ünïcode:*?", b"\0\r\n"),
            ],
            TTL_MS,
        )
        .await
        .unwrap();
    let got = cache
        .get_many(&keys(&["bin", "empty", "clé/ünïcode:*?"]))
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            Some(Bytes::from(all_bytes)),
            Some(Bytes::new()),
            Some(Bytes::from_static(b"\0\r\n"))
        ]
    );
    cache
        .delete_many(&keys(&["bin", "empty", "clé/ünïcode:*?"]))
        .await
        .unwrap();
    harness.clean_up().await;
}

pub async fn namespaces_do_not_see_each_other(harness: &impl CacheHarness) {
    let a = harness.open("a").await;
    let b = harness.open("b").await;
    a.put_many(vec![entry("k", b"from a")], TTL_MS)
        .await
        .unwrap();
    assert_eq!(b.get_many(&keys(&["k"])).await.unwrap(), vec![None]);
    b.put_many(vec![entry("k", b"from b")], TTL_MS)
        .await
        .unwrap();
    assert_eq!(
        a.get_many(&keys(&["k"])).await.unwrap(),
        vec![Some(Bytes::from_static(b"from a"))]
    );
    b.delete_many(&keys(&["k"])).await.unwrap();
    assert_eq!(
        a.get_many(&keys(&["k"])).await.unwrap(),
        vec![Some(Bytes::from_static(b"from a"))]
    );
    a.delete_many(&keys(&["k"])).await.unwrap();
    harness.clean_up().await;
}

/// Runs the whole suite against the harness `$harness` (an expression evaluated once per test).
#[macro_export]
macro_rules! remote_cache_conformance_tests {
    ($harness:expr) => {
        $crate::remote_cache_conformance_tests!(@tests $harness;
            values_round_trip,
            misses_are_none_in_order,
            puts_overwrite,
            deletes_remove_only_the_named_keys,
            entries_expire_after_their_ttl,
            limits_are_refused_with_a_clear_error,
            binary_values_are_kept_byte_exact,
            namespaces_do_not_see_each_other,
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let harness = $harness;
                $crate::conformance::$name(&harness).await;
            }
        )*
    };
}
