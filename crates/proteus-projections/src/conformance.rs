//! The conformance suite of the [`ReadModelStore`] port. Every adapter runs all of it through
//! [`read_model_store_conformance_tests!`](crate::read_model_store_conformance_tests):
//!
//! ```text
//! struct Harness { dir: tempfile::TempDir }
//! impl proteus_projections::conformance::StoreHarness for Harness { ... }
//! proteus_projections::read_model_store_conformance_tests!(Harness::new());
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::definition::ProjectionDefinition;
use crate::error::ProcessingError;
use crate::name::ProjectionName;
use crate::query::{Condition, Op, Order, Query, Sort, SortBy};
use crate::store::{
    COMMIT_WRITES_MAX, Checkpoint, DOC_BYTES_MAX, KEY_BYTES_MAX, ListItem, ProjectionRecord,
    ReadModelStore, RunState, StoreError, Write, list_item_bytes_max,
};

/// What the suite needs from an adapter's test set-up.
#[async_trait]
pub trait StoreHarness: Send + Sync {
    /// Opens the store. Opening again after dropping every handle must see everything a
    /// completed write wrote (as after a crash or restart).
    async fn open(&self) -> Arc<dyn ReadModelStore>;
}

pub fn name(text: &str) -> ProjectionName {
    ProjectionName::parse(text).unwrap()
}

pub fn record(projection: &str) -> ProjectionRecord {
    let definition = ProjectionDefinition::parse(&json!({
        "source": {"category": "order"},
        "state": {"handlers": {"OrderPlaced": {"set": {"total": {"path": "/data/total"}}}}}
    }))
    .unwrap();
    ProjectionRecord {
        name: name(projection),
        definition,
        state: RunState::Running,
        created_ms: 1_700_000_000_000,
        updated_ms: 1_700_000_000_000,
    }
}

fn put(key: &str, doc: Value) -> Write {
    Write::Doc {
        key: key.to_owned(),
        doc: Some(doc),
    }
}

fn delete(key: &str) -> Write {
    Write::Doc {
        key: key.to_owned(),
        doc: None,
    }
}

fn append(key: &str, items: Vec<Value>, max_items: usize) -> Write {
    Write::Append {
        key: key.to_owned(),
        items: items.into_iter().map(ListItem::from).collect(),
        max_items,
    }
}

fn checkpoint(position: u64) -> Checkpoint {
    Checkpoint {
        position,
        events_processed: position,
        updated_ms: 1_700_000_000_000 + position as i64,
        last_event: None,
    }
}

async fn created(store: &dyn ReadModelStore, projection: &str) -> ProjectionName {
    store.save_projection(&record(projection)).await.unwrap();
    name(projection)
}

const STATUSES: [&str; 3] = ["placed", "paid", "shipped"];

/// 250 documents `k000`..`k249` with a status, a number, sometimes a missing or null field.
async fn seeded(store: &dyn ReadModelStore, projection: &str) -> ProjectionName {
    let p = created(store, projection).await;
    let writes = (0..250)
        .map(|i| {
            let mut doc = json!({
                "n": (i * 37) % 101,
                "status": STATUSES[i % 3],
                "name": format!("customer-{}", i % 17),
                "nested": {"city": if i % 2 == 0 { "Oslo" } else { "Lima" }},
            });
            if i % 5 == 0 {
                doc["maybe"] = Value::Null;
            } else if i % 5 == 1 {
                doc["maybe"] = json!(i);
            }
            put(&format!("k{i:03}"), doc)
        })
        .collect();
    store.commit(&p, writes, checkpoint(250)).await.unwrap();
    p
}

