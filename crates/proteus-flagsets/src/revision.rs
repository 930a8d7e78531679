//! Revisions: the audit record of one change, and the compiled form of a document.

use proteus_flags::{Compiled, DefinitionErrors, FlagSetBuilder, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::change::Change;
use crate::name::FlagSetName;

/// How strictly a document is checked when it becomes a version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidationMode {
    /// Every definition problem is refused with its JSON path (what people author through the
    /// API and CLI).
    #[default]
    Strict,
    /// Loads whatever flagd loads, reporting the rest as warnings (flag files written for flagd).
    Flagd,
}

/// Compiles `document` for evaluation; the warnings are the problems `Flagd` mode tolerated.
pub fn compile(document: &Value, mode: ValidationMode) -> Result<Compiled, DefinitionErrors> {
    let validation = match mode {
        ValidationMode::Strict => Validation::Strict,
        ValidationMode::Flagd => Validation::FlagdCompatible,
    };
    FlagSetBuilder::new(validation)
        .with_value(document.clone())
        .build()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    PutSet,
    PutFlag,
    DeleteFlag,
    SetState,
    SetRollout,
    Rollback,
    DeleteSet,
}

/// The audit record of one version of a flag set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub set: FlagSetName,
    /// 1 for the first version; each change adds one.
    pub version: u64,
    /// When the change was made, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Who made it: an API key's name, `file:PATH` for a loaded file, or `anonymous`.
    pub actor: String,
    /// Why, if the author said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub kind: ChangeKind,
    /// The flag a single-flag change is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<String>,
    /// The version a rollback restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_version: Option<u64>,
    pub validation: ValidationMode,
    /// What changed: an RFC 6902 JSON Patch from the previous document to `document`.
    pub patch: json_patch::Patch,
    /// The whole document of this version (`null` once the set is deleted).
    pub document: Value,
}

impl Revision {
    /// The revision recording `change`, which turned `previous` into `document`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        set: FlagSetName,
        version: u64,
        time_ms: i64,
        actor: String,
        comment: Option<String>,
        change: &Change,
        validation: ValidationMode,
        previous: Option<&Value>,
        document: Value,
    ) -> Revision {
        let (kind, flag, restored_version) = match change {
            Change::PutSet { .. } => (ChangeKind::PutSet, None, None),
            Change::PutFlag { key, .. } => (ChangeKind::PutFlag, Some(key.clone()), None),
            Change::DeleteFlag { key } => (ChangeKind::DeleteFlag, Some(key.clone()), None),
            Change::SetState { key, .. } => (ChangeKind::SetState, Some(key.clone()), None),
            Change::SetRollout { key, .. } => (ChangeKind::SetRollout, Some(key.clone()), None),
            Change::Rollback { to_version, .. } => (ChangeKind::Rollback, None, Some(*to_version)),
            Change::DeleteSet => (ChangeKind::DeleteSet, None, None),
        };
        let patch = json_patch::diff(previous.unwrap_or(&Value::Null), &document);
        Revision {
            set,
            version,
            time_ms,
            actor,
            comment,
            kind,
            flag,
            restored_version,
            validation,
            patch,
            document,
        }
    }

    /// Whether this revision changed flag `key` (its definition appears in the patch).
    pub fn touches(&self, key: &str) -> bool {
        if self.flag.as_deref() == Some(key) {
            return true;
        }
        let pointer = format!("/flags/{}", key.replace('~', "~0").replace('/', "~1"));
        self.patch.0.iter().any(|operation| {
            let path = operation.path().to_string();
            path == pointer
                || path.starts_with(&format!("{pointer}/"))
                || path.is_empty()
                || path == "/flags"
        })
    }
}
