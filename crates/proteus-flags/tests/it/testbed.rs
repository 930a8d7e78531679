//! The flagd-testbed gherkin scenarios, as data (`testbed_cases.json`): each case names the flag
//! set, the flag and its type, the context, the caller's default, and the expected value, reason,
//! error code and metadata.

use std::collections::HashMap;

use proteus_flags::{FlagSet, FlagSetBuilder, Validation};
use serde_json::{Map, Value};

use crate::support::{all_flags_document, compatible, flag_file};

struct Outcome {
    value: Value,
    reason: &'static str,
    error: Option<&'static str>,
    metadata: Map<String, Value>,
}

fn evaluate(set: &FlagSet, case: &Value, now_s: i64) -> Outcome {
    let key = case["key"].as_str().unwrap();
    let context = case["context"].as_object().cloned().unwrap_or_default();
    let default = &case["default"];
    macro_rules! outcome {
        ($resolution:expr, $to_value:expr) => {{
            let r = $resolution;
            Outcome {
                value: $to_value(r.value),
                reason: r.reason.as_str(),
                error: r.error.map(|e| e.as_str()),
                metadata: r.metadata.clone(),
            }
        }};
    }
    match case["type"].as_str().unwrap() {
        "Boolean" => outcome!(
            set.evaluate_bool(key, &context, now_s, default.as_bool().unwrap()),
            Value::from
        ),
        "String" => outcome!(
            set.evaluate_string(key, &context, now_s, default.as_str().unwrap()),
            Value::from
        ),
        "Integer" => outcome!(
            set.evaluate_i64(key, &context, now_s, default.as_i64().unwrap()),
            Value::from
        ),
        "Float" => outcome!(
            set.evaluate_f64(key, &context, now_s, default.as_f64().unwrap()),
            Value::from
        ),
        "Object" => {
            let default = default.as_object().unwrap();
            outcome!(
                set.evaluate_object(key, &context, now_s, default),
                |m: &Map<String, Value>| Value::Object(m.clone())
            )
        }
        other => panic!("unknown flag type {other}"),
    }
}

fn numbers_equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[test]
fn testbed_scenarios_resolve_as_flagd_does() {
    let data: Value = serde_json::from_str(include_str!("testbed_cases.json")).unwrap();
    let now_s = data["now_s"].as_i64().unwrap();
    let mut sets: HashMap<String, FlagSet> = HashMap::new();
    let mut failures = Vec::new();
    let cases = data["cases"].as_array().unwrap();
    for case in cases {
        let name = case["flags"].as_str().unwrap();
        let set = sets.entry(name.to_owned()).or_insert_with(|| match name {
            "testkit" => compatible(&flag_file("testkit-flags.json")).flag_set,
            "all" => {
                FlagSetBuilder::new(Validation::FlagdCompatible)
                    .with_value(all_flags_document())
                    .build()
                    .expect("allFlags loads")
                    .flag_set
            }
            file => compatible(&flag_file(file)).flag_set,
        });
        let outcome = evaluate(set, case, now_s);
        let mut wrong = Vec::new();
        if let Some(value) = case.get("value")
            && !numbers_equal(value, &outcome.value)
        {
            wrong.push(format!("value {} (expected {value})", outcome.value));
        }
        if let Some(reason) = case.get("reason")
            && reason != outcome.reason
        {
            wrong.push(format!("reason {} (expected {reason})", outcome.reason));
        }
        if let Some(error) = case.get("error")
            && error.as_str() != outcome.error
        {
            wrong.push(format!("error {:?} (expected {error})", outcome.error));
        }
        if let Some(Value::Object(metadata)) = case.get("metadata") {
            let matches = if metadata.is_empty() {
                outcome.metadata.is_empty()
            } else {
                metadata
                    .iter()
                    .all(|(k, v)| outcome.metadata.get(k).is_some_and(|m| numbers_equal(m, v)))
            };
            if !matches {
                wrong.push(format!(
                    "metadata {:?} (expected {metadata:?})",
                    outcome.metadata
                ));
            }
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{} [{} {} ctx={}]: {}",
                case["source"],
                name,
                case["key"],
                case["context"],
                wrong.join(", ")
            ));
        }
    }
    assert!(cases.len() > 250, "the testbed cases are all there");
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
