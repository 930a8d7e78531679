//! Bayesian analysis of the lift with a Gaussian prior (the normal–normal model GrowthBook and
//! Eppo use).
//!
//! The estimated lift δ̂ (absolute, or relative by the delta method) is treated as one
//! observation of the true lift δ with known variance se²: δ̂ ~ N(δ, se²). With the prior
//! δ ~ N(m₀, v₀) the posterior is normal with
//!
//! precision 1/v = 1/se² + 1/v₀,  mean μ = v·(δ̂/se² + m₀/v₀);
//!
//! a flat prior (v₀ = ∞) gives μ = δ̂, v = se². From the posterior N(μ, σ²), σ = √v:
//!
//! - chance to beat control P(δ > 0) = Φ(μ/σ);
//! - risk (expected loss) of shipping the treatment E[max(0, −δ)] = σ·h(−μ/σ), and of keeping
//!   the control E[max(0, δ)] = σ·h(μ/σ), where h(a) = φ(a) + a·Φ(a) = E[max(0, a + Z)];
//! - credible interval μ ± z_{1−α/2}·σ (equal-tailed).
//!
//! Risks are in the units of the lift (absolute units, or a fraction for relative lifts): "if we
//! ship this and we are wrong, how much do we lose on average".

use crate::error::{NotEnoughData, StatsError, finite_input, finite_output, open_unit};
use crate::lift::{Interval, check_estimates, check_units, relative_lift};
use crate::special::{normal_cdf, normal_isf, normal_pdf, normal_sf};
use crate::sufficient::ArmEstimate;
use serde::{Deserialize, Serialize};

/// Whether the prior and the posterior are about the absolute or the relative lift.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LiftScale {
    Absolute,
    /// (treatment − control) / control: a prior on this scale transfers between metrics.
    #[default]
    Relative,
}

/// The prior on the lift.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Prior {
    /// Improper flat prior: the posterior is the likelihood (the default; lets data speak).
    #[default]
    Flat,
    /// N(mean, variance) on the lift's scale; e.g. mean 0, variance 0.3² on the relative scale
    /// says "most changes move the metric by less than ±60%".
    Gaussian { mean: f64, variance: f64 },
}

/// Settings of the Bayesian analysis.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BayesSettings {
    pub prior: Prior,
    pub scale: LiftScale,
    /// Credible intervals have probability 1 − alpha.
    pub alpha: f64,
}

impl Default for BayesSettings {
    fn default() -> Self {
        BayesSettings {
            prior: Prior::Flat,
            scale: LiftScale::Relative,
            alpha: 0.05,
        }
    }
}

/// The posterior of the lift and the decision quantities derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BayesResult {
    pub scale: LiftScale,
    pub posterior_mean: f64,
    pub posterior_standard_deviation: f64,
    /// P(treatment better than control), i.e. P(δ > 0).
    pub chance_to_beat_control: f64,
    /// Expected loss of shipping the treatment: E[max(0, −δ)].
    pub risk_treatment: f64,
    /// Expected loss of keeping the control: E[max(0, δ)].
    pub risk_control: f64,
    pub credible_interval: Interval,
}

/// h(a) = E[max(0, a + Z)] = φ(a) + a·Φ(a) for a standard normal Z.
fn expected_positive_part(a: f64) -> f64 {
    (normal_pdf(a) + a * normal_cdf(a)).max(0.0)
}

/// Bayesian comparison of treatment against control.
pub fn bayesian_test(
    control: &ArmEstimate,
    treatment: &ArmEstimate,
    settings: &BayesSettings,
) -> Result<BayesResult, StatsError> {
    open_unit(settings.alpha, "alpha")?;
    check_estimates(control, treatment)?;
    check_units(control, treatment)?;
    let (estimate, standard_error) = match settings.scale {
        LiftScale::Absolute => (
            treatment.mean - control.mean,
            control.standard_error.hypot(treatment.standard_error),
        ),
        LiftScale::Relative => {
            relative_lift(control, treatment).ok_or(NotEnoughData::ZeroControlMean)?
        }
    };
    finite_output(estimate, "the lift")?;
    if !(standard_error > 0.0 && standard_error.is_finite()) {
        return Err(NotEnoughData::ZeroVariance.into());
    }
    let data_precision = 1.0 / (standard_error * standard_error);
    let (mean, variance) = match settings.prior {
        Prior::Flat => (estimate, standard_error * standard_error),
        Prior::Gaussian { mean, variance } => {
            finite_input(mean, "prior mean")?;
            finite_input(variance, "prior variance")?;
            if variance <= 0.0 {
                return Err(StatsError::InvalidInput {
                    field: "prior variance",
                    expected: "a positive variance",
                    got: variance.to_string(),
                });
            }
            let prior_precision = 1.0 / variance;
            let posterior_variance = 1.0 / (data_precision + prior_precision);
            (
                posterior_variance * (estimate * data_precision + mean * prior_precision),
                posterior_variance,
            )
        }
    };
    let mean = finite_output(mean, "the posterior mean")?;
    let sd = finite_output(variance.sqrt(), "the posterior standard deviation")?;
    let z = mean / sd;
    let half_width = normal_isf(settings.alpha / 2.0) * sd;
    Ok(BayesResult {
        scale: settings.scale,
        posterior_mean: mean,
        posterior_standard_deviation: sd,
        chance_to_beat_control: normal_sf(-z),
        risk_treatment: finite_output(sd * expected_positive_part(-z), "the risk")?,
        risk_control: finite_output(sd * expected_positive_part(z), "the risk")?,
        credible_interval: Interval {
            lower: Some(finite_output(mean - half_width, "the credible interval")?),
            upper: Some(finite_output(mean + half_width, "the credible interval")?),
        },
    })
}
