//! Determinism: cutting the same events into different batches gives the same documents and
//! stops at the same event, so a read model kept live equals one rebuilt from zero.

use proptest::prelude::*;
use proteus_projections::Projector;
use serde_json::{Value, json};

use crate::support::{Event, run};

fn definitions() -> Vec<Value> {
    vec![
        json!({"source": {"category": "order"}, "state": {"handlers": {
            "Placed": {"set": {"total": {"path": "/data/n"}, "status": {"const": "placed"}}},
            "Added": {"increment": {"items": {"path": "/data/n", "default": 1}},
                      "append": {"last": {"path": "/data/n", "max_items": 3}}},
            "Noted": {"merge": {"notes": {"path": "/data/note", "optional": true}}},
            "Cancelled": {"delete": true}
        }}}),
        json!({"source": {"all": true}, "aggregate": {"group_by": ["category", "/data/k"],
            "measures": {"n": {"count": {}}, "sum": {"sum": "/data/n"}, "max": {"max": "/data/n"},
                         "min": {"min": "/data/n"}, "avg": {"avg": "/data/n"}}}}),
        json!({"source": {"category": "order"}, "list": {"key": "/data/k", "max_items": 4,
            "fields": {"n": "/data/n", "s": "stream"}}}),
    ]
}

fn event() -> impl Strategy<Value = (u8, u8, u8, Option<i64>, bool)> {
    (
        0u8..3,
        0u8..5,
        0u8..3,
        prop::option::weighted(0.95, -50i64..50),
        any::<bool>(),
    )
}

fn build(raw: &[(u8, u8, u8, Option<i64>, bool)]) -> Vec<Event> {
    let types = ["Placed", "Added", "Noted", "Cancelled", "Other"];
    raw.iter()
        .enumerate()
        .map(|(position, (stream, kind, k, n, note))| {
            let category = if *stream == 2 { "cart" } else { "order" };
            let mut data = json!({"k": format!("k{k}")});
            if let Some(n) = n {
                data["n"] = json!(n);
            }
            if *note {
                data["note"] = json!({ format!("n{position}"): position });
            }
            Event {
                stream: format!("{category}-{stream}"),
                category: category.into(),
                version: position as u64,
                position: position as u64,
                event_type: types[*kind as usize].into(),
                data,
                metadata: None,
                recorded_ms: position as i64,
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn batches_of_any_size_give_the_same_result(
        which in 0usize..3,
        raw in prop::collection::vec(event(), 0..60),
        batch in 2usize..20,
    ) {
        let projector = Projector::from_json(&definitions()[which]).unwrap();
        let events = build(&raw);
        let one_by_one = run(&projector, &events, 1);
        let batched = run(&projector, &events, batch);
        let all_at_once = run(&projector, &events, events.len().max(1));
        prop_assert_eq!(&one_by_one, &batched);
        prop_assert_eq!(&one_by_one, &all_at_once);
    }
}
