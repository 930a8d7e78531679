//! The port through which read models and their checkpoints become durable and queryable.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::definition::ProjectionDefinition;
use crate::error::ProcessingError;
use crate::name::ProjectionName;
use crate::query::{Page, Query, QueryError};

/// Longest document key, in bytes.
pub const KEY_BYTES_MAX: usize = 512;
/// Largest document, in bytes of compact JSON. The projector refuses an event that would grow
/// a document past it (a processing error naming the event), so stores never see one.
pub const DOC_BYTES_MAX: usize = 1024 * 1024;
/// Most writes in one commit. A batch of events touches at most one key per event, so batches
/// of up to this many events always fit.
pub const COMMIT_WRITES_MAX: usize = 10_000;

/// Bytes a list document takes besides its items: `{"items":[],"count":N}` with a 20-digit
/// count, rounded up.
const LIST_DOC_OVERHEAD_BYTES: usize = 64;

/// Largest item of a list keeping `max_items` items, in bytes of compact JSON: the bound that
/// keeps the whole list document within [`DOC_BYTES_MAX`] (each item also takes a comma).
pub fn list_item_bytes_max(max_items: usize) -> usize {
    (DOC_BYTES_MAX - LIST_DOC_OVERHEAD_BYTES) / max_items.max(1) - 1
}

/// One item of a list: its compact JSON text, encoded once where it is made (the projector), so
/// neither the batch nor the store build or encode it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListItem(Vec<u8>);

impl ListItem {
    pub fn new(value: &Value) -> Self {
        // Encoding a Value into a Vec cannot fail.
        ListItem(serde_json::to_vec(value).unwrap_or_default())
    }

    /// An item from JSON text that the caller wrote with serde_json, so it is valid.
    pub(crate) fn from_encoded(json: Vec<u8>) -> Self {
        ListItem(json)
    }

    /// The compact JSON text.
    pub fn json(&self) -> &[u8] {
        &self.0
    }

    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.0)
    }
}

impl From<Value> for ListItem {
    fn from(value: Value) -> Self {
        ListItem::new(&value)
    }
}

/// How a list shows as a document: its kept items, oldest first, and how many items were
/// ever appended to it.
pub fn list_document(items: Vec<Value>, count: u64) -> Value {
    serde_json::json!({"items": items, "count": count})
}

/// The list document `doc` (or a new list) after appending `items` and keeping the last
/// `max_items`: what a store shows after a [`Write::Append`], for stores that keep lists as
/// whole documents (in-memory ones and tests).
pub fn append_to_list_document(
    doc: Option<Value>,
    items: Vec<ListItem>,
    max_items: usize,
) -> Value {
    let (mut kept, count) = match doc {
        Some(Value::Object(mut doc)) => {
            let count = doc.get("count").and_then(Value::as_u64).unwrap_or(0);
            match doc.remove("items") {
                Some(Value::Array(items)) => (items, count),
                _ => (Vec::new(), count),
            }
        }
        _ => (Vec::new(), 0),
    };
    let appended = items.len() as u64;
    kept.extend(
        items
            .iter()
            .map(|item| item.to_value().unwrap_or(Value::Null)),
    );
    let excess = kept.len().saturating_sub(max_items);
    kept.drain(..excess);
    list_document(kept, count + appended)
}

/// One change to a read model.
///
/// A projection keeps documents or lists, never both under one key. A list is stored one row
/// per item, so appending to it costs the same whatever its length; stores show it as the
/// document `{"items": [...oldest to newest], "count": <items ever appended>}` to `get`,
/// `get_many` and `query`.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    /// Replaces (`Some`) or deletes (`None`) the document under `key`.
    Doc { key: String, doc: Option<Value> },
    /// Appends `items` (oldest first) to the list under `key`, then keeps its last
    /// `max_items`. Every item is at most [`list_item_bytes_max`]`(max_items)` bytes.
    Append {
        key: String,
        items: Vec<ListItem>,
        max_items: usize,
    },
}

impl Write {
    pub fn key(&self) -> &str {
        match self {
            Write::Doc { key, .. } | Write::Append { key, .. } => key,
        }
    }

    /// How much of [`COMMIT_WRITES_MAX`] this write uses: one per document, one per item.
    pub fn weight(&self) -> usize {
        match self {
            Write::Doc { .. } => 1,
            Write::Append { items, .. } => items.len(),
        }
    }
}

