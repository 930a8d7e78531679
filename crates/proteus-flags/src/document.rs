//! The structure of a flagd document: reading the JSON into typed definitions, with every
//! structural problem reported at its path. Targeting rules stay JSON here; `logic::compile`
//! turns them into evaluation trees.

use serde_json::{Map, Value};

pub(crate) use crate::diagnostics::Diagnostics;
use crate::error::{DefinitionErrorKind as Kind, json_type};
use crate::path::Path;
use crate::set::{FlagState, VariantKind};
use crate::{EVALUATORS_MAX, FLAGS_MAX, PREREQUISITES_MAX, SEGMENTS_MAX, VARIANTS_MAX};

const DOCUMENT_PROPERTIES: &str = "`$schema`, `flags`, `$evaluators`, `metadata`, `segments`";
const FLAG_PROPERTIES: &str =
    "`state`, `variants`, `defaultVariant`, `targeting`, `metadata`, `prerequisites`";
const PREREQUISITE_PROPERTIES: &str = "`flag`, `variants`";

/// One parsed document.
#[derive(Debug, Default)]
pub(crate) struct Document {
    pub(crate) flags: Vec<FlagDefinition>,
    pub(crate) evaluators: Map<String, Value>,
    pub(crate) segments: Vec<(String, Value)>,
    pub(crate) metadata: Map<String, Value>,
}

/// One flag as written, before its targeting is compiled.
#[derive(Debug)]
pub(crate) struct FlagDefinition {
    pub(crate) key: String,
    /// Where the flag is: `/flags/<key>`, or `/flags/<index>` in the array form.
    pub(crate) path: Path,
    pub(crate) state: FlagState,
    pub(crate) variants: Vec<(String, Value)>,
    pub(crate) kind: VariantKind,
    pub(crate) default_variant: Option<String>,
    pub(crate) targeting: Option<Value>,
    pub(crate) metadata: Map<String, Value>,
    pub(crate) prerequisites: Vec<PrerequisiteDefinition>,
}

/// `{"flag": "other-key", "variants": ["on"]}`.
#[derive(Debug)]
pub(crate) struct PrerequisiteDefinition {
    pub(crate) flag: String,
    pub(crate) variants: Vec<String>,
}

/// Reads a whole document. Returns what could be read; problems go to `diag`.
pub(crate) fn parse_document(value: Value, diag: &mut Diagnostics) -> Document {
    let root = Path::root();
    let mut document = Document::default();
    let Value::Object(mut object) = value else {
        diag.error(
            &root,
            Kind::WrongType {
                expected: "an object",
                found: json_type(&value),
            },
        );
        return document;
    };
    for name in object.keys() {
        if !matches!(
            name.as_str(),
            "$schema" | "flags" | "$evaluators" | "metadata" | "segments"
        ) {
            diag.rule(
                &root.key(name),
                Kind::UnknownProperty {
                    name: name.clone(),
                    expected: DOCUMENT_PROPERTIES,
                },
            );
        }
    }
    if let Some(metadata) = object.remove("metadata") {
        document.metadata = parse_metadata(metadata, &root.key("metadata"), diag);
    }
    if let Some(evaluators) = object.remove("$evaluators") {
        let path = root.key("$evaluators");
        document.evaluators = named_rules(evaluators, &path, "evaluators", EVALUATORS_MAX, diag)
            .into_iter()
            .collect();
    }
    if let Some(segments) = object.remove("segments") {
        let path = root.key("segments");
        document.segments = named_rules(segments, &path, "segments", SEGMENTS_MAX, diag);
    }
    match object.remove("flags") {
        None => diag.error(&root, Kind::MissingProperty("flags")),
        Some(flags) => document.flags = parse_flags(flags, &root.key("flags"), diag),
    }
    document
}