pub async fn commit_writes_docs_and_checkpoint_together(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    let p = created(&*store, "orders").await;
    assert_eq!(store.checkpoint(&p).await.unwrap(), None);
    assert_eq!(store.get(&p, "a").await.unwrap(), None);
    store
        .commit(
            &p,
            vec![put("a", json!({"total": 1})), put("b", json!({"total": 2}))],
            checkpoint(10),
        )
        .await
        .unwrap();
    assert_eq!(store.get(&p, "a").await.unwrap(), Some(json!({"total": 1})));
    assert_eq!(store.checkpoint(&p).await.unwrap(), Some(checkpoint(10)));
    // Later writes to the same key in one commit win; deletes remove.
    store
        .commit(
            &p,
            vec![
                put("a", json!({"total": 3})),
                put("a", json!({"total": 4})),
                delete("b"),
                delete("never-there"),
            ],
            checkpoint(20),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .get_many(&p, &["b".into(), "a".into(), "zz".into()])
            .await
            .unwrap(),
        vec![None, Some(json!({"total": 4})), None]
    );
    assert_eq!(store.checkpoint(&p).await.unwrap(), Some(checkpoint(20)));
    // An empty commit only moves the checkpoint (a batch of filtered-out events).
    store.commit(&p, Vec::new(), checkpoint(30)).await.unwrap();
    assert_eq!(store.checkpoint(&p).await.unwrap(), Some(checkpoint(30)));
}

pub async fn refused_commits_change_nothing(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    let p = created(&*store, "orders").await;
    store
        .commit(&p, vec![put("a", json!(1))], checkpoint(10))
        .await
        .unwrap();
    let before = (
        store.get(&p, "a").await.unwrap(),
        store.checkpoint(&p).await.unwrap(),
    );
    let behind = store
        .commit(&p, vec![put("a", json!(2))], checkpoint(9))
        .await
        .unwrap_err();
    assert!(
        matches!(
            behind,
            StoreError::CheckpointBehind {
                stored: 10,
                given: 9,
                ..
            }
        ),
        "{behind}"
    );
    let long_key = "k".repeat(KEY_BYTES_MAX + 1);
    let error = store
        .commit(
            &p,
            vec![put("a", json!(3)), put(&long_key, json!(1))],
            checkpoint(11),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::KeyTooLong { .. }), "{error}");
    let huge = json!("x".repeat(DOC_BYTES_MAX));
    let error = store
        .commit(&p, vec![put("a", json!(4)), put("b", huge)], checkpoint(12))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::DocTooLarge { .. }), "{error}");
    let too_many = (0..=COMMIT_WRITES_MAX)
        .map(|i| put(&format!("k{i}"), json!(i)))
        .collect();
    let error = store
        .commit(&p, too_many, checkpoint(13))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::TooManyWrites { .. }), "{error}");
    let after = (
        store.get(&p, "a").await.unwrap(),
        store.checkpoint(&p).await.unwrap(),
    );
    assert_eq!(before, after);
    assert_eq!(store.get(&p, "k1").await.unwrap(), None);
}

pub async fn commits_need_a_saved_projection(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    let error = store
        .commit(&name("ghost"), vec![put("a", json!(1))], checkpoint(1))
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound { .. }), "{error}");
    let error = store.reset(&name("ghost")).await.unwrap_err();
    assert!(matches!(error, StoreError::NotFound { .. }), "{error}");
    let error = store
        .set_state(&name("ghost"), &RunState::Paused, 1)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound { .. }), "{error}");
    assert!(!store.drop_projection(&name("ghost")).await.unwrap());
    assert_eq!(store.get(&name("ghost"), "a").await.unwrap(), None);
    assert_eq!(store.checkpoint(&name("ghost")).await.unwrap(), None);
}

pub async fn the_largest_commit_fits(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    let p = created(&*store, "big").await;
    let writes: Vec<Write> = (0..COMMIT_WRITES_MAX)
        .map(|i| put(&format!("k{i:05}"), json!({"i": i})))
        .collect();
    store
        .commit(&p, writes, checkpoint(COMMIT_WRITES_MAX as u64))
        .await
        .unwrap();
    assert_eq!(
        store.get(&p, "k09999").await.unwrap(),
        Some(json!({"i": 9999}))
    );
    // A document right at the size limit is accepted.
    let body = "x".repeat(DOC_BYTES_MAX - 2);
    store
        .commit(&p, vec![put("full", json!(body))], checkpoint(20_000))
        .await
        .unwrap();
    assert_eq!(store.get(&p, "full").await.unwrap(), Some(json!(body)));
}

