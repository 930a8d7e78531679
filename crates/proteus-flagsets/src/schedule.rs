//! Scheduled changes: a change to apply at a given time, recorded in the audit topic when it is
//! scheduled and again when it ends (applied, failed or cancelled), so pending schedules survive
//! restarts and their whole life is in the history.

use serde::{Deserialize, Serialize};

use crate::change::Change;
use crate::name::FlagSetName;
use crate::revision::ValidationMode;

/// Most pending schedules one server holds.
pub const SCHEDULES_MAX: usize = 10_000;
/// Furthest ahead a change may be scheduled, in milliseconds (one year).
pub const SCHEDULE_AHEAD_MS_MAX: i64 = 366 * 24 * 60 * 60 * 1_000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Unique: a UUIDv7 given when scheduled.
    pub id: String,
    pub set: FlagSetName,
    /// When to apply it, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub change: Change,
    pub validation: ValidationMode,
    /// Who scheduled it; the applied revision names them too.
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub created_ms: i64,
}

/// How a schedule ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ScheduleOutcome {
    /// Applied as this version (`None`: the set already was that way).
    Applied {
        version: Option<u64>,
    },
    /// Could not be applied when due (the flag was deleted meanwhile, the result was invalid…).
    Failed {
        reason: String,
    },
    Cancelled {
        actor: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleEnded {
    pub set: FlagSetName,
    pub id: String,
    pub time_ms: i64,
    #[serde(flatten)]
    pub outcome: ScheduleOutcome,
}
