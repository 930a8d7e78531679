//! An event a projection cannot process stops it, naming the event; nothing after it is
//! applied and nothing before it is lost; resume retries the same event.

use proteus_projections::RunState;
use proteus_projections_service::ProjectionServiceConfig;
use serde_json::json;

use crate::support::{Env, append};

fn strict() -> serde_json::Value {
    json!({
        "source": {"category": "acct"},
        "state": {"handlers": {"Deposited": {"increment": {"balance": {"path": "/data/amount"}}}}}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_field_stops_the_projection_at_its_event() {
    let dir = tempfile::tempdir().unwrap();
    let config = ProjectionServiceConfig {
        batch_events_max: 2,
        ..Default::default()
    };
    let env = Env::open(dir.path(), config).await;
    let deposit = |amount: i64| ("Deposited", json!({"amount": amount}));
    append(
        env.events.as_ref(),
        "acct-1",
        vec![deposit(1), deposit(2), deposit(3)],
    )
    .await;
    // Another category between: skipped, yet the checkpoint moves over it.
    append(
        env.events.as_ref(),
        "other-1",
        vec![("Deposited", json!({}))],
    )
    .await;
    let bad = append(
        env.events.as_ref(),
        "acct-1",
        vec![("Deposited", json!({"amt": 4}))],
    )
    .await;
    append(env.events.as_ref(), "acct-1", vec![deposit(5)]).await;

    env.service.create("strict", &strict(), None).await.unwrap();
    let status = env.failed("strict").await;
    let RunState::Failed { error } = &status.state else {
        unreachable!()
    };
    assert_eq!(
        (error.position, error.stream.as_str(), error.version),
        (bad, "acct-1", 3)
    );
    let text = error.to_string();
    assert!(
        text.contains(&format!("position {bad}")) && text.contains("/data/amount is missing"),
        "{text}"
    );
    assert_eq!(
        status.checkpoint.position, bad,
        "checkpoint right before it"
    );
    assert_eq!(status.checkpoint.events_processed, 3);
    assert_eq!(
        env.service.get("strict", "acct-1").await.unwrap(),
        Some(json!({"balance": 6}))
    );
    let shown = serde_json::to_value(&status).unwrap();
    assert_eq!(shown["state"], "failed");
    assert_eq!(shown["error"]["position"], bad);

    // Pausing a failed projection keeps it failed.
    let paused = env.service.pause("strict").await.unwrap();
    assert!(matches!(paused.state, RunState::Failed { .. }));

    // Resume retries the same event, and fails there again: never skipped.
    let resumed = env.service.resume("strict").await.unwrap();
    assert!(
        matches!(resumed.state, RunState::Running | RunState::Failed { .. }),
        "{resumed:?}"
    );
    let again = env.failed("strict").await;
    assert_eq!(again.state, status.state);
    assert_eq!(again.checkpoint.position, bad);
    assert_eq!(
        env.service.get("strict", "acct-1").await.unwrap(),
        Some(json!({"balance": 6}))
    );

    // What a user does: fix the definition (a default), delete and create again.
    let conflict = env
        .service
        .create("strict", &fixed(), None)
        .await
        .unwrap_err();
    assert!(
        conflict
            .to_string()
            .contains("delete it and create it again"),
        "{conflict}"
    );
    env.service.delete("strict").await.unwrap();
    env.service.create("strict", &fixed(), None).await.unwrap();
    let status = env.settle("strict").await;
    assert_eq!(status.state, RunState::Running);
    assert_eq!(
        env.service.get("strict", "acct-1").await.unwrap(),
        Some(json!({"balance": 11}))
    );
    env.close().await;
}

fn fixed() -> serde_json::Value {
    json!({
        "source": {"category": "acct"},
        "state": {"handlers": {"Deposited": {"increment": {"balance": {"path": "/data/amount", "default": 0}}}}}
    })
}

/// An event that fails first in its batch applies nothing; the saved state still names it
/// after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::open(dir.path(), ProjectionServiceConfig::default()).await;
    let bad = append(
        env.events.as_ref(),
        "acct-9",
        vec![("Deposited", json!({"amount": "x"}))],
    )
    .await;
    env.service.create("strict", &strict(), None).await.unwrap();
    let status = env.failed("strict").await;
    assert_eq!(status.checkpoint.position, bad);
    assert_eq!(status.checkpoint.events_processed, 0);
    env.close().await;
    let env = Env::open(dir.path(), ProjectionServiceConfig::default()).await;
    let status = env.service.status("strict").await.unwrap();
    let RunState::Failed { error } = &status.state else {
        panic!("{status:?}")
    };
    assert_eq!(error.position, bad);
    assert!(error.reason.contains("needs a number"), "{error}");
    env.close().await;
}
