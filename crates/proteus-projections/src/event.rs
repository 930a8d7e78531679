//! The events a projection consumes, as a borrowed view.
//!
//! The event store maps its own record type onto [`EventView`]; projections never depend on how
//! events are stored. Definitions address an event as if it were this JSON envelope:
//!
//! ```text
//! { "stream": "order-7", "category": "order", "version": 3, "position": 1042,
//!   "event_type": "OrderPlaced", "data": { ... }, "metadata": { ... }, "recorded_ms": 1700000000000 }
//! ```
//!
//! so `/data/total`, `/metadata/tenant`, `/stream` and `/recorded_ms` are all valid pointers.

use serde_json::Value;

/// One event as a projection sees it.
#[derive(Clone, Copy, Debug)]
pub struct EventView<'a> {
    /// The stream the event belongs to, such as `order-7`.
    pub stream: &'a str,
    /// The stream's category, such as `order`.
    pub category: &'a str,
    /// The event's version inside its stream.
    pub version: u64,
    /// The event's global position (in `$all`); strictly increasing in reading order.
    pub position: u64,
    pub event_type: &'a str,
    pub data: &'a Value,
    pub metadata: Option<&'a Value>,
    /// When the store recorded the event, in milliseconds since the Unix epoch.
    pub recorded_ms: i64,
}

/// The top-level names of the envelope that pointers may start with.
pub const ENVELOPE_FIELDS: [&str; 8] = [
    "stream",
    "category",
    "version",
    "position",
    "event_type",
    "data",
    "metadata",
    "recorded_ms",
];
