//! The Proteus `prerequisites` extension.

use proteus_flags::{DefinitionErrorKind as Kind, FlagSetBuilder, Reason, Validation};
use serde_json::{Value, json};

use crate::support::{NOW_S, context, strict};

fn switch(targeting: Value) -> Value {
    json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off", "targeting": targeting})
}

fn checkout(prerequisites: Value) -> Value {
    json!({
        "state": "ENABLED",
        "variants": {"new": "new", "old": "old"},
        "defaultVariant": "old",
        "targeting": {"if": [{"==": [{"var": "country"}, "FR"]}, "new", "old"]},
        "prerequisites": prerequisites
    })
}

#[test]
fn targeting_runs_only_when_every_prerequisite_is_met() {
    let set = strict(json!({"flags": {
        "kill-switch": switch(json!({"if": [{"var": "beta"}, "on", "off"]})),
        "region-ready": switch(json!({"if": [{"in": [{"var": "country"}, ["FR", "DE"]]}, "on"]})),
        "checkout": checkout(json!([
            {"flag": "kill-switch", "variants": ["on"]},
            {"flag": "region-ready", "variants": ["on"]}
        ]))
    }}));
    let met = set.evaluate(
        "checkout",
        &context(json!({"beta": true, "country": "FR"})),
        NOW_S,
    );
    assert_eq!(
        (met.variant, met.reason),
        (Some("new"), Reason::TargetingMatch)
    );

    let unmet = set.evaluate(
        "checkout",
        &context(json!({"beta": false, "country": "FR"})),
        NOW_S,
    );
    assert_eq!(
        (unmet.variant, unmet.reason, unmet.error),
        (Some("old"), Reason::Default, None)
    );

    let second_unmet = set.evaluate(
        "checkout",
        &context(json!({"beta": true, "country": "IT"})),
        NOW_S,
    );
    assert_eq!(
        (second_unmet.variant, second_unmet.reason),
        (Some("old"), Reason::Default)
    );
    assert_eq!(
        set.flag("checkout")
            .unwrap()
            .prerequisites()
            .collect::<Vec<_>>(),
        ["kill-switch", "region-ready"]
    );
}

#[test]
fn disabled_prerequisites_are_not_met_and_no_default_means_caller_default() {
    let mut flag = checkout(json!([{"flag": "gate", "variants": ["on"]}]));
    flag.as_object_mut().unwrap().remove("defaultVariant");
    let set = strict(json!({"flags": {
        "gate": {"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
        "checkout": flag
    }}));
    let evaluation = set.evaluate("checkout", &context(json!({"country": "FR"})), NOW_S);
    assert_eq!(
        (evaluation.variant, evaluation.value, evaluation.reason),
        (None, None, Reason::Default)
    );
}

#[test]
fn prerequisites_may_live_in_another_document() {
    let compiled = FlagSetBuilder::new(Validation::Strict)
        .with_value(
            json!({"flags": {"gate": switch(json!({"if": [{"var": "beta"}, "on", "off"]}))}}),
        )
        .with_value(
            json!({"flags": {"checkout": checkout(json!([{"flag": "gate", "variants": ["on"]}]))}}),
        )
        .build()
        .unwrap();
    let evaluation = compiled.flag_set.evaluate(
        "checkout",
        &context(json!({"beta": true, "country": "FR"})),
        NOW_S,
    );
    assert_eq!(evaluation.variant, Some("new"));
}

fn rejected(document: Value) -> Vec<(String, Kind)> {
    let errors = FlagSetBuilder::new(Validation::FlagdCompatible)
        .with_value(document)
        .build()
        .unwrap_err();
    errors.0.into_iter().map(|e| (e.path, e.kind)).collect()
}

#[test]
fn cycles_unknown_flags_and_unknown_variants_are_rejected() {
    let cycle = rejected(json!({"flags": {
        "a": checkout(json!([{"flag": "b", "variants": ["new"]}])),
        "b": checkout(json!([{"flag": "c", "variants": ["new"]}])),
        "c": checkout(json!([{"flag": "a", "variants": ["new"]}]))
    }}));
    assert_eq!(
        cycle,
        [(
            "/flags/c/prerequisites/0/flag".to_owned(),
            Kind::PrerequisiteCycle("a -> b -> c -> a".into())
        )]
    );

    let itself =
        rejected(json!({"flags": {"a": checkout(json!([{"flag": "a", "variants": ["new"]}]))}}));
    assert_eq!(
        itself,
        [(
            "/flags/a/prerequisites/0/flag".to_owned(),
            Kind::PrerequisiteCycle("a -> a".into())
        )]
    );

    let unknown =
        rejected(json!({"flags": {"a": checkout(json!([{"flag": "ghost", "variants": ["on"]}]))}}));
    assert_eq!(
        unknown,
        [(
            "/flags/a/prerequisites/0/flag".to_owned(),
            Kind::UnknownPrerequisite("ghost".into())
        )]
    );

    let variant = rejected(json!({"flags": {
        "gate": switch(json!({})),
        "a": checkout(json!([{"flag": "gate", "variants": ["on", "maybe"]}]))
    }}));
    assert_eq!(
        variant,
        [(
            "/flags/a/prerequisites/0/variants/1".to_owned(),
            Kind::UnknownVariant {
                name: "maybe".into(),
                known: "off, on".into()
            }
        )]
    );

    let malformed = rejected(json!({"flags": {"a": checkout(json!([{"flag": "gate"}]))}}));
    assert_eq!(
        malformed,
        [(
            "/flags/a/prerequisites/0".to_owned(),
            Kind::MissingProperty("variants")
        )]
    );
}

#[test]
fn chains_deeper_than_the_limit_are_rejected() {
    let depth = proteus_flags::PREREQUISITE_DEPTH_MAX + 1;
    let mut flags = serde_json::Map::new();
    flags.insert("f0".into(), checkout(json!([])));
    for i in 1..=depth {
        flags.insert(
            format!("f{i}"),
            checkout(json!([{"flag": format!("f{}", i - 1), "variants": ["new", "old"]}])),
        );
    }
    let errors = rejected(json!({"flags": flags.clone()}));
    assert_eq!(
        errors,
        [(
            format!("/flags/f{depth}/prerequisites"),
            Kind::PrerequisitesTooDeep(depth - 1)
        )]
    );

    // One level less is accepted, and evaluates through the whole chain.
    flags.remove(&format!("f{depth}"));
    let set = strict(json!({"flags": flags}));
    let evaluation = set.evaluate(
        &format!("f{}", depth - 1),
        &context(json!({"country": "FR"})),
        NOW_S,
    );
    assert_eq!(evaluation.variant, Some("new"));
}
