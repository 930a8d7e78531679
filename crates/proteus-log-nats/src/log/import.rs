//! Copying events into a partition at the offsets they had in another log (`proteus
//! migrate-topics`), which the port's `append` cannot do: it picks partitions and offsets.

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use bytes::Bytes;
use proteus_log::{LogError, Offset, PartitionId, TopicName};

use super::{Bounds, NatsLog, nats_error};

/// Most events one import call takes.
pub const IMPORT_EVENTS_MAX: usize = 10_000;

/// JetStream's header that makes the server store a message only if the last message on its
/// subject has the given sequence (0: there is none).
const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";

impl NatsLog {
    /// Where a partition's offsets stand: its first kept offset and its next offset.
    pub async fn partition_offsets(
        &self,
        topic: &TopicName,
        partition: PartitionId,
    ) -> Result<(Offset, Offset), LogError> {
        self.check_open()?;
        let topic = self.topic(topic).await?;
        topic.check_partition(partition)?;
        let bounds = self.bounds(&topic, partition).await?;
        Ok((bounds.first_offset, bounds.end_offset))
    }

    /// Appends `events` (CloudEvents JSON, as another log stored them) to `partition` at
    /// offsets `first_offset`, `first_offset + 1`, … and nowhere else: each message carries the
    /// sequence its subject must end at, so a write by anyone else in between fails the import
    /// instead of shifting its offsets. An empty partition is first moved to start at
    /// `first_offset` (a purge up to its sequence, which JetStream allows on an empty stream),
    /// so a source whose oldest events were removed by retention keeps its offsets. No
    /// `Nats-Msg-Id` is sent: two events with the same dedup key written longer than the dedup
    /// window apart are both kept in the source, and JetStream would drop the second one when
    /// they are copied seconds apart.
    pub async fn import_partition(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        first_offset: Offset,
        events: &[Bytes],
    ) -> Result<(), LogError> {
        self.check_open()?;
        let topic = self.topic(topic).await?;
        let conflict = |reason: String| LogError::TopicConflict {
            topic: topic.name.clone(),
            reason,
        };
        if events.len() > IMPORT_EVENTS_MAX {
            return Err(conflict(format!(
                "an import takes at most {IMPORT_EVENTS_MAX} events, got {}",
                events.len()
            )));
        }
        topic.check_partition(partition)?;
        let what = format!(
            "importing into partition {partition} of topic '{}'",
            topic.name
        );
        let stream = self.partition(&topic, partition).await?;
        let bounds = Bounds::of(&stream.cached_info().state);
        if bounds.messages == 0 && bounds.end_offset < first_offset {
            // Sequences are offsets + 1: the next message stored gets `first_offset + 1`.
            stream
                .purge()
                .sequence(first_offset + 1)
                .await
                .map_err(|e| nats_error(&what, e))?;
        } else if bounds.end_offset != first_offset {
            return Err(conflict(format!(
                "{what}: the partition's next offset is {}, not {first_offset}; an import continues a partition exactly where it ends",
                bounds.end_offset
            )));
        }
        let subject = self.subject(&topic.name, partition);
        let empty = bounds.messages == 0;
        let mut pending: Vec<PublishAckFuture> = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            // The partition's one subject must still end where this import expects: at the
            // previous event, or nowhere for the first into an empty partition. (Not the
            // stream's expected last sequence: JetStream 2.9 does not move it with a purge.)
            let last_subject_sequence = match (empty, index) {
                (true, 0) => 0,
                _ => first_offset + index as u64,
            };
            let mut headers = HeaderMap::new();
            headers.insert(
                EXPECTED_LAST_SUBJECT_SEQUENCE,
                last_subject_sequence.to_string().as_str(),
            );
            let future = self
                .inner
                .js
                .publish_with_headers(subject.clone(), headers, event.clone())
                .await
                .map_err(|e| nats_error(&format!("{what}: event {index}"), e))?;
            pending.push(future);
        }
        for (index, future) in pending.into_iter().enumerate() {
            let ack = future
                .await
                .map_err(|e| nats_error(&format!("{what}: event {index}"), e))?;
            let offset = first_offset + index as u64;
            if ack.sequence != offset + 1 {
                return Err(conflict(format!(
                    "{what}: event {index} was stored at offset {}, not {offset}",
                    ack.sequence.saturating_sub(1)
                )));
            }
        }
        Ok(())
    }
}
