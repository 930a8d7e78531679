//! Pause stops progress, resume continues, reset rebuilds the same read model; control
//! operations racing a busy runner never let a commit land after a reset or a delete.

use std::time::Duration;

use proteus_projections::RunState;
use proteus_projections_service::ProjectionServiceConfig;

use crate::support::{Env, Rng, account_events, append, balances, by_type};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    let config = ProjectionServiceConfig {
        batch_events_max: 50,
        ..Default::default()
    };
    let env = Env::open(dir.path(), config).await;
    let mut rng = Rng::new(3);
    for account in 0..30 {
        let batch = account_events(account, &mut rng, 20);
        append(env.events.as_ref(), &format!("acct-{account}"), batch).await;
    }
    env.service
        .create("balances", &balances(), None)
        .await
        .unwrap();
    let settled = env.settle("balances").await;
    assert_eq!(settled.lag_ms, Some(0), "caught up: {settled:?}");
    let paused = env.service.pause("balances").await.unwrap();
    assert_eq!(paused.state, RunState::Paused);
    let before = env.docs("balances").await;
    let first_unread_at = std::time::Instant::now();
    for account in 30..40 {
        let batch = account_events(account, &mut rng, 5);
        append(env.events.as_ref(), &format!("acct-{account}"), batch).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = env.service.status("balances").await.unwrap();
    assert_eq!(
        status.checkpoint, paused.checkpoint,
        "no progress while paused"
    );
    assert!(status.lag > 0 && !status.live, "{status:?}");
    // Behind by the age of the first event appended while paused, in time as well.
    let lag_ms = status.lag_ms.expect("lag_ms is known");
    let elapsed_ms = first_unread_at.elapsed().as_millis() as u64;
    assert!(
        (300..=elapsed_ms + 50).contains(&lag_ms),
        "lag_ms {lag_ms} should be the first unread event's age (at most {elapsed_ms} ms)"
    );
    let listed = env.service.list().await;
    assert!(listed[0].lag_ms.unwrap() >= lag_ms, "{listed:?}");
    assert_eq!(env.docs("balances").await, before);

    let resumed = env.service.resume("balances").await.unwrap();
    assert_eq!(resumed.state, RunState::Running);
    let caught_up = env.settle("balances").await;
    assert_eq!(caught_up.lag_ms, Some(0), "{caught_up:?}");
    let after = env.docs("balances").await;
    assert!(after.len() > before.len());

    let reset = env.service.reset("balances").await.unwrap();
    assert_eq!(reset.state, RunState::Running);
    let rebuilt = env.settle("balances").await;
    assert_eq!(
        env.docs("balances").await,
        after,
        "a rebuild gives the same read model"
    );
    assert_eq!(
        rebuilt.checkpoint.events_processed,
        caught_up.checkpoint.events_processed
    );

    // A paused projection stays paused, and empty, after a reset.
    env.service.pause("balances").await.unwrap();
    let reset = env.service.reset("balances").await.unwrap();
    assert_eq!(reset.state, RunState::Paused);
    assert_eq!(reset.checkpoint.position, 0);
    assert!(env.docs("balances").await.is_empty());
    env.service.resume("balances").await.unwrap();
    env.settle("balances").await;
    assert_eq!(env.docs("balances").await, after);
    env.close().await;
}

/// Resets and deletes while the runner is busy with small batches: after each reset the
/// rebuilt model equals the first one (a commit of the old run landing after the reset would
/// double some counts), and a deleted projection leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_operations_do_not_race_commits() {
    let dir = tempfile::tempdir().unwrap();
    let config = ProjectionServiceConfig {
        batch_events_max: 7,
        ..Default::default()
    };
    let env = Env::open(dir.path(), config).await;
    let mut rng = Rng::new(11);
    for account in 0..40 {
        let batch = account_events(account, &mut rng, 25);
        append(env.events.as_ref(), &format!("acct-{account}"), batch).await;
    }
    env.service.create("types", &by_type(), None).await.unwrap();
    env.settle("types").await;
    let expected = env.docs("types").await;
    for round in 0..5u64 {
        env.service.reset("types").await.unwrap();
        tokio::time::sleep(Duration::from_millis(round * 3)).await;
        if round % 2 == 0 {
            env.service.pause("types").await.unwrap();
            env.service.resume("types").await.unwrap();
        }
    }
    env.settle("types").await;
    assert_eq!(env.docs("types").await, expected);
    tokio::time::sleep(Duration::from_millis(5)).await;
    env.service.delete("types").await.unwrap();
    assert!(env.service.status("types").await.is_err());
    env.service.create("types", &by_type(), None).await.unwrap();
    env.settle("types").await;
    assert_eq!(env.docs("types").await, expected);
    env.close().await;
}
