//! Property tests: no definition and no context makes compilation or evaluation panic.
//!
//! Case counts: `arbitrary_documents_never_panic` 512 cases, `json_logic_like_rules_never_panic`
//! 2,048 cases (each compiled in both modes and, when valid, evaluated against 4 contexts),
//! `arbitrary_contexts_never_panic` 512 cases (each evaluating all ~190 flags of the reference
//! files). About 1.5 s in a debug build on 2 cores.

use proptest::prelude::*;
use proteus_flags::{FlagSet, FlagSetBuilder, Validation};
use serde_json::{Map, Value, json};

use crate::support::{NOW_S, all_flags_document, compatible, flag_file};

/// Operator names and strings that make generated rules look like real targeting.
const WORDS: &[&str] = &[
    "var",
    "if",
    "==",
    "===",
    "!=",
    "!==",
    "!",
    "!!",
    "and",
    "or",
    "<",
    "<=",
    ">",
    ">=",
    "in",
    "cat",
    "substr",
    "+",
    "-",
    "*",
    "/",
    "%",
    "min",
    "max",
    "merge",
    "map",
    "filter",
    "reduce",
    "all",
    "some",
    "none",
    "missing",
    "missing_some",
    "fractional",
    "sem_ver",
    "starts_with",
    "ends_with",
    "segment",
    "$ref",
    "?:",
    "on",
    "off",
    "",
    "a",
    "a.b",
    "0",
    "$flagd.flagKey",
    "$flagd.timestamp",
    "$flagd",
    "targetingKey",
    "1.2.3",
    "v2",
    "^",
    "~",
    "current",
    "accumulator",
    "e",
    "s",
    "email",
    "x.0.y",
    "unknown_op",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..100).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(WORDS).prop_map(|w| Value::String(w.to_owned())),
        "[a-z@.]{0,6}".prop_map(Value::String),
    ]
}

/// JSON values biased towards JSON Logic: single-key objects named like operators.
fn rule() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 64, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            (prop::sample::select(WORDS), inner.clone()).prop_map(|(op, args)| json!({ op: args })),
            (
                prop::sample::select(WORDS),
                prop::collection::vec(inner.clone(), 0..4)
            )
                .prop_map(|(op, args)| json!({ op: args })),
            prop::collection::btree_map("[a-z$]{0,4}", inner, 0..3)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn contexts() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(
        prop::sample::select(WORDS).prop_map(str::to_owned),
        rule(),
        0..6,
    )
    .prop_map(|map| map.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_documents_never_panic(document in rule()) {
        for validation in [Validation::Strict, Validation::FlagdCompatible] {
            let _ = FlagSetBuilder::new(validation).with_value(document.clone()).build();
            let _ = FlagSetBuilder::new(validation).with_json(&document.to_string()).build();
        }
    }

    #[test]
    fn arbitrary_contexts_never_panic(context in contexts(), now_s in any::<i64>()) {
        static SET: std::sync::OnceLock<FlagSet> = std::sync::OnceLock::new();
        let set = SET.get_or_init(|| {
            FlagSetBuilder::new(Validation::FlagdCompatible)
                .with_value(all_flags_document())
                .with_json(&flag_file("testkit-flags.json"))
                .build()
                .unwrap()
                .flag_set
        });
        for flag in set.flags() {
            let evaluation = flag.evaluate(&context, now_s);
            prop_assert_eq!(evaluation.variant.is_some(), evaluation.value.is_some());
        }
        let _ = compatible(&flag_file("custom-ops.json"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn json_logic_like_rules_never_panic(
        targeting in rule(),
        evaluator in rule(),
        segment in rule(),
        variant_names in prop::collection::vec(prop::sample::select(WORDS), 1..4),
        contexts in prop::collection::vec(contexts(), 4),
    ) {
        let variants: Map<String, Value> = variant_names.iter().enumerate().filter(|(_, n)| !n.is_empty())
            .map(|(i, n)| ((*n).to_owned(), json!(i))).collect();
        prop_assume!(!variants.is_empty());
        let default = variants.keys().next().cloned();
        let document = json!({
            "flags": {
                "f": {"state": "ENABLED", "variants": variants.clone(), "defaultVariant": default, "targeting": targeting},
                "g": {"state": "ENABLED", "variants": variants, "targeting": {"$ref": "e"},
                      "prerequisites": [{"flag": "f", "variants": [default]}]}
            },
            "$evaluators": {"e": evaluator},
            "segments": {"s": segment}
        });
        for validation in [Validation::Strict, Validation::FlagdCompatible] {
            if let Ok(compiled) = FlagSetBuilder::new(validation).with_value(document.clone()).build() {
                for context in &contexts {
                    for key in ["f", "g"] {
                        let evaluation = compiled.flag_set.evaluate(key, context, NOW_S);
                        prop_assert_eq!(evaluation.variant.is_some(), evaluation.value.is_some());
                    }
                }
            }
        }
    }
}
