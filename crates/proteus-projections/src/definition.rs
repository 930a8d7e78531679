//! Declarative projection definitions: the JSON format, its parsing and its validation.
//!
//! A definition is one JSON object:
//!
//! ```json
//! { "description": "optional text",
//!   "source": {"category": "order"},            // or {"all": true} for every event
//!   "event_types": ["OrderPlaced", "ItemAdded"],  // optional: only these types are read
//!   "state" | "aggregate" | "list": { ... }       // exactly one kind
//! }
//! ```
//!
//! # Reading the event: operands
//!
//! Pointers address the event envelope of [`crate::event`]: `/data/...`, `/metadata/...`,
//! `/stream`, `/category`, `/version`, `/position`, `/event_type`, `/recorded_ms`. An operand is
//!
//! - `{"const": <any JSON>}`: a fixed value;
//! - `{"path": "/data/total"}`: the value at that pointer. **A missing value is a processing
//!   error**: the projection stops at that event with the error and its position. Say what a
//!   missing value means instead with one of:
//!   - `"default": <any JSON>`: use this value (`"default": null` writes null);
//!   - `"optional": true`: skip this one operation for this event (the field keeps its value;
//!     an aggregate measure ignores the event; a list item leaves the field out).
//!
//!   A value that is present but `null` is a value, not a missing one.
//!
//! Where only a read makes sense (keys, `group_by`, measures, list fields) a string is short
//! for `{"path": ...}`: a pointer, or one of `stream`, `category`, `version`, `position`,
//! `event_type`, `recorded_ms`. In state operations a string is refused, since `"placed"` could
//! mean a constant or a field: write `{"const": "placed"}` or `{"path": "/data/status"}`.
//!
//! # `state`: the latest state per key
//!
//! ```json
//! "state": {
//!   "key": "stream",                                  // default "stream"; or "/data/orderId"
//!   "handlers": {
//!     "OrderPlaced": {"set": {"status": {"const": "placed"}, "total": {"path": "/data/total"}}},
//!     "ItemAdded": {"increment": {"items": {"const": 1}},
//!                   "append": {"skus": {"path": "/data/sku", "max_items": 50}}},
//!     "OrderCancelled": {"delete": true}
//!   }
//! }
//! ```
//!
//! A document starts as `{}`. The operations of a handler, applied in this order:
//!
//! | operation | does |
//! |---|---|
//! | `set` | writes each value at its target (`""` replaces the whole document with an object, before the other targets) |
//! | `merge` | copies each member of an object value over the object at the target (shallow; `""` is the document, merged first) |
//! | `increment` | adds a number (negative to subtract) to the target; a missing target counts from 0 |
//! | `append` | pushes the value onto the array at the target, keeping the last `max_items` (default 100, most 10 000) |
//! | `unset` | an array of targets to remove |
//! | `delete` | `true`: removes the document; alone in its handler |
//!
//! A target is a field name (`"status"`) or a pointer into the document (`"/shipping/city"`,
//! creating objects on the way). One handler writes a field once: two targets of a handler may
//! not be the same field or one inside the other (except `""`). Events of a type without a handler leave documents as they are.
//! An operation on a value of the wrong type (incrementing a string, appending to an object) is
//! a processing error.
//!
//! # `aggregate`: counters and sums grouped by fields
//!
//! ```json
//! "aggregate": {
//!   "group_by": ["/data/region", "event_type"],       // or {"region": "/data/region"}; optional
//!   "measures": {"orders": {"count": {}}, "revenue": {"sum": "/data/total"},
//!                "largest": {"max": "/data/total"}, "smallest": {"min": "/data/total"},
//!                "basket": {"avg": "/data/total"}}
//! }
//! ```
//!
//! One document per group: `{"region": "eu", "event_type": "OrderPlaced", "orders": 3,
//! "revenue": 120, "largest": 60, "smallest": 10, "basket": 40.0, "$avg": {...}}`. A name in a
//! `group_by` array is the pointer's last segment; use the object form to choose names. The key
//! is the group value as text when grouping by one field (`eu`), the JSON array of the values
//! when grouping by several (`["eu","OrderPlaced"]`), and `all` without `group_by`. `min` and
//! `max` use the order of [`crate::value`] and are `null` until a value is seen; `avg` is
//! derived from a sum and a count kept under `$avg`, and is `null` until a value is seen.
//!
//! # `list`: the last items per key
//!
//! ```json
//! "list": {"key": "/data/customerId", "max_items": 100,
//!          "fields": {"order": "/data/orderId", "total": {"path": "/data/total", "default": 0},
//!                     "type": "event_type", "at": "recorded_ms"}}
//! ```
//!
//! One document per key (`all` without `key`): `{"items": [...oldest to newest], "count": <events
//! seen>}`, keeping the last `max_items` (default 100, most 10 000). Without `fields` an item is
//! `{"stream", "version", "position", "event_type", "recorded_ms", "data"}`. Stores keep one row
//! per item, so an event costs the same whatever the list's length; so that a list document
//! stays within the document limit, each item may take at most its share of it
//! ([`crate::store::list_item_bytes_max`]: about 10 KB with the default 100 items).

use std::collections::BTreeSet;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::{DefinitionError, DefinitionErrors};
use crate::event::ENVELOPE_FIELDS;

