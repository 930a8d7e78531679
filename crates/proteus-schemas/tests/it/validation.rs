//! Validation of data and of schemas, and never panicking on arbitrary input.

use proptest::prelude::*;
use proteus_schemas::{
    CompatibilityMode, RegistryConfig, RegistryLimits, SchemaError, SchemaRegistry, UpcastStep,
    Upcaster, ValueType,
};
use serde_json::{Value, json};

fn order_schema() -> Value {
    json!({
        "type": "object", "required": ["id", "items", "placedAt"],
        "properties": {
            "id": {"type": "string", "minLength": 1},
            "placedAt": {"type": "string", "format": "date-time"},
            "items": {"type": "array", "items": {
                "type": "object", "required": ["sku", "price"],
                "properties": {"sku": {"type": "string"}, "price": {"type": "number", "minimum": 0}}
            }}
        }
    })
}

#[test]
fn violations_name_their_paths() {
    let mut registry = SchemaRegistry::default();
    let t = super::name("OrderPlaced");
    registry.register(&t, order_schema(), None).unwrap();
    let data = json!({"id": "", "placedAt": "yesterday", "items": [{"sku": "a", "price": 1}, {"sku": 2, "price": -1}]});
    let error = registry.validate(&t, None, &data).unwrap_err();
    let SchemaError::Invalid {
        version,
        violations,
        truncated,
        ..
    } = &error
    else {
        panic!("{error}")
    };
    assert_eq!(*version, 1);
    assert!(!truncated);
    let paths: Vec<&str> = violations
        .iter()
        .map(|v| v.instance_path.as_str())
        .collect();
    for expected in ["/id", "/placedAt", "/items/1/sku", "/items/1/price"] {
        assert!(paths.contains(&expected), "{expected} missing in {paths:?}");
    }
    let price = violations
        .iter()
        .find(|v| v.instance_path == "/items/1/price")
        .unwrap();
    assert_eq!(
        price.schema_path,
        "/properties/items/items/properties/price/minimum"
    );
    assert_eq!(error.status(), 422);
    assert!(error.to_string().contains("at /items/1/sku"), "{error}");
    let missing = registry
        .validate(&t, None, &json!({"id": "x"}))
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("missing properties") || missing.contains("items"),
        "{missing}"
    );
}

#[test]
fn the_number_of_violations_returned_is_bounded() {
    let limits = RegistryLimits {
        validation_errors_max: 3,
        ..RegistryLimits::default()
    };
    let mut registry = SchemaRegistry::new(RegistryConfig {
        limits,
        ..RegistryConfig::default()
    })
    .unwrap();
    let t = super::name("Many");
    registry
        .register(
            &t,
            json!({"type": "array", "items": {"type": "integer"}}),
            None,
        )
        .unwrap();
    let data = json!(["a", "b", "c", "d", "e", "f"]);
    let SchemaError::Invalid {
        violations,
        truncated,
        ..
    } = registry.validate(&t, None, &data).unwrap_err()
    else {
        panic!()
    };
    assert_eq!(violations.len(), 3);
    assert!(truncated);
}

#[test]
fn bad_schemas_are_refused_with_the_reason() {
    let mut registry = SchemaRegistry::default();
    let t = super::name("E");
    let error = registry
        .register(&t, json!({"type": "strin"}), None)
        .unwrap_err();
    assert_eq!(error.code(), "invalid-schema");
    assert!(
        error.to_string().contains("not a valid JSON Schema"),
        "{error}"
    );
    let error = registry
        .register(&t, json!(["not", "a", "schema"]), None)
        .unwrap_err();
    assert!(
        error.to_string().contains("a JSON Schema is an object"),
        "{error}"
    );
    let error = registry
        .register(&t, json!({"$ref": "https://example.com/order.json"}), None)
        .unwrap_err();
    assert_eq!(error.code(), "invalid-schema");
    let error = registry
        .register(&t, json!({"$ref": "other.json"}), None)
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("inline the referenced schema under $defs"),
        "{error}"
    );
    let error = registry
        .register(&t, json!({"type": "integer", "examples": ["x"]}), None)
        .unwrap_err();
    assert!(
        error.to_string().contains("example 0 does not match"),
        "{error}"
    );
    // Local references work.
    let with_defs = json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "$defs": {"a": {"type": "integer"}}});
    registry.register(&t, with_defs, None).unwrap();
    assert!(registry.validate(&t, None, &json!({"a": "x"})).is_err());
    assert!(registry.validate(&t, None, &json!({"a": 1})).is_ok());
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-c0-9.~/ -]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-c0-2]{1,2}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn pointer() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            "[a-c]",
            "[0-2]",
            Just("-".to_owned()),
            Just("~1".to_owned())
        ],
        1..4,
    )
    .prop_map(|tokens| tokens.iter().map(|t| format!("/{t}")).collect())
}

