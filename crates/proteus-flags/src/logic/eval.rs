//! The evaluator: walks a compiled tree over borrowed values.

use std::cell::{Cell, RefCell};

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
    /// The root context's entries read so far (see [`RootEntries`]).
    root: RootEntries<'a>,
}

impl<'a> Env<'a> {
    #[inline]
    pub(crate) fn new(
        context: &'a Map<String, Value>,
        flag_key: &'a str,
        now_s: i64,
        segments: &'a [Node],
    ) -> Self {
        Env {
            context,
            flag_key,
            now_s,
            segments,
            root: RootEntries {
                read: Cell::new(0),
                entries: Default::default(),
                unread: RefCell::new(context.iter()),
            },
        }
    }

    /// `context.get(key)`: reads a key of the root context.
    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        if self.context.len() > SCANNED_KEYS_MAX {
            return self.context.get(key);
        }
        let is_key = |k: &str| bytes_eq(k.as_bytes(), key.as_bytes());
        let root = &self.root;
        let read = &root.entries[..root.read.get()];
        if let Some((_, value)) = read.iter().filter_map(Cell::get).find(|(k, _)| is_key(k)) {
            return Some(value);
        }
        // Not among the entries read so far: read on, keeping what is passed.
        let mut unread = root.unread.borrow_mut();
        for (k, value) in unread.by_ref() {
            // In bounds: the context has at most `SCANNED_KEYS_MAX` entries.
            let i = root.read.get();
            root.entries[i].set(Some((k, value)));
            root.read.set(i + 1);
            if is_key(k) {
                return Some(value);
            }
        }
        None
    }
}

/// Fast path for reading the root context, which most `var`s of a rule do. A context of up to
/// [`SCANNED_KEYS_MAX`] keys (the usual handful) is walked at most once per evaluation: each
/// read first scans the entries earlier reads walked past (comparing lengths first), then walks
/// on from where they stopped, keeping the entries it passes. A step of a walk over a
/// `BTreeMap` (serde_json's `Map` without `preserve_order`) costs several times an array step,
/// and `Map::get` makes a `memcmp` call for every key it passes, so a rule reading four keys
/// used to walk the map four times. Larger contexts use `Map::get`. All find the same entry:
/// keys are unique (tested).
struct RootEntries<'a> {
    /// How many entries have been read.
    read: Cell<usize>,
    entries: [Cell<Option<(&'a str, &'a Value)>>; SCANNED_KEYS_MAX],
    /// Where reading the context goes on.
    unread: RefCell<serde_json::map::Iter<'a>>,
}

/// The data `var` reads: the root context, an array item (`map`, `filter`, ...), or the
/// `{current, accumulator}` pair of `reduce`.
///
/// Kept to two words (`Reduce` points to its pair) so it is passed in registers: every
/// evaluation step takes one.
#[derive(Clone, Copy)]
pub(crate) enum Scope<'s, 'a> {
    Root,
    Item(&'s Val<'a>),
    Reduce(&'s ReduceData<'a>),
}

const _: () = assert!(std::mem::size_of::<Scope<'_, '_>>() == 16);

/// What `reduce` gives its body.
pub(crate) struct ReduceData<'a> {
    pub(crate) current: Val<'a>,
    pub(crate) accumulator: Val<'a>,
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
                let mut data = ReduceData {
                    current: Val::Null,
                    accumulator: args[2].eval(env, scope)?,
                };
                if let Some(items) = array.items() {
                    for current in items {
                        data.current = current;
                        let accumulator = args[1].eval(env, Scope::Reduce(&data))?;
                        data.accumulator = accumulator;
                    }
                }
                data.accumulator
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
            Node::VarStringTest(test) => {
                var_string_test(test, env, scope).map_or(Val::Null, Val::Bool)
            }
            Node::VarInStrings(test) => Val::Bool(var_in_strings(test, env, scope)),
            Node::SemVer(node) => node.holds(env, scope)?.map_or(Val::Null, Val::Bool),
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
            // The operators `if` conditions use most, answered without building a `Val`.
            Node::VarInStrings(test) => Ok(var_in_strings(test, env, scope)),
            Node::VarStringTest(test) => Ok(var_string_test(test, env, scope).unwrap_or(false)),
            Node::SemVer(node) => Ok(node.holds(env, scope)?.unwrap_or(false)),
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
        Scope::Root => match root_value(keys, env) {
            Some(Value::String(s)) => RootString::Str(s),
            _ => RootString::Other,
        },
        _ => RootString::Scoped(walk_scope(keys, scope).unwrap_or(Val::Null)),
    }
}

