//! Definitions: parsing, limits, and validation errors with JSON paths.

use crate::{definition, definition_json};
use proteus_experiments::{DefinitionErrors, ExperimentDefinition, MetricKind};
use proteus_flags::FlagSet;
use serde_json::{Value, json};

fn errors(value: &Value) -> DefinitionErrors {
    ExperimentDefinition::from_json(&value.to_string()).expect_err("invalid definition")
}

fn flag_set() -> FlagSet {
    FlagSet::from_json(
        r#"{"flags": {"checkout": {"state": "ENABLED", "variants": {"control": "grey", "green": "green", "blue": "blue"}, "defaultVariant": "control"}}}"#,
    )
    .unwrap()
}

#[test]
fn a_full_definition_parses_with_defaults_and_round_trips() {
    let d = definition();
    assert_eq!(d.arms.len(), 2);
    assert_eq!(d.metrics[3].kind, MetricKind::Ratio);
    assert_eq!(d.alpha, 0.05);
    assert_eq!(d.power, 0.8);
    assert!(d.analysis.sequential);
    let text = serde_json::to_string(&d).unwrap();
    assert_eq!(ExperimentDefinition::from_json(&text).unwrap(), d);
    d.validate(flag_set().flag("checkout")).unwrap();
}

#[test]
fn multivariate_definitions_are_accepted() {
    let mut v = definition_json();
    v["arms"] = json!([
        {"variant": "control", "weight": 2},
        {"variant": "green", "weight": 1},
        {"variant": "blue", "weight": 1}
    ]);
    let d = ExperimentDefinition::from_json(&v.to_string()).unwrap();
    d.validate(flag_set().flag("checkout")).unwrap();
}

#[test]
fn arms_must_be_variants_of_the_flag() {
    let mut v = definition_json();
    v["arms"][1]["variant"] = json!("purple");
    let d = ExperimentDefinition::from_json(&v.to_string()).unwrap();
    let e = d.validate(flag_set().flag("checkout")).unwrap_err();
    assert!(e.has_path("/arms/1/variant"), "{e}");
    assert!(
        e.to_string().contains("not a variant of flag `checkout`"),
        "{e}"
    );
}

#[test]
fn checking_against_another_flag_is_an_error() {
    let set = FlagSet::from_json(
        r#"{"flags": {"other": {"state": "ENABLED", "variants": {"control": 1, "green": 2}, "defaultVariant": "control"}}}"#,
    )
    .unwrap();
    let e = definition().validate(set.flag("other")).unwrap_err();
    assert!(e.has_path("/flag"), "{e}");
}

#[test]
fn weights_must_be_positive() {
    let mut v = definition_json();
    v["arms"][0]["weight"] = json!(0);
    v["arms"][1]["weight"] = json!(-1);
    let e = errors(&v);
    assert!(
        e.has_path("/arms/0/weight") && e.has_path("/arms/1/weight"),
        "{e}"
    );
}

#[test]
fn arm_and_control_rules() {
    let mut v = definition_json();
    v["arms"] = json!([{"variant": "control", "weight": 1}]);
    v["control"] = json!("nobody");
    let e = errors(&v);
    assert!(e.has_path("/arms") && e.has_path("/control"), "{e}");

    let mut v = definition_json();
    v["arms"][1]["variant"] = json!("control");
    assert!(errors(&v).has_path("/arms/1/variant"));

    let mut v = definition_json();
    v["arms"] = Value::Array(
        (0..17)
            .map(|i| json!({"variant": format!("v{i}"), "weight": 1}))
            .collect(),
    );
    v["control"] = json!("v0");
    assert!(errors(&v).to_string().contains("2 to 16 arms"));
}

#[test]
fn metric_references_must_exist() {
    let mut v = definition_json();
    v["primary_metric"] = json!("nope");
    v["secondary_metrics"] = json!(["revenue", "revenue", "missing"]);
    v["guardrails"][0]["metric"] = json!("gone");
    let e = errors(&v);
    for path in [
        "/primary_metric",
        "/secondary_metrics/1",
        "/secondary_metrics/2",
        "/guardrails/0/metric",
    ] {
        assert!(e.has_path(path), "{path} missing in {e}");
    }
}

