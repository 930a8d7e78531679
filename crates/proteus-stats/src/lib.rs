//! The statistics engine of Proteus experiments. Pure: sufficient statistics in, results out;
//! no I/O, no clock, no randomness.
//!
//! The layers:
//!
//! 1. [`SufficientStats`]: sums per arm and metric that an incremental projection maintains and
//!    merges by addition.
//! 2. Arm estimates ([`ArmEstimate`]: a mean and its standard error) for each kind of metric:
//!    [`Summary::estimate`] for means, [`Conversions::estimate`] for conversion rates,
//!    [`ratio_estimate`] for ratio metrics (delta method), [`Cuped::adjust`] for CUPED.
//! 3. Tests on two arm estimates: [`welch_test_estimates`] / [`welch_test`] (fixed horizon,
//!    Welch t), [`z_test`], [`sequential_test`] (always valid), [`bayesian_test`].
//! 4. Across arms and metrics: [`srm_check`], [`adjust_p_values`], [`sample_size`].
//!
//! Every function validates its input; bad input is a [`StatsError::InvalidInput`], too little
//! data a [`StatsError::NotEnoughData`] (see [`Outcome`] to show it as a result), and no result
//! ever holds NaN or infinity. The methods and their references are in
//! `docs/experiments-statistics.md`; accuracy is checked against scipy and statsmodels by
//! `tests/reference/generate.py`.

pub mod bayes;
pub mod correction;
pub mod cuped;
pub mod error;
pub mod lift;
pub mod power;
pub mod proportion;
pub mod ratio;
pub mod sequential;
pub mod special;
pub mod srm;
pub mod sufficient;
pub mod welch;

pub use bayes::{BayesResult, BayesSettings, LiftScale, Prior, bayesian_test};
pub use correction::{Correction, adjust_p_values};
pub use cuped::{Cuped, CupedComparison, cuped_test};
pub use error::{Arm, NotEnoughData, Outcome, StatsError};
pub use lift::{Alternative, Comparison, Interval, LiftEstimate, Reference, TestSettings, z_test};
pub use power::{
    DaysEstimate, Mde, PowerSettings, SampleSize, achieved_power, estimated_days, sample_size,
};
pub use proportion::{Conversions, proportion_test};
pub use ratio::{ratio_estimate, ratio_test};
pub use sequential::{
    SequentialComparison, SequentialSettings, mixture_rho, running_intersection, sequential_test,
};
pub use srm::{SRM_P_VALUE_THRESHOLD_DEFAULT, SrmResult, srm_check};
pub use sufficient::{ArmEstimate, SufficientStats, Summary};
pub use welch::{welch_degrees_of_freedom, welch_test, welch_test_estimates};
