//! Power and sample size for a two-sided test of a difference in means, and how long the
//! experiment needs to run.
//!
//! With standardised effect d = MDE/σ, n_c control units and n_t = r·n_c treatment units, the
//! difference has standard error σ·√(1/n_c + 1/n_t), and a two-sided z-test at level α has power
//!
//! power = Φ(d·√n_eff − z_{1−α/2}) + Φ(−d·√n_eff − z_{1−α/2}),  n_eff = 1/(1/n_c + 1/n_t)
//!
//! (`statsmodels.stats.power.NormalIndPower`, whose `ratio` is r). The sample size is the n_c at
//! which this equals the target power, solved exactly (the familiar
//! n = 2σ²(z_{1−α/2} + z_{power})²/MDE² drops the second, tiny term). The normal approximation is
//! what experiments need: at the sample sizes that detect realistic effects (hundreds of units
//! or more) the t-test's power differs in the fourth digit.

use crate::error::{StatsError, finite_input, finite_output, open_unit};
use crate::special::{normal_cdf, normal_isf, normal_pdf, normal_sf};
use serde::{Deserialize, Serialize};

/// The minimum detectable effect to size the experiment for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mde {
    /// An absolute difference of means, in the metric's units.
    Absolute { effect: f64 },
    /// A relative lift (0.02 = +2%) of a metric whose control mean is `baseline_mean`.
    Relative { lift: f64, baseline_mean: f64 },
}

impl Mde {
    /// The absolute effect size (positive).
    pub fn absolute_effect(&self) -> Result<f64, StatsError> {
        let effect = match *self {
            Mde::Absolute { effect } => finite_input(effect, "mde")?,
            Mde::Relative {
                lift,
                baseline_mean,
            } => finite_input(lift, "mde")? * finite_input(baseline_mean, "baseline_mean")?,
        };
        if effect == 0.0 || !effect.is_finite() {
            return Err(StatsError::InvalidInput {
                field: "mde",
                expected: "a non-zero effect (and a non-zero baseline for a relative one)",
                got: effect.to_string(),
            });
        }
        Ok(effect.abs())
    }
}

/// Settings of a power calculation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PowerSettings {
    /// Two-sided significance level.
    pub alpha: f64,
    /// Target probability of detecting the MDE.
    pub power: f64,
    /// Treatment units per control unit (1 for an even split).
    pub treatment_to_control_ratio: f64,
}

impl Default for PowerSettings {
    fn default() -> Self {
        PowerSettings {
            alpha: 0.05,
            power: 0.8,
            treatment_to_control_ratio: 1.0,
        }
    }
}

/// The sample size a test needs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SampleSize {
    /// Exact (fractional) control units, as statsmodels' `solve_power` returns.
    pub control_units_exact: f64,
    /// Control units, rounded up.
    pub control_units: u64,
    /// Treatment units, rounded up.
    pub treatment_units: u64,
    pub total_units: u64,
}

fn check_settings(settings: &PowerSettings) -> Result<(), StatsError> {
    open_unit(settings.alpha, "alpha")?;
    open_unit(settings.power, "power")?;
    let r = settings.treatment_to_control_ratio;
    if !(r.is_finite() && r > 0.0) {
        return Err(StatsError::InvalidInput {
            field: "treatment_to_control_ratio",
            expected: "a positive, finite ratio",
            got: r.to_string(),
        });
    }
    Ok(())
}

fn standardised_effect(mde: &Mde, variance_per_unit: f64) -> Result<f64, StatsError> {
    let effect = mde.absolute_effect()?;
    finite_input(variance_per_unit, "variance_per_unit")?;
    if variance_per_unit <= 0.0 {
        return Err(StatsError::InvalidInput {
            field: "variance_per_unit",
            expected: "a positive variance (a metric that never varies cannot be tested)",
            got: variance_per_unit.to_string(),
        });
    }
    finite_output(effect / variance_per_unit.sqrt(), "the standardised effect")
}

/// Two-sided power as a function of s = d·√n_eff.
fn power_of_shift(shift: f64, critical: f64) -> f64 {
    normal_sf(critical - shift) + normal_cdf(-critical - shift)
}

