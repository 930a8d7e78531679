//! `get` through a TieredCache: fresh after every commit, reset and delete.

use std::sync::Arc;
use std::time::Duration;

use proteus_cache::{MemoryRemoteCache, TieredCache, TieredConfig};
use proteus_eventstore::EventStore;
use proteus_eventstore_embedded::{EmbeddedConfig, EmbeddedEventStore};
use proteus_projections_embedded::EmbeddedReadModelStore;
use proteus_projections_service::{ProjectionService, ProjectionServiceConfig};
use serde_json::json;

use crate::support::{append, balances, head};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_documents_are_fresh_after_commits_resets_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let events = Arc::new(EmbeddedEventStore::open(dir.path(), EmbeddedConfig::default()).unwrap());
    let store = Arc::new(EmbeddedReadModelStore::open(dir.path()).unwrap());
    let l2 = MemoryRemoteCache::new();
    let cache = TieredCache::open(TieredConfig::new("projections"), Some(Arc::new(l2)), None)
        .await
        .unwrap();
    let service = ProjectionService::open_with_cache(
        events.clone(),
        store,
        ProjectionServiceConfig::default(),
        Some(cache.clone()),
    )
    .await
    .unwrap();
    let settle = async |service: &ProjectionService| {
        let head = head(events.as_ref()).await;
        assert!(
            service
                .wait_for_position("balances", head, Duration::from_secs(60))
                .await
                .unwrap()
        );
    };

    service.create("balances", &balances(), None).await.unwrap();
    // A miss is cached too, and the commit creating the document invalidates it.
    assert_eq!(service.get("balances", "acct-1").await.unwrap(), None);
    append(
        events.as_ref(),
        "acct-1",
        vec![("Opened", json!({"owner": "ann"}))],
    )
    .await;
    settle(&service).await;
    let doc = service.get("balances", "acct-1").await.unwrap().unwrap();
    assert_eq!(doc["balance"], json!(0));
    assert!(cache.get("proj:balances:acct-1").await.is_some(), "cached");

    for amount in 1..=20 {
        append(
            events.as_ref(),
            "acct-1",
            vec![("Deposited", json!({"amount": amount}))],
        )
        .await;
        settle(&service).await;
        let doc = service.get("balances", "acct-1").await.unwrap().unwrap();
        assert_eq!(
            doc["balance"],
            json!(amount * (amount + 1) / 2),
            "fresh after commit"
        );
    }
    append(events.as_ref(), "acct-1", vec![("Closed", json!({}))]).await;
    settle(&service).await;
    assert_eq!(service.get("balances", "acct-1").await.unwrap(), None);

    // Reset of a paused projection empties it: the cached document must go too.
    append(
        events.as_ref(),
        "acct-2",
        vec![("Opened", json!({"owner": "bob"}))],
    )
    .await;
    settle(&service).await;
    assert!(service.get("balances", "acct-2").await.unwrap().is_some());
    service.pause("balances").await.unwrap();
    service.reset("balances").await.unwrap();
    assert_eq!(service.get("balances", "acct-2").await.unwrap(), None);
    service.resume("balances").await.unwrap();
    settle(&service).await;
    assert!(service.get("balances", "acct-2").await.unwrap().is_some());

    // Delete, then a projection of the same name that never writes acct-2.
    service.delete("balances").await.unwrap();
    let other = json!({
        "source": {"category": "other"},
        "state": {"handlers": {"Opened": {"set": {"owner": {"path": "/data/owner"}}}}}
    });
    service.create("balances", &other, None).await.unwrap();
    settle(&service).await;
    assert_eq!(service.get("balances", "acct-2").await.unwrap(), None);

    service.close().await;
    drop(service);
    events.close().await.unwrap();
}
