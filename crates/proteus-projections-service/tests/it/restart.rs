//! A projection continues from its checkpoint after both stores and the service are closed
//! and opened again, and ends equal to a rebuild from zero; over another event store it stops
//! and asks for a rebuild.

use proteus_projections::RunState;
use proteus_projections_service::ProjectionServiceConfig;

use crate::support::{Env, Rng, account_events, append, assert_same, balances, recent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_continues_from_its_checkpoint_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = ProjectionServiceConfig {
        batch_events_max: 20,
        ..Default::default()
    };
    let env = Env::open(dir.path(), config.clone()).await;
    let mut rng = Rng::new(5);
    for account in 0..60 {
        let batch = account_events(account, &mut rng, 30);
        append(env.events.as_ref(), &format!("acct-{account}"), batch).await;
    }
    env.service
        .create("balances", &balances(), None)
        .await
        .unwrap();
    env.service.create("recent", &recent(), None).await.unwrap();
    // Closed while (probably) still catching up.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let before = env.service.status("balances").await.unwrap();
    env.close().await;

    let env = Env::open(dir.path(), config.clone()).await;
    let reopened = env.service.status("balances").await.unwrap();
    assert!(reopened.checkpoint.position >= before.checkpoint.position);
    for account in 60..70 {
        let batch = account_events(account, &mut rng, 10);
        append(env.events.as_ref(), &format!("acct-{account}"), batch).await;
    }
    env.settle("balances").await;
    env.settle("recent").await;
    env.service
        .create("balances-fresh", &balances(), None)
        .await
        .unwrap();
    env.service
        .create("recent-fresh", &recent(), None)
        .await
        .unwrap();
    env.settle("balances-fresh").await;
    env.settle("recent-fresh").await;
    for name in ["balances", "recent"] {
        let fresh = env.docs(&format!("{name}-fresh")).await;
        assert!(!fresh.is_empty());
        assert_same(name, &env.docs(name).await, &fresh);
    }
    env.close().await;
}

/// A checkpoint counts positions in the event store it was built from. Resumed over another
/// store (a copy to NATS numbers positions anew; a mistyped schema is empty), the projection
/// stops and says to rebuild, instead of skipping events or applying them twice; rebuilt, it
/// equals a fresh projection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_resumed_over_another_event_store_stops_and_asks_for_a_rebuild() {
    let (built_on, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = ProjectionServiceConfig::default();
    let env = Env::open(built_on.path(), config.clone()).await;
    let mut rng = Rng::new(7);
    for account in 0..5 {
        let batch = account_events(account, &mut rng, 10);
        append(env.events.as_ref(), &format!("acct-{account}"), batch).await;
    }
    env.service
        .create("balances", &balances(), None)
        .await
        .unwrap();
    env.settle("balances").await;
    env.close().await;

    let env = Env::open_with(other.path(), built_on.path(), config).await;
    for account in 0..3 {
        let batch = account_events(account, &mut rng, 10);
        append(env.events.as_ref(), &format!("acct-{account}"), batch).await;
    }
    let status = env.failed("balances").await;
    let RunState::Failed { error } = &status.state else {
        unreachable!()
    };
    assert!(
        error
            .reason
            .contains("rebuild it on this store (proteus projection rebuild balances)"),
        "{error}"
    );
    env.service.reset("balances").await.unwrap();
    env.settle("balances").await;
    env.service
        .create("balances-fresh", &balances(), None)
        .await
        .unwrap();
    env.settle("balances-fresh").await;
    assert_same(
        "balances",
        &env.docs("balances").await,
        &env.docs("balances-fresh").await,
    );
    env.close().await;
}