#[test]
fn metric_kinds_need_their_fields() {
    let mut v = definition_json();
    v["metrics"][1]["source"]
        .as_object_mut()
        .unwrap()
        .remove("value");
    v["metrics"][0]["source"]["value"] = json!("/amount");
    v["metrics"][3]
        .as_object_mut()
        .unwrap()
        .remove("denominator");
    v["metrics"][5]["denominator"] = json!({"topic": "web", "event_type": "x"});
    let e = errors(&v);
    for path in [
        "/metrics/1/source/value",
        "/metrics/0/source/value",
        "/metrics/3/denominator",
        "/metrics/5/denominator",
    ] {
        assert!(e.has_path(path), "{path} missing in {e}");
    }
}

#[test]
fn selectors_windows_and_units_are_checked() {
    let mut v = definition_json();
    v["metrics"][1]["source"]["value"] = json!("amount");
    v["metrics"][0]["window_ms"] = json!(0);
    v["metrics"][2]["unit"] = json!({"attribute": "Partition-Key"});
    v["metrics"][4]["source"]["topic"] = json!("");
    v["metrics"][5]["id"] = json!("has space");
    let e = errors(&v);
    for path in [
        "/metrics/1/source/value",
        "/metrics/0/window_ms",
        "/metrics/2/unit/attribute",
        "/metrics/4/source/topic",
        "/metrics/5/id",
    ] {
        assert!(e.has_path(path), "{path} missing in {e}");
    }
}

#[test]
fn statistics_settings_are_checked() {
    let mut v = definition_json();
    v["alpha"] = json!(0.7);
    v["power"] = json!(1.0);
    v["minimum_detectable_effect"] = json!({"relative": 0});
    v["analysis"] = json!({"cuped": {"pre_period_ms": 0}, "units_max": 0, "srm_threshold": 1,
                           "lateness_ms": 999_999_999_999u64, "unit_events_max": 0,
                           "sequential_target_units": 1, "alternative": "one_sided",
                           "prior": {"kind": "gaussian", "mean": 0.0, "variance": 0.0}});
    let e = errors(&v);
    assert!(e.to_string().contains("sequential\": false"), "{e}");
    for path in [
        "/alpha",
        "/power",
        "/minimum_detectable_effect/relative",
        "/analysis/cuped/pre_period_ms",
        "/analysis/units_max",
        "/analysis/srm_threshold",
        "/analysis/lateness_ms",
        "/analysis/unit_events_max",
        "/analysis/sequential_target_units",
        "/analysis/alternative",
        "/analysis/prior",
    ] {
        assert!(e.has_path(path), "{path} missing in {e}");
    }
}

#[test]
fn type_errors_and_unknown_fields_have_paths() {
    let mut v = definition_json();
    v["arms"][1]["weight"] = json!("half");
    let e = errors(&v);
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].path, "/arms/1/weight", "{e}");

    let mut v = definition_json();
    v["metrics"][2]["colour"] = json!("red");
    let e = errors(&v);
    assert_eq!(e.0[0].path, "/metrics/2/colour", "{e}");
    assert!(e.to_string().contains("unknown field `colour`"), "{e}");

    let mut v = definition_json();
    v["metrics"][0]["kind"] = json!("median");
    assert_eq!(errors(&v).0[0].path, "/metrics/0/kind");

    assert!(ExperimentDefinition::from_json("not json").is_err());
    let huge = format!("\"{}\"", "x".repeat(300 * 1024));
    assert!(
        ExperimentDefinition::from_json(&huge)
            .unwrap_err()
            .to_string()
            .contains("bytes")
    );
}

#[test]
fn text_limits_are_enforced() {
    let mut v = definition_json();
    v["name"] = json!("n".repeat(257));
    v["hypothesis"] = json!("h".repeat(5000));
    v["id"] = json!("");
    v["flag_set"] = json!("bad set");
    let e = errors(&v);
    for path in ["/name", "/hypothesis", "/id", "/flag_set"] {
        assert!(e.has_path(path), "{path} missing in {e}");
    }
}
