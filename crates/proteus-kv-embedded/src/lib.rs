//! The embedded [`KvStore`]: one redb file (`proteus serve` uses `<data_dir>/kv.redb`).
//!
//! One table, `entries`, maps `namespace \0 key` to the value. Namespaces cannot hold `\0`
//! and every byte of one sorts above it, so a namespace's keys are one contiguous range of the
//! table (`namespace \0` up to `namespace \x01`), ordered as the port wants (by key bytes), and
//! a prefix scan is a range scan.
//!
//! Every commit is one redb write transaction: its checks are read inside it (redb runs one
//! writer at a time, so nothing changes between a check and the writes) and it commits with
//! fsync (`Durability::Immediate`), so a commit that returned survives kill -9 and power loss
//! and one cut short leaves the previous state. Reads (`get_many`, `scan`) use one read
//! transaction, a snapshot. All redb work runs on tokio's blocking threads.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use proteus_kv::{
    KvCommit, KvError, KvStore, KvWrite, Namespace, check_commit, check_keys, check_scan,
    display_key,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

/// The store's file name inside a data directory, as `proteus serve` opens it.
pub const FILE_NAME: &str = "kv.redb";

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");

#[derive(Clone)]
pub struct EmbeddedKvStore {
    db: Arc<Database>,
}

/// A redb failure: corruption as [`KvError::Corrupt`], anything else (I/O, a poisoned
/// transaction) as [`KvError::Unavailable`], not retriable.
fn storage(error: impl Into<redb::Error>) -> KvError {
    match error.into() {
        redb::Error::Corrupted(message) => KvError::Corrupt(message),
        other => KvError::Unavailable {
            message: format!("the embedded key-value store failed: {other}"),
            retriable: false,
        },
    }
}

/// `namespace \0`: what every stored key of `namespace` starts with.
fn namespace_start(namespace: &Namespace) -> Vec<u8> {
    let mut start = Vec::with_capacity(namespace.as_str().len() + 1);
    start.extend_from_slice(namespace.as_str().as_bytes());
    start.push(0);
    start
}

/// `namespace \x01`: the first stored key after every key of `namespace`.
fn namespace_end(namespace: &Namespace) -> Vec<u8> {
    let mut end = namespace_start(namespace);
    *end.last_mut().expect("namespace_start ends with \\0") = 1;
    end
}

/// The stored key of `key` in `namespace`.
fn stored_key(namespace: &Namespace, key: &[u8]) -> Vec<u8> {
    let mut stored = namespace_start(namespace);
    stored.extend_from_slice(key);
    stored
}

impl EmbeddedKvStore {
    /// Opens the store in the redb file at `path`, creating the file (and its directory) when
    /// missing. The file is locked while open: a second open of it fails until every handle of
    /// the first is dropped.
    pub fn open(path: &Path) -> Result<Self, KvError> {
        let unavailable = |what: String| KvError::Unavailable {
            message: what,
            retriable: false,
        };
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|e| match redb::Error::from(e) {
            redb::Error::Corrupted(message) => {
                KvError::Corrupt(format!("{}: {message}", path.display()))
            }
            other => unavailable(format!("cannot open {}: {other}", path.display())),
        })?;
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        txn.open_table(ENTRIES).map_err(storage)?;
        txn.commit().map_err(storage)?;
        Ok(EmbeddedKvStore { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, KvError> + Send + 'static,
    ) -> Result<T, KvError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(|e| KvError::Unavailable {
                message: format!("an embedded key-value store task failed: {e}"),
                retriable: false,
            })?
    }
}

