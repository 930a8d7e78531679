//! Data-driven projector tests: a definition and a sequence of events give exactly these
//! documents, or stop at this event with this error.

use proteus_projections::{Projector, list_item_bytes_max};
use serde_json::{Value, json};

use crate::support::{Docs, events, run};

struct Case {
    name: &'static str,
    definition: Value,
    events: Vec<(&'static str, &'static str, Value)>,
    /// Every document after the events.
    docs: Value,
    /// `(position, text the reason contains)` when the projection must stop.
    error: Option<(u64, &'static str)>,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "state: set, increment, append, delete by stream",
            definition: json!({
                "source": {"category": "order"},
                "state": {"handlers": {
                    "OrderPlaced": {"set": {
                        "status": {"const": "placed"},
                        "total": {"path": "/data/total"},
                        "customer": {"path": "/data/customerId"}}},
                    "ItemAdded": {"increment": {"items": {"const": 1}},
                                  "append": {"skus": {"path": "/data/sku", "max_items": 2}}},
                    "OrderCancelled": {"delete": true}
                }}
            }),
            events: vec![
                (
                    "order-1",
                    "OrderPlaced",
                    json!({"total": 10, "customerId": "c1"}),
                ),
                (
                    "order-2",
                    "OrderPlaced",
                    json!({"total": 5.5, "customerId": "c2"}),
                ),
                ("order-1", "ItemAdded", json!({"sku": "a"})),
                ("order-1", "ItemAdded", json!({"sku": "b"})),
                ("order-1", "ItemAdded", json!({"sku": "c"})),
                (
                    "customer-1",
                    "OrderPlaced",
                    json!({"ignored": "other category"}),
                ),
                ("order-2", "OrderCancelled", json!({})),
                ("order-1", "Unhandled", json!({})),
            ],
            docs: json!({
                "order-1": {"status": "placed", "total": 10, "customer": "c1", "items": 3,
                            "skus": ["b", "c"]}
            }),
            error: None,
        },
        Case {
            name: "state: key from data, merge, nested targets, unset, defaults and optional",
            definition: json!({
                "source": {"all": true},
                "event_types": ["Registered", "Moved", "Renamed"],
                "state": {
                    "key": "/data/id",
                    "handlers": {
                        "Registered": {"set": {"": {"path": "/data/profile"},
                                               "tier": {"path": "/data/tier", "default": "free"}}},
                        "Moved": {"merge": {"/address": {"path": "/data/address"}},
                                  "set": {"/meta/moved": {"const": true}}},
                        "Renamed": {"set": {"name": {"path": "/data/name", "optional": true}},
                                    "unset": ["nickname"]}
                    }
                }
            }),
            events: vec![
                (
                    "user-1",
                    "Registered",
                    json!({"id": 7, "profile": {"name": "Ada", "nickname": "A"}}),
                ),
                (
                    "user-1",
                    "Moved",
                    json!({"id": 7, "address": {"city": "Oslo", "zip": "0150"}}),
                ),
                (
                    "user-1",
                    "Moved",
                    json!({"id": 7, "address": {"city": "Lima"}}),
                ),
                ("user-1", "Renamed", json!({"id": 7})),
                (
                    "user-2",
                    "Registered",
                    json!({"id": "u2", "profile": {}, "tier": "gold"}),
                ),
                ("user-2", "Ignored", json!({"id": "u2"})),
            ],
            docs: json!({
                "7": {"name": "Ada", "tier": "free",
                      "address": {"city": "Lima", "zip": "0150"}, "meta": {"moved": true}},
                "u2": {"tier": "gold"}
            }),
            error: None,
        },
        Case {
            name: "state: a missing field stops at its event, keeping what came before",
            definition: json!({
                "source": {"category": "order"},
                "state": {"handlers": {"OrderPlaced": {"set": {"total": {"path": "/data/total"}}}}}
            }),
            events: vec![
                ("order-1", "OrderPlaced", json!({"total": 1})),
                ("order-2", "OrderPlaced", json!({"totl": 2})),
                ("order-3", "OrderPlaced", json!({"total": 3})),
            ],
            docs: json!({"order-1": {"total": 1}}),
            error: Some((
                1,
                "/data/total is missing (read at /state/handlers/OrderPlaced/set/total/path)",
            )),
        },
        Case {
            name: "state: incrementing a string is an error naming the target",
            definition: json!({
                "source": {"category": "order"},
                "state": {"handlers": {
                    "A": {"set": {"n": {"path": "/data/n"}}},
                    "B": {"increment": {"n": {"path": "/data/by"}}}
                }}
            }),
            events: vec![
                ("order-1", "A", json!({"n": "x"})),
                ("order-1", "B", json!({"by": 1})),
            ],
            docs: json!({"order-1": {"n": "x"}}),
            error: Some((1, "cannot increment n")),
        },
        Case {
            name: "aggregate: counts, sums, min, max and avg grouped by a field",
            definition: json!({
                "source": {"category": "order"},
                "event_types": ["OrderPlaced"],
                "aggregate": {
                    "group_by": "/data/region",
                    "measures": {
                        "orders": {"count": {}},
                        "revenue": {"sum": "/data/total"},
                        "largest": {"max": "/data/total"},
                        "smallest": {"min": "/data/total"},
                        "basket": {"avg": "/data/total"},
                        "discounts": {"sum": {"path": "/data/discount", "optional": true}}
                    }
                }
            }),
            events: vec![
                (
                    "order-1",
                    "OrderPlaced",
                    json!({"region": "eu", "total": 10}),
                ),
                (
                    "order-2",
                    "OrderPlaced",
                    json!({"region": "eu", "total": 30, "discount": 5}),
                ),
                (
                    "order-3",
                    "OrderPlaced",
                    json!({"region": "us", "total": 2.5}),
                ),
                ("order-3", "OrderShipped", json!({"region": "us"})),
            ],
            docs: json!({
                "eu": {"region": "eu", "orders": 2, "revenue": 40, "largest": 30, "smallest": 10,
                       "basket": 20.0, "discounts": 5,
                       "$avg": {"basket": {"sum": 40, "count": 2}}},
                "us": {"region": "us", "orders": 1, "revenue": 2.5, "largest": 2.5, "smallest": 2.5,
                       "basket": 2.5, "discounts": 0,
                       "$avg": {"basket": {"sum": 2.5, "count": 1}}}
            }),
            error: None,
        },
        Case {
            name: "aggregate: several group fields, and none",
            definition: json!({
                "source": {"all": true},
                "aggregate": {"group_by": ["category", "event_type"],
                              "measures": {"events": {"count": {}}}}
            }),
            events: vec![
                ("order-1", "A", json!({})),
                ("order-2", "A", json!({})),
                ("cart-1", "A", json!({})),
                ("cart-1", "B", json!({})),
            ],
            docs: json!({
                "[\"order\",\"A\"]": {"category": "order", "event_type": "A", "events": 2},
                "[\"cart\",\"A\"]": {"category": "cart", "event_type": "A", "events": 1},
                "[\"cart\",\"B\"]": {"category": "cart", "event_type": "B", "events": 1}
            }),
            error: None,
        },
        Case {
            name: "aggregate: a sum over a string stops",
            definition: json!({
                "source": {"all": true},
                "aggregate": {"measures": {"revenue": {"sum": "/data/total"}}}
            }),
            events: vec![
                ("order-1", "A", json!({"total": 1})),
                ("order-1", "A", json!({"total": "2"})),
            ],
            docs: json!({"all": {"revenue": 1}}),
            error: Some((
                1,
                "measure 'revenue' needs a number at /aggregate/measures/revenue/sum, the value is a string",
            )),
        },
        Case {
            name: "list: the last items per customer",
            definition: json!({
                "source": {"category": "order"},
                "list": {"key": "/data/customerId", "max_items": 2,
                         "fields": {"order": "stream", "total": {"path": "/data/total", "default": 0},
                                    "note": {"path": "/data/note", "optional": true}}}
            }),
            events: vec![
                (
                    "order-1",
                    "OrderPlaced",
                    json!({"customerId": "c1", "total": 10, "note": "gift"}),
                ),
                ("order-2", "OrderPlaced", json!({"customerId": "c1"})),
                (
                    "order-3",
                    "OrderPlaced",
                    json!({"customerId": "c2", "total": 3}),
                ),
                (
                    "order-4",
                    "OrderPlaced",
                    json!({"customerId": "c1", "total": 4}),
                ),
            ],
            docs: json!({
                "c1": {"items": [{"order": "order-2", "total": 0}, {"order": "order-4", "total": 4}],
                       "count": 3},
                "c2": {"items": [{"order": "order-3", "total": 3}], "count": 1}
            }),
            error: None,
        },
        Case {
            name: "list: whole events without fields, one list without key",
            definition: json!({"source": {"category": "order"}, "list": {"max_items": 1}}),
            events: vec![
                ("order-1", "A", json!({"x": 1})),
                ("order-2", "B", json!({"y": 2})),
            ],
            docs: json!({"all": {"items": [{"stream": "order-2", "version": 0, "position": 1,
                                             "event_type": "B", "recorded_ms": 1_700_000_000_001i64,
                                             "data": {"y": 2}}],
                                 "count": 2}}),
            error: None,
        },
        Case {
            name: "list: an object key stops",
            definition: json!({"source": {"category": "order"}, "list": {"key": "/data/c"}}),
            events: vec![("order-1", "A", json!({"c": {"id": 1}}))],
            docs: json!({}),
            error: Some((0, "the key read at /list/key is an object")),
        },
    ]
}

