//! Welch's unequal-variances t-test (Welch 1947) with Welch–Satterthwaite degrees of freedom;
//! what `scipy.stats.ttest_ind(equal_var=False)` computes.
//!
//! Welch's test does not assume the arms share a variance, which a treatment that changes
//! behaviour rarely respects, and loses almost no power when they do.

use crate::error::StatsError;
use crate::lift::{Comparison, Reference, TestSettings, check_estimates, check_units, compare};
use crate::sufficient::{ArmEstimate, Summary};

/// Welch–Satterthwaite degrees of freedom
/// ν = (v_c + v_t)² / (v_c²/(n_c − 1) + v_t²/(n_t − 1)), with v = se² = s²/n.
///
/// When one arm has zero variance this is n − 1 of the other arm. Requires n ≥ 2 per arm and a
/// positive total variance (checked by the callers).
pub fn welch_degrees_of_freedom(control: &ArmEstimate, treatment: &ArmEstimate) -> f64 {
    // Scaling by the larger variance keeps the squares from under- or overflowing.
    let vc = control.standard_error * control.standard_error;
    let vt = treatment.standard_error * treatment.standard_error;
    let scale = vc.max(vt);
    let (vc, vt) = (vc / scale, vt / scale);
    let numerator = (vc + vt) * (vc + vt);
    let denominator = vc * vc / (control.n - 1) as f64 + vt * vt / (treatment.n - 1) as f64;
    numerator / denominator
}

/// Welch's t-test of treatment against control from their summaries.
pub fn welch_test(
    control: &Summary,
    treatment: &Summary,
    settings: &TestSettings,
) -> Result<Comparison, StatsError> {
    welch_test_estimates(&control.estimate(), &treatment.estimate(), settings)
}

/// Welch's t-test from arm estimates (e.g. CUPED-adjusted means); `n` gives the degrees of
/// freedom.
pub fn welch_test_estimates(
    control: &ArmEstimate,
    treatment: &ArmEstimate,
    settings: &TestSettings,
) -> Result<Comparison, StatsError> {
    check_estimates(control, treatment)?;
    check_units(control, treatment)?;
    if control.standard_error == 0.0 && treatment.standard_error == 0.0 {
        return Err(crate::error::NotEnoughData::ZeroVariance.into());
    }
    let degrees_of_freedom = welch_degrees_of_freedom(control, treatment);
    compare(
        control,
        treatment,
        Reference::StudentT { degrees_of_freedom },
        settings,
    )
}