/// Largest definition, in bytes of JSON.
pub const DEFINITION_BYTES_MAX: usize = 64 * 1024;
/// Most errors reported for one definition; past it the rest are left for the next attempt.
pub const ERRORS_MAX: usize = 32;
/// Most entries in `event_types`.
pub const EVENT_TYPES_MAX: usize = 256;
/// Longest event type or category name, in bytes.
pub const NAME_BYTES_MAX: usize = 256;
/// Most handlers of a `state` projection.
pub const HANDLERS_MAX: usize = 256;
/// Most operations (targets) in one handler.
pub const OPERATIONS_MAX: usize = 64;
/// Most `group_by` fields of an aggregate.
pub const GROUP_BY_MAX: usize = 8;
/// Most measures of an aggregate.
pub const MEASURES_MAX: usize = 32;
/// Most fields of a list item.
pub const FIELDS_MAX: usize = 64;
/// Most items a list document or an `append` target keeps.
pub const LIST_ITEMS_MAX: usize = 10_000;
/// Items kept when `max_items` is not given.
pub const LIST_ITEMS_DEFAULT: usize = 100;
/// Longest pointer or target, in bytes.
pub const POINTER_BYTES_MAX: usize = 512;

/// Where a projection reads events from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The streams of one category.
    Category(String),
    /// Every event (`$all`).
    All,
}

/// The first segment of an event pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Root {
    Stream,
    Category,
    Version,
    Position,
    EventType,
    Data,
    Metadata,
    RecordedMs,
}

/// A validated JSON pointer into the event envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventPointer {
    /// As written, such as `/data/total`.
    pub text: String,
    pub root: Root,
    /// The pointer below `/data` or `/metadata` (`""` for the whole value).
    pub rest: String,
}

/// What a missing value means.
#[derive(Clone, Debug, PartialEq)]
pub enum Missing {
    /// A processing error (the default).
    Fail,
    /// Use this value.
    Default(Value),
    /// Skip the operation for this event.
    Skip,
}

#[derive(Clone, Debug, PartialEq)]
pub enum OperandSource {
    Const(Value),
    Read(EventPointer),
}

/// A value computed from an event.
#[derive(Clone, Debug, PartialEq)]
pub struct Operand {
    pub source: OperandSource,
    pub missing: Missing,
    /// Where it is in the definition, for error messages.
    pub at: String,
    /// Where the pointer it reads is written in the definition (`at`, or `at/path`).
    pub read_at: String,
}

