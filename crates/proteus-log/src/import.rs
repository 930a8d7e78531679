//! Copying a partition's events into another log at the offsets they had (`proteus
//! migrate-topics`), which the port's `append` cannot do: it picks partitions and offsets.
//!
//! Importing is not part of [`Log`](crate::port::Log) (a log served to clients never needs
//! it); the adapters a migration can write to (`proteus-log-embedded`, `proteus-log-nats`)
//! implement [`PartitionImport`], and `proteus-log-conformance`'s `import` suite checks both.

use async_trait::async_trait;

use crate::error::LogError;
use crate::event::{DedupKey, Event};
use crate::port::StoredEvent;
use crate::position::{Offset, PartitionId};
use crate::topic::TopicName;

/// Most events one import call takes.
pub const IMPORT_EVENTS_MAX: usize = 10_000;

/// A log that takes events at given offsets.
#[async_trait]
pub trait PartitionImport: Send + Sync {
    /// Where a partition's offsets stand: its first kept offset and its next offset.
    async fn partition_offsets(
        &self,
        topic: &TopicName,
        partition: PartitionId,
    ) -> Result<(Offset, Offset), LogError>;

    /// Appends `events`, read from the same partition of another log, at their own offsets and
    /// nowhere else, with the bytes they had. They must continue the partition exactly where it
    /// ends; an empty partition first moves to start at the first event's offset, so a source
    /// whose oldest events were removed by retention keeps its offsets. Refused whole (nothing
    /// written) with [`LogError::InvalidImport`] otherwise. The events are durable when it
    /// returns. Whether their append times are kept is [`PartitionImport::keeps_append_times`].
    async fn import_partition(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        events: &[StoredEvent],
    ) -> Result<(), LogError>;

    /// Whether imported events keep the append times they had (the embedded log) or get the
    /// log's own (JetStream stamps each message when it stores it).
    fn keeps_append_times(&self) -> bool;
}

/// An import that passed [`check_import`].
#[derive(Debug)]
pub struct CheckedImport {
    /// Where the first event goes.
    pub first_offset: Offset,
    /// Each event's dedup key, as an append computes it.
    pub dedup_keys: Vec<DedupKey>,
}

/// What every import must be, checked by every adapter before anything is written: 1 to
/// [`IMPORT_EVENTS_MAX`] events, all of `partition`, at consecutive offsets, with append times
/// that never decrease, each a CloudEvent. A message that is not one (published on a
/// partition's subject by something other than Proteus, for example) is refused naming its
/// offset, so the copy holds exactly what the port promises.
pub fn check_import(
    topic: &TopicName,
    partition: PartitionId,
    events: &[StoredEvent],
) -> Result<CheckedImport, LogError> {
    let invalid = |reason: String| LogError::InvalidImport {
        topic: topic.clone(),
        partition,
        reason,
    };
    let Some(first) = events.first() else {
        return Err(invalid(
            "an import takes at least one event, got none".into(),
        ));
    };
    if events.len() > IMPORT_EVENTS_MAX {
        return Err(invalid(format!(
            "an import takes at most {IMPORT_EVENTS_MAX} events, got {}",
            events.len()
        )));
    }
    for (index, event) in events.iter().enumerate() {
        if event.partition != partition {
            return Err(invalid(format!(
                "event {index} was read from partition {}, not {partition}",
                event.partition
            )));
        }
        let expected = first.offset + index as u64;
        if event.offset != expected {
            return Err(invalid(format!(
                "event {index} is at offset {}, not {expected}: an import's offsets follow each other",
                event.offset
            )));
        }
        if index > 0 && event.append_time_ms < events[index - 1].append_time_ms {
            return Err(invalid(format!(
                "event {index} was appended at {} ms, before the event ahead of it ({} ms): append times never decrease within a partition",
                event.append_time_ms,
                events[index - 1].append_time_ms
            )));
        }
    }
    let dedup_keys = events
        .iter()
        .map(|stored| {
            Event::from_bytes(stored.json.clone())
                .map(|event| event.dedup_key())
                .map_err(|e| {
                    invalid(format!(
                        "the event at offset {} is not a CloudEvent: {e}",
                        stored.offset
                    ))
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(CheckedImport {
        first_offset: first.offset,
        dedup_keys,
    })
}

/// The refusal of an import that does not start at the partition's next offset `end`.
pub fn does_not_continue(
    topic: &TopicName,
    partition: PartitionId,
    first_offset: Offset,
    end: Offset,
) -> LogError {
    LogError::InvalidImport {
        topic: topic.clone(),
        partition,
        reason: format!(
            "the partition's next offset is {end}, not {first_offset}; an import continues a partition exactly where it ends"
        ),
    }
}
