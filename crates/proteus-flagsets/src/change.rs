//! Changes to a flag set and how each one turns the current document into the next.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Longest flag key a change may name, in bytes.
pub const FLAG_KEY_BYTES_MAX: usize = 256;

/// One change to a flag set. Every change makes a new version with its own revision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// Replaces the whole document (pushing a flagd file, or a file reloaded from disk).
    PutSet {
        document: Value,
    },
    /// Creates or replaces one flag, keeping the others.
    PutFlag {
        key: String,
        flag: Value,
    },
    DeleteFlag {
        key: String,
    },
    /// The kill switch (`DISABLED`: off everywhere, now) and its undo.
    SetState {
        key: String,
        state: FlagStateChange,
    },
    /// One step of a progressive rollout: the flag's targeting becomes a `fractional` split
    /// serving `variant` to `percent` % of targeting keys and its `defaultVariant` to the rest.
    /// Buckets are stable, so every key served `variant` at a lower percentage keeps it.
    SetRollout {
        key: String,
        variant: String,
        percent: u8,
    },
    /// Makes the document of an earlier version current again, as a new version.
    Rollback {
        to_version: u64,
        document: Value,
    },
    /// Removes the set; its history stays in the audit topic.
    DeleteSet,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FlagStateChange {
    Enabled,
    Disabled,
}

impl FlagStateChange {
    pub fn as_str(self) -> &'static str {
        match self {
            FlagStateChange::Enabled => "ENABLED",
            FlagStateChange::Disabled => "DISABLED",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("flag set '{set}' does not exist")]
    SetNotFound { set: String },
    #[error("flag '{key}' does not exist in flag set '{set}'")]
    FlagNotFound { set: String, key: String },
    #[error("{0}")]
    Invalid(String),
}

fn check_key(key: &str) -> Result<(), ChangeError> {
    if key.is_empty() || key.len() > FLAG_KEY_BYTES_MAX {
        return Err(ChangeError::Invalid(format!(
            "a flag key is 1 to {FLAG_KEY_BYTES_MAX} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

/// The `flags` object of `document`, which must be a flagd document whose flags are an object
/// keyed by flag key (the form every change but [`Change::PutSet`] edits).
fn flags_mut<'d>(
    document: &'d mut Value,
    set: &str,
) -> Result<&'d mut Map<String, Value>, ChangeError> {
    match document.get_mut("flags") {
        Some(Value::Object(flags)) => Ok(flags),
        Some(_) => Err(ChangeError::Invalid(format!(
            "the flags of flag set '{set}' are not an object keyed by flag key; push the whole document instead"
        ))),
        None => Err(ChangeError::Invalid(format!(
            "flag set '{set}' has no \"flags\" object"
        ))),
    }
}

/// The document after `change`, from `current` (`None`: the set does not exist). The result is
/// not validated here; [`crate::compile`] does that.
pub fn apply(set: &str, current: Option<&Value>, change: &Change) -> Result<Value, ChangeError> {
    let existing = || {
        current.cloned().ok_or_else(|| ChangeError::SetNotFound {
            set: set.to_owned(),
        })
    };
    let flag_missing = |key: &str| ChangeError::FlagNotFound {
        set: set.to_owned(),
        key: key.to_owned(),
    };
    match change {
        Change::PutSet { document } => {
            if !document.is_object() {
                return Err(ChangeError::Invalid(
                    "a flag set document is a JSON object with a \"flags\" member".into(),
                ));
            }
            Ok(document.clone())
        }
        Change::PutFlag { key, flag } => {
            check_key(key)?;
            if !flag.is_object() {
                return Err(ChangeError::Invalid(format!(
                    "flag '{key}' must be a JSON object (state, variants, defaultVariant, targeting)"
                )));
            }
            // Creating a flag in a set that does not exist yet creates the set.
            let mut document = current.cloned().unwrap_or_else(|| json!({ "flags": {} }));
            flags_mut(&mut document, set)?.insert(key.clone(), flag.clone());
            Ok(document)
        }
        Change::DeleteFlag { key } => {
            let mut document = existing()?;
            flags_mut(&mut document, set)?
                .remove(key)
                .ok_or_else(|| flag_missing(key))?;
            Ok(document)
        }
        Change::SetState { key, state } => {
            let mut document = existing()?;
            let flag = flags_mut(&mut document, set)?
                .get_mut(key)
                .and_then(Value::as_object_mut)
                .ok_or_else(|| flag_missing(key))?;
            flag.insert("state".into(), Value::from(state.as_str()));
            Ok(document)
        }
        Change::SetRollout {
            key,
            variant,
            percent,
        } => {
            if *percent > 100 {
                return Err(ChangeError::Invalid(format!(
                    "a rollout percentage is 0 to 100, got {percent}"
                )));
            }
            let mut document = existing()?;
            let flag = flags_mut(&mut document, set)?
                .get_mut(key)
                .and_then(Value::as_object_mut)
                .ok_or_else(|| flag_missing(key))?;
            if flag.get("variants").and_then(|v| v.get(variant)).is_none() {
                return Err(ChangeError::Invalid(format!(
                    "flag '{key}' has no variant '{variant}' to roll out"
                )));
            }
            let default = match flag.get("defaultVariant").and_then(Value::as_str) {
                Some(default) if default != variant => default.to_owned(),
                _ => {
                    return Err(ChangeError::Invalid(format!(
                        "flag '{key}' needs a defaultVariant other than '{variant}' for the rest of the rollout to be served"
                    )));
                }
            };
            let rest = 100 - u32::from(*percent);
            flag.insert(
                "targeting".into(),
                json!({ "fractional": [[variant, percent], [default, rest]] }),
            );
            Ok(document)
        }
        Change::Rollback { document, .. } => Ok(document.clone()),
        Change::DeleteSet => {
            existing()?;
            Ok(Value::Null)
        }
    }
}
