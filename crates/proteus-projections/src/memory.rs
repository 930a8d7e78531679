//! [`MemoryReadModelStore`]: the [`ReadModelStore`] port in process memory, for tests and for
//! runtimes that need no durability. Keeps every promise of the port except surviving the
//! process.
//!
//! Everything sits behind one lock: a commit checks everything ([`check_writes`], the
//! projection, the checkpoint) before it changes anything, then applies its writes and
//! checkpoint together, so readers see all of a commit or none of it. Lists keep their last
//! `max_items` items and their count, so an append costs the same whatever the list's length.
//! Queries feed the domain's [`Scan`](crate::query::Scan) in the order it asks, and read at most
//! [`MemoryReadModelStore::query_scan_docs_max`] documents, like the other stores.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use serde_json::Value;

use crate::name::ProjectionName;
use crate::query::{Page, Query, ScanOrder};
use crate::store::{
    Checkpoint, ListItem, ProjectionRecord, ReadModelStore, RunState, StoreError, Write,
    check_writes, list_document,
};

/// Documents one query may read when no other limit is set (as in the embedded store).
pub const QUERY_SCAN_DOCS_MAX_DEFAULT: usize = 1_000_000;

/// What is stored under one key: a document or a list.
#[derive(Debug)]
enum Stored {
    Doc(Value),
    List {
        /// The kept items, oldest first.
        items: VecDeque<Value>,
        /// Items ever appended.
        count: u64,
    },
}

impl Stored {
    /// How the entry shows to `get`, `get_many` and `query`.
    fn document(&self) -> Value {
        match self {
            Stored::Doc(doc) => doc.clone(),
            Stored::List { items, count } => list_document(items.iter().cloned().collect(), *count),
        }
    }
}

/// One projection: its record, its checkpoint and its documents.
#[derive(Debug)]
struct Projection {
    record: ProjectionRecord,
    checkpoint: Option<Checkpoint>,
    docs: BTreeMap<String, Stored>,
}

type Projections = BTreeMap<ProjectionName, Projection>;

/// Read models in maps behind one lock.
#[derive(Debug)]
pub struct MemoryReadModelStore {
    projections: RwLock<Projections>,
    query_scan_docs_max: usize,
}

impl Default for MemoryReadModelStore {
    fn default() -> Self {
        MemoryReadModelStore {
            projections: RwLock::default(),
            query_scan_docs_max: QUERY_SCAN_DOCS_MAX_DEFAULT,
        }
    }
}

impl MemoryReadModelStore {
    pub fn new() -> MemoryReadModelStore {
        MemoryReadModelStore::default()
    }

    /// Most documents one query reads before it is refused with
    /// [`StoreError::QueryTooBroad`] (default [`QUERY_SCAN_DOCS_MAX_DEFAULT`]).
    pub fn with_query_scan_docs_max(mut self, query_scan_docs_max: usize) -> Self {
        self.query_scan_docs_max = query_scan_docs_max;
        self
    }

    pub fn query_scan_docs_max(&self) -> usize {
        self.query_scan_docs_max
    }

