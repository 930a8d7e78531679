//! The two-sample comparison every frequentist test shares: lift, its standard error, a
//! p-value and confidence intervals, absolute and relative.
//!
//! The methods differ only in how an arm's mean and standard error are estimated (plain mean,
//! proportion, ratio by the delta method, CUPED-adjusted mean) and in the reference
//! distribution (Student t with Welch–Satterthwaite degrees of freedom, or the normal). Both are
//! inputs here, so the arithmetic of the lift lives in one place.

use crate::error::{Arm, NotEnoughData, StatsError, finite_output, open_unit};
use crate::special::{normal_isf, normal_sf, student_t_isf, student_t_sf};
use crate::sufficient::ArmEstimate;
use serde::{Deserialize, Serialize};

/// The alternative hypothesis, always about treatment minus control.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alternative {
    /// The treatment differs from the control (either way).
    #[default]
    TwoSided,
    /// The treatment mean is greater than the control mean.
    Greater,
    /// The treatment mean is less than the control mean.
    Less,
}

/// Significance level and alternative of a fixed-horizon test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TestSettings {
    /// Significance level; intervals have confidence 1 − alpha.
    pub alpha: f64,
    pub alternative: Alternative,
}

impl Default for TestSettings {
    fn default() -> Self {
        TestSettings {
            alpha: 0.05,
            alternative: Alternative::TwoSided,
        }
    }
}

/// A confidence (or credible) interval. A missing bound is unbounded: one-sided tests have one,
/// and JSON has no infinity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub lower: Option<f64>,
    pub upper: Option<f64>,
}

impl Interval {
    /// Whether `value` lies inside the interval (bounds included).
    pub fn contains(&self, value: f64) -> bool {
        self.lower.is_none_or(|l| l <= value) && self.upper.is_none_or(|u| value <= u)
    }
}

/// A lift (treatment − control, or its ratio to the control mean) with its uncertainty.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LiftEstimate {
    pub estimate: f64,
    pub standard_error: f64,
    pub interval: Interval,
}

/// The reference distribution of the test statistic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "distribution", rename_all = "snake_case")]
pub enum Reference {
    /// Student t with (Welch–Satterthwaite) degrees of freedom.
    StudentT { degrees_of_freedom: f64 },
    /// Standard normal: proportions, ratio metrics, and large samples.
    Normal,
}

impl Reference {
    /// Upper-tail probability of the statistic.
    pub fn sf(&self, x: f64) -> f64 {
        match *self {
            Reference::StudentT { degrees_of_freedom } => student_t_sf(x, degrees_of_freedom),
            Reference::Normal => normal_sf(x),
        }
    }

    /// The critical value with upper-tail probability `q`.
    pub fn isf(&self, q: f64) -> f64 {
        match *self {
            Reference::StudentT { degrees_of_freedom } => student_t_isf(q, degrees_of_freedom),
            Reference::Normal => normal_isf(q),
        }
    }
}

/// The result of a two-sample comparison of treatment against control.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub control: ArmEstimate,
    pub treatment: ArmEstimate,
    /// Treatment mean − control mean.
    pub absolute: LiftEstimate,
    /// (Treatment − control) / control, with the delta-method standard error; absent when the
    /// control mean is zero.
    pub relative: Option<LiftEstimate>,
    /// The t (or z) statistic of the absolute difference.
    pub statistic: f64,
    pub reference: Reference,
    /// p-value of the absolute difference under `alternative`; the relative lift's interval is
    /// a delta-method approximation and is not used for the p-value.
    pub p_value: f64,
    pub alternative: Alternative,
    pub alpha: f64,
}

/// Checks that both arms have at least two units, the minimum for a sample variance.
pub(crate) fn check_units(
    control: &ArmEstimate,
    treatment: &ArmEstimate,
) -> Result<(), StatsError> {
    for (arm, estimate) in [(Arm::Control, control), (Arm::Treatment, treatment)] {
        if estimate.n == 0 {
            return Err(NotEnoughData::NoUnits { arm }.into());
        }
        if estimate.n < 2 {
            return Err(NotEnoughData::TooFewUnits {
                arm,
                units: estimate.n,
                units_min: 2,
            }
            .into());
        }
    }
    Ok(())
}

