//! Errors and the "not enough data" outcome.
//!
//! Two kinds of failure are kept apart because callers treat them differently: invalid input
//! (NaN, a negative variance, weights that sum to zero, alpha outside (0, 1)) is a bug or a bad
//! configuration and should be reported as such; not enough data (an empty arm, one unit, no
//! variance yet) is the normal state of a young experiment and is shown as "keep waiting".
//! No function of this crate returns NaN or infinity inside a result: the numbers go straight
//! into a JSON API.

use serde::Serialize;
use std::fmt;

/// Which arm of a two-arm comparison a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    Control,
    Treatment,
}

impl fmt::Display for Arm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arm::Control => "control",
            Arm::Treatment => "treatment",
        })
    }
}

/// Why a result cannot be computed yet. Every variant is expected while data accumulates.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum NotEnoughData {
    /// An arm has no units at all.
    NoUnits { arm: Arm },
    /// An arm has fewer units than the method needs (2 for a sample variance).
    TooFewUnits {
        arm: Arm,
        units: u64,
        units_min: u64,
    },
    /// Both arms have zero variance, so there is no noise scale to compare the difference with.
    ZeroVariance,
    /// A ratio metric's denominator sums to zero in an arm.
    ZeroDenominator { arm: Arm },
    /// A relative lift was asked for but the control mean is zero.
    ZeroControlMean,
    /// No units at all across the arms of a sample-ratio check or a CUPED fit.
    NoUnitsTotal,
}

impl fmt::Display for NotEnoughData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotEnoughData::NoUnits { arm } => write!(f, "the {arm} arm has no units yet"),
            NotEnoughData::TooFewUnits {
                arm,
                units,
                units_min,
            } => write!(
                f,
                "the {arm} arm has {units} unit(s); at least {units_min} are needed"
            ),
            NotEnoughData::ZeroVariance => {
                f.write_str("both arms have zero variance; the difference has no noise scale yet")
            }
            NotEnoughData::ZeroDenominator { arm } => {
                write!(f, "the ratio's denominator sums to zero in the {arm} arm")
            }
            NotEnoughData::ZeroControlMean => {
                f.write_str("the control mean is zero, so a relative lift is undefined")
            }
            NotEnoughData::NoUnitsTotal => f.write_str("no units in any arm yet"),
        }
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, PartialEq)]
pub enum StatsError {
    /// An input is outside its domain; `field` names it and `expected` says what is allowed.
    InvalidInput {
        field: &'static str,
        expected: &'static str,
        got: String,
    },
    /// The data are valid but cannot support the computation yet.
    NotEnoughData(NotEnoughData),
    /// A result would not fit in an f64 (inputs near 1e300); reported instead of infinity.
    Overflow { what: &'static str },
}

impl fmt::Display for StatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatsError::InvalidInput {
                field,
                expected,
                got,
            } => write!(f, "invalid {field}: expected {expected}, got {got}"),
            StatsError::NotEnoughData(reason) => write!(f, "not enough data: {reason}"),
            StatsError::Overflow { what } => {
                write!(
                    f,
                    "{what} does not fit in a 64-bit float; rescale the metric"
                )
            }
        }
    }
}

impl std::error::Error for StatsError {}

impl From<NotEnoughData> for StatsError {
    fn from(reason: NotEnoughData) -> Self {
        StatsError::NotEnoughData(reason)
    }
}

/// A result, or the explicit statement that there is not enough data for it yet; what an API
/// shows for a metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome<T> {
    Ready { result: T },
    NotEnoughData { detail: NotEnoughData },
}

impl<T> Outcome<T> {
    /// Turns "not enough data" errors into the [`Outcome::NotEnoughData`] variant and keeps the
    /// other errors, which are real problems.
    pub fn from_result(result: Result<T, StatsError>) -> Result<Outcome<T>, StatsError> {
        match result {
            Ok(result) => Ok(Outcome::Ready { result }),
            Err(StatsError::NotEnoughData(detail)) => Ok(Outcome::NotEnoughData { detail }),
            Err(other) => Err(other),
        }
    }
}

/// Checks that an input is finite.
pub(crate) fn finite_input(value: f64, field: &'static str) -> Result<f64, StatsError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(StatsError::InvalidInput {
            field,
            expected: "a finite number",
            got: value.to_string(),
        })
    }
}

/// Checks that a significance level or similar probability is strictly inside (0, 1).
pub(crate) fn open_unit(value: f64, field: &'static str) -> Result<f64, StatsError> {
    if value.is_finite() && value > 0.0 && value < 1.0 {
        Ok(value)
    } else {
        Err(StatsError::InvalidInput {
            field,
            expected: "a number strictly between 0 and 1",
            got: value.to_string(),
        })
    }
}

/// Checks that a computed value is finite; the last guard before a number leaves the crate.
pub(crate) fn finite_output(value: f64, what: &'static str) -> Result<f64, StatsError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(StatsError::Overflow { what })
    }
}
