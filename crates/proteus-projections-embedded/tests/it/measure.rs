//! Ad hoc measurements, not run by default:
//! `cargo test --release -p proteus-projections-embedded -- --ignored --nocapture`.

use std::time::Instant;

use proteus_projections::conformance::record;
use proteus_projections::{
    Checkpoint, Condition, EventView, Op, Order, Projector, Query, ReadModelStore, Sort, SortBy,
    Write, keys_for_batch, plan_batch,
};
use proteus_projections_embedded::EmbeddedReadModelStore;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly in release"]
async fn measure_commits_and_queries() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedReadModelStore::open(dir.path()).unwrap();
    let p = record("orders").name;
    store.save_projection(&record("orders")).await.unwrap();

    // Projector + commit of batches of 1000 events, each event touching its own document.
    let projector = Projector::from_json(&json!({
        "source": {"category": "order"},
        "state": {"handlers": {"OrderPlaced": {"set": {
            "status": {"const": "placed"}, "total": {"path": "/data/total"},
            "customer": {"path": "/data/customerId"}, "region": {"path": "/data/region"}},
            "increment": {"events": {"const": 1}}}}}
    }))
    .unwrap();
    let batches = 100u64;
    let regions = ["eu", "us", "apac"];
    let started = Instant::now();
    let mut planning = std::time::Duration::ZERO;
    for b in 0..batches {
        let owned: Vec<(String, Value)> = (0..1000u64)
            .map(|i| {
                let n = b * 1000 + i;
                (
                    format!("order-{n:06}"),
                    json!({"total": n % 997, "customerId": format!("c{}", n % 5000),
                           "region": regions[(n % 3) as usize]}),
                )
            })
            .collect();
        let views: Vec<EventView<'_>> = owned
            .iter()
            .enumerate()
            .map(|(i, (stream, data))| EventView {
                stream,
                category: "order",
                version: 0,
                position: b * 1000 + i as u64,
                event_type: "OrderPlaced",
                data,
                metadata: None,
                recorded_ms: 0,
            })
            .collect();
        let plan_started = Instant::now();
        let keys = keys_for_batch(&projector, &views);
        let docs = store.get_many(&p, &keys).await.unwrap();
        let plan = plan_batch(&projector, &views, keys.into_iter().zip(docs));
        planning += plan_started.elapsed();
        assert!(plan.error.is_none());
        let checkpoint = plan.checkpoint(store.checkpoint(&p).await.unwrap().as_ref(), 0);
        store
            .commit(&p, plan.writes, checkpoint.unwrap())
            .await
            .unwrap();
    }
    let elapsed = started.elapsed();
    let docs = batches * 1000;
    println!(
        "pipeline: {batches} batches of 1000 events (get_many + plan + fsynced commit): {:.0} events/s, {:.1} ms per batch ({:.1} ms of it loading and planning)",
        docs as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / batches as f64,
        planning.as_secs_f64() * 1000.0 / batches as f64
    );

    // Raw commits of 1000 writes, overwriting existing documents.
    let started = Instant::now();
    for b in 0..50u64 {
        let writes: Vec<Write> = (0..1000u64)
            .map(|i| Write {
                key: format!("order-{:06}", (b * 1000 + i) * 2 % 100_000),
                doc: Some(
                    json!({"status": "paid", "total": i, "customer": format!("c{i}"),
                                 "region": "eu", "events": 2}),
                ),
            })
            .collect();
        store
            .commit(
                &p,
                writes,
                Checkpoint {
                    position: 200_000 + b,
                    events_processed: 0,
                    updated_ms: 0,
                },
            )
            .await
            .unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "commit: 50 fsynced commits of 1000 writes: {:.0} docs/s, {:.1} ms per commit",
        50_000.0 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / 50.0
    );

    // Queries over 100 000 documents.
    let queries: Vec<(&str, Query)> = vec![
        ("first page by key, no filter, limit 100", Query::default()),
        (
            "by key, status eq placed (2/3 match), limit 100",
            Query {
                filter: vec![Condition::new("/status", Op::Eq, json!("placed"))],
                ..Query::default()
            },
        ),
        (
            "by key, customer eq c42 (~20 of 100k match): full scan",
            Query {
                filter: vec![Condition::new("/customer", Op::Eq, json!("c42"))],
                ..Query::default()
            },
        ),
        (
            "sorted by /total desc, limit 100: full scan",
            Query {
                sort: Some(Sort {
                    by: SortBy::Path("/total".into()),
                    order: Order::Desc,
                }),
                ..Query::default()
            },
        ),
        (
            "region eq eu sorted by /total, limit 1000: full scan",
            Query {
                filter: vec![Condition::new("/region", Op::Eq, json!("eu"))],
                sort: Some(Sort {
                    by: SortBy::Path("/total".into()),
                    order: Order::Asc,
                }),
                limit: 1000,
                cursor: None,
            },
        ),
    ];
    for (what, query) in queries {
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let page = store.query(&p, &query).await.unwrap();
            times.push(started.elapsed());
            assert!(!page.items.is_empty());
        }
        times.sort();
        println!(
            "query on 100000 docs, {what}: median {:.2} ms",
            times[2].as_secs_f64() * 1000.0
        );
    }
    let started = Instant::now();
    let keys: Vec<String> = (0..1000).map(|i| format!("order-{:06}", i * 97)).collect();
    store.get_many(&p, &keys).await.unwrap();
    println!(
        "get_many of 1000 keys: {:.2} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
}
