//! The evaluator: walks a compiled tree over borrowed values.

use serde_json::{Map, Value};

use super::value::Val;
use super::{ArithmeticOp, CompareOp, IterateOp, Node, PathKey, Var, VarPath, ops};
use crate::set::Variants;

/// What an evaluation sees: the caller's context plus flagd's injected `$flagd` properties.
pub(crate) struct Env<'a> {
    pub(crate) context: &'a Map<String, Value>,
    pub(crate) flag_key: &'a str,
    pub(crate) now_s: i64,
    pub(crate) segments: &'a [Node],
}

/// The data `var` reads: the root context, an array item (`map`, `filter`, ...), or the
/// `{current, accumulator}` pair of `reduce`.
#[derive(Clone, Copy)]
pub(crate) enum Scope<'s, 'a> {
    Root,
    Item(&'s Val<'a>),
    Reduce {
        current: &'s Val<'a>,
        accumulator: &'s Val<'a>,
    },
}

/// Evaluation hit a [`Node::Fail`]; flagd reports this as `PARSE_ERROR`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failure<'a>(pub(crate) &'a str);

pub(crate) type Eval<'a> = Result<Val<'a>, Failure<'a>>;

/// What targeting returned, in terms of the flag's variants.
pub(crate) enum Resolved<'a> {
    /// `null`: serve the default variant.
    Null,
    Variant(u16),
    /// A value that names no variant.
    NotAVariant(Val<'a>),
}

