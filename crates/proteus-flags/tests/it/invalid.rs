//! Invalid definitions: each is rejected with the JSON pointer of the problem and its reason.

use proteus_flags::{
    DefinitionError, DefinitionErrorKind as Kind, ErrorCode, FlagSet, FlagSetBuilder, Reason,
    Validation,
};
use serde_json::{Value, json};

use crate::support::{NOW_S, context};

fn errors(document: Value) -> Vec<DefinitionError> {
    match FlagSetBuilder::new(Validation::Strict)
        .with_value(document)
        .build()
    {
        Ok(_) => panic!("expected the definition to be rejected"),
        Err(errors) => errors.0,
    }
}

/// A document with one flag `f` (string variants `on`/`off`) and the given targeting.
fn with_targeting(targeting: Value) -> Value {
    json!({
        "flags": {"f": {"state": "ENABLED", "variants": {"on": "ON", "off": "OFF"}, "defaultVariant": "off", "targeting": targeting}},
        "$evaluators": {"is_beta": {"==": [{"var": "beta"}, true]}}
    })
}

/// Asserts the document is rejected with exactly one error, at `path`, matching `kind`.
fn assert_one(document: Value, path: &str, kind: impl Fn(&Kind) -> bool) {
    let errors = errors(document);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].path, path, "{errors:#?}");
    assert!(
        kind(&errors[0].kind),
        "unexpected kind: {:?}",
        errors[0].kind
    );
}

#[test]
fn malformed_documents() {
    let errors = FlagSet::from_json("{\"flags\": ").unwrap_err();
    assert!(matches!(errors.0[0].kind, Kind::Json(_)), "{errors}");
    assert_one(json!([]), "", |k| {
        matches!(
            k,
            Kind::WrongType {
                expected: "an object",
                ..
            }
        )
    });
    assert_one(json!({}), "", |k| *k == Kind::MissingProperty("flags"));
    assert_one(json!({"flags": 3}), "/flags", |k| {
        matches!(k, Kind::WrongType { .. })
    });
    assert_one(json!({"flags": {}, "flagz": {}}), "/flagz", |k| {
        matches!(k, Kind::UnknownProperty { .. })
    });
    assert_one(json!({"flags": {"": {}}}), "/flags/", |k| {
        *k == Kind::EmptyKey
    });
}

#[test]
fn malformed_flags() {
    let flag = |f: Value| json!({"flags": {"a/b": f}});
    assert_one(flag(json!("x")), "/flags/a~1b", |k| {
        matches!(k, Kind::WrongType { .. })
    });
    assert_one(
        flag(json!({"variants": {"on": true}})),
        "/flags/a~1b",
        |k| *k == Kind::MissingProperty("state"),
    );
    assert_one(
        flag(json!({"state": "ON", "variants": {"on": true}})),
        "/flags/a~1b/state",
        |k| matches!(k, Kind::InvalidState(s) if s == "\"ON\""),
    );
    assert_one(
        flag(json!({"state": "ENABLED", "variants": {}})),
        "/flags/a~1b/variants",
        |k| *k == Kind::NoVariants,
    );
    assert_one(
        flag(json!({"state": "ENABLED", "variants": {"a": true, "b": "yes"}})),
        "/flags/a~1b/variants/b",
        |k| matches!(k, Kind::MixedVariantTypes { first, variant, .. } if first == "a" && variant == "b"),
    );
    assert_one(
        flag(json!({"state": "ENABLED", "variants": {"a": [1]}})),
        "/flags/a~1b/variants/a",
        |k| *k == Kind::InvalidVariantValue("an array"),
    );
    assert_one(
        flag(json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "off"})),
        "/flags/a~1b/defaultVariant",
        |k| matches!(k, Kind::UnknownVariant { name, known } if name == "off" && known == "on"),
    );
    assert_one(
        flag(json!({"state": "ENABLED", "variants": {"on": true}, "defaultVariant": 1})),
        "/flags/a~1b/defaultVariant",
        |k| matches!(k, Kind::WrongType { .. }),
    );
    assert_one(
        flag(json!({"state": "ENABLED", "variants": {"on": true}, "colour": "red"})),
        "/flags/a~1b/colour",
        |k| matches!(k, Kind::UnknownProperty { name, .. } if name == "colour"),
    );
    assert_one(
        flag(json!({"state": "ENABLED", "variants": {"on": true}, "metadata": {"tags": ["a"]}})),
        "/flags/a~1b/metadata/tags",
        |k| *k == Kind::InvalidMetadataValue("an array"),
    );
    assert_one(
        flag(json!({"state": "ENABLED", "variants": {"on": true}, "targeting": "on"})),
        "/flags/a~1b/targeting",
        |k| matches!(k, Kind::WrongType { .. }),
    );
}

