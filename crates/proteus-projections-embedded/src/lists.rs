//! Lists, one row per kept item, in a ring of `max_items` slots per key.
//!
//! The table `lists/<name>` holds, for each list key:
//!
//! - `(key, slot)` for `slot` in `0..max_items`: the item whose sequence `s` (its index among
//!   every item ever appended to the list, from 0) has `s % max_items == slot`, stored as `s`
//!   (8 bytes, big-endian) followed by the item's JSON;
//! - `(key, COUNT_SLOT)`: how many items were ever appended (8 bytes, big-endian).
//!
//! Appending overwrites the slots of the items it pushes out, so an append costs one read (the
//! count) and one write per item, whatever the list's length, and nothing is ever deleted
//! except by `reset` and `drop`. A projection's `max_items` never changes (a definition is
//! not changed in place), so the slots of a key stay consistent.

use std::ops::Bound;

use proteus_projections::query::{Scan, ScanOrder};
use proteus_projections::{ListItem, Page, ProjectionName, StoreError, list_document};
use redb::{ReadableTable, Table, TableDefinition};
use serde_json::Value;

use crate::{EmbeddedOptions, backend, decode};

pub(crate) type ListsTable<'n> = TableDefinition<'n, (&'static str, u64), &'static [u8]>;

/// The slot holding a list's count: after every item slot, so a key's rows read items first.
const COUNT_SLOT: u64 = u64::MAX;

pub(crate) fn lists_table(name: &str) -> String {
    format!("lists/{name}")
}

fn u64_at(key: &str, bytes: &[u8]) -> Result<u64, StoreError> {
    match bytes.get(..8).map(<[u8; 8]>::try_from) {
        Some(Ok(head)) => Ok(u64::from_be_bytes(head)),
        _ => Err(backend(format!(
            "a row of list '{key}' is {} bytes, too short; restore the read model (reset the projection)",
            bytes.len()
        ))),
    }
}

/// A list being gathered from its rows.
#[derive(Default)]
struct Gathered {
    /// `(sequence, item)`, in slot order.
    items: Vec<(u64, Value)>,
    count: Option<u64>,
}

impl Gathered {
    fn add(&mut self, key: &str, slot: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let value = u64_at(key, bytes)?;
        if slot == COUNT_SLOT {
            self.count = Some(value);
        } else {
            self.items.push((value, decode(key, &bytes[8..])?));
        }
        Ok(())
    }

    /// The list as a document; `None` when it has no count row (no list under that key).
    fn into_document(mut self) -> Option<Value> {
        let count = self.count?;
        self.items.sort_unstable_by_key(|(sequence, _)| *sequence);
        Some(list_document(
            self.items.into_iter().map(|(_, item)| item).collect(),
            count,
        ))
    }
}

/// The list under `key` as a document; `None` when there is none.
pub(crate) fn read_list(
    lists: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    key: &str,
) -> Result<Option<Value>, StoreError> {
    let mut gathered = Gathered::default();
    for row in lists.range((key, 0)..=(key, COUNT_SLOT)).map_err(backend)? {
        let (row_key, bytes) = row.map_err(backend)?;
        gathered.add(key, row_key.value().1, bytes.value())?;
    }
    Ok(gathered.into_document())
}

/// Appends `items` to the list under `key`, which keeps its last `max_items`.
pub(crate) fn append_list(
    lists: &mut Table<(&'static str, u64), &'static [u8]>,
    key: &str,
    items: &[ListItem],
    max_items: usize,
) -> Result<(), StoreError> {
    let count = match lists.get((key, COUNT_SLOT)).map_err(backend)? {
        Some(bytes) => u64_at(key, bytes.value())?,
        None => 0,
    };
    let slots = max_items.max(1) as u64;
    // Items that the same append pushes out again are not written at all.
    let skipped = items.len().saturating_sub(max_items);
    let mut row = Vec::new();
    for (sequence, item) in (count..).zip(items).skip(skipped) {
        row.clear();
        row.extend_from_slice(&sequence.to_be_bytes());
        row.extend_from_slice(item.json());
        lists
            .insert((key, sequence % slots), row.as_slice())
            .map_err(backend)?;
    }
    let count = count + items.len() as u64;
    lists
        .insert((key, COUNT_SLOT), count.to_be_bytes().as_slice())
        .map_err(backend)?;
    Ok(())
}

/// Writes a whole list (as it was kept as one document before lists had rows).
pub(crate) fn write_list(
    lists: &mut Table<(&'static str, u64), &'static [u8]>,
    key: &str,
    items: &[Value],
    count: u64,
    max_items: usize,
) -> Result<(), StoreError> {
    let slots = max_items.max(1) as u64;
    let kept = &items[items.len().saturating_sub(max_items)..];
    let first = count.saturating_sub(kept.len() as u64);
    for (sequence, item) in (first..).zip(kept) {
        let mut row = sequence.to_be_bytes().to_vec();
        row.extend(serde_json::to_vec(item).map_err(backend)?);
        lists
            .insert((key, sequence % slots), row.as_slice())
            .map_err(backend)?;
    }
    lists
        .insert((key, COUNT_SLOT), count.to_be_bytes().as_slice())
        .map_err(backend)?;
    Ok(())
}

/// A query over a projection's lists: rows grouped by key, each group one document.
pub(crate) fn query_lists(
    lists: &redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    options: &EmbeddedOptions,
    name: &ProjectionName,
    mut scan: Scan<'_>,
) -> Result<Page, StoreError> {
    let range = match scan.order() {
        ScanOrder::KeyAsc { after: Some(after) } => lists
            .range::<(&str, u64)>((
                Bound::Excluded((after.as_str(), COUNT_SLOT)),
                Bound::Unbounded,
            ))
            .map_err(backend)?,
        ScanOrder::KeyDesc {
            before: Some(before),
        } => lists
            .range::<(&str, u64)>((Bound::Unbounded, Bound::Excluded((before.as_str(), 0))))
            .map_err(backend)?,
        _ => lists.range::<(&str, u64)>(..).map_err(backend)?,
    };
    let rows: Box<dyn Iterator<Item = _>> = if matches!(scan.order(), ScanOrder::KeyDesc { .. }) {
        Box::new(range.rev())
    } else {
        Box::new(range)
    };
    let offer = |scan: &mut Scan<'_>, key: String, gathered: Gathered| {
        if scan.scanned() >= options.query_scan_docs_max {
            return Err(StoreError::QueryTooBroad {
                projection: name.clone(),
                scanned: scan.scanned(),
            });
        }
        Ok(match gathered.into_document() {
            Some(doc) => scan.offer(&key, doc),
            None => false,
        })
    };
    let mut current: Option<(String, Gathered)> = None;
    for row in rows {
        let (row_key, bytes) = row.map_err(backend)?;
        let (key, slot) = row_key.value();
        let same_key = current.as_ref().is_some_and(|(k, _)| k == key);
        if !same_key
            && let Some((done_key, done)) = current.replace((key.to_owned(), Gathered::default()))
            && offer(&mut scan, done_key, done)?
        {
            return Ok(scan.finish());
        }
        if let Some((_, gathered)) = current.as_mut() {
            gathered.add(key, slot, bytes.value())?;
        }
    }
    if let Some((key, gathered)) = current {
        offer(&mut scan, key, gathered)?;
    }
    Ok(scan.finish())
}
