//! Registration, idempotency, gaps, modes, changes and their replay, limits.

use proteus_schemas::{
    AppendCheck, CompatibilityMode, EventTypeName, Registration, RegistryChange, RegistryConfig,
    RegistryLimits, SchemaError, SchemaPolicy, SchemaRegistry, Upcaster,
};
use serde_json::{Value, json};

fn object(props: Value) -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": props})
}

#[test]
fn registering_the_same_schema_again_returns_its_version() {
    let mut registry = SchemaRegistry::default();
    let t = super::name("OrderPlaced");
    let v1 = object(json!({"id": {"type": "string"}}));
    let v2 = object(json!({"id": {"type": "string"}, "note": {"type": "string"}}));
    assert_eq!(registry.register(&t, v1.clone(), None).unwrap(), 1);
    assert_eq!(registry.register(&t, v1.clone(), None).unwrap(), 1);
    assert_eq!(registry.register(&t, v2.clone(), None).unwrap(), 2);
    assert_eq!(registry.register(&t, v2.clone(), None).unwrap(), 2);
    assert_eq!(
        registry.prepare_register(&t, v1.clone(), None).unwrap(),
        Registration::Existing(1),
        "an older version too, as in Confluent"
    );
    assert_eq!(registry.versions(&t).unwrap().len(), 2);
    let report = registry.check(&t, &v2, None).unwrap();
    assert_eq!(report.existing_version, Some(2));
    assert!(report.compatible);
    // The same schema with a different upcaster is a conflict, not a silent success.
    let other = Upcaster {
        from_version: 1,
        to_version: 2,
        steps: vec![],
    };
    let error = registry.register(&t, v2, Some(other)).unwrap_err();
    assert_eq!(error.code(), "upcaster-conflict");
    assert_eq!(error.status(), 409);
}