pub async fn everything_survives_a_reopen(harness: &dyn StoreHarness) {
    let failed = RunState::Failed {
        error: ProcessingError {
            position: 41,
            stream: "order-7".into(),
            version: 3,
            event_type: "OrderPlaced".into(),
            reason: "/data/total is missing".into(),
        },
    };
    {
        let store = harness.open().await;
        let p = created(&*store, "orders").await;
        store
            .commit(&p, vec![put("a", json!({"x": [1, 2]}))], checkpoint(41))
            .await
            .unwrap();
        store.set_state(&p, &failed, 99).await.unwrap();
    }
    let store = harness.open().await;
    let p = name("orders");
    assert_eq!(
        store.get(&p, "a").await.unwrap(),
        Some(json!({"x": [1, 2]}))
    );
    assert_eq!(store.checkpoint(&p).await.unwrap(), Some(checkpoint(41)));
    let loaded = store.load_projection(&p).await.unwrap().unwrap();
    assert_eq!(loaded.state, failed);
    assert_eq!(loaded.updated_ms, 99);
    assert_eq!(loaded.definition, record("orders").definition);
}

pub async fn records_are_listed_by_name_and_replaced(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    for n in ["b", "c", "a"] {
        created(&*store, n).await;
    }
    let names: Vec<String> = store
        .list_projections()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name.to_string())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    let mut changed = record("b");
    changed.state = RunState::Paused;
    changed.definition = ProjectionDefinition::parse(&json!({
        "source": {"all": true},
        "aggregate": {"measures": {"events": {"count": {}}}}
    }))
    .unwrap();
    store
        .commit(&name("b"), vec![put("k", json!(1))], checkpoint(5))
        .await
        .unwrap();
    store.save_projection(&changed).await.unwrap();
    assert_eq!(
        store.load_projection(&name("b")).await.unwrap(),
        Some(changed)
    );
    // Saving a record keeps documents and checkpoint.
    assert_eq!(store.get(&name("b"), "k").await.unwrap(), Some(json!(1)));
    assert_eq!(
        store.checkpoint(&name("b")).await.unwrap(),
        Some(checkpoint(5))
    );
}

pub async fn reset_drops_docs_and_checkpoint_keeps_the_record(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    let p = seeded(&*store, "orders").await;
    store.set_state(&p, &RunState::Paused, 5).await.unwrap();
    store.reset(&p).await.unwrap();
    assert_eq!(store.checkpoint(&p).await.unwrap(), None);
    assert_eq!(store.get(&p, "k001").await.unwrap(), None);
    let page = store.query(&p, &Query::default()).await.unwrap();
    assert!(page.items.is_empty() && page.next_cursor.is_none());
    assert_eq!(
        store.load_projection(&p).await.unwrap().unwrap().state,
        RunState::Paused
    );
    // A rebuild starts from position 0 again.
    store
        .commit(&p, vec![put("a", json!(1))], checkpoint(1))
        .await
        .unwrap();
    assert_eq!(store.checkpoint(&p).await.unwrap(), Some(checkpoint(1)));
}

pub async fn drop_removes_everything(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    let p = seeded(&*store, "orders").await;
    assert!(store.drop_projection(&p).await.unwrap());
    assert!(!store.drop_projection(&p).await.unwrap());
    assert_eq!(store.load_projection(&p).await.unwrap(), None);
    assert_eq!(store.checkpoint(&p).await.unwrap(), None);
    assert_eq!(store.get(&p, "k001").await.unwrap(), None);
    // Created again, it starts empty.
    created(&*store, "orders").await;
    assert_eq!(store.get(&p, "k001").await.unwrap(), None);
    assert_eq!(store.checkpoint(&p).await.unwrap(), None);
}

