//! Sufficient statistics: what a projection keeps per arm and metric, and what every test reads.
//!
//! Sums (not running means) are kept so that two partial aggregates merge by addition, in any
//! order, which is what an incremental projection over a partitioned log needs. The price is the
//! textbook cancellation of `Σx² − (Σx)²/n` when the mean is huge compared with the standard
//! deviation; with f64 the variance keeps about `16 − 2·log10(|mean|/sd)` significant digits,
//! plenty for business metrics (a mean 1e4 times the sd still leaves 8 digits).

use crate::error::{StatsError, finite_input};
use serde::{Deserialize, Serialize};
use std::ops::{Add, AddAssign, SubAssign};

/// Per-arm, per-metric sums from which every method of this crate is computed.
///
/// Plain metrics use `n`, `sum` and `sum_squares`. Ratio metrics (Σ numerator / Σ denominator
/// per unit) also fill the `denominator_*` fields and the cross-product; CUPED fills the
/// `covariate_*` fields with each unit's pre-exposure value. Unused fields stay zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SufficientStats {
    /// Number of units (users, sessions…) in the arm.
    pub n: u64,
    /// Σ y over units (the numerator of a ratio metric).
    pub sum: f64,
    /// Σ y².
    pub sum_squares: f64,
    /// Σ d, the per-unit denominators of a ratio metric.
    pub denominator_sum: f64,
    /// Σ d².
    pub denominator_sum_squares: f64,
    /// Σ y·d.
    pub sum_products_denominator: f64,
    /// Σ x, the per-unit pre-exposure covariate used by CUPED.
    pub covariate_sum: f64,
    /// Σ x².
    pub covariate_sum_squares: f64,
    /// Σ y·x.
    pub sum_products_covariate: f64,
}

impl SufficientStats {
    /// Adds one unit's metric value.
    pub fn push(&mut self, value: f64) -> Result<(), StatsError> {
        self.push_unit(value, None, None)
    }

    /// Adds one unit of a ratio metric: its numerator and denominator.
    pub fn push_ratio(&mut self, numerator: f64, denominator: f64) -> Result<(), StatsError> {
        self.push_unit(numerator, Some(denominator), None)
    }

    /// Adds one unit's metric value with its pre-exposure covariate (for CUPED).
    pub fn push_with_covariate(&mut self, value: f64, covariate: f64) -> Result<(), StatsError> {
        self.push_unit(value, None, Some(covariate))
    }

    /// Adds one unit; non-finite values are refused so that one bad event cannot poison the sums.
    pub fn push_unit(
        &mut self,
        value: f64,
        denominator: Option<f64>,
        covariate: Option<f64>,
    ) -> Result<(), StatsError> {
        finite_input(value, "value")?;
        let mut unit = SufficientStats {
            n: 1,
            sum: value,
            sum_squares: value * value,
            ..SufficientStats::default()
        };
        if let Some(d) = denominator {
            finite_input(d, "denominator")?;
            unit.denominator_sum = d;
            unit.denominator_sum_squares = d * d;
            unit.sum_products_denominator = value * d;
        }
        if let Some(x) = covariate {
            finite_input(x, "covariate")?;
            unit.covariate_sum = x;
            unit.covariate_sum_squares = x * x;
            unit.sum_products_covariate = value * x;
        }
        unit.validate()?;
        *self += unit;
        Ok(())
    }

    /// Builds the statistics of a 0/1 (conversion) metric from counts.
    pub fn from_conversions(conversions: u64, n: u64) -> Result<SufficientStats, StatsError> {
        if conversions > n {
            return Err(StatsError::InvalidInput {
                field: "conversions",
                expected: "at most the number of units",
                got: format!("{conversions} conversions for {n} units"),
            });
        }
        let c = conversions as f64;
        Ok(SufficientStats {
            n,
            sum: c,
            sum_squares: c,
            ..SufficientStats::default()
        })
    }

    /// Merges another aggregate of the same arm and metric (e.g. from another partition).
    pub fn merge(&mut self, other: &SufficientStats) {
        *self += *other;
    }

