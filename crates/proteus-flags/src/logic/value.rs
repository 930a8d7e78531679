//! Values during evaluation. Most are borrowed from the context or from the compiled rule, so
//! the common operations (var, comparisons, `in`, string tests) allocate nothing; only computed
//! strings and arrays (`cat`, `substr`, `merge`, `map`, ...) own their data.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

use super::js;
use crate::CONTEXT_DEPTH_MAX;

#[derive(Debug, Clone)]
pub(crate) enum Val<'a> {
    Null,
    Bool(bool),
    Num(f64),
    Str(&'a str),
    String(String),
    /// An array or object borrowed from the context or a constant (never a scalar).
    Json(&'a Value),
    /// The whole evaluation context (`{"var": ""}` at the root).
    Map(&'a Map<String, Value>),
    Array(Vec<Val<'a>>),
    Object(Box<Map<String, Value>>),
}

/// A primitive in JavaScript's sense, after `ToPrimitive`.
enum Prim<'v> {
    Null,
    Bool(bool),
    Num(f64),
    Str(&'v str),
    Owned(String),
}

impl<'a> Val<'a> {
    pub(crate) fn from_json(value: &'a Value) -> Self {
        match value {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => Val::Num(number_to_f64(n)),
            Value::String(s) => Val::Str(s),
            Value::Array(_) | Value::Object(_) => Val::Json(value),
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            Val::String(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }

    /// JSON Logic truthiness: like JavaScript, except that an empty array is falsy.
    pub(crate) fn truthy(&self) -> bool {
        match self {
            Val::Null => false,
            Val::Bool(b) => *b,
            Val::Num(n) => *n != 0.0 && !n.is_nan(),
            Val::Str(s) => !s.is_empty(),
            Val::String(s) => !s.is_empty(),
            Val::Json(Value::Array(items)) => !items.is_empty(),
            Val::Array(items) => !items.is_empty(),
            Val::Json(_) | Val::Map(_) | Val::Object(_) => true,
        }
    }

    fn is_array(&self) -> bool {
        matches!(self, Val::Json(Value::Array(_)) | Val::Array(_))
    }

    fn is_object(&self) -> bool {
        matches!(
            self,
            Val::Json(Value::Object(_)) | Val::Map(_) | Val::Object(_)
        )
    }

    /// Number of items when this is an array.
    pub(crate) fn array_len(&self) -> Option<usize> {
        match self {
            Val::Json(Value::Array(items)) => Some(items.len()),
            Val::Array(items) => Some(items.len()),
            _ => None,
        }
    }

    /// The items when this is an array (cloning owned items; borrowed ones stay borrowed).
    pub(crate) fn items(&self) -> Option<Items<'_, 'a>> {
        match self {
            Val::Json(Value::Array(items)) => Some(Items::Json(items.iter())),
            Val::Array(items) => Some(Items::Owned(items.iter())),
            _ => None,
        }
    }

    fn to_primitive(&self) -> Prim<'_> {
        match self {
            Val::Null => Prim::Null,
            Val::Bool(b) => Prim::Bool(*b),
            Val::Num(n) => Prim::Num(*n),
            Val::Str(s) => Prim::Str(s),
            Val::String(s) => Prim::Str(s),
            _ => {
                let mut out = String::new();
                self.write_js_string(&mut out);
                Prim::Owned(out)
            }
        }
    }

    /// `Number(value)` in JavaScript.
    pub(crate) fn to_number(&self) -> f64 {
        match self.to_primitive() {
            Prim::Null => 0.0,
            Prim::Bool(b) => f64::from(u8::from(b)),
            Prim::Num(n) => n,
            Prim::Str(s) => js::string_to_number(s),
            Prim::Owned(s) => js::string_to_number(&s),
        }
    }

    /// `parseFloat(value)` in JavaScript, which json-logic-js uses for `+` and `*`.
    pub(crate) fn parse_float(&self) -> f64 {
        match self {
            Val::Num(n) => *n,
            Val::Null | Val::Bool(_) => f64::NAN,
            other => match other.to_primitive() {
                Prim::Str(s) => js::parse_float(s),
                Prim::Owned(s) => js::parse_float(&s),
                _ => f64::NAN,
            },
        }
    }

    /// Appends `String(value)` in JavaScript: arrays join their items with commas, objects are
    /// `[object Object]`.
    pub(crate) fn write_js_string(&self, out: &mut String) {
        self.write_js_string_at(out, 0);
    }

    fn write_js_string_at(&self, out: &mut String, depth: usize) {
        match self {
            Val::Null => out.push_str("null"),
            Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Val::Num(n) => out.push_str(js::number_to_string(*n).as_str()),
            Val::Str(s) => out.push_str(s),
            Val::String(s) => out.push_str(s),
            Val::Json(Value::Array(items)) => join_json(items, out, depth),
            Val::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    if !item.is_null() && depth < CONTEXT_DEPTH_MAX {
                        item.write_js_string_at(out, depth + 1);
                    }
                }
            }
            Val::Json(_) | Val::Map(_) | Val::Object(_) => out.push_str("[object Object]"),
        }
    }

    /// A JSON value with the same content (for constants folded at compile time). NaN and
    /// infinities become `null`, as `JSON.stringify` does.
    pub(crate) fn to_value(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Num(n) => f64_to_value(*n),
            Val::Str(s) => Value::String((*s).to_owned()),
            Val::String(s) => Value::String(s.clone()),
            Val::Json(value) => (*value).clone(),
            Val::Map(map) => Value::Object((*map).clone()),
            Val::Array(items) => Value::Array(items.iter().map(Val::to_value).collect()),
            Val::Object(map) => Value::Object((**map).clone()),
        }
    }

    /// `a === b`: same type and value; arrays and objects only equal themselves.
    pub(crate) fn strict_eq(&self, other: &Val<'_>) -> bool {
        match (self, other) {
            (Val::Null, Val::Null) => true,
            (Val::Bool(a), Val::Bool(b)) => a == b,
            (Val::Num(a), Val::Num(b)) => a == b,
            (Val::Json(a), Val::Json(b)) => std::ptr::eq(*a, *b),
            (Val::Map(a), Val::Map(b)) => std::ptr::eq(*a, *b),
            _ => match (self.as_str(), other.as_str()) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            },
        }
    }

    /// `a == b` with JavaScript's coercions.
    pub(crate) fn loose_eq(&self, other: &Val<'_>) -> bool {
        let self_compound = self.is_array() || self.is_object();
        let other_compound = other.is_array() || other.is_object();
        if self_compound && other_compound {
            return self.strict_eq(other);
        }
        match (self, other) {
            (Val::Null, Val::Null) => true,
            (Val::Null, _) | (_, Val::Null) => false,
            _ => {
                let (a, b) = (self.to_primitive(), other.to_primitive());
                loose_eq_prim(&a, &b)
            }
        }
    }

    /// `a < b` / `a > b` ordering with JavaScript's coercions; `None` when either side is NaN.
    pub(crate) fn js_cmp(&self, other: &Val<'_>) -> Option<Ordering> {
        let (a, b) = (self.to_primitive(), other.to_primitive());
        if let (Some(a), Some(b)) = (a.as_str(), b.as_str()) {
            // JavaScript compares strings by UTF-16 code units.
            return Some(a.encode_utf16().cmp(b.encode_utf16()));
        }
        a.to_number().partial_cmp(&b.to_number())
    }
}