#[test]
fn every_case_gives_its_documents() {
    for case in cases() {
        let projector =
            Projector::from_json(&case.definition).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let events = events(&case.events);
        for batch in [1, 2, 100] {
            let (docs, error, _) = run(&projector, &events, batch);
            let expected: Docs =
                Docs(serde_json::from_value(case.docs.clone()).expect("docs are an object"));
            assert_eq!(
                docs, expected,
                "{} (batches of {batch}): {error:?}",
                case.name
            );
            match (&error, case.error) {
                (None, None) => {}
                (Some(error), Some((position, text))) => {
                    assert_eq!(error.position, position, "{}: {error}", case.name);
                    assert!(
                        error.reason.contains(text),
                        "{}: {:?} does not contain {text:?}",
                        case.name,
                        error.reason
                    );
                    let shown = error.to_string();
                    assert!(shown.contains(&format!("position {position}")), "{shown}");
                    assert!(shown.contains(&error.stream), "{shown}");
                }
                (got, want) => panic!("{}: error {got:?}, expected {want:?}", case.name),
            }
        }
    }
}

#[test]
fn a_batch_stops_at_the_failing_event_with_a_checkpoint_before_it() {
    use proteus_projections::{keys_for_batch, plan_batch};
    let projector = Projector::from_json(&json!({
        "source": {"category": "order"},
        "state": {"handlers": {"A": {"set": {"x": {"path": "/data/x"}}}}}
    }))
    .unwrap();
    let events = events(&[
        ("order-1", "A", json!({"x": 1})),
        ("cart-1", "A", json!({})),
        ("order-2", "A", json!({})),
        ("order-3", "A", json!({"x": 3})),
    ]);
    let views: Vec<_> = events.iter().map(|e| e.view()).collect();
    let keys = keys_for_batch(&projector, &views);
    assert_eq!(keys, ["order-1", "order-2", "order-3"]);
    let plan = plan_batch(&projector, &views, keys.into_iter().map(|k| (k, None)));
    assert_eq!(plan.handled, 2);
    assert_eq!(plan.applied, 1);
    assert_eq!(plan.next_position, Some(2));
    assert_eq!(plan.error.as_ref().map(|e| e.position), Some(2));
    assert_eq!(plan.writes.len(), 1);
    let checkpoint = plan.checkpoint(None, 5).unwrap();
    assert_eq!((checkpoint.position, checkpoint.events_processed), (2, 1));
}

