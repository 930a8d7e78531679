//! `Consumer`: the handler loop users build services on. Each test runs it against a real
//! server and asserts on what the handler saw and on the group's state afterwards.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proteus_client::{Client, Consumer, ConsumerOptions};
use proteus_nats::test_support::Proxy;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::TestServer;

const TOPIC: &str = "orders";
const GROUP: &str = "billing";
/// Longest a test waits for its consumer to finish.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A topic of two partitions holding `events` events `e0`, `e1`…, and a group with fast
/// retries and the given settings.
async fn setup(server: &TestServer, events: usize, group: Value) -> Client {
    let client = Client::new(&server.url).unwrap();
    client
        .put_topic(TOPIC, &json!({ "partitions": 2 }))
        .await
        .unwrap();
    let batch: Vec<Value> = (0..events)
        .map(|i| {
            json!({"specversion": "1.0", "id": format!("e{i}"), "source": "/test",
                   "type": "order.placed", "partitionkey": format!("k{i}"), "data": {"n": i}})
        })
        .collect();
    client.publish(TOPIC, &batch).await.unwrap();
    let mut config = json!({
        "start": "beginning",
        "retry": { "backoff_base_ms": 10, "backoff_max_ms": 50, "deliveries_max": 5 },
    });
    for (key, value) in group.as_object().unwrap() {
        config[key] = value.clone();
    }
    client.put_group(TOPIC, GROUP, &config).await.unwrap();
    client
}

fn event_id(event: &serde_json::value::RawValue) -> String {
    let event: Value = serde_json::from_str(event.get()).unwrap();
    event["id"].as_str().unwrap().to_owned()
}

/// Deliveries seen by the handler: event id → delivery counts, in order.
type Seen = Arc<Mutex<BTreeMap<String, Vec<u32>>>>;

/// What a test's handler does with one delivery; it resolves to accept (`Ok`) or refuse.
type Handled = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Runs `consumer` until `accepted_needed` distinct events were accepted, then checks the group
/// has nothing left to deliver.
async fn run_until<F>(
    client: &Client,
    mut consumer: Consumer,
    accepted_needed: usize,
    mut handle: F,
) -> BTreeMap<String, Vec<u32>>
where
    F: FnMut(&str, u32) -> Handled + Send,
{
    let seen: Seen = Arc::default();
    let (done, mut done_rx) = watch::channel(false);
    let stop = async move {
        let _ = done_rx.wait_for(|done| *done).await;
    };
    let record = seen.clone();
    let accepted: Arc<Mutex<HashSet<String>>> = Arc::default();
    let done = Arc::new(done);
    let run = consumer.run(
        |delivered| {
            let id = event_id(&delivered.event);
            let handled = handle(&id, delivered.delivery_count);
            record
                .lock()
                .unwrap()
                .entry(id.clone())
                .or_default()
                .push(delivered.delivery_count);
            let (accepted, done) = (accepted.clone(), done.clone());
            async move {
                let outcome = handled.await;
                let mut accepted = accepted.lock().unwrap();
                if outcome.is_ok() {
                    accepted.insert(id);
                }
                if accepted.len() >= accepted_needed {
                    done.send_replace(true);
                }
                outcome
            }
        },
        stop,
    );
    tokio::time::timeout(TEST_TIMEOUT, run)
        .await
        .expect("the consumer finished in time")
        .expect("the consumer ran without error");
    let group = client.describe_group(TOPIC, GROUP).await.unwrap();
    assert_eq!(group["lag_events"], 0, "{group:#}");
    assert_eq!(group["unacked_events"], 0, "{group:#}");
    assert_eq!(
        group["members"].as_array().map(Vec::len),
        Some(0),
        "the consumer left the group when stopped: {group:#}"
    );
    seen.lock().unwrap().clone()
}

#[tokio::test]
async fn a_consumer_handles_every_event_and_retries_what_its_handler_refused() {
    let server = TestServer::start().await;
    let client = setup(&server, 50, json!({})).await;
    let options = ConsumerOptions {
        max_events: 20,
        wait_ms: 200,
        ..ConsumerOptions::default()
    };
    let consumer = Consumer::join(client.clone(), TOPIC, GROUP, options)
        .await
        .unwrap();
    assert_eq!(consumer.membership().partitions, vec![0, 1]);
    let seen = run_until(&client, consumer, 50, |id, delivery| {
        let outcome = if id == "e7" && delivery < 3 {
            Err(format!("payment service busy (attempt {delivery})"))
        } else {
            Ok(())
        };
        Box::pin(async move { outcome })
    })
    .await;
    assert_eq!(seen.len(), 50);
    assert_eq!(seen["e7"], vec![1, 2, 3], "refused twice, then accepted");
    for (id, deliveries) in seen.iter().filter(|(id, _)| *id != "e7") {
        assert_eq!(deliveries, &vec![1], "{id} was accepted the first time");
    }
    let group = client.describe_group(TOPIC, GROUP).await.unwrap();
    assert_eq!(group["counters"]["nacked"], 2, "{group:#}");
    assert_eq!(group["counters"]["acked"], 50, "{group:#}");
}

