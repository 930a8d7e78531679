//! Sample-ratio mismatch: are the arms' unit counts consistent with the configured weights?
//!
//! A mismatch (say 50.8% / 49.2% on a 50/50 split with a million units) means the assignment or
//! the exposure logging is broken (a redirect losing users, a bot filter applied to one arm,
//! a crash in one variant), and every other result of the experiment is suspect. Pearson's χ²
//! goodness-of-fit test compares the observed counts o_i with the expected e_i = N·w_i/Σw:
//! χ² = Σ (o_i − e_i)²/e_i with k − 1 degrees of freedom (`scipy.stats.chisquare`). The default
//! threshold p < 0.001 is deliberately strict: the check runs continuously on every experiment.

use crate::error::{NotEnoughData, StatsError, finite_output, open_unit};
use crate::special::chi_squared_sf;
use serde::{Deserialize, Serialize};

/// The default p-value below which a sample-ratio mismatch is reported.
pub const SRM_P_VALUE_THRESHOLD_DEFAULT: f64 = 0.001;

/// The result of a sample-ratio check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SrmResult {
    /// Pearson's χ² statistic; absent when an arm with weight 0 received units, which is a
    /// mismatch whatever the statistic.
    pub statistic: Option<f64>,
    pub degrees_of_freedom: u64,
    pub p_value: f64,
    /// Units expected in each arm given the total and the weights.
    pub expected: Vec<f64>,
    /// Whether `p_value` is below the threshold: the assignment looks broken.
    pub mismatch: bool,
    pub threshold: f64,
}

/// Checks observed unit counts per arm against the configured traffic weights.
///
/// Weights need not sum to 1 (they are normalised) but must be finite, non-negative and sum to
/// a positive value. Arms with weight 0 and no units are ignored.
pub fn srm_check(counts: &[u64], weights: &[f64], threshold: f64) -> Result<SrmResult, StatsError> {
    open_unit(threshold, "threshold")?;
    if counts.len() != weights.len() {
        return Err(StatsError::InvalidInput {
            field: "weights",
            expected: "one weight per arm",
            got: format!("{} weights for {} arms", weights.len(), counts.len()),
        });
    }
    if counts.len() < 2 {
        return Err(StatsError::InvalidInput {
            field: "counts",
            expected: "at least two arms",
            got: format!("{} arm(s)", counts.len()),
        });
    }
    let mut weight_total = 0.0;
    for &w in weights {
        if !(w.is_finite() && w >= 0.0) {
            return Err(StatsError::InvalidInput {
                field: "weights",
                expected: "finite, non-negative weights",
                got: w.to_string(),
            });
        }
        weight_total += w;
    }
    if !(weight_total > 0.0 && weight_total.is_finite()) {
        return Err(StatsError::InvalidInput {
            field: "weights",
            expected: "weights summing to a positive value",
            got: weight_total.to_string(),
        });
    }
    let total: f64 = counts.iter().map(|&c| c as f64).sum();
    if total == 0.0 {
        return Err(NotEnoughData::NoUnitsTotal.into());
    }
    let expected: Vec<f64> = weights.iter().map(|w| total * w / weight_total).collect();
    let mut statistic = 0.0;
    let mut arms_used = 0u64;
    let mut impossible = false;
    for (&observed, &e) in counts.iter().zip(&expected) {
        if e == 0.0 {
            impossible |= observed > 0;
            continue;
        }
        arms_used += 1;
        let d = observed as f64 - e;
        statistic += d * (d / e);
    }
    let degrees_of_freedom = arms_used.saturating_sub(1);
    let (statistic, p_value) = if impossible {
        (None, 0.0)
    } else if degrees_of_freedom == 0 {
        // Only one arm can receive units: all of them are where they should be.
        (Some(0.0), 1.0)
    } else {
        let statistic = finite_output(statistic, "the χ² statistic")?;
        (
            Some(statistic),
            chi_squared_sf(statistic, degrees_of_freedom as f64).clamp(0.0, 1.0),
        )
    };
    Ok(SrmResult {
        statistic,
        degrees_of_freedom,
        p_value,
        expected,
        mismatch: p_value < threshold,
        threshold,
    })
}