#[test]
fn a_key_not_loaded_is_an_error_not_a_new_document() {
    use proteus_projections::plan_batch;
    let projector = Projector::from_json(&json!({
        "source": {"category": "order"},
        "state": {"handlers": {"A": {"increment": {"n": {"const": 1}}}}}
    }))
    .unwrap();
    let events = events(&[("order-1", "A", json!({}))]);
    let views: Vec<_> = events.iter().map(|e| e.view()).collect();
    let plan = plan_batch(&projector, &views, Vec::new());
    assert!(plan.writes.is_empty());
    assert!(plan.error.unwrap().reason.contains("was not loaded"));
}

#[test]
fn documents_past_the_size_limit_stop_the_projection() {
    let projector = Projector::from_json(&json!({
        "source": {"category": "order"},
        "state": {"handlers": {"A": {"append": {"blobs": {"path": "/data/blob", "max_items": 10000}}}}}
    }))
    .unwrap();
    let blob = "x".repeat(300_000);
    let events = events(&[
        ("order-1", "A", json!({"blob": blob})),
        ("order-1", "A", json!({"blob": blob})),
        ("order-1", "A", json!({"blob": blob})),
        ("order-1", "A", json!({"blob": blob})),
    ]);
    let (docs, error, next) = run(&projector, &events, 10);
    let error = error.unwrap();
    assert_eq!(error.position, 3);
    assert!(
        error.reason.contains("the most is 1048576"),
        "{}",
        error.reason
    );
    assert_eq!(next, 3);
    assert_eq!(docs.0["order-1"]["blobs"].as_array().unwrap().len(), 3);
}

