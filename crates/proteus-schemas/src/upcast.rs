//! Declarative upcasters: the steps that turn an event written with one version of its schema
//! into the next version, so consumers only ever handle the latest shape.
//!
//! ```json
//! {"from_version": 1, "to_version": 2, "steps": [
//!   {"op": "rename",  "from": "/customer",    "to": "/customerId"},
//!   {"op": "add",     "path": "/currency",    "default": "EUR"},
//!   {"op": "remove",  "path": "/legacy"},
//!   {"op": "move",    "from": "/address/zip", "to": "/shipping/zip"},
//!   {"op": "convert", "path": "/total",       "to": "number"}
//! ]}
//! ```
//!
//! Paths are JSON pointers (RFC 6901). Steps are total on purpose: a step whose source is
//! absent does nothing (an optional property that was never written), so old events stay
//! readable; only a value that cannot be converted, or a path through a non-object, fails.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value, json};

use crate::compat::{T_NULL, escape_token, types_of};

/// Most steps one upcaster may have.
pub const UPCASTER_STEPS_MAX: usize = 64;
/// Most reference tokens in one step's JSON pointer.
pub const POINTER_TOKENS_MAX: usize = 32;
/// Longest JSON pointer in a step, in bytes.
pub const POINTER_BYTES_MAX: usize = 1_024;

/// The steps from `from_version` to `to_version` (always the next version).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upcaster {
    pub from_version: u32,
    pub to_version: u32,
    /// Applied in order. Empty means "read the previous version as it is", which is how a
    /// breaking change is accepted knowingly.
    #[serde(default)]
    pub steps: Vec<UpcastStep>,
}

/// One step of an upcaster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum UpcastStep {
    /// Renames a member in place: `from` and `to` differ only in their last token.
    Rename { from: String, to: String },
    /// Sets `path` to `default` when it is absent (missing parents are created as objects).
    Add { path: String, default: Value },
    /// Removes `path` when present.
    Remove { path: String },
    /// Moves the value at `from` to `to`, anywhere in the document.
    Move { from: String, to: String },
    /// Converts the value at `path` to another scalar type; `null` stays `null`.
    Convert { path: String, to: ValueType },
}

/// The scalar types [`UpcastStep::Convert`] converts between.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    String,
    Number,
    Integer,
    Boolean,
}

impl ValueType {
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::String => "string",
            ValueType::Number => "number",
            ValueType::Integer => "integer",
            ValueType::Boolean => "boolean",
        }
    }
}

impl UpcastStep {
    pub fn op(&self) -> &'static str {
        match self {
            UpcastStep::Rename { .. } => "rename",
            UpcastStep::Add { .. } => "add",
            UpcastStep::Remove { .. } => "remove",
            UpcastStep::Move { .. } => "move",
            UpcastStep::Convert { .. } => "convert",
        }
    }
}

/// Why one step could not be applied to one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepFailure {
    /// Index of the step in its upcaster.
    pub step: usize,
    pub op: &'static str,
    pub reason: String,
}

/// Splits a JSON pointer into unescaped tokens; the empty pointer (the whole event) is refused
/// because a step works on members.
pub fn parse_pointer(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Err(
            "the empty pointer names the whole event; name a member such as \"/total\"".into(),
        );
    }
    if pointer.len() > POINTER_BYTES_MAX {
        return Err(format!(
            "the pointer is {} bytes, the most is {POINTER_BYTES_MAX}",
            pointer.len()
        ));
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!(
            "{pointer:?} is not a JSON pointer: it must start with '/', as in \"/{pointer}\""
        ));
    };
    let mut tokens = Vec::new();
    for raw in rest.split('/') {
        let mut token = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '~' {
                match chars.next() {
                    Some('0') => token.push('~'),
                    Some('1') => token.push('/'),
                    _ => {
                        return Err(format!(
                            "{pointer:?} has a '~' not followed by 0 or 1; write '~0' for '~' and '~1' for '/'"
                        ));
                    }
                }
            } else {
                token.push(c);
            }
        }
        tokens.push(token);
    }
    if tokens.len() > POINTER_TOKENS_MAX {
        return Err(format!(
            "{pointer:?} has {} levels, the most is {POINTER_TOKENS_MAX}",
            tokens.len()
        ));
    }
    Ok(tokens)
}