/// How far a projection has read, saved in the same transaction as the documents it produced,
/// so after any crash the read model is exactly the result of the events before `position`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Where reading resumes: every event before this position is reflected (the last handled
    /// event's position + 1; 0 before the first).
    pub position: u64,
    /// Events of the source the projection applied since it was last reset (filtered-out
    /// events are not counted).
    pub events_processed: u64,
    /// The caller's clock when this checkpoint was committed.
    pub updated_ms: i64,
    /// The last event read before `position`, so a runner can check, before resuming, that
    /// the event store still counts positions the way this checkpoint does (a store copied to
    /// NATS numbers them anew; a mistyped schema or prefix is empty). `None` before the first
    /// event, after a reset, and in checkpoints saved before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<EventMark>,
}

/// An event named by its position and id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMark {
    pub position: u64,
    pub id: String,
}

/// Whether a projection runs. Saved so the runtime restarts projections as they were.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunState {
    Running,
    /// Stopped by a user; `resume` sets it running again.
    Paused,
    /// Stopped at an event it could not process; the checkpoint is before that event.
    Failed {
        error: ProcessingError,
    },
}

/// A projection as stored: its definition and whether it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProjectionRecord {
    pub name: ProjectionName,
    pub definition: ProjectionDefinition,
    pub state: RunState,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// What `GET /projections/{name}` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProjectionStatus {
    pub name: ProjectionName,
    #[serde(flatten)]
    pub state: RunState,
    pub checkpoint: Checkpoint,
    /// Events between the checkpoint and the head of the source (upper bound: counted in
    /// positions, which filtered-out events also use).
    pub lag: u64,
}

impl ProjectionStatus {
    /// `head` is the position the next appended event would get.
    pub fn new(record: &ProjectionRecord, checkpoint: Option<Checkpoint>, head: u64) -> Self {
        let checkpoint = checkpoint.unwrap_or_default();
        ProjectionStatus {
            name: record.name.clone(),
            state: record.state.clone(),
            lag: head.saturating_sub(checkpoint.position),
            checkpoint,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("projection '{projection}' does not exist; create it first")]
    NotFound { projection: ProjectionName },
    #[error(
        "the checkpoint of projection '{projection}' is at position {stored}, after the {given} given: another runner is ahead, or a reset was missed; reload the checkpoint and read from there"
    )]
    CheckpointBehind {
        projection: ProjectionName,
        stored: u64,
        given: u64,
    },
    #[error(
        "{count} writes (documents and list items) in one commit; the most is {COMMIT_WRITES_MAX}: commit smaller batches"
    )]
    TooManyWrites { count: usize },
    #[error(
        "list '{key}' keeps {max_items} items; it must keep 1 to {}",
        crate::definition::LIST_ITEMS_MAX
    )]
    ListItemsOutOfRange { key: String, max_items: usize },
    #[error("document key of {bytes} bytes; the most is {KEY_BYTES_MAX} (key starts {prefix:?})")]
    KeyTooLong { bytes: usize, prefix: String },
    #[error("document '{key}' is {bytes} bytes of JSON; the most is {DOC_BYTES_MAX}")]
    DocTooLarge { key: String, bytes: usize },
    #[error("an item of list '{key}' is {bytes} bytes of JSON; the most is {item_bytes_max}")]
    ListItemTooLarge {
        key: String,
        bytes: usize,
        item_bytes_max: usize,
    },
    #[error("{0}")]
    InvalidQuery(#[from] QueryError),
    #[error(
        "the query read {scanned} documents of projection '{projection}' (query_scan_docs_max) without completing its page; sort by key with a filter that matches often, so pages fill early, or raise query_scan_docs_max"
    )]
    QueryTooBroad {
        projection: ProjectionName,
        scanned: usize,
    },
    #[error("{0}")]
    Backend(String),
}