#[test]
fn array_form_needs_unique_keys() {
    let flag = json!({"key": "a", "state": "ENABLED", "variants": {"on": true}});
    assert_one(
        json!({"flags": [flag.clone(), flag]}),
        "/flags/1/key",
        |k| *k == Kind::DuplicateFlag("a".into()),
    );
    assert_one(
        json!({"flags": [{"state": "ENABLED", "variants": {"on": true}}]}),
        "/flags/0",
        |k| *k == Kind::MissingProperty("key"),
    );
}

#[test]
fn malformed_targeting() {
    let path = "/flags/f/targeting";
    assert_one(
        with_targeting(json!({"if": [{"bogus": [1]}, "on", "off"]})),
        &format!("{path}/if/0/bogus"),
        |k| *k == Kind::UnknownOperator("bogus".into()),
    );
    assert_one(
        with_targeting(json!({"if": [{"==": [1, 1], "!=": [1, 2]}, "on", "off"]})),
        &format!("{path}/if/0"),
        |k| *k == Kind::MalformedOperation(2),
    );
    assert_one(
        with_targeting(json!({"if": [{"==": [1, 1, 1]}, "on", "off"]})),
        &format!("{path}/if/0/=="),
        |k| {
            matches!(
                k,
                Kind::Arity {
                    operator: "==",
                    found: 3,
                    ..
                }
            )
        },
    );
    assert_one(
        with_targeting(json!({"if": [{"$ref": "is_alpha"}, "on", "off"]})),
        &format!("{path}/if/0/$ref"),
        |k| *k == Kind::MissingEvaluator("is_alpha".into()),
    );
    assert_one(
        with_targeting(json!({"if": [true, "maybe", "off"]})),
        &format!("{path}/if/1"),
        |k| matches!(k, Kind::UnknownVariant { name, known } if name == "maybe" && known == "off, on"),
    );
    assert_one(
        with_targeting(json!({"if": [{"==": [{"var": "$flagd.region"}, "eu"]}, "on"]})),
        &format!("{path}/if/0/==/0/var"),
        |k| *k == Kind::UnknownFlagdProperty("region".into()),
    );
    let errors = errors(
        json!({"flags": {}, "$evaluators": {"a": {"$ref": "b"}, "b": {"!": {"$ref": "a"}}}}),
    );
    assert!(
        errors.iter().any(|e| e.path == "/$evaluators/b/!/$ref"
            && matches!(&e.kind, Kind::EvaluatorCycle(name, _) if name == "a")),
        "{errors:#?}"
    );
}