/// Where an operation writes in a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub text: String,
    /// Object member names from the document root; empty for the document itself.
    pub segments: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FieldOp {
    pub target: Target,
    pub value: Operand,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AppendOp {
    pub target: Target,
    pub value: Operand,
    pub max_items: usize,
}

/// What one event type does to its document.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Handler {
    pub set: Vec<FieldOp>,
    pub merge: Vec<FieldOp>,
    pub increment: Vec<FieldOp>,
    pub append: Vec<AppendOp>,
    pub unset: Vec<Target>,
    pub delete: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StateDefinition {
    pub key: Operand,
    /// By event type, sorted by event type.
    pub handlers: Vec<(String, Handler)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Measure {
    Count,
    Sum(Operand),
    Min(Operand),
    Max(Operand),
    Avg(Operand),
}

#[derive(Clone, Debug, PartialEq)]
pub struct AggregateDefinition {
    /// `(field name, value)` in the order given.
    pub group_by: Vec<(String, Operand)>,
    pub measures: Vec<(String, Measure)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ListDefinition {
    pub key: Option<Operand>,
    pub fields: Option<Vec<(String, Operand)>>,
    pub max_items: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    State(StateDefinition),
    Aggregate(AggregateDefinition),
    List(ListDefinition),
}

/// A parsed and structurally valid definition. It serialises back to the JSON it was parsed
/// from, so a stored definition reads exactly as the user wrote it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectionDefinition {
    pub description: Option<String>,
    pub source: Source,
    /// `None` reads every type of the source.
    pub event_types: Option<Vec<String>>,
    pub kind: Kind,
    json: Value,
}

impl Serialize for ProjectionDefinition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ProjectionDefinition {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = Value::deserialize(deserializer)?;
        ProjectionDefinition::parse(&json).map_err(serde::de::Error::custom)
    }
}

/// Returns the JSON Schema of the latest version of an event type, when one is registered.
pub type SchemaLookup<'a> = &'a dyn Fn(&str) -> Option<Value>;

impl ProjectionDefinition {
    /// Parses JSON text of at most [`DEFINITION_BYTES_MAX`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DefinitionErrors> {
        if bytes.len() > DEFINITION_BYTES_MAX {
            return Err(one(
                "",
                format!(
                    "the definition is {} bytes; the most is {DEFINITION_BYTES_MAX}",
                    bytes.len()
                ),
            ));
        }
        let json: Value =
            serde_json::from_slice(bytes).map_err(|e| one("", format!("not valid JSON: {e}")))?;
        Self::parse(&json)
    }

    /// Parses and checks the structure of a definition, reporting every error with its path.
    pub fn parse(json: &Value) -> Result<Self, DefinitionErrors> {
        let mut ctx = Ctx::default();
        let parsed = parse_definition(&mut ctx, json);
        match parsed {
            Some(definition) if ctx.errors.is_empty() => Ok(definition),
            _ => Err(DefinitionErrors(ctx.errors)),
        }
    }

    /// The definition as JSON, as given.
    pub fn json(&self) -> &Value {
        &self.json
    }

    /// Checks every pointer under `/data` this definition reads against the JSON Schema of each
    /// event type it reads it from, when `lookup` knows one: the field must be declared in the
    /// schema's `properties` (nested). Event types without a schema are not checked; there, a
    /// missing field is a processing error at run time.
    ///
    /// A `state` handler's reads (and the key) are checked against the handler's event type;
    /// `aggregate` and `list` reads against every type in `event_types` (nothing is checked when
    /// `event_types` is absent, since any type may come).
    pub fn check_schemas(&self, lookup: SchemaLookup<'_>) -> Result<(), DefinitionErrors> {
        let mut ctx = Ctx::default();
        let mut check = |types: &[&str], operand: &Operand| {
            let OperandSource::Read(pointer) = &operand.source else {
                return;
            };
            if pointer.root != Root::Data || pointer.rest.is_empty() {
                return;
            }
            for event_type in types {
                let Some(schema) = lookup(event_type) else {
                    continue;
                };
                let segments = split_pointer(&pointer.rest).unwrap_or_default();
                if let Err(missing) = schema_has(&schema, &segments) {
                    ctx.error(
                        &operand.read_at,
                        format!(
                            "event type '{event_type}' has no field {} in its schema{}; fix the pointer, or register a schema version that declares it",
                            pointer.text, missing
                        ),
                    );
                }
            }
        };
        let listed: Vec<&str> = self
            .event_types
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        match &self.kind {
            Kind::State(state) => {
                for (event_type, handler) in &state.handlers {
                    let types = [event_type.as_str()];
                    check(&types, &state.key);
                    for op in handler
                        .set
                        .iter()
                        .chain(&handler.merge)
                        .chain(&handler.increment)
                    {
                        check(&types, &op.value);
                    }
                    for op in &handler.append {
                        check(&types, &op.value);
                    }
                }
            }
            Kind::Aggregate(aggregate) => {
                for (_, operand) in &aggregate.group_by {
                    check(&listed, operand);
                }
                for (_, measure) in &aggregate.measures {
                    match measure {
                        Measure::Count => {}
                        Measure::Sum(o) | Measure::Min(o) | Measure::Max(o) | Measure::Avg(o) => {
                            check(&listed, o)
                        }
                    }
                }
            }
            Kind::List(list) => {
                if let Some(key) = &list.key {
                    check(&listed, key);
                }
                for (_, operand) in list.fields.iter().flatten() {
                    check(&listed, operand);
                }
            }
        }
        if ctx.errors.is_empty() {
            Ok(())
        } else {
            Err(DefinitionErrors(ctx.errors))
        }
    }
}

/// Parses a definition and, when `schema_lookup` is given, checks its reads against the
/// schemas of the event types it names: everything a `PUT` of a definition must pass.
pub fn validate(
    json: &Value,
    schema_lookup: Option<SchemaLookup<'_>>,
) -> Result<ProjectionDefinition, DefinitionErrors> {
    let definition = ProjectionDefinition::parse(json)?;
    if let Some(lookup) = schema_lookup {
        definition.check_schemas(lookup)?;
    }
    Ok(definition)
}

fn one(path: &str, message: impl Into<String>) -> DefinitionErrors {
    DefinitionErrors(vec![DefinitionError {
        path: path.to_owned(),
        message: message.into(),
    }])
}

/// Why a pointer is not in a schema: what the schema declares where the walk stopped.
fn schema_has(schema: &Value, segments: &[String]) -> Result<(), String> {
    let mut node = schema;
    let mut walked = String::from("/data");
    for segment in segments {
        if node.get("$ref").is_some() {
            // References are resolved by the schema registry, not here: accept.
            return Ok(());
        }
        if let Some(items) = node.get("items").filter(|i| i.is_object())
            && segment.parse::<usize>().is_ok()
        {
            node = items;
            walked.push('/');
            walked.push_str(&escape(segment));
            continue;
        }
        let mut declared: Vec<&Map<String, Value>> = Vec::new();
        if let Some(Value::Object(properties)) = node.get("properties") {
            declared.push(properties);
        }
        for combinator in ["allOf", "anyOf", "oneOf"] {
            for branch in node
                .get(combinator)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if branch.get("$ref").is_some() {
                    return Ok(());
                }
                if let Some(Value::Object(properties)) = branch.get("properties") {
                    declared.push(properties);
                }
            }
        }
        if let Some(found) = declared.iter().find_map(|p| p.get(segment.as_str())) {
            node = found;
            walked.push('/');
            walked.push_str(&escape(segment));
            continue;
        }
        if node.get("patternProperties").is_some() {
            return Ok(());
        }
        if let Some(additional) = node.get("additionalProperties").filter(|a| a.is_object()) {
            node = additional;
            walked.push('/');
            walked.push_str(&escape(segment));
            continue;
        }
        if declared.is_empty() {
            // A free-form object (no `properties`): the schema says nothing about its fields.
            return Ok(());
        }
        let mut known: Vec<&str> = declared
            .iter()
            .flat_map(|p| p.keys().map(String::as_str))
            .collect();
        known.sort_unstable();
        known.dedup();
        return Err(format!(" (at {walked} it declares: {})", known.join(", ")));
    }
    Ok(())
}

