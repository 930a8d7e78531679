//! Upcasting v1 → v3: old events read as the latest version, and the upcast data is what a
//! v3 producer writes.

use proteus_schemas::{
    CompatibilityMode, SchemaError, SchemaRegistry, UpcastStep, Upcaster, ValueType,
};
use serde_json::{Value, json};

fn v1() -> Value {
    json!({
        "type": "object", "additionalProperties": false,
        "required": ["customer", "total"],
        "properties": {
            "customer": {"type": "string"},
            "total": {"type": "string"},
            "legacy": {"type": "string"},
            "address": {"type": "object", "additionalProperties": false,
                        "required": ["zip"], "properties": {"zip": {"type": "string"}}}
        },
        "examples": [{"customer": "c-1", "total": "12.50", "legacy": "x", "address": {"zip": "1011"}}]
    })
}

fn v2() -> Value {
    json!({
        "type": "object", "additionalProperties": false,
        "required": ["customerId", "total"],
        "properties": {
            "customerId": {"type": "string"},
            "total": {"type": "number"},
            "address": {"type": "object", "additionalProperties": false,
                        "required": ["zip"], "properties": {"zip": {"type": "string"}}}
        },
        "examples": [{"customerId": "c-1", "total": 12.5, "address": {"zip": "1011"}}]
    })
}

fn v3() -> Value {
    json!({
        "type": "object", "additionalProperties": false,
        "required": ["customerId", "total", "currency"],
        "properties": {
            "customerId": {"type": "string"},
            "total": {"type": "number"},
            "currency": {"type": "string", "minLength": 3, "maxLength": 3},
            "shipping": {"type": "object", "additionalProperties": false,
                         "properties": {"zip": {"type": "string"}}}
        }
    })
}

fn v1_to_v2() -> Upcaster {
    serde_json::from_value(json!({"from_version": 1, "to_version": 2, "steps": [
        {"op": "rename", "from": "/customer", "to": "/customerId"},
        {"op": "convert", "path": "/total", "to": "number"},
        {"op": "remove", "path": "/legacy"}
    ]}))
    .unwrap()
}

fn v2_to_v3() -> Upcaster {
    serde_json::from_value(json!({"from_version": 2, "to_version": 3, "steps": [
        {"op": "add", "path": "/currency", "default": "EUR"},
        {"op": "move", "from": "/address/zip", "to": "/shipping/zip"},
        {"op": "remove", "path": "/address"}
    ]}))
    .unwrap()
}

fn registry(mode: CompatibilityMode) -> SchemaRegistry {
    let mut registry = SchemaRegistry::default();
    let t = super::name("OrderPlaced");
    registry.set_mode(&t, mode).unwrap();
    assert_eq!(registry.register(&t, v1(), None).unwrap(), 1);
    assert_eq!(registry.register(&t, v2(), Some(v1_to_v2())).unwrap(), 2);
    assert_eq!(registry.register(&t, v3(), Some(v2_to_v3())).unwrap(), 3);
    registry
}

#[test]
fn v1_and_v2_events_read_as_v3_events() {
    // The upcasters make renames, conversions and moves backward compatible, transitively.
    for mode in [
        CompatibilityMode::Backward,
        CompatibilityMode::BackwardTransitive,
    ] {
        let registry = registry(mode);
        let t = super::name("OrderPlaced");
        let written_v1 = json!({"customer": "c-7", "total": "99.90", "legacy": "old", "address": {"zip": "75001"}});
        let written_v2 = json!({"customerId": "c-7", "total": 99.9, "address": {"zip": "75001"}});
        let written_v3 = json!({"customerId": "c-7", "total": 99.9, "currency": "EUR", "shipping": {"zip": "75001"}});
        registry.validate(&t, Some(1), &written_v1).unwrap();
        registry.validate(&t, Some(2), &written_v2).unwrap();
        registry.validate(&t, Some(3), &written_v3).unwrap();

        let (version, from_v1) = registry.upcast(&t, 1, written_v1.clone()).unwrap();
        assert_eq!(version, 3);
        assert_eq!(
            from_v1, written_v3,
            "v1 upcast equals what a v3 producer writes"
        );
        assert_eq!(registry.validate(&t, Some(3), &from_v1).unwrap(), 3);

        let (_, from_v2) = registry.upcast(&t, 2, written_v2.clone()).unwrap();
        assert_eq!(from_v2, written_v3);
        let (_, same) = registry.upcast(&t, 3, written_v3.clone()).unwrap();
        assert_eq!(same, written_v3, "the latest version is read as it is");

        // A consumer written for v2 reads v1 events as v2.
        assert_eq!(
            registry.upcast_to(&t, 1, 2, written_v1).unwrap(),
            written_v2
        );
    }
}

