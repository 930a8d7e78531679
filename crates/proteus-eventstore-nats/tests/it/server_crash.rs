//! The NATS server itself killed (`SIGKILL`) in the middle of appends and started again on the
//! same store, three times (`proteus_eventstore::crash`): a server of the test's own
//! (`PrivateNatsServer`), since killing the shared one would disturb every other test.

use std::sync::Arc;
use std::time::Duration;

use proteus_eventstore::EventStore;
use proteus_eventstore::crash::{append_through_crashes, assert_each_event_once};
use proteus_nats::test_support::PrivateNatsServer;

use crate::{open, unique_config};

/// How long the server stays down each time.
const DOWN_MS: u64 = 1_000;

/// Every append either succeeds or fails retriably; retried with the same ids until it
/// succeeds, each event is stored once (a retry whose first try was stored, its answer lost, is
/// recognised by its ids). The same store goes on after each restart (it reconnects by itself),
/// and a store opened afterwards reads the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_across_a_killed_and_restarted_server_are_stored_once() {
    let server = PrivateNatsServer::start().await;
    let mut config = unique_config(&server.url());
    config.request_timeout_ms = 1_000;
    config.reconnect_delay_max_ms = 200;
    let store: Arc<dyn EventStore> = Arc::new(open(config.clone()).await);
    let run = append_through_crashes(store.clone(), || async {
        server.kill();
        tokio::time::sleep(Duration::from_millis(DOWN_MS)).await;
        server.restart().await;
    })
    .await;
    eprintln!("{run:?}");
    assert_each_event_once(store.as_ref(), &run, "the store that wrote").await;
    assert_each_event_once(&open(config).await, &run, "a new store").await;
}
