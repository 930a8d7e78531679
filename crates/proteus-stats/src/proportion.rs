//! Proportion (conversion) metrics: the mean of a 0/1 outcome.
//!
//! The variance of a conversion rate p̂ = x/n is p̂(1 − p̂)/n (the Bernoulli variance, not the
//! n − 1 sample variance), compared with the normal distribution: the unpooled Wald z-test of
//! `statsmodels.stats.proportion.test_proportions_2indep(method="wald")`. Unpooled because its
//! interval and its test then agree, which a results page showing both needs.

use crate::error::StatsError;
use crate::lift::{Comparison, TestSettings, z_test};
use crate::sufficient::ArmEstimate;
use serde::{Deserialize, Serialize};

/// Conversions out of units in one arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversions {
    pub conversions: u64,
    pub n: u64,
}

impl Conversions {
    /// The conversion rate with its standard error √(p̂(1 − p̂)/n).
    pub fn estimate(&self) -> Result<ArmEstimate, StatsError> {
        if self.conversions > self.n {
            return Err(StatsError::InvalidInput {
                field: "conversions",
                expected: "at most the number of units",
                got: format!("{} conversions for {} units", self.conversions, self.n),
            });
        }
        if self.n == 0 {
            return Ok(ArmEstimate {
                n: 0,
                mean: 0.0,
                standard_error: 0.0,
            });
        }
        let n = self.n as f64;
        let p = self.conversions as f64 / n;
        Ok(ArmEstimate {
            n: self.n,
            mean: p,
            standard_error: (p * (1.0 - p) / n).sqrt(),
        })
    }
}

/// Two-proportion z-test (unpooled Wald) of treatment against control.
pub fn proportion_test(
    control: &Conversions,
    treatment: &Conversions,
    settings: &TestSettings,
) -> Result<Comparison, StatsError> {
    z_test(&control.estimate()?, &treatment.estimate()?, settings)
}