#[test]
fn malformed_custom_operations() {
    let path = "/flags/my-flag/targeting";
    let flag = |targeting: Value| json!({"flags": {"my-flag": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off", "targeting": targeting}}});
    let reason = |expected: &'static str| move |k: &Kind| matches!(k, Kind::InvalidArgument { reason, .. } if reason.contains(expected));
    assert_one(
        flag(json!({"if": [{"fractional": ["seed", "oops"]}, "on", "off"]})),
        &format!("{path}/if/0/fractional/1"),
        reason("each bucket is an array"),
    );
    assert_one(
        flag(json!({"fractional": [["on", 1.5], ["off", 1]]})),
        &format!("{path}/fractional/0/1"),
        reason("integers"),
    );
    assert_one(
        flag(json!({"fractional": [["on", -1], ["off", 1]]})),
        &format!("{path}/fractional/0/1"),
        reason("negative"),
    );
    assert_one(
        flag(json!({"fractional": [["on", 2147483647], ["off", 1]]})),
        &format!("{path}/fractional"),
        reason("add up to 2147483648"),
    );
    assert_one(
        flag(json!({"fractional": [7, ["on", 1]]})),
        &format!("{path}/fractional/0"),
        reason("bucketing value"),
    );
    assert_one(
        flag(json!({"fractional": [["on", "1"]]})),
        &format!("{path}/fractional/0/1"),
        reason("a weight must be a number"),
    );
    assert_one(
        flag(json!({"fractional": [["maybe", 1]]})),
        &format!("{path}/fractional/0/0"),
        |k| matches!(k, Kind::UnknownVariant { .. }),
    );
    assert_one(
        flag(json!({"sem_ver": [{"var": "v"}, ">=", "1.0.0.0"]})),
        &format!("{path}/sem_ver/2"),
        reason("is not a semantic version"),
    );
    assert_one(
        flag(json!({"sem_ver": [{"var": "v"}, "=>", "1.0.0"]})),
        &format!("{path}/sem_ver/1"),
        reason("unknown operator `=>`"),
    );
    assert_one(
        flag(json!({"sem_ver": [{"var": "v"}, ">="]})),
        &format!("{path}/sem_ver"),
        |k| {
            matches!(
                k,
                Kind::Arity {
                    operator: "sem_ver",
                    found: 2,
                    ..
                }
            )
        },
    );
    assert_one(
        flag(json!({"starts_with": [{"var": "v"}, 3]})),
        &format!("{path}/starts_with/1"),
        reason("expected a string"),
    );
    assert_one(
        flag(json!({"segment": "beta"})),
        &format!("{path}/segment"),
        |k| *k == Kind::UnknownSegment("beta".into()),
    );
}

#[test]
fn limits_are_enforced() {
    let mut deep = json!("on");
    for _ in 0..proteus_flags::TARGETING_DEPTH_MAX + 1 {
        deep = json!({"if": [true, deep]});
    }
    let too_deep = errors(with_targeting(deep));
    assert!(
        matches!(too_deep[0].kind, Kind::TargetingTooDeep(_)),
        "{too_deep:?}"
    );

    let variants: serde_json::Map<String, Value> = (0..=proteus_flags::VARIANTS_MAX)
        .map(|i| (format!("v{i}"), json!(i)))
        .collect();
    assert_one(
        json!({"flags": {"f": {"state": "ENABLED", "variants": variants}}}),
        "/flags/f/variants",
        |k| {
            matches!(
                k,
                Kind::TooMany {
                    what: "variants",
                    ..
                }
            )
        },
    );

    // Each evaluator refers twice to the previous one: 2^20 nodes once expanded.
    let mut evaluators = serde_json::Map::new();
    evaluators.insert("e0".into(), json!({"var": "x"}));
    for i in 1..20 {
        evaluators.insert(
            format!("e{i}"),
            json!({"and": [{"$ref": format!("e{}", i - 1)}, {"$ref": format!("e{}", i - 1)}]}),
        );
    }
    let document = json!({"flags": {"f": {"state": "ENABLED", "variants": {"true": 1, "false": 0}, "targeting": {"$ref": "e19"}}}, "$evaluators": evaluators});
    let too_large = errors(document);
    assert!(
        too_large
            .iter()
            .any(|e| matches!(e.kind, Kind::TargetingTooLarge(_))),
        "{too_large:?}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let document = json!({"flags": {
        "a": {"state": "ON", "variants": {"x": 1}},
        "b": {"state": "ENABLED", "variants": {"x": 1}, "defaultVariant": "y"},
        "c": {"state": "ENABLED", "variants": {"x": 1}, "targeting": {"nope": []}}
    }});
    let errors = errors(document);
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/flags/a/state",
            "/flags/b/defaultVariant",
            "/flags/c/targeting/nope"
        ]
    );
    assert_eq!(
        errors[1].to_string(),
        "/flags/b/defaultVariant: `y` is not a variant of this flag (variants: x)"
    );
}

#[test]
fn errors_name_their_document() {
    let errors = FlagSetBuilder::new(Validation::Strict)
        .with_json(r#"{"flags": {}}"#)
        .with_json(r#"{"flags": {"a": {"state": "ENABLED", "variants": {}}}}"#)
        .build()
        .unwrap_err();
    assert_eq!(errors.0[0].document, 1);
    assert_eq!(
        errors.to_string(),
        "document 1 /flags/a/variants: a flag needs at least one variant"
    );
}

#[test]
fn compatible_mode_evaluates_tolerated_problems_as_flagd_does() {
    let document = with_targeting(json!({"if": [{"bogus": [1]}, "on", "off"]}));
    let compiled = FlagSetBuilder::new(Validation::FlagdCompatible)
        .with_value(document)
        .build()
        .unwrap();
    assert_eq!(compiled.warnings.len(), 1);
    let evaluation = compiled.flag_set.evaluate("f", &context(json!({})), NOW_S);
    assert_eq!(evaluation.reason, Reason::Error);
    assert_eq!(evaluation.error, Some(ErrorCode::ParseError));
    assert_eq!(
        evaluation.error_message.as_deref(),
        Some("unknown operator `bogus`")
    );

    // Structural problems are errors in every mode.
    let document = json!({"flags": {"f": {"state": "ENABLED", "variants": {"on": 1, "off": "0"}}}});
    assert!(
        FlagSetBuilder::new(Validation::FlagdCompatible)
            .with_value(document)
            .build()
            .is_err()
    );
}