/// Escapes a segment for a JSON pointer.
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Splits a pointer (`""` or starting with `/`) into unescaped segments; `None` when malformed.
pub fn split_pointer(pointer: &str) -> Option<Vec<String>> {
    if pointer.is_empty() {
        return Some(Vec::new());
    }
    let rest = pointer.strip_prefix('/')?;
    rest.split('/')
        .map(|segment| {
            let mut out = String::with_capacity(segment.len());
            let mut chars = segment.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return None,
                    }
                } else {
                    out.push(c);
                }
            }
            Some(out)
        })
        .collect()
}

#[derive(Default)]
struct Ctx {
    errors: Vec<DefinitionError>,
}

impl Ctx {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        if self.errors.len() < ERRORS_MAX {
            self.errors.push(DefinitionError {
                path: path.to_owned(),
                message: message.into(),
            });
        }
    }

    fn object<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v Map<String, Value>> {
        match value {
            Value::Object(map) => Some(map),
            other => {
                self.error(
                    path,
                    format!("expected an object, found {}", type_name(other)),
                );
                None
            }
        }
    }

    fn fields(&mut self, map: &Map<String, Value>, path: &str, allowed: &[&str]) {
        for name in map.keys() {
            if !allowed.contains(&name.as_str()) {
                self.error(
                    &child(path, name),
                    format!(
                        "unknown field '{name}'; expected one of: {}",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    fn name(&mut self, value: &Value, path: &str, what: &str) -> Option<String> {
        match value {
            Value::String(s) if s.is_empty() => {
                self.error(path, format!("the {what} is empty"));
                None
            }
            Value::String(s) if s.len() > NAME_BYTES_MAX => {
                self.error(
                    path,
                    format!(
                        "the {what} is {} bytes; the most is {NAME_BYTES_MAX}",
                        s.len()
                    ),
                );
                None
            }
            Value::String(s) => Some(s.clone()),
            other => {
                self.error(
                    path,
                    format!("the {what} must be a string, found {}", type_name(other)),
                );
                None
            }
        }
    }
}

fn child(path: &str, segment: &str) -> String {
    format!("{path}/{}", escape(segment))
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

const KINDS: [&str; 3] = ["state", "aggregate", "list"];
const SHORT_NAMES: [&str; 6] = [
    "stream",
    "category",
    "version",
    "position",
    "event_type",
    "recorded_ms",
];

fn parse_definition(ctx: &mut Ctx, json: &Value) -> Option<ProjectionDefinition> {
    let map = ctx.object(json, "")?;
    ctx.fields(
        map,
        "",
        &[
            "description",
            "source",
            "event_types",
            "state",
            "aggregate",
            "list",
        ],
    );
    let description = match map.get("description") {
        None => None,
        Some(Value::String(text)) if text.len() <= 1024 => Some(text.clone()),
        Some(Value::String(text)) => {
            ctx.error(
                "/description",
                format!("the description is {} bytes; the most is 1024", text.len()),
            );
            None
        }
        Some(other) => {
            ctx.error(
                "/description",
                format!("expected a string, found {}", type_name(other)),
            );
            None
        }
    };
    let source = match map.get("source") {
        None => {
            ctx.error(
                "/source",
                r#"missing: say what to read, {"category": "order"} or {"all": true}"#,
            );
            None
        }
        Some(value) => parse_source(ctx, value),
    };
    let event_types = map
        .get("event_types")
        .and_then(|value| parse_event_types(ctx, value));
    let kinds: Vec<&str> = KINDS
        .iter()
        .copied()
        .filter(|k| map.contains_key(*k))
        .collect();
    let kind = match kinds.as_slice() {
        [] => {
            ctx.error(
                "",
                "missing the projection's kind: add one of \"state\", \"aggregate\" or \"list\"",
            );
            None
        }
        [kind] => {
            let value = &map[*kind];
            let path = format!("/{kind}");
            match *kind {
                "state" => parse_state(ctx, value, &path, event_types.as_deref()).map(Kind::State),
                "aggregate" => parse_aggregate(ctx, value, &path).map(Kind::Aggregate),
                _ => parse_list(ctx, value, &path).map(Kind::List),
            }
        }
        several => {
            ctx.error(
                "",
                format!(
                    "a projection has exactly one kind; found {}: keep one",
                    several.join(" and ")
                ),
            );
            None
        }
    };
    Some(ProjectionDefinition {
        description,
        source: source?,
        event_types,
        kind: kind?,
        json: json.clone(),
    })
}

fn parse_source(ctx: &mut Ctx, value: &Value) -> Option<Source> {
    let map = ctx.object(value, "/source")?;
    ctx.fields(map, "/source", &["category", "all"]);
    match (map.get("category"), map.get("all")) {
        (Some(category), None) => ctx
            .name(category, "/source/category", "category")
            .map(Source::Category),
        (None, Some(Value::Bool(true))) => Some(Source::All),
        (None, Some(_)) => {
            ctx.error(
                "/source/all",
                r#"must be true; to read one category use {"category": "..."}"#,
            );
            None
        }
        (Some(_), Some(_)) => {
            ctx.error("/source", "give either \"category\" or \"all\", not both");
            None
        }
        (None, None) => {
            ctx.error(
                "/source",
                r#"say what to read: {"category": "order"} or {"all": true}"#,
            );
            None
        }
    }
}

fn parse_event_types(ctx: &mut Ctx, value: &Value) -> Option<Vec<String>> {
    let Value::Array(items) = value else {
        ctx.error(
            "/event_types",
            format!(
                "expected an array of event types, found {}",
                type_name(value)
            ),
        );
        return None;
    };
    if items.is_empty() {
        ctx.error(
            "/event_types",
            "is empty, so nothing would be read; list event types, or remove it to read every type",
        );
        return None;
    }
    if items.len() > EVENT_TYPES_MAX {
        ctx.error(
            "/event_types",
            format!("has {} entries; the most is {EVENT_TYPES_MAX}", items.len()),
        );
        return None;
    }
    let mut types = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("/event_types/{i}");
        if let Some(name) = ctx.name(item, &path, "event type") {
            if types.contains(&name) {
                ctx.error(&path, format!("'{name}' is listed twice"));
            } else {
                types.push(name);
            }
        }
    }
    Some(types)
}

/// What a string operand or operand object may contain where it is used.
#[derive(Clone, Copy)]
struct OperandRules {
    /// A string is short for `{"path": ...}`.
    short: bool,
    optional: bool,
    max_items: bool,
}

fn parse_pointer(ctx: &mut Ctx, text: &str, path: &str) -> Option<EventPointer> {
    if text.len() > POINTER_BYTES_MAX {
        ctx.error(
            path,
            format!(
                "the pointer is {} bytes; the most is {POINTER_BYTES_MAX}",
                text.len()
            ),
        );
        return None;
    }
    let Some(segments) = split_pointer(text) else {
        ctx.error(
            path,
            format!(
                "{text:?} is not a JSON pointer: it must start with '/', and '~' must be followed by 0 or 1"
            ),
        );
        return None;
    };
    let Some(first) = segments.first() else {
        ctx.error(
            path,
            "the empty pointer would read the whole envelope; point at a field such as /data/total",
        );
        return None;
    };
    let root = match first.as_str() {
        "stream" => Root::Stream,
        "category" => Root::Category,
        "version" => Root::Version,
        "position" => Root::Position,
        "event_type" => Root::EventType,
        "data" => Root::Data,
        "metadata" => Root::Metadata,
        "recorded_ms" => Root::RecordedMs,
        other => {
            ctx.error(
                path,
                format!(
                    "{text:?} starts at '{other}', which the event does not have; pointers start with one of /{}",
                    ENVELOPE_FIELDS.join(", /")
                ),
            );
            return None;
        }
    };
    let rest = &text[1 + first.len()..];
    if !matches!(root, Root::Data | Root::Metadata) && !rest.is_empty() {
        ctx.error(
            path,
            format!("/{first} is not an object, so {text:?} points at nothing; use /{first}"),
        );
        return None;
    }
    Some(EventPointer {
        text: text.to_owned(),
        root,
        rest: rest.to_owned(),
    })
}

fn parse_operand(ctx: &mut Ctx, value: &Value, path: &str, rules: OperandRules) -> Option<Operand> {
    if let Value::String(text) = value {
        if !rules.short {
            ctx.error(
                path,
                format!(
                    r#"a string is ambiguous here: write {{"const": {text:?}}} for a fixed value, or {{"path": "/data/..."}} to read the event"#
                ),
            );
            return None;
        }
        let pointer = if SHORT_NAMES.contains(&text.as_str()) {
            format!("/{text}")
        } else if text.starts_with('/') {
            text.clone()
        } else {
            ctx.error(
                path,
                format!(
                    "{text:?} is neither a JSON pointer (such as /data/total) nor one of {}",
                    SHORT_NAMES.join(", ")
                ),
            );
            return None;
        };
        let pointer = parse_pointer(ctx, &pointer, path)?;
        return Some(Operand {
            source: OperandSource::Read(pointer),
            missing: Missing::Fail,
            at: path.to_owned(),
            read_at: path.to_owned(),
        });
    }
    let map = ctx.object(value, path)?;
    let mut allowed = vec!["const", "path", "default"];
    if rules.optional {
        allowed.push("optional");
    }
    if rules.max_items {
        allowed.push("max_items");
    }
    ctx.fields(map, path, &allowed);
    let source = match (map.get("const"), map.get("path")) {
        (Some(constant), None) => {
            if map.contains_key("default") || map.contains_key("optional") {
                ctx.error(
                    path,
                    "\"default\" and \"optional\" apply to \"path\"; a constant is never missing",
                );
            }
            OperandSource::Const(constant.clone())
        }
        (None, Some(Value::String(pointer))) => {
            OperandSource::Read(parse_pointer(ctx, pointer, &child(path, "path"))?)
        }
        (None, Some(other)) => {
            ctx.error(
                &child(path, "path"),
                format!("expected a JSON pointer string, found {}", type_name(other)),
            );
            return None;
        }
        (Some(_), Some(_)) => {
            ctx.error(path, "give either \"const\" or \"path\", not both");
            return None;
        }
        (None, None) => {
            ctx.error(
                path,
                r#"say where the value comes from: {"path": "/data/..."} or {"const": ...}"#,
            );
            return None;
        }
    };
    let optional = match map.get("optional") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(other) => {
            ctx.error(
                &child(path, "optional"),
                format!("expected true or false, found {}", type_name(other)),
            );
            false
        }
    };
    let missing = match (map.get("default"), optional) {
        (Some(_), true) => {
            ctx.error(
                path,
                "give either \"default\" (use this value) or \"optional\" (skip the operation) when the value is missing, not both",
            );
            return None;
        }
        (Some(default), false) => Missing::Default(default.clone()),
        (None, true) => Missing::Skip,
        (None, false) => Missing::Fail,
    };
    Some(Operand {
        source,
        missing,
        at: path.to_owned(),
        read_at: child(path, "path"),
    })
}

fn parse_max_items(ctx: &mut Ctx, value: Option<&Value>, path: &str) -> usize {
    match value {
        None => LIST_ITEMS_DEFAULT,
        Some(value) => match value.as_u64() {
            Some(n) if (1..=LIST_ITEMS_MAX as u64).contains(&n) => n as usize,
            _ => {
                ctx.error(
                    path,
                    format!("expected a whole number from 1 to {LIST_ITEMS_MAX}, found {value}"),
                );
                LIST_ITEMS_DEFAULT
            }
        },
    }
}

fn parse_target(ctx: &mut Ctx, text: &str, path: &str, root_allowed: bool) -> Option<Target> {
    if text.len() > POINTER_BYTES_MAX {
        ctx.error(
            path,
            format!(
                "the target is {} bytes; the most is {POINTER_BYTES_MAX}",
                text.len()
            ),
        );
        return None;
    }
    let segments = if text.is_empty() {
        if !root_allowed {
            ctx.error(
                path,
                "the empty target is the whole document, which only set and merge can write; name a field",
            );
            return None;
        }
        Vec::new()
    } else if text.starts_with('/') {
        match split_pointer(text) {
            Some(segments) if segments.iter().all(|s| !s.is_empty()) => segments,
            _ => {
                ctx.error(
                    path,
                    format!(
                        "{text:?} is not a valid target pointer: segments must be non-empty, and '~' followed by 0 or 1"
                    ),
                );
                return None;
            }
        }
    } else {
        vec![text.to_owned()]
    };
    Some(Target {
        text: text.to_owned(),
        segments,
    })
}

fn parse_handler(ctx: &mut Ctx, value: &Value, path: &str) -> Option<Handler> {
    let map = ctx.object(value, path)?;
    ctx.fields(
        map,
        path,
        &["set", "merge", "increment", "append", "unset", "delete"],
    );
    let mut handler = Handler::default();
    let mut targets: Vec<(Vec<String>, String)> = Vec::new();
    let mut operations = 0usize;
    let mut claim = |ctx: &mut Ctx, target: &Target, at: &str| {
        operations += 1;
        if target.segments.is_empty() {
            // The whole document is written first (see `Handler`), so fields can refine it.
            return;
        }
        if let Some((_, first)) = targets.iter().find(|(t, _)| {
            // The same field, or one inside the other, written twice by one event.
            let n = t.len().min(target.segments.len());
            t[..n] == target.segments[..n]
        }) {
            ctx.error(
                at,
                format!(
                    "target '{}' overlaps {first}; one event writes a field once",
                    target.text
                ),
            );
        } else {
            targets.push((target.segments.clone(), at.to_owned()));
        }
    };
    for op in ["set", "merge", "increment", "append"] {
        let Some(value) = map.get(op) else { continue };
        let op_path = child(path, op);
        let Some(fields) = ctx.object(value, &op_path) else {
            continue;
        };
        if fields.is_empty() {
            ctx.error(
                &op_path,
                format!("is empty; remove it or add targets to {op}"),
            );
        }
        for (target_text, operand) in fields {
            let at = child(&op_path, target_text);
            let Some(target) = parse_target(ctx, target_text, &at, matches!(op, "set" | "merge"))
            else {
                continue;
            };
            claim(ctx, &target, &at);
            let rules = OperandRules {
                short: false,
                optional: true,
                max_items: op == "append",
            };
            let Some(operand) = parse_operand(ctx, operand, &at, rules) else {
                continue;
            };
            match op {
                "set" => handler.set.push(FieldOp {
                    target,
                    value: operand,
                }),
                "merge" => handler.merge.push(FieldOp {
                    target,
                    value: operand,
                }),
                "increment" => {
                    if let OperandSource::Const(c) = &operand.source
                        && !c.is_number()
                    {
                        ctx.error(&child(&at, "const"), "increment needs a number");
                    }
                    handler.increment.push(FieldOp {
                        target,
                        value: operand,
                    })
                }
                _ => {
                    let max_items = parse_max_items(
                        ctx,
                        operand_map_get(operand_value(fields, target_text), "max_items"),
                        &child(&at, "max_items"),
                    );
                    handler.append.push(AppendOp {
                        target,
                        value: operand,
                        max_items,
                    })
                }
            }
        }
    }
    if let Some(value) = map.get("unset") {
        let unset_path = child(path, "unset");
        match value {
            Value::Array(items) if !items.is_empty() => {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("{unset_path}/{i}");
                    match item {
                        Value::String(text) => {
                            if let Some(target) = parse_target(ctx, text, &at, false) {
                                claim(ctx, &target, &at);
                                handler.unset.push(target);
                            }
                        }
                        other => ctx.error(
                            &at,
                            format!(
                                "expected a field name or pointer, found {}",
                                type_name(other)
                            ),
                        ),
                    }
                }
            }
            _ => ctx.error(
                &unset_path,
                "expected a non-empty array of field names or pointers, such as [\"coupon\"]",
            ),
        }
    }
    match map.get("delete") {
        None => {}
        Some(Value::Bool(true)) => {
            handler.delete = true;
            if map.len() > 1 {
                ctx.error(
                    &child(path, "delete"),
                    "delete removes the document, so other operations in the same handler would be lost; keep delete alone",
                );
            }
        }
        Some(Value::Bool(false)) => ctx.error(
            &child(path, "delete"),
            "\"delete\": false does nothing; remove it",
        ),
        Some(other) => ctx.error(
            &child(path, "delete"),
            format!("expected true, found {}", type_name(other)),
        ),
    }
    // Writes of the whole document come before writes of its fields, whatever the order of
    // the JSON object (which depends on serde_json's `preserve_order` feature).
    handler.set.sort_by_key(|op| !op.target.segments.is_empty());
    handler
        .merge
        .sort_by_key(|op| !op.target.segments.is_empty());
    if operations > OPERATIONS_MAX {
        ctx.error(
            path,
            format!("has {operations} operations; the most is {OPERATIONS_MAX}"),
        );
    }
    if operations == 0 && !handler.delete && map.keys().all(|k| k != "delete") {
        ctx.error(
            path,
            "does nothing; add set, merge, increment, append, unset or delete, or remove the handler",
        );
    }
    Some(handler)
}

fn operand_value<'v>(fields: &'v Map<String, Value>, target: &str) -> Option<&'v Value> {
    fields.get(target)
}

