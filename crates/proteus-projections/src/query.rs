//! Queries over a read model: filters, one sort, a page size and an opaque cursor. The
//! semantics live here, and adapters feed documents to a [`Scan`], so every store answers a
//! query the same way.
//!
//! - Paths are JSON pointers into a document (`/status`, `/shipping/city`; `""` is the whole
//!   document). Values compare with the order of [`crate::value`].
//! - `eq` / `ne`: equal in that order (`1` equals `1.0`); a missing field is never equal, so
//!   `ne` matches documents without the field.
//! - `lt`, `lte`, `gt`, `gte`: only values of the same type as the operand match (`gt 5`
//!   matches numbers above 5, never strings), as in MongoDB's type bracketing.
//! - `in`: the operand is an array (at most [`IN_VALUES_MAX`]); matches when equal to one.
//! - `prefix`: string fields starting with the string operand.
//! - `exists`: operand `true` matches documents having the field (even `null`), `false` those
//!   without it.
//! - Sort by key (the default) or by a path; documents with equal sort values order by key, and
//!   missing values come first (they are smallest). `desc` reverses the whole order.
//! - Pagination is by keyset: the cursor holds the sort value and key of the last item, and the
//!   next page starts strictly after them. A document present and unchanged through a walk is
//!   returned exactly once; one changed meanwhile may move across the cursor.

use std::cmp::Ordering;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::definition::{escape, split_pointer};
use crate::value::{compare, type_rank};

/// Largest page.
pub const QUERY_LIMIT_MAX: usize = 1000;
/// The page size when none is given.
pub const QUERY_LIMIT_DEFAULT: usize = 100;
/// Most filter conditions in one query.
pub const QUERY_CONDITIONS_MAX: usize = 16;
/// Most values of an `in` condition.
pub const IN_VALUES_MAX: usize = 100;
/// Longest cursor accepted, in bytes.
pub const CURSOR_BYTES_MAX: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    Prefix,
    Exists,
}

