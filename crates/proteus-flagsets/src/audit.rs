//! Revisions as CloudEvents in the audit topic, the durable store of every flag set.

use proteus_log::topic::EVENT_BYTES_MAX_LIMIT;
use proteus_log::{Event, TopicConfig, TopicName};
use serde_json::json;

use crate::revision::Revision;
use crate::schedule::{Schedule, ScheduleEnded};

/// The topic every flag-set change is appended to.
pub const TOPIC: &str = "proteus.flagsets.audit";
/// The CloudEvent type of a revision.
pub const EVENT_TYPE: &str = "dev.proteus.flagset.changed";
/// The CloudEvent type of a change scheduled for later.
pub const SCHEDULED_TYPE: &str = "dev.proteus.flagset.scheduled";
/// The CloudEvent type of a schedule that was applied, failed or was cancelled.
pub const SCHEDULE_ENDED_TYPE: &str = "dev.proteus.flagset.schedule-ended";

/// Anything the audit topic holds.
#[derive(Clone, Debug, PartialEq)]
pub enum AuditRecord {
    Revision(Revision),
    Scheduled(Schedule),
    ScheduleEnded(ScheduleEnded),
}
/// Largest flag-set document, in bytes of JSON: a revision carries the document and a patch
/// that can be as large, and must fit one event.
pub const DOCUMENT_BYTES_MAX: usize = (EVENT_BYTES_MAX_LIMIT as usize) / 4;

pub fn topic() -> TopicName {
    // A constant that satisfies the topic-name rules.
    TopicName::parse(TOPIC).expect("the audit topic name is valid")
}

/// One partition (so versions of all sets keep one order), kept forever, no deduplication
/// window needed (ids are `set@version`, unique by construction) but harmless.
pub fn topic_config() -> TopicConfig {
    TopicConfig {
        partitions: 1,
        retention_ms: None,
        retention_bytes: None,
        event_bytes_max: EVENT_BYTES_MAX_LIMIT,
        ..TopicConfig::default()
    }
}

/// The CloudEvent of `revision`: id `set@version`, source `/proteus/flagsets/{set}`, subject
/// the flag a single-flag change is about, `time` when it was made, and the revision as data.
pub fn to_event(revision: &Revision) -> Result<Event, String> {
    let data = serde_json::to_value(revision).map_err(|e| e.to_string())?;
    envelope(
        EVENT_TYPE,
        format!("{}@{}", revision.set, revision.version),
        revision.set.as_str(),
        revision.time_ms,
        revision.flag.as_deref(),
        data,
    )
}

fn rfc3339(time_ms: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(time_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
}

fn envelope(
    kind: &str,
    id: String,
    set: &str,
    time_ms: i64,
    subject: Option<&str>,
    data: serde_json::Value,
) -> Result<Event, String> {
    let mut event = json!({
        "specversion": "1.0",
        "id": id,
        "source": format!("/proteus/flagsets/{set}"),
        "type": kind,
        "datacontenttype": "application/json",
        "partitionkey": set,
        "data": data,
    });
    if let Some(time) = rfc3339(time_ms) {
        event["time"] = json!(time);
    }
    if let Some(subject) = subject {
        event["subject"] = json!(subject);
    }
    let bytes = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
    Event::from_json(&bytes).map_err(|e| e.to_string())
}

/// The CloudEvent recording `schedule`.
pub fn schedule_event(schedule: &Schedule) -> Result<Event, String> {
    let data = serde_json::to_value(schedule).map_err(|e| e.to_string())?;
    envelope(
        SCHEDULED_TYPE,
        format!("{}@schedule-{}", schedule.set, schedule.id),
        schedule.set.as_str(),
        schedule.created_ms,
        None,
        data,
    )
}

/// The CloudEvent recording how a schedule ended.
pub fn schedule_ended_event(ended: &ScheduleEnded) -> Result<Event, String> {
    let data = serde_json::to_value(ended).map_err(|e| e.to_string())?;
    envelope(
        SCHEDULE_ENDED_TYPE,
        format!("{}@schedule-{}-ended", ended.set, ended.id),
        ended.set.as_str(),
        ended.time_ms,
        None,
        data,
    )
}

/// Any audit record in an event's JSON; unknown event types are `Ok(None)`.
pub fn record_from_event_json(json: &[u8]) -> Result<Option<AuditRecord>, String> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(rename = "type")]
        kind: String,
        data: Option<serde_json::Value>,
    }
    let envelope: Envelope = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let data = || envelope.data.clone().ok_or("an audit event has no data");
    Ok(Some(match envelope.kind.as_str() {
        EVENT_TYPE => {
            AuditRecord::Revision(serde_json::from_value(data()?).map_err(|e| e.to_string())?)
        }
        SCHEDULED_TYPE => {
            AuditRecord::Scheduled(serde_json::from_value(data()?).map_err(|e| e.to_string())?)
        }
        SCHEDULE_ENDED_TYPE => {
            AuditRecord::ScheduleEnded(serde_json::from_value(data()?).map_err(|e| e.to_string())?)
        }
        _ => return Ok(None),
    }))
}

/// The revision in an audit event's JSON; other event types are `Ok(None)`.
pub fn from_event_json(json: &[u8]) -> Result<Option<Revision>, String> {
    Ok(match record_from_event_json(json)? {
        Some(AuditRecord::Revision(revision)) => Some(revision),
        _ => None,
    })
}