fn operand_map_get<'v>(operand: Option<&'v Value>, name: &str) -> Option<&'v Value> {
    operand.and_then(|o| o.get(name))
}

fn parse_state(
    ctx: &mut Ctx,
    value: &Value,
    path: &str,
    event_types: Option<&[String]>,
) -> Option<StateDefinition> {
    let map = ctx.object(value, path)?;
    ctx.fields(map, path, &["key", "handlers"]);
    let key_rules = OperandRules {
        short: true,
        optional: false,
        max_items: false,
    };
    let key = match map.get("key") {
        None => Some(Operand {
            source: OperandSource::Read(EventPointer {
                text: "/stream".into(),
                root: Root::Stream,
                rest: String::new(),
            }),
            missing: Missing::Fail,
            at: child(path, "key"),
            read_at: child(path, "key"),
        }),
        Some(value) => parse_operand(ctx, value, &child(path, "key"), key_rules),
    };
    let handlers_path = child(path, "handlers");
    let mut handlers = Vec::new();
    match map.get("handlers") {
        None => ctx.error(
            &handlers_path,
            r#"missing: say what each event type does, such as {"OrderPlaced": {"set": {...}}}"#,
        ),
        Some(value) => {
            if let Some(map) = ctx.object(value, &handlers_path) {
                if map.is_empty() {
                    ctx.error(&handlers_path, "is empty; add a handler per event type");
                }
                if map.len() > HANDLERS_MAX {
                    ctx.error(
                        &handlers_path,
                        format!("has {} handlers; the most is {HANDLERS_MAX}", map.len()),
                    );
                }
                for (event_type, handler) in map {
                    let at = child(&handlers_path, event_type);
                    if event_type.is_empty() || event_type.len() > NAME_BYTES_MAX {
                        ctx.error(&at, format!("event types are 1 to {NAME_BYTES_MAX} bytes"));
                    }
                    if let Some(types) = event_types
                        && !types.contains(event_type)
                    {
                        ctx.error(
                            &at,
                            format!(
                                "event type '{event_type}' is not in event_types, so this handler would never run; add it there or remove the handler"
                            ),
                        );
                    }
                    if let Some(handler) = parse_handler(ctx, handler, &at) {
                        handlers.push((event_type.clone(), handler));
                    }
                }
            }
        }
    }
    handlers.sort_by(|a, b| a.0.cmp(&b.0));
    Some(StateDefinition {
        key: key?,
        handlers,
    })
}

