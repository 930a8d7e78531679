//! Always-valid inference: asymptotic confidence sequences (Waudby-Smith, Arbour, Sinha,
//! Kennedy and Ramdas 2023, "Time-uniform central limit theory and asymptotic confidence
//! sequences", Annals of Statistics; arXiv:2103.06476).
//!
//! A fixed-horizon interval covers the truth with probability 1 − α at one pre-planned look.
//! Looking every hour and stopping at the first significant result inflates false positives
//! far beyond α. A confidence sequence covers the truth at *all* looks simultaneously with
//! probability at least 1 − α (asymptotically), so results can be watched continuously.
//!
//! The boundary is Robbins' two-sided normal mixture. For N units with estimated per-unit
//! standard deviation σ̂, the interval for the mean is μ̂ ± σ̂·m(N) with
//!
//! m(N) = √( 2(Nρ² + 1) / (N²ρ²) · ln( √(Nρ² + 1) / α ) ),
//!
//! where ρ > 0 tunes where the sequence is tightest. Choosing
//! ρ² = (−2 ln α + ln(1 − 2 ln α)) / N* makes it (approximately) tightest at N* units, the
//! planned sample size.
//!
//! For a difference of two means, N is the number of units in both arms and σ̂² = N·(s_c²/n_c +
//! s_t²/n_t): the difference-in-means estimator behaves like a mean of N independent
//! pseudo-observations of that variance (as in GrowthBook's implementation of the same paper).
//!
//! The always-valid p-value is the smallest α whose sequence excludes zero, i.e. the reciprocal
//! of the normal-mixture martingale: p = min(1, √(Nρ² + 1)·exp(−ρ²S²/(2(Nρ² + 1)))) with
//! S = N·(difference)/σ̂, holding ρ at its planned value. Taking the running minimum of p (and
//! the running intersection of the intervals) over looks keeps the guarantee.

use crate::error::{StatsError, finite_output, open_unit};
use crate::lift::{Interval, LiftEstimate, check_estimates, check_units, relative_lift};
use crate::sufficient::ArmEstimate;
use serde::{Deserialize, Serialize};

/// Settings of a sequential test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SequentialSettings {
    /// The probability that the sequence ever misses the true difference.
    pub alpha: f64,
    /// Units (both arms together) at which the sequence should be tightest: the planned sample
    /// size. Any positive value keeps the guarantee; a good guess only makes it narrower.
    pub target_units: u64,
}

/// ρ of the normal mixture tightest at `target_units`: ρ² = (−2 ln α + ln(1 − 2 ln α)) / N*.
pub fn mixture_rho(alpha: f64, target_units: u64) -> Result<f64, StatsError> {
    open_unit(alpha, "alpha")?;
    if target_units == 0 {
        return Err(StatsError::InvalidInput {
            field: "target_units",
            expected: "a positive number of units",
            got: "0".into(),
        });
    }
    let l = -2.0 * alpha.ln();
    Ok(((l + (1.0 + l).ln()) / target_units as f64).sqrt())
}

/// m(N): the half-width of the confidence sequence for a unit standard deviation after `units`
/// observations.
pub fn mixture_margin(units: f64, rho: f64, alpha: f64) -> f64 {
    let r2 = rho * rho;
    let v = units * r2 + 1.0;
    (2.0 * v / (units * units * r2) * (v.sqrt() / alpha).ln()).sqrt()
}

/// The always-valid p-value of `difference` with per-unit standard deviation `sd_per_unit`
/// after `units` observations: the reciprocal of the mixture martingale, capped at 1.
pub fn mixture_p_value(difference: f64, sd_per_unit: f64, units: f64, rho: f64) -> f64 {
    let r2 = rho * rho;
    let v = units * r2 + 1.0;
    let s = units * difference / sd_per_unit;
    // ln p = ½ ln v − ρ²S²/(2v); computed in logs so a huge S gives 0, not 0·∞.
    let ln_p = 0.5 * v.ln() - r2 * s * s / (2.0 * v);
    if ln_p >= 0.0 { 1.0 } else { ln_p.exp() }
}

/// A sequential comparison: intervals valid at every look, and an always-valid p-value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SequentialComparison {
    pub control: ArmEstimate,
    pub treatment: ArmEstimate,
    /// Treatment − control with its always-valid interval.
    pub absolute: LiftEstimate,
    /// Relative lift with the same boundary applied to its delta-method standard error; absent
    /// when the control mean is zero.
    pub relative: Option<LiftEstimate>,
    /// Always-valid p-value for "no difference".
    pub p_value: f64,
    pub rho: f64,
    pub units: u64,
    pub alpha: f64,
}

/// The asymptotic-confidence-sequence test of treatment against control at the current look.
pub fn sequential_test(
    control: &ArmEstimate,
    treatment: &ArmEstimate,
    settings: &SequentialSettings,
) -> Result<SequentialComparison, StatsError> {
    let rho = mixture_rho(settings.alpha, settings.target_units)?;
    check_estimates(control, treatment)?;
    check_units(control, treatment)?;
    let standard_error = control.standard_error.hypot(treatment.standard_error);
    if standard_error == 0.0 {
        return Err(crate::error::NotEnoughData::ZeroVariance.into());
    }
    let units = control.n + treatment.n;
    let n = units as f64;
    let difference = finite_output(treatment.mean - control.mean, "the difference of means")?;
    // σ̂ per unit = √N · se(difference); the margin scales with it.
    let margin = mixture_margin(n, rho, settings.alpha);
    let sd_per_unit = n.sqrt() * standard_error;
    let half_width = finite_output(sd_per_unit * margin, "the sequence's half-width")?;
    let absolute = LiftEstimate {
        estimate: difference,
        standard_error,
        interval: Interval {
            lower: Some(difference - half_width),
            upper: Some(difference + half_width),
        },
    };
    let relative = relative_lift(control, treatment).and_then(|(estimate, se)| {
        let half_width = n.sqrt() * se * margin;
        half_width.is_finite().then_some(LiftEstimate {
            estimate,
            standard_error: se,
            interval: Interval {
                lower: Some(estimate - half_width),
                upper: Some(estimate + half_width),
            },
        })
    });
    let p_value = mixture_p_value(difference, sd_per_unit, n, rho).clamp(0.0, 1.0);
    Ok(SequentialComparison {
        control: *control,
        treatment: *treatment,
        absolute,
        relative,
        p_value,
        rho,
        units,
        alpha: settings.alpha,
    })
}

/// Combines the previous look's result with the current one as the theory allows: the running
/// intersection of the intervals and the running minimum of the p-value. An empty intersection
/// (possible only when the assumptions fail) keeps the current interval.
pub fn running_intersection(previous: &Interval, current: &Interval) -> Interval {
    let lower = match (previous.lower, current.lower) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let upper = match (previous.upper, current.upper) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match (lower, upper) {
        (Some(l), Some(u)) if l > u => *current,
        _ => Interval { lower, upper },
    }
}