    /// Checks that every sum is finite and every sum of squares non-negative.
    pub fn validate(&self) -> Result<(), StatsError> {
        finite_input(self.sum, "sum")?;
        finite_input(self.sum_squares, "sum_squares")?;
        finite_input(self.denominator_sum, "denominator_sum")?;
        finite_input(self.denominator_sum_squares, "denominator_sum_squares")?;
        finite_input(self.sum_products_denominator, "sum_products_denominator")?;
        finite_input(self.covariate_sum, "covariate_sum")?;
        finite_input(self.covariate_sum_squares, "covariate_sum_squares")?;
        finite_input(self.sum_products_covariate, "sum_products_covariate")?;
        for (value, field) in [
            (self.sum_squares, "sum_squares"),
            (self.denominator_sum_squares, "denominator_sum_squares"),
            (self.covariate_sum_squares, "covariate_sum_squares"),
        ] {
            if value < 0.0 {
                return Err(StatsError::InvalidInput {
                    field,
                    expected: "a non-negative sum of squares",
                    got: value.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Mean and sample variance of the metric value.
    pub fn summary(&self) -> Result<Summary, StatsError> {
        self.validate()?;
        let (mean, variance) = moments(self.n, self.sum, self.sum_squares);
        Ok(Summary {
            n: self.n,
            mean,
            variance,
        })
    }

    /// Sample mean of the denominator (ratio metrics).
    pub(crate) fn denominator_mean(&self) -> f64 {
        mean_of(self.n, self.denominator_sum)
    }

    /// Sample mean of the covariate (CUPED).
    pub(crate) fn covariate_mean(&self) -> f64 {
        mean_of(self.n, self.covariate_sum)
    }

    /// Σ(y − ȳ)², the centred sum of squares of the metric value.
    pub(crate) fn centred_value(&self) -> f64 {
        centred(self.n, self.sum, self.sum, self.sum_squares).max(0.0)
    }

    /// Σ(d − d̄)² and Σ(y − ȳ)(d − d̄), the centred sums of a ratio metric.
    pub(crate) fn centred_denominator(&self) -> (f64, f64) {
        (
            centred(
                self.n,
                self.denominator_sum,
                self.denominator_sum,
                self.denominator_sum_squares,
            )
            .max(0.0),
            centred(
                self.n,
                self.sum,
                self.denominator_sum,
                self.sum_products_denominator,
            ),
        )
    }

    /// Σ(x − x̄)² and Σ(y − ȳ)(x − x̄), the centred sums CUPED needs.
    pub(crate) fn centred_covariate(&self) -> (f64, f64) {
        (
            centred(
                self.n,
                self.covariate_sum,
                self.covariate_sum,
                self.covariate_sum_squares,
            )
            .max(0.0),
            centred(
                self.n,
                self.sum,
                self.covariate_sum,
                self.sum_products_covariate,
            ),
        )
    }
}

fn mean_of(n: u64, sum: f64) -> f64 {
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// Σ(a − ā)(b − b̄) = Σab − Σa·Σb/n.
fn centred(n: u64, sum_a: f64, sum_b: f64, sum_products: f64) -> f64 {
    if n == 0 {
        0.0
    } else {
        sum_products - sum_a * (sum_b / n as f64)
    }
}

/// Mean and sample variance (denominator n − 1) from sums; zero where undefined (n < 2).
fn moments(n: u64, sum: f64, sum_squares: f64) -> (f64, f64) {
    let mean = mean_of(n, sum);
    if n < 2 {
        return (mean, 0.0);
    }
    // Rounding can push a true zero slightly negative; a variance is never negative.
    let variance = (centred(n, sum, sum, sum_squares) / (n - 1) as f64).max(0.0);
    (mean, variance)
}

impl AddAssign for SufficientStats {
    fn add_assign(&mut self, other: SufficientStats) {
        self.n += other.n;
        self.sum += other.sum;
        self.sum_squares += other.sum_squares;
        self.denominator_sum += other.denominator_sum;
        self.denominator_sum_squares += other.denominator_sum_squares;
        self.sum_products_denominator += other.sum_products_denominator;
        self.covariate_sum += other.covariate_sum;
        self.covariate_sum_squares += other.covariate_sum_squares;
        self.sum_products_covariate += other.sum_products_covariate;
    }
}

/// Removes a part that was added before (a unit whose value changed, in a running aggregate).
/// Rounding may leave sums of squares a hair below zero; they are clamped at zero, and an
/// aggregate left with no unit is exactly zero again.
impl SubAssign for SufficientStats {
    fn sub_assign(&mut self, other: SufficientStats) {
        self.n = self.n.saturating_sub(other.n);
        if self.n == 0 {
            *self = SufficientStats::default();
            return;
        }
        self.sum -= other.sum;
        self.sum_squares = (self.sum_squares - other.sum_squares).max(0.0);
        self.denominator_sum -= other.denominator_sum;
        self.denominator_sum_squares =
            (self.denominator_sum_squares - other.denominator_sum_squares).max(0.0);
        self.sum_products_denominator -= other.sum_products_denominator;
        self.covariate_sum -= other.covariate_sum;
        self.covariate_sum_squares =
            (self.covariate_sum_squares - other.covariate_sum_squares).max(0.0);
        self.sum_products_covariate -= other.sum_products_covariate;
    }
}

impl Add for SufficientStats {
    type Output = SufficientStats;
    fn add(mut self, other: SufficientStats) -> SufficientStats {
        self += other;
        self
    }
}

/// Count, mean and sample variance (denominator n − 1) of one arm's metric; also what
/// `scipy.stats.ttest_ind_from_stats` takes (with the standard deviation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: u64,
    pub mean: f64,
    pub variance: f64,
}

impl Summary {
    /// Validates a summary given directly (not from sums).
    pub fn new(n: u64, mean: f64, variance: f64) -> Result<Summary, StatsError> {
        finite_input(mean, "mean")?;
        finite_input(variance, "variance")?;
        if variance < 0.0 {
            return Err(StatsError::InvalidInput {
                field: "variance",
                expected: "a non-negative variance",
                got: variance.to_string(),
            });
        }
        Ok(Summary { n, mean, variance })
    }

    /// The arm's mean with its standard error √(s²/n), the input of the two-sample tests.
    pub fn estimate(&self) -> ArmEstimate {
        let standard_error = if self.n == 0 {
            0.0
        } else {
            (self.variance / self.n as f64).sqrt()
        };
        ArmEstimate {
            n: self.n,
            mean: self.mean,
            standard_error,
        }
    }
}

/// An arm's estimated mean (or ratio, or CUPED-adjusted mean) with its standard error: what
/// every two-sample test compares. `n` gives the Welch degrees of freedom (n − 1 per arm).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ArmEstimate {
    pub n: u64,
    pub mean: f64,
    pub standard_error: f64,
}
