//! The typed helpers and the flag-level outcomes (not found, disabled, type mismatch).

use proteus_flags::{ErrorCode, Reason, VariantKind};
use serde_json::{Map, json};

use crate::support::{NOW_S, context, strict};

#[test]
fn typed_helpers_return_values_or_the_callers_default() {
    let set = strict(json!({"flags": {
        "bool": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
        "string": {"state": "ENABLED", "variants": {"a": "alpha"}, "defaultVariant": "a"},
        "int": {"state": "ENABLED", "variants": {"ten": 10, "half": 0.5}, "defaultVariant": "ten",
                "targeting": {"if": [{"var": "half"}, "half"]}},
        "object": {"state": "ENABLED", "variants": {"o": {"k": 1}}, "defaultVariant": "o"},
        "off": {"state": "DISABLED", "variants": {"on": true}, "defaultVariant": "on"}
    }}));
    let empty = context(json!({}));
    assert!(set.evaluate_bool("bool", &empty, NOW_S, false).value);
    assert_eq!(
        set.evaluate_string("string", &empty, NOW_S, "x").value,
        "alpha"
    );
    assert_eq!(set.evaluate_i64("int", &empty, NOW_S, 1).value, 10);
    assert_eq!(set.evaluate_f64("int", &empty, NOW_S, 1.0).value, 10.0);
    let default = Map::new();
    assert_eq!(
        set.evaluate_object("object", &empty, NOW_S, &default)
            .value
            .get("k"),
        Some(&json!(1))
    );

    let mismatch = set.evaluate_i64("string", &empty, NOW_S, 7);
    assert_eq!(
        (mismatch.value, mismatch.reason, mismatch.error),
        (7, Reason::Error, Some(ErrorCode::TypeMismatch))
    );
    let fraction = set.evaluate_i64("int", &context(json!({"half": true})), NOW_S, 3);
    assert_eq!(
        (fraction.value, fraction.error),
        (3, Some(ErrorCode::TypeMismatch))
    );
    assert_eq!(
        set.evaluate_f64("int", &context(json!({"half": true})), NOW_S, 3.0)
            .value,
        0.5
    );

    let missing = set.evaluate_bool("nope", &empty, NOW_S, true);
    assert_eq!(
        (missing.value, missing.reason, missing.error),
        (true, Reason::Error, Some(ErrorCode::FlagNotFound))
    );

    let disabled = set.evaluate_bool("off", &empty, NOW_S, false);
    assert_eq!(
        (
            disabled.value,
            disabled.variant,
            disabled.reason,
            disabled.error
        ),
        (false, None, Reason::Disabled, None)
    );
}

#[test]
fn flags_describe_themselves() {
    let set = strict(json!({"flags": {
        "f": {"state": "DISABLED", "variants": {"a": 1.5, "b": 2}, "defaultVariant": "b", "metadata": {"owner": "growth"}}
    }}));
    let flag = set.flag("f").unwrap();
    assert_eq!(flag.key(), "f");
    assert_eq!(flag.state(), proteus_flags::FlagState::Disabled);
    assert_eq!(flag.kind(), VariantKind::Number);
    assert_eq!(flag.default_variant(), Some("b"));
    assert_eq!(
        flag.variants().map(|(name, _)| name).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert!(!flag.has_targeting());
    assert_eq!(flag.metadata().get("owner"), Some(&json!("growth")));
    assert_eq!(set.len(), 1);
    assert!(set.flag("g").is_none());
}
