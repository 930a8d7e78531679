//! Degenerate input gives explicit errors or "not enough data", never a panic and never NaN.

use proteus_stats::*;

fn invalid_field<T: std::fmt::Debug>(result: Result<T, StatsError>) -> &'static str {
    match result {
        Err(StatsError::InvalidInput { field, .. }) => field,
        other => panic!("expected invalid input, got {other:?}"),
    }
}

fn not_enough<T: std::fmt::Debug>(result: Result<T, StatsError>) -> NotEnoughData {
    match result {
        Err(StatsError::NotEnoughData(reason)) => reason,
        other => panic!("expected not enough data, got {other:?}"),
    }
}

fn arm(n: u64, mean: f64, variance: f64) -> Summary {
    Summary::new(n, mean, variance).unwrap()
}

#[test]
fn non_finite_values_are_refused_at_the_door() {
    let mut stats = SufficientStats::default();
    assert_eq!(invalid_field(stats.push(f64::NAN)), "value");
    assert_eq!(invalid_field(stats.push(f64::INFINITY)), "value");
    assert_eq!(
        invalid_field(stats.push_ratio(1.0, f64::NAN)),
        "denominator"
    );
    assert_eq!(
        invalid_field(stats.push_with_covariate(1.0, f64::NEG_INFINITY)),
        "covariate"
    );
    // A square that overflows is refused too, and the sums are left untouched.
    assert_eq!(invalid_field(stats.push(1e200)), "sum_squares");
    assert_eq!(stats, SufficientStats::default());
    assert_eq!(invalid_field(Summary::new(3, f64::NAN, 1.0)), "mean");
    assert_eq!(invalid_field(Summary::new(3, 1.0, -1.0)), "variance");
    let poisoned = SufficientStats {
        n: 2,
        sum: f64::NAN,
        ..SufficientStats::default()
    };
    assert_eq!(invalid_field(poisoned.summary()), "sum");
}

#[test]
fn young_experiments_get_not_enough_data() {
    let s = TestSettings::default();
    assert_eq!(
        not_enough(welch_test(&arm(0, 0.0, 0.0), &arm(10, 1.0, 1.0), &s)),
        NotEnoughData::NoUnits { arm: Arm::Control }
    );
    assert_eq!(
        not_enough(welch_test(&arm(10, 0.0, 1.0), &arm(1, 1.0, 0.0), &s)),
        NotEnoughData::TooFewUnits {
            arm: Arm::Treatment,
            units: 1,
            units_min: 2
        }
    );
    assert_eq!(
        not_enough(welch_test(&arm(10, 1.0, 0.0), &arm(10, 2.0, 0.0), &s)),
        NotEnoughData::ZeroVariance
    );
    let empty = SufficientStats::default();
    assert_eq!(
        not_enough(ratio_test(&empty, &empty, &s)),
        NotEnoughData::NoUnits { arm: Arm::Control }
    );
    assert_eq!(
        not_enough(cuped_test(&empty, &empty, &[empty, empty], &s)),
        NotEnoughData::NoUnitsTotal
    );
    let c = arm(10, 0.0, 1.0).estimate();
    let t = arm(10, 1.0, 1.0).estimate();
    assert_eq!(
        not_enough(bayesian_test(&c, &t, &BayesSettings::default())),
        NotEnoughData::ZeroControlMean
    );
    assert_eq!(
        not_enough(srm_check(&[0, 0], &[1.0, 1.0], 0.001)),
        NotEnoughData::NoUnitsTotal
    );
}

#[test]
fn not_enough_data_is_a_result_the_api_can_show() {
    let result = welch_test(
        &arm(1, 0.0, 0.0),
        &arm(10, 1.0, 1.0),
        &TestSettings::default(),
    );
    let outcome = Outcome::from_result(result).unwrap();
    let json = serde_json::to_value(&outcome).unwrap();
    assert_eq!(json["status"], "not_enough_data");
    assert_eq!(json["detail"]["reason"], "too_few_units");
    assert_eq!(json["detail"]["arm"], "control");
    let ready = Outcome::from_result(welch_test(
        &arm(10, 0.0, 1.0),
        &arm(10, 1.0, 1.0),
        &TestSettings::default(),
    ))
    .unwrap();
    assert_eq!(serde_json::to_value(&ready).unwrap()["status"], "ready");
    // Invalid input stays an error.
    let bad = TestSettings {
        alpha: 1.5,
        ..TestSettings::default()
    };
    assert!(
        Outcome::from_result(welch_test(&arm(10, 0.0, 1.0), &arm(10, 1.0, 1.0), &bad)).is_err()
    );
}

#[test]
fn settings_outside_their_domain_are_invalid() {
    let (c, t) = (arm(10, 1.0, 1.0), arm(10, 2.0, 1.0));
    for alpha in [0.0, 1.0, -0.1, f64::NAN] {
        let s = TestSettings {
            alpha,
            ..TestSettings::default()
        };
        assert_eq!(invalid_field(welch_test(&c, &t, &s)), "alpha");
    }
    let sequential = SequentialSettings {
        alpha: 0.05,
        target_units: 0,
    };
    assert_eq!(
        invalid_field(sequential_test(&c.estimate(), &t.estimate(), &sequential)),
        "target_units"
    );
    let bayes = BayesSettings {
        prior: Prior::Gaussian {
            mean: 0.0,
            variance: 0.0,
        },
        ..BayesSettings::default()
    };
    assert_eq!(
        invalid_field(bayesian_test(&c.estimate(), &t.estimate(), &bayes)),
        "prior variance"
    );
    let conversions = Conversions {
        conversions: 11,
        n: 10,
    };
    assert_eq!(invalid_field(conversions.estimate()), "conversions");
    assert_eq!(
        invalid_field(SufficientStats::from_conversions(3, 2)),
        "conversions"
    );
}

