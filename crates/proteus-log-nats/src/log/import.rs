//! [`PartitionImport`] for JetStream: events copied into a partition's stream at the offsets
//! they had in another log (`proteus migrate-topics`).

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use async_trait::async_trait;
use proteus_log::import::{PartitionImport, check_import, does_not_continue};
use proteus_log::{LogError, Offset, PartitionId, StoredEvent, TopicName};

use super::{Bounds, NatsLog, nats_error};

/// JetStream's header that makes the server store a message only if the last message on its
/// subject has the given sequence (0: there is none).
const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";

#[async_trait]
impl PartitionImport for NatsLog {
    async fn partition_offsets(
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

    /// Each message carries the sequence its subject must end at, so a write by anyone else in
    /// between fails the import instead of shifting its offsets. An empty partition is first
    /// moved with a purge up to its first sequence (which JetStream allows on an empty stream).
    /// No `Nats-Msg-Id` is sent: two events with the same dedup key written longer than the
    /// dedup window apart are both kept in the source, and JetStream would drop the second one
    /// when they are copied seconds apart. Append times are JetStream's own.
    async fn import_partition(
        &self,
        topic: &TopicName,
        partition: PartitionId,
        events: &[StoredEvent],
    ) -> Result<(), LogError> {
        let first_offset = check_import(topic, partition, events)?.first_offset;
        self.check_open()?;
        let topic = self.topic(topic).await?;
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
            return Err(does_not_continue(
                &topic.name,
                partition,
                first_offset,
                bounds.end_offset,
            ));
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
                .publish_with_headers(subject.clone(), headers, event.json.clone())
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
                return Err(LogError::InvalidImport {
                    topic: topic.name.clone(),
                    partition,
                    reason: format!(
                        "event {index} was stored at offset {}, not {offset} (something else wrote to the partition meanwhile)",
                        ack.sequence.saturating_sub(1)
                    ),
                });
            }
        }
        Ok(())
    }

    fn keeps_append_times(&self) -> bool {
        false
    }
}