    // A poisoned lock only means another thread panicked mid-call; writes change the maps only
    // after every check, so they are still valid.
    fn read(&self) -> RwLockReadGuard<'_, Projections> {
        self.projections.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Projections> {
        self.projections.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn not_found(name: &ProjectionName) -> StoreError {
    StoreError::NotFound {
        projection: name.clone(),
    }
}

fn decode(key: &str, item: &ListItem) -> Result<Value, StoreError> {
    item.to_value()
        .map_err(|e| StoreError::Backend(format!("an item of list '{key}' is not valid JSON: {e}")))
}

/// Appends `items` to the list under `key` (a new list when there is none), keeping its last
/// `max_items`.
fn append(docs: &mut BTreeMap<String, Stored>, key: String, items: Vec<Value>, max_items: usize) {
    let entry = docs.entry(key).or_insert_with(|| Stored::List {
        items: VecDeque::new(),
        count: 0,
    });
    if let Stored::Doc(_) = entry {
        // A key holds a document or a list, never both: the list replaces the document.
        *entry = Stored::List {
            items: VecDeque::new(),
            count: 0,
        };
    }
    if let Stored::List { items: kept, count } = entry {
        *count += items.len() as u64;
        let skipped = items.len().saturating_sub(max_items);
        kept.extend(items.into_iter().skip(skipped));
        let excess = kept.len().saturating_sub(max_items);
        kept.drain(..excess);
    }
}

#[async_trait]
impl ReadModelStore for MemoryReadModelStore {
    async fn save_projection(&self, record: &ProjectionRecord) -> Result<(), StoreError> {
        let mut projections = self.write();
        match projections.get_mut(&record.name) {
            Some(projection) => projection.record = record.clone(),
            None => {
                projections.insert(
                    record.name.clone(),
                    Projection {
                        record: record.clone(),
                        checkpoint: None,
                        docs: BTreeMap::new(),
                    },
                );
            }
        }
        Ok(())
    }

    async fn load_projection(
        &self,
        name: &ProjectionName,
    ) -> Result<Option<ProjectionRecord>, StoreError> {
        Ok(self.read().get(name).map(|p| p.record.clone()))
    }

    async fn list_projections(&self) -> Result<Vec<ProjectionRecord>, StoreError> {
        Ok(self.read().values().map(|p| p.record.clone()).collect())
    }

    async fn set_state(
        &self,
        name: &ProjectionName,
        state: &RunState,
        updated_ms: i64,
    ) -> Result<(), StoreError> {
        let mut projections = self.write();
        let projection = projections.get_mut(name).ok_or_else(|| not_found(name))?;
        projection.record.state = state.clone();
        projection.record.updated_ms = updated_ms;
        Ok(())
    }

    async fn get(&self, name: &ProjectionName, key: &str) -> Result<Option<Value>, StoreError> {
        Ok(self
            .read()
            .get(name)
            .and_then(|p| p.docs.get(key))
            .map(Stored::document))
    }

    async fn get_many(
        &self,
        name: &ProjectionName,
        keys: &[String],
    ) -> Result<Vec<Option<Value>>, StoreError> {
        let projections = self.read();
        let docs = projections.get(name).map(|p| &p.docs);
        Ok(keys
            .iter()
            .map(|key| docs.and_then(|d| d.get(key)).map(Stored::document))
            .collect())
    }

    async fn commit(
        &self,
        name: &ProjectionName,
        writes: Vec<Write>,
        checkpoint: Checkpoint,
    ) -> Result<(), StoreError> {
        check_writes(&writes)?;
        // Items are decoded before the lock, and before anything changes.
        let writes: Vec<Decoded> = writes
            .into_iter()
            .map(|write| match write {
                Write::Doc { key, doc } => Ok(Decoded::Doc { key, doc }),
                Write::Append {
                    key,
                    items,
                    max_items,
                } => {
                    let items = items
                        .iter()
                        .map(|item| decode(&key, item))
                        .collect::<Result<_, _>>()?;
                    Ok(Decoded::Append {
                        key,
                        items,
                        max_items,
                    })
                }
            })
            .collect::<Result<_, StoreError>>()?;
        let mut projections = self.write();
        let projection = projections.get_mut(name).ok_or_else(|| not_found(name))?;
        if let Some(stored) = &projection.checkpoint
            && stored.position > checkpoint.position
        {
            return Err(StoreError::CheckpointBehind {
                projection: name.clone(),
                stored: stored.position,
                given: checkpoint.position,
            });
        }
        for write in writes {
            match write {
                Decoded::Doc {
                    key,
                    doc: Some(doc),
                } => {
                    projection.docs.insert(key, Stored::Doc(doc));
                }
                Decoded::Doc { key, doc: None } => {
                    projection.docs.remove(&key);
                }
                Decoded::Append {
                    key,
                    items,
                    max_items,
                } => append(&mut projection.docs, key, items, max_items),
            }
        }
        projection.checkpoint = Some(checkpoint);
        Ok(())
    }

    async fn checkpoint(&self, name: &ProjectionName) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self.read().get(name).and_then(|p| p.checkpoint.clone()))
    }

    async fn query(&self, name: &ProjectionName, query: &Query) -> Result<Page, StoreError> {
        let mut scan = query.scan()?;
        let projections = self.read();
        let Some(projection) = projections.get(name) else {
            return Ok(scan.finish());
        };
        let docs = &projection.docs;
        let entries: Box<dyn Iterator<Item = (&String, &Stored)>> = match scan.order() {
            ScanOrder::KeyAsc { after: Some(after) } => {
                Box::new(docs.range::<str, _>((Bound::Excluded(after.as_str()), Bound::Unbounded)))
            }
            ScanOrder::KeyAsc { after: None } | ScanOrder::Any => Box::new(docs.iter()),
            ScanOrder::KeyDesc {
                before: Some(before),
            } => Box::new(
                docs.range::<str, _>((Bound::Unbounded, Bound::Excluded(before.as_str())))
                    .rev(),
            ),
            ScanOrder::KeyDesc { before: None } => Box::new(docs.iter().rev()),
        };
        for (key, stored) in entries {
            if scan.scanned() >= self.query_scan_docs_max {
                return Err(StoreError::QueryTooBroad {
                    projection: name.clone(),
                    scanned: scan.scanned(),
                });
            }
            if scan.offer(key, stored.document()) {
                break;
            }
        }
        Ok(scan.finish())
    }

    async fn reset(&self, name: &ProjectionName) -> Result<(), StoreError> {
        let mut projections = self.write();
        let projection = projections.get_mut(name).ok_or_else(|| not_found(name))?;
        projection.checkpoint = None;
        projection.docs.clear();
        Ok(())
    }

    async fn drop_projection(&self, name: &ProjectionName) -> Result<bool, StoreError> {
        Ok(self.write().remove(name).is_some())
    }
}

/// A write with its list items decoded, ready to apply.
enum Decoded {
    Doc {
        key: String,
        doc: Option<Value>,
    },
    Append {
        key: String,
        items: Vec<Value>,
        max_items: usize,
    },
}
