//! Guardrails: a harmed guardrail is a breach under the sequential test and halts a rollout.

use crate::{HOUR_MS, Rng, T0, definition, definition_json, event, exposure, parse};
use proteus_experiments::{
    Action, ExperimentAggregator, ExperimentDefinition, GuardrailDirection, guardrail_breaches,
    results, rollout_change,
};
use proteus_flagsets::Change;
use serde_json::json;

/// Page latency with mean 100 ms in control and `100 × (1 + harm)` in green.
fn latency_traffic(
    d: &ExperimentDefinition,
    units: usize,
    harm: f64,
    seed: u64,
) -> ExperimentAggregator {
    let mut rng = Rng(seed);
    let mut agg = ExperimentAggregator::new(d);
    for i in 0..units {
        let unit = format!("u{i}");
        let green = i % 2 == 1;
        let t = T0 + i as i64 * 100;
        agg.apply_exposure(&exposure(&unit, if green { "green" } else { "control" }, t));
        let mean = if green { 100.0 * (1.0 + harm) } else { 100.0 };
        for k in 0..2 {
            let ms = mean + 15.0 * rng.normal();
            agg.apply_metric_event(
                "web",
                &event("page.loaded", &unit, json!({"ms": ms})),
                t + k,
            );
        }
    }
    agg
}

#[test]
fn a_harmed_guardrail_is_a_breach_and_stops_the_experiment() {
    let d = definition();
    let agg = latency_traffic(&d, 2000, 0.10, 1);
    let breaches = guardrail_breaches(&d, &agg);
    assert_eq!(breaches.len(), 1, "{breaches:?}");
    let b = &breaches[0];
    assert_eq!(
        (b.metric.as_str(), b.variant.as_str()),
        ("latency", "green")
    );
    assert_eq!(b.direction, GuardrailDirection::MustNotIncrease);
    assert_eq!(b.scale, "relative");
    assert!(b.interval.lower.unwrap() > 0.0);
    let r = results(&d, &agg, T0 + HOUR_MS);
    assert_eq!(r.decision.action, Action::StopGuardrail);
    assert!(
        r.decision
            .message
            .contains("guardrail `latency` harmed by `green`"),
        "{}",
        r.decision.message
    );
    // Halting a progressive rollout: the flag returns to control for everyone.
    let flag = json!({"state": "ENABLED", "variants": {"control": 1, "green": 2},
                      "defaultVariant": "control",
                      "targeting": {"fractional": [["green", 20], ["control", 80]]}});
    let change = rollout_change(&d.flag, &flag, &d.control).unwrap();
    let Change::PutFlag { flag: halted, .. } = change else {
        panic!()
    };
    assert_eq!(halted["defaultVariant"], "control");
    assert!(halted.get("targeting").is_none());
}

#[test]
fn no_harm_and_tolerated_harm_are_not_breaches() {
    let d = definition();
    for seed in 0..5 {
        let agg = latency_traffic(&d, 2000, 0.0, seed);
        assert!(guardrail_breaches(&d, &agg).is_empty(), "seed {seed}");
    }
    let mut v = definition_json();
    v["guardrails"][0]["threshold_relative"] = json!(0.2);
    let tolerant = parse(&v);
    let agg = latency_traffic(&tolerant, 2000, 0.05, 3);
    assert!(guardrail_breaches(&tolerant, &agg).is_empty());
    // An improvement is never a breach.
    let agg = latency_traffic(&d, 2000, -0.10, 4);
    assert!(guardrail_breaches(&d, &agg).is_empty());
}

#[test]
fn a_guardrail_watched_during_a_rollout_halts_it_early() {
    // Check after every 100 units, as a rollout controller would; the harm is found well
    // before the 4000 units of the full run.
    let d = definition();
    let mut rng = Rng(17);
    let mut agg = ExperimentAggregator::new(&d);
    let mut halted_at = None;
    for i in 0..4000usize {
        let unit = format!("u{i}");
        let green = i % 2 == 1;
        let t = T0 + i as i64 * 100;
        agg.apply_exposure(&exposure(&unit, if green { "green" } else { "control" }, t));
        let ms = if green { 115.0 } else { 100.0 } + 20.0 * rng.normal();
        agg.apply_metric_event("web", &event("page.loaded", &unit, json!({"ms": ms})), t);
        if i % 100 == 99 && !guardrail_breaches(&d, &agg).is_empty() {
            halted_at = Some(i + 1);
            break;
        }
    }
    let units = halted_at.expect("the rollout halts");
    assert!(units <= 1000, "halted after {units} units");
}