fn show(tokens: &[String]) -> String {
    if tokens.is_empty() {
        return "the event".into();
    }
    tokens
        .iter()
        .map(|t| format!("/{}", escape_token(t)))
        .collect()
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Upcaster {
    /// Checks the steps' shape (the versions are checked by the registry): pointers parse,
    /// renames stay under one parent, moves do not move a value into itself.
    pub fn check(&self) -> Result<(), String> {
        if self.steps.len() > UPCASTER_STEPS_MAX {
            return Err(format!(
                "the upcaster has {} steps, the most is {UPCASTER_STEPS_MAX}; split the change over several versions",
                self.steps.len()
            ));
        }
        for (i, step) in self.steps.iter().enumerate() {
            let at = |reason: String| format!("step {i} ({}): {reason}", step.op());
            match step {
                UpcastStep::Rename { from, to } | UpcastStep::Move { from, to } => {
                    let from_tokens = parse_pointer(from).map_err(at)?;
                    let to_tokens = parse_pointer(to).map_err(at)?;
                    if from_tokens == to_tokens {
                        return Err(at(format!(
                            "\"from\" and \"to\" are both {from:?}; drop the step"
                        )));
                    }
                    if matches!(step, UpcastStep::Rename { .. })
                        && from_tokens[..from_tokens.len() - 1] != to_tokens[..to_tokens.len() - 1]
                    {
                        return Err(at(format!(
                            "a rename changes only the last token of the path, but {from:?} and {to:?} have different parents; use \"op\": \"move\""
                        )));
                    }
                    if to_tokens.starts_with(&from_tokens) {
                        return Err(at(format!(
                            "{to:?} is inside {from:?}; a value cannot move into itself"
                        )));
                    }
                }
                UpcastStep::Add { path, .. }
                | UpcastStep::Remove { path }
                | UpcastStep::Convert { path, .. } => {
                    parse_pointer(path).map_err(at)?;
                }
            }
        }
        Ok(())
    }

    /// Applies the steps to one event's data, in order.
    pub fn apply(&self, data: &mut Value) -> Result<(), StepFailure> {
        for (i, step) in self.steps.iter().enumerate() {
            apply_step(step, data).map_err(|reason| StepFailure {
                step: i,
                op: step.op(),
                reason,
            })?;
        }
        Ok(())
    }
}

fn apply_step(step: &UpcastStep, data: &mut Value) -> Result<(), String> {
    match step {
        UpcastStep::Rename { from, to } | UpcastStep::Move { from, to } => {
            let from = parse_pointer(from)?;
            let to = parse_pointer(to)?;
            if let Some(value) = take(data, &from)? {
                put(data, &to, value)?;
            }
            Ok(())
        }
        UpcastStep::Add { path, default } => {
            let path = parse_pointer(path)?;
            if get_mut(data, &path)?.is_none() {
                put(data, &path, default.clone())?;
            }
            Ok(())
        }
        UpcastStep::Remove { path } => {
            take(data, &parse_pointer(path)?)?;
            Ok(())
        }
        UpcastStep::Convert { path, to } => {
            let tokens = parse_pointer(path)?;
            if let Some(value) = get_mut(data, &tokens)? {
                *value = convert(value, *to).map_err(|reason| {
                    format!(
                        "cannot convert {} to {}: {reason}",
                        show(&tokens),
                        to.as_str()
                    )
                })?;
            }
            Ok(())
        }
    }
}

fn index_of(token: &str, len: usize) -> Option<usize> {
    if token != "0" && token.starts_with('0') {
        return None;
    }
    token.parse::<usize>().ok().filter(|i| *i < len)
}

/// The value at `tokens`, `None` when it (or a parent) is absent. A parent that is a scalar
/// is absent too: there is nothing to read below a string.
fn get_mut<'v>(data: &'v mut Value, tokens: &[String]) -> Result<Option<&'v mut Value>, String> {
    let mut current = data;
    for token in tokens {
        current = match current {
            Value::Object(members) => match members.get_mut(token) {
                Some(v) => v,
                None => return Ok(None),
            },
            Value::Array(items) => match index_of(token, items.len()) {
                Some(i) => &mut items[i],
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
    }
    Ok(Some(current))
}

/// Removes and returns the value at `tokens`, if present.
fn take(data: &mut Value, tokens: &[String]) -> Result<Option<Value>, String> {
    let Some((last, parents)) = tokens.split_last() else {
        return Ok(None);
    };
    let Some(parent) = get_mut(data, parents)? else {
        return Ok(None);
    };
    Ok(match parent {
        Value::Object(members) => members.remove(last),
        Value::Array(items) => index_of(last, items.len()).map(|i| items.remove(i)),
        _ => None,
    })
}

/// Sets the value at `tokens`, creating missing parents as objects.
fn put(data: &mut Value, tokens: &[String], value: Value) -> Result<(), String> {
    let Some((last, parents)) = tokens.split_last() else {
        return Err("a step cannot replace the whole event".into());
    };
    let mut current = data;
    for (depth, token) in parents.iter().enumerate() {
        let here = show(&tokens[..depth]);
        current = match current {
            Value::Object(members) => members
                .entry(token.clone())
                .or_insert_with(|| Value::Object(Map::new())),
            Value::Array(items) => {
                let len = items.len();
                match index_of(token, len) {
                    Some(i) => &mut items[i],
                    None => {
                        return Err(format!(
                            "cannot write {}: {here} is an array of {len} items and {token:?} is not one of its indexes",
                            show(tokens)
                        ));
                    }
                }
            }
            other => {
                return Err(format!(
                    "cannot write {}: {here} is {}, not an object",
                    show(tokens),
                    kind_of(other)
                ));
            }
        };
    }
    match current {
        Value::Object(members) => {
            members.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(items) => {
            let len = items.len();
            if last == "-" || last == &len.to_string() {
                items.push(value);
            } else if let Some(i) = index_of(last, len) {
                items[i] = value;
            } else {
                return Err(format!(
                    "cannot write {}: {} is an array of {len} items",
                    show(tokens),
                    show(parents)
                ));
            }
            Ok(())
        }
        other => Err(format!(
            "cannot write {}: {} is {}, not an object",
            show(tokens),
            show(parents),
            kind_of(other)
        )),
    }
}

fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.len() <= 64 {
        return text;
    }
    let mut end = 64;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Converts one value; `null` stays `null` (a missing value has no type to change).
pub fn convert(value: &Value, to: ValueType) -> Result<Value, String> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    if value.is_array() || value.is_object() {
        return Err(format!("it is {}; only scalars convert", kind_of(value)));
    }
    match to {
        ValueType::String => Ok(match value {
            Value::String(_) => value.clone(),
            Value::Number(n) => Value::String(n.to_string()),
            Value::Bool(b) => Value::String(b.to_string()),
            _ => unreachable_scalar(value)?,
        }),
        ValueType::Number => match value {
            Value::Number(_) => Ok(value.clone()),
            Value::Bool(b) => Ok(json!(u8::from(*b))),
            Value::String(s) => {
                parse_number(s).ok_or_else(|| format!("{} is not a number", shown(value)))
            }
            _ => unreachable_scalar(value),
        },
        ValueType::Integer => {
            let number = match value {
                Value::Number(n) => n.clone(),
                Value::Bool(b) => Number::from(u8::from(*b)),
                Value::String(s) => match parse_number(s) {
                    Some(Value::Number(n)) => n,
                    _ => return Err(format!("{} is not a number", shown(value))),
                },
                _ => return unreachable_scalar(value),
            };
            integer(&number)
                .ok_or_else(|| format!("{} has a fractional part or is out of the 64-bit range, so it is not an integer; convert to \"number\" instead", shown(value)))
        }
        ValueType::Boolean => match value {
            Value::Bool(_) => Ok(value.clone()),
            Value::String(s) if s == "true" => Ok(Value::Bool(true)),
            Value::String(s) if s == "false" => Ok(Value::Bool(false)),
            Value::Number(n) if n.as_f64() == Some(0.0) => Ok(Value::Bool(false)),
            Value::Number(n) if n.as_f64() == Some(1.0) => Ok(Value::Bool(true)),
            _ => Err(format!(
                "{} is not a boolean; only \"true\", \"false\", 0 and 1 convert",
                shown(value)
            )),
        },
    }
}

fn unreachable_scalar(value: &Value) -> Result<Value, String> {
    Err(format!("{} cannot be converted", kind_of(value)))
}

/// A JSON number from text: integers stay integers.
fn parse_number(text: &str) -> Option<Value> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Value::from(i));
    }
    if let Ok(u) = text.parse::<u64>() {
        return Some(Value::from(u));
    }
    let f = text.parse::<f64>().ok().filter(|f| f.is_finite())?;
    // Rust parses "inf", "NaN" and "1e5"; only plain JSON-like numbers are accepted.
    serde_json::from_str::<Number>(text).ok()?;
    Number::from_f64(f).map(Value::Number)
}

