//! The Proteus `segments` extension.

use proteus_flags::{DefinitionErrorKind as Kind, FlagSetBuilder, Reason, Validation};
use serde_json::{Value, json};

use crate::support::{NOW_S, context, strict};

fn beta_flag(targeting: Value) -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off", "targeting": targeting})
}

#[test]
fn segments_are_shared_boolean_rules() {
    let set = strict(json!({
        "flags": {
            "new-ui": beta_flag(json!({"if": [{"segment": "beta-users"}, "on", "off"]})),
            "new-api": beta_flag(json!({"if": [{"and": [{"segment": "beta-users"}, {"segment": "europe"}]}, "on", "off"]}))
        },
        "segments": {
            "beta-users": {"ends_with": [{"var": "email"}, "@example.com"]},
            "europe": {"$ref": "in_europe"}
        },
        "$evaluators": {"in_europe": {"in": [{"var": "country"}, ["FR", "DE", "IT"]]}}
    }));
    let beta = context(json!({"email": "ada@example.com", "country": "US"}));
    assert_eq!(set.evaluate("new-ui", &beta, NOW_S).variant, Some("on"));
    assert_eq!(set.evaluate("new-api", &beta, NOW_S).variant, Some("off"));
    let beta_fr = context(json!({"email": "ada@example.com", "country": "FR"}));
    let evaluation = set.evaluate("new-api", &beta_fr, NOW_S);
    assert_eq!(
        (evaluation.variant, evaluation.reason),
        (Some("on"), Reason::TargetingMatch)
    );
    assert_eq!(
        set.evaluate("new-ui", &context(json!({})), NOW_S).variant,
        Some("off")
    );
}

#[test]
fn segments_are_shared_across_documents_and_later_ones_override() {
    let compiled = FlagSetBuilder::new(Validation::Strict)
        .with_value(json!({"flags": {}, "segments": {"staff": {"==": [{"var": "role"}, "staff"]}}}))
        .with_value(
            json!({"flags": {"f": beta_flag(json!({"if": [{"segment": "staff"}, "on", "off"]}))}}),
        )
        .with_value(json!({"flags": {}, "segments": {"staff": {"==": [{"var": "role"}, "admin"]}}}))
        .build()
        .unwrap();
    let set = compiled.flag_set;
    assert_eq!(
        set.evaluate("f", &context(json!({"role": "staff"})), NOW_S)
            .variant,
        Some("off")
    );
    assert_eq!(
        set.evaluate("f", &context(json!({"role": "admin"})), NOW_S)
            .variant,
        Some("on")
    );
}

#[test]
fn unknown_and_nested_segments_are_rejected_in_every_mode() {
    for validation in [Validation::Strict, Validation::FlagdCompatible] {
        let errors = FlagSetBuilder::new(validation)
            .with_value(json!({
                "flags": {"f": beta_flag(json!({"if": [{"segment": "vip"}, "on", "off"]}))},
                "segments": {"a": {"segment": "b"}, "b": true}
            }))
            .build()
            .unwrap_err();
        let found: Vec<(&str, &Kind)> = errors
            .0
            .iter()
            .map(|e| (e.path.as_str(), &e.kind))
            .collect();
        assert_eq!(
            found,
            [
                ("/segments/a/segment", &Kind::NestedSegment),
                (
                    "/flags/f/targeting/if/0/segment",
                    &Kind::UnknownSegment("vip".into())
                ),
            ]
        );
    }
}
