//! The crash check every group store whose backend a test can kill runs (feature
//! `conformance`): progress saved before the server is killed survives it, a save while it is
//! down fails with [`StoreError::Unavailable`] (retriable) saying what failed, and the same
//! store reconnects by itself once the server is back.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conformance::{create_billing_group, partition_1_at};
use crate::{GroupStore, StoreError};

/// How long the store may take to reconnect after the restart.
pub const RECONNECT_WITHIN_S: u64 = 30;

/// Saves progress on `store`, calls `kill`, checks a save fails with an error containing
/// `error_names` (the server's URL, or at least its kind), awaits `restart`, then checks the
/// saved progress is there, a new save lands through the same store, and a store from `reopen`
/// reads it.
pub async fn progress_survives_a_crash(
    store: Arc<dyn GroupStore>,
    error_names: &str,
    kill: impl FnOnce(),
    restart: impl Future<Output = ()>,
    reopen: impl Future<Output = Arc<dyn GroupStore>>,
) {
    let (topic, group) = create_billing_group(store.as_ref()).await;
    let progress = partition_1_at;
    store
        .save_progress(&topic, &group, 0, &[progress(5)])
        .await
        .unwrap();

    kill();
    match store.save_progress(&topic, &group, 0, &[progress(6)]).await {
        Err(StoreError::Unavailable(text)) => {
            assert!(text.contains(error_names), "says {error_names:?}: {text}")
        }
        other => panic!("a save while the server is down: {other:?}"),
    }
    restart.await;
    let deadline = Instant::now() + Duration::from_secs(RECONNECT_WITHIN_S);
    let loaded = loop {
        match store.load_group(&topic, &group).await {
            Ok(loaded) => break loaded.expect("the group survives the kill"),
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "no reconnection within {RECONNECT_WITHIN_S} s: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(
        loaded.partitions[1].committed, 5,
        "the progress saved before the kill"
    );
    store
        .save_progress(&topic, &group, 0, &[progress(7)])
        .await
        .unwrap();
    let reloaded = reopen.await.load_group(&topic, &group).await.unwrap();
    assert_eq!(reloaded.unwrap().partitions[1].committed, 7);
}