fn named_rules(
    value: Value,
    path: &Path,
    what: &'static str,
    max: usize,
    diag: &mut Diagnostics,
) -> Vec<(String, Value)> {
    let Value::Object(map) = value else {
        diag.error(
            path,
            Kind::WrongType {
                expected: "an object",
                found: json_type(&value),
            },
        );
        return Vec::new();
    };
    if map.len() > max {
        diag.error(
            path,
            Kind::TooMany {
                what,
                count: map.len(),
                max,
            },
        );
        return Vec::new();
    }
    let mut rules = Vec::with_capacity(map.len());
    for (name, rule) in map {
        if name.is_empty() {
            diag.error(&path.key(&name), Kind::EmptyKey);
        } else {
            rules.push((name, rule));
        }
    }
    rules
}

fn parse_flags(value: Value, path: &Path, diag: &mut Diagnostics) -> Vec<FlagDefinition> {
    let count = match &value {
        Value::Object(map) => map.len(),
        Value::Array(items) => items.len(),
        other => {
            let found = json_type(other);
            diag.error(
                path,
                Kind::WrongType {
                    expected: "an object (or an array)",
                    found,
                },
            );
            return Vec::new();
        }
    };
    if count > FLAGS_MAX {
        diag.error(
            path,
            Kind::TooMany {
                what: "flags",
                count,
                max: FLAGS_MAX,
            },
        );
        return Vec::new();
    }
    let mut flags = Vec::with_capacity(count);
    match value {
        Value::Object(map) => {
            for (key, flag) in map {
                let flag_path = path.key(&key);
                if key.is_empty() {
                    diag.error(&flag_path, Kind::EmptyKey);
                } else if let Some(flag) = parse_flag(key, flag, flag_path, false, diag) {
                    flags.push(flag);
                }
            }
        }
        Value::Array(items) => {
            for (index, flag) in items.into_iter().enumerate() {
                let flag_path = path.index(index);
                let key = match flag.get("key") {
                    Some(Value::String(key)) if !key.is_empty() => key.clone(),
                    Some(Value::String(_)) => {
                        diag.error(&flag_path.key("key"), Kind::EmptyKey);
                        continue;
                    }
                    Some(other) => {
                        let found = json_type(other);
                        diag.error(
                            &flag_path.key("key"),
                            Kind::WrongType {
                                expected: "a string",
                                found,
                            },
                        );
                        continue;
                    }
                    None => {
                        diag.error(&flag_path, Kind::MissingProperty("key"));
                        continue;
                    }
                };
                if flags.iter().any(|f: &FlagDefinition| f.key == key) {
                    diag.error(&flag_path.key("key"), Kind::DuplicateFlag(key));
                } else if let Some(flag) = parse_flag(key, flag, flag_path, true, diag) {
                    flags.push(flag);
                }
            }
        }
        _ => unreachable!("checked above"),
    }
    flags
}