/// Evaluates the checks of `commit` and applies its writes in the open write transaction.
fn apply(
    txn: &redb::WriteTransaction,
    namespace: &Namespace,
    commit: KvCommit,
) -> Result<(), KvError> {
    let mut table = txn.open_table(ENTRIES).map_err(storage)?;
    for check in &commit.checks {
        let current = table
            .get(stored_key(namespace, &check.key).as_slice())
            .map_err(storage)?;
        let holds = match (&current, &check.expected) {
            (None, None) => true,
            (Some(current), Some(expected)) => current.value() == expected.as_slice(),
            _ => false,
        };
        if !holds {
            return Err(KvError::Conflict {
                namespace: namespace.to_string(),
                key: display_key(&check.key),
            });
        }
    }
    for write in commit.writes {
        match write {
            KvWrite::Put { key, value } => {
                table
                    .insert(stored_key(namespace, &key).as_slice(), value.as_slice())
                    .map_err(storage)?;
            }
            KvWrite::Delete { key } => {
                table
                    .remove(stored_key(namespace, &key).as_slice())
                    .map_err(storage)?;
            }
        }
    }
    Ok(())
}

#[async_trait]
impl KvStore for EmbeddedKvStore {
    async fn get_many(
        &self,
        namespace: &Namespace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        check_keys(keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let stored: Vec<Vec<u8>> = keys.iter().map(|k| stored_key(namespace, k)).collect();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(ENTRIES).map_err(storage)?;
            stored
                .iter()
                .map(|key| {
                    Ok(table
                        .get(key.as_slice())
                        .map_err(storage)?
                        .map(|value| value.value().to_vec()))
                })
                .collect()
        })
        .await
    }

    async fn commit(&self, namespace: &Namespace, commit: KvCommit) -> Result<(), KvError> {
        check_commit(&commit)?;
        let namespace = namespace.clone();
        self.blocking(move |db| {
            let mut txn = db.begin_write().map_err(storage)?;
            txn.set_durability(Durability::Immediate).map_err(storage)?;
            match apply(&txn, &namespace, commit) {
                Ok(()) => txn.commit().map_err(storage),
                Err(error) => {
                    txn.abort().map_err(storage)?;
                    Err(error)
                }
            }
        })
        .await
    }

    async fn scan(
        &self,
        namespace: &Namespace,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError> {
        check_scan(prefix, limit)?;
        let skip = namespace_start(namespace).len();
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(stored_key(namespace, after)),
            _ => Bound::Included(stored_key(namespace, prefix)),
        };
        let end = namespace_end(namespace);
        let prefix = prefix.to_vec();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(storage)?;
            let table = txn.open_table(ENTRIES).map_err(storage)?;
            let start = match &start {
                Bound::Excluded(key) => Bound::Excluded(key.as_slice()),
                Bound::Included(key) => Bound::Included(key.as_slice()),
                Bound::Unbounded => Bound::Unbounded,
            };
            let range = table
                .range::<&[u8]>((start, Bound::Excluded(end.as_slice())))
                .map_err(storage)?;
            let mut entries = Vec::new();
            for entry in range {
                let (key, value) = entry.map_err(storage)?;
                let key = &key.value()[skip..];
                if !key.starts_with(&prefix) {
                    break;
                }
                entries.push((key.to_vec(), value.value().to_vec()));
                if entries.len() == limit {
                    break;
                }
            }
            Ok(entries)
        })
        .await
    }

    async fn clear(&self, namespace: &Namespace) -> Result<u64, KvError> {
        let start = namespace_start(namespace);
        let end = namespace_end(namespace);
        self.blocking(move |db| {
            let mut txn = db.begin_write().map_err(storage)?;
            txn.set_durability(Durability::Immediate).map_err(storage)?;
            let count = {
                let mut table = txn.open_table(ENTRIES).map_err(storage)?;
                let mut count = 0u64;
                for entry in table
                    .range::<&[u8]>(start.as_slice()..end.as_slice())
                    .map_err(storage)?
                {
                    entry.map_err(storage)?;
                    count += 1;
                }
                if count > 0 {
                    table
                        .retain_in::<&[u8], _>(start.as_slice()..end.as_slice(), |_, _| false)
                        .map_err(storage)?;
                }
                count
            };
            if count == 0 {
                txn.abort().map_err(storage)?;
            } else {
                txn.commit().map_err(storage)?;
            }
            Ok(count)
        })
        .await
    }
}
