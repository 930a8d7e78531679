//! Shared helpers: the reference flag files and small constructors.

use std::path::PathBuf;

use proteus_flags::{Compiled, FlagSet, FlagSetBuilder, Validation};
use serde_json::{Map, Value};

/// A fixed "now" for `$flagd.timestamp` (2027-01-15).
pub const NOW_S: i64 = 1_800_000_000;

/// The flagd reference flag files (`shared/data/flagd/flags`).
pub fn flags_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/flagd/flags")
}

/// Every reference file, sorted by name.
pub fn flag_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(flags_dir())
        .expect("the flagd reference files are in shared/data/flagd/flags")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).expect("readable flag file");
            (name, text)
        })
        .collect();
    files.sort();
    files
}

pub fn flag_file(name: &str) -> String {
    std::fs::read_to_string(flags_dir().join(name)).expect("readable flag file")
}

/// Compiles one document in flagd-compatible mode.
pub fn compatible(text: &str) -> Compiled {
    FlagSetBuilder::new(Validation::FlagdCompatible)
        .with_json(text)
        .build()
        .expect("loads in flagd-compatible mode")
}

/// Compiles one document given as a value, strictly.
pub fn strict(document: Value) -> FlagSet {
    match FlagSetBuilder::new(Validation::Strict)
        .with_value(document)
        .build()
    {
        Ok(compiled) => compiled.flag_set,
        Err(errors) => panic!("expected a valid definition: {errors:?}"),
    }
}

/// The testbed's `allFlags.json`: every file except `selector-*` (and the evaluator kit's
/// `testkit-flags.json`), deep-merged in name order as flagd-testbed's launchpad does.
pub fn all_flags_document() -> Value {
    let mut merged = Value::Object(Map::new());
    for (name, text) in flag_files() {
        if name.starts_with("selector-") || name == "testkit-flags.json" {
            continue;
        }
        deep_merge(
            &mut merged,
            serde_json::from_str(&text).expect("valid JSON"),
        );
    }
    merged
}

fn deep_merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                match into.get_mut(&key) {
                    Some(existing) => deep_merge(existing, value),
                    None => {
                        into.insert(key, value);
                    }
                }
            }
        }
        (into, from) => *into = from,
    }
}

/// A context from a JSON object literal.
pub fn context(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("a context is an object, not {other}"),
    }
}
