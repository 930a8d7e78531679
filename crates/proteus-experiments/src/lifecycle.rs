//! The lifecycle of an experiment: draft → running → stopped → decided.
//!
//! Only a draft may change its definition, because results are only meaningful for the
//! definition the data were collected under. A decision records the chosen variant and whether
//! to roll it out; rolling out is a flag-set [`Change`] the runtime applies (and audits) like any
//! other, made by [`rollout_change`].

use std::fmt;

use proteus_flagsets::Change;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::definition::{DefinitionErrors, ExperimentDefinition, TEXT_BYTES_MAX};

/// Where an experiment is in its life. Times are milliseconds since the epoch, given by the
/// caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    Draft,
    Running {
        started_ms: i64,
    },
    Stopped {
        started_ms: i64,
        stopped_ms: i64,
    },
    Decided {
        started_ms: i64,
        stopped_ms: i64,
        decided_ms: i64,
        decision: Decision,
    },
}

impl Status {
    pub fn name(&self) -> &'static str {
        match self {
            Status::Draft => "draft",
            Status::Running { .. } => "running",
            Status::Stopped { .. } => "stopped",
            Status::Decided { .. } => "decided",
        }
    }
}

/// The outcome of an experiment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The variant chosen (an arm's).
    pub variant: String,
    /// Whether the flag should now serve `variant` to everyone.
    pub roll_out: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A transition that is not allowed, or a decision that does not fit the experiment.
#[derive(Debug, Clone, PartialEq)]
pub enum LifecycleError {
    /// `action` is not allowed in state `from`; `allowed` says what is.
    NotAllowed {
        action: &'static str,
        from: &'static str,
        allowed: &'static str,
    },
    /// The decision names a variant that is not an arm.
    UnknownVariant { variant: String, arms: Vec<String> },
    /// A time earlier than the previous transition's.
    TimeBeforePrevious { now_ms: i64, previous_ms: i64 },
    /// The decision's reason is longer than [`TEXT_BYTES_MAX`].
    ReasonTooLong { bytes: usize },
    /// A new definition is invalid.
    Definition(DefinitionErrors),
    /// A new definition changes the id.
    IdChanged { from: String, to: String },
}

impl fmt::Display for LifecycleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LifecycleError::NotAllowed {
                action,
                from,
                allowed,
            } => write!(f, "cannot {action} an experiment that is {from}; {allowed}"),
            LifecycleError::UnknownVariant { variant, arms } => write!(
                f,
                "`{variant}` is not an arm of this experiment (arms: {})",
                arms.join(", ")
            ),
            LifecycleError::TimeBeforePrevious {
                now_ms,
                previous_ms,
            } => write!(
                f,
                "time {now_ms} ms is before the previous transition at {previous_ms} ms"
            ),
            LifecycleError::ReasonTooLong { bytes } => write!(
                f,
                "the reason is {bytes} bytes; at most {TEXT_BYTES_MAX} are accepted"
            ),
            LifecycleError::Definition(errors) => write!(f, "invalid definition: {errors}"),
            LifecycleError::IdChanged { from, to } => write!(
                f,
                "the id of an experiment cannot change (from `{from}` to `{to}`); create a new one"
            ),
        }
    }
}

impl std::error::Error for LifecycleError {}

/// An experiment: its definition and where it is in its life; what a runtime persists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    pub definition: ExperimentDefinition,
    pub status: Status,
}

impl Experiment {
    /// A draft of a definition, which must be valid.
    pub fn draft(definition: ExperimentDefinition) -> Result<Experiment, LifecycleError> {
        definition
            .validate(None)
            .map_err(LifecycleError::Definition)?;
        Ok(Experiment {
            definition,
            status: Status::Draft,
        })
    }

    /// Replaces the definition of a draft.
    pub fn redefine(&mut self, definition: ExperimentDefinition) -> Result<(), LifecycleError> {
        if self.status != Status::Draft {
            return Err(LifecycleError::NotAllowed {
                action: "redefine",
                from: self.status.name(),
                allowed: "only a draft's definition can change; create a new experiment instead",
            });
        }
        if definition.id != self.definition.id {
            return Err(LifecycleError::IdChanged {
                from: self.definition.id.clone(),
                to: definition.id,
            });
        }
        definition
            .validate(None)
            .map_err(LifecycleError::Definition)?;
        self.definition = definition;
        Ok(())
    }

    /// draft → running.
    pub fn start(&mut self, now_ms: i64) -> Result<(), LifecycleError> {
        match self.status {
            Status::Draft => {
                self.status = Status::Running { started_ms: now_ms };
                Ok(())
            }
            _ => Err(LifecycleError::NotAllowed {
                action: "start",
                from: self.status.name(),
                allowed: "only a draft can start (a stopped experiment cannot restart: its \
                          results would mix two periods; create a new one)",
            }),
        }
    }