/// Power of the two-sided test with `control_units` control units.
pub fn achieved_power(
    mde: &Mde,
    variance_per_unit: f64,
    control_units: f64,
    settings: &PowerSettings,
) -> Result<f64, StatsError> {
    check_settings(settings)?;
    let d = standardised_effect(mde, variance_per_unit)?;
    if !(control_units.is_finite() && control_units >= 0.0) {
        return Err(StatsError::InvalidInput {
            field: "control_units",
            expected: "a non-negative number of units",
            got: control_units.to_string(),
        });
    }
    let effective = control_units / (1.0 + 1.0 / settings.treatment_to_control_ratio);
    let critical = normal_isf(settings.alpha / 2.0);
    Ok(power_of_shift(d * effective.sqrt(), critical).clamp(0.0, 1.0))
}

/// Units per arm needed to detect `mde` with the target power in a two-sided test.
pub fn sample_size(
    mde: &Mde,
    variance_per_unit: f64,
    settings: &PowerSettings,
) -> Result<SampleSize, StatsError> {
    check_settings(settings)?;
    if settings.power <= settings.alpha {
        return Err(StatsError::InvalidInput {
            field: "power",
            expected: "a power greater than alpha",
            got: settings.power.to_string(),
        });
    }
    let d = standardised_effect(mde, variance_per_unit)?;
    let critical = normal_isf(settings.alpha / 2.0);
    // Newton's method on the shift s = d·√n_eff from the one-tail solution, which is an upper
    // bound; the power is increasing and concave there, so the iteration converges from above.
    let mut shift = critical + normal_isf(1.0 - settings.power);
    for _ in 0..50 {
        let f = power_of_shift(shift, critical) - settings.power;
        let slope = normal_pdf(critical - shift) - normal_pdf(critical + shift);
        if slope <= 0.0 {
            break;
        }
        let step = f / slope;
        shift -= step;
        if step.abs() <= 1e-15 * shift.abs() {
            break;
        }
    }
    let effective = (shift / d).powi(2);
    let r = settings.treatment_to_control_ratio;
    let control_exact = finite_output(effective * (1.0 + 1.0 / r), "the sample size")?;
    let treatment_exact = finite_output(control_exact * r, "the sample size")?;
    if control_exact > 1e18 || treatment_exact > 1e18 {
        return Err(StatsError::Overflow {
            what: "the sample size",
        });
    }
    // Shave rounding noise before rounding up, so 1000.0000000001 is 1000.
    let ceil = |x: f64| (x * (1.0 - 1e-12)).ceil().max(1.0) as u64;
    let control_units = ceil(control_exact);
    let treatment_units = ceil(treatment_exact);
    Ok(SampleSize {
        control_units_exact: control_exact,
        control_units,
        treatment_units,
        total_units: control_units + treatment_units,
    })
}

/// How long until an experiment reaches its sample size at the current traffic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DaysEstimate {
    pub remaining_units: u64,
    /// Days still needed; 0 when reached, absent when no traffic arrives (it never will).
    pub days: Option<f64>,
    pub reached: bool,
}

/// Days until `required_units` (total over the arms) are reached, from `current_units` and the
/// recent `units_per_day`.
pub fn estimated_days(
    required_units: u64,
    current_units: u64,
    units_per_day: f64,
) -> Result<DaysEstimate, StatsError> {
    finite_input(units_per_day, "units_per_day")?;
    if units_per_day < 0.0 {
        return Err(StatsError::InvalidInput {
            field: "units_per_day",
            expected: "a non-negative rate",
            got: units_per_day.to_string(),
        });
    }
    let remaining_units = required_units.saturating_sub(current_units);
    let days = if remaining_units == 0 {
        Some(0.0)
    } else if units_per_day > 0.0 {
        Some(remaining_units as f64 / units_per_day).filter(|d| d.is_finite())
    } else {
        None
    };
    Ok(DaysEstimate {
        remaining_units,
        days,
        reached: remaining_units == 0,
    })
}