fn walk_scope<'a>(keys: &[PathKey], scope: Scope<'_, 'a>) -> Option<Val<'a>> {
    match scope {
        Scope::Item(item) => walk(item.clone(), keys),
        Scope::Reduce(data) => {
            let (first, rest) = keys.split_first()?;
            match &*first.key {
                "current" => walk(data.current.clone(), rest),
                "accumulator" => walk(data.accumulator.clone(), rest),
                _ => None,
            }
        }
        Scope::Root => None,
    }
}

impl super::VarInStrings {
    fn contains(&self, value: &str) -> bool {
        self.items
            .iter()
            .any(|item| bytes_eq(item.as_bytes(), value.as_bytes()))
    }
}

/// `starts_with`/`ends_with` of a `var`; `None` (null) when the value is not a string.
fn var_string_test<'a>(
    test: &'a super::VarStringTest,
    env: &Env<'a>,
    scope: Scope<'_, 'a>,
) -> Option<bool> {
    // `str::ends_with`/`starts_with`, with the inlined comparison.
    let applies = |value: &str| {
        let (value, affix) = (value.as_bytes(), test.affix.as_bytes());
        value.len() >= affix.len()
            && if test.ends {
                bytes_eq(&value[value.len() - affix.len()..], affix)
            } else {
                bytes_eq(&value[..affix.len()], affix)
            }
    };
    match root_string(&test.keys, env, scope) {
        RootString::Str(value) => Some(applies(value)),
        RootString::Other => None,
        RootString::Scoped(value) => value.as_str().map(applies),
    }
}

fn var_in_strings<'a>(test: &'a super::VarInStrings, env: &Env<'a>, scope: Scope<'_, 'a>) -> bool {
    match root_string(&test.keys, env, scope) {
        RootString::Str(value) => test.contains(value),
        RootString::Other => false,
        RootString::Scoped(value) => value.as_str().is_some_and(|value| test.contains(value)),
    }
}

/// Objects with at most this many keys are searched by a scan rather than by `Map::get`.
const SCANNED_KEYS_MAX: usize = 8;

/// `object.get(key)`, for objects nested in the context (keys of the root are read with
/// [`Env::get`]).
///
/// Fast path: without serde_json's `preserve_order`, a `Map` is a `BTreeMap`, whose `get`
/// orders `key` against the keys it passes with a `memcmp` call each. A small object has a
/// handful of keys of mostly different lengths, so scanning them and comparing lengths first
/// leaves at most one byte comparison (inlined for short keys) per lookup. Larger objects keep
/// the logarithmic `get`. Both find the same entry: keys are unique (tested).
#[inline]
pub(crate) fn context_get<'a>(context: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if context.len() <= SCANNED_KEYS_MAX {
        context
            .iter()
            .find_map(|(k, v)| bytes_eq(k.as_bytes(), key.as_bytes()).then_some(v))
    } else {
        context.get(key)
    }
}

/// `a == b`, inlined for up to 16 bytes (two overlapping word loads instead of a `memcmp`
/// call), which covers nearly every context key and short string literal.
#[inline]
pub(crate) fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let n = a.len();
    // In range: both are n bytes long, and the match arms bound n.
    let word = |bytes: &[u8], at: usize| {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default())
    };
    let half = |bytes: &[u8], at: usize| {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or_default())
    };
    match n {
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        0 => true,
        // First, middle and last byte: every byte of 1 to 3.
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        _ => a == b,
    }
}

/// Follows `keys` through the root context, borrowing the value found.
pub(crate) fn root_value<'a>(keys: &[PathKey], env: &Env<'a>) -> Option<&'a Value> {
    let (first, rest) = keys.split_first()?;
    let mut value = env.get(&first.key)?;
    for key in rest {
        value = match value {
            Value::Object(map) => context_get(map, &key.key)?,
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
            VarPath::Keys(keys) => root_value(keys, env).map(Val::from_json),
        },
        Scope::Item(item) => match path {
            VarPath::Keys(keys) => walk(item.clone(), keys),
            _ => Some(item.clone()),
        },
        Scope::Reduce(data) => match path {
            VarPath::Keys(keys) => {
                let (first, rest) = keys.split_first()?;
                match &*first.key {
                    "current" => walk(data.current.clone(), rest),
                    "accumulator" => walk(data.accumulator.clone(), rest),
                    _ => None,
                }
            }
            _ => Some(ops::reduce_object(&data.current, &data.accumulator)),
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
