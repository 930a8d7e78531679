//! Definition errors (found when compiling) and evaluation outcomes (reasons and error codes).

use std::fmt;

/// One problem in a flag definition: where it is (a JSON pointer into the document) and what is
/// wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionError {
    /// Index of the document in the order they were given to the builder (0 for a single one).
    pub document: usize,
    /// JSON pointer (RFC 6901) to the offending value, e.g.
    /// `/flags/my-flag/targeting/if/0/fractional/1`. Empty for the document itself.
    pub path: String,
    /// What is wrong.
    pub kind: DefinitionErrorKind,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        if self.document == 0 {
            write!(f, "{path}: {}", self.kind)
        } else {
            write!(f, "document {} {path}: {}", self.document, self.kind)
        }
    }
}

impl std::error::Error for DefinitionError {}

/// What is wrong with a definition. Messages say what was found and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DefinitionErrorKind {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("the document is {bytes} bytes; at most {max} are accepted")]
    DocumentTooLarge { bytes: usize, max: usize },
    #[error("expected {expected}, found {found}")]
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    #[error("required property `{0}` is missing")]
    MissingProperty(&'static str),
    #[error("unknown property `{name}`; expected one of {expected}")]
    UnknownProperty {
        name: String,
        expected: &'static str,
    },
    #[error("keys must not be empty")]
    EmptyKey,
    #[error("flag `{0}` is defined twice in this document")]
    DuplicateFlag(String),
    #[error("state must be \"ENABLED\" or \"DISABLED\", found {0}")]
    InvalidState(String),
    #[error("a flag needs at least one variant")]
    NoVariants,
    #[error("variant values must be booleans, strings, numbers or objects, found {0}")]
    InvalidVariantValue(&'static str),
    #[error(
        "variant `{variant}` is {found} but variant `{first}` is {expected}; all variants of a flag must have the same type"
    )]
    MixedVariantTypes {
        first: String,
        expected: &'static str,
        variant: String,
        found: &'static str,
    },
    #[error("`{name}` is not a variant of this flag (variants: {known})")]
    UnknownVariant { name: String, known: String },
    #[error("metadata values must be strings, numbers or booleans, found {0}")]
    InvalidMetadataValue(&'static str),
    #[error("too many {what}: {count}, at most {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("targeting is nested deeper than {0} levels (including referenced evaluators)")]
    TargetingTooDeep(usize),
    #[error("targeting has more than {0} operations once evaluators are expanded")]
    TargetingTooLarge(usize),
    #[error("an operation is an object with exactly one key (the operator), found {0} keys")]
    MalformedOperation(usize),
    #[error("unknown operator `{0}`")]
    UnknownOperator(String),
    #[error("`{operator}` takes {expected} argument(s), found {found}")]
    Arity {
        operator: &'static str,
        expected: &'static str,
        found: usize,
    },
    #[error("`{operator}`: {reason}")]
    InvalidArgument {
        operator: &'static str,
        reason: String,
    },
    #[error("`$flagd.{0}` is not provided; only `$flagd.flagKey` and `$flagd.timestamp` are")]
    UnknownFlagdProperty(String),
    #[error("evaluator `{0}` is not defined in `$evaluators`")]
    MissingEvaluator(String),
    #[error("evaluator `{0}` refers to itself (through {1})")]
    EvaluatorCycle(String, String),
    #[error("segment `{0}` is not defined in any document's `segments`")]
    UnknownSegment(String),
    #[error("segments cannot use other segments; use `$evaluators` to share rules between them")]
    NestedSegment,
    #[error("prerequisite flag `{0}` does not exist")]
    UnknownPrerequisite(String),
    #[error("prerequisites form a cycle: {0}")]
    PrerequisiteCycle(String),
    #[error("prerequisite chain is deeper than {0} flags")]
    PrerequisitesTooDeep(usize),
}

/// Every problem found in a set of definitions, in document order; at most
/// [`DEFINITION_ERRORS_MAX`](crate::DEFINITION_ERRORS_MAX) are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionErrors(pub Vec<DefinitionError>);

impl DefinitionErrors {
    /// The errors, first found first.
    pub fn errors(&self) -> &[DefinitionError] {
        &self.0
    }
}

impl fmt::Display for DefinitionErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [] => f.write_str("invalid flag definitions"),
            [one] => one.fmt(f),
            [first, rest @ ..] => write!(f, "{first} (and {} more problems)", rest.len()),
        }
    }
}

impl std::error::Error for DefinitionErrors {}

/// Why an evaluation resolved the way it did, as flagd reports it (OpenFeature reason codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The flag has no targeting: its default variant was served.
    Static,
    /// Targeting (including `fractional`, for which flagd reports no `SPLIT`) chose a variant.
    TargetingMatch,
    /// Targeting returned `null`, or a prerequisite was not met: the default variant was served
    /// (or, without one, the caller's default value).
    Default,
    /// The flag is disabled: the caller's default value is used.
    Disabled,
    /// Evaluation failed; see [`ErrorCode`].
    Error,
}

impl Reason {
    /// The OpenFeature / OFREP spelling, e.g. `TARGETING_MATCH`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Default => "DEFAULT",
            Reason::Disabled => "DISABLED",
            Reason::Error => "ERROR",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an evaluation failed (OpenFeature / OFREP error codes).
///
/// The engine itself produces `FlagNotFound`, `ParseError`, `TypeMismatch` and `General`;
/// `TargetingKeyMissing` and `InvalidContext` exist for adapters that validate requests (flagd
/// treats a missing targeting key in `fractional` as "no bucket", i.e. the default variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// No flag has that key.
    FlagNotFound,
    /// The flag's targeting could not be evaluated (unknown operator, missing evaluator).
    ParseError,
    /// The resolved value does not have the type the caller asked for.
    TypeMismatch,
    /// A targeting key was required and absent.
    TargetingKeyMissing,
    /// The evaluation context was unusable.
    InvalidContext,
    /// Anything else, e.g. targeting returned a name that is not a variant.
    General,
}

impl ErrorCode {
    /// The OpenFeature / OFREP spelling, e.g. `FLAG_NOT_FOUND`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::TypeMismatch => "TYPE_MISMATCH",
            ErrorCode::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            ErrorCode::InvalidContext => "INVALID_CONTEXT",
            ErrorCode::General => "GENERAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of a JSON value's type, for messages.
pub(crate) fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