impl Op {
    pub fn parse(text: &str) -> Option<Op> {
        Some(match text {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "in" => Op::In,
            "prefix" => Op::Prefix,
            "exists" => Op::Exists,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// A JSON pointer into the document.
    pub path: String,
    pub op: Op,
    pub value: Value,
}

impl Condition {
    pub fn new(path: &str, op: Op, value: Value) -> Self {
        Condition {
            path: path.to_owned(),
            op,
            value,
        }
    }

    /// Whether `doc` satisfies this condition (see the module documentation).
    pub fn matches(&self, doc: &Value) -> bool {
        let field = doc.pointer(&self.path);
        let equal = |v: &Value| compare(field, Some(v)) == Ordering::Equal;
        let ranged = |accept: fn(Ordering) -> bool| {
            field.is_some_and(|f| {
                type_rank(Some(f)) == type_rank(Some(&self.value))
                    && accept(compare(Some(f), Some(&self.value)))
            })
        };
        match self.op {
            Op::Eq => equal(&self.value),
            Op::Ne => !equal(&self.value),
            Op::Lt => ranged(|o| o == Ordering::Less),
            Op::Lte => ranged(|o| o != Ordering::Greater),
            Op::Gt => ranged(|o| o == Ordering::Greater),
            Op::Gte => ranged(|o| o != Ordering::Less),
            Op::In => self
                .value
                .as_array()
                .is_some_and(|values| values.iter().any(equal)),
            Op::Prefix => match (field, &self.value) {
                (Some(Value::String(f)), Value::String(p)) => f.starts_with(p.as_str()),
                _ => false,
            },
            Op::Exists => field.is_some() == (self.value == Value::Bool(true)),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    #[default]
    Asc,
    Desc,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortBy {
    /// By document key (written `$key` in parameters).
    #[default]
    Key,
    /// By the value at a JSON pointer, then by key.
    Path(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sort {
    pub by: SortBy,
    pub order: Order,
}

impl Sort {
    fn fingerprint(&self) -> String {
        let by = match &self.by {
            SortBy::Key => "$key",
            SortBy::Path(path) => path.as_str(),
        };
        let order = match self.order {
            Order::Asc => "asc",
            Order::Desc => "desc",
        };
        format!("{by}:{order}")
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Query {
    #[serde(default)]
    pub filter: Vec<Condition>,
    /// By key ascending when absent.
    #[serde(default)]
    pub sort: Option<Sort>,
    /// 1 to [`QUERY_LIMIT_MAX`].
    #[serde(default = "default_limit")]
    pub limit: usize,
    /// The `next_cursor` of the previous page of the same query.
    #[serde(default)]
    pub cursor: Option<String>,
}

fn default_limit() -> usize {
    QUERY_LIMIT_DEFAULT
}

impl Default for Query {
    fn default() -> Self {
        Query {
            filter: Vec::new(),
            sort: None,
            limit: QUERY_LIMIT_DEFAULT,
            cursor: None,
        }
    }
}

/// One page of results.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Page {
    /// `(key, document)` in the query's order.
    pub items: Vec<(String, Value)>,
    /// Present when more documents may follow: pass it as `cursor` for the next page.
    pub next_cursor: Option<String>,
}

/// What is wrong with a query; `field` names the parameter (`filter[1]`, `sort`, `limit`,
/// `cursor`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid query: {field}: {message}")]
pub struct QueryError {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> QueryError {
    QueryError {
        field: field.into(),
        message: message.into(),
    }
}

fn check_path(field: &str, path: &str) -> Result<(), QueryError> {
    if split_pointer(path).is_none() {
        return Err(invalid(
            field,
            format!("{path:?} is not a JSON pointer: start with '/', such as /status"),
        ));
    }
    Ok(())
}

/// The position after which a page starts.
#[derive(Serialize, Deserialize)]
struct CursorData {
    /// The sort it belongs to.
    s: String,
    k: String,
    /// The sort value: empty when the field was missing, so `null` stays distinct.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    v: Vec<Value>,
}

impl Query {
    /// Checks limits and operands; every adapter calls it before running a query.
    pub fn check(&self) -> Result<(), QueryError> {
        if self.limit == 0 || self.limit > QUERY_LIMIT_MAX {
            return Err(invalid(
                "limit",
                format!(
                    "{} is out of range; give 1 to {QUERY_LIMIT_MAX}",
                    self.limit
                ),
            ));
        }
        if self.filter.len() > QUERY_CONDITIONS_MAX {
            return Err(invalid(
                "filter",
                format!(
                    "{} conditions; the most is {QUERY_CONDITIONS_MAX}",
                    self.filter.len()
                ),
            ));
        }
        for (i, condition) in self.filter.iter().enumerate() {
            let field = format!("filter[{i}]");
            check_path(&field, &condition.path)?;
            match (condition.op, &condition.value) {
                (Op::In, Value::Array(values)) if values.len() <= IN_VALUES_MAX => {}
                (Op::In, Value::Array(values)) => {
                    return Err(invalid(
                        field,
                        format!(
                            "in has {} values; the most is {IN_VALUES_MAX}",
                            values.len()
                        ),
                    ));
                }
                (Op::In, _) => return Err(invalid(field, "in needs an array of values")),
                (Op::Prefix, Value::String(_)) => {}
                (Op::Prefix, _) => return Err(invalid(field, "prefix needs a string")),
                (Op::Exists, Value::Bool(_)) => {}
                (Op::Exists, _) => return Err(invalid(field, "exists needs true or false")),
                _ => {}
            }
        }
        if let Some(Sort {
            by: SortBy::Path(path),
            ..
        }) = &self.sort
        {
            check_path("sort", path)?;
        }
        self.decode_cursor()?;
        Ok(())
    }

    /// Whether a document passes every filter condition.
    pub fn matches(&self, doc: &Value) -> bool {
        self.filter.iter().all(|c| c.matches(doc))
    }

    fn sort_or_default(&self) -> Sort {
        self.sort.clone().unwrap_or_default()
    }

    fn decode_cursor(&self) -> Result<Option<CursorData>, QueryError> {
        let Some(text) = &self.cursor else {
            return Ok(None);
        };
        if text.len() > CURSOR_BYTES_MAX {
            return Err(invalid(
                "cursor",
                format!("it is {} bytes; the most is {CURSOR_BYTES_MAX}", text.len()),
            ));
        }
        let malformed = || {
            invalid(
                "cursor",
                "not a cursor this server gave; pass next_cursor of the previous page unchanged",
            )
        };
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| malformed())?;
        let data: CursorData = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
        let sort = self.sort_or_default().fingerprint();
        if data.s != sort {
            return Err(invalid(
                "cursor",
                format!(
                    "it belongs to a query sorted by {}, this one is sorted by {sort}; keep the sort while paging",
                    data.s
                ),
            ));
        }
        Ok(Some(data))
    }

    /// Starts answering this query; checks it first.
    pub fn scan(&self) -> Result<Scan<'_>, QueryError> {
        self.check()?;
        let cursor = self.decode_cursor()?;
        Ok(Scan {
            query: self,
            sort: self.sort_or_default(),
            cursor,
            items: Vec::new(),
            scanned: 0,
        })
    }

    /// Parses URL query parameters: `filter=PATH:OP:VALUE` (repeatable), `sort=PATH`,
    /// `sort=-PATH` or `sort=PATH:desc` (`$key` for the key), `limit=N`, `cursor=...`.
    ///
    /// PATH is a pointer (`/shipping/city`) or dotted names (`shipping.city`). VALUE is read
    /// as JSON when it is a number, `true`, `false`, `null` or a quoted string, and as plain
    /// text otherwise (`status:eq:placed`; `zip:eq:"01234"` keeps the text). `in` takes values
    /// separated by commas; `exists` takes `true` or `false`, or nothing for `true`.
    pub fn from_params<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Query, QueryError> {
        let mut query = Query::default();
        for (name, value) in params {
            match name {
                "filter" => {
                    let field = format!("filter[{}]", query.filter.len());
                    let mut parts = value.splitn(3, ':');
                    let path = param_path(parts.next().unwrap_or_default());
                    let Some(op) = parts.next() else {
                        return Err(invalid(
                            field,
                            format!("{value:?} is not PATH:OP:VALUE, such as status:eq:placed"),
                        ));
                    };
                    let Some(op) = Op::parse(op) else {
                        return Err(invalid(
                            field,
                            format!(
                                "unknown operator {op:?}; use eq, ne, lt, lte, gt, gte, in, prefix or exists"
                            ),
                        ));
                    };
                    let operand = parts.next();
                    let value = match (op, operand) {
                        (Op::Exists, None) => Value::Bool(true),
                        (_, None) => {
                            return Err(invalid(
                                field,
                                format!("{value:?} has no value after the operator"),
                            ));
                        }
                        (Op::In, Some(list)) => {
                            Value::Array(list.split(',').map(param_value).collect())
                        }
                        (Op::Prefix, Some(text)) => Value::String(text.to_owned()),
                        (_, Some(text)) => param_value(text),
                    };
                    query.filter.push(Condition { path, op, value });
                }
                "sort" => {
                    let (text, order) = if let Some(rest) = value.strip_prefix('-') {
                        (rest, Order::Desc)
                    } else if let Some(rest) = value.strip_suffix(":desc") {
                        (rest, Order::Desc)
                    } else if let Some(rest) = value.strip_suffix(":asc") {
                        (rest, Order::Asc)
                    } else {
                        (value, Order::Asc)
                    };
                    let by = if text == "$key" {
                        SortBy::Key
                    } else {
                        SortBy::Path(param_path(text))
                    };
                    query.sort = Some(Sort { by, order });
                }
                "limit" => {
                    query.limit = value.parse().map_err(|_| {
                        invalid(
                            "limit",
                            format!("{value:?} is not a whole number from 1 to {QUERY_LIMIT_MAX}"),
                        )
                    })?;
                }
                "cursor" => query.cursor = Some(value.to_owned()),
                other => {
                    return Err(invalid(
                        other,
                        "unknown parameter; use filter, sort, limit or cursor",
                    ));
                }
            }
        }
        query.check()?;
        Ok(query)
    }
}

fn param_path(text: &str) -> String {
    if text.starts_with('/') || text.is_empty() {
        text.to_owned()
    } else {
        text.split('.').map(|s| format!("/{}", escape(s))).collect()
    }
}

fn param_value(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(value @ (Value::Number(_) | Value::Bool(_) | Value::Null | Value::String(_))) => value,
        _ => Value::String(text.to_owned()),
    }
}

/// How an adapter should feed documents to a [`Scan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanOrder {
    /// Keys ascending, starting strictly after `after`; stop when [`Scan::offer`] says so.
    KeyAsc { after: Option<String> },
    /// Keys descending, starting strictly before `before`; stop when [`Scan::offer`] says so.
    KeyDesc { before: Option<String> },
    /// Every document, in any order.
    Any,
}

/// A query being answered: offer it documents, then [`finish`](Scan::finish) it. Memory stays
/// bounded by about twice the page size whatever the number of documents.
pub struct Scan<'q> {
    query: &'q Query,
    sort: Sort,
    cursor: Option<CursorData>,
    /// `(sort value, key, doc)`, kept to the best `limit + 1` from time to time.
    items: Vec<(Option<Value>, String, Value)>,
    scanned: usize,
}

impl Scan<'_> {
    pub fn order(&self) -> ScanOrder {
        let cursor_key = self.cursor.as_ref().map(|c| c.k.clone());
        match (&self.sort.by, self.sort.order) {
            (SortBy::Key, Order::Asc) => ScanOrder::KeyAsc { after: cursor_key },
            (SortBy::Key, Order::Desc) => ScanOrder::KeyDesc { before: cursor_key },
            (SortBy::Path(_), _) => ScanOrder::Any,
        }
    }

    /// Documents offered so far.
    pub fn scanned(&self) -> usize {
        self.scanned
    }

    fn order_of(&self, a: (Option<&Value>, &str), b: (Option<&Value>, &str)) -> Ordering {
        let natural = compare(a.0, b.0).then_with(|| a.1.cmp(b.1));
        match self.sort.order {
            Order::Asc => natural,
            Order::Desc => natural.reverse(),
        }
    }

    /// Offers one document. Returns `true` when the page is complete and, for key-ordered
    /// scans, the adapter may stop.
    pub fn offer(&mut self, key: &str, doc: Value) -> bool {
        self.scanned += 1;
        let value = match &self.sort.by {
            SortBy::Key => None,
            SortBy::Path(path) => doc.pointer(path).cloned(),
        };
        if let Some(cursor) = &self.cursor
            && self.order_of((value.as_ref(), key), (cursor.v.first(), &cursor.k))
                != Ordering::Greater
        {
            return false;
        }
        if !self.query.matches(&doc) {
            return false;
        }
        self.items.push((value, key.to_owned(), doc));
        let keep = self.query.limit + 1;
        match self.sort.by {
            SortBy::Key => self.items.len() >= keep,
            SortBy::Path(_) => {
                if self.items.len() >= keep * 2 {
                    self.compact();
                }
                false
            }
        }
    }

    fn compact(&mut self) {
        let mut items = std::mem::take(&mut self.items);
        items.sort_by(|a, b| self.order_of((a.0.as_ref(), &a.1), (b.0.as_ref(), &b.1)));
        items.truncate(self.query.limit + 1);
        self.items = items;
    }

    /// The page, and a cursor when more matching documents follow.
    pub fn finish(mut self) -> Page {
        self.compact();
        let more = self.items.len() > self.query.limit;
        self.items.truncate(self.query.limit);
        let next_cursor = if more {
            self.items.last().map(|(value, key, _)| {
                let data = CursorData {
                    s: self.sort.fingerprint(),
                    k: key.clone(),
                    v: value.iter().cloned().collect(),
                };
                // Serialising plain data to a Vec does not fail.
                URL_SAFE_NO_PAD.encode(serde_json::to_vec(&data).unwrap_or_default())
            })
        } else {
            None
        };
        Page {
            items: self.items.into_iter().map(|(_, k, d)| (k, d)).collect(),
            next_cursor,
        }
    }
}
