//! Operator helpers with json-logic-js semantics: data access, `in`, `substr`, `missing`.

use serde_json::{Map, Value};

use super::eval::{Env, Eval, Scope, lookup};
use super::value::{Val, number_to_f64};
use super::{Node, PathKey, VarPath};

/// Parses a dotted `var` path. `$flagd.*` is only special at the root, where flagd injects it.
pub(crate) fn parse_var_path(path: &str, at_root: bool) -> VarPath {
    if path.is_empty() {
        return VarPath::Whole;
    }
    if at_root {
        match path {
            "$flagd" => return VarPath::Flagd,
            "$flagd.flagKey" => return VarPath::FlagKey,
            "$flagd.timestamp" => return VarPath::Timestamp,
            _ if path.starts_with("$flagd.") => return VarPath::Undefined,
            _ => {}
        }
    }
    let keys = path
        .split('.')
        .map(|key| PathKey {
            key: key.into(),
            index: array_index(key),
        })
        .collect();
    VarPath::Keys(keys)
}

/// A canonical array index (`0`, `17`, not `01` or `+1`), as JavaScript property access reads it.
fn array_index(key: &str) -> Option<usize> {
    let canonical = !key.is_empty()
        && key.bytes().all(|b| b.is_ascii_digit())
        && (key.len() == 1 || !key.starts_with('0'));
    if canonical { key.parse().ok() } else { None }
}

/// One step of a path: an object key or an array index.
pub(crate) fn step<'a>(value: Val<'a>, key: &str, index: Option<usize>) -> Option<Val<'a>> {
    match value {
        Val::Json(Value::Object(map)) => map.get(key).map(Val::from_json),
        Val::Json(Value::Array(items)) => items.get(index?).map(Val::from_json),
        Val::Map(map) => map.get(key).map(Val::from_json),
        Val::Array(items) => items.into_iter().nth(index?),
        Val::Object(map) => map.get(key).map(|value| owned(value.clone())),
        _ => None,
    }
}

fn owned<'a>(value: Value) -> Val<'a> {
    match value {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(b),
        Value::Number(n) => Val::Num(number_to_f64(&n)),
        Value::String(s) => Val::String(s),
        Value::Array(items) => Val::Array(items.into_iter().map(owned).collect()),
        Value::Object(map) => Val::Object(Box::new(map)),
    }
}

/// `var` with a computed path.
pub(crate) fn dynamic_lookup<'a>(
    path: &Val<'_>,
    env: &Env<'a>,
    scope: Scope<'_, 'a>,
) -> Option<Val<'a>> {
    let text = match path {
        Val::Null => String::new(),
        other => {
            let mut text = String::new();
            other.write_js_string(&mut text);
            text
        }
    };
    let path = parse_var_path(&text, matches!(scope, Scope::Root));
    lookup(&path, env, scope)
}

/// The `$flagd` object flagd injects into the context.
pub(crate) fn flagd_object<'a>(env: &Env<'a>) -> Val<'a> {
    let mut map = Map::new();
    map.insert("flagKey".to_owned(), Value::String(env.flag_key.to_owned()));
    map.insert("timestamp".to_owned(), Value::from(env.now_s));
    Val::Object(Box::new(map))
}

/// The data `reduce` gives its body: `{"current": ..., "accumulator": ...}`.
pub(crate) fn reduce_object<'a>(current: &Val<'a>, accumulator: &Val<'a>) -> Val<'a> {
    let mut map = Map::new();
    map.insert("current".to_owned(), current.to_value());
    map.insert("accumulator".to_owned(), accumulator.to_value());
    Val::Object(Box::new(map))
}

/// `in`: substring test on strings (the needle converted to a string), strict membership on
/// arrays, false otherwise.
pub(crate) fn contains(haystack: &Val<'_>, needle: &Val<'_>) -> bool {
    if let Some(text) = haystack.as_str() {
        return match needle.as_str() {
            Some(needle) => text.contains(needle),
            None => {
                let mut needle_text = String::new();
                needle.write_js_string(&mut needle_text);
                text.contains(&needle_text)
            }
        };
    }
    match haystack {
        Val::Json(Value::Array(items)) => items
            .iter()
            .any(|item| Val::from_json(item).strict_eq(needle)),
        Val::Array(items) => items.iter().any(|item| item.strict_eq(needle)),
        _ => false,
    }
}

/// `ToIntegerOrInfinity` of JavaScript, saturated to `i64`.
fn to_integer(value: &Val<'_>) -> i64 {
    let n = value.to_number();
    if n.is_nan() { 0 } else { n.trunc() as i64 }
}

/// `substr(source, start, length)` as json-logic-js defines it (a negative length drops that
/// many characters from the end). Counts Unicode scalar values where JavaScript counts UTF-16
/// code units; they differ only for characters outside the Basic Multilingual Plane.
pub(crate) fn substr<'a>(source: &Val<'_>, start: &Val<'_>, length: Option<&Val<'_>>) -> Val<'a> {
    let mut text = String::new();
    source.write_js_string(&mut text);
    let size = text.chars().count() as i64;
    let mut from = to_integer(start);
    if from < 0 {
        from = (size + from).max(0);
    }
    let from = from.min(size);
    let count = match length {
        None => size - from,
        Some(length) => {
            let n = length.to_number();
            if n < 0.0 {
                (size - from + to_integer(length)).max(0)
            } else {
                to_integer(length).clamp(0, size - from)
            }
        }
    };
    Val::String(
        text.chars()
            .skip(from as usize)
            .take(count as usize)
            .collect(),
    )
}

/// The keys among `keys` whose value is undefined, `null` or `""`.
fn missing_keys<'a>(
    keys: impl Iterator<Item = Val<'a>>,
    env: &Env<'a>,
    scope: Scope<'_, 'a>,
) -> Vec<Val<'a>> {
    keys.filter(|key| match dynamic_lookup(key, env, scope) {
        None | Some(Val::Null) => true,
        Some(value) => value.as_str() == Some(""),
    })
    .collect()
}

/// `missing`: keys given as arguments, or as one array argument.
pub(crate) fn missing<'a>(args: &'a [Node], env: &Env<'a>, scope: Scope<'_, 'a>) -> Eval<'a> {
    let mut values = Vec::with_capacity(args.len());
    for arg in args {
        values.push(arg.eval(env, scope)?);
    }
    let missing = match values.first().and_then(Val::items) {
        Some(items) => missing_keys(items, env, scope),
        None => missing_keys(values.iter().cloned(), env, scope),
    };
    Ok(Val::Array(missing))
}

/// `missing_some`: `[]` when at least `need` of the keys are present, else the missing ones.
pub(crate) fn missing_some<'a>(
    args: &'a [Node; 2],
    env: &Env<'a>,
    scope: Scope<'_, 'a>,
) -> Eval<'a> {
    let need = args[0].eval(env, scope)?.to_number();
    let keys = args[1].eval(env, scope)?;
    let Some(items) = keys.items() else {
        return Ok(Val::Array(Vec::new()));
    };
    let total = items.size_hint().0;
    let missing = missing_keys(items, env, scope);
    let present = (total - missing.len()) as f64;
    Ok(Val::Array(if present >= need {
        Vec::new()
    } else {
        missing
    }))
}
