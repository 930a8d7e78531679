//! Simulation: synthetic traffic with a known true effect, through the aggregator and the
//! results, peeking after every 100 units. Deterministic (seeded), a few seconds in debug.

use crate::{Rng, T0, exposure, order, parse};
use proteus_experiments::{ExperimentAggregator, ExperimentDefinition, results};
use serde_json::json;

const UNITS: usize = 1_000;
const LOOK_EVERY_UNITS: usize = 100;

fn simple_definition(sequential: bool) -> ExperimentDefinition {
    parse(&json!({
        "id": "sim", "name": "simulation", "flag_set": "prod", "flag": "checkout",
        "arms": [{"variant": "control", "weight": 1}, {"variant": "green", "weight": 1}],
        "control": "control",
        "metrics": [{"id": "purchase", "kind": "conversion",
                     "source": {"topic": "shop", "event_type": "order.placed"}}],
        "primary_metric": "purchase",
        "minimum_detectable_effect": {"relative": 0.3},
        "analysis": {"sequential": sequential, "sequential_target_units": UNITS}
    }))
}

/// Runs one experiment; returns (significant at any look, significant at the last look).
fn run(d: &ExperimentDefinition, seed: u64, rates: [f64; 2]) -> (bool, bool) {
    let mut rng = Rng(seed);
    let mut agg = ExperimentAggregator::new(d);
    let mut any = false;
    let mut last = false;
    for i in 0..UNITS {
        let unit = format!("u{i}");
        let arm = usize::from(rng.uniform() < 0.5);
        let t = T0 + i as i64 * 1_000;
        agg.apply_exposure(&exposure(&unit, &d.arms[arm].variant, t));
        if rng.uniform() < rates[arm] {
            agg.apply_metric_event("shop", &order(&unit, 1.0), t + 1);
        }
        if (i + 1) % LOOK_EVERY_UNITS == 0 {
            let r = results(d, &agg, t);
            let significant = r.metrics[0].arms[1]
                .comparison
                .as_ref()
                .and_then(|c| c.ready())
                .is_some_and(|c| c.significant);
            any |= significant;
            last = significant;
        }
    }
    (any, last)
}

fn rates(d: &ExperimentDefinition, experiments: u64, seed: u64, truth: [f64; 2]) -> (f64, f64) {
    let mut any = 0;
    let mut last = 0;
    for e in 0..experiments {
        let (a, l) = run(d, seed + e * 7_919, truth);
        any += u64::from(a);
        last += u64::from(l);
    }
    (
        any as f64 / experiments as f64,
        last as f64 / experiments as f64,
    )
}

#[test]
fn a_a_false_positives_with_continuous_peeking_and_power() {
    let sequential = simple_definition(true);
    let fixed = simple_definition(false);
    let experiments = 200;
    let (seq_peeking, _) = rates(&sequential, experiments, 1, [0.2, 0.2]);
    let (fixed_peeking, fixed_final) = rates(&fixed, experiments, 1, [0.2, 0.2]);
    // Power under a true +40% relative lift (0.20 → 0.28).
    let (seq_power, _) = rates(&sequential, 100, 5, [0.2, 0.28]);
    let (_, fixed_power) = rates(&fixed, 100, 5, [0.2, 0.28]);
    println!(
        "A/A over {experiments} experiments of {UNITS} units, 10 looks: sequential (peeking) {seq_peeking:.3}, \
         fixed (peeking) {fixed_peeking:.3}, fixed (final look only) {fixed_final:.3}; \
         power at +40%: sequential (peeking) {seq_power:.2}, fixed (final look) {fixed_power:.2}"
    );
    assert!(
        seq_peeking <= 0.05,
        "sequential A/A false positives {seq_peeking}"
    );
    assert!(
        fixed_peeking > seq_peeking,
        "peeking inflates the fixed test"
    );
    assert!(fixed_final <= 0.08, "fixed test at one look {fixed_final}");
    // Always-valid inference pays for peeking in width: about half the fixed test's power at
    // the same final sample size (docs/experiments-statistics.md measured 50% against 80%).
    assert!(seq_power >= 0.4, "sequential power {seq_power}");
    assert!(fixed_power >= 0.7, "fixed power {fixed_power}");
}

/// The simulation behind `proteus bench experiment`: the same conclusions from its public API,
/// and clear errors for impossible settings.
#[test]
fn the_bench_simulation_keeps_sequential_peeking_under_alpha() {
    use proteus_experiments::simulation::{SimulationConfig, simulate};
    let config = SimulationConfig {
        experiments: 100,
        units: 1_000,
        units_per_hour: 100,
        look_every_ms: 3_600_000,
        control_rate: 0.2,
        treatment_rate: 0.2,
        alpha: 0.05,
        seed: 7,
    };
    let report = simulate(&config).unwrap();
    assert_eq!(report.looks, 10);
    assert!(report.sequential_at_any_look <= 0.05, "{report:?}");
    assert!(
        report.fixed_at_any_look > report.sequential_at_any_look,
        "{report:?}"
    );
    let bad = SimulationConfig {
        treatment_rate: 1.5,
        ..config.clone()
    };
    let error = simulate(&bad).unwrap_err();
    assert!(
        error.0.contains("treatment_rate must be from 0 to 1"),
        "{error}"
    );
    let none = SimulationConfig {
        experiments: 0,
        ..config
    };
    assert!(
        simulate(&none)
            .unwrap_err()
            .0
            .contains("experiments must be")
    );
}