#[test]
fn a_breaking_change_without_upcaster_leaves_a_gap_and_is_refused() {
    let mut registry = SchemaRegistry::default();
    let t = super::name("OrderPlaced");
    registry.set_mode(&t, CompatibilityMode::None).unwrap();
    registry
        .register(&t, object(json!({"total": {"type": "string"}})), None)
        .unwrap();
    let v2 = object(json!({"total": {"type": "number"}}));
    let report = registry.check(&t, &v2, None).unwrap();
    assert!(report.compatible, "mode NONE checks nothing");
    assert!(report.upcaster_required);
    let error = registry.register(&t, v2.clone(), None).unwrap_err();
    assert_eq!(error.code(), "upcaster-missing");
    let text = error.to_string();
    assert!(
        text.contains("upcaster from version 1 to 2 is missing"),
        "{text}"
    );
    assert!(text.contains("/properties/total"), "{text}");
    assert!(
        text.contains("{\"from_version\":1,\"to_version\":2,\"steps\":[...]}"),
        "{text}"
    );

    // Wrong versions name the expected ones.
    let skipping = Upcaster {
        from_version: 1,
        to_version: 3,
        steps: vec![],
    };
    let error = registry
        .register(&t, v2.clone(), Some(skipping))
        .unwrap_err();
    assert!(
        matches!(error, SchemaError::UpcasterVersions { from: 1, to: 2, .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("declare \"from_version\": 1, \"to_version\": 2"),
        "{error}"
    );

    // An explicit (even empty) upcaster closes the gap knowingly.
    let as_is = Upcaster {
        from_version: 1,
        to_version: 2,
        steps: vec![],
    };
    assert_eq!(registry.register(&t, v2, Some(as_is)).unwrap(), 2);
}

#[test]
fn the_first_version_has_no_upcaster() {
    let mut registry = SchemaRegistry::default();
    let t = super::name("E");
    let upcaster = Upcaster {
        from_version: 0,
        to_version: 1,
        steps: vec![],
    };
    let error = registry
        .register(&t, json!({"type": "object"}), Some(upcaster))
        .unwrap_err();
    assert_eq!(error.code(), "invalid-upcaster");
}

#[test]
fn changes_serialise_and_replay_to_the_same_state() {
    let mut registry = SchemaRegistry::default();
    let mut log: Vec<String> = Vec::new();
    let t = super::name("com.shop.order.placed");
    let mut record = |registry: &mut SchemaRegistry, change: RegistryChange| {
        log.push(serde_json::to_string(&change).unwrap());
        registry.apply(&change).unwrap();
    };
    let change = registry
        .prepare_set_mode(&t, CompatibilityMode::FullTransitive)
        .unwrap();
    record(&mut registry, change);
    let Registration::New(change) = registry
        .prepare_register(&t, object(json!({"a": {"type": "integer"}})), None)
        .unwrap()
    else {
        panic!("a new type makes a change")
    };
    record(&mut registry, change);
    let v2 = json!({"type": "object", "additionalProperties": false, "properties": {"a": {"type": "integer"}}, "description": "v2"});
    let Registration::New(change) = registry.prepare_register(&t, v2, None).unwrap() else {
        panic!()
    };
    record(&mut registry, change);

    let first: Value = serde_json::from_str(&log[0]).unwrap();
    assert_eq!(
        first,
        json!({"kind": "set_mode", "event_type": "com.shop.order.placed", "mode": "FULL_TRANSITIVE"})
    );
    let second: Value = serde_json::from_str(&log[1]).unwrap();
    assert_eq!(second["kind"], "register");
    assert_eq!(second["version"], 1);
    assert!(second.get("upcaster").is_none());

    let mut replayed = SchemaRegistry::default();
    for line in &log {
        replayed
            .apply(&serde_json::from_str(line).unwrap())
            .unwrap();
    }
    assert_eq!(replayed.list(), registry.list());
    for version in 1..=2 {
        assert_eq!(
            replayed.get(&t, version).unwrap().schema,
            registry.get(&t, version).unwrap().schema
        );
    }
    // Replaying a change twice, or out of order, is refused rather than corrupting the state.
    let error = replayed
        .apply(&serde_json::from_str(&log[1]).unwrap())
        .unwrap_err();
    assert!(
        matches!(
            error,
            SchemaError::ChangeOutOfOrder {
                got: 1,
                expected: 3,
                ..
            }
        ),
        "{error}"
    );
    // Lower-case modes are accepted in changes too.
    let change: RegistryChange =
        serde_json::from_value(json!({"kind": "set_mode", "event_type": "X", "mode": "forward"}))
            .unwrap();
    assert_eq!(
        change,
        RegistryChange::SetMode {
            event_type: super::name("X"),
            mode: CompatibilityMode::Forward
        }
    );
}

#[test]
fn modes_are_per_type_with_a_default() {
    let config = RegistryConfig {
        default_mode: CompatibilityMode::Full,
        ..RegistryConfig::default()
    };
    let mut registry = SchemaRegistry::new(config).unwrap();
    let (a, b) = (super::name("A"), super::name("B"));
    registry.set_mode(&b, CompatibilityMode::None).unwrap();
    assert_eq!(registry.mode(&a), CompatibilityMode::Full);
    assert_eq!(registry.mode(&b), CompatibilityMode::None);
    let list = registry.list();
    assert_eq!(list.len(), 1);
    assert!(list[0].mode_set);
    assert_eq!(list[0].latest_version, None);
    assert_eq!(
        registry.latest(&b).unwrap_err().code(),
        "unknown-event-type"
    );
}

#[test]
fn event_type_names_are_checked() {
    for good in [
        "OrderPlaced",
        "com.shop.order.placed",
        "urn:event:v1",
        "a_b-c",
        &"x".repeat(200),
    ] {
        EventTypeName::parse(good).unwrap();
    }
    for (bad, why) in [
        ("", "empty"),
        ("order placed", "' '"),
        ("ordre/placé", "'/'"),
        (&"x".repeat(201) as &str, "201 bytes"),
    ] {
        let error = EventTypeName::parse(bad).unwrap_err().to_string();
        assert!(error.contains(why), "{error}");
    }
    assert!(serde_json::from_value::<EventTypeName>(json!("bad name")).is_err());
}

#[test]
fn limits_are_enforced_with_their_names() {
    let limits = RegistryLimits {
        schema_bytes_max: 200,
        versions_per_type_max: 3,
        event_types_max: 2,
        ..RegistryLimits::default()
    };
    let mut registry = SchemaRegistry::new(RegistryConfig {
        limits,
        default_mode: CompatibilityMode::None,
    })
    .unwrap();
    let t = super::name("T");
    let big = json!({"type": "object", "description": "x".repeat(300)});
    let error = registry.register(&t, big, None).unwrap_err();
    assert_eq!(error.status(), 413);
    assert!(error.to_string().contains("the most is 200"), "{error}");

    for i in 1..=3 {
        let upcaster = (i > 1).then(|| Upcaster {
            from_version: i - 1,
            to_version: i,
            steps: vec![],
        });
        registry
            .register(&t, json!({"title": format!("v{i}")}), upcaster)
            .unwrap();
    }
    let upcaster = Upcaster {
        from_version: 3,
        to_version: 4,
        steps: vec![],
    };
    let error = registry
        .register(&t, json!({"title": "v4"}), Some(upcaster))
        .unwrap_err();
    assert_eq!(error.code(), "too-many-versions");
    assert!(
        error.to_string().contains("already has 3 versions"),
        "{error}"
    );

    registry
        .set_mode(&super::name("U"), CompatibilityMode::None)
        .unwrap();
    let error = registry
        .register(&super::name("V"), json!({}), None)
        .unwrap_err();
    assert_eq!(error.code(), "too-many-event-types");
    assert_eq!(
        registry
            .set_mode(&super::name("V"), CompatibilityMode::None)
            .unwrap_err()
            .code(),
        "too-many-event-types"
    );

    let tiny = RegistryLimits {
        versions_per_type_max: 2,
        ..RegistryLimits::default()
    };
    let error = SchemaRegistry::new(RegistryConfig {
        limits: tiny,
        ..RegistryConfig::default()
    })
    .unwrap_err();
    assert!(error.to_string().contains("two versions back"), "{error}");
}

#[test]
fn appends_follow_the_schema_policy() {
    let mut registry = SchemaRegistry::default();
    let t = super::name("OrderPlaced");
    // A mode set for a type gives it no schema: appends under the lenient policy still have
    // nothing to check (the server skips them then).
    registry.set_mode(&t, CompatibilityMode::None).unwrap();
    assert!(!registry.has_any_schema());
    registry
        .register(&t, object(json!({"id": {"type": "string"}})), None)
        .unwrap();
    assert!(registry.has_any_schema());
    let good = json!({"id": "o-1"});
    let bad = json!({"id": 1});
    for policy in [SchemaPolicy::Lenient, SchemaPolicy::Strict] {
        assert_eq!(
            registry
                .check_append(policy, "OrderPlaced", None, &good)
                .unwrap(),
            AppendCheck::Validated { version: 1 }
        );
        assert_eq!(
            registry
                .check_append(policy, "OrderPlaced", Some(1), &bad)
                .unwrap_err()
                .code(),
            "schema-violation"
        );
        assert_eq!(
            registry
                .check_append(policy, "OrderPlaced", Some(9), &good)
                .unwrap_err()
                .code(),
            "unknown-version"
        );
    }
    assert_eq!(
        registry
            .check_append(SchemaPolicy::Lenient, "Other", None, &bad)
            .unwrap(),
        AppendCheck::Unchecked
    );
    assert_eq!(
        registry
            .check_append(SchemaPolicy::Lenient, "not a type name", None, &bad)
            .unwrap(),
        AppendCheck::Unchecked
    );
    let error = registry
        .check_append(SchemaPolicy::Strict, "OrderPlacd", None, &good)
        .unwrap_err();
    assert_eq!(error.status(), 422);
    assert!(
        error
            .to_string()
            .contains("'OrderPlacd' has no schema and the schema policy is strict"),
        "{error}"
    );
}
