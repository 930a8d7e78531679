//! Evaluating flags: flagd's resolution rules on top of the compiled targeting.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::error::{ErrorCode, Reason};
use crate::logic::{Env, Resolved};
use crate::set::{CompiledFlag, FlagRef, FlagSet, FlagState};

/// The outcome of evaluating a flag. Borrows from the [`FlagSet`]; allocates only for error
/// messages.
///
/// `value` is `None` when the caller's default applies: the flag is disabled, failed to
/// evaluate, or resolved to "default" without a `defaultVariant`.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation<'f> {
    pub variant: Option<&'f str>,
    pub value: Option<&'f Value>,
    pub reason: Reason,
    pub error: Option<ErrorCode>,
    /// For people: what went wrong, when `error` is set.
    pub error_message: Option<Cow<'f, str>>,
    /// The flag's metadata merged over its document's (the set's metadata for an unknown flag).
    pub metadata: &'f Map<String, Value>,
}

/// The outcome of a typed evaluation: `value` is the flag's value, or the caller's default when
/// the flag resolved to none or to a value of another type (`TYPE_MISMATCH`).
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution<'f, T> {
    pub value: T,
    pub variant: Option<&'f str>,
    pub reason: Reason,
    pub error: Option<ErrorCode>,
    pub error_message: Option<Cow<'f, str>>,
    pub metadata: &'f Map<String, Value>,
}

impl FlagSet {
    /// Evaluates `flag_key` against `context` at `now_s` (Unix seconds, what
    /// `$flagd.timestamp` reads).
    ///
    /// The rules are flagd's: a disabled flag gives reason `DISABLED` and no value; a flag without
    /// targeting gives its default variant with reason `STATIC`; targeting that returns `null`
    /// gives the default variant with reason `DEFAULT`; targeting that returns a variant name
    /// (a boolean names `"true"`/`"false"`, a number its JSON spelling) gives that variant with
    /// reason `TARGETING_MATCH` (also for `fractional`); a name that is no variant gives
    /// `ERROR`/`GENERAL`; targeting that cannot run gives `ERROR`/`PARSE_ERROR`. Without a
    /// `defaultVariant`, "default" outcomes carry no value (the caller's default).
    pub fn evaluate<'f>(
        &'f self,
        flag_key: &str,
        context: &Map<String, Value>,
        now_s: i64,
    ) -> Evaluation<'f> {
        match self.index.get(flag_key) {
            Some(&id) => self.evaluate_id(id, context, now_s),
            None => Evaluation {
                variant: None,
                value: None,
                reason: Reason::Error,
                error: Some(ErrorCode::FlagNotFound),
                error_message: Some(Cow::Borrowed("no flag has this key")),
                metadata: &self.metadata,
            },
        }
    }

    pub(crate) fn evaluate_id<'f>(
        &'f self,
        id: u32,
        context: &Map<String, Value>,
        now_s: i64,
    ) -> Evaluation<'f> {
        let flag = &self.flags[id as usize];
        if flag.state == FlagState::Disabled {
            return outcome(flag, None, Reason::Disabled);
        }
        for prerequisite in flag.prerequisites.iter() {
            let met = self
                .evaluate_id(prerequisite.flag, context, now_s)
                .variant
                .and_then(|name| self.flags[prerequisite.flag as usize].variants.find(name))
                .is_some_and(|variant| prerequisite.variants.contains(&variant));
            if !met {
                return outcome(flag, flag.default_variant, Reason::Default);
            }
        }
        let Some(targeting) = &flag.targeting else {
            let reason = if flag.default_variant.is_some() {
                Reason::Static
            } else {
                Reason::Default
            };
            return outcome(flag, flag.default_variant, reason);
        };
        let env = Env::new(context, &flag.key, now_s, &self.segments);
        match targeting.resolve(&env, &flag.variants) {
            Ok(Resolved::Variant(variant)) => outcome(flag, Some(variant), Reason::TargetingMatch),
            Ok(Resolved::Null) => outcome(flag, flag.default_variant, Reason::Default),
            Ok(Resolved::NotAVariant(value)) => {
                let mut returned = String::new();
                value.write_js_string(&mut returned);
                let message =
                    format!("targeting returned `{returned}`, which is not a variant of this flag");
                failure(flag, ErrorCode::General, Cow::Owned(message))
            }
            Err(failure_) => failure(
                flag,
                ErrorCode::ParseError,
                Cow::Owned(failure_.0.to_owned()),
            ),
        }
    }

    /// Evaluates a boolean flag; `default` is used when the flag gives no boolean.
    pub fn evaluate_bool<'f>(
        &'f self,
        flag_key: &str,
        context: &Map<String, Value>,
        now_s: i64,
        default: bool,
    ) -> Resolution<'f, bool> {
        typed(
            self.evaluate(flag_key, context, now_s),
            default,
            "boolean",
            Value::as_bool,
        )
    }

    /// Evaluates a string flag; `default` is used when the flag gives no string.
    pub fn evaluate_string<'f>(
        &'f self,
        flag_key: &str,
        context: &Map<String, Value>,
        now_s: i64,
        default: &'f str,
    ) -> Resolution<'f, &'f str> {
        typed(
            self.evaluate(flag_key, context, now_s),
            default,
            "string",
            Value::as_str,
        )
    }

    /// Evaluates a number flag as a float.
    pub fn evaluate_f64<'f>(
        &'f self,
        flag_key: &str,
        context: &Map<String, Value>,
        now_s: i64,
        default: f64,
    ) -> Resolution<'f, f64> {
        typed(
            self.evaluate(flag_key, context, now_s),
            default,
            "number",
            Value::as_f64,
        )
    }

    /// Evaluates a number flag as an integer. A value with a fractional part is a
    /// `TYPE_MISMATCH` (flagd would truncate it silently).
    pub fn evaluate_i64<'f>(
        &'f self,
        flag_key: &str,
        context: &Map<String, Value>,
        now_s: i64,
        default: i64,
    ) -> Resolution<'f, i64> {
        typed(
            self.evaluate(flag_key, context, now_s),
            default,
            "integer",
            as_integer,
        )
    }

    /// Evaluates an object flag.
    pub fn evaluate_object<'f>(
        &'f self,
        flag_key: &str,
        context: &Map<String, Value>,
        now_s: i64,
        default: &'f Map<String, Value>,
    ) -> Resolution<'f, &'f Map<String, Value>> {
        typed(
            self.evaluate(flag_key, context, now_s),
            default,
            "object",
            Value::as_object,
        )
    }
}

