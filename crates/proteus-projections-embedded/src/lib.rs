//! The embedded [`ReadModelStore`]: one redb file, `<data_dir>/readmodels.redb`.
//!
//! Tables:
//!
//! - `projections`: name → the projection's record (definition and run state) as JSON;
//! - `checkpoints`: name → its checkpoint as JSON;
//! - `docs/<name>`, one per projection: key → document as JSON. A table per projection makes
//!   `reset` and `drop` one `delete_table` instead of a scan, and keeps scans of one
//!   projection away from the others' documents.
//! - `lists/<name>`, one per projection that keeps lists: one row per kept item in a ring of
//!   `max_items` slots per key, and one row with the key's count (module `lists`), so an
//!   append reads one row and writes one per item whatever the list's length. Files written
//!   before lists had rows kept them as documents; opening moves them to rows.
//!
//! Every write is one redb transaction committed with `Durability::Immediate` (fsync), so a
//! commit's documents and checkpoint are durable together when it returns, and a crash leaves
//! either all of a commit or none of it.
//!
//! # Queries are scans
//!
//! There are no secondary indexes. A query sorted by key walks the keys in order from the
//! cursor and stops as soon as its page is full, so paging by key costs about one page of
//! reads when the filter matches often. A query sorted by a path must see every document of
//! the projection. Either way a query reads at most [`EmbeddedOptions::query_scan_docs_max`]
//! documents (default [`QUERY_SCAN_DOCS_MAX_DEFAULT`]); a query that would read more is refused
//! with [`StoreError::QueryTooBroad`] rather than answered partially, since a partial page
//! would silently miss documents. A full scan costs about 2 µs per small document (JSON
//! decoding dominates): some 200–350 ms for 100 000 documents, against under half a
//! millisecond for a page sorted by key (`tests/it/measure.rs`).

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use proteus_projections::definition::Kind;
use proteus_projections::query::ScanOrder;
use proteus_projections::store::check_writes;
use proteus_projections::{
    Checkpoint, ListItem, Page, ProjectionName, ProjectionRecord, Query, ReadModelStore, RunState,
    StoreError, Write,
};
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    TableError, WriteTransaction,
};
use serde_json::Value;

mod lists;

use lists::{ListsTable, append_list, lists_table, query_lists, read_list, write_list};

const PROJECTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("projections");
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");

/// The name of the store's file inside the data directory.
pub const FILE_NAME: &str = "readmodels.redb";
/// Documents one query may read when no other limit is set.
pub const QUERY_SCAN_DOCS_MAX_DEFAULT: usize = 1_000_000;

/// Settings of the embedded store.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Most documents one query reads before it is refused (see the crate documentation).
    pub query_scan_docs_max: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            query_scan_docs_max: QUERY_SCAN_DOCS_MAX_DEFAULT,
        }
    }
}

#[derive(Clone)]
pub struct EmbeddedReadModelStore {
    db: Arc<Database>,
    options: EmbeddedOptions,
}

fn backend(error: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(error.to_string())
}

fn docs_table(name: &str) -> String {
    format!("docs/{name}")
}

fn not_found(name: &ProjectionName) -> StoreError {
    StoreError::NotFound {
        projection: name.clone(),
    }
}

impl EmbeddedReadModelStore {
    /// Opens (or creates) `<data_dir>/readmodels.redb` with default options.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(data_dir, EmbeddedOptions::default())
    }

    pub fn open_with(data_dir: &Path, options: EmbeddedOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| backend(format!("cannot create {}: {e}", data_dir.display())))?;
        let path = data_dir.join(FILE_NAME);
        let db = Database::create(&path)
            .map_err(|e| backend(format!("cannot open {}: {e}", path.display())))?;
        let txn = write_txn(&db)?;
        txn.open_table(PROJECTIONS).map_err(backend)?;
        txn.open_table(CHECKPOINTS).map_err(backend)?;
        move_list_documents_to_rows(&txn)?;
        txn.commit().map_err(backend)?;
        Ok(EmbeddedReadModelStore {
            db: Arc::new(db),
            options,
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database, &EmbeddedOptions) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        let options = self.options.clone();
        tokio::task::spawn_blocking(move || work(&db, &options))
            .await
            .map_err(|e| backend(format!("store task failed: {e}")))?
    }
}

/// A write transaction that fsyncs on commit.
fn write_txn(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_durability(Durability::Immediate).map_err(backend)?;
    Ok(txn)
}

fn exists(txn: &WriteTransaction, name: &ProjectionName) -> Result<bool, StoreError> {
    let projections = txn.open_table(PROJECTIONS).map_err(backend)?;
    Ok(projections.get(name.as_str()).map_err(backend)?.is_some())
}