#[tokio::test]
async fn a_slow_handler_keeps_its_session_alive_with_heartbeats() {
    let server = TestServer::start().await;
    // The handler takes 3 session timeouts on one batch; only heartbeats keep it a member.
    let client = setup(&server, 4, json!({ "session_timeout_ms": 500 })).await;
    let options = ConsumerOptions {
        max_events: 10,
        wait_ms: 100,
        ..ConsumerOptions::default()
    };
    let consumer = Consumer::join(client.clone(), TOPIC, GROUP, options)
        .await
        .unwrap();
    let generation = consumer.membership().generation;
    let seen = run_until(&client, consumer, 4, |_, _| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok(())
        })
    })
    .await;
    assert_eq!(seen.len(), 4);
    assert!(
        seen.values().all(|deliveries| deliveries == &vec![1]),
        "no event was redelivered, so the session never lapsed: {seen:?}"
    );
    let group = client.describe_group(TOPIC, GROUP).await.unwrap();
    // Leaving at the end is the only rebalance.
    assert_eq!(group["generation"], generation + 1, "{group:#}");
}

#[tokio::test]
async fn a_consumer_whose_membership_was_removed_rejoins_and_finishes() {
    let server = TestServer::start().await;
    let client = setup(&server, 30, json!({})).await;
    let options = ConsumerOptions {
        member_id: Some("worker-1".into()),
        max_events: 10,
        wait_ms: 100,
        ..ConsumerOptions::default()
    };
    let consumer = Consumer::join(client.clone(), TOPIC, GROUP, options)
        .await
        .unwrap();
    let admin = client.clone();
    let mut removed = false;
    let seen = run_until(&client, consumer, 30, move |_, _| {
        let first = !std::mem::replace(&mut removed, true);
        let admin = admin.clone();
        Box::pin(async move {
            if first {
                // As if its session had expired: the member is gone when the batch is acked.
                admin.leave_group(TOPIC, GROUP, "worker-1").await.unwrap();
            }
            Ok(())
        })
    })
    .await;
    assert_eq!(seen.len(), 30, "every event was handled after the rejoin");
    assert!(
        seen.values().any(|deliveries| deliveries.len() > 1),
        "the first batch's acks were refused, so it came again: {seen:?}"
    );
}

/// With the server out of reach for 1.5 s in the middle of its work (every connection cut, new
/// ones refused: its acks and pulls fail), the consumer keeps asking
/// (`unavailable_wait_max_ms`) instead of returning the error, and once the server answers
/// again it handles every event, those published during the cut included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_rides_out_a_server_it_cannot_reach_for_a_while() {
    let server = TestServer::start().await;
    let client = setup(&server, 20, json!({})).await;
    let proxy = Arc::new(Proxy::start(server.url.trim_start_matches("http://").to_owned()).await);
    let options = ConsumerOptions {
        max_events: 5,
        wait_ms: 100,
        unavailable_wait_max_ms: 20_000,
        ..ConsumerOptions::default()
    };
    let through_proxy = Client::new(&format!("http://127.0.0.1:{}", proxy.port)).unwrap();
    let consumer = Consumer::join(through_proxy, TOPIC, GROUP, options)
        .await
        .unwrap();
    let (admin, cutter) = (client.clone(), proxy.clone());
    let mut handled = 0;
    let seen = run_until(&client, consumer, 40, move |_, _| {
        handled += 1;
        let cut_now = handled == 8;
        let (admin, proxy) = (admin.clone(), cutter.clone());
        Box::pin(async move {
            if cut_now {
                proxy.stop();
                let batch: Vec<Value> = (20..40)
                    .map(|i| {
                        json!({"specversion": "1.0", "id": format!("e{i}"), "source": "/test",
                                    "type": "order.placed", "partitionkey": format!("k{i}")})
                    })
                    .collect();
                admin.publish(TOPIC, &batch).await.unwrap();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(1_500)).await;
                    proxy.restart().await;
                });
            }
            Ok(())
        })
    })
    .await;
    assert_eq!(seen.len(), 40, "every event was handled: {seen:?}");
}

/// Out of reach for longer than `unavailable_wait_max_ms`, `run` returns the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_gives_up_on_a_server_gone_longer_than_allowed() {
    let server = TestServer::start().await;
    setup(&server, 1, json!({})).await;
    let proxy = Proxy::start(server.url.trim_start_matches("http://").to_owned()).await;
    let options = ConsumerOptions {
        wait_ms: 100,
        unavailable_wait_max_ms: 1_000,
        ..ConsumerOptions::default()
    };
    let through_proxy = Client::new(&format!("http://127.0.0.1:{}", proxy.port)).unwrap();
    let mut consumer = Consumer::join(through_proxy, TOPIC, GROUP, options)
        .await
        .unwrap();
    proxy.stop();
    let started = std::time::Instant::now();
    let ran = tokio::time::timeout(
        TEST_TIMEOUT,
        consumer.run(|_| async { Ok(()) }, std::future::pending()),
    )
    .await
    .expect("run returned");
    let error = ran.expect_err("the server stayed out of reach");
    assert!(
        matches!(error, proteus_client::ClientError::Unreachable { .. }),
        "{error}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1_000),
        "it asked again for the whole allowance, returned after {:?}",
        started.elapsed()
    );
}
