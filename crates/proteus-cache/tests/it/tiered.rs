//! Tiering and invalidation of TieredCache.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proteus_cache::{MemoryRemoteCache, RemoteCache, TieredCache, TieredConfig};
use proteus_log::port::Log;
use proteus_log_embedded::{EmbeddedConfig, EmbeddedLog};

fn config() -> TieredConfig {
    TieredConfig::new("test")
}

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

async fn eventually(mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn reads_go_l1_then_l2_then_miss() {
    let l2 = MemoryRemoteCache::new();
    let cache = TieredCache::open(config(), Some(Arc::new(l2.clone())), None)
        .await
        .unwrap();
    assert_eq!(cache.get("k").await, None);
    // A value only in the L2 is found there and then kept in the L1.
    l2.put_many(vec![("k".into(), b("v1"))], 60_000)
        .await
        .unwrap();
    assert_eq!(cache.get("k").await, Some(b("v1")));
    l2.delete_many(&["k".into()]).await.unwrap();
    assert_eq!(cache.get("k").await, Some(b("v1")), "served from the L1");
    // put writes both levels.
    cache.put("p", b("pv")).await.unwrap();
    assert_eq!(
        l2.get_many(&["p".into()]).await.unwrap(),
        vec![Some(b("pv"))]
    );
    // invalidate drops both levels.
    cache.invalidate(&["k".into(), "p".into()]).await.unwrap();
    assert_eq!(cache.get("k").await, None);
    assert_eq!(cache.get("p").await, None);
    assert_eq!(l2.get_many(&["p".into()]).await.unwrap(), vec![None]);
}

#[tokio::test]
async fn l1_only_works_without_l2() {
    let cache = TieredCache::open(config(), None, None).await.unwrap();
    let token = cache.fill_token("k");
    cache.fill("k", b("v"), token).await;
    assert_eq!(cache.get("k").await, Some(b("v")));
    cache.invalidate(&["k".into()]).await.unwrap();
    assert_eq!(cache.get("k").await, None);
}

#[tokio::test]
async fn a_fill_that_raced_an_invalidation_is_refused() {
    let l2 = MemoryRemoteCache::new();
    let cache = TieredCache::open(config(), Some(Arc::new(l2.clone())), None)
        .await
        .unwrap();
    // A reader takes its token, reads the old value from the source; a writer commits and
    // invalidates; the reader's fill must not bring the old value back.
    let token = cache.fill_token("k");
    cache.invalidate(&["k".into()]).await.unwrap();
    cache.fill("k", b("old"), token).await;
    assert_eq!(cache.get("k").await, None);
    assert_eq!(l2.get_many(&["k".into()]).await.unwrap(), vec![None]);
    // A fresh token fills.
    let token = cache.fill_token("k");
    cache.fill("k", b("new"), token).await;
    assert_eq!(cache.get("k").await, Some(b("new")));
    assert_eq!(
        l2.get_many(&["k".into()]).await.unwrap(),
        vec![Some(b("new"))]
    );
}

#[tokio::test]
async fn l1_is_bounded_by_bytes() {
    let mut config = config();
    config.l1_bytes_max = 64 * 1024;
    let cache = TieredCache::open(config, None, None).await.unwrap();
    let value = Bytes::from(vec![1u8; 1024]);
    for i in 0..1_000 {
        cache.put(&format!("k{i}"), value.clone()).await.unwrap();
    }
    let mut present = 0;
    for i in 0..1_000 {
        if cache.get(&format!("k{i}")).await.is_some() {
            present += 1;
        }
    }
    assert!(
        present > 0 && present <= 64,
        "{present} entries of 1 KiB kept"
    );
}

#[tokio::test]
async fn l1_entries_expire() {
    let mut config = config();
    config.l1_ttl_ms = 100;
    let cache = TieredCache::open(config, None, None).await.unwrap();
    cache.put("k", b("v")).await.unwrap();
    assert_eq!(cache.get("k").await, Some(b("v")));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(cache.get("k").await, None);
}

#[tokio::test]
async fn an_invalidation_reaches_every_instance_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn Log> = Arc::new(
        EmbeddedLog::open(EmbeddedConfig::new(dir.path()))
            .await
            .unwrap(),
    );
    let l2 = MemoryRemoteCache::new();
    let a = TieredCache::open(config(), Some(Arc::new(l2.clone())), Some(log.clone()))
        .await
        .unwrap();
    let b_cache = TieredCache::open(config(), Some(Arc::new(l2.clone())), Some(log.clone()))
        .await
        .unwrap();
    let other = TieredCache::open(
        TieredConfig::new("other"),
        Some(Arc::new(l2.with_namespace("other:"))),
        Some(log.clone()),
    )
    .await
    .unwrap();
    let follow_a = a.follow_invalidations().await.unwrap().unwrap();
    let follow_b = b_cache.follow_invalidations().await.unwrap().unwrap();
    let follow_other = other.follow_invalidations().await.unwrap().unwrap();

    // B reads the value through the shared L2 into its L1.
    a.put("doc", b("v1")).await.unwrap();
    other.put("doc", b("other")).await.unwrap();
    assert_eq!(b_cache.get("doc").await, Some(b("v1")));
    // Remove it from the L2 behind B's back: B still serves it from its L1.
    l2.delete_many(&["doc".into()]).await.unwrap();
    assert_eq!(b_cache.get("doc").await, Some(b("v1")));

    // A's invalidation drops B's L1 entry.
    a.invalidate(&["doc".into()]).await.unwrap();
    let b2 = b_cache.clone();
    eventually(async || b2.get("doc").await.is_none()).await;
    // A cache with another name is not affected.
    assert_eq!(other.get("doc").await, Some(b("other")));

    // A stale fill racing the invalidation is refused on B too.
    let token = b_cache.fill_token("doc");
    a.put("doc", b("v2")).await.unwrap();
    a.invalidate(&["doc".into()]).await.unwrap();
    let b3 = b_cache.clone();
    eventually(async || b3.fill_token("doc").epoch() != token.epoch()).await;
    b_cache.fill("doc", b("v1"), token).await;
    assert_eq!(b_cache.get("doc").await, None);
    assert_eq!(l2.get_many(&["doc".into()]).await.unwrap(), vec![None]);

    follow_a.abort();
    follow_b.abort();
    follow_other.abort();
    log.shutdown().await.unwrap();
}
