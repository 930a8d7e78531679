//! Structural compatibility of two JSON Schemas: can a *reader* schema accept every value a
//! *writer* schema accepts?
//!
//! The rules follow Confluent Schema Registry's JSON Schema compatibility rules for the subset
//! of JSON Schema people write for events: `type` (arrays of types; `integer` is a subset of
//! `number`), `properties`, `required` (a newly required property with a `default` is accepted:
//! upcasting fills the default), `additionalProperties` (the open and closed content models),
//! `enum`/`const`, `items`, nested objects, numeric bounds, string lengths, `pattern`,
//! `format`, `multipleOf`, item and property counts, local `$ref`s, and `allOf`/`anyOf`/
//! `oneOf` compared branch by branch (like Confluent, `oneOf` is treated as `anyOf`).
//!
//! The analysis is sound and deliberately conservative: a constraint of the *reader* that it
//! cannot compare (`not`, `if`/`then`/`else`, `patternProperties`, `prefixItems`, external
//! `$ref`s, ...) is an `unsupported_construct` incompatibility unless the writer carries the
//! very same constraint. Constraints only on the *writer* side are safe to ignore: dropping
//! them only makes the writer accept more.

use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Which reading a check is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The new schema reads data written with an earlier version.
    Backward,
    /// An earlier version reads data written with the new schema.
    Forward,
}

/// What is incompatible, from the point of view of the reader schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncompatibilityKind {
    /// The reader accepts none of the types the writer allows.
    TypeChanged,
    /// The reader accepts some but not all of the writer's types (e.g. `number` → `integer`).
    TypeNarrowed,
    /// The reader is `false` (accepts nothing).
    SchemaClosed,
    /// The reader restricts values to an `enum`/`const` the writer does not have.
    EnumAdded,
    /// A value the writer allows is not in the reader's `enum`/`const`, or breaks its bounds.
    EnumNarrowed,
    /// The reader requires a property the writer may omit, and gives it no default.
    RequiredPropertyAdded,
    /// The reader declares a property the writer's open content model lets through with any
    /// value, so values the reader rejects may already exist.
    PropertyAddedToOpenContentModel,
    /// The reader declares a property the writer's `additionalProperties` schema lets through
    /// with values the reader rejects.
    PropertyAddedNotCoveredByAdditionalProperties,
    /// The writer declares a property the reader's closed content model rejects.
    PropertyRemovedFromClosedContentModel,
    /// The writer declares a property the reader's `additionalProperties` schema rejects.
    PropertyRemovedNotCoveredByAdditionalProperties,
    /// The reader's `additionalProperties` accepts less than the writer's.
    AdditionalPropertiesNarrowed,
    MinimumIncreased,
    MaximumDecreased,
    MultipleOfChanged,
    MinLengthIncreased,
    MaxLengthDecreased,
    PatternChanged,
    FormatChanged,
    MinItemsIncreased,
    MaxItemsDecreased,
    UniqueItemsAdded,
    MinPropertiesIncreased,
    MaxPropertiesDecreased,
    /// No branch of the reader's `anyOf`/`oneOf` accepts everything the writer allows.
    SumTypeNarrowed,
    /// A branch of the reader's `allOf` rejects values the writer allows.
    ProductTypeExtended,
    /// A construct the checker cannot compare; it refuses rather than passing silently.
    UnsupportedConstruct,
}

impl IncompatibilityKind {
    pub fn as_str(self) -> &'static str {
        use IncompatibilityKind::*;
        match self {
            TypeChanged => "type_changed",
            TypeNarrowed => "type_narrowed",
            SchemaClosed => "schema_closed",
            EnumAdded => "enum_added",
            EnumNarrowed => "enum_narrowed",
            RequiredPropertyAdded => "required_property_added",
            PropertyAddedToOpenContentModel => "property_added_to_open_content_model",
            PropertyAddedNotCoveredByAdditionalProperties => {
                "property_added_not_covered_by_additional_properties"
            }
            PropertyRemovedFromClosedContentModel => "property_removed_from_closed_content_model",
            PropertyRemovedNotCoveredByAdditionalProperties => {
                "property_removed_not_covered_by_additional_properties"
            }
            AdditionalPropertiesNarrowed => "additional_properties_narrowed",
            MinimumIncreased => "minimum_increased",
            MaximumDecreased => "maximum_decreased",
            MultipleOfChanged => "multiple_of_changed",
            MinLengthIncreased => "min_length_increased",
            MaxLengthDecreased => "max_length_decreased",
            PatternChanged => "pattern_changed",
            FormatChanged => "format_changed",
            MinItemsIncreased => "min_items_increased",
            MaxItemsDecreased => "max_items_decreased",
            UniqueItemsAdded => "unique_items_added",
            MinPropertiesIncreased => "min_properties_increased",
            MaxPropertiesDecreased => "max_properties_decreased",
            SumTypeNarrowed => "sum_type_narrowed",
            ProductTypeExtended => "product_type_extended",
            UnsupportedConstruct => "unsupported_construct",
        }
    }
}

