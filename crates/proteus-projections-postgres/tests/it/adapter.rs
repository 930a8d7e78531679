//! What only the PostgreSQL adapter promises: its schema and migrations, stores of several
//! processes on one schema, keys and documents exactly as given, bounded scans.

use std::sync::Arc;
use std::time::Duration;

use proteus_projections::conformance::{name, record};
use proteus_projections::query::{Condition, Op, Order, Sort, SortBy};
use proteus_projections::{
    Checkpoint, ProjectionDefinition, Query, ReadModelStore, StoreError, Write,
};
use proteus_projections_postgres::{
    MIGRATIONS, MIGRATIONS_TABLE, PostgresReadModelConfig, PostgresReadModelStore,
};
use serde_json::{Value, json};

use crate::support::{TestSchema, admin, unreachable, url};

fn checkpoint(position: u64) -> Checkpoint {
    Checkpoint {
        position,
        events_processed: position,
        updated_ms: 1_700_000_000_000 + position as i64,
        last_event: None,
    }
}

fn put(key: &str, doc: Value) -> Write {
    Write::Doc {
        key: key.to_owned(),
        doc: Some(doc),
    }
}

#[tokio::test]
async fn postgres_is_reachable() {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{}", unreachable(e)));
    tokio::spawn(connection);
    let row = client.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_migrate_once() {
    let schema = TestSchema::new("migr");
    let mut opens = Vec::new();
    for _ in 0..4 {
        let config = schema.config();
        opens.push(tokio::spawn(async move {
            PostgresReadModelStore::open(config).await
        }));
    }
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.unwrap().expect("every concurrent open succeeds"));
    }
    let admin = admin().await;
    let migrations = format!("\"{}\".{MIGRATIONS_TABLE}", schema.name);
    let rows = admin
        .query(
            &format!("SELECT version FROM {migrations} ORDER BY version"),
            &[],
        )
        .await
        .unwrap();
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    let wanted: Vec<i32> = MIGRATIONS.list.iter().map(|m| m.version).collect();
    assert_eq!(versions, wanted, "each migration applied once");
    // They all work on the same tables.
    let p = name("orders");
    stores[0].save_projection(&record("orders")).await.unwrap();
    stores[1]
        .commit(&p, vec![put("a", json!(1))], checkpoint(1))
        .await
        .unwrap();
    assert_eq!(stores[3].get(&p, "a").await.unwrap(), Some(json!(1)));
    for store in &stores {
        store.close();
    }
    // Opening again applies nothing and keeps the data.
    let store = schema.open().await;
    assert_eq!(store.get(&p, "a").await.unwrap(), Some(json!(1)));
    store.close();

    // A schema migrated by a newer build is refused.
    admin
        .execute(
            &format!("INSERT INTO {migrations} (version, name) VALUES (9999, 'future')"),
            &[],
        )
        .await
        .unwrap();
    let error = PostgresReadModelStore::open(schema.config())
        .await
        .err()
        .expect("a newer schema is refused");
    assert!(error.to_string().contains("newer"), "{error}");
}

/// Writers in two stores (as two processes) commit to one projection at once, each with its
/// own increasing positions: every commit either applies whole or is refused as behind, the
/// checkpoint never moves back, and the applied commits are exactly those whose list items
/// are there, in position order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_committing_one_projection_never_move_the_checkpoint_back() {
    const WRITERS: u64 = 4;
    const COMMITS: u64 = 60;
    let schema = TestSchema::new("race");
    let stores: Vec<Arc<PostgresReadModelStore>> =
        vec![Arc::new(schema.open().await), Arc::new(schema.open().await)];
    stores[0].save_projection(&record("race")).await.unwrap();
    let p = name("race");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (store, p, done) = (stores[1].clone(), p.clone(), done.clone());
        tokio::spawn(async move {
            let mut seen = 0;
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let position = store
                    .checkpoint(&p)
                    .await
                    .unwrap()
                    .map_or(0, |c| c.position);
                assert!(
                    position >= seen,
                    "checkpoint moved back from {seen} to {position}"
                );
                seen = position;
                reads += 1;
            }
            reads
        })
    };
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (store, p) = (stores[(w % 2) as usize].clone(), p.clone());
        writers.push(tokio::spawn(async move {
            let mut applied = Vec::new();
            let mut refused = 0;
            for i in 0..COMMITS {
                let position = 1 + w + WRITERS * i;
                let writes = vec![
                    put("last", json!(position)),
                    put(&format!("writer-{w}"), json!(position)),
                    Write::Append {
                        key: "log".into(),
                        items: vec![json!(position).into()],
                        max_items: 10_000,
                    },
                ];
                match store.commit(&p, writes, checkpoint(position)).await {
                    Ok(()) => applied.push(position),
                    Err(StoreError::CheckpointBehind { stored, given, .. }) => {
                        assert!(stored > given);
                        refused += 1;
                    }
                    Err(other) => panic!("{other}"),
                }
            }
            (applied, refused)
        }));
    }
    let mut applied = Vec::new();
    let mut refused = 0;
    for writer in writers {
        let (a, r) = writer.await.unwrap();
        applied.extend(a);
        refused += r;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = watcher.await.unwrap();
    applied.sort_unstable();
    let highest = *applied.last().unwrap();
    assert_eq!(applied.len() + refused, (WRITERS * COMMITS) as usize);
    let store = &stores[0];
    assert_eq!(
        store.checkpoint(&p).await.unwrap(),
        Some(checkpoint(highest))
    );
    assert_eq!(store.get(&p, "last").await.unwrap(), Some(json!(highest)));
    let log = store.get(&p, "log").await.unwrap().unwrap();
    let logged: Vec<u64> = log["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(
        logged, applied,
        "applied commits, in position order, each once"
    );
    assert_eq!(log["count"], json!(applied.len()));
    eprintln!(
        "{} commits applied, {refused} refused as behind, {reads} checkpoint reads",
        applied.len()
    );
}