fn value_type() -> impl Strategy<Value = ValueType> {
    prop_oneof![
        Just(ValueType::String),
        Just(ValueType::Number),
        Just(ValueType::Integer),
        Just(ValueType::Boolean)
    ]
}

fn step() -> impl Strategy<Value = UpcastStep> {
    prop_oneof![
        (pointer(), pointer()).prop_map(|(from, to)| UpcastStep::Move { from, to }),
        (pointer(), json_value()).prop_map(|(path, default)| UpcastStep::Add { path, default }),
        pointer().prop_map(|path| UpcastStep::Remove { path }),
        (pointer(), value_type()).prop_map(|(path, to)| UpcastStep::Convert { path, to }),
        (pointer(), "[a-c]").prop_map(|(from, last)| {
            let parent = from.rsplit_once('/').map_or("", |(p, _)| p).to_owned();
            UpcastStep::Rename {
                from,
                to: format!("{parent}/{last}"),
            }
        }),
    ]
}

fn schema() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(json!({"type": "string"})),
        Just(json!({"type": "integer", "minimum": 0})),
        Just(json!({"type": ["number", "null"]})),
        Just(json!({"enum": ["a", "b", 1]})),
        Just(json!(true)),
        Just(json!({"not": {"type": "string"}})),
        Just(json!({"$ref": "#/$defs/x"})),
    ];
    leaf.prop_recursive(3, 24, 3, |inner| {
        prop_oneof![
            (prop::collection::btree_map("[a-c]", inner.clone(), 0..3), any::<bool>(), prop::collection::vec("[a-c]", 0..2))
                .prop_map(|(props, closed, required)| {
                    json!({"type": "object", "properties": props, "required": required, "additionalProperties": !closed})
                }),
            inner.clone().prop_map(|items| json!({"type": "array", "items": items})),
            prop::collection::vec(inner, 1..3).prop_map(|branches| json!({"anyOf": branches})),
        ]
    })
    .prop_map(|mut s| {
        if let Value::Object(o) = &mut s {
            o.insert("$defs".into(), json!({"x": {"type": "string"}}));
        }
        s
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn upcasting_never_panics(data in json_value(), steps in prop::collection::vec(step(), 0..6)) {
        let upcaster = Upcaster { from_version: 1, to_version: 2, steps };
        let mut copy = data.clone();
        let _ = upcaster.apply(&mut copy);

        let mut registry = SchemaRegistry::default();
        let t = super::name("Fuzz");
        registry.set_mode(&t, CompatibilityMode::None).unwrap();
        registry.register(&t, json!({}), None).unwrap();
        if upcaster.check().is_ok() {
            registry.register(&t, json!({"title": "v2"}), Some(upcaster)).unwrap();
            let _ = registry.upcast(&t, 1, data);
        }
    }

    #[test]
    fn compatibility_checks_never_panic(old in schema(), new in schema(), mode_index in 0usize..7) {
        let mut registry = SchemaRegistry::default();
        let t = super::name("Fuzz");
        registry.set_mode(&t, CompatibilityMode::None).unwrap();
        if registry.register(&t, old.clone(), None).is_ok() {
            registry.set_mode(&t, proteus_schemas::COMPATIBILITY_MODES[mode_index]).unwrap();
            let _ = registry.check(&t, &new, None);
            // A schema is always compatible with itself.
            if let Ok(report) = registry.check(&t, &old, None) {
                prop_assert!(report.compatible, "{:?}", report.incompatibilities);
            }
        }
    }
}