impl std::fmt::Display for IncompatibilityKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason a new schema breaks the compatibility mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incompatibility {
    /// The registered version the new schema was compared with.
    pub version: u32,
    pub direction: Direction,
    /// JSON pointer to the schema location, e.g. `/properties/currency`.
    pub path: String,
    pub kind: IncompatibilityKind,
    /// What changed and how to fix it.
    pub message: String,
}

impl std::fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "(root)"
        } else {
            &self.path
        };
        write!(f, "{} at {path}: {}", self.kind, self.message)
    }
}

/// Most comparisons one check may make; combinators compared branch by branch can multiply
/// the work, and a pathological schema must not stall a registration.
const COMPARISONS_MAX: usize = 20_000;
/// Deepest nesting of subschemas (and `$ref` hops) one check follows.
const DEPTH_MAX: usize = 64;

/// Keywords that only annotate; they never change which values a schema accepts.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$comment",
    "$id",
    "$schema",
    "$anchor",
    "$defs",
    "definitions",
    "deprecated",
    "readOnly",
    "writeOnly",
    "contentEncoding",
    "contentMediaType",
    "contentSchema",
];

/// Keywords that constrain values but that this checker does not compare. On the reader side
/// they must equal the writer's, or the check reports `unsupported_construct`.
const UNSUPPORTED: &[&str] = &[
    "not",
    "if",
    "then",
    "else",
    "dependentSchemas",
    "dependentRequired",
    "dependencies",
    "patternProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
    "propertyNames",
    "prefixItems",
    "contains",
    "minContains",
    "maxContains",
    "additionalItems",
    "$dynamicRef",
    "$recursiveRef",
];

const COMBINATORS: &[&str] = &["allOf", "anyOf", "oneOf"];

/// The incompatibilities found when `reader` reads data valid under `writer`: empty means
/// every value `writer` accepts is accepted by `reader`. `reader_label` and `writer_label`
/// name the two schemas in messages ("the new schema", "version 2").
pub(crate) fn incompatibilities(
    reader: &Value,
    writer: &Value,
    direction: Direction,
    version: u32,
    reader_label: &str,
    writer_label: &str,
) -> Vec<Incompatibility> {
    let mut checker = Checker {
        refs_stable: refs_stable(reader, writer),
        reader_root: reader,
        writer_root: writer,
        reader: reader_label,
        writer: writer_label,
        direction,
        comparisons: 0,
        depth: 0,
        assumed: HashSet::new(),
    };
    let mut found = checker.sub(reader, writer, "");
    // Branch attempts can report one cause twice; keep each once, in order.
    let mut seen = HashSet::new();
    found.retain(|f| seen.insert((f.path.clone(), f.kind, f.message.clone())));
    found
        .into_iter()
        .map(|f| Incompatibility {
            version,
            direction,
            path: f.path,
            kind: f.kind,
            message: f.message,
        })
        .collect()
}

fn collect_refs<'v>(value: &'v Value, out: &mut Vec<&'v str>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                if key == "$ref"
                    && let Value::String(target) = child
                {
                    out.push(target);
                } else {
                    collect_refs(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, out)),
        _ => {}
    }
}

/// Equal subschemas mean the same in both roots unless they hold `$ref`s resolved differently:
/// true when a root has no `$ref`, or all `$ref`s point into identical `$defs`/`definitions`.
fn refs_stable(reader: &Value, writer: &Value) -> bool {
    let (mut reader_refs, mut writer_refs) = (Vec::new(), Vec::new());
    collect_refs(reader, &mut reader_refs);
    collect_refs(writer, &mut writer_refs);
    if reader_refs.is_empty() || writer_refs.is_empty() {
        return true;
    }
    let into_defs = |r: &&str| r.starts_with("#/$defs/") || r.starts_with("#/definitions/");
    reader_refs.iter().all(into_defs)
        && writer_refs.iter().all(into_defs)
        && reader.get("$defs") == writer.get("$defs")
        && reader.get("definitions") == writer.get("definitions")
}

struct Found {
    path: String,
    kind: IncompatibilityKind,
    message: String,
}

struct Checker<'a> {
    /// Whether two equal subschemas are equal in meaning too: not so when they hold `$ref`s
    /// whose targets differ between the two roots.
    refs_stable: bool,
    reader_root: &'a Value,
    writer_root: &'a Value,
    reader: &'a str,
    writer: &'a str,
    direction: Direction,
    comparisons: usize,
    depth: usize,
    /// Pairs of `$ref` targets under comparison: meeting one again (a recursive schema) is
    /// assumed compatible, which is the right answer for structural subtyping.
    assumed: HashSet<(String, String)>,
}

/// JSON pointer escaping of one reference token.
pub(crate) fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn join(path: &str, token: &str) -> String {
    format!("{path}/{}", escape_token(token))
}