pub async fn projections_are_independent(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    let a = created(&*store, "a").await;
    // `a.b` shares a prefix with `a`; their documents must not mix.
    let ab = created(&*store, "a.b").await;
    store
        .commit(&a, vec![put("k", json!("a"))], checkpoint(5))
        .await
        .unwrap();
    store
        .commit(&ab, vec![put("k", json!("ab"))], checkpoint(7))
        .await
        .unwrap();
    assert_eq!(store.get(&a, "k").await.unwrap(), Some(json!("a")));
    assert_eq!(store.get(&ab, "k").await.unwrap(), Some(json!("ab")));
    store.reset(&a).await.unwrap();
    assert_eq!(store.get(&ab, "k").await.unwrap(), Some(json!("ab")));
    assert_eq!(store.checkpoint(&ab).await.unwrap(), Some(checkpoint(7)));
    let page = store.query(&ab, &Query::default()).await.unwrap();
    assert_eq!(page.items, vec![("k".to_owned(), json!("ab"))]);
    assert!(store.drop_projection(&ab).await.unwrap());
    assert!(store.load_projection(&a).await.unwrap().is_some());
}

fn keys(items: &[(String, Value)]) -> Vec<String> {
    items.iter().map(|(k, _)| k.clone()).collect()
}

/// What the suite expects, computed by brute force over the seeded documents.
fn expected(docs: &[(String, Value)], query: &Query) -> Vec<String> {
    let mut matching: Vec<&(String, Value)> =
        docs.iter().filter(|(_, d)| query.matches(d)).collect();
    let sort = query.sort.clone().unwrap_or_default();
    matching.sort_by(|a, b| {
        let natural = match &sort.by {
            SortBy::Key => a.0.cmp(&b.0),
            SortBy::Path(p) => {
                crate::value::compare(a.1.pointer(p), b.1.pointer(p)).then_with(|| a.0.cmp(&b.0))
            }
        };
        match sort.order {
            Order::Asc => natural,
            Order::Desc => natural.reverse(),
        }
    });
    matching.into_iter().map(|(k, _)| k.clone()).collect()
}

async fn walk(store: &dyn ReadModelStore, p: &ProjectionName, mut query: Query) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..1000 {
        let page = store.query(p, &query).await.unwrap();
        assert!(page.items.len() <= query.limit);
        seen.extend(keys(&page.items));
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => return seen,
        }
    }
    panic!("pagination did not end");
}