/// Checks that arm estimates are finite and their standard errors non-negative.
pub(crate) fn check_estimates(
    control: &ArmEstimate,
    treatment: &ArmEstimate,
) -> Result<(), StatsError> {
    for (e, field) in [(control, "control"), (treatment, "treatment")] {
        if !(e.mean.is_finite() && e.standard_error.is_finite() && e.standard_error >= 0.0) {
            return Err(StatsError::InvalidInput {
                field,
                expected: "a finite mean and a finite, non-negative standard error",
                got: format!("mean {} and standard error {}", e.mean, e.standard_error),
            });
        }
    }
    Ok(())
}

/// p-value of statistic `stat` under `alternative`.
pub(crate) fn p_value(reference: &Reference, stat: f64, alternative: Alternative) -> f64 {
    let p = match alternative {
        Alternative::TwoSided => 2.0 * reference.sf(stat.abs()),
        Alternative::Greater => reference.sf(stat),
        Alternative::Less => reference.sf(-stat),
    };
    p.clamp(0.0, 1.0)
}

/// The interval `estimate ± critical·se` matching the alternative.
pub(crate) fn interval(
    reference: &Reference,
    estimate: f64,
    standard_error: f64,
    settings: &TestSettings,
) -> Result<Interval, StatsError> {
    let (lower, upper) = match settings.alternative {
        Alternative::TwoSided => {
            let half_width = reference.isf(settings.alpha / 2.0) * standard_error;
            (Some(estimate - half_width), Some(estimate + half_width))
        }
        Alternative::Greater => (
            Some(estimate - reference.isf(settings.alpha) * standard_error),
            None,
        ),
        Alternative::Less => (
            None,
            Some(estimate + reference.isf(settings.alpha) * standard_error),
        ),
    };
    if let Some(l) = lower {
        finite_output(l, "the interval's lower bound")?;
    }
    if let Some(u) = upper {
        finite_output(u, "the interval's upper bound")?;
    }
    Ok(Interval { lower, upper })
}

/// Relative lift (t − c)/c and its delta-method standard error
/// √(se_t²/c² + t²·se_c²/c⁴), the first-order Taylor expansion of t/c around the means.
pub(crate) fn relative_lift(control: &ArmEstimate, treatment: &ArmEstimate) -> Option<(f64, f64)> {
    let c = control.mean;
    if c == 0.0 {
        return None;
    }
    let t = treatment.mean;
    let ratio = t / c;
    let variance =
        (treatment.standard_error / c).powi(2) + (ratio * control.standard_error / c).powi(2);
    let se = variance.sqrt();
    let estimate = ratio - 1.0;
    (estimate.is_finite() && se.is_finite()).then_some((estimate, se))
}

/// Compares two arm estimates with the given reference distribution.
pub(crate) fn compare(
    control: &ArmEstimate,
    treatment: &ArmEstimate,
    reference: Reference,
    settings: &TestSettings,
) -> Result<Comparison, StatsError> {
    open_unit(settings.alpha, "alpha")?;
    check_estimates(control, treatment)?;
    check_units(control, treatment)?;
    let difference = finite_output(treatment.mean - control.mean, "the difference of means")?;
    let standard_error = finite_output(
        control.standard_error.hypot(treatment.standard_error),
        "the standard error of the difference",
    )?;
    if standard_error == 0.0 {
        return Err(NotEnoughData::ZeroVariance.into());
    }
    let statistic = finite_output(difference / standard_error, "the test statistic")?;
    let absolute = LiftEstimate {
        estimate: difference,
        standard_error,
        interval: interval(&reference, difference, standard_error, settings)?,
    };
    let relative = match relative_lift(control, treatment) {
        Some((estimate, se)) => Some(LiftEstimate {
            estimate,
            standard_error: se,
            interval: interval(&reference, estimate, se, settings)?,
        }),
        None => None,
    };
    Ok(Comparison {
        control: *control,
        treatment: *treatment,
        absolute,
        relative,
        statistic,
        reference,
        p_value: p_value(&reference, statistic, settings.alternative),
        alternative: settings.alternative,
        alpha: settings.alpha,
    })
}

/// The z-test of two arm estimates against the standard normal, for large samples and for
/// estimators whose variance comes from the delta method (proportions, ratios).
pub fn z_test(
    control: &ArmEstimate,
    treatment: &ArmEstimate,
    settings: &TestSettings,
) -> Result<Comparison, StatsError> {
    compare(control, treatment, Reference::Normal, settings)
}
