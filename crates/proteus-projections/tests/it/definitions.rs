//! Invalid definitions: every error names the JSON path of what is wrong.

use proteus_projections::definition::{DEFINITION_BYTES_MAX, Kind};
use proteus_projections::{DefinitionErrors, ProjectionDefinition};
use serde_json::{Value, json};

fn errors(definition: Value) -> DefinitionErrors {
    match ProjectionDefinition::parse(&definition) {
        Ok(_) => panic!("accepted {definition}"),
        Err(errors) => errors,
    }
}

/// Asserts an error at `path` whose message contains `text`.
fn assert_error(definition: Value, path: &str, text: &str) {
    let errors = errors(definition);
    assert!(
        errors
            .0
            .iter()
            .any(|e| e.path == path && e.message.contains(text)),
        "no error at {path:?} containing {text:?}: {errors}"
    );
}

fn state(handlers: Value) -> Value {
    json!({"source": {"category": "order"}, "state": {"handlers": handlers}})
}

#[test]
fn the_examples_of_each_kind_parse_and_round_trip() {
    let examples = [
        state(json!({
            "OrderPlaced": {"set": {"status": {"const": "placed"}, "total": {"path": "/data/total"},
                                    "customer": {"path": "/data/customerId"}}},
            "ItemAdded": {"increment": {"items": {"const": 1}}, "append": {"skus": {"path": "/data/sku"}}},
            "OrderCancelled": {"delete": true}
        })),
        json!({"source": {"all": true}, "aggregate": {
            "group_by": {"region": "/data/region", "type": "event_type"},
            "measures": {"orders": {"count": {}}, "revenue": {"sum": "/data/total"},
                         "max_total": {"max": "/data/total"}, "min_total": {"min": {"path": "/data/total", "default": 0}},
                         "avg_total": {"avg": "/data/total"}}}}),
        json!({"source": {"category": "order"}, "event_types": ["OrderPlaced"], "description": "last orders",
               "list": {"key": "/data/customerId", "fields": {"order": "stream", "total": "/data/total"},
                        "max_items": 100}}),
    ];
    for example in examples {
        let definition = ProjectionDefinition::parse(&example).unwrap();
        let text = serde_json::to_string(&definition).unwrap();
        let back: ProjectionDefinition = serde_json::from_str(&text).unwrap();
        assert_eq!(back, definition);
        assert_eq!(back.json(), &example);
    }
    let aggregate = ProjectionDefinition::parse(&json!({"source": {"all": true}, "aggregate": {
        "group_by": ["/data/region", "event_type"], "measures": {"n": {"count": {}}}}}))
    .unwrap();
    let Kind::Aggregate(aggregate) = aggregate.kind else {
        panic!("an aggregate")
    };
    let names: Vec<&str> = aggregate.group_by.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["region", "event_type"]);
}

#[test]
fn structure_errors_name_their_paths() {
    assert_error(json!([]), "", "expected an object");
    assert_error(json!({"state": {}}), "/source", "missing");
    assert_error(
        json!({"source": {"category": "order"}}),
        "",
        "missing the projection's kind",
    );
    assert_error(
        json!({"source": {"all": true}, "state": {"handlers": {}}, "list": {}}),
        "",
        "found state and list",
    );
    assert_error(
        json!({"source": {"all": false}, "list": {}}),
        "/source/all",
        "must be true",
    );
    assert_error(
        json!({"source": {"category": ""}, "list": {}}),
        "/source/category",
        "empty",
    );
    assert_error(
        json!({"source": {"category": "o", "all": true}, "list": {}}),
        "/source",
        "not both",
    );
    assert_error(
        json!({"source": {"all": true}, "list": {}, "colour": 1}),
        "/colour",
        "unknown field 'colour'",
    );
    assert_error(
        json!({"source": {"all": true}, "event_types": [], "list": {}}),
        "/event_types",
        "is empty",
    );
    assert_error(
        json!({"source": {"all": true}, "event_types": ["A", "A"], "list": {}}),
        "/event_types/1",
        "listed twice",
    );
    assert_error(
        json!({"source": {"all": true}, "event_types": [1], "list": {}}),
        "/event_types/0",
        "must be a string",
    );
}