fn parse_group_by(ctx: &mut Ctx, value: &Value, path: &str) -> Vec<(String, Operand)> {
    let rules = OperandRules {
        short: true,
        optional: false,
        max_items: false,
    };
    let mut groups = Vec::new();
    let mut named = |ctx: &mut Ctx, value: &Value, at: &str| {
        let Value::String(text) = value else {
            ctx.error(
                at,
                "in the array form, name each group field by a string pointer; use the object form {\"name\": {...}} for operands with a default",
            );
            return;
        };
        let name = text
            .rsplit('/')
            .next()
            .unwrap_or(text)
            .replace("~1", "/")
            .replace("~0", "~");
        if let Some(operand) = parse_operand(ctx, value, at, rules) {
            groups.push((name, operand, at.to_owned()));
        }
    };
    match value {
        Value::String(_) => named(ctx, value, path),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                named(ctx, item, &format!("{path}/{i}"));
            }
        }
        Value::Object(map) => {
            for (name, operand) in map {
                let at = child(path, name);
                if let Some(operand) = parse_operand(ctx, operand, &at, rules) {
                    groups.push((name.clone(), operand, at));
                }
            }
        }
        other => ctx.error(
            path,
            format!(
                "expected a pointer, an array of pointers or an object of named values, found {}",
                type_name(other)
            ),
        ),
    }
    if groups.len() > GROUP_BY_MAX {
        ctx.error(
            path,
            format!(
                "groups by {} fields; the most is {GROUP_BY_MAX}",
                groups.len()
            ),
        );
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(groups.len());
    for (name, operand, at) in groups {
        if name.is_empty() || name.starts_with('$') {
            ctx.error(
                &at,
                format!("group field name '{name}' must be non-empty and not start with '$'"),
            );
        } else if !seen.insert(name.clone()) {
            ctx.error(
                &at,
                format!(
                    "two group fields are named '{name}'; use the object form to name them apart"
                ),
            );
        }
        out.push((name, operand));
    }
    out
}

