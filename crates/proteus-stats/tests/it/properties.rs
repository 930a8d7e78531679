//! Properties that must hold for any input: merging is addition, probabilities are
//! probabilities, intervals contain their estimates, and no result holds NaN or infinity.

use proptest::prelude::*;
use proteus_stats::*;
use serde::Serialize;
use serde_json::Value;

/// Walks a serialised result: serde_json turns NaN and ±∞ into `null`, so a `null` anywhere but
/// in the fields that are optional by design means a non-finite number escaped.
fn assert_all_finite<T: Serialize>(result: &T) {
    let json = serde_json::to_value(result).unwrap();
    // One-sided tests have one unbounded end, serialised as null by design.
    let one_sided = json["alternative"]
        .as_str()
        .is_some_and(|a| a != "two_sided");
    walk(&json, "$", one_sided);

    fn walk(value: &Value, path: &str, one_sided: bool) {
        match value {
            Value::Null => {
                let open_end = one_sided && (path.ends_with(".lower") || path.ends_with(".upper"));
                let optional =
                    open_end || path.ends_with(".relative") || path.ends_with(".statistic");
                assert!(optional, "non-finite number at {path}");
            }
            Value::Number(n) => assert!(n.as_f64().unwrap().is_finite(), "{path}"),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"), one_sided);
                }
            }
            Value::Object(fields) => {
                for (k, v) in fields {
                    walk(v, &format!("{path}.{k}"), one_sided);
                }
            }
            _ => {}
        }
    }
}

/// Ok, or "not enough data"; any other error for valid finite input is a bug.
fn ok_or_not_enough<T>(result: Result<T, StatsError>) -> Option<T> {
    match result {
        Ok(r) => Some(r),
        Err(StatsError::NotEnoughData(_)) => None,
        Err(e) => panic!("unexpected error for valid input: {e}"),
    }
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        -1e3..1e3f64,
        -1e9..1e9f64,
        Just(0.0),
        (-5i32..5).prop_map(f64::from),
    ]
}

fn summary() -> impl Strategy<Value = Summary> {
    (
        prop_oneof![0u64..5, 2u64..10_000, Just(1_000_000_000u64)],
        prop_oneof![-1e6..1e6f64, Just(0.0), -1e-9..1e-9f64],
        prop_oneof![0.0..1e6f64, Just(0.0), 0.0..1e-20f64],
    )
        .prop_map(|(n, mean, variance)| Summary::new(n, mean, variance).unwrap())
}