// Type sets: integers and numbers with a fraction are separate so `integer` ⊂ `number`.
pub(crate) const T_NULL: u8 = 1;
const T_BOOL: u8 = 2;
const T_INT: u8 = 4;
const T_FRAC: u8 = 8;
const T_STR: u8 = 16;
const T_ARR: u8 = 32;
const T_OBJ: u8 = 64;
const T_ALL: u8 = 127;
const T_NUM: u8 = T_INT | T_FRAC;

fn type_bits(name: &str) -> Option<u8> {
    Some(match name {
        "null" => T_NULL,
        "boolean" => T_BOOL,
        "integer" => T_INT,
        "number" => T_NUM,
        "string" => T_STR,
        "array" => T_ARR,
        "object" => T_OBJ,
        _ => return None,
    })
}

fn value_bits(value: &Value) -> u8 {
    match value {
        Value::Null => T_NULL,
        Value::Bool(_) => T_BOOL,
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0) {
                T_INT
            } else {
                T_FRAC
            }
        }
        Value::String(_) => T_STR,
        Value::Array(_) => T_ARR,
        Value::Object(_) => T_OBJ,
    }
}

fn describe_types(bits: u8) -> String {
    let mut names = Vec::new();
    for (bit, name) in [
        (T_NULL, "null"),
        (T_BOOL, "boolean"),
        (T_STR, "string"),
        (T_ARR, "array"),
        (T_OBJ, "object"),
    ] {
        if bits & bit != 0 {
            names.push(name);
        }
    }
    match bits & T_NUM {
        T_NUM => names.push("number"),
        T_INT => names.push("integer"),
        T_FRAC => names.push("number with a fraction"),
        _ => {}
    }
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

/// The values a schema is limited to by `const` or `enum`, if it is.
fn listed_values(schema: &Map<String, Value>) -> Option<Vec<&Value>> {
    if let Some(value) = schema.get("const") {
        return Some(vec![value]);
    }
    match schema.get("enum") {
        Some(Value::Array(values)) => Some(values.iter().collect()),
        _ => None,
    }
}

/// The types a schema allows: its `type`, else the types of its listed values, else all.
pub(crate) fn types_of(schema: &Map<String, Value>) -> u8 {
    match schema.get("type") {
        Some(Value::String(name)) => type_bits(name).unwrap_or(0),
        Some(Value::Array(names)) => names
            .iter()
            .filter_map(Value::as_str)
            .filter_map(type_bits)
            .fold(0, |bits, b| bits | b),
        _ => match listed_values(schema) {
            Some(values) => values.iter().fold(0, |bits, v| bits | value_bits(v)),
            None => T_ALL,
        },
    }
}

fn as_u64(schema: &Map<String, Value>, key: &str) -> Option<u64> {
    schema.get(key).and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f.ceil() as u64))
    })
}

/// A numeric bound: value and whether it is exclusive.
fn lower_bound(schema: &Map<String, Value>) -> Option<(f64, bool)> {
    let inclusive = schema.get("minimum").and_then(Value::as_f64);
    let exclusive = match schema.get("exclusiveMinimum") {
        Some(Value::Bool(true)) => inclusive.map(|m| (m, true)),
        Some(v) => v.as_f64().map(|m| (m, true)),
        None => None,
    };
    tighter(inclusive.map(|m| (m, false)), exclusive, |a, b| a > b)
}

fn upper_bound(schema: &Map<String, Value>) -> Option<(f64, bool)> {
    let inclusive = schema.get("maximum").and_then(Value::as_f64);
    let exclusive = match schema.get("exclusiveMaximum") {
        Some(Value::Bool(true)) => inclusive.map(|m| (m, true)),
        Some(v) => v.as_f64().map(|m| (m, true)),
        None => None,
    };
    tighter(inclusive.map(|m| (m, false)), exclusive, |a, b| a < b)
}

fn tighter(
    a: Option<(f64, bool)>,
    b: Option<(f64, bool)>,
    stricter: fn(f64, f64) -> bool,
) -> Option<(f64, bool)> {
    match (a, b) {
        (Some(a), Some(b)) => {
            if stricter(a.0, b.0) || (a.0 == b.0 && a.1) {
                Some(a)
            } else {
                Some(b)
            }
        }
        (a, None) => a,
        (None, b) => b,
    }
}

fn show_bound((value, exclusive): (f64, bool), lower: bool) -> String {
    let op = match (lower, exclusive) {
        (true, false) => ">=",
        (true, true) => ">",
        (false, false) => "<=",
        (false, true) => "<",
    };
    format!("{op} {value}")
}

fn quote_list(values: &[&Value]) -> String {
    let shown: Vec<String> = values.iter().take(10).map(|v| v.to_string()).collect();
    let more = if values.len() > 10 {
        format!(" and {} more", values.len() - 10)
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}

enum Additional<'v> {
    Open,
    Closed,
    Schema(&'v Value),
}

fn additional(schema: &Map<String, Value>) -> Additional<'_> {
    match schema.get("additionalProperties") {
        None | Some(Value::Bool(true)) => Additional::Open,
        Some(Value::Bool(false)) => Additional::Closed,
        Some(Value::Object(o)) if o.keys().all(|k| ANNOTATIONS.contains(&k.as_str())) => {
            Additional::Open
        }
        Some(other) => Additional::Schema(other),
    }
}