#[test]
fn optional_members_absent_in_old_events_stay_absent() {
    let registry = registry(CompatibilityMode::Backward);
    let t = super::name("OrderPlaced");
    let (_, data) = registry
        .upcast(&t, 1, json!({"customer": "c", "total": "3"}))
        .unwrap();
    assert_eq!(
        data,
        json!({"customerId": "c", "total": 3, "currency": "EUR"})
    );
    registry.validate(&t, None, &data).unwrap();
}

#[test]
fn without_upcasters_the_rename_is_refused_in_backward_mode() {
    let mut registry = SchemaRegistry::default();
    let t = super::name("OrderPlaced");
    registry.register(&t, v1(), None).unwrap();
    let error = registry.register(&t, v2(), None).unwrap_err();
    let text = error.to_string();
    assert_eq!(error.code(), "incompatible-schema", "{text}");
    assert!(text.contains("/properties/customerId"), "{text}");
}

#[test]
fn a_required_property_with_a_default_is_filled_on_read() {
    let mut registry = SchemaRegistry::default();
    let t = super::name("Paid");
    let old = json!({"type": "object", "additionalProperties": false, "properties": {"amount": {"type": "integer"}}, "required": ["amount"]});
    let new = json!({"type": "object", "additionalProperties": false,
        "properties": {"amount": {"type": "integer"}, "currency": {"type": "string", "default": "EUR"}},
        "required": ["amount", "currency"]});
    registry.register(&t, old, None).unwrap();
    assert_eq!(
        registry.register(&t, new, None).unwrap(),
        2,
        "compatible: it has a default"
    );
    let (_, data) = registry.upcast(&t, 1, json!({"amount": 5})).unwrap();
    assert_eq!(data, json!({"amount": 5, "currency": "EUR"}));
    registry.validate(&t, None, &data).unwrap();
}

#[test]
fn a_value_that_cannot_convert_is_an_error_naming_the_step() {
    let mut registry = SchemaRegistry::default();
    let t = super::name("Counted");
    registry.set_mode(&t, CompatibilityMode::None).unwrap();
    registry
        .register(
            &t,
            json!({"type": "object", "properties": {"n": {"type": "string"}}}),
            None,
        )
        .unwrap();
    let upcaster = Upcaster {
        from_version: 1,
        to_version: 2,
        steps: vec![UpcastStep::Convert {
            path: "/n".into(),
            to: ValueType::Integer,
        }],
    };
    registry
        .register(
            &t,
            json!({"type": "object", "properties": {"n": {"type": "integer"}}}),
            Some(upcaster),
        )
        .unwrap();
    assert_eq!(
        registry.upcast(&t, 1, json!({"n": "12"})).unwrap().1,
        json!({"n": 12})
    );
    let error = registry.upcast(&t, 1, json!({"n": "12.5"})).unwrap_err();
    assert_eq!(error.status(), 422);
    let text = error.to_string();
    assert!(text.contains("step 0 (convert)"), "{text}");
    assert!(text.contains("\"12.5\" has a fractional part"), "{text}");
    assert!(text.contains("from version 1 to 2"), "{text}");
}