fn integer(number: &Number) -> Option<Value> {
    if number.is_i64() || number.is_u64() {
        return Some(Value::Number(number.clone()));
    }
    let f = number.as_f64()?;
    if f.fract() != 0.0 || f.abs() >= 9.2e18 {
        return None;
    }
    Some(Value::from(f as i64))
}

/// Fills absent required properties that have a `default` in `schema`, recursively through
/// declared object properties: a version that adds a required property with a default is
/// compatible, and this is what makes the older events valid under it.
pub(crate) fn fill_defaults(schema: &Value, data: &mut Value, depth: usize) {
    if depth > POINTER_TOKENS_MAX {
        return;
    }
    let (Some(schema), Value::Object(members)) = (schema.as_object(), data) else {
        return;
    };
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if !members.contains_key(name)
                && let Some(default) = properties.get(name).and_then(|p| p.get("default"))
            {
                members.insert(name.to_owned(), default.clone());
            }
        }
    }
    for (name, property) in properties {
        if let Some(child) = members.get_mut(name) {
            fill_defaults(property, child, depth + 1);
        }
    }
}

// --- The effect of an upcaster on a schema --------------------------------------------------

/// Where a path leads in an object schema.
enum Slot {
    /// Declared: the property's schema and whether it is required.
    Declared(Value, bool),
    /// Cannot exist: a parent's content model is closed and does not declare it.
    Absent,
    /// Not declared, but an open content model (or a construct not followed) lets it exist
    /// with any value.
    Unknown,
}

