//! Creating, naming and addressing projections: validation, idempotency, conflicts, errors,
//! the status JSON.

use proteus_eventstore::EventStore;
use proteus_projections::RunState;
use proteus_projections_service::{ErrorKind, ProjectionServiceConfig, ServiceError};
use serde_json::json;

use crate::support::{Env, append, balances};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_validates_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let env = Env::open(dir.path(), ProjectionServiceConfig::default()).await;
    let service = &env.service;

    // The future of create is Send even with a schema lookup (the server spawns it).
    fn assert_send<T: Send>(t: T) -> T {
        t
    }
    let lookup = |event_type: &str| {
        (event_type == "Deposited").then(|| json!({"type": "object", "properties": {"amt": {}}}))
    };
    let error = assert_send(service.create("b", &balances(), Some(&lookup)))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert!(error.to_string().contains("/data/amount"), "{error}");

    let created = service.create("balances", &balances(), None).await.unwrap();
    assert_eq!(created.state, RunState::Running);
    let again = service.create("balances", &balances(), None).await.unwrap();
    assert_eq!(again.name, created.name);
    assert_eq!(again.created_ms, created.created_ms);

    let mut changed = balances();
    changed["description"] = json!("other");
    let error = service
        .create("balances", &changed, None)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Conflict);

    let error = service
        .create("bad name", &balances(), None)
        .await
        .unwrap_err();
    assert!(matches!(error, ServiceError::InvalidName(_)), "{error}");
    let error = service
        .create("x", &json!({"source": {"all": true}}), None)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    let ServiceError::InvalidDefinition(errors) = service
        .create(
            "x",
            &json!({"source": {"category": "a-b"}, "list": {}}),
            None,
        )
        .await
        .unwrap_err()
    else {
        panic!("a category with '-' is refused")
    };
    assert!(errors.has_path("/source/category"), "{errors}");

    for result in [
        service.status("nope").await.map(|_| ()),
        service.pause("nope").await.map(|_| ()),
        service.resume("nope").await.map(|_| ()),
        service.reset("nope").await.map(|_| ()),
        service.delete("nope").await,
        service.get("nope", "k").await.map(|_| ()),
    ] {
        assert_eq!(result.unwrap_err().kind(), ErrorKind::NotFound);
    }

    let position = append(
        env.events.as_ref(),
        "acct-1",
        vec![("Opened", json!({"owner": "ann"}))],
    )
    .await;
    env.settle("balances").await;
    let status = service.status("balances").await.unwrap();
    let shown = serde_json::to_value(&status).unwrap();
    assert_eq!(shown["name"], "balances");
    assert_eq!(shown["state"], "running");
    assert_eq!(shown["checkpoint"]["position"], position + 1);
    assert_eq!(shown["checkpoint"]["events_processed"], 1);
    assert_eq!(shown["head_position"], position);
    assert_eq!(shown["lag"], 0);
    assert_eq!(shown["live"], true);
    assert_eq!(shown["retrying"], serde_json::Value::Null);
    assert_eq!(shown["definition"], balances());
    assert!(shown["updated_ms"].as_i64().unwrap() >= shown["created_ms"].as_i64().unwrap());
    assert_eq!(
        service.get("balances", "acct-1").await.unwrap(),
        Some(json!({"owner": "ann", "balance": 0}))
    );
    let names: Vec<String> = service
        .list()
        .await
        .into_iter()
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(names, ["balances"]);

    let bad_query = proteus_projections::Query {
        limit: 0,
        ..Default::default()
    };
    let error = service.query("balances", &bad_query).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput);

    service.close().await;
    let error = service.pause("balances").await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable);
    env.events.close().await.unwrap();
}

/// Filtered-out events move the checkpoint too (lag is measured against the whole store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_events_move_the_read_position() {
    let dir = tempfile::tempdir().unwrap();
    let config = ProjectionServiceConfig {
        skip_checkpoint_interval_ms: 0,
        ..Default::default()
    };
    let env = Env::open(dir.path(), config).await;
    env.service
        .create("balances", &balances(), None)
        .await
        .unwrap();
    let mut last = 0;
    for i in 0..20 {
        last = append(
            env.events.as_ref(),
            &format!("other-{i}"),
            vec![("Noise", json!({}))],
        )
        .await;
    }
    let status = env.settle("balances").await;
    assert_eq!(status.lag, 0, "{status:?}");
    assert_eq!(status.read_position, last + 1);
    assert_eq!(status.checkpoint.events_processed, 0);
    // Saved too (interval 0), so a restart does not scan them again.
    env.close().await;
    let env = Env::open(dir.path(), ProjectionServiceConfig::default()).await;
    let status = env.service.status("balances").await.unwrap();
    assert_eq!(status.checkpoint.position, last + 1);
    env.close().await;
}

/// A failing event store is retried with backoff and shown in the status; closing the
/// service stops the retrying runner promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_errors_are_retried_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let config = ProjectionServiceConfig {
        retry_backoff_ms_min: 5,
        retry_backoff_ms_max: 40,
        ..Default::default()
    };
    let env = Env::open(dir.path(), config).await;
    append(
        env.events.as_ref(),
        "acct-1",
        vec![("Opened", json!({"owner": "ann"}))],
    )
    .await;
    env.service
        .create("balances", &balances(), None)
        .await
        .unwrap();
    env.settle("balances").await;
    env.events.close().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let retrying = loop {
        let status = env.service.status("balances").await.unwrap();
        if let Some(retrying) = status.retrying.clone().filter(|r| r.attempts >= 3) {
            break retrying;
        }
        assert!(std::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert!(retrying.error.contains("closed"), "{retrying:?}");
    assert!(retrying.retry_in_ms <= 40, "{retrying:?}");
    let closing = std::time::Instant::now();
    env.service.close().await;
    assert!(closing.elapsed() < std::time::Duration::from_secs(2));
}