#[test]
fn state_errors_name_their_paths() {
    assert_error(
        state(json!({"A": {"set": {"status": "placed"}}})),
        "/state/handlers/A/set/status",
        "a string is ambiguous here",
    );
    assert_error(
        state(json!({"A": {"set": {"total": {"pth": "/data/total"}}}})),
        "/state/handlers/A/set/total/pth",
        "unknown field 'pth'",
    );
    assert_error(
        state(json!({"A": {"set": {"total": {"path": "data/total"}}}})),
        "/state/handlers/A/set/total/path",
        "is not a JSON pointer",
    );
    assert_error(
        state(json!({"A": {"set": {"total": {"path": "/body/total"}}}})),
        "/state/handlers/A/set/total/path",
        "starts at 'body'",
    );
    assert_error(
        state(json!({"A": {"set": {"s": {"path": "/stream/x"}}}})),
        "/state/handlers/A/set/s/path",
        "is not an object",
    );
    assert_error(
        state(json!({"A": {"set": {"t": {"path": "/data/t", "default": 0, "optional": true}}}})),
        "/state/handlers/A/set/t",
        "not both",
    );
    assert_error(
        state(json!({"A": {"set": {"t": {"const": 1, "default": 0}}}})),
        "/state/handlers/A/set/t",
        "a constant is never missing",
    );
    assert_error(
        state(json!({"A": {"increment": {"n": {"const": "1"}}}})),
        "/state/handlers/A/increment/n/const",
        "needs a number",
    );
    assert_error(
        state(json!({"A": {"append": {"l": {"path": "/data/x", "max_items": 0}}}})),
        "/state/handlers/A/append/l/max_items",
        "from 1 to 10000",
    );
    assert_error(
        state(json!({"A": {"set": {"x": {"path": "/data/x", "max_items": 3}}}})),
        "/state/handlers/A/set/x/max_items",
        "unknown field",
    );
    assert_error(
        state(json!({"A": {"delete": true, "set": {"x": {"const": 1}}}})),
        "/state/handlers/A/delete",
        "keep delete alone",
    );
    assert_error(
        state(json!({"A": {"delete": false}})),
        "/state/handlers/A/delete",
        "does nothing",
    );
    assert_error(state(json!({"A": {}})), "/state/handlers/A", "does nothing");
    assert_error(
        state(json!({"A": {"set": {"/a": {"const": 1}}, "increment": {"/a/b": {"const": 1}}}})),
        "/state/handlers/A/increment/~1a~1b",
        "overlaps /state/handlers/A/set/~1a",
    );
    assert_error(
        state(json!({"A": {"increment": {"": {"const": 1}}}})),
        "/state/handlers/A/increment/",
        "only set and merge",
    );
    assert_error(
        state(json!({"A": {"unset": "x"}})),
        "/state/handlers/A/unset",
        "non-empty array",
    );
    assert_error(
        json!({"source": {"all": true}, "event_types": ["A"],
               "state": {"handlers": {"A": {"delete": true}, "B": {"delete": true}}}}),
        "/state/handlers/B",
        "not in event_types",
    );
    assert_error(
        json!({"source": {"all": true}, "state": {"key": "orderId", "handlers": {"A": {"delete": true}}}}),
        "/state/key",
        "neither a JSON pointer",
    );
    assert_error(
        json!({"source": {"all": true}, "state": {"key": {"path": "/data/id", "optional": true},
                                                   "handlers": {"A": {"delete": true}}}}),
        "/state/key/optional",
        "unknown field",
    );
}

#[test]
fn aggregate_and_list_errors_name_their_paths() {
    let aggregate = |body: Value| json!({"source": {"all": true}, "aggregate": body});
    assert_error(aggregate(json!({})), "/aggregate/measures", "missing");
    assert_error(
        aggregate(json!({"measures": {"n": {"count": {}, "sum": "/data/x"}}})),
        "/aggregate/measures/n",
        "exactly one of",
    );
    assert_error(
        aggregate(json!({"measures": {"n": {"count": "/data/x"}}})),
        "/aggregate/measures/n/count",
        "write {}",
    );
    assert_error(
        aggregate(json!({"measures": {"n": {"median": "/data/x"}}})),
        "/aggregate/measures/n/median",
        "unknown field",
    );
    assert_error(
        aggregate(
            json!({"group_by": ["/data/a/id", "/data/b/id"], "measures": {"n": {"count": {}}}}),
        ),
        "/aggregate/group_by/1",
        "two group fields are named 'id'",
    );
    assert_error(
        aggregate(json!({"group_by": "/data/n", "measures": {"n": {"count": {}}}})),
        "/aggregate/measures/n",
        "also a group_by field",
    );
    assert_error(
        aggregate(json!({"measures": {"$n": {"count": {}}}})),
        "/aggregate/measures/$n",
        "reserved",
    );
    let list = |body: Value| json!({"source": {"all": true}, "list": body});
    assert_error(
        list(json!({"max_items": 10001})),
        "/list/max_items",
        "from 1 to 10000",
    );
    assert_error(list(json!({"fields": {}})), "/list/fields", "give 1 to 64");
    assert_error(
        list(json!({"fields": {"x": "data.x"}})),
        "/list/fields/x",
        "neither a JSON pointer",
    );
    assert_error(
        list(json!({"keys": "/data/x"})),
        "/list/keys",
        "unknown field 'keys'",
    );
}

#[test]
fn all_errors_come_at_once() {
    let errors = errors(json!({
        "source": {"category": 5},
        "state": {"handlers": {"A": {"set": {"x": "y"}}, "B": {"increment": {"n": {"pth": 1}}}}}
    }));
    assert!(errors.has_path("/source/category"), "{errors}");
    assert!(errors.has_path("/state/handlers/A/set/x"), "{errors}");
    assert!(
        errors.has_path("/state/handlers/B/increment/n/pth"),
        "{errors}"
    );
    let shown = errors.to_string();
    assert!(
        shown.starts_with("invalid projection definition: /source/category"),
        "{shown}"
    );
}

#[test]
fn text_is_bounded_and_must_be_json() {
    let big = vec![b' '; DEFINITION_BYTES_MAX + 1];
    let error = ProjectionDefinition::from_slice(&big).unwrap_err();
    assert!(error.to_string().contains("the most is 65536"), "{error}");
    let error = ProjectionDefinition::from_slice(b"{\"source\": ").unwrap_err();
    assert!(error.to_string().contains("not valid JSON"), "{error}");
    let error =
        serde_json::from_str::<ProjectionDefinition>("{\"source\": {\"all\": true}}").unwrap_err();
    assert!(
        error.to_string().contains("missing the projection's kind"),
        "{error}"
    );
}