fn parse_flag(
    key: String,
    value: Value,
    path: Path,
    keyed: bool,
    diag: &mut Diagnostics,
) -> Option<FlagDefinition> {
    let Value::Object(mut object) = value else {
        diag.error(
            &path,
            Kind::WrongType {
                expected: "an object",
                found: json_type(&value),
            },
        );
        return None;
    };
    let errors_before = diag.errors.len();
    for name in object.keys() {
        let known = matches!(
            name.as_str(),
            "state" | "variants" | "defaultVariant" | "targeting" | "metadata" | "prerequisites"
        ) || (keyed && name == "key");
        if !known {
            diag.rule(
                &path.key(name),
                Kind::UnknownProperty {
                    name: name.clone(),
                    expected: FLAG_PROPERTIES,
                },
            );
        }
    }
    let state = match object.remove("state") {
        Some(Value::String(s)) if s == "ENABLED" => FlagState::Enabled,
        Some(Value::String(s)) if s == "DISABLED" => FlagState::Disabled,
        Some(other) => {
            diag.error(&path.key("state"), Kind::InvalidState(other.to_string()));
            FlagState::Enabled
        }
        None => {
            diag.error(&path, Kind::MissingProperty("state"));
            FlagState::Enabled
        }
    };
    let (variants, kind) = match object.remove("variants") {
        Some(variants) => parse_variants(variants, &path.key("variants"), diag),
        None => {
            diag.error(&path, Kind::MissingProperty("variants"));
            (Vec::new(), VariantKind::Boolean)
        }
    };
    let default_variant = match object.remove("defaultVariant") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) if name.is_empty() && !diag.is_strict() => None,
        Some(Value::String(name)) => {
            if !variants.is_empty() && !variants.iter().any(|(v, _)| *v == name) {
                let known = variant_list(&variants);
                diag.error(
                    &path.key("defaultVariant"),
                    Kind::UnknownVariant {
                        name: name.clone(),
                        known,
                    },
                );
            }
            Some(name)
        }
        Some(other) => {
            let found = json_type(&other);
            diag.error(
                &path.key("defaultVariant"),
                Kind::WrongType {
                    expected: "a string or null",
                    found,
                },
            );
            None
        }
    };
    let targeting = match object.remove("targeting") {
        None | Some(Value::Null) => None,
        Some(Value::Object(rule)) if rule.is_empty() => None,
        Some(rule) => {
            if !rule.is_object() {
                let found = json_type(&rule);
                diag.rule(
                    &path.key("targeting"),
                    Kind::WrongType {
                        expected: "an object",
                        found,
                    },
                );
            }
            Some(rule)
        }
    };
    let metadata = match object.remove("metadata") {
        Some(metadata) => parse_metadata(metadata, &path.key("metadata"), diag),
        None => Map::new(),
    };
    let prerequisites = match object.remove("prerequisites") {
        Some(value) => parse_prerequisites(value, &path.key("prerequisites"), diag),
        None => Vec::new(),
    };
    if diag.errors.len() > errors_before {
        return None;
    }
    Some(FlagDefinition {
        key,
        path,
        state,
        variants,
        kind,
        default_variant,
        targeting,
        metadata,
        prerequisites,
    })
}

fn parse_variants(
    value: Value,
    path: &Path,
    diag: &mut Diagnostics,
) -> (Vec<(String, Value)>, VariantKind) {
    let Value::Object(map) = value else {
        diag.error(
            path,
            Kind::WrongType {
                expected: "an object",
                found: json_type(&value),
            },
        );
        return (Vec::new(), VariantKind::Boolean);
    };
    if map.is_empty() {
        diag.error(path, Kind::NoVariants);
        return (Vec::new(), VariantKind::Boolean);
    }
    if map.len() > VARIANTS_MAX {
        diag.error(
            path,
            Kind::TooMany {
                what: "variants",
                count: map.len(),
                max: VARIANTS_MAX,
            },
        );
        return (Vec::new(), VariantKind::Boolean);
    }
    let mut kind: Option<(VariantKind, String)> = None;
    let mut variants = Vec::with_capacity(map.len());
    for (name, value) in map {
        let variant_path = path.key(&name);
        if name.is_empty() {
            diag.error(&variant_path, Kind::EmptyKey);
            continue;
        }
        let this_kind = match &value {
            Value::Bool(_) => VariantKind::Boolean,
            Value::String(_) => VariantKind::String,
            Value::Number(_) => VariantKind::Number,
            Value::Object(_) => VariantKind::Object,
            other => {
                diag.error(&variant_path, Kind::InvalidVariantValue(json_type(other)));
                continue;
            }
        };
        match &kind {
            None => kind = Some((this_kind, name.clone())),
            Some((first_kind, first)) if *first_kind != this_kind => {
                let error = Kind::MixedVariantTypes {
                    first: first.clone(),
                    expected: first_kind.article_name(),
                    variant: name.clone(),
                    found: this_kind.article_name(),
                };
                diag.error(&variant_path, error);
                continue;
            }
            Some(_) => {}
        }
        variants.push((name, value));
    }
    (
        variants,
        kind.map_or(VariantKind::Boolean, |(kind, _)| kind),
    )
}

