//! Flag files on disk: a flagd file, or a directory of them, loaded into one flag set and
//! polled for changes.
//!
//! Several files are merged into one document: their flags, `$evaluators`, `segments` and
//! `metadata` side by side. The same flag key (or evaluator or segment name) in two files is
//! refused with both file names, since which one wins would otherwise depend on file order.
//! Files are checked like flagd checks them ([`ValidationMode::Flagd`]): what flagd loads,
//! Proteus loads.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use proteus_flagsets::{Change, FlagSetName, ValidationMode};
use serde_json::{Map, Value};

use crate::{Author, FlagService};

/// Most files one directory may contribute.
pub const FILES_MAX: usize = 1_000;
/// Default interval between two looks at the files.
pub const WATCH_INTERVAL_MS_DEFAULT: u64 = 1_000;
/// Largest flag file read, in bytes.
pub const FILE_BYTES_MAX: u64 = proteus_flagsets::audit::DOCUMENT_BYTES_MAX as u64;

/// The members of a flagd document that files contribute to the merged one.
const MERGED_MEMBERS: [&str; 4] = ["flags", "$evaluators", "segments", "metadata"];

/// The flag files at `path`: the file itself, or the `.json` files of the directory (not
/// recursive), sorted by name.
pub fn flag_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let metadata = std::fs::metadata(path)
        .map_err(|e| format!("cannot read flag path {}: {e}", path.display()))?;
    if metadata.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files = Vec::new();
    let entries = std::fs::read_dir(path)
        .map_err(|e| format!("cannot list flag directory {}: {e}", path.display()))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| format!("cannot list flag directory {}: {e}", path.display()))?;
        let file = entry.path();
        if file.extension().is_some_and(|e| e == "json") && file.is_file() {
            files.push(file);
        }
    }
    if files.len() > FILES_MAX {
        return Err(format!(
            "flag directory {} holds {} .json files, more than the {FILES_MAX} allowed",
            path.display(),
            files.len()
        ));
    }
    if files.is_empty() {
        return Err(format!(
            "flag directory {} holds no .json flag files",
            path.display()
        ));
    }
    files.sort();
    Ok(files)
}

fn read_document(file: &Path) -> Result<Value, String> {
    let size = std::fs::metadata(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?
        .len();
    if size > FILE_BYTES_MAX {
        return Err(format!(
            "{} is {size} bytes, more than the {FILE_BYTES_MAX} a flag file may be",
            file.display()
        ));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let document: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not valid JSON: {e}", file.display()))?;
    if !document.is_object() {
        return Err(format!(
            "{} is not a flagd document (a JSON object with \"flags\")",
            file.display()
        ));
    }
    Ok(document)
}

/// Reads and merges the flag files at `path` into one document.
pub fn load(path: &Path) -> Result<Value, String> {
    let files = flag_files(path)?;
    if files.len() == 1 {
        return read_document(&files[0]);
    }
    let mut merged = Map::new();
    // Which file each merged entry came from, to name both in a clash.
    let mut origin: std::collections::HashMap<(String, String), PathBuf> = Default::default();
    for file in &files {
        let document = read_document(file)?;
        for member in MERGED_MEMBERS {
            let Some(entries) = document.get(member) else {
                continue;
            };
            let Some(entries) = entries.as_object() else {
                return Err(format!(
                    "{}: \"{member}\" must be an object to be merged with other files",
                    file.display()
                ));
            };
            let target = merged
                .entry(member)
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("merged members are objects");
            for (name, value) in entries {
                let key = (member.to_owned(), name.clone());
                if member != "metadata"
                    && let Some(first) = origin.get(&key)
                {
                    return Err(format!(
                        "\"{member}\" entry '{name}' is defined in both {} and {}; keep one",
                        first.display(),
                        file.display()
                    ));
                }
                origin.insert(key, file.clone());
                target.insert(name.clone(), value.clone());
            }
        }
    }
    merged
        .entry("flags")
        .or_insert_with(|| Value::Object(Map::new()));
    Ok(Value::Object(merged))
}

/// Loads the files at `path` into `set` as a new version (if they changed anything).
pub async fn apply(
    service: &FlagService,
    set: &FlagSetName,
    path: &Path,
) -> Result<Option<u64>, String> {
    let document = load(path)?;
    let author = Author {
        actor: format!("file:{}", path.display()),
        comment: None,
    };
    service
        .apply(
            set,
            Change::PutSet { document },
            author,
            ValidationMode::Flagd,
            None,
        )
        .await
        .map(|revision| revision.map(|r| r.version))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// What the watcher compares between two looks: each file's name, size and modification time.
fn fingerprint(path: &Path) -> Option<Vec<(PathBuf, u64, SystemTime)>> {
    let files = flag_files(path).ok()?;
    files
        .into_iter()
        .map(|file| {
            let metadata = std::fs::metadata(&file).ok()?;
            Some((file, metadata.len(), metadata.modified().ok()?))
        })
        .collect()
}

/// Polls the files at `path` every `interval` and applies them to `set` when they change,
/// until `stop` resolves. A change that does not load (bad JSON, invalid flags) is logged and
/// the set keeps its current version until the files are fixed.
pub async fn watch(
    service: FlagService,
    set: FlagSetName,
    path: PathBuf,
    interval: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut seen = fingerprint(&path);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(interval) => {}
        }
        let now = fingerprint(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match apply(&service, &set, &path).await {
            Ok(Some(version)) => {
                tracing::info!(set = %set, version, path = %path.display(), "flag files reloaded");
            }
            Ok(None) => {}
            Err(error) => tracing::error!(
                set = %set, path = %path.display(), %error,
                "flag files changed but do not load; the flag set keeps its current version"
            ),
        }
    }
}