#[test]
fn conversions_between_scalars() {
    use ValueType::*;
    use proteus_schemas::upcast::convert;
    assert_eq!(convert(&json!("12.5"), Number).unwrap(), json!(12.5));
    assert_eq!(convert(&json!("12"), Number).unwrap(), json!(12));
    assert_eq!(convert(&json!(12.0), Integer).unwrap(), json!(12));
    assert_eq!(convert(&json!(12.5), String).unwrap(), json!("12.5"));
    assert_eq!(convert(&json!(true), String).unwrap(), json!("true"));
    assert_eq!(convert(&json!("false"), Boolean).unwrap(), json!(false));
    assert_eq!(convert(&json!(1), Boolean).unwrap(), json!(true));
    assert_eq!(convert(&json!(true), Integer).unwrap(), json!(1));
    assert_eq!(convert(&Value::Null, Integer).unwrap(), Value::Null);
    for (value, to) in [
        (json!("abc"), Number),
        (json!("12.5"), Integer),
        (json!(1e300), Integer),
        (json!("yes"), Boolean),
        (json!(2), Boolean),
        (json!({"a": 1}), String),
        (json!([1]), Number),
        (json!("NaN"), Number),
        (json!("inf"), Number),
    ] {
        let error = convert(&value, to).unwrap_err();
        assert!(!error.is_empty());
    }
}

#[test]
fn upcasters_with_bad_steps_are_refused_at_registration() {
    let mut registry = SchemaRegistry::default();
    let t = super::name("E");
    registry.set_mode(&t, CompatibilityMode::None).unwrap();
    registry
        .register(&t, json!({"type": "object"}), None)
        .unwrap();
    for (steps, expected) in [
        (
            json!([{"op": "rename", "from": "/a/b", "to": "/c"}]),
            "use \\\"op\\\": \\\"move\\\"",
        ),
        (
            json!([{"op": "move", "from": "/a", "to": "/a/b"}]),
            "cannot move into itself",
        ),
        (
            json!([{"op": "remove", "path": "a"}]),
            "must start with '/'",
        ),
        (
            json!([{"op": "remove", "path": ""}]),
            "names the whole event",
        ),
        (json!([{"op": "remove", "path": "/a~2"}]), "'~0' for '~'"),
    ] {
        let upcaster: Upcaster =
            serde_json::from_value(json!({"from_version": 1, "to_version": 2, "steps": steps}))
                .unwrap();
        let error = registry
            .register(&t, json!({"type": "object", "title": "2"}), Some(upcaster))
            .unwrap_err();
        assert_eq!(error.code(), "invalid-upcaster", "{error}");
        assert!(
            format!("{error:?}").contains(expected),
            "{error:?} should contain {expected}"
        );
    }
    let unknown_op = serde_json::from_value::<Upcaster>(
        json!({"from_version": 1, "to_version": 2, "steps": [{"op": "copy", "path": "/a"}]}),
    );
    assert!(
        unknown_op
            .unwrap_err()
            .to_string()
            .contains("unknown variant `copy`")
    );
}

#[test]
fn old_examples_must_survive_the_upcaster() {
    let mut registry = SchemaRegistry::default();
    let t = super::name("OrderPlaced");
    registry.set_mode(&t, CompatibilityMode::None).unwrap();
    registry.register(&t, v1(), None).unwrap();
    // Forgets to remove /legacy: the example keeps a member v2 (closed) rejects.
    let mut upcaster = v1_to_v2();
    upcaster.steps.pop();
    let error = registry.register(&t, v2(), Some(upcaster)).unwrap_err();
    assert_eq!(error.code(), "upcaster-example-rejected", "{error}");
    assert!(
        error.to_string().contains("example 0 of version 1"),
        "{error}"
    );
}

#[test]
fn upcasting_outside_the_versions_names_them() {
    let registry = registry(CompatibilityMode::Backward);
    let t = super::name("OrderPlaced");
    let error = registry.upcast(&t, 4, json!({})).unwrap_err();
    assert!(
        matches!(
            error,
            SchemaError::UnknownVersion {
                version: 4,
                latest: 3,
                ..
            }
        ),
        "{error}"
    );
    let error = registry.upcast(&t, 0, json!({})).unwrap_err();
    assert!(
        matches!(error, SchemaError::UnknownVersion { version: 0, .. }),
        "{error}"
    );
    let error = registry.upcast_to(&t, 3, 1, json!({})).unwrap_err();
    assert_eq!(error.code(), "upcast-backwards");
    let error = registry
        .upcast(&super::name("Nope"), 1, json!({}))
        .unwrap_err();
    assert_eq!(error.status(), 404);
}