fn decode(key: &str, bytes: &[u8]) -> Result<Value, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| {
        backend(format!(
            "document '{key}' is not valid JSON in the store: {e}"
        ))
    })
}

/// Reads documents of a projection in one snapshot; `None` documents when it has no table.
fn read_docs(
    txn: &ReadTransaction,
    name: &ProjectionName,
    keys: &[String],
) -> Result<Vec<Option<Value>>, StoreError> {
    let lists_name = lists_table(name.as_str());
    match txn.open_table(ListsTable::new(&lists_name)) {
        Ok(lists) => return keys.iter().map(|key| read_list(&lists, key)).collect(),
        Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(backend(e)),
    }
    let table_name = docs_table(name.as_str());
    let table = match txn.open_table(TableDefinition::<&str, &[u8]>::new(&table_name)) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok(vec![None; keys.len()]),
        Err(e) => return Err(backend(e)),
    };
    keys.iter()
        .map(|key| match table.get(key.as_str()).map_err(backend)? {
            Some(bytes) => decode(key, bytes.value()).map(Some),
            None => Ok(None),
        })
        .collect()
}

/// Moves list documents written before lists had rows (`{"items": [...], "count": N}` in
/// `docs/<name>` of a `list` projection) to `lists/<name>`, once, at open.
fn move_list_documents_to_rows(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut list_projections = Vec::new();
    {
        let projections = txn.open_table(PROJECTIONS).map_err(backend)?;
        for entry in projections.iter().map_err(backend)? {
            let (key, bytes) = entry.map_err(backend)?;
            let Ok(record) = serde_json::from_slice::<ProjectionRecord>(bytes.value()) else {
                continue; // Reported when the projection is loaded.
            };
            if let Kind::List(list) = &record.definition.kind {
                list_projections.push((key.value().to_owned(), list.max_items));
            }
        }
    }
    for (name, max_items) in list_projections {
        let table_name = docs_table(&name);
        let documents: Vec<(String, Value)> = {
            let docs = match txn.open_table(TableDefinition::<&str, &[u8]>::new(&table_name)) {
                Ok(docs) => docs,
                Err(TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(backend(e)),
            };
            docs.iter()
                .map_err(backend)?
                .map(|entry| {
                    let (key, bytes) = entry.map_err(backend)?;
                    let key = key.value().to_owned();
                    let doc = decode(&key, bytes.value())?;
                    Ok((key, doc))
                })
                .collect::<Result<_, StoreError>>()?
        };
        let lists_name = lists_table(&name);
        let mut lists = txn
            .open_table(ListsTable::new(&lists_name))
            .map_err(backend)?;
        for (key, doc) in documents {
            let count = doc.get("count").and_then(Value::as_u64).unwrap_or(0);
            let items = doc.get("items").and_then(Value::as_array);
            let items = items.map(Vec::as_slice).unwrap_or_default();
            write_list(&mut lists, &key, items, count, max_items)?;
        }
        drop(lists);
        txn.delete_table(TableDefinition::<&str, &[u8]>::new(&table_name))
            .map_err(backend)?;
    }
    Ok(())
}

fn run_query(
    db: &Database,
    options: &EmbeddedOptions,
    name: &ProjectionName,
    query: &Query,
) -> Result<Page, StoreError> {
    let mut scan = query.scan()?;
    let txn = db.begin_read().map_err(backend)?;
    let lists_name = lists_table(name.as_str());
    match txn.open_table(ListsTable::new(&lists_name)) {
        Ok(lists) => return query_lists(&lists, options, name, scan),
        Err(TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(backend(e)),
    }
    let table_name = docs_table(name.as_str());
    let table = match txn.open_table(TableDefinition::<&str, &[u8]>::new(&table_name)) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => return Ok(scan.finish()),
        Err(e) => return Err(backend(e)),
    };
    let range = match scan.order() {
        ScanOrder::KeyAsc { after: Some(after) } => table
            .range::<&str>((Bound::Excluded(after.as_str()), Bound::Unbounded))
            .map_err(backend)?,
        ScanOrder::KeyDesc {
            before: Some(before),
        } => table
            .range::<&str>((Bound::Unbounded, Bound::Excluded(before.as_str())))
            .map_err(backend)?,
        _ => table.range::<&str>(..).map_err(backend)?,
    };
    let descending = matches!(scan.order(), ScanOrder::KeyDesc { .. });
    let entries: Box<dyn Iterator<Item = _>> = if descending {
        Box::new(range.rev())
    } else {
        Box::new(range)
    };
    for entry in entries {
        if scan.scanned() >= options.query_scan_docs_max {
            return Err(StoreError::QueryTooBroad {
                projection: name.clone(),
                scanned: scan.scanned(),
            });
        }
        let (key, value) = entry.map_err(backend)?;
        let key = key.value();
        let doc = decode(key, value.value())?;
        if scan.offer(key, doc) {
            break;
        }
    }
    Ok(scan.finish())
}

#[async_trait]
impl ReadModelStore for EmbeddedReadModelStore {
    async fn save_projection(&self, record: &ProjectionRecord) -> Result<(), StoreError> {
        let json = serde_json::to_vec(record).map_err(backend)?;
        let name = record.name.clone();
        self.blocking(move |db, _| {
            let txn = write_txn(db)?;
            {
                let mut projections = txn.open_table(PROJECTIONS).map_err(backend)?;
                projections
                    .insert(name.as_str(), json.as_slice())
                    .map_err(backend)?;
            }
            txn.commit().map_err(backend)
        })
        .await
    }

    async fn load_projection(
        &self,
        name: &ProjectionName,
    ) -> Result<Option<ProjectionRecord>, StoreError> {
        let name = name.clone();
        self.blocking(move |db, _| {
            let txn = db.begin_read().map_err(backend)?;
            let projections = txn.open_table(PROJECTIONS).map_err(backend)?;
            match projections.get(name.as_str()).map_err(backend)? {
                Some(bytes) => serde_json::from_slice(bytes.value())
                    .map(Some)
                    .map_err(|e| backend(format!("stored projection '{name}' is unreadable: {e}"))),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_projections(&self) -> Result<Vec<ProjectionRecord>, StoreError> {
        self.blocking(move |db, _| {
            let txn = db.begin_read().map_err(backend)?;
            let projections = txn.open_table(PROJECTIONS).map_err(backend)?;
            let mut records = Vec::new();
            for entry in projections.iter().map_err(backend)? {
                let (key, bytes) = entry.map_err(backend)?;
                let record = serde_json::from_slice(bytes.value()).map_err(|e| {
                    backend(format!(
                        "stored projection '{}' is unreadable: {e}",
                        key.value()
                    ))
                })?;
                records.push(record);
            }
            Ok(records)
        })
        .await
    }

    async fn set_state(
        &self,
        name: &ProjectionName,
        state: &RunState,
        updated_ms: i64,
    ) -> Result<(), StoreError> {
        let (name, state) = (name.clone(), state.clone());
        self.blocking(move |db, _| {
            let txn = write_txn(db)?;
            {
                let mut projections = txn.open_table(PROJECTIONS).map_err(backend)?;
                let mut record: ProjectionRecord =
                    match projections.get(name.as_str()).map_err(backend)? {
                        Some(bytes) => serde_json::from_slice(bytes.value()).map_err(backend)?,
                        None => return Err(not_found(&name)),
                    };
                record.state = state;
                record.updated_ms = updated_ms;
                let json = serde_json::to_vec(&record).map_err(backend)?;
                projections
                    .insert(name.as_str(), json.as_slice())
                    .map_err(backend)?;
            }
            txn.commit().map_err(backend)
        })
        .await
    }

    async fn get(&self, name: &ProjectionName, key: &str) -> Result<Option<Value>, StoreError> {
        let mut docs = self.get_many(name, &[key.to_owned()]).await?;
        Ok(docs.pop().flatten())
    }

    async fn get_many(
        &self,
        name: &ProjectionName,
        keys: &[String],
    ) -> Result<Vec<Option<Value>>, StoreError> {
        let (name, keys) = (name.clone(), keys.to_vec());
        self.blocking(move |db, _| {
            let txn = db.begin_read().map_err(backend)?;
            read_docs(&txn, &name, &keys)
        })
        .await
    }

    async fn commit(
        &self,
        name: &ProjectionName,
        writes: Vec<Write>,
        checkpoint: Checkpoint,
    ) -> Result<(), StoreError> {
        check_writes(&writes)?;
        let name = name.clone();
        self.blocking(move |db, _| {
            // Serialised before the transaction so it stays short.
            let encoded: Vec<EncodedWrite> = writes
                .into_iter()
                .map(EncodedWrite::new)
                .collect::<Result<_, _>>()?;
            let checkpoint_json = serde_json::to_vec(&checkpoint).map_err(backend)?;
            let txn = write_txn(db)?;
            if !exists(&txn, &name)? {
                return Err(not_found(&name));
            }
            {
                let mut checkpoints = txn.open_table(CHECKPOINTS).map_err(backend)?;
                if let Some(stored) = checkpoints.get(name.as_str()).map_err(backend)? {
                    let stored: Checkpoint =
                        serde_json::from_slice(stored.value()).map_err(backend)?;
                    if stored.position > checkpoint.position {
                        return Err(StoreError::CheckpointBehind {
                            projection: name.clone(),
                            stored: stored.position,
                            given: checkpoint.position,
                        });
                    }
                }
                checkpoints
                    .insert(name.as_str(), checkpoint_json.as_slice())
                    .map_err(backend)?;
                // Tables are opened only when written, so a projection's file holds
                // documents or lists, as its writes do.
                let table_name = docs_table(name.as_str());
                let lists_name = lists_table(name.as_str());
                let mut docs = None;
                let mut lists = None;
                for write in &encoded {
                    match write {
                        EncodedWrite::Doc { key, doc } => {
                            let docs = match &mut docs {
                                Some(docs) => docs,
                                None => docs.insert(
                                    txn.open_table(TableDefinition::<&str, &[u8]>::new(
                                        &table_name,
                                    ))
                                    .map_err(backend)?,
                                ),
                            };
                            match doc {
                                Some(bytes) => {
                                    docs.insert(key.as_str(), bytes.as_slice())
                                        .map_err(backend)?;
                                }
                                None => {
                                    docs.remove(key.as_str()).map_err(backend)?;
                                }
                            }
                        }
                        EncodedWrite::Append {
                            key,
                            items,
                            max_items,
                        } => {
                            let lists = match &mut lists {
                                Some(lists) => lists,
                                None => lists.insert(
                                    txn.open_table(ListsTable::new(&lists_name))
                                        .map_err(backend)?,
                                ),
                            };
                            append_list(lists, key, items, *max_items)?;
                        }
                    }
                }
            }
            txn.commit().map_err(backend)
        })
        .await
    }

    async fn checkpoint(&self, name: &ProjectionName) -> Result<Option<Checkpoint>, StoreError> {
        let name = name.clone();
        self.blocking(move |db, _| {
            let txn = db.begin_read().map_err(backend)?;
            let checkpoints = txn.open_table(CHECKPOINTS).map_err(backend)?;
            match checkpoints.get(name.as_str()).map_err(backend)? {
                Some(bytes) => serde_json::from_slice(bytes.value())
                    .map(Some)
                    .map_err(backend),
                None => Ok(None),
            }
        })
        .await
    }

    async fn query(&self, name: &ProjectionName, query: &Query) -> Result<Page, StoreError> {
        query.check()?;
        let (name, query) = (name.clone(), query.clone());
        self.blocking(move |db, options| run_query(db, options, &name, &query))
            .await
    }

    async fn reset(&self, name: &ProjectionName) -> Result<(), StoreError> {
        let name = name.clone();
        self.blocking(move |db, _| {
            let txn = write_txn(db)?;
            if !exists(&txn, &name)? {
                return Err(not_found(&name));
            }
            remove_data(&txn, &name)?;
            txn.commit().map_err(backend)
        })
        .await
    }

    async fn drop_projection(&self, name: &ProjectionName) -> Result<bool, StoreError> {
        let name = name.clone();
        self.blocking(move |db, _| {
            let txn = write_txn(db)?;
            let existed = {
                let mut projections = txn.open_table(PROJECTIONS).map_err(backend)?;
                projections
                    .remove(name.as_str())
                    .map_err(backend)?
                    .is_some()
            };
            remove_data(&txn, &name)?;
            txn.commit().map_err(backend)?;
            Ok(existed)
        })
        .await
    }
}

/// Removes a projection's documents, lists and checkpoint inside `txn`.
fn remove_data(txn: &WriteTransaction, name: &ProjectionName) -> Result<(), StoreError> {
    let mut checkpoints = txn.open_table(CHECKPOINTS).map_err(backend)?;
    checkpoints.remove(name.as_str()).map_err(backend)?;
    let table_name = docs_table(name.as_str());
    txn.delete_table(TableDefinition::<&str, &[u8]>::new(&table_name))
        .map_err(backend)?;
    let lists_name = lists_table(name.as_str());
    txn.delete_table(ListsTable::new(&lists_name))
        .map_err(backend)?;
    Ok(())
}

/// A write with its JSON encoded, ready for the transaction.
enum EncodedWrite {
    Doc {
        key: String,
        doc: Option<Vec<u8>>,
    },
    Append {
        key: String,
        items: Vec<ListItem>,
        max_items: usize,
    },
}

impl EncodedWrite {
    fn new(write: Write) -> Result<Self, StoreError> {
        Ok(match write {
            Write::Doc { key, doc } => EncodedWrite::Doc {
                doc: doc
                    .map(|d| serde_json::to_vec(&d))
                    .transpose()
                    .map_err(backend)?,
                key,
            },
            Write::Append {
                key,
                items,
                max_items,
            } => EncodedWrite::Append {
                items,
                key,
                max_items,
            },
        })
    }
}