#[tokio::test]
async fn keys_and_documents_round_trip_exactly() {
    let schema = TestSchema::new("exact");
    let store = schema.open().await;
    // A definition whose JSON is not in sorted member order reads back equal.
    let mut saved = record("exact");
    saved.definition = ProjectionDefinition::parse(&json!({
        "source": {"all": true},
        "aggregate": {
            "group_by": {"zone": {"path": "/data/zone"}, "kind": {"path": "/event_type"}},
            "measures": {"n": {"count": {}}, "amount": {"sum": {"path": "/data/amount"}}}
        }
    }))
    .unwrap();
    store.save_projection(&saved).await.unwrap();
    assert_eq!(
        store.load_projection(&saved.name).await.unwrap(),
        Some(saved.clone())
    );
    let p = saved.name.clone();
    // Keys PostgreSQL text could not hold, or would sort by locale; strings jsonb refuses;
    // numbers whose representation matters to serde_json's equality.
    let keys = [
        "",
        "\0",
        "a\0b",
        "B",
        "a",
        "é",
        "z",
        "Ω",
        "\u{10FFFF}",
        "😀",
    ];
    let doc = json!({
        "nul": "x\u{0}y",
        "float": 1.0,
        "int": 1,
        "big": u64::MAX,
        "neg": i64::MIN,
        "small": 1e-7,
        "nested": {"b": [1, {"a": null}], "a": true},
        "unicode": "Ωé😀\u{7f}\u{1f}",
    });
    let writes = keys
        .iter()
        .enumerate()
        .map(|(i, k)| put(k, json!({"i": i, "doc": doc})))
        .collect();
    store.commit(&p, writes, checkpoint(1)).await.unwrap();
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            store.get(&p, key).await.unwrap(),
            Some(json!({"i": i, "doc": doc})),
            "{key:?}"
        );
    }
    // Queries order keys by byte, as Rust orders strings, both ways and across pages.
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort_unstable();
    for order in [Order::Asc, Order::Desc] {
        let mut query = Query {
            sort: Some(Sort {
                by: SortBy::Key,
                order,
            }),
            limit: 3,
            ..Query::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = store.query(&p, &query).await.unwrap();
            seen.extend(page.items.into_iter().map(|(k, _)| k));
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => break,
            }
        }
        let mut wanted: Vec<String> = sorted.iter().map(|k| k.to_string()).collect();
        if order == Order::Desc {
            wanted.reverse();
        }
        assert_eq!(seen, wanted, "{order:?}");
    }
    // List items too.
    store
        .commit(
            &name("exact"),
            vec![Write::Append {
                key: "\0list".into(),
                items: vec![json!("\u{0}").into(), doc.clone().into()],
                max_items: 5,
            }],
            checkpoint(2),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get(&p, "\0list").await.unwrap(),
        Some(json!({"items": ["\u{0}", doc], "count": 2}))
    );
}

