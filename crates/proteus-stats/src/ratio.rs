//! Ratio metrics: Σ numerator / Σ denominator over an arm's units (revenue per session, clicks
//! per page view), where the unit of randomisation (the user) is not the unit of the ratio.
//!
//! Numerators and denominators of one user are correlated, so the naive variance of the pooled
//! ratio is wrong. The delta method (Deng, Knoblich and Lu 2018, "Applying the Delta Method in
//! Metric Analytics") linearises R = ȳ/d̄ around the means:
//!
//! Var(R) ≈ (1/n) · (s_y² − 2R·s_yd + R²·s_d²) / d̄²
//!
//! with the sample variances and covariance (denominator n − 1). The test is a z-test.

use crate::error::{Arm, NotEnoughData, StatsError, finite_output};
use crate::lift::{Comparison, TestSettings, z_test};
use crate::sufficient::{ArmEstimate, SufficientStats};

/// The arm's ratio Σy/Σd with its delta-method standard error.
pub fn ratio_estimate(stats: &SufficientStats, arm: Arm) -> Result<ArmEstimate, StatsError> {
    stats.validate()?;
    if stats.n == 0 {
        return Err(NotEnoughData::NoUnits { arm }.into());
    }
    if stats.n < 2 {
        return Err(NotEnoughData::TooFewUnits {
            arm,
            units: stats.n,
            units_min: 2,
        }
        .into());
    }
    if stats.denominator_sum == 0.0 {
        return Err(NotEnoughData::ZeroDenominator { arm }.into());
    }
    let n = stats.n as f64;
    let ratio = finite_output(stats.sum / stats.denominator_sum, "the ratio")?;
    let denominator_mean = stats.denominator_mean();
    let ss_y = stats.centred_value();
    let (ss_d, sp_yd) = stats.centred_denominator();
    // Σ(y − R·d)² centred, i.e. (n − 1) times the variance of the linearised unit values.
    let ss_linear = (ss_y - 2.0 * ratio * sp_yd + ratio * ratio * ss_d).max(0.0);
    let variance_of_ratio = ss_linear / (n - 1.0) / n / (denominator_mean * denominator_mean);
    let standard_error = finite_output(variance_of_ratio.sqrt(), "the ratio's standard error")?;
    Ok(ArmEstimate {
        n: stats.n,
        mean: ratio,
        standard_error,
    })
}

/// Delta-method z-test of a ratio metric, treatment against control.
pub fn ratio_test(
    control: &SufficientStats,
    treatment: &SufficientStats,
    settings: &TestSettings,
) -> Result<Comparison, StatsError> {
    z_test(
        &ratio_estimate(control, Arm::Control)?,
        &ratio_estimate(treatment, Arm::Treatment)?,
        settings,
    )
}