fn is_closed(schema: &Map<String, Value>) -> bool {
    schema.get("additionalProperties") == Some(&Value::Bool(false))
        && !schema.contains_key("patternProperties")
}

fn simple_object(schema: &Map<String, Value>) -> bool {
    !["$ref", "allOf", "anyOf", "oneOf", "not", "if"]
        .iter()
        .any(|k| schema.contains_key(*k))
}

fn lookup(schema: &Value, tokens: &[String]) -> Slot {
    let mut current = schema;
    let mut required = true;
    for token in tokens {
        let Some(object) = current.as_object().filter(|o| simple_object(o)) else {
            return if current == &Value::Bool(false) {
                Slot::Absent
            } else {
                Slot::Unknown
            };
        };
        match object
            .get("properties")
            .and_then(Value::as_object)
            .and_then(|p| p.get(token))
        {
            Some(child) => {
                required &= object
                    .get("required")
                    .and_then(Value::as_array)
                    .is_some_and(|r| r.iter().any(|n| n == token.as_str()));
                current = child;
            }
            None if is_closed(object) => return Slot::Absent,
            None => return Slot::Unknown,
        }
    }
    Slot::Declared(current.clone(), required)
}

/// The object schema of the parent of `tokens`, created along the way as needed.
fn parent_mut<'s>(
    schema: &'s mut Value,
    tokens: &[String],
) -> Result<&'s mut Map<String, Value>, String> {
    let mut current = schema;
    for token in &tokens[..tokens.len() - 1] {
        if current == &Value::Bool(true) {
            *current = json!({});
        }
        let object = match current {
            Value::Object(o) if simple_object(o) => o,
            _ => return Err(format!("the schema at {} cannot be followed", show(tokens))),
        };
        let closed = is_closed(object);
        let properties = object
            .entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| format!("\"properties\" above {} is not an object", show(tokens)))?;
        // An object the step creates holds only what steps put in it: closed, unless an open
        // parent may already hold one of any shape under that name.
        let created = if closed {
            json!({"type": "object", "additionalProperties": false})
        } else {
            json!({"type": "object"})
        };
        current = properties.entry(token.clone()).or_insert(created);
    }
    if current == &Value::Bool(true) {
        *current = json!({});
    }
    match current {
        Value::Object(o) if simple_object(o) => Ok(o),
        _ => Err(format!("the schema at {} cannot be followed", show(tokens))),
    }
}

