//! Definitions checked against the JSON Schemas of the event types they read.

use proteus_projections::validate;
use serde_json::{Value, json};

fn lookup(event_type: &str) -> Option<Value> {
    match event_type {
        "OrderPlaced" => Some(json!({
            "type": "object",
            "properties": {
                "orderId": {"type": "string"},
                "total": {"type": "number"},
                "customer": {"type": "object", "properties": {"id": {"type": "string"}}},
                "lines": {"type": "array", "items": {"type": "object", "properties": {"sku": {}}}},
                "extra": {"type": "object"}
            }
        })),
        "ItemAdded" => Some(json!({
            "allOf": [{"properties": {"sku": {}}}, {"properties": {"qty": {}, "orderId": {}}}]
        })),
        "Shipped" => Some(json!({"properties": {"carrier": {}}})),
        "Referenced" => Some(json!({"$ref": "#/definitions/x"})),
        _ => None,
    }
}

fn check(definition: Value) -> Result<(), proteus_projections::DefinitionErrors> {
    validate(&definition, Some(&lookup)).map(|_| ())
}

#[test]
fn declared_fields_pass() {
    check(json!({"source": {"category": "order"}, "state": {"key": "/data/orderId", "handlers": {
        "OrderPlaced": {"set": {"total": {"path": "/data/total"}, "c": {"path": "/data/customer/id"},
                                "sku": {"path": "/data/lines/0/sku"}, "free": {"path": "/data/extra/anything"},
                                "who": {"path": "/metadata/user"}}},
        "ItemAdded": {"append": {"skus": {"path": "/data/sku"}}, "increment": {"n": {"path": "/data/qty"}}},
        "Referenced": {"set": {"x": {"path": "/data/whatever"}}},
        "Unknown": {"set": {"x": {"path": "/data/anything"}}}
    }}}))
    .unwrap();
}

#[test]
fn a_missing_field_names_the_path_the_event_type_and_the_field() {
    let errors = check(
        json!({"source": {"category": "order"}, "state": {"handlers": {
            "OrderPlaced": {"set": {"total": {"path": "/data/totl"}}},
            "ItemAdded": {"set": {"q": {"path": "/data/quantity", "default": 1}}}
        }}}),
    )
    .unwrap_err();
    let first = &errors.0[0];
    assert_eq!(first.path, "/state/handlers/ItemAdded/set/q/path");
    assert!(
        first
            .message
            .contains("event type 'ItemAdded' has no field /data/quantity"),
        "{first}"
    );
    assert!(
        first.message.contains("it declares: orderId, qty, sku"),
        "{first}"
    );
    let second = &errors.0[1];
    assert_eq!(second.path, "/state/handlers/OrderPlaced/set/total/path");
    assert!(
        second
            .message
            .contains("'OrderPlaced' has no field /data/totl"),
        "{second}"
    );
    assert!(
        second
            .message
            .contains("customer, extra, lines, orderId, total"),
        "{second}"
    );
}

#[test]
fn nested_and_key_reads_are_checked_per_handler() {
    let errors = check(
        json!({"source": {"category": "order"}, "state": {"key": "/data/orderId", "handlers": {
            "OrderPlaced": {"set": {"c": {"path": "/data/customer/name"}}},
            "Shipped": {"delete": true}
        }}}),
    )
    .unwrap_err();
    assert!(errors.has_path("/state/key"), "{errors}");
    assert!(
        errors
            .to_string()
            .contains("'Shipped' has no field /data/orderId"),
        "{errors}"
    );
    assert!(
        errors.has_path("/state/handlers/OrderPlaced/set/c/path"),
        "{errors}"
    );
    assert!(
        errors
            .to_string()
            .contains("at /data/customer it declares: id"),
        "{errors}"
    );
}

#[test]
fn aggregate_and_list_reads_are_checked_against_every_listed_type() {
    let errors = check(
        json!({"source": {"all": true}, "event_types": ["OrderPlaced", "ItemAdded"],
        "aggregate": {"group_by": "/data/sku", "measures": {"n": {"sum": "/data/qty"}}}}),
    )
    .unwrap_err();
    assert!(errors.has_path("/aggregate/group_by"), "{errors}");
    assert!(errors.has_path("/aggregate/measures/n/sum"), "{errors}");
    assert!(
        errors
            .to_string()
            .contains("'OrderPlaced' has no field /data/sku"),
        "{errors}"
    );
    let errors = check(
        json!({"source": {"all": true}, "event_types": ["OrderPlaced"],
        "list": {"fields": {"t": {"path": "/data/tot", "default": 0}}}}),
    )
    .unwrap_err();
    assert!(errors.has_path("/list/fields/t/path"), "{errors}");
    // Without event_types any type may come, so nothing can be checked.
    check(json!({"source": {"all": true}, "list": {"fields": {"t": "/data/tot"}}})).unwrap();
    // Without a lookup, only the structure is checked.
    validate(
        &json!({"source": {"all": true}, "event_types": ["OrderPlaced"],
        "list": {"fields": {"t": "/data/tot"}}}),
        None,
    )
    .unwrap();
}