fn parse_metadata(value: Value, path: &Path, diag: &mut Diagnostics) -> Map<String, Value> {
    let Value::Object(map) = value else {
        diag.error(
            path,
            Kind::WrongType {
                expected: "an object",
                found: json_type(&value),
            },
        );
        return Map::new();
    };
    let mut metadata = Map::new();
    for (key, value) in map {
        match value {
            // flagd copies only non-nil metadata values.
            Value::Null => {}
            Value::Array(_) | Value::Object(_) => {
                diag.rule(
                    &path.key(&key),
                    Kind::InvalidMetadataValue(json_type(&value)),
                );
                metadata.insert(key, value);
            }
            scalar => {
                metadata.insert(key, scalar);
            }
        }
    }
    metadata
}

fn parse_prerequisites(
    value: Value,
    path: &Path,
    diag: &mut Diagnostics,
) -> Vec<PrerequisiteDefinition> {
    let Value::Array(items) = value else {
        diag.error(
            path,
            Kind::WrongType {
                expected: "an array",
                found: json_type(&value),
            },
        );
        return Vec::new();
    };
    if items.len() > PREREQUISITES_MAX {
        let error = Kind::TooMany {
            what: "prerequisites",
            count: items.len(),
            max: PREREQUISITES_MAX,
        };
        diag.error(path, error);
        return Vec::new();
    }
    let mut prerequisites = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let item_path = path.index(index);
        let Value::Object(mut object) = item else {
            diag.error(
                &item_path,
                Kind::WrongType {
                    expected: "an object",
                    found: json_type(&item),
                },
            );
            continue;
        };
        for name in object.keys() {
            if name != "flag" && name != "variants" {
                let error = Kind::UnknownProperty {
                    name: name.clone(),
                    expected: PREREQUISITE_PROPERTIES,
                };
                diag.error(&item_path.key(name), error);
            }
        }
        let flag = match object.remove("flag") {
            Some(Value::String(flag)) if !flag.is_empty() => flag,
            Some(Value::String(_)) => {
                diag.error(&item_path.key("flag"), Kind::EmptyKey);
                continue;
            }
            Some(other) => {
                let found = json_type(&other);
                diag.error(
                    &item_path.key("flag"),
                    Kind::WrongType {
                        expected: "a string",
                        found,
                    },
                );
                continue;
            }
            None => {
                diag.error(&item_path, Kind::MissingProperty("flag"));
                continue;
            }
        };
        let variants_path = item_path.key("variants");
        let variants = match object.remove("variants") {
            Some(Value::Array(names)) if !names.is_empty() => {
                let mut variants = Vec::with_capacity(names.len());
                for (i, name) in names.into_iter().enumerate() {
                    match name {
                        Value::String(name) => variants.push(name),
                        other => {
                            let found = json_type(&other);
                            diag.error(
                                &variants_path.index(i),
                                Kind::WrongType {
                                    expected: "a string",
                                    found,
                                },
                            );
                        }
                    }
                }
                variants
            }
            Some(Value::Array(_)) => {
                let reason = "list at least one variant of the prerequisite flag".to_owned();
                diag.error(
                    &variants_path,
                    Kind::InvalidArgument {
                        operator: "prerequisites",
                        reason,
                    },
                );
                continue;
            }
            Some(other) => {
                let found = json_type(&other);
                diag.error(
                    &variants_path,
                    Kind::WrongType {
                        expected: "an array of strings",
                        found,
                    },
                );
                continue;
            }
            None => {
                diag.error(&item_path, Kind::MissingProperty("variants"));
                continue;
            }
        };
        prerequisites.push(PrerequisiteDefinition { flag, variants });
    }
    prerequisites
}

/// `a, b, c` (truncated after a few names), for messages.
pub(crate) fn variant_list<T>(variants: &[(String, T)]) -> String {
    const SHOWN_MAX: usize = 10;
    let mut out = String::new();
    for (i, (name, _)) in variants.iter().take(SHOWN_MAX).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
    }
    if variants.len() > SHOWN_MAX {
        out.push_str(", ...");
    }
    out
}