#[test]
fn srm_weights_must_make_sense() {
    assert_eq!(
        invalid_field(srm_check(&[10, 10], &[0.0, 0.0], 0.001)),
        "weights"
    );
    assert_eq!(
        invalid_field(srm_check(&[10, 10], &[1.0, -1.0], 0.001)),
        "weights"
    );
    assert_eq!(
        invalid_field(srm_check(&[10, 10], &[1.0, f64::NAN], 0.001)),
        "weights"
    );
    assert_eq!(
        invalid_field(srm_check(&[10, 10], &[1.0], 0.001)),
        "weights"
    );
    assert_eq!(invalid_field(srm_check(&[10], &[1.0], 0.001)), "counts");
    assert_eq!(
        invalid_field(srm_check(&[10, 10], &[1.0, 1.0], 0.0)),
        "threshold"
    );
    // Units in an arm that should get none: a mismatch whatever the statistic.
    let r = srm_check(&[100, 1, 100], &[1.0, 0.0, 1.0], 0.001).unwrap();
    assert!(r.mismatch);
    assert_eq!(r.statistic, None);
    assert_eq!(r.p_value, 0.0);
}

#[test]
fn corrections_refuse_non_probabilities_and_accept_nothing() {
    assert_eq!(
        invalid_field(adjust_p_values(&[0.1, 1.5], Correction::Holm)),
        "p_values"
    );
    assert_eq!(
        invalid_field(adjust_p_values(&[f64::NAN], Correction::BenjaminiHochberg)),
        "p_values"
    );
    assert!(adjust_p_values(&[], Correction::Holm).unwrap().is_empty());
}

#[test]
fn power_needs_an_effect_and_a_variance() {
    let s = PowerSettings::default();
    assert_eq!(
        invalid_field(sample_size(&Mde::Absolute { effect: 0.0 }, 1.0, &s)),
        "mde"
    );
    assert_eq!(
        invalid_field(sample_size(
            &Mde::Relative {
                lift: 0.05,
                baseline_mean: 0.0
            },
            1.0,
            &s
        )),
        "mde"
    );
    assert_eq!(
        invalid_field(sample_size(&Mde::Absolute { effect: 0.1 }, 0.0, &s)),
        "variance_per_unit"
    );
    let weak = PowerSettings { power: 0.01, ..s };
    assert_eq!(
        invalid_field(sample_size(&Mde::Absolute { effect: 0.1 }, 1.0, &weak)),
        "power"
    );
    // An effect far below the noise needs more units than exist: an error, not infinity.
    assert!(matches!(
        sample_size(&Mde::Absolute { effect: 1e-300 }, 1.0, &s),
        Err(StatsError::Overflow { .. }) | Err(StatsError::InvalidInput { .. })
    ));
}

#[test]
fn days_to_reach_the_sample_size() {
    let d = estimated_days(10_000, 4_000, 1_500.0).unwrap();
    assert_eq!(d.remaining_units, 6_000);
    assert_eq!(d.days, Some(4.0));
    assert!(!d.reached);
    let done = estimated_days(10_000, 12_000, 0.0).unwrap();
    assert!(done.reached);
    assert_eq!(done.days, Some(0.0));
    let stalled = estimated_days(10_000, 4_000, 0.0).unwrap();
    assert_eq!(stalled.days, None);
    assert_eq!(invalid_field(estimated_days(10, 0, -1.0)), "units_per_day");
    assert_eq!(
        invalid_field(estimated_days(10, 0, f64::NAN)),
        "units_per_day"
    );
}

#[test]
fn huge_inputs_overflow_into_errors_not_infinity() {
    let c = arm(10, -1.7e308, 1.0);
    let t = arm(10, 1.7e308, 1.0);
    assert!(matches!(
        welch_test(&c, &t, &TestSettings::default()),
        Err(StatsError::Overflow { .. })
    ));
    let c = arm(10, 0.0, 1e308);
    let t = arm(10, 1.0, 1e308);
    let r = welch_test(&c, &t, &TestSettings::default());
    assert!(
        r.is_ok() || matches!(r, Err(StatsError::Overflow { .. })),
        "{r:?}"
    );
}

#[test]
fn huge_samples_behave() {
    // 1e9 units per arm: the degrees of freedom are ~2e9 and the t distribution is the normal.
    let c = arm(1_000_000_000, 10.0, 4.0);
    let t = arm(1_000_000_000, 10.0003, 4.0);
    let r = welch_test(&c, &t, &TestSettings::default()).unwrap();
    let z = 0.0003 / (8.0f64 / 1e9).sqrt();
    let normal_p = 2.0 * proteus_stats::special::normal_sf(z);
    assert!(
        (r.p_value - normal_p).abs() < 1e-6 * normal_p,
        "{} vs {normal_p}",
        r.p_value
    );
    let mut stats = SufficientStats::from_conversions(100_000_000, 1_000_000_000).unwrap();
    stats.merge(&SufficientStats::from_conversions(1, 1).unwrap());
    let s = stats.summary().unwrap();
    assert!((s.mean - 100_000_001.0 / 1_000_000_001.0).abs() < 1e-15);
}

#[test]
fn running_intersection_keeps_the_tightest_bounds() {
    let a = Interval {
        lower: Some(-1.0),
        upper: Some(2.0),
    };
    let b = Interval {
        lower: Some(-0.5),
        upper: Some(3.0),
    };
    assert_eq!(
        running_intersection(&a, &b),
        Interval {
            lower: Some(-0.5),
            upper: Some(2.0)
        }
    );
    let disjoint = Interval {
        lower: Some(5.0),
        upper: Some(6.0),
    };
    assert_eq!(running_intersection(&a, &disjoint), disjoint);
}