/// A list item may take its share of the document limit (`list_item_bytes_max`), so a list
/// never outgrows DOC_BYTES_MAX and the outcome does not depend on the batching.
#[test]
fn list_items_are_bounded_by_their_share_of_the_document_limit() {
    let list = |max_items: usize| {
        Projector::from_json(&json!({
            "source": {"category": "order"},
            "list": {"key": "stream", "max_items": max_items, "fields": {"blob": "/data/blob"}}
        }))
        .unwrap()
    };
    // `{"blob":"…"}` takes 11 bytes besides the string.
    let fits_in_ten = "x".repeat(list_item_bytes_max(10) - 11);
    let too_large_for_ten = "x".repeat(list_item_bytes_max(10) - 10);
    let events = events(&[
        ("order-1", "A", json!({"blob": fits_in_ten})),
        ("order-1", "A", json!({"blob": fits_in_ten})),
        ("order-1", "A", json!({"blob": too_large_for_ten})),
        ("order-1", "A", json!({"blob": fits_in_ten})),
    ]);
    for batch in [1, 2, 10] {
        let (docs, error, next) = run(&list(10), &events, batch);
        let error = error.expect("the third event is refused");
        assert_eq!(error.position, 2, "batch {batch}");
        assert!(
            error
                .reason
                .contains(&format!("at most {}", list_item_bytes_max(10))),
            "{}",
            error.reason
        );
        assert_eq!(next, 2);
        assert_eq!(docs.0["order-1"]["items"].as_array().unwrap().len(), 2);
        assert_eq!(docs.0["order-1"]["count"], 2);
        // Keeping 3, each item may be three times larger.
        let (docs, error, _) = run(&list(3), &events, batch);
        assert!(error.is_none(), "batch {batch}: {error:?}");
        assert_eq!(docs.0["order-1"]["items"].as_array().unwrap().len(), 3);
        assert_eq!(docs.0["order-1"]["count"], 4);
    }
}
