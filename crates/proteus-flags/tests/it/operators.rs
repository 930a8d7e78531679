//! flagd's custom operators (`fractional`, `sem_ver`, `starts_with`, `ends_with`), `$ref` and
//! the injected `$flagd` properties.

use proteus_flags::{FlagSet, Reason};
use serde_json::{Value, json};

use crate::support::{NOW_S, context, strict};

fn one_flag(key: &str, variants: Value, targeting: Value) -> FlagSet {
    strict(
        json!({"flags": {key: {"state": "ENABLED", "variants": variants, "defaultVariant": null, "targeting": targeting}}}),
    )
}

fn abc() -> Value {
    json!({"a": "a", "b": "b", "c": "c"})
}

/// flagd's bucketing, written out: MurmurHash3 x86_32 (seed 0) of flagKey + targetingKey, scaled
/// to the total weight with `(hash * total) >> 32`.
fn expected_bucket(
    flag_key: &str,
    targeting_key: &str,
    weights: &[(&'static str, u64)],
) -> &'static str {
    let hash = mur3::murmurhash3_x86_32(format!("{flag_key}{targeting_key}").as_bytes(), 0);
    let total: u64 = weights.iter().map(|(_, w)| w).sum();
    let point = (u64::from(hash) * total) >> 32;
    let mut end = 0;
    for (variant, weight) in weights {
        end += weight;
        if point < end {
            return variant;
        }
    }
    unreachable!()
}

#[test]
fn fractional_buckets_like_flagd() {
    let weights = [("a", 10), ("b", 30), ("c", 60)];
    let implicit = one_flag(
        "rollout",
        abc(),
        json!({"fractional": [["a", 10], ["b", 30], ["c", 60]]}),
    );
    let explicit = one_flag(
        "rollout",
        abc(),
        json!({"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "targetingKey"}]}, ["a", 10], ["b", 30], ["c", 60]]}),
    );
    let mut counts = [0usize; 3];
    for i in 0..3_000 {
        let targeting_key = format!("user-{i}");
        let context = context(json!({"targetingKey": targeting_key}));
        let expected = expected_bucket("rollout", &targeting_key, &weights);
        let evaluation = implicit.evaluate("rollout", &context, NOW_S);
        assert_eq!(evaluation.variant, Some(expected), "{targeting_key}");
        assert_eq!(
            evaluation.reason,
            Reason::TargetingMatch,
            "flagd reports TARGETING_MATCH, not SPLIT"
        );
        assert_eq!(
            explicit.evaluate("rollout", &context, NOW_S).variant,
            Some(expected)
        );
        counts[["a", "b", "c"].iter().position(|v| *v == expected).unwrap()] += 1;
    }
    // 10/30/60 within a few percent.
    assert!(
        (200..400).contains(&counts[0])
            && (800..1000).contains(&counts[1])
            && (1700..1900).contains(&counts[2]),
        "{counts:?}"
    );
}

#[test]
fn fractional_without_a_bucketing_value_is_null() {
    let set = one_flag("f", abc(), json!({"fractional": [["a", 1], ["b", 1]]}));
    for context_value in [
        json!({}),
        json!({"targetingKey": ""}),
        json!({"targetingKey": 42}),
    ] {
        let evaluation = set.evaluate("f", &context(context_value), NOW_S);
        assert_eq!(
            (evaluation.variant, evaluation.reason),
            (None, Reason::Default)
        );
    }
    // An explicit bucketing value needs no targeting key; a non-string one gives null.
    let explicit = one_flag(
        "f",
        abc(),
        json!({"fractional": [{"var": "org"}, ["a", 1], ["b", 1]]}),
    );
    assert!(
        explicit
            .evaluate("f", &context(json!({"org": "acme"})), NOW_S)
            .variant
            .is_some()
    );
    assert_eq!(
        explicit
            .evaluate("f", &context(json!({"org": 7})), NOW_S)
            .variant,
        None
    );
}

#[test]
fn fractional_weights_may_be_expressions() {
    // A progressive rollout: the weight of "b" grows with time.
    let set = one_flag(
        "f",
        abc(),
        json!({"fractional": [["a", {"-": [100, {"var": "percent"}]}], ["b", {"var": "percent"}]]}),
    );
    let everyone_b = context(json!({"targetingKey": "k", "percent": 100}));
    assert_eq!(set.evaluate("f", &everyone_b, NOW_S).variant, Some("b"));
    let nobody_b = context(json!({"targetingKey": "k", "percent": 0}));
    assert_eq!(set.evaluate("f", &nobody_b, NOW_S).variant, Some("a"));
    let fractional_weight = context(json!({"targetingKey": "k", "percent": 0.5}));
    assert_eq!(
        set.evaluate("f", &fractional_weight, NOW_S).reason,
        Reason::Default
    );
}

#[test]
fn sem_ver_compares_like_flagd() {
    let cases = [
        ("1.2.3", ">=", "1.2.0", true),
        ("1.2.3", "<", "1.10.0", true),
        ("v1.2.3", "=", "1.2.3", true),
        ("V2.0.0", ">", "v1.9.9", true),
        ("2.0.0-rc.1", "<", "2.0.0", true),
        ("2.0.0-rc.2", ">", "2.0.0-rc.10", false),
        ("1.0.0+build.1", "=", "1.0.0+build.2", true),
        ("1.5", "^", "1.0.0", true),
        ("2.0.0", "^", "1.9.0", false),
        ("1.2.9", "~", "1.2.0", true),
        ("1.3.0", "~", "1.2.0", false),
        ("1.2.3", "!=", "1.2.4", true),
        ("1.2.3", "<=", "1.2.3", true),
    ];
    let set = one_flag(
        "v",
        json!({"true": "yes", "false": "no"}),
        json!({"sem_ver": [{"var": "version"}, {"var": "op"}, {"var": "target"}]}),
    );
    for (version, op, target, expected) in cases {
        let context = context(json!({"version": version, "op": op, "target": target}));
        let evaluation = set.evaluate("v", &context, NOW_S);
        let expected = if expected { "true" } else { "false" };
        assert_eq!(
            evaluation.variant,
            Some(expected),
            "{version} {op} {target}"
        );
    }
    // Anything that is not a version gives null, so the default.
    for version in [
        json!("1.2.3.4"),
        json!("01.0.0"),
        json!(null),
        json!(true),
        json!(1e7),
        json!([1]),
    ] {
        let context = context(json!({"version": version, "op": ">", "target": "1.0.0"}));
        assert_eq!(
            set.evaluate("v", &context, NOW_S).reason,
            Reason::Default,
            "{version}"
        );
    }
    // Numbers in the context are read as versions (1.2 is 1.2.0).
    let context = context(json!({"version": 1.2, "op": ">", "target": "1.1.9"}));
    assert_eq!(set.evaluate("v", &context, NOW_S).variant, Some("true"));
}

#[test]
fn starts_with_and_ends_with() {
    let set = one_flag(
        "s",
        json!({"internal": "internal", "partner": "partner", "other": "other"}),
        json!({"if": [
            {"ends_with": [{"var": "email"}, "@example.com"]}, "internal",
            {"starts_with": [{"var": "email"}, "partner+"]}, "partner",
            "other"
        ]}),
    );
    let variant = |email: Value| {
        set.evaluate("s", &context(json!({"email": email})), NOW_S)
            .variant
    };
    assert_eq!(variant(json!("ada@example.com")), Some("internal"));
    assert_eq!(variant(json!("partner+bob@corp.com")), Some("partner"));
    assert_eq!(variant(json!("bob@corp.com")), Some("other"));
    assert_eq!(variant(json!(12)), Some("other"));
}

#[test]
fn flagd_properties_and_evaluator_references() {
    let set = strict(json!({
        "flags": {
            "launch": {
                "state": "ENABLED",
                "variants": {"before": "before", "after": "after"},
                "defaultVariant": "before",
                "targeting": {"if": [{">=": [{"var": "$flagd.timestamp"}, 1_800_000_000]}, "after", "before"]}
            },
            "self-aware": {
                "state": "ENABLED",
                "variants": {"self-aware": 1, "other": 0},
                "defaultVariant": "other",
                "targeting": {"var": "$flagd.flagKey"}
            },
            "vip": {
                "state": "ENABLED",
                "variants": {"on": true, "off": false},
                "defaultVariant": "off",
                "targeting": {"if": [{"$ref": "is_vip"}, "on", "off"]}
            }
        },
        "$evaluators": {
            "is_vip": {"or": [{"$ref": "is_staff"}, {">": [{"var": "spend"}, 1000]}]},
            "is_staff": {"ends_with": [{"var": "email"}, "@proteus.dev"]}
        }
    }));
    let empty = context(json!({}));
    assert_eq!(set.evaluate("launch", &empty, NOW_S).variant, Some("after"));
    assert_eq!(
        set.evaluate("launch", &empty, NOW_S - 1).variant,
        Some("before")
    );
    // The context cannot override `$flagd` (flagd replaces it too).
    let spoofed = context(json!({"$flagd": {"timestamp": 0, "flagKey": "other"}}));
    assert_eq!(
        set.evaluate("launch", &spoofed, NOW_S).variant,
        Some("after")
    );
    assert_eq!(
        set.evaluate("self-aware", &spoofed, NOW_S).variant,
        Some("self-aware")
    );
    assert_eq!(
        set.evaluate("vip", &context(json!({"email": "a@proteus.dev"})), NOW_S)
            .variant,
        Some("on")
    );
    assert_eq!(
        set.evaluate("vip", &context(json!({"spend": 5000})), NOW_S)
            .variant,
        Some("on")
    );
    assert_eq!(
        set.evaluate("vip", &context(json!({"spend": 5})), NOW_S)
            .variant,
        Some("off")
    );
}

#[test]
fn targeting_results_map_to_variants_as_flagd_does() {
    let set = strict(json!({"flags": {
        "numbers": {"state": "ENABLED", "variants": {"1": "one", "2.5": "two and a half"}, "defaultVariant": "1",
                    "targeting": {"var": "n"}},
        "bools": {"state": "ENABLED", "variants": {"true": 1, "false": 0}, "defaultVariant": "false",
                  "targeting": {"==": [{"var": "x"}, 1]}}
    }}));
    assert_eq!(
        set.evaluate("numbers", &context(json!({"n": 2.5})), NOW_S)
            .variant,
        Some("2.5")
    );
    assert_eq!(
        set.evaluate("numbers", &context(json!({"n": 1})), NOW_S)
            .variant,
        Some("1")
    );
    let unknown = set.evaluate("numbers", &context(json!({"n": "seven"})), NOW_S);
    assert_eq!(
        (unknown.reason, unknown.error),
        (Reason::Error, Some(proteus_flags::ErrorCode::General))
    );
    assert_eq!(
        unknown.error_message.as_deref(),
        Some("targeting returned `seven`, which is not a variant of this flag")
    );
    let missing = set.evaluate("numbers", &context(json!({})), NOW_S);
    assert_eq!(
        (missing.variant, missing.reason),
        (Some("1"), Reason::Default)
    );
    assert_eq!(
        set.evaluate("bools", &context(json!({"x": "1"})), NOW_S)
            .value,
        Some(&json!(1))
    );
}