fn set_required(object: &mut Map<String, Value>, name: &str, required: bool) {
    let list = object.entry("required").or_insert_with(|| json!([]));
    if let Value::Array(names) = list {
        names.retain(|n| n != name);
        if required {
            names.push(Value::String(name.to_owned()));
        }
    }
}

fn remove_declared(schema: &mut Value, tokens: &[String]) -> Result<(), String> {
    let parent = parent_mut(schema, tokens)?;
    let name = &tokens[tokens.len() - 1];
    if let Some(Value::Object(properties)) = parent.get_mut("properties") {
        properties.remove(name);
    }
    set_required(parent, name, false);
    Ok(())
}

fn declare(
    schema: &mut Value,
    tokens: &[String],
    property: Value,
    required: bool,
) -> Result<(), String> {
    let parent = parent_mut(schema, tokens)?;
    let name = &tokens[tokens.len() - 1];
    parent
        .entry("properties")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| format!("\"properties\" above {} is not an object", show(tokens)))?
        .insert(name.clone(), property);
    set_required(parent, name, required);
    Ok(())
}

/// The schema of the data an upcaster produces from data valid under `schema`, as far as it
/// can be computed; `Err` names a step whose effect cannot be described (a path through an
/// array, a `$ref` or a combinator). Every approximation makes the schema accept more, so
/// a compatibility check against the result never passes wrongly.
pub(crate) fn upcast_schema(schema: &Value, upcaster: &Upcaster) -> Result<Value, String> {
    let mut out = schema.clone();
    for (i, step) in upcaster.steps.iter().enumerate() {
        let at = |reason: String| format!("step {i} ({}): {reason}", step.op());
        match step {
            UpcastStep::Rename { from, to } | UpcastStep::Move { from, to } => {
                let from = parse_pointer(from).map_err(at)?;
                let to = parse_pointer(to).map_err(at)?;
                match lookup(&out, &from) {
                    Slot::Declared(property, required) => {
                        remove_declared(&mut out, &from).map_err(at)?;
                        declare(&mut out, &to, property, required).map_err(at)?;
                    }
                    Slot::Absent => {}
                    Slot::Unknown => {
                        declare(&mut out, &to, Value::Bool(true), false).map_err(at)?
                    }
                }
            }
            UpcastStep::Add { path, default } => {
                let tokens = parse_pointer(path).map_err(at)?;
                let constant = json!({ "const": default });
                let property = match lookup(&out, &tokens) {
                    Slot::Declared(property, _) if property == Value::Bool(true) => property,
                    Slot::Declared(property, _) => json!({ "anyOf": [property, constant] }),
                    Slot::Absent => constant,
                    Slot::Unknown => Value::Bool(true),
                };
                declare(&mut out, &tokens, property, true).map_err(at)?;
            }
            UpcastStep::Remove { path } => {
                let tokens = parse_pointer(path).map_err(at)?;
                if let Slot::Declared(..) = lookup(&out, &tokens) {
                    remove_declared(&mut out, &tokens).map_err(at)?;
                }
            }
            UpcastStep::Convert { path, to } => {
                let tokens = parse_pointer(path).map_err(at)?;
                let (nullable, required) = match lookup(&out, &tokens) {
                    Slot::Declared(property, required) => match property.as_object() {
                        Some(o) => (types_of(o) & T_NULL != 0, required),
                        None => (property != Value::Bool(false), required),
                    },
                    Slot::Absent => continue,
                    Slot::Unknown => (true, false),
                };
                let property = if nullable {
                    json!({ "type": [to.as_str(), "null"] })
                } else {
                    json!({ "type": to.as_str() })
                };
                declare(&mut out, &tokens, property, required).map_err(at)?;
            }
        }
    }
    Ok(out)
}