pub async fn filters_follow_the_query_semantics(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    let p = seeded(&*store, "orders").await;
    let all = store
        .query(
            &p,
            &Query {
                limit: 1000,
                ..Query::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(all.items.len(), 250);
    assert!(all.next_cursor.is_none());
    let cases = [
        Condition::new("/status", Op::Eq, json!("paid")),
        Condition::new("/status", Op::Ne, json!("paid")),
        Condition::new("/n", Op::Lt, json!(10)),
        Condition::new("/n", Op::Lte, json!(10)),
        Condition::new("/n", Op::Gt, json!(90.5)),
        Condition::new("/n", Op::Gte, json!(100)),
        Condition::new("/n", Op::Gt, json!("a")),
        Condition::new("/n", Op::In, json!([1, 2, 3, "4", 37])),
        Condition::new("/name", Op::Prefix, json!("customer-1")),
        Condition::new("/maybe", Op::Exists, json!(true)),
        Condition::new("/maybe", Op::Exists, json!(false)),
        Condition::new("/maybe", Op::Eq, Value::Null),
        Condition::new("/maybe", Op::Ne, Value::Null),
        Condition::new("/nested/city", Op::Eq, json!("Oslo")),
        Condition::new("/n", Op::Eq, json!(37.0)),
    ];
    for condition in cases {
        let query = Query {
            filter: vec![condition.clone()],
            limit: 1000,
            ..Query::default()
        };
        let page = store.query(&p, &query).await.unwrap();
        assert_eq!(
            keys(&page.items),
            expected(&all.items, &query),
            "{condition:?}"
        );
    }
    // Spot checks that the brute force agrees with the documented semantics.
    let eq_null = Query {
        filter: vec![Condition::new("/maybe", Op::Eq, Value::Null)],
        limit: 1000,
        ..Query::default()
    };
    assert_eq!(store.query(&p, &eq_null).await.unwrap().items.len(), 50);
    let gt_string = Query {
        filter: vec![Condition::new("/n", Op::Gt, json!("a"))],
        ..Query::default()
    };
    assert!(store.query(&p, &gt_string).await.unwrap().items.is_empty());
    // Conditions combine with AND.
    let both = Query {
        filter: vec![
            Condition::new("/status", Op::Eq, json!("paid")),
            Condition::new("/nested/city", Op::Eq, json!("Lima")),
        ],
        limit: 1000,
        ..Query::default()
    };
    let page = store.query(&p, &both).await.unwrap();
    assert!(!page.items.is_empty());
    assert!(
        page.items
            .iter()
            .all(|(_, d)| d["status"] == "paid" && d["nested"]["city"] == "Lima")
    );
}

pub async fn sorts_and_pages_visit_every_match_once(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    let p = seeded(&*store, "orders").await;
    let all = store
        .query(
            &p,
            &Query {
                limit: 1000,
                ..Query::default()
            },
        )
        .await
        .unwrap()
        .items;
    let sorts = [
        None,
        Some(Sort {
            by: SortBy::Key,
            order: Order::Desc,
        }),
        Some(Sort {
            by: SortBy::Path("/n".into()),
            order: Order::Asc,
        }),
        Some(Sort {
            by: SortBy::Path("/n".into()),
            order: Order::Desc,
        }),
        Some(Sort {
            by: SortBy::Path("/maybe".into()),
            order: Order::Asc,
        }),
        Some(Sort {
            by: SortBy::Path("/status".into()),
            order: Order::Desc,
        }),
    ];
    let filters = [
        vec![],
        vec![Condition::new("/status", Op::Ne, json!("shipped"))],
    ];
    for sort in &sorts {
        for filter in &filters {
            for limit in [1, 7, 100, 1000] {
                let query = Query {
                    filter: filter.clone(),
                    sort: sort.clone(),
                    limit,
                    cursor: None,
                };
                let walked = walk(&*store, &p, query.clone()).await;
                assert_eq!(
                    walked,
                    expected(&all, &query),
                    "{sort:?} {filter:?} limit {limit}"
                );
            }
        }
    }
}

pub async fn pages_stay_stable_while_others_change(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    let p = seeded(&*store, "orders").await;
    let query = Query {
        sort: Some(Sort {
            by: SortBy::Path("/n".into()),
            order: Order::Asc,
        }),
        limit: 10,
        ..Query::default()
    };
    let mut seen = Vec::new();
    let mut query = query;
    let mut position = 250;
    loop {
        let page = store.query(&p, &query).await.unwrap();
        seen.extend(keys(&page.items));
        // Between pages, insert new documents and delete others that are not part of the walk.
        position += 1;
        store
            .commit(
                &p,
                vec![
                    put(&format!("new{position}"), json!({"n": 1000 + position})),
                    delete(&format!("new{}", position - 1)),
                ],
                checkpoint(position),
            )
            .await
            .unwrap();
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    let originals: Vec<&String> = seen.iter().filter(|k| k.starts_with('k')).collect();
    let unique: BTreeSet<&&String> = originals.iter().collect();
    assert_eq!(originals.len(), 250, "every unchanged document seen");
    assert_eq!(unique.len(), 250, "none twice");
}

pub async fn query_limits_are_enforced(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    let p = seeded(&*store, "orders").await;
    for limit in [0, crate::query::QUERY_LIMIT_MAX + 1] {
        let error = store
            .query(
                &p,
                &Query {
                    limit,
                    ..Query::default()
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(error, StoreError::InvalidQuery(ref e) if e.field == "limit"),
            "{error}"
        );
    }
    let error = store
        .query(
            &p,
            &Query {
                cursor: Some("not a cursor".into()),
                ..Query::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::InvalidQuery(ref e) if e.field == "cursor"),
        "{error}"
    );
    // A cursor from one sort is refused by another.
    let page = store
        .query(
            &p,
            &Query {
                limit: 5,
                ..Query::default()
            },
        )
        .await
        .unwrap();
    let error = store
        .query(
            &p,
            &Query {
                sort: Some(Sort {
                    by: SortBy::Path("/n".into()),
                    order: Order::Asc,
                }),
                cursor: page.next_cursor,
                ..Query::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::InvalidQuery(ref e) if e.field == "cursor"),
        "{error}"
    );
    let error = store
        .query(
            &p,
            &Query {
                filter: vec![Condition::new("status", Op::Eq, json!("x"))],
                ..Query::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::InvalidQuery(ref e) if e.field == "filter[0]"),
        "{error}"
    );
    // The default page size applies.
    let page = store.query(&p, &Query::default()).await.unwrap();
    assert_eq!(page.items.len(), crate::query::QUERY_LIMIT_DEFAULT);
    assert!(page.next_cursor.is_some());
}

fn items(range: std::ops::Range<u64>) -> Vec<Value> {
    range.map(|i| json!({"i": i})).collect()
}

pub async fn lists_append_trim_and_count(harness: &dyn StoreHarness) {
    let p = name("recent");
    {
        let store = harness.open().await;
        created(&*store, "recent").await;
        // Two appends to one key in a commit add up, in order.
        store
            .commit(
                &p,
                vec![append("a", items(0..3), 5), append("a", items(3..4), 5)],
                checkpoint(4),
            )
            .await
            .unwrap();
        assert_eq!(
            store.get(&p, "a").await.unwrap(),
            Some(json!({"items": items(0..4), "count": 4}))
        );
        // Past max_items the oldest go; the count keeps every item ever appended.
        store
            .commit(
                &p,
                vec![append("a", items(4..7), 5), append("b", items(0..1), 5)],
                checkpoint(8),
            )
            .await
            .unwrap();
        assert_eq!(
            store.get(&p, "a").await.unwrap(),
            Some(json!({"items": items(2..7), "count": 7}))
        );
        // One append longer than the list keeps its own last items.
        store
            .commit(&p, vec![append("b", items(1..13), 5)], checkpoint(20))
            .await
            .unwrap();
        assert_eq!(
            store
                .get_many(&p, &["b".into(), "none".into(), "a".into()])
                .await
                .unwrap(),
            vec![
                Some(json!({"items": items(8..13), "count": 13})),
                None,
                Some(json!({"items": items(2..7), "count": 7})),
            ]
        );
    }
    // Lists are durable like documents.
    let store = harness.open().await;
    assert_eq!(
        store.get(&p, "a").await.unwrap(),
        Some(json!({"items": items(2..7), "count": 7}))
    );
    store
        .commit(&p, vec![append("a", items(7..8), 5)], checkpoint(21))
        .await
        .unwrap();
    assert_eq!(
        store.get(&p, "a").await.unwrap(),
        Some(json!({"items": items(3..8), "count": 8}))
    );
    // A reset starts every list again from zero.
    store.reset(&p).await.unwrap();
    assert_eq!(store.get(&p, "a").await.unwrap(), None);
    store
        .commit(&p, vec![append("a", items(100..101), 5)], checkpoint(1))
        .await
        .unwrap();
    assert_eq!(
        store.get(&p, "a").await.unwrap(),
        Some(json!({"items": items(100..101), "count": 1}))
    );
    assert!(store.drop_projection(&p).await.unwrap());
    created(&*store, "recent").await;
    assert_eq!(store.get(&p, "a").await.unwrap(), None);
}

pub async fn lists_are_queried_as_documents(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    let p = created(&*store, "recent").await;
    let writes = (0..30u64)
        .map(|k| append(&format!("k{k:02}"), items(0..k % 7 + 1), 3))
        .collect();
    store.commit(&p, writes, checkpoint(30)).await.unwrap();
    let query = Query {
        filter: vec![Condition::new("/count", Op::Gte, json!(5))],
        sort: Some(Sort {
            by: SortBy::Key,
            order: Order::Desc,
        }),
        limit: 4,
        ..Query::default()
    };
    let mut seen = Vec::new();
    let mut page = store.query(&p, &query).await.unwrap();
    loop {
        for (key, doc) in &page.items {
            let count = doc["count"].as_u64().unwrap();
            assert!(count >= 5, "{key}: {doc}");
            assert_eq!(doc["items"], json!(items(count - 3..count)));
        }
        seen.extend(keys(&page.items));
        let Some(cursor) = page.next_cursor.clone() else {
            break;
        };
        page = store
            .query(
                &p,
                &Query {
                    cursor: Some(cursor),
                    ..query.clone()
                },
            )
            .await
            .unwrap();
    }
    let expected: Vec<String> = (0..30u64)
        .rev()
        .filter(|k| k % 7 + 1 >= 5)
        .map(|k| format!("k{k:02}"))
        .collect();
    assert_eq!(seen, expected);
}

pub async fn refused_list_appends_change_nothing(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    let p = created(&*store, "recent").await;
    store
        .commit(&p, vec![append("a", items(0..2), 10)], checkpoint(2))
        .await
        .unwrap();
    let item_bytes_max = list_item_bytes_max(10);
    // Right at the bound is accepted: `"xx…"` is the string plus two quotes.
    let largest = json!("x".repeat(item_bytes_max - 2));
    store
        .commit(&p, vec![append("a", vec![largest], 10)], checkpoint(3))
        .await
        .unwrap();
    let before = store.get(&p, "a").await.unwrap();
    let too_large = json!("x".repeat(item_bytes_max - 1));
    let error = store
        .commit(
            &p,
            vec![
                append("a", items(3..4), 10),
                append("a", vec![too_large], 10),
            ],
            checkpoint(5),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::ListItemTooLarge { item_bytes_max: m, .. } if m == item_bytes_max),
        "{error}"
    );
    let error = store
        .commit(&p, vec![append("a", items(3..4), 0)], checkpoint(5))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::ListItemsOutOfRange { .. }),
        "{error}"
    );
    // Items count towards the writes of a commit.
    let error = store
        .commit(
            &p,
            vec![
                put("d", json!(1)),
                append("a", items(0..COMMIT_WRITES_MAX as u64), 10),
            ],
            checkpoint(5),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::TooManyWrites { .. }), "{error}");
    assert_eq!(store.get(&p, "a").await.unwrap(), before);
    assert_eq!(store.get(&p, "d").await.unwrap(), None);
    assert_eq!(store.checkpoint(&p).await.unwrap(), Some(checkpoint(3)));
    // The whole list document stays within DOC_BYTES_MAX even when every item is the largest.
    let full = (0..10)
        .map(|_| json!("x".repeat(item_bytes_max - 2)))
        .collect();
    store
        .commit(&p, vec![append("a", full, 10)], checkpoint(6))
        .await
        .unwrap();
    let doc = store.get(&p, "a").await.unwrap().unwrap();
    assert!(crate::value::json_bytes(&doc) <= DOC_BYTES_MAX);
}

/// Runs the whole suite against `$harness` (an expression building a fresh [`StoreHarness`]
/// for each test).
#[macro_export]
macro_rules! read_model_store_conformance_tests {
    ($harness:expr) => {
        $crate::read_model_store_conformance_tests!(@tests $harness;
            commit_writes_docs_and_checkpoint_together,
            refused_commits_change_nothing,
            commits_need_a_saved_projection,
            the_largest_commit_fits,
            everything_survives_a_reopen,
            records_are_listed_by_name_and_replaced,
            reset_drops_docs_and_checkpoint_keeps_the_record,
            drop_removes_everything,
            projections_are_independent,
            filters_follow_the_query_semantics,
            sorts_and_pages_visit_every_match_once,
            pages_stay_stable_while_others_change,
            query_limits_are_enforced,
            lists_append_trim_and_count,
            lists_are_queried_as_documents,
            refused_list_appends_change_nothing,
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let harness = $harness;
                $crate::conformance::$name(&harness).await;
            }
        )*
    };
}