fn parse_aggregate(ctx: &mut Ctx, value: &Value, path: &str) -> Option<AggregateDefinition> {
    let map = ctx.object(value, path)?;
    ctx.fields(map, path, &["group_by", "measures"]);
    let group_by = map
        .get("group_by")
        .map(|v| parse_group_by(ctx, v, &child(path, "group_by")))
        .unwrap_or_default();
    let measures_path = child(path, "measures");
    let mut measures = Vec::new();
    match map.get("measures") {
        None => ctx.error(
            &measures_path,
            r#"missing: add at least one, such as {"orders": {"count": {}}}"#,
        ),
        Some(value) => {
            if let Some(map) = ctx.object(value, &measures_path) {
                if map.is_empty() {
                    ctx.error(&measures_path, "is empty; add at least one measure");
                }
                if map.len() > MEASURES_MAX {
                    ctx.error(
                        &measures_path,
                        format!("has {} measures; the most is {MEASURES_MAX}", map.len()),
                    );
                }
                for (name, measure) in map {
                    let at = child(&measures_path, name);
                    if name.starts_with('$') {
                        ctx.error(&at, "measure names starting with '$' are reserved");
                    }
                    if group_by.iter().any(|(g, _)| g == name) {
                        ctx.error(
                            &at,
                            format!("'{name}' is also a group_by field; rename one of them"),
                        );
                    }
                    if let Some(measure) = parse_measure(ctx, measure, &at) {
                        measures.push((name.clone(), measure));
                    }
                }
            }
        }
    }
    Some(AggregateDefinition { group_by, measures })
}