impl Node {
    /// Evaluates this node as the result of targeting: constants carry their pre-resolved
    /// variant, `if` and `fractional` recurse into the chosen branch, anything else is
    /// evaluated and its value looked up among the variants.
    pub(crate) fn resolve<'a>(
        &'a self,
        env: &Env<'a>,
        variants: &Variants,
    ) -> Result<Resolved<'a>, Failure<'a>> {
        match self {
            Node::Const(c) => Ok(match c.variant {
                Some(i) => Resolved::Variant(i),
                None if c.val().is_null() => Resolved::Null,
                None => Resolved::NotAVariant(c.val()),
            }),
            Node::If(args) => match choose_branch(args, env, Scope::Root)? {
                Some(branch) => branch.resolve(env, variants),
                None => Ok(Resolved::Null),
            },
            Node::Fractional(fractional) => match fractional.choose(env, Scope::Root)? {
                Some(bucket) => bucket.resolve(env, variants),
                None => Ok(Resolved::Null),
            },
            other => {
                let value = other.eval(env, Scope::Root)?;
                Ok(resolve_value(value, variants))
            }
        }
    }

    pub(crate) fn eval<'a>(&'a self, env: &Env<'a>, scope: Scope<'_, 'a>) -> Eval<'a> {
        Ok(match self {
            Node::Const(c) => c.val(),
            Node::Var(var) => match lookup(&var.path, env, scope) {
                Some(value) => value,
                None => default_of(var, env, scope)?,
            },
            Node::DynamicVar(args) => {
                let path = args[0].eval(env, scope)?;
                match ops::dynamic_lookup(&path, env, scope) {
                    Some(value) => value,
                    None => args[1].eval(env, scope)?,
                }
            }
            Node::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items.iter() {
                    out.push(item.eval(env, scope)?);
                }
                Val::Array(out)
            }
            Node::If(args) => match choose_branch(args, env, scope)? {
                Some(branch) => branch.eval(env, scope)?,
                None => Val::Null,
            },
            Node::And(args) => {
                let mut last = Val::Null;
                for arg in args.iter() {
                    last = arg.eval(env, scope)?;
                    if !last.truthy() {
                        break;
                    }
                }
                last
            }
            Node::Or(args) => {
                let mut last = Val::Null;
                for arg in args.iter() {
                    last = arg.eval(env, scope)?;
                    if last.truthy() {
                        break;
                    }
                }
                last
            }
            Node::Not(arg) => Val::Bool(!arg.eval(env, scope)?.truthy()),
            Node::Truthy(arg) => Val::Bool(arg.eval(env, scope)?.truthy()),
            Node::Equals {
                strict,
                negate,
                args,
            } => {
                let a = args[0].eval(env, scope)?;
                let b = args[1].eval(env, scope)?;
                let equal = if *strict {
                    a.strict_eq(&b)
                } else {
                    a.loose_eq(&b)
                };
                Val::Bool(equal != *negate)
            }
            Node::Compare { op, args } => Val::Bool(compare(*op, args, env, scope)?),
            Node::In(args) => {
                let needle = args[0].eval(env, scope)?;
                let haystack = args[1].eval(env, scope)?;
                Val::Bool(ops::contains(&haystack, &needle))
            }
            Node::Arithmetic { op, args } => arithmetic(*op, args, env, scope)?,
            Node::Cat(args) => {
                let mut out = String::new();
                for arg in args.iter() {
                    arg.eval(env, scope)?.write_js_string(&mut out);
                }
                Val::String(out)
            }
            Node::Substr(args) => {
                let source = args[0].eval(env, scope)?;
                let start = args[1].eval(env, scope)?;
                let length = match args.get(2) {
                    Some(length) => Some(length.eval(env, scope)?),
                    None => None,
                };
                ops::substr(&source, &start, length.as_ref())
            }
            Node::Merge(args) => {
                let mut out = Vec::new();
                for arg in args.iter() {
                    let value = arg.eval(env, scope)?;
                    match value.items() {
                        Some(items) => out.extend(items),
                        None => out.push(value),
                    }
                }
                Val::Array(out)
            }
            Node::Missing(args) => ops::missing(args, env, scope)?,
            Node::MissingSome(args) => ops::missing_some(args, env, scope)?,
            Node::Iterate { op, args } => iterate(*op, args, env, scope)?,
            Node::Reduce(args) => {
                let array = args[0].eval(env, scope)?;
                let mut accumulator = args[2].eval(env, scope)?;
                if let Some(items) = array.items() {
                    for current in items {
                        let scope = Scope::Reduce {
                            current: &current,
                            accumulator: &accumulator,
                        };
                        accumulator = args[1].eval(env, scope)?;
                    }
                }
                accumulator
            }
            Node::StringTest { ends, args } => {
                let value = args[0].eval(env, scope)?;
                let affix = args[1].eval(env, scope)?;
                match (value.as_str(), affix.as_str()) {
                    (Some(value), Some(affix)) if *ends => Val::Bool(value.ends_with(affix)),
                    (Some(value), Some(affix)) => Val::Bool(value.starts_with(affix)),
                    // flagd returns null (not false) so the default variant is served.
                    _ => Val::Null,
                }
            }
            Node::VarStringTest(test) => match root_string(&test.keys, env, scope) {
                RootString::Str(value) => Val::Bool(if test.ends {
                    value.ends_with(&*test.affix)
                } else {
                    value.starts_with(&*test.affix)
                }),
                RootString::Other => Val::Null,
                RootString::Scoped(value) => match value.as_str() {
                    Some(value) => Val::Bool(if test.ends {
                        value.ends_with(&*test.affix)
                    } else {
                        value.starts_with(&*test.affix)
                    }),
                    None => Val::Null,
                },
            },
            Node::VarInStrings(test) => Val::Bool(var_in_strings(test, env, scope)),
            Node::SemVer(node) => node.eval(env, scope)?,
            Node::Fractional(fractional) => match fractional.choose(env, scope)? {
                Some(bucket) => match bucket.eval(env, scope)? {
                    value @ (Val::Null
                    | Val::Bool(_)
                    | Val::Num(_)
                    | Val::Str(_)
                    | Val::String(_)) => value,
                    // flagd accepts only strings, booleans, numbers and null as bucket values.
                    _ => Val::Null,
                },
                None => Val::Null,
            },
            Node::Segment(id) => match env.segments.get(*id as usize) {
                Some(rule) => Val::Bool(rule.eval(env, Scope::Root)?.truthy()),
                None => Val::Null,
            },
            Node::Fail(message) => return Err(Failure(message)),
        })
    }
}

fn default_of<'a>(var: &'a Var, env: &Env<'a>, scope: Scope<'_, 'a>) -> Eval<'a> {
    match &var.default {
        Some(default) => default.eval(env, scope),
        None => Ok(Val::Null),
    }
}

/// The branch `if` takes: the first `then` whose condition is truthy, else the trailing `else`.
fn choose_branch<'a>(
    args: &'a [Node],
    env: &Env<'a>,
    scope: Scope<'_, 'a>,
) -> Result<Option<&'a Node>, Failure<'a>> {
    let mut pairs = args.chunks_exact(2);
    for pair in pairs.by_ref() {
        if pair[0].test(env, scope)? {
            return Ok(Some(&pair[1]));
        }
    }
    Ok(pairs.remainder().first())
}

impl Node {
    /// Evaluates this node for its truthiness only, skipping the values boolean operations
    /// would build.
    pub(crate) fn test<'a>(
        &'a self,
        env: &Env<'a>,
        scope: Scope<'_, 'a>,
    ) -> Result<bool, Failure<'a>> {
        match self {
            Node::Const(c) => Ok(c.val().truthy()),
            Node::VarInStrings(test) => Ok(var_in_strings(test, env, scope)),
            Node::Not(arg) => Ok(!arg.test(env, scope)?),
            Node::Truthy(arg) => arg.test(env, scope),
            Node::And(args) => {
                for arg in args.iter() {
                    if !arg.test(env, scope)? {
                        return Ok(false);
                    }
                }
                Ok(!args.is_empty())
            }
            Node::Or(args) => {
                for arg in args.iter() {
                    if arg.test(env, scope)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            other => Ok(other.eval(env, scope)?.truthy()),
        }
    }
}

