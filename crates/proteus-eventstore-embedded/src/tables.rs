//! The redb tables of `eventstore.redb`.

use proteus_eventstore::EventStoreError;
use redb::TableDefinition;

/// Every event by global position: the `$all` feed. Values: [`crate::codec`] events.
pub const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// `(stream, version)` → position: a stream's events in order.
pub const STREAM_EVENTS: TableDefinition<(&str, u64), u64> = TableDefinition::new("stream_events");
/// `(category, position)` → version: a category's events in `$all` order.
pub const CATEGORY_EVENTS: TableDefinition<(&str, u64), u64> =
    TableDefinition::new("category_events");
/// Stream → its record (last version and position, deleted flag).
pub const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
/// `(stream, event id)` → version: recognises retried appends.
pub const EVENT_IDS: TableDefinition<(&str, &str), u64> = TableDefinition::new("event_ids");
/// Stream → its latest snapshot.
pub const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");

pub fn storage(error: impl std::fmt::Display) -> EventStoreError {
    EventStoreError::Storage(error.to_string())
}
