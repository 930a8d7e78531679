use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use proteus_groups::config::{PushConfig, PushMode, RetryPolicy};
use proteus_groups::{GroupConfig, GroupName};

use crate::{Fixture, eventually};

/// How the receiver answers: fail the first `failures_per_event` attempts of each event with
/// a 500, or hang longer than any timeout.
#[derive(Clone, Copy)]
enum Behaviour {
    FailFirst(u32),
    Hang,
}

#[derive(Default)]
struct Received {
    attempts: BTreeMap<String, u32>,
    /// Accepted event ids, in the order they were accepted, with their partition key.
    accepted: Vec<(String, String)>,
    bad_signatures: u32,
    traceparents: Vec<String>,
}

#[derive(Clone)]
struct Receiver {
    behaviour: Behaviour,
    secret: &'static str,
    received: Arc<Mutex<Received>>,
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    if let Behaviour::Hang = receiver.behaviour {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    let expected = proteus_groups_service::push::sign(
        receiver.secret,
        &header("webhook-id"),
        &header("webhook-timestamp"),
        &body,
    );
    let mut received = receiver.received.lock().unwrap();
    if header("webhook-signature") != expected[2].1 {
        received.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    received.traceparents.push(header("traceparent"));
    let id = header("ce-id");
    let attempts = received.attempts.entry(id.clone()).or_default();
    *attempts += 1;
    match receiver.behaviour {
        Behaviour::FailFirst(failures) if *attempts <= failures => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        _ => {
            received.accepted.push((id, header("ce-partitionkey")));
            StatusCode::NO_CONTENT
        }
    }
}

async fn start_receiver(behaviour: Behaviour) -> (String, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let state = Receiver {
        behaviour,
        secret: "a-shared-secret-of-some-length",
        received: received.clone(),
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

fn push_config(url: String, deliveries_max: u32, timeout_ms: u64) -> GroupConfig {
    GroupConfig {
        retry: RetryPolicy {
            backoff_base_ms: 10,
            backoff_max_ms: 40,
            deliveries_max,
        },
        push: Some(PushConfig {
            url,
            mode: PushMode::Binary,
            concurrency_max: 2,
            timeout_ms,
            hmac_secret: Some("a-shared-secret-of-some-length".into()),
        }),
        ..GroupConfig::default()
    }
}

#[tokio::test]
async fn failing_webhooks_are_retried_in_order_until_they_accept() {
    let fixture = Fixture::new(2).await;
    fixture.publish(20, 4).await;
    let (url, received) = start_receiver(Behaviour::FailFirst(2)).await;
    let group = GroupName::parse("hook").unwrap();
    fixture
        .groups
        .put_group(&fixture.topic, &group, push_config(url, 5, 2_000))
        .await
        .unwrap();
    let delivered = eventually(30, async || received.lock().unwrap().accepted.len() == 20).await;
    {
        let received = received.lock().unwrap();
        assert!(delivered, "accepted only {} of 20", received.accepted.len());
        assert_eq!(
            received.bad_signatures, 0,
            "every request is correctly signed"
        );
        assert!(
            received.attempts.values().all(|&a| a == 3),
            "two failures then success: {:?}",
            received.attempts
        );
        assert!(
            received
                .traceparents
                .iter()
                .all(|t| t.starts_with("00-0af7651916cd43dd8448eb211c80319c"))
        );
        // Per key (hence per partition), events arrive in the order they were appended.
        for key in ["k0", "k1", "k2", "k3"] {
            let order: Vec<u32> = received
                .accepted
                .iter()
                .filter(|(_, k)| k == key)
                .map(|(id, _)| id[1..].parse().unwrap())
                .collect();
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(order, sorted, "key {key} out of order");
        }
    }
    let description = fixture
        .groups
        .describe(&fixture.topic, &group)
        .await
        .unwrap();
    assert!(
        eventually(5, async || fixture
            .groups
            .describe(&fixture.topic, &group)
            .await
            .unwrap()
            .lag_events
            == 0)
        .await,
        "committed positions cover everything: {description:?}"
    );
}

#[tokio::test]
async fn a_webhook_that_always_fails_sends_events_to_dead_letters_with_its_answer() {
    let fixture = Fixture::new(1).await;
    fixture.publish(3, 1).await;
    let (url, _received) = start_receiver(Behaviour::FailFirst(u32::MAX)).await;
    let group = GroupName::parse("hook").unwrap();
    fixture
        .groups
        .put_group(&fixture.topic, &group, push_config(url, 2, 2_000))
        .await
        .unwrap();
    let all_dead = eventually(30, async || {
        fixture
            .groups
            .dead_letters(&fixture.topic, &group, 0, 100)
            .await
            .unwrap()
            .0
            .len()
            == 3
    })
    .await;
    assert!(all_dead);
    let (letters, _) = fixture
        .groups
        .dead_letters(&fixture.topic, &group, 0, 100)
        .await
        .unwrap();
    for (index, letter) in letters.iter().enumerate() {
        assert_eq!(
            letter.offset, index as u64,
            "dead letters keep the partition's order"
        );
        assert_eq!(letter.deliveries, 2);
        let error = letter.error.as_deref().unwrap();
        assert!(error.contains("500"), "{error}");
    }
}

#[tokio::test]
async fn hanging_and_unreachable_webhooks_fail_by_timeout_and_connection_error() {
    let fixture = Fixture::new(1).await;
    fixture.publish(1, 1).await;
    let (hanging, _received) = start_receiver(Behaviour::Hang).await;
    let slow = GroupName::parse("slow").unwrap();
    fixture
        .groups
        .put_group(&fixture.topic, &slow, push_config(hanging, 1, 200))
        .await
        .unwrap();
    // A port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", listener.local_addr().unwrap())
    };
    let gone = GroupName::parse("gone").unwrap();
    fixture
        .groups
        .put_group(&fixture.topic, &gone, push_config(closed, 1, 2_000))
        .await
        .unwrap();
    for (group, expected) in [
        (&slow, "did not answer within timeout_ms = 200"),
        (&gone, "cannot reach the webhook"),
    ] {
        assert!(
            eventually(20, async || {
                !fixture
                    .groups
                    .dead_letters(&fixture.topic, group, 0, 10)
                    .await
                    .unwrap()
                    .0
                    .is_empty()
            })
            .await,
            "group {group} dead-letters its event"
        );
        let (letters, _) = fixture
            .groups
            .dead_letters(&fixture.topic, group, 0, 10)
            .await
            .unwrap();
        let error = letters[0].error.as_deref().unwrap();
        assert!(error.contains(expected), "{group}: {error}");
    }
}