enum RootString<'a> {
    Str(&'a str),
    Other,
    Scoped(Val<'a>),
}

/// Reads a string `var` without building a value when the data is the root context.
fn root_string<'a>(keys: &[PathKey], env: &Env<'a>, scope: Scope<'_, 'a>) -> RootString<'a> {
    match scope {
        Scope::Root => match root_value(keys, env.context) {
            Some(Value::String(s)) => RootString::Str(s),
            _ => RootString::Other,
        },
        _ => RootString::Scoped(walk_scope(keys, scope).unwrap_or(Val::Null)),
    }
}

fn walk_scope<'a>(keys: &[PathKey], scope: Scope<'_, 'a>) -> Option<Val<'a>> {
    match scope {
        Scope::Item(item) => walk(item.clone(), keys),
        Scope::Reduce {
            current,
            accumulator,
        } => {
            let (first, rest) = keys.split_first()?;
            match &*first.key {
                "current" => walk(current.clone(), rest),
                "accumulator" => walk(accumulator.clone(), rest),
                _ => None,
            }
        }
        Scope::Root => None,
    }
}

fn var_in_strings<'a>(test: &'a super::VarInStrings, env: &Env<'a>, scope: Scope<'_, 'a>) -> bool {
    match root_string(&test.keys, env, scope) {
        RootString::Str(value) => test.items.iter().any(|item| **item == *value),
        RootString::Other => false,
        RootString::Scoped(value) => value
            .as_str()
            .is_some_and(|value| test.items.iter().any(|item| **item == *value)),
    }
}

/// `context.get(key)`: the one place context keys are looked up.
pub(crate) fn context_get<'a>(context: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    context.get(key)
}

/// Follows `keys` through the root context, borrowing the value found.
pub(crate) fn root_value<'a>(
    keys: &[PathKey],
    context: &'a Map<String, Value>,
) -> Option<&'a Value> {
    let (first, rest) = keys.split_first()?;
    let mut value = context_get(context, &first.key)?;
    for key in rest {
        value = match value {
            Value::Object(map) => map.get(&*key.key)?,
            Value::Array(items) => items.get(key.index?)?,
            _ => return None,
        };
    }
    Some(value)
}

/// Maps a targeting result to a variant as flagd does: strings name variants, booleans name
/// `"true"`/`"false"`, numbers name their JSON spelling.
pub(crate) fn resolve_value<'a>(value: Val<'a>, variants: &Variants) -> Resolved<'a> {
    let found = match &value {
        Val::Null => return Resolved::Null,
        Val::Str(s) => variants.find(s),
        Val::String(s) => variants.find(s),
        Val::Bool(b) => variants.find(if *b { "true" } else { "false" }),
        Val::Num(n) => variants.find(super::js::number_to_string(*n).as_str()),
        _ => None,
    };
    match found {
        Some(i) => Resolved::Variant(i),
        None => Resolved::NotAVariant(value),
    }
}

/// Reads a `var` path. `None` means undefined (so the default applies); a present `null` is
/// `Some(Val::Null)`, as in json-logic-js.
pub(crate) fn lookup<'a>(path: &VarPath, env: &Env<'a>, scope: Scope<'_, 'a>) -> Option<Val<'a>> {
    match scope {
        Scope::Root => match path {
            VarPath::Whole => Some(Val::Map(env.context)),
            VarPath::FlagKey => Some(Val::Str(env.flag_key)),
            VarPath::Timestamp => Some(Val::Num(env.now_s as f64)),
            VarPath::Flagd => Some(ops::flagd_object(env)),
            VarPath::Undefined => None,
            VarPath::Keys(keys) => root_value(keys, env.context).map(Val::from_json),
        },
        Scope::Item(item) => match path {
            VarPath::Keys(keys) => walk(item.clone(), keys),
            _ => Some(item.clone()),
        },
        Scope::Reduce {
            current,
            accumulator,
        } => match path {
            VarPath::Keys(keys) => {
                let (first, rest) = keys.split_first()?;
                match &*first.key {
                    "current" => walk(current.clone(), rest),
                    "accumulator" => walk(accumulator.clone(), rest),
                    _ => None,
                }
            }
            _ => Some(ops::reduce_object(current, accumulator)),
        },
    }
}