#[tokio::test]
async fn queries_read_at_most_query_scan_docs_max() {
    let schema = TestSchema::new("broad");
    let store = schema
        .open_with(PostgresReadModelConfig {
            query_scan_docs_max: 10,
            query_chunk_rows_max: 4,
            ..schema.config()
        })
        .await;
    let docs = name("docs");
    let lists = name("lists");
    store.save_projection(&record("docs")).await.unwrap();
    store.save_projection(&record("lists")).await.unwrap();
    let writes = (0..30)
        .map(|i| put(&format!("k{i:02}"), json!({"n": i})))
        .collect();
    store.commit(&docs, writes, checkpoint(1)).await.unwrap();
    let appends = (0..30)
        .map(|i| Write::Append {
            key: format!("k{i:02}"),
            items: vec![json!({"n": i}).into(), json!({"n": i + 100}).into()],
            max_items: 3,
        })
        .collect();
    store.commit(&lists, appends, checkpoint(1)).await.unwrap();
    for p in [&docs, &lists] {
        // A page sorted by key that fills early is fine, on any page of a walk.
        let mut query = Query {
            limit: 5,
            ..Query::default()
        };
        let mut walked = 0;
        loop {
            let page = store.query(p, &query).await.unwrap();
            walked += page.items.len();
            match page.next_cursor {
                Some(cursor) => query.cursor = Some(cursor),
                None => break,
            }
        }
        assert_eq!(walked, 30, "{p}");
        // Exactly the limit is fine too.
        let query = Query {
            limit: 9,
            ..Query::default()
        };
        assert_eq!(store.query(p, &query).await.unwrap().items.len(), 9);
        // A sort by path reads everything; a filter that matches too rarely reads too much.
        for query in [
            Query {
                sort: Some(Sort {
                    by: SortBy::Path("/n".into()),
                    order: Order::Asc,
                }),
                ..Query::default()
            },
            Query {
                filter: vec![Condition::new("/missing", Op::Exists, json!(true))],
                ..Query::default()
            },
        ] {
            let error = store.query(p, &query).await.unwrap_err();
            assert!(
                matches!(error, StoreError::QueryTooBroad { scanned: 10, .. }),
                "{p}: {error}"
            );
        }
    }
}

#[tokio::test]
async fn invalid_configurations_are_refused() {
    for config in [
        PostgresReadModelConfig::new(url(), "Not-A-Schema"),
        PostgresReadModelConfig {
            pool_size_max: 0,
            ..PostgresReadModelConfig::new(url(), "fine")
        },
        PostgresReadModelConfig::new("postgres://u@h:notaport/db", "fine"),
    ] {
        let error = PostgresReadModelStore::open(config).await.err().unwrap();
        assert!(error.to_string().contains("invalid"), "{error}");
    }
}

#[tokio::test]
async fn an_unreachable_server_is_refused_with_a_hint() {
    let config = PostgresReadModelConfig {
        connect_timeout_ms: 2_000,
        ..PostgresReadModelConfig::new("postgres://postgres@127.0.0.1:1/test", "nowhere")
    };
    let started = std::time::Instant::now();
    let error = PostgresReadModelStore::open(config).await.err().unwrap();
    assert!(error.to_string().contains("pg_ctlcluster"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A reset waits for a commit holding the checkpoint row and then removes what it wrote: after
/// a reset returns, no document of an earlier commit is left, whichever ran first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_racing_commits_leave_nothing_behind() {
    let schema = TestSchema::new("reset");
    let (a, b) = (Arc::new(schema.open().await), Arc::new(schema.open().await));
    a.save_projection(&record("r")).await.unwrap();
    let p = name("r");
    for round in 0..20u64 {
        let writes: Vec<Write> = (0..200)
            .map(|i| put(&format!("k{i:03}"), json!({"round": round})))
            .collect();
        let commit = {
            let (a, p) = (a.clone(), p.clone());
            tokio::spawn(async move { a.commit(&p, writes, checkpoint(round + 1)).await })
        };
        let reset = {
            let (b, p) = (b.clone(), p.clone());
            tokio::spawn(async move { b.reset(&p).await })
        };
        let (committed, reset) = (commit.await.unwrap(), reset.await.unwrap());
        reset.unwrap();
        committed.unwrap();
        // Either the reset ran last (nothing left) or the commit did (all of it, with its
        // checkpoint); never a mix.
        let page = a
            .query(
                &p,
                &Query {
                    limit: 1000,
                    ..Query::default()
                },
            )
            .await
            .unwrap();
        let stored = a.checkpoint(&p).await.unwrap();
        match stored {
            None => assert!(page.items.is_empty(), "round {round}"),
            Some(c) => {
                assert_eq!(c.position, round + 1);
                assert_eq!(page.items.len(), 200, "round {round}");
            }
        }
        a.reset(&p).await.unwrap();
    }
}