    /// running → stopped.
    pub fn stop(&mut self, now_ms: i64) -> Result<(), LifecycleError> {
        match self.status {
            Status::Running { started_ms } => {
                check_time(now_ms, started_ms)?;
                self.status = Status::Stopped {
                    started_ms,
                    stopped_ms: now_ms,
                };
                Ok(())
            }
            _ => Err(LifecycleError::NotAllowed {
                action: "stop",
                from: self.status.name(),
                allowed: "only a running experiment can stop",
            }),
        }
    }

    /// Whether the experiment may be deleted: a draft (nothing ran) or a decided one (its
    /// results are final and the decision is in the flag's history), never while running or
    /// stopped, where a decision is still due.
    pub fn check_delete(&self) -> Result<(), LifecycleError> {
        match self.status {
            Status::Draft | Status::Decided { .. } => Ok(()),
            _ => Err(LifecycleError::NotAllowed {
                action: "delete",
                from: self.status.name(),
                allowed: "only a draft or a decided experiment can be deleted; stop and decide it first",
            }),
        }
    }

    /// stopped → decided. A decision is final; the flag change (if `roll_out`) is made by
    /// [`rollout_change`] from the flag as it is then.
    pub fn decide(&mut self, decision: Decision, now_ms: i64) -> Result<(), LifecycleError> {
        let Status::Stopped {
            started_ms,
            stopped_ms,
        } = self.status
        else {
            return Err(LifecycleError::NotAllowed {
                action: "decide",
                from: self.status.name(),
                allowed: "stop the experiment first; a decision is made on a stopped experiment",
            });
        };
        check_time(now_ms, stopped_ms)?;
        if !self
            .definition
            .arms
            .iter()
            .any(|a| a.variant == decision.variant)
        {
            return Err(LifecycleError::UnknownVariant {
                variant: decision.variant,
                arms: self
                    .definition
                    .arms
                    .iter()
                    .map(|a| a.variant.clone())
                    .collect(),
            });
        }
        if let Some(reason) = &decision.reason
            && reason.len() > TEXT_BYTES_MAX
        {
            return Err(LifecycleError::ReasonTooLong {
                bytes: reason.len(),
            });
        }
        self.status = Status::Decided {
            started_ms,
            stopped_ms,
            decided_ms: now_ms,
            decision,
        };
        Ok(())
    }

    /// The change that rolls the decided variant out, if the decision asks for it; `flag` is
    /// the flag's current JSON in its flag set.
    pub fn decided_change(&self, flag: &Value) -> Result<Option<Change>, RolloutError> {
        match &self.status {
            Status::Decided { decision, .. } if decision.roll_out => Ok(Some(rollout_change(
                &self.definition.flag,
                flag,
                &decision.variant,
            )?)),
            _ => Ok(None),
        }
    }
}

fn check_time(now_ms: i64, previous_ms: i64) -> Result<(), LifecycleError> {
    if now_ms < previous_ms {
        Err(LifecycleError::TimeBeforePrevious {
            now_ms,
            previous_ms,
        })
    } else {
        Ok(())
    }
}

/// Why a rollout change cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutError(pub String);

impl fmt::Display for RolloutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RolloutError {}

/// The flag-set change serving `variant` to everyone: the flag (its current JSON) with
/// `defaultVariant` set to `variant` and its targeting removed, as a [`Change::PutFlag`].
///
/// The targeting is removed because it held the experiment's split (and any progressive
/// rollout); keeping it would keep serving the other arms. Targeting unrelated to the
/// experiment is removed too, which the revision's JSON Patch shows in the audit history.
/// The same change returns a flag to its control when a guardrail halts a rollout.
pub fn rollout_change(key: &str, flag: &Value, variant: &str) -> Result<Change, RolloutError> {
    let Some(object) = flag.as_object() else {
        return Err(RolloutError(format!(
            "flag `{key}` is not a JSON object; cannot set its default variant"
        )));
    };
    if object
        .get("variants")
        .and_then(|v| v.get(variant))
        .is_none()
    {
        return Err(RolloutError(format!(
            "flag `{key}` has no variant `{variant}` (it may have changed since the experiment started)"
        )));
    }
    let mut object = object.clone();
    object.insert("defaultVariant".into(), Value::from(variant));
    object.remove("targeting");
    Ok(Change::PutFlag {
        key: key.to_owned(),
        flag: Value::Object(object),
    })
}
