//! CUPED: variance reduction with a pre-exposure covariate (Deng, Xu, Kohavi and Walker 2013,
//! "Improving the Sensitivity of Online Controlled Experiments by Utilizing Pre-Experiment
//! Data").
//!
//! Each unit's value y is replaced by y − θ(x − x̄), where x is the same metric measured before
//! the unit was exposed and x̄ the covariate's mean over all arms. Because x was fixed before
//! randomisation, E[x] is the same in every arm, so the adjustment leaves the expected difference
//! unchanged and removes the part of the variance that x explains: the variance shrinks by the
//! factor 1 − ρ²(x, y).
//!
//! θ = Σ_arms Σ(y − ȳ_k)(x − x̄_k) / Σ_arms Σ(x − x̄_k)², the covariance over the covariate's
//! variance pooled within arms (centred on each arm's own means, so a treatment effect on y does
//! not leak into θ). Using one θ for all arms keeps the adjusted difference unbiased.

use crate::error::{NotEnoughData, StatsError, finite_output};
use crate::lift::{Comparison, TestSettings};
use crate::sufficient::{ArmEstimate, SufficientStats};
use crate::welch::welch_test_estimates;
use serde::{Deserialize, Serialize};

/// A fitted CUPED adjustment shared by all arms of one metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cuped {
    /// The regression coefficient of y on x, pooled within arms; 0 when x has no variance.
    pub theta: f64,
    /// The covariate's mean over all arms, the point the adjustment is centred on.
    pub covariate_mean: f64,
}

impl Cuped {
    /// Fits θ on all arms of the metric (every arm of the experiment, not only the two compared).
    pub fn fit(arms: &[SufficientStats]) -> Result<Cuped, StatsError> {
        let mut total = SufficientStats::default();
        let mut ss_x = 0.0;
        let mut sp_xy = 0.0;
        for arm in arms {
            arm.validate()?;
            total += *arm;
            let (arm_ss_x, arm_sp_xy) = arm.centred_covariate();
            ss_x += arm_ss_x;
            sp_xy += arm_sp_xy;
        }
        if total.n == 0 {
            return Err(NotEnoughData::NoUnitsTotal.into());
        }
        let theta = if ss_x > 0.0 {
            finite_output(sp_xy / ss_x, "CUPED's theta")?
        } else {
            0.0
        };
        Ok(Cuped {
            theta,
            covariate_mean: total.covariate_mean(),
        })
    }

    /// The arm's adjusted mean ȳ − θ(x̄_arm − x̄) with the standard error of the adjusted values,
    /// whose sample variance is (Σ(y−ȳ)² − 2θΣ(y−ȳ)(x−x̄) + θ²Σ(x−x̄)²)/(n − 1).
    pub fn adjust(&self, arm: &SufficientStats) -> Result<ArmEstimate, StatsError> {
        arm.validate()?;
        if arm.n == 0 {
            return Ok(ArmEstimate {
                n: 0,
                mean: 0.0,
                standard_error: 0.0,
            });
        }
        let n = arm.n as f64;
        let summary = arm.summary()?;
        let mean = finite_output(
            summary.mean - self.theta * (arm.covariate_mean() - self.covariate_mean),
            "the CUPED-adjusted mean",
        )?;
        let standard_error = if arm.n < 2 {
            0.0
        } else {
            let ss_y = arm.centred_value();
            let (ss_x, sp_xy) = arm.centred_covariate();
            let ss_adjusted =
                (ss_y - 2.0 * self.theta * sp_xy + self.theta * self.theta * ss_x).max(0.0);
            finite_output(
                (ss_adjusted / (n - 1.0) / n).sqrt(),
                "the CUPED-adjusted standard error",
            )?
        };
        Ok(ArmEstimate {
            n: arm.n,
            mean,
            standard_error,
        })
    }
}

/// A Welch test on CUPED-adjusted means, with what the adjustment bought.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CupedComparison {
    pub cuped: Cuped,
    pub comparison: Comparison,
    /// 1 − Var(adjusted difference)/Var(unadjusted difference): the share of the variance
    /// removed (about ρ²); absent when the unadjusted difference has no variance.
    pub variance_reduction: Option<f64>,
}

/// Fits CUPED on `all_arms` and runs Welch's test on the adjusted control and treatment.
pub fn cuped_test(
    control: &SufficientStats,
    treatment: &SufficientStats,
    all_arms: &[SufficientStats],
    settings: &TestSettings,
) -> Result<CupedComparison, StatsError> {
    let cuped = Cuped::fit(all_arms)?;
    let adjusted_control = cuped.adjust(control)?;
    let adjusted_treatment = cuped.adjust(treatment)?;
    let comparison = welch_test_estimates(&adjusted_control, &adjusted_treatment, settings)?;
    let raw_control = control.summary()?.estimate();
    let raw_treatment = treatment.summary()?.estimate();
    let raw_variance = raw_control.standard_error.powi(2) + raw_treatment.standard_error.powi(2);
    let variance_reduction = (raw_variance > 0.0)
        .then(|| 1.0 - comparison.absolute.standard_error.powi(2) / raw_variance)
        .filter(|v| v.is_finite());
    Ok(CupedComparison {
        cuped,
        comparison,
        variance_reduction,
    })
}