impl Prim<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Prim::Str(s) => Some(s),
            Prim::Owned(s) => Some(s),
            _ => None,
        }
    }

    fn to_number(&self) -> f64 {
        match self {
            Prim::Null => 0.0,
            Prim::Bool(b) => f64::from(u8::from(*b)),
            Prim::Num(n) => *n,
            Prim::Str(s) => js::string_to_number(s),
            Prim::Owned(s) => js::string_to_number(s),
        }
    }
}

fn loose_eq_prim(a: &Prim<'_>, b: &Prim<'_>) -> bool {
    match (a.as_str(), b.as_str()) {
        (Some(a), Some(b)) => a == b,
        _ => a.to_number() == b.to_number(),
    }
}

fn join_json(items: &[Value], out: &mut String, depth: usize) {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if !item.is_null() && depth < CONTEXT_DEPTH_MAX {
            Val::from_json(item).write_js_string_at(out, depth + 1);
        }
    }
}

pub(crate) fn number_to_f64(n: &Number) -> f64 {
    n.as_f64().unwrap_or(f64::NAN)
}

pub(crate) fn f64_to_value(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// Iterator over the items of an array value.
pub(crate) enum Items<'v, 'a> {
    Json(std::slice::Iter<'a, Value>),
    Owned(std::slice::Iter<'v, Val<'a>>),
}

impl<'a> Iterator for Items<'_, 'a> {
    type Item = Val<'a>;

    fn next(&mut self) -> Option<Val<'a>> {
        match self {
            Items::Json(iter) => iter.next().map(Val::from_json),
            Items::Owned(iter) => iter.next().cloned(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Items::Json(iter) => iter.size_hint(),
            Items::Owned(iter) => iter.size_hint(),
        }
    }
}
