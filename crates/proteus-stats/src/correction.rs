//! Multiple-testing correction across arms and metrics.
//!
//! With ten metrics and three treatment arms, thirty tests at α = 0.05 give about 1.5 false
//! positives on average when nothing works. Two corrections are offered:
//!
//! - Holm (1979): controls the family-wise error rate (the chance of any false positive) and is
//!   uniformly more powerful than Bonferroni. Sorted ascending, p̃_(i) = max_{j≤i} min(1,
//!   (m − j + 1)·p_(j)). Use it for guardrails and decisions that must not be wrong.
//! - Benjamini–Hochberg (1995): controls the false discovery rate (the expected share of false
//!   positives among the discoveries), much more powerful with many metrics.
//!   p̃_(i) = min_{j≥i} min(1, m·p_(j)/j). Valid for independent or positively dependent tests.
//!
//! Both return adjusted p-values in the input order, to compare with the unchanged α
//! (`statsmodels.stats.multitest.multipletests` with `holm` / `fdr_bh`).

use crate::error::StatsError;
use serde::{Deserialize, Serialize};

/// The correction to apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Correction {
    /// No correction: adjusted p-values equal the raw ones.
    None,
    /// Holm's step-down method (family-wise error rate).
    #[default]
    Holm,
    /// Benjamini–Hochberg step-up method (false discovery rate).
    BenjaminiHochberg,
}

/// Adjusted p-values in the order of `p_values`.
pub fn adjust_p_values(p_values: &[f64], correction: Correction) -> Result<Vec<f64>, StatsError> {
    for &p in p_values {
        if !(0.0..=1.0).contains(&p) {
            return Err(StatsError::InvalidInput {
                field: "p_values",
                expected: "p-values between 0 and 1",
                got: p.to_string(),
            });
        }
    }
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    // Stable sort: ties keep their input order, as statsmodels does.
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let mut adjusted = vec![0.0; m];
    match correction {
        Correction::None => adjusted.copy_from_slice(p_values),
        Correction::Holm => {
            let mut running_max = 0.0_f64;
            for (rank, &i) in order.iter().enumerate() {
                let value = ((m - rank) as f64 * p_values[i]).min(1.0);
                running_max = running_max.max(value);
                adjusted[i] = running_max;
            }
        }
        Correction::BenjaminiHochberg => {
            let mut running_min = 1.0_f64;
            for (rank, &i) in order.iter().enumerate().rev() {
                // p / (rank/m) as statsmodels computes it: exact for the largest p.
                let value = (p_values[i] / ((rank + 1) as f64 / m as f64)).min(1.0);
                running_min = running_min.min(value);
                adjusted[i] = running_min;
            }
        }
    }
    Ok(adjusted)
}