fn alternative() -> impl Strategy<Value = Alternative> {
    prop_oneof![
        Just(Alternative::TwoSided),
        Just(Alternative::Greater),
        Just(Alternative::Less)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn merged_stats_equal_stats_of_the_concatenation(
        a in prop::collection::vec((value(), value()), 0..40),
        b in prop::collection::vec((value(), value()), 0..40),
    ) {
        let mut left = SufficientStats::default();
        let mut right = SufficientStats::default();
        let mut all = SufficientStats::default();
        for &(y, x) in &a {
            left.push_with_covariate(y, x).unwrap();
            all.push_with_covariate(y, x).unwrap();
        }
        for &(y, x) in &b {
            right.push_with_covariate(y, x).unwrap();
            all.push_with_covariate(y, x).unwrap();
        }
        let merged = left + right;
        prop_assert_eq!(merged.n, all.n);
        let (m, c) = (merged.summary().unwrap(), all.summary().unwrap());
        // Addition in another order differs only by rounding, relative to the data's scale.
        let scale = a.iter().chain(&b).map(|(y, _)| y.abs()).fold(1.0, f64::max);
        prop_assert!((m.mean - c.mean).abs() <= 1e-12 * scale);
        prop_assert!((m.variance - c.variance).abs() <= 1e-9 * scale * scale);
        // The sample variance from sums matches a two-pass computation.
        let values: Vec<f64> = a.iter().chain(&b).map(|(y, _)| *y).collect();
        if values.len() >= 2 {
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let two_pass = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>()
                / (values.len() - 1) as f64;
            prop_assert!((c.variance - two_pass).abs() <= 1e-9 * scale * scale);
        }
    }

    #[test]
    fn welch_p_values_are_probabilities_and_intervals_hold_the_estimate(
        control in summary(),
        treatment in summary(),
        alpha in 0.001..0.5f64,
        alternative in alternative(),
    ) {
        let settings = TestSettings { alpha, alternative };
        if let Some(r) = ok_or_not_enough(welch_test(&control, &treatment, &settings)) {
            prop_assert!((0.0..=1.0).contains(&r.p_value));
            prop_assert!(r.absolute.interval.contains(r.absolute.estimate));
            if let Some(rel) = r.relative {
                prop_assert!(rel.interval.contains(rel.estimate));
            }
            // The interval excludes zero exactly when the test rejects (up to rounding).
            let rejects = r.p_value < alpha;
            let excludes = !r.absolute.interval.contains(0.0);
            if (r.p_value - alpha).abs() > 1e-9 {
                prop_assert_eq!(rejects, excludes, "p {} alpha {}", r.p_value, alpha);
            }
            assert_all_finite(&r);
        }
    }

    #[test]
    fn every_test_is_finite_for_finite_input(
        control in summary(),
        treatment in summary(),
        alpha in 0.001..0.5f64,
        target_units in 1u64..10_000_000,
        prior_variance in prop_oneof![Just(None), (1e-6..10.0f64).prop_map(Some)],
        absolute in any::<bool>(),
    ) {
        let (c, t) = (control.estimate(), treatment.estimate());
        let settings = TestSettings { alpha, alternative: Alternative::TwoSided };
        if let Some(r) = ok_or_not_enough(z_test(&c, &t, &settings)) {
            prop_assert!((0.0..=1.0).contains(&r.p_value));
            assert_all_finite(&r);
        }
        let sequential = SequentialSettings { alpha, target_units };
        if let Some(r) = ok_or_not_enough(sequential_test(&c, &t, &sequential)) {
            prop_assert!((0.0..=1.0).contains(&r.p_value));
            prop_assert!(r.absolute.interval.contains(r.absolute.estimate));
            assert_all_finite(&r);
            // A sequence valid at every look is wider than the one-look interval.
            let fixed = z_test(&c, &t, &settings).unwrap();
            prop_assert!(r.absolute.interval.lower.unwrap() <= fixed.absolute.interval.lower.unwrap());
        }
        let bayes = BayesSettings {
            prior: prior_variance.map_or(Prior::Flat, |variance| Prior::Gaussian { mean: 0.0, variance }),
            scale: if absolute { LiftScale::Absolute } else { LiftScale::Relative },
            alpha,
        };
        if let Some(r) = ok_or_not_enough(bayesian_test(&c, &t, &bayes)) {
            prop_assert!((0.0..=1.0).contains(&r.chance_to_beat_control));
            prop_assert!(r.risk_control >= 0.0 && r.risk_treatment >= 0.0);
            prop_assert!(r.credible_interval.contains(r.posterior_mean));
            // E[max(0, δ)] − E[max(0, −δ)] = E[δ].
            let identity = r.risk_control - r.risk_treatment - r.posterior_mean;
            prop_assert!(identity.abs() <= 1e-9 * r.posterior_mean.abs().max(r.posterior_standard_deviation));
            assert_all_finite(&r);
        }
    }

    #[test]
    fn proportions_and_ratios_are_finite(
        conversions in (0u64..1000, 0u64..1000),
        extra in (0u64..100_000, 0u64..100_000),
        units in prop::collection::vec((value(), -1e3..1e3f64), 0..30),
        units_t in prop::collection::vec((value(), -1e3..1e3f64), 0..30),
    ) {
        let c = Conversions { conversions: conversions.0, n: conversions.0 + extra.0 };
        let t = Conversions { conversions: conversions.1, n: conversions.1 + extra.1 };
        if let Some(r) = ok_or_not_enough(proportion_test(&c, &t, &TestSettings::default())) {
            prop_assert!((0.0..=1.0).contains(&r.p_value));
            assert_all_finite(&r);
        }
        let mut arms = [SufficientStats::default(); 2];
        for (arm, data) in arms.iter_mut().zip([&units, &units_t]) {
            for &(y, d) in data.iter() {
                arm.push_ratio(y, d).unwrap();
            }
        }
        if let Some(r) = ok_or_not_enough(ratio_test(&arms[0], &arms[1], &TestSettings::default())) {
            prop_assert!((0.0..=1.0).contains(&r.p_value));
            assert_all_finite(&r);
        }
    }

    #[test]
    fn cuped_never_increases_pooled_variance_much_and_stays_finite(
        arms in prop::collection::vec(prop::collection::vec((value(), value()), 0..30), 2..4),
    ) {
        let stats: Vec<SufficientStats> = arms.iter().map(|units| {
            let mut s = SufficientStats::default();
            for &(y, x) in units {
                s.push_with_covariate(y, x).unwrap();
            }
            s
        }).collect();
        if let Some(r) = ok_or_not_enough(cuped_test(&stats[0], &stats[1], &stats, &TestSettings::default())) {
            prop_assert!((0.0..=1.0).contains(&r.comparison.p_value));
            assert_all_finite(&r);
        }
    }

    #[test]
    fn corrections_are_monotone_probabilities(
        p in prop::collection::vec(prop_oneof![0.0..=1.0f64, Just(0.0), Just(1.0), 0.0..1e-6f64], 0..60),
    ) {
        for method in [Correction::None, Correction::Holm, Correction::BenjaminiHochberg] {
            let adjusted = adjust_p_values(&p, method).unwrap();
            prop_assert_eq!(adjusted.len(), p.len());
            for (i, (&a, &raw)) in adjusted.iter().zip(&p).enumerate() {
                prop_assert!((0.0..=1.0).contains(&a));
                prop_assert!(a >= raw);
                for (j, &raw_j) in p.iter().enumerate() {
                    if raw_j < raw {
                        prop_assert!(adjusted[j] <= a, "order kept: {} {}", i, j);
                    }
                }
            }
        }
    }

    #[test]
    fn srm_p_values_are_probabilities(
        arms in prop::collection::vec((0u64..2_000_000_000, 0.0..10.0f64), 2..12),
    ) {
        let counts: Vec<u64> = arms.iter().map(|a| a.0).collect();
        let weights: Vec<f64> = arms.iter().map(|a| a.1).collect();
        match srm_check(&counts, &weights, SRM_P_VALUE_THRESHOLD_DEFAULT) {
            Ok(r) => {
                prop_assert!((0.0..=1.0).contains(&r.p_value));
                prop_assert_eq!(r.mismatch, r.p_value < SRM_P_VALUE_THRESHOLD_DEFAULT);
                assert_all_finite(&r);
            }
            Err(StatsError::NotEnoughData(_)) => {}
            Err(StatsError::InvalidInput { field, .. }) => prop_assert_eq!(field, "weights"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn sample_size_achieves_the_target_power(
        effect in 1e-4..10.0f64,
        variance in 1e-3..1e3f64,
        alpha in 0.001..0.3f64,
        power in 0.5..0.99f64,
        ratio in 0.1..10.0f64,
    ) {
        let settings = PowerSettings { alpha, power, treatment_to_control_ratio: ratio };
        let mde = Mde::Absolute { effect };
        match sample_size(&mde, variance, &settings) {
            Ok(size) => {
                let achieved = achieved_power(&mde, variance, size.control_units_exact, &settings).unwrap();
                prop_assert!((achieved - power).abs() < 1e-9, "{} vs {}", achieved, power);
                let rounded = achieved_power(&mde, variance, size.control_units as f64, &settings).unwrap();
                prop_assert!(rounded >= power - 1e-12);
                assert_all_finite(&size);
            }
            Err(StatsError::Overflow { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
}
