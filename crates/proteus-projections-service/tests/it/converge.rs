//! State, aggregate and list projections over a category and `$all` converge to the read
//! model computed independently from the events, while events are appended concurrently.

use proteus_projections_service::ProjectionServiceConfig;

use crate::support::{
    Env, Rng, account_events, all_events, append, assert_same, balances, by_type, expected, recent,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_converge_while_events_are_appended() {
    let dir = tempfile::tempdir().unwrap();
    // Small batches, so the runners commit many times while the writers write.
    let config = ProjectionServiceConfig {
        batch_events_max: 37,
        ..Default::default()
    };
    let env = Env::open(dir.path(), config).await;
    let mut rng = Rng::new(7);
    for account in 0..20 {
        append(
            env.events.as_ref(),
            &format!("acct-{account}"),
            account_events(account, &mut rng, 10),
        )
        .await;
    }
    for (name, definition) in [
        ("balances", balances()),
        ("by-type", by_type()),
        ("recent", recent()),
    ] {
        env.service.create(name, &definition, None).await.unwrap();
    }
    let mut writers = Vec::new();
    for writer in 0..4u64 {
        let events = env.events.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = Rng::new(100 + writer);
            for round in 0..25u64 {
                let account = 20 + writer * 100 + round;
                let count = 1 + rng.below(12) as usize;
                let batch = account_events(account, &mut rng, count);
                append(events.as_ref(), &format!("acct-{account}"), batch).await;
                let noise = vec![("Noise", serde_json::json!({"n": round}))];
                append(events.as_ref(), &format!("other-{writer}"), noise).await;
                tokio::task::yield_now().await;
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let [balances_model, by_type_model, recent_model] =
        expected(&all_events(env.events.as_ref()).await);
    for (name, model) in [
        ("balances", &balances_model),
        ("by-type", &by_type_model),
        ("recent", &recent_model),
    ] {
        let status = env.settle(name).await;
        assert_eq!(status.lag, 0, "{status:?}");
        assert!(status.retrying.is_none(), "{status:?}");
        assert_same(name, &env.docs(name).await, model);
    }
    assert!(balances_model.len() > 50 && recent_model.len() == 7);
    // The category projection counted only its own events.
    let status = env.service.status("balances").await.unwrap();
    let acct_events = all_events(env.events.as_ref())
        .await
        .iter()
        .filter(|e| e.stream.as_str().starts_with("acct-"))
        .count() as u64;
    assert_eq!(status.checkpoint.events_processed, acct_events);
    env.close().await;
}
