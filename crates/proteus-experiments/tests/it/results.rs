//! Results: not-enough-data entries, no NaN, lifts and decisions, SRM, CUPED, correction.

use crate::{
    DAY_MS, HOUR_MS, Rng, T0, assert_all_finite, definition, definition_json, event, exposure,
    order, parse,
};
use proteus_experiments::{
    Action, ComparisonOutcome, ExperimentAggregator, ExperimentDefinition, results,
};
use serde_json::json;

/// `units` units alternating arms (or by `arm`), converting with probability `rate(arm)`.
fn traffic(
    d: &ExperimentDefinition,
    units: usize,
    seed: u64,
    arm: impl Fn(usize) -> usize,
    rate: impl Fn(usize) -> f64,
) -> ExperimentAggregator {
    let mut rng = Rng(seed);
    let mut agg = ExperimentAggregator::new(d);
    for i in 0..units {
        let a = arm(i);
        let unit = format!("u{i}");
        let t = T0 + i as i64 * 1_000;
        agg.apply_exposure(&exposure(&unit, &d.arms[a].variant, t));
        agg.apply_metric_event("web", &event("session.started", &unit, json!({})), t + 1);
        agg.apply_metric_event(
            "web",
            &event(
                "page.loaded",
                &unit,
                json!({"ms": 100.0 + 10.0 * rng.normal()}),
            ),
            t + 2,
        );
        if rng.uniform() < rate(a) {
            agg.apply_metric_event("shop", &order(&unit, 20.0 + 5.0 * rng.normal()), t + 3);
        }
    }
    agg
}

