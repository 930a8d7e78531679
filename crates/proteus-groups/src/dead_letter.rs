//! Dead letters: how an event that used up its deliveries is written to the group's
//! dead-letter topic, and read back.
//!
//! A dead letter is the original CloudEvent, byte-for-byte in its attributes and data, with
//! extension attributes that say why and where from (CloudEvents extension names: lowercase
//! letters and digits):
//!
//! | attribute | meaning |
//! |---|---|
//! | `dlreason` | always `deliveries_exhausted`: the event was delivered `retry.deliveries_max` times without an ack |
//! | `dlerror` | the last error given by a nack, or the ack deadline that passed |
//! | `dldeliveries` | how many times the event was delivered (integer) |
//! | `dltopic`, `dlgroup` | the topic and group it was consumed from |
//! | `dlpartition`, `dloffset` | its original position (strings, since offsets can pass 2³¹) |

use proteus_log::{Offset, PartitionId, StoredEvent, TopicName};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::name::GroupName;
use crate::state::{DeadLetterDue, Position};

pub const REASON_DELIVERIES_EXHAUSTED: &str = "deliveries_exhausted";
const ATTRIBUTES: [&str; 7] = [
    "dlreason",
    "dlerror",
    "dldeliveries",
    "dltopic",
    "dlgroup",
    "dlpartition",
    "dloffset",
];

/// The dead-letter event for `due`, given the original event's JSON.
pub fn dead_letter_json(
    original: &[u8],
    topic: &TopicName,
    group: &GroupName,
    due: &DeadLetterDue,
) -> Result<Vec<u8>, String> {
    let mut event: Map<String, Value> = serde_json::from_slice(original)
        .map_err(|e| format!("the stored event is not a JSON object: {e}"))?;
    for name in ATTRIBUTES {
        event.remove(name);
    }
    event.insert("dlreason".into(), REASON_DELIVERIES_EXHAUSTED.into());
    if let Some(error) = &due.last_error {
        event.insert("dlerror".into(), error.clone().into());
    }
    event.insert(
        "dldeliveries".into(),
        due.deliveries.min(i32::MAX as u32).into(),
    );
    event.insert("dltopic".into(), topic.as_str().into());
    event.insert("dlgroup".into(), group.as_str().into());
    event.insert(
        "dlpartition".into(),
        due.position.partition.to_string().into(),
    );
    event.insert("dloffset".into(), due.position.offset.to_string().into());
    serde_json::to_vec(&event).map_err(|e| e.to_string())
}

/// A dead letter as listed by the API.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeadLetter {
    /// Its offset in the dead-letter topic (partition 0): what replay selects.
    pub dead_letter_offset: Offset,
    pub dead_lettered_time_ms: i64,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub deliveries: u64,
    pub topic: String,
    pub group: String,
    pub partition: PartitionId,
    pub offset: Offset,
    /// The original event, without the dead-letter attributes.
    pub event: Map<String, Value>,
}

impl DeadLetter {
    pub fn position(&self) -> Position {
        Position {
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// Reads a stored dead letter back. `None` when the event is not a dead letter (someone
/// appended something else to the topic).
pub fn parse_dead_letter(stored: &StoredEvent) -> Option<DeadLetter> {
    let mut event: Map<String, Value> = serde_json::from_slice(&stored.json).ok()?;
    let text = |event: &mut Map<String, Value>, name: &str| match event.remove(name) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let reason = text(&mut event, "dlreason")?;
    let error = text(&mut event, "dlerror");
    let deliveries = event.remove("dldeliveries").and_then(|v| v.as_u64())?;
    let topic = text(&mut event, "dltopic")?;
    let group = text(&mut event, "dlgroup")?;
    let partition = text(&mut event, "dlpartition")?.parse().ok()?;
    let offset = text(&mut event, "dloffset")?.parse().ok()?;
    Some(DeadLetter {
        dead_letter_offset: stored.offset,
        dead_lettered_time_ms: stored.append_time_ms,
        reason,
        error,
        deliveries,
        topic,
        group,
        partition,
        offset,
        event,
    })
}

/// The original event of a dead letter, as bytes to deliver again.
pub fn original_json(dead_letter: &DeadLetter) -> Vec<u8> {
    serde_json::to_vec(&dead_letter.event).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_round_trips() {
        let original = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"x":1},"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#;
        let due = DeadLetterDue {
            position: Position {
                partition: 3,
                offset: 5_000_000_000,
            },
            deliveries: 5,
            last_error: Some("boom".into()),
            replay_of: None,
        };
        let topic = TopicName::parse("orders").unwrap();
        let group = GroupName::parse("billing").unwrap();
        let json = dead_letter_json(original, &topic, &group, &due).unwrap();
        proteus_log::Event::from_json(&json).expect("a dead letter is a valid CloudEvent");
        let stored = StoredEvent {
            partition: 0,
            offset: 9,
            append_time_ms: 1,
            json: json.into(),
        };
        let letter = parse_dead_letter(&stored).unwrap();
        assert_eq!(letter.position(), due.position);
        assert_eq!(letter.error.as_deref(), Some("boom"));
        assert_eq!(letter.deliveries, 5);
        let back: Value = serde_json::from_slice(&original_json(&letter)).unwrap();
        let before: Value = serde_json::from_slice(original).unwrap();
        assert_eq!(back, before, "replay delivers the original event");
    }
}