impl<'f> FlagRef<'f> {
    /// Evaluates this flag (see [`FlagSet::evaluate`]) without looking its key up.
    pub fn evaluate(&self, context: &Map<String, Value>, now_s: i64) -> Evaluation<'f> {
        self.set.evaluate_id(self.id, context, now_s)
    }
}

fn outcome(flag: &CompiledFlag, variant: Option<u16>, reason: Reason) -> Evaluation<'_> {
    let (variant, value) = match variant {
        Some(i) => (
            Some(&*flag.variants.names[i as usize]),
            Some(&flag.variants.values[i as usize]),
        ),
        None => (None, None),
    };
    Evaluation {
        variant,
        value,
        reason,
        error: None,
        error_message: None,
        metadata: &flag.metadata,
    }
}

fn failure<'f>(flag: &'f CompiledFlag, code: ErrorCode, message: Cow<'f, str>) -> Evaluation<'f> {
    Evaluation {
        variant: None,
        value: None,
        reason: Reason::Error,
        error: Some(code),
        error_message: Some(message),
        metadata: &flag.metadata,
    }
}

fn as_integer(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        let n = value.as_f64()?;
        (n.fract() == 0.0 && n.abs() < 9.2e18).then_some(n as i64)
    })
}

fn typed<'f, T>(
    evaluation: Evaluation<'f>,
    default: T,
    expected: &'static str,
    extract: impl FnOnce(&'f Value) -> Option<T>,
) -> Resolution<'f, T> {
    let Evaluation {
        variant,
        value,
        reason,
        error,
        error_message,
        metadata,
    } = evaluation;
    match value.map(|v| (v, extract(v))) {
        None => Resolution {
            value: default,
            variant,
            reason,
            error,
            error_message,
            metadata,
        },
        Some((_, Some(value))) => Resolution {
            value,
            variant,
            reason,
            error,
            error_message,
            metadata,
        },
        Some((found, None)) => {
            let found = crate::error::json_type(found);
            Resolution {
                value: default,
                variant,
                reason: Reason::Error,
                error: Some(ErrorCode::TypeMismatch),
                error_message: Some(Cow::Owned(format!(
                    "the flag's value is {found}, not {expected}"
                ))),
                metadata,
            }
        }
    }
}