#[test]
fn an_empty_experiment_is_not_enough_data_everywhere_without_nan() {
    let d = definition();
    let agg = ExperimentAggregator::new(&d);
    let r = results(&d, &agg, T0);
    assert_all_finite(&r);
    assert_eq!(r.srm.status, "not_enough_data");
    assert_eq!(r.decision.action, Action::KeepRunning);
    assert!(
        r.decision.message.contains("not enough data"),
        "{}",
        r.decision.message
    );
    for metric in &r.metrics {
        assert_eq!(metric.arms[0].mean, None);
        assert!(matches!(
            metric.arms[1].comparison,
            Some(ComparisonOutcome::NotEnoughData { .. })
        ));
    }
    let text = serde_json::to_string(&r).unwrap();
    assert!(text.contains(r#""status":"not_enough_data""#), "{text}");
}

#[test]
fn tiny_and_constant_arms_are_not_enough_data() {
    let d = definition();
    let mut agg = ExperimentAggregator::new(&d);
    agg.apply_exposure(&exposure("a", "control", T0));
    agg.apply_exposure(&exposure("b", "green", T0));
    let r = results(&d, &agg, T0);
    assert_all_finite(&r);
    let text = serde_json::to_string(&r.metrics[0]).unwrap();
    assert!(text.contains("too_few_units"), "{text}");
    // Ten units per arm, nobody converts: no variance yet.
    let agg = traffic(&d, 20, 1, |i| i % 2, |_| 0.0);
    let r = results(&d, &agg, T0 + HOUR_MS);
    assert_all_finite(&r);
    let text = serde_json::to_string(&r.metrics[0]).unwrap();
    assert!(text.contains("zero_variance"), "{text}");
    // Ratio metrics with no orders: zero numerators, the ratio is 0 with zero variance.
    let ratio = serde_json::to_string(&r.metrics[2]).unwrap();
    assert!(ratio.contains("not_enough_data"), "{ratio}");
}

#[test]
fn a_clear_winner_is_shipped_with_corrected_p_values() {
    let d = definition();
    let agg = traffic(&d, 6000, 7, |i| i % 2, |a| if a == 0 { 0.10 } else { 0.16 });
    let r = results(&d, &agg, T0 + DAY_MS);
    assert_all_finite(&r);
    assert_eq!(r.srm.status, "ok");
    assert_eq!(r.decision.action, Action::Ship, "{}", r.decision.message);
    assert_eq!(r.decision.variant.as_deref(), Some("green"));
    let purchase = r.metrics[0].arms[1]
        .comparison
        .as_ref()
        .unwrap()
        .ready()
        .unwrap();
    assert_eq!(purchase.method, "sequential");
    assert!(purchase.lift_absolute.estimate > 0.03);
    let rel = purchase.lift_relative.unwrap();
    assert!(rel.interval.contains(0.6), "{rel:?}");
    let adjusted = purchase.p_value_adjusted.unwrap();
    assert!(adjusted >= purchase.p_value && adjusted < 0.05);
    assert!(purchase.chance_to_beat_control.unwrap() > 0.99);
    assert_eq!(purchase.better, Some(true));
    // Guardrail metrics are shown but not part of the corrected family.
    let latency = r.metrics[4].arms[1]
        .comparison
        .as_ref()
        .unwrap()
        .ready()
        .unwrap();
    assert_eq!(latency.p_value_adjusted, None);
    assert_eq!(r.units_total, 6000);
}

#[test]
fn no_difference_yet_says_how_long_to_keep_running() {
    let d = definition();
    let agg = traffic(&d, 2000, 3, |i| i % 2, |_| 0.2);
    let r = results(&d, &agg, T0 + 2000 * 1_000);
    assert_all_finite(&r);
    assert_eq!(
        r.decision.action,
        Action::KeepRunning,
        "{}",
        r.decision.message
    );
    let remaining = r.decision.remaining_units.unwrap();
    assert!(remaining > 1000, "{remaining}");
    assert!(r.decision.days.unwrap() > 0.0);
    assert!(
        r.decision.message.contains("more units"),
        "{}",
        r.decision.message
    );
}

#[test]
fn sample_ratio_mismatch_comes_first() {
    let d = definition();
    // 60/40 on a 50/50 split.
    let agg = traffic(
        &d,
        3000,
        5,
        |i| usize::from(i % 5 >= 3),
        |a| if a == 0 { 0.1 } else { 0.2 },
    );
    let r = results(&d, &agg, T0 + DAY_MS);
    assert_eq!(r.srm.status, "mismatch");
    assert_eq!(r.decision.action, Action::InvestigateSrm);
    assert!(r.srm.message.contains("sample-ratio mismatch"));
}

#[test]
fn fixed_horizon_analysis_uses_z_and_welch() {
    let mut v = definition_json();
    v["analysis"] = json!({"sequential": false, "correction": "benjamini_hochberg"});
    let d = parse(&v);
    let agg = traffic(&d, 1000, 11, |i| i % 2, |_| 0.3);
    let r = results(&d, &agg, T0 + DAY_MS);
    assert_all_finite(&r);
    let method = |m: usize| {
        r.metrics[m].arms[1]
            .comparison
            .as_ref()
            .unwrap()
            .ready()
            .unwrap()
            .method
    };
    assert_eq!(method(0), "z"); // conversion
    assert_eq!(method(1), "welch"); // sum
    assert_eq!(method(3), "z"); // ratio
}

#[test]
fn cuped_reduces_variance_with_a_correlated_pre_period() {
    let mut v = definition_json();
    v["primary_metric"] = json!("revenue");
    v["secondary_metrics"] = json!([]);
    v["analysis"] = json!({"cuped": {"pre_period_ms": 7 * DAY_MS}});
    let d = parse(&v);
    let mut rng = Rng(99);
    let mut agg = ExperimentAggregator::new(&d);
    // Each unit's spending habit shows in the week before the experiment and after exposure.
    let habits: Vec<f64> = (0..2000).map(|_| 50.0 + 20.0 * rng.normal()).collect();
    for (i, habit) in habits.iter().enumerate() {
        let t = T0 - DAY_MS + i as i64 * 1_000;
        agg.apply_metric_event("shop", &order(&format!("u{i}"), habit + rng.normal()), t);
    }
    for (i, habit) in habits.iter().enumerate() {
        let unit = format!("u{i}");
        let t = T0 + i as i64 * 1_000;
        agg.apply_exposure(&exposure(
            &unit,
            if i % 2 == 0 { "control" } else { "green" },
            t,
        ));
        let lift = if i % 2 == 1 { 1.0 } else { 0.0 };
        agg.apply_metric_event("shop", &order(&unit, habit + rng.normal() + lift), t + 10);
    }
    let r = results(&d, &agg, T0 + DAY_MS);
    assert_all_finite(&r);
    let revenue = r.metrics[1].arms[1]
        .comparison
        .as_ref()
        .unwrap()
        .ready()
        .unwrap();
    assert!(revenue.variance_reduction.unwrap() > 0.9, "{revenue:?}");
    // A 1-unit lift on a 20-sd metric is invisible without CUPED, clear with it.
    assert!(revenue.p_value < 1e-6, "{revenue:?}");
    // Ratio metrics are not CUPED-adjusted.
    let aov = r.metrics[2].arms[1]
        .comparison
        .as_ref()
        .unwrap()
        .ready()
        .unwrap();
    assert_eq!(aov.variance_reduction, None);
}

#[test]
fn multivariate_results_compare_every_arm_with_control() {
    let mut v = definition_json();
    v["arms"] = json!([
        {"variant": "control", "weight": 1},
        {"variant": "green", "weight": 1},
        {"variant": "blue", "weight": 1}
    ]);
    let d = parse(&v);
    let agg = traffic(&d, 9000, 21, |i| i % 3, |a| [0.10, 0.10, 0.17][a]);
    let r = results(&d, &agg, T0 + DAY_MS);
    assert_all_finite(&r);
    assert_eq!(r.metrics[0].arms.len(), 3);
    assert!(r.metrics[0].arms[0].comparison.is_none());
    assert_eq!(
        r.decision.variant.as_deref(),
        Some("blue"),
        "{}",
        r.decision.message
    );
    let green = r.metrics[0].arms[1]
        .comparison
        .as_ref()
        .unwrap()
        .ready()
        .unwrap();
    assert!(!green.significant);
}

fn ready(
    r: &proteus_experiments::ExperimentResults,
    m: usize,
) -> proteus_experiments::ComparisonResult {
    r.metrics[m].arms[1]
        .comparison
        .as_ref()
        .unwrap()
        .ready()
        .unwrap()
        .clone()
}

#[test]
fn one_sided_tests_look_only_in_the_goal_direction() {
    let mut v = definition_json();
    v["analysis"] = json!({"sequential": false});
    let two = parse(&v);
    v["analysis"] = json!({"sequential": false, "alternative": "one_sided"});
    let one = parse(&v);
    // Green converts better: the goal direction of `purchase` (increase).
    let agg = traffic(
        &two,
        2000,
        5,
        |i| i % 2,
        |a| if a == 1 { 0.36 } else { 0.3 },
    );
    let (r2, r1) = (results(&two, &agg, T0), results(&one, &agg, T0));
    assert_all_finite(&r1);
    let (c2, c1) = (ready(&r2, 0), ready(&r1, 0));
    assert_eq!(c1.alternative, proteus_stats::Alternative::Greater);
    assert!(c2.lift_absolute.estimate > 0.0);
    // The one-sided p-value of an effect in the goal direction is half the two-sided one.
    assert!(
        (c1.p_value - c2.p_value / 2.0).abs() < 1e-12,
        "{} {}",
        c1.p_value,
        c2.p_value
    );
    assert_eq!(c1.lift_absolute.interval.upper, None);
    // `latency` has goal decrease: its test looks for a decrease.
    assert_eq!(ready(&r1, 4).alternative, proteus_stats::Alternative::Less);
    assert_eq!(
        serde_json::to_value(&r1.method).unwrap()["alternative"],
        "one_sided"
    );
}

#[test]
fn a_gaussian_prior_shrinks_the_bayesian_answer_toward_no_effect() {
    let flat = definition();
    let mut v = definition_json();
    v["analysis"] = json!({"prior": {"kind": "gaussian", "mean": 0.0, "variance": 0.0001}});
    let tight = parse(&v);
    let agg = traffic(
        &flat,
        2000,
        9,
        |i| i % 2,
        |a| if a == 1 { 0.45 } else { 0.3 },
    );
    let (f, t) = (
        ready(&results(&flat, &agg, T0), 0),
        ready(&results(&tight, &agg, T0), 0),
    );
    let (cf, ct) = (
        f.chance_to_beat_control.unwrap(),
        t.chance_to_beat_control.unwrap(),
    );
    assert!(cf > 0.9, "{cf}");
    assert!((ct - 0.5).abs() < (cf - 0.5).abs(), "{ct} vs {cf}");
    let (wf, wt) = (
        f.credible_interval_relative.unwrap(),
        t.credible_interval_relative.unwrap(),
    );
    let width = |i: proteus_stats::Interval| i.upper.unwrap() - i.lower.unwrap();
    assert!(width(wt) < width(wf));
    // The frequentist numbers do not depend on the prior.
    assert_eq!(f.p_value, t.p_value);
}

#[test]
fn sequential_looks_never_loosen_intervals_or_raise_p_values() {
    let d = definition();
    let mut looks = proteus_experiments::SequentialLooks::default();
    let mut previous: Option<proteus_experiments::ComparisonResult> = None;
    let mut agg = ExperimentAggregator::new(&d);
    let mut rng = Rng(3);
    for i in 0..3000usize {
        let unit = format!("u{i}");
        let t = T0 + i as i64 * 1_000;
        let arm = i % 2;
        agg.apply_exposure(&exposure(&unit, &d.arms[arm].variant, t));
        if rng.uniform() < if arm == 1 { 0.33 } else { 0.3 } {
            agg.apply_metric_event("shop", &order(&unit, 20.0), t + 1);
        }
        if i % 100 != 99 {
            continue;
        }
        let r = proteus_experiments::results_with_looks(&d, &agg, t, &looks);
        assert_all_finite(&r);
        looks.observe(&r);
        let current = ready(&r, 0);
        if let Some(p) = &previous {
            assert!(current.p_value <= p.p_value);
            let (a, b) = (current.lift_absolute.interval, p.lift_absolute.interval);
            assert!(a.lower.unwrap() >= b.lower.unwrap() && a.upper.unwrap() <= b.upper.unwrap());
        }
        // The running values are at least as tight as this look's own.
        let own = ready(&results(&d, &agg, t), 0);
        assert!(current.p_value <= own.p_value);
        previous = Some(current);
    }
}