fn required(schema: &Map<String, Value>) -> BTreeSet<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
static TRUE: Value = Value::Bool(true);

fn properties(schema: &Map<String, Value>) -> &Map<String, Value> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&EMPTY)
}

impl Checker<'_> {
    fn found(&self, path: &str, kind: IncompatibilityKind, message: String) -> Found {
        Found {
            path: path.to_owned(),
            kind,
            message,
        }
    }

    /// Advice that depends on which side is the new schema.
    fn fix<'s>(&self, if_new_reads: &'s str, if_old_reads: &'s str) -> &'s str {
        match self.direction {
            Direction::Backward => if_new_reads,
            Direction::Forward => if_old_reads,
        }
    }

    fn unsupported(&self, path: &str, what: &str) -> Found {
        self.found(
            path,
            IncompatibilityKind::UnsupportedConstruct,
            format!(
                "{what} in {} cannot be compared with {}, so compatibility cannot be proven; keep it identical in both versions, express the change with type/properties/required/enum, or set the event type's compatibility mode to NONE",
                self.reader, self.writer
            ),
        )
    }

    /// Follows local `$ref`s (`#/...`) in `root`; anything else is unsupported.
    fn deref<'v>(
        &self,
        root: &'v Value,
        mut schema: &'v Value,
        path: &str,
        trail: &mut String,
    ) -> Result<&'v Value, Found> {
        for _ in 0..DEPTH_MAX {
            let Some(Value::String(target)) = schema.get("$ref") else {
                return Ok(schema);
            };
            if let Some(object) = schema.as_object()
                && object
                    .keys()
                    .any(|k| k != "$ref" && !ANNOTATIONS.contains(&k.as_str()))
            {
                return Err(self.unsupported(path, "a $ref beside other constraining keywords"));
            }
            let Some(pointer) = target.strip_prefix('#') else {
                return Err(self.unsupported(
                    path,
                    &format!("the $ref to {target:?} (only references inside the same schema, \"#/...\", are followed)"),
                ));
            };
            schema = root.pointer(pointer).ok_or_else(|| {
                self.unsupported(
                    path,
                    &format!("the $ref to {target:?}, which points nowhere,"),
                )
            })?;
            trail.push_str(target);
            trail.push(' ');
        }
        Err(self.unsupported(path, "a chain of $refs this long"))
    }

    /// Every value valid under `writer` is valid under `reader`, or the reasons why not.
    fn sub(&mut self, reader: &Value, writer: &Value, path: &str) -> Vec<Found> {
        if self.refs_stable && reader == writer {
            return Vec::new();
        }
        self.comparisons += 1;
        if self.comparisons > COMPARISONS_MAX || self.depth >= DEPTH_MAX {
            return vec![
                self.unsupported(path, "a schema this deeply nested or this combinatorial"),
            ];
        }
        let (mut reader_trail, mut writer_trail) = (String::new(), String::new());
        let reader = match self.deref(self.reader_root, reader, path, &mut reader_trail) {
            Ok(s) => s,
            Err(f) => return vec![f],
        };
        let writer = match self.deref(self.writer_root, writer, path, &mut writer_trail) {
            Ok(s) => s,
            Err(_) => &TRUE, // an unreadable writer constraint is dropped: the writer only grows
        };
        let pair = (reader_trail, writer_trail);
        let followed = !pair.0.is_empty() || !pair.1.is_empty();
        if followed && !self.assumed.insert(pair.clone()) {
            return Vec::new();
        }
        self.depth += 1;
        let result = self.sub_resolved(reader, writer, path);
        self.depth -= 1;
        if followed {
            self.assumed.remove(&pair);
        }
        result
    }

    fn sub_resolved(&mut self, reader: &Value, writer: &Value, path: &str) -> Vec<Found> {
        if self.refs_stable && reader == writer {
            return Vec::new();
        }
        let reader = match reader {
            Value::Bool(true) => return Vec::new(),
            Value::Bool(false) => {
                return vec![self.found(
                    path,
                    IncompatibilityKind::SchemaClosed,
                    format!(
                        "{} accepts no value here (false) but {} does; {}",
                        self.reader,
                        self.writer,
                        self.fix(
                            "keep accepting the values earlier versions allowed",
                            "do not allow values here that earlier versions reject"
                        )
                    ),
                )];
            }
            Value::Object(o) => o,
            _ => {
                return vec![
                    self.unsupported(path, "a schema that is neither an object nor a boolean"),
                ];
            }
        };
        let writer = match writer {
            Value::Bool(false) => return Vec::new(),
            Value::Object(o) => o,
            _ => &*EMPTY, // true, or unreadable: the writer may write anything
        };
        let has_comb = |s: &Map<String, Value>| COMBINATORS.iter().any(|k| s.contains_key(*k));
        if has_comb(reader) {
            return self.reader_combinators(reader, writer, path);
        }
        if has_comb(writer) {
            let core: Map<String, Value> = writer
                .iter()
                .filter(|(k, _)| !COMBINATORS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let errors = self.core(reader, &core, path);
            if errors.is_empty() {
                return errors;
            }
            let reader_value = Value::Object(reader.clone());
            // A value valid under the writer is valid under one of its allOf branches, under
            // one of its anyOf/oneOf branches: any of these is enough.
            for key in ["allOf"] {
                if let Some(Value::Array(branches)) = writer.get(key)
                    && branches
                        .iter()
                        .any(|b| self.sub(&reader_value, b, path).is_empty())
                {
                    return Vec::new();
                }
            }
            let core_is_empty = core.keys().all(|k| ANNOTATIONS.contains(&k.as_str()));
            for key in ["anyOf", "oneOf"] {
                if let Some(Value::Array(branches)) = writer.get(key) {
                    let mut branch_errors = Vec::new();
                    for branch in branches {
                        branch_errors.extend(self.sub(&reader_value, branch, path));
                    }
                    if branch_errors.is_empty() {
                        return Vec::new();
                    }
                    // Without constraints beside the union, its branches say what is wrong.
                    if core_is_empty {
                        return branch_errors;
                    }
                }
            }
            return errors;
        }
        self.core(reader, writer, path)
    }

    /// The reader is `core ∧ allOf… ∧ (anyOf…) ∧ (oneOf…)`: the writer must fit each part.
    fn reader_combinators(
        &mut self,
        reader: &Map<String, Value>,
        writer: &Map<String, Value>,
        path: &str,
    ) -> Vec<Found> {
        let core: Map<String, Value> = reader
            .iter()
            .filter(|(k, _)| !COMBINATORS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let writer_value = Value::Object(writer.clone());
        let mut errors = self.sub(&Value::Object(core), &writer_value, path);
        if let Some(branches) = reader.get("allOf") {
            let Value::Array(branches) = branches else {
                return vec![self.unsupported(path, "an allOf that is not an array")];
            };
            for (i, branch) in branches.iter().enumerate() {
                let branch_path = format!("{path}/allOf/{i}");
                let found = self.sub(branch, &writer_value, &branch_path);
                if !found.is_empty() {
                    errors.push(self.found(
                        &branch_path,
                        IncompatibilityKind::ProductTypeExtended,
                        format!(
                            "branch {i} of the allOf in {} rejects values {} allows: {}",
                            self.reader, self.writer, found[0].message
                        ),
                    ));
                    errors.extend(found);
                }
            }
        }
        for key in ["anyOf", "oneOf"] {
            let Some(branches) = reader.get(key) else {
                continue;
            };
            let Value::Array(branches) = branches else {
                return vec![self.unsupported(path, &format!("a {key} that is not an array"))];
            };
            let mut closest: Option<(usize, Vec<Found>)> = None;
            let mut fits = false;
            for (i, branch) in branches.iter().enumerate() {
                let found = self.sub(branch, &writer_value, &format!("{path}/{key}/{i}"));
                if found.is_empty() {
                    fits = true;
                    break;
                }
                if closest.as_ref().is_none_or(|(_, c)| found.len() < c.len()) {
                    closest = Some((i, found));
                }
            }
            if fits {
                continue;
            }
            // A writer that is itself a union fits when each of its branches fits a branch.
            let writer_branches = ["anyOf", "oneOf"]
                .iter()
                .find_map(|k| writer.get(*k).and_then(Value::as_array));
            if let Some(writer_branches) = writer_branches
                && writer_branches.iter().all(|w| {
                    branches
                        .iter()
                        .any(|r| self.sub(r, w, &format!("{path}/{key}")).is_empty())
                })
            {
                continue;
            }
            let detail = match &closest {
                Some((i, found)) => format!(
                    "; the closest, branch {i}, fails because {}",
                    found.first().map_or("", |f| f.message.as_str())
                ),
                None => " (it has no branches)".into(),
            };
            errors.push(self.found(
                &format!("{path}/{key}"),
                IncompatibilityKind::SumTypeNarrowed,
                format!(
                    "no branch of the {key} in {} accepts every value {} allows{detail}; {}",
                    self.reader,
                    self.writer,
                    self.fix(
                        "keep a branch that accepts what earlier versions wrote",
                        "do not write values that no branch of earlier versions accepts"
                    )
                ),
            ));
        }
        errors
    }

    /// Compares two schemas without combinators.
    fn core(
        &mut self,
        reader: &Map<String, Value>,
        writer: &Map<String, Value>,
        path: &str,
    ) -> Vec<Found> {
        use IncompatibilityKind::*;
        let mut out = Vec::new();
        for keyword in UNSUPPORTED {
            if let Some(value) = reader.get(*keyword)
                && writer.get(*keyword) != Some(value)
            {
                out.push(self.unsupported(&join(path, keyword), &format!("\"{keyword}\"")));
            }
        }
        if let Some(Value::Array(_)) = reader.get("items")
            && reader.get("items") != writer.get("items")
        {
            out.push(self.unsupported(&join(path, "items"), "\"items\" as an array (tuple)"));
        }
        let (reader_types, writer_types) = (types_of(reader), types_of(writer));
        let missing = writer_types & !reader_types;
        if missing != 0 {
            let kind = if writer_types & reader_types == 0 {
                TypeChanged
            } else {
                TypeNarrowed
            };
            out.push(self.found(
                path,
                kind,
                format!(
                    "{} allows {} but {} accepts only {}; {}",
                    self.writer,
                    describe_types(writer_types),
                    self.reader,
                    describe_types(reader_types),
                    self.fix(
                        "widen the type (integer to number is safe, the reverse is not), or add a new property with the new type and upcast with \"convert\"",
                        "do not widen the type in the new version; add a new property instead"
                    )
                ),
            ));
        }
        let common = writer_types & reader_types;
        if let Some(value) = reader.get("pattern")
            && common & T_STR != 0
            && writer.get("pattern") != Some(value)
        {
            out.push(self.found(
                &join(path, "pattern"),
                PatternChanged,
                format!(
                    "{} requires strings to match the pattern {value} and {} does not require that pattern; patterns cannot be compared, so keep them identical",
                    self.reader, self.writer
                ),
            ));
        }
        if let Some(value) = reader.get("format")
            && common & T_STR != 0
            && writer.get("format") != Some(value)
        {
            out.push(self.found(
                &join(path, "format"),
                FormatChanged,
                format!(
                    "{} requires the format {value} and {} does not; keep the format identical in both versions",
                    self.reader, self.writer
                ),
            ));
        }
        if let Some(values) = listed_values(writer) {
            // The writer's values are all it can write: check each one.
            let rejected: Vec<&Value> = values
                .into_iter()
                .filter(|v| !self.value_fits(reader, v))
                .collect();
            if !rejected.is_empty() {
                out.push(self.found(
                    path,
                    EnumNarrowed,
                    format!(
                        "{} allows {} which {} rejects; {}",
                        self.writer,
                        quote_list(&rejected),
                        self.reader,
                        self.fix(
                            "keep every value earlier versions allowed in the enum",
                            "do not add enum values in the new version while earlier versions must read it"
                        )
                    ),
                ));
            }
            return out;
        }
        if let Some(values) = listed_values(reader) {
            out.push(self.found(
                path,
                EnumAdded,
                format!(
                    "{} only accepts {} but {} has no such restriction; {}",
                    self.reader,
                    quote_list(&values),
                    self.writer,
                    self.fix(
                        "drop the enum/const, or introduce it on a new property",
                        "keep the enum/const in the new version"
                    )
                ),
            ));
        }
        if common & T_NUM != 0 {
            self.numbers(reader, writer, path, common, &mut out);
        }
        if common & T_STR != 0 {
            self.counts(
                reader,
                writer,
                path,
                "minLength",
                "maxLength",
                "string length",
                &mut out,
            );
        }
        if common & T_ARR != 0 {
            self.arrays(reader, writer, path, &mut out);
        }
        if common & T_OBJ != 0 {
            self.counts(
                reader,
                writer,
                path,
                "minProperties",
                "maxProperties",
                "number of properties",
                &mut out,
            );
            self.objects(reader, writer, path, &mut out);
        }
        out
    }

    fn numbers(
        &mut self,
        reader: &Map<String, Value>,
        writer: &Map<String, Value>,
        path: &str,
        common: u8,
        out: &mut Vec<Found>,
    ) {
        use IncompatibilityKind::*;
        if let Some(r) = lower_bound(reader) {
            let bad = match lower_bound(writer) {
                None => true,
                Some(w) => r.0 > w.0 || (r.0 == w.0 && r.1 && !w.1),
            };
            if bad {
                out.push(self.found(
                    &join(path, "minimum"),
                    MinimumIncreased,
                    format!(
                        "{} requires numbers {} but {} allows {}; {}",
                        self.reader,
                        show_bound(r, true),
                        self.writer,
                        lower_bound(writer).map_or("any lower value".into(), |w| format!(
                            "numbers {}",
                            show_bound(w, true)
                        )),
                        self.fix(
                            "keep the minimum where it was or lower it",
                            "do not lower the minimum in the new version"
                        )
                    ),
                ));
            }
        }
        if let Some(r) = upper_bound(reader) {
            let bad = match upper_bound(writer) {
                None => true,
                Some(w) => r.0 < w.0 || (r.0 == w.0 && r.1 && !w.1),
            };
            if bad {
                out.push(self.found(
                    &join(path, "maximum"),
                    MaximumDecreased,
                    format!(
                        "{} requires numbers {} but {} allows {}; {}",
                        self.reader,
                        show_bound(r, false),
                        self.writer,
                        upper_bound(writer).map_or("any higher value".into(), |w| format!(
                            "numbers {}",
                            show_bound(w, false)
                        )),
                        self.fix(
                            "keep the maximum where it was or raise it",
                            "do not raise the maximum in the new version"
                        )
                    ),
                ));
            }
        }
        if let Some(r) = reader.get("multipleOf").and_then(Value::as_f64) {
            let integer_step = r == 1.0 && common & T_FRAC == 0;
            let ok = integer_step
                || writer
                    .get("multipleOf")
                    .and_then(Value::as_f64)
                    .is_some_and(|w| r > 0.0 && ((w / r).fract().abs() < 1e-9));
            if !ok {
                out.push(self.found(
                    &join(path, "multipleOf"),
                    MultipleOfChanged,
                    format!(
                        "{} requires multiples of {r} but {} allows numbers that are not; keep multipleOf identical, or make the writer's a multiple of the reader's",
                        self.reader, self.writer
                    ),
                ));
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn counts(
        &self,
        reader: &Map<String, Value>,
        writer: &Map<String, Value>,
        path: &str,
        min_key: &str,
        max_key: &str,
        what: &str,
        out: &mut Vec<Found>,
    ) {
        use IncompatibilityKind::*;
        let (min_kind, max_kind) = match min_key {
            "minLength" => (MinLengthIncreased, MaxLengthDecreased),
            "minItems" => (MinItemsIncreased, MaxItemsDecreased),
            _ => (MinPropertiesIncreased, MaxPropertiesDecreased),
        };
        if let Some(r) = as_u64(reader, min_key) {
            let w = as_u64(writer, min_key).unwrap_or(0);
            if r > w {
                out.push(self.found(
                    &join(path, min_key),
                    min_kind,
                    format!(
                        "{} requires a {what} of at least {r} but {} allows {w}; {}",
                        self.reader,
                        self.writer,
                        self.fix(
                            &format!("keep {min_key} at {w} or lower"),
                            &format!("do not lower {min_key} in the new version")
                        )
                    ),
                ));
            }
        }
        if let Some(r) = as_u64(reader, max_key) {
            let w = as_u64(writer, max_key);
            if w.is_none_or(|w| r < w) {
                out.push(self.found(
                    &join(path, max_key),
                    max_kind,
                    format!(
                        "{} allows a {what} of at most {r} but {} allows {}; {}",
                        self.reader,
                        self.writer,
                        w.map_or("any".into(), |w| w.to_string()),
                        self.fix(
                            &format!("keep {max_key} at least as high as before"),
                            &format!("do not raise {max_key} in the new version")
                        )
                    ),
                ));
            }
        }
    }

    fn arrays(
        &mut self,
        reader: &Map<String, Value>,
        writer: &Map<String, Value>,
        path: &str,
        out: &mut Vec<Found>,
    ) {
        self.counts(
            reader,
            writer,
            path,
            "minItems",
            "maxItems",
            "number of items",
            out,
        );
        if reader.get("uniqueItems") == Some(&Value::Bool(true))
            && writer.get("uniqueItems") != Some(&Value::Bool(true))
        {
            out.push(self.found(
                &join(path, "uniqueItems"),
                IncompatibilityKind::UniqueItemsAdded,
                format!(
                    "{} requires unique items but {} allows duplicates; {}",
                    self.reader,
                    self.writer,
                    self.fix("drop uniqueItems", "keep uniqueItems in the new version")
                ),
            ));
        }
        if let Some(items) = reader.get("items")
            && items.is_object() | items.is_boolean()
        {
            let writer_items = match writer.get("items") {
                Some(w) if !w.is_array() => w,
                _ => &TRUE,
            };
            let found = self.sub(items, writer_items, &join(path, "items"));
            out.extend(found);
        }
    }

    fn objects(
        &mut self,
        reader: &Map<String, Value>,
        writer: &Map<String, Value>,
        path: &str,
        out: &mut Vec<Found>,
    ) {
        use IncompatibilityKind::*;
        let (reader_props, writer_props) = (properties(reader), properties(writer));
        let (reader_more, writer_more) = (additional(reader), additional(writer));
        // patternProperties on the writer may admit any name: treat it as open there.
        let writer_more = match writer_more {
            Additional::Closed if writer.contains_key("patternProperties") => Additional::Open,
            other => other,
        };
        for (name, writer_prop) in writer_props {
            let prop_path = join(&join(path, "properties"), name);
            match reader_props.get(name) {
                Some(reader_prop) => {
                    let found = self.sub(reader_prop, writer_prop, &prop_path);
                    out.extend(found);
                }
                None => match reader_more {
                    Additional::Open => {}
                    Additional::Closed => out.push(self.found(
                        &prop_path,
                        PropertyRemovedFromClosedContentModel,
                        format!(
                            "{} declares property '{name}' but {} does not and rejects undeclared properties (additionalProperties: false); {}",
                            self.writer,
                            self.reader,
                            self.fix(
                                &format!("keep '{name}' declared (it may be optional), or remove it with an upcaster step {{\"op\":\"remove\",\"path\":\"{}\"}}", prop_path.replace("/properties/", "/")),
                                &format!("keep declaring '{name}' in the new version, or open the content model of the earlier one")
                            )
                        ),
                    )),
                    Additional::Schema(more) => {
                        if !self.sub(more, writer_prop, &prop_path).is_empty() {
                            out.push(self.found(
                                &prop_path,
                                PropertyRemovedNotCoveredByAdditionalProperties,
                                format!(
                                    "{} declares property '{name}' whose values the additionalProperties schema of {} rejects; keep '{name}' declared",
                                    self.writer, self.reader
                                ),
                            ));
                        }
                    }
                },
            }
        }
        for (name, reader_prop) in reader_props {
            if writer_props.contains_key(name) {
                continue;
            }
            let prop_path = join(&join(path, "properties"), name);
            match writer_more {
                Additional::Closed => {}
                Additional::Open => {
                    if !self.sub(reader_prop, &TRUE, &prop_path).is_empty() {
                        out.push(self.found(
                            &prop_path,
                            PropertyAddedToOpenContentModel,
                            format!(
                                "{} declares property '{name}' that {} does not declare; its content model is open (additionalProperties is not false), so its data may already hold '{name}' with any value; {}",
                                self.reader,
                                self.writer,
                                self.fix(
                                    "close the content model with \"additionalProperties\": false in every version (then adding optional properties is compatible), or use the mode NONE",
                                    "close the content model with \"additionalProperties\": false in every version, or use the mode NONE"
                                )
                            ),
                        ));
                    }
                }
                Additional::Schema(more) => {
                    if !self.sub(reader_prop, more, &prop_path).is_empty() {
                        out.push(self.found(
                            &prop_path,
                            PropertyAddedNotCoveredByAdditionalProperties,
                            format!(
                                "{} declares property '{name}' with a schema narrower than the additionalProperties of {}, whose data may hold '{name}' with other values; make '{name}' accept what additionalProperties allowed",
                                self.reader, self.writer
                            ),
                        ));
                    }
                }
            }
        }
        let writer_required = required(writer);
        for name in required(reader) {
            if writer_required.contains(name) {
                continue;
            }
            let has_default = reader_props
                .get(name)
                .and_then(Value::as_object)
                .is_some_and(|p| p.contains_key("default"));
            if has_default {
                continue;
            }
            out.push(self.found(
                &join(&join(path, "properties"), name),
                RequiredPropertyAdded,
                format!(
                    "{} requires property '{name}' but {} does not, so its data may lack it; {}",
                    self.reader,
                    self.writer,
                    self.fix(
                        &format!("give the new required property '{name}' a default or make it optional (or add it with an upcaster step {{\"op\":\"add\"}})"),
                        &format!("keep '{name}' required in the new version")
                    )
                ),
            ));
        }
        let more_path = join(path, "additionalProperties");
        match (&reader_more, &writer_more) {
            (Additional::Open, _) | (_, Additional::Closed) => {}
            (Additional::Closed, _) => out.push(self.found(
                &more_path,
                AdditionalPropertiesNarrowed,
                format!(
                    "{} rejects undeclared properties (additionalProperties: false) but {} accepts them; {}",
                    self.reader,
                    self.writer,
                    self.fix("keep the content model open, or close it in the first version", "do not open the content model in the new version")
                ),
            )),
            (Additional::Schema(r), Additional::Open) => {
                if !self.sub(r, &TRUE, &more_path).is_empty() {
                    out.push(self.found(
                        &more_path,
                        AdditionalPropertiesNarrowed,
                        format!(
                            "{} restricts undeclared properties with an additionalProperties schema but {} accepts any; keep additionalProperties as it was",
                            self.reader, self.writer
                        ),
                    ));
                }
            }
            (Additional::Schema(r), Additional::Schema(w)) => {
                let found = self.sub(r, w, &more_path);
                out.extend(found);
            }
        }
    }

    /// Whether one concrete value (from the writer's `enum`/`const`) passes the reader's
    /// scalar constraints. Objects are checked for required members only.
    fn value_fits(&self, reader: &Map<String, Value>, value: &Value) -> bool {
        let bits = value_bits(value);
        let types = types_of(reader);
        if bits & types == 0 && !(bits == T_INT && types & T_NUM != 0) {
            return false;
        }
        if let Some(values) = listed_values(reader)
            && !values.contains(&value)
        {
            return false;
        }
        match value {
            Value::Number(n) => {
                let Some(x) = n.as_f64() else { return true };
                let low_ok =
                    lower_bound(reader).is_none_or(|(m, ex)| if ex { x > m } else { x >= m });
                let high_ok =
                    upper_bound(reader).is_none_or(|(m, ex)| if ex { x < m } else { x <= m });
                let step_ok = reader
                    .get("multipleOf")
                    .and_then(Value::as_f64)
                    .is_none_or(|m| m > 0.0 && (x / m).fract().abs() < 1e-9);
                low_ok && high_ok && step_ok
            }
            Value::String(s) => {
                let chars = s.chars().count() as u64;
                as_u64(reader, "minLength").is_none_or(|m| chars >= m)
                    && as_u64(reader, "maxLength").is_none_or(|m| chars <= m)
            }
            Value::Object(o) => required(reader).iter().all(|r| o.contains_key(*r)),
            _ => true,
        }
    }
}
