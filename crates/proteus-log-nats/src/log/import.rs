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

/// JetStream's header that makes the server store a message only if the stream's last message
/// has the given sequence. A partition's stream has one subject, so it is the same check; a
/// clustered stream counts it with the messages still being replicated, so it can be
/// pipelined, while pipelined subject expectations were refused there ("wrong last sequence"
/// on nats-server 2.12.8 with 3 replicas).
const EXPECTED_LAST_SEQUENCE: &str = "Nats-Expected-Last-Sequence";

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

    /// Each message carries the sequence the partition must end at, so a write by anyone else
    /// in between fails the import instead of shifting its offsets. An empty partition is first
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
        let mut acks = Vec::with_capacity(events.len());
        let mut pending: Vec<PublishAckFuture> = Vec::with_capacity(events.len());
        // The partition must still end where this import expects: at the previous event, or,
        // for the first event into an empty partition, nowhere on its one subject. A
        // replicated stream is asked for its last sequence instead (`EXPECTED_LAST_SEQUENCE`),
        // once that first event is stored: a purge of an empty stream does not move the
        // stream's last sequence (JetStream 2.9), so only a stored event sets it.
        let replicated = stream.cached_info().config.num_replicas > 1;
        for (index, event) in events.iter().enumerate() {
            let first_into_empty = empty && index == 0;
            let previous_sequence = if first_into_empty {
                0
            } else {
                first_offset + index as u64
            };
            let header = if replicated && !first_into_empty {
                EXPECTED_LAST_SEQUENCE
            } else {
                EXPECTED_LAST_SUBJECT_SEQUENCE
            };
            let mut headers = HeaderMap::new();
            headers.insert(header, previous_sequence.to_string().as_str());
            let future = self
                .inner
                .js
                .publish_with_headers(subject.clone(), headers, event.json.clone())
                .await
                .map_err(|e| nats_error(&format!("{what}: event {index}"), e))?;
            if replicated && first_into_empty {
                // Stored before the rest are sent: they expect the stream to end at it.
                let ack = future
                    .await
                    .map_err(|e| nats_error(&format!("{what}: event {index}"), e))?;
                acks.push(ack);
            } else {
                pending.push(future);
            }
        }
        for future in pending {
            let index = acks.len();
            let ack = future
                .await
                .map_err(|e| nats_error(&format!("{what}: event {index}"), e))?;
            acks.push(ack);
        }
        for (index, ack) in acks.iter().enumerate() {
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