fn parse_measure(ctx: &mut Ctx, value: &Value, path: &str) -> Option<Measure> {
    let map = ctx.object(value, path)?;
    let ops = ["count", "sum", "min", "max", "avg"];
    ctx.fields(map, path, &ops);
    if map.len() != 1 {
        ctx.error(
            path,
            "a measure is exactly one of {\"count\": {}}, {\"sum\": ...}, {\"min\": ...}, {\"max\": ...}, {\"avg\": ...}",
        );
        return None;
    }
    let (op, operand) = map.iter().next()?;
    let at = child(path, op);
    let rules = OperandRules {
        short: true,
        optional: true,
        max_items: false,
    };
    match op.as_str() {
        "count" => {
            if operand.as_object().is_some_and(Map::is_empty) {
                Some(Measure::Count)
            } else {
                ctx.error(&at, "count counts events and takes no settings: write {}");
                None
            }
        }
        "sum" => parse_operand(ctx, operand, &at, rules).map(Measure::Sum),
        "min" => parse_operand(ctx, operand, &at, rules).map(Measure::Min),
        "max" => parse_operand(ctx, operand, &at, rules).map(Measure::Max),
        "avg" => parse_operand(ctx, operand, &at, rules).map(Measure::Avg),
        _ => None,
    }
}

fn parse_list(ctx: &mut Ctx, value: &Value, path: &str) -> Option<ListDefinition> {
    let map = ctx.object(value, path)?;
    ctx.fields(map, path, &["key", "fields", "max_items"]);
    let key = map.get("key").and_then(|v| {
        parse_operand(
            ctx,
            v,
            &child(path, "key"),
            OperandRules {
                short: true,
                optional: false,
                max_items: false,
            },
        )
    });
    let fields_path = child(path, "fields");
    let fields = map.get("fields").and_then(|value| {
        let map = ctx.object(value, &fields_path)?;
        if map.is_empty() || map.len() > FIELDS_MAX {
            ctx.error(
                &fields_path,
                format!(
                    "has {} fields; give 1 to {FIELDS_MAX}, or remove it to keep whole events",
                    map.len()
                ),
            );
        }
        let rules = OperandRules {
            short: true,
            optional: true,
            max_items: false,
        };
        Some(
            map.iter()
                .filter_map(|(name, operand)| {
                    parse_operand(ctx, operand, &child(&fields_path, name), rules)
                        .map(|o| (name.clone(), o))
                })
                .collect(),
        )
    });
    let max_items = parse_max_items(ctx, map.get("max_items"), &child(path, "max_items"));
    Some(ListDefinition {
        key,
        fields,
        max_items,
    })
}