/// Checks the writes of a commit against the limits every store enforces.
pub fn check_writes(writes: &[Write]) -> Result<(), StoreError> {
    let count: usize = writes.iter().map(Write::weight).sum();
    if count > COMMIT_WRITES_MAX {
        return Err(StoreError::TooManyWrites { count });
    }
    for write in writes {
        check_key(write.key())?;
        match write {
            Write::Doc { doc: None, .. } => {}
            Write::Doc {
                key,
                doc: Some(doc),
            } => {
                let bytes = crate::value::json_bytes(doc);
                if bytes > DOC_BYTES_MAX {
                    return Err(StoreError::DocTooLarge {
                        key: key.clone(),
                        bytes,
                    });
                }
            }
            Write::Append {
                key,
                items,
                max_items,
            } => {
                if !(1..=crate::definition::LIST_ITEMS_MAX).contains(max_items) {
                    return Err(StoreError::ListItemsOutOfRange {
                        key: key.clone(),
                        max_items: *max_items,
                    });
                }
                let item_bytes_max = list_item_bytes_max(*max_items);
                for item in items {
                    let bytes = item.json().len();
                    if bytes > item_bytes_max {
                        return Err(StoreError::ListItemTooLarge {
                            key: key.clone(),
                            bytes,
                            item_bytes_max,
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

/// Checks a key's length.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    if key.len() > KEY_BYTES_MAX {
        let mut end = 32.min(key.len());
        while !key.is_char_boundary(end) {
            end -= 1;
        }
        return Err(StoreError::KeyTooLong {
            bytes: key.len(),
            prefix: key[..end].to_owned(),
        });
    }
    Ok(())
}

/// Durable storage of read models: per projection, its record (definition and run state), its
/// documents by key, and its checkpoint. Every write is durable when it returns. The
/// conformance suite in `conformance` (feature `conformance`) states every promise;
/// implementation: `proteus-projections-embedded` (redb).
#[async_trait]
pub trait ReadModelStore: Send + Sync {
    /// Creates or replaces a projection's record. Documents and checkpoint are left as they are:
    /// a changed definition takes effect from the checkpoint on, so callers reset first when
    /// the change must apply to past events too.
    async fn save_projection(&self, record: &ProjectionRecord) -> Result<(), StoreError>;

    async fn load_projection(
        &self,
        name: &ProjectionName,
    ) -> Result<Option<ProjectionRecord>, StoreError>;

    /// Every projection, sorted by name.
    async fn list_projections(&self) -> Result<Vec<ProjectionRecord>, StoreError>;

    /// Changes only the run state (and `updated_ms`); [`StoreError::NotFound`] if absent.
    async fn set_state(
        &self,
        name: &ProjectionName,
        state: &RunState,
        updated_ms: i64,
    ) -> Result<(), StoreError>;

    async fn get(&self, name: &ProjectionName, key: &str) -> Result<Option<Value>, StoreError>;

    /// The documents of `keys`, in the same order, from one consistent snapshot.
    async fn get_many(
        &self,
        name: &ProjectionName,
        keys: &[String],
    ) -> Result<Vec<Option<Value>>, StoreError>;

    /// Applies `writes` (in order; a later write to a key wins, appends add up) and saves
    /// `checkpoint`, all in one transaction, durable when it returns: after a crash either all
    /// of it is there or none. Refused, changing nothing, when the projection does not exist,
    /// the checkpoint is behind the stored one, or a limit ([`COMMIT_WRITES_MAX`],
    /// [`KEY_BYTES_MAX`], [`DOC_BYTES_MAX`], [`list_item_bytes_max`]) is exceeded
    /// ([`check_writes`]).
    async fn commit(
        &self,
        name: &ProjectionName,
        writes: Vec<Write>,
        checkpoint: Checkpoint,
    ) -> Result<(), StoreError>;

    /// The last committed checkpoint; `None` before the first commit or after a reset.
    async fn checkpoint(&self, name: &ProjectionName) -> Result<Option<Checkpoint>, StoreError>;

    /// One page of the documents matching `query`, in its order (see [`crate::query`]). The
    /// documents of a projection that keeps lists are its lists.
    async fn query(&self, name: &ProjectionName, query: &Query) -> Result<Page, StoreError>;

    /// Removes every document, every list and the checkpoint in one transaction, keeping the record: the
    /// start of a rebuild from zero. [`StoreError::NotFound`] if absent.
    async fn reset(&self, name: &ProjectionName) -> Result<(), StoreError>;

    /// Removes the projection entirely (record, documents, lists, checkpoint) in one transaction;
    /// returns whether it existed.
    async fn drop_projection(&self, name: &ProjectionName) -> Result<bool, StoreError>;
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn status_shows_state_checkpoint_and_lag() {
        let record = ProjectionRecord {
            name: ProjectionName::parse("orders").unwrap(),
            definition: ProjectionDefinition::parse(&json!({
                "source": {"all": true}, "list": {}
            }))
            .unwrap(),
            state: RunState::Failed {
                error: ProcessingError {
                    position: 7,
                    stream: "order-1".into(),
                    version: 2,
                    event_type: "A".into(),
                    reason: "/data/x is missing".into(),
                },
            },
            created_ms: 1,
            updated_ms: 2,
        };
        let checkpoint = Checkpoint {
            position: 7,
            events_processed: 5,
            updated_ms: 3,
            last_event: None,
        };
        let status = ProjectionStatus::new(&record, Some(checkpoint), 10);
        assert_eq!(status.lag, 3);
        let shown = serde_json::to_value(&status).unwrap();
        assert_eq!(shown["state"], "failed");
        assert_eq!(shown["error"]["position"], 7);
        assert_eq!(shown["checkpoint"]["position"], 7);
        let back: ProjectionStatus = serde_json::from_value(shown).unwrap();
        assert_eq!(back, status);
        let fresh = ProjectionStatus::new(&record, None, 10);
        assert_eq!((fresh.checkpoint.position, fresh.lag), (0, 10));
    }
}