/// Follows `keys` from `value`; `None` as soon as a step is undefined.
pub(crate) fn walk<'a>(mut value: Val<'a>, keys: &[PathKey]) -> Option<Val<'a>> {
    for key in keys {
        value = ops::step(value, &key.key, key.index)?;
    }
    Some(value)
}

fn compare<'a>(
    op: CompareOp,
    args: &'a [Node],
    env: &Env<'a>,
    scope: Scope<'_, 'a>,
) -> Result<bool, Failure<'a>> {
    let holds = |ordering: Option<std::cmp::Ordering>| {
        use std::cmp::Ordering::*;
        matches!(
            (op, ordering),
            (CompareOp::Less, Some(Less))
                | (CompareOp::LessOrEqual, Some(Less | Equal))
                | (CompareOp::Greater, Some(Greater))
                | (CompareOp::GreaterOrEqual, Some(Greater | Equal))
        )
    };
    let a = args[0].eval(env, scope)?;
    let b = args[1].eval(env, scope)?;
    if !holds(a.js_cmp(&b)) {
        return Ok(false);
    }
    match args.get(2) {
        Some(c) => {
            let c = c.eval(env, scope)?;
            Ok(holds(b.js_cmp(&c)))
        }
        None => Ok(true),
    }
}

fn arithmetic<'a>(
    op: ArithmeticOp,
    args: &'a [Node],
    env: &Env<'a>,
    scope: Scope<'_, 'a>,
) -> Eval<'a> {
    let mut values = args.iter().map(|arg| arg.eval(env, scope));
    let mut next = || values.next().transpose();
    Ok(match op {
        ArithmeticOp::Add => {
            let mut sum = 0.0;
            while let Some(value) = next()? {
                sum += value.parse_float();
            }
            Val::Num(sum)
        }
        ArithmeticOp::Multiply => {
            // json-logic-js reduces without an initial value: one argument is returned as is.
            let Some(first) = next()? else {
                return Ok(Val::Null);
            };
            let Some(second) = next()? else {
                return Ok(first);
            };
            let mut product = first.parse_float() * second.parse_float();
            while let Some(value) = next()? {
                product *= value.parse_float();
            }
            Val::Num(product)
        }
        ArithmeticOp::Subtract => {
            let a = next()?.unwrap_or(Val::Null);
            match next()? {
                Some(b) => Val::Num(a.to_number() - b.to_number()),
                None => Val::Num(-a.to_number()),
            }
        }
        ArithmeticOp::Divide | ArithmeticOp::Remainder => {
            let a = next()?.unwrap_or(Val::Null).to_number();
            let b = next()?.map_or(f64::NAN, |b| b.to_number());
            Val::Num(if op == ArithmeticOp::Divide {
                a / b
            } else {
                a % b
            })
        }
        ArithmeticOp::Min | ArithmeticOp::Max => {
            let mut best = if op == ArithmeticOp::Min {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            };
            while let Some(value) = next()? {
                let n = value.to_number();
                if n.is_nan() || best.is_nan() {
                    best = f64::NAN;
                } else if (op == ArithmeticOp::Min && n < best)
                    || (op == ArithmeticOp::Max && n > best)
                {
                    best = n;
                }
            }
            Val::Num(best)
        }
    })
}

fn iterate<'a>(
    op: IterateOp,
    args: &'a [Node; 2],
    env: &Env<'a>,
    scope: Scope<'_, 'a>,
) -> Eval<'a> {
    let array = args[0].eval(env, scope)?;
    let body = &args[1];
    let Some(items) = array.items() else {
        return Ok(match op {
            IterateOp::Map | IterateOp::Filter => Val::Array(Vec::new()),
            IterateOp::All | IterateOp::Some => Val::Bool(false),
            IterateOp::None => Val::Bool(true),
        });
    };
    Ok(match op {
        IterateOp::Map => {
            let mut out = Vec::with_capacity(items.size_hint().0);
            for item in items {
                out.push(body.eval(env, Scope::Item(&item))?);
            }
            Val::Array(out)
        }
        IterateOp::Filter => {
            let mut out = Vec::new();
            for item in items {
                if body.eval(env, Scope::Item(&item))?.truthy() {
                    out.push(item);
                }
            }
            Val::Array(out)
        }
        IterateOp::All => {
            if array.array_len() == Some(0) {
                return Ok(Val::Bool(false));
            }
            for item in items {
                if !body.eval(env, Scope::Item(&item))?.truthy() {
                    return Ok(Val::Bool(false));
                }
            }
            Val::Bool(true)
        }
        IterateOp::Some | IterateOp::None => {
            let mut found = false;
            for item in items {
                if body.eval(env, Scope::Item(&item))?.truthy() {
                    found = true;
                    break;
                }
            }
            Val::Bool(found == (op == IterateOp::Some))
        }
    })
}
