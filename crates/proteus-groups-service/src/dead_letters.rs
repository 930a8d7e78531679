//! Writing dead letters, listing them, replaying them into the group.

use std::sync::Arc;

use proteus_groups::GroupError;
use proteus_groups::dead_letter::{DeadLetter, dead_letter_json, parse_dead_letter};
use proteus_groups::state::{DeadLetterDue, Position};
use proteus_log::topic::EVENT_BYTES_MAX_LIMIT;
use proteus_log::{Event, LogError, Offset, ReadFrom, ReadLimits, TopicConfig, TopicName};

use crate::handle::GroupHandle;
use crate::{Inner, metrics_names as names};

/// Most dead letters one replay request takes.
pub const REPLAY_EVENTS_MAX: usize = 100_000;
/// Most dead letters one list request returns.
pub const LIST_EVENTS_MAX: u32 = 1_000;

/// Which dead letters to replay.
#[derive(Clone, Debug)]
pub enum ReplaySelection {
    All,
    Offsets(Vec<Offset>),
}

/// Creates the dead-letter topic if needed: one partition (dead letters keep their arrival
/// order), no deduplication (the same event may die twice after a replay), the source topic's
/// retention, and room for the added attributes.
async fn ensure_topic(
    inner: &Inner,
    source: &TopicName,
    topic: &TopicName,
) -> Result<(), LogError> {
    match inner.log.describe_topic(topic).await {
        Ok(_) => return Ok(()),
        Err(LogError::TopicNotFound { .. }) => {}
        Err(error) => return Err(error),
    }
    let source_config = inner.log.describe_topic(source).await?.config;
    let config = TopicConfig {
        partitions: 1,
        dedup_window_ms: 0,
        event_bytes_max: source_config
            .event_bytes_max
            .saturating_add(64 * 1024)
            .min(EVENT_BYTES_MAX_LIMIT),
        ..source_config
    };
    inner.log.put_topic(topic, config).await.map(|_| ())
}

/// Longest a nack waits for the dead letters it caused to be written before answering; past
/// it the write goes on in the background.
pub const NACK_DEAD_LETTER_WAIT_MS_MAX: u64 = 10_000;

/// Writes dead letters in the background; each event counts as done once its dead letter is
/// durable. A failed write puts the events back for another try. Writes of one group run one
/// after another in the order they were started, so dead letters keep the partition's order.
/// The receiver hears when this write has been tried (written or put back), for a caller that
/// answers only then; dropping it is fine.
pub(crate) fn spawn_writes(
    inner: &Arc<Inner>,
    handle: &Arc<GroupHandle>,
    due: Vec<DeadLetterDue>,
) -> tokio::sync::oneshot::Receiver<()> {
    let (tried, tried_receiver) = tokio::sync::oneshot::channel();
    let inner = inner.clone();
    let task_handle = handle.clone();
    let mut tail = handle
        .dead_letter_tail
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let previous = tail.take();
    *tail = Some(tokio::spawn(async move {
        let handle = task_handle;
        if let Some(previous) = previous {
            // Its outcome is its own; only its place in the order matters here.
            let _ = previous.await;
        }
        let positions: Vec<Position> = due.iter().map(|d| d.position).collect();
        match write(&inner, &handle, &due).await {
            Ok(written) => {
                handle.mutate(|state| {
                    for position in &positions {
                        state.dead_lettered(*position);
                    }
                });
                metrics::counter!(names::DEAD_LETTERED, &handle.labels()).increment(written);
            }
            Err(error) => {
                tracing::error!(topic = %handle.topic, group = %handle.group, %error,
                    "writing dead letters failed; the events will be retried");
                let now_ms = inner.now_ms();
                handle.mutate(|state| {
                    for position in &positions {
                        state.dead_letter_failed(*position, now_ms);
                    }
                });
            }
        }
        handle.changed.notify_waiters();
        let _ = tried.send(());
    }));
    tried_receiver
}

async fn write(
    inner: &Inner,
    handle: &GroupHandle,
    due: &[DeadLetterDue],
) -> Result<u64, GroupError> {
    let dead_letter_topic = handle
        .config()
        .dead_letter_topic_for(&handle.topic, &handle.group);
    ensure_topic(inner, &handle.topic, &dead_letter_topic).await?;
    let one = ReadLimits {
        events_max: 1,
        bytes_max: 1,
    };
    let mut events = Vec::with_capacity(due.len());
    for entry in due {
        let original = match entry.replay_of {
            Some(offset) => read_at(inner, &dead_letter_topic, 0, offset, one)
                .await?
                .and_then(|stored| parse_dead_letter(&stored))
                .map(|letter| proteus_groups::dead_letter::original_json(&letter)),
            None => read_at(
                inner,
                &handle.topic,
                entry.position.partition,
                entry.position.offset,
                one,
            )
            .await?
            .map(|stored| stored.json.to_vec()),
        };
        let Some(original) = original else {
            tracing::warn!(topic = %handle.topic, group = %handle.group, position = %entry.position,
                "the event to dead-letter is gone (retention); nothing to write");
            continue;
        };
        let json = dead_letter_json(&original, &handle.topic, &handle.group, entry)
            .map_err(|reason| GroupError::Store(proteus_groups::StoreError::Backend(reason)))?;
        let event = Event::from_json(&json).map_err(|e| {
            GroupError::Store(proteus_groups::StoreError::Backend(format!(
                "the dead letter of {} is not a valid CloudEvent: {e}",
                entry.position
            )))
        })?;
        events.push(event);
    }
    let written = events.len() as u64;
    if !events.is_empty() {
        inner.log.append(&dead_letter_topic, events).await?;
    }
    Ok(written)
}

async fn read_at(
    inner: &Inner,
    topic: &TopicName,
    partition: u32,
    offset: Offset,
    limits: ReadLimits,
) -> Result<Option<proteus_log::StoredEvent>, GroupError> {
    match inner
        .log
        .read(topic, partition, ReadFrom::Offset(offset), limits)
        .await
    {
        Ok(batch) => Ok(batch
            .events
            .into_iter()
            .next()
            .filter(|e| e.offset == offset)),
        Err(LogError::OffsetOutOfRange { .. } | LogError::TopicNotFound { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Dead letters of this group from `from` on; also returns where the next page starts.
pub(crate) async fn list(
    inner: &Inner,
    handle: &GroupHandle,
    from: Offset,
    limit: u32,
) -> Result<(Vec<DeadLetter>, Offset), GroupError> {
    let topic = handle
        .config()
        .dead_letter_topic_for(&handle.topic, &handle.group);
    let batch = match inner
        .log
        .read(
            &topic,
            0,
            ReadFrom::Offset(from),
            ReadLimits {
                events_max: limit.clamp(1, LIST_EVENTS_MAX),
                bytes_max: 16 * 1024 * 1024,
            },
        )
        .await
    {
        Ok(batch) => batch,
        Err(LogError::TopicNotFound { .. } | LogError::OffsetOutOfRange { .. }) => {
            return Ok((Vec::new(), from));
        }
        Err(error) => return Err(error.into()),
    };
    let letters = batch
        .events
        .iter()
        .filter_map(parse_dead_letter)
        .filter(|letter| {
            letter.topic == handle.topic.as_str() && letter.group == handle.group.as_str()
        })
        .collect();
    Ok((letters, batch.next_offset))
}

pub(crate) async fn replay(
    inner: &Inner,
    handle: &GroupHandle,
    selection: ReplaySelection,
) -> Result<u32, GroupError> {
    let letters: Vec<DeadLetter> = match selection {
        ReplaySelection::All => {
            let mut all = Vec::new();
            let mut from = 0;
            loop {
                let (page, next) = list(inner, handle, from, LIST_EVENTS_MAX).await?;
                all.extend(page);
                if next == from || all.len() >= REPLAY_EVENTS_MAX {
                    break;
                }
                from = next;
            }
            all.truncate(REPLAY_EVENTS_MAX);
            all
        }
        ReplaySelection::Offsets(offsets) => {
            if offsets.len() > REPLAY_EVENTS_MAX {
                return Err(GroupError::TooManyPositions {
                    count: offsets.len(),
                    max: REPLAY_EVENTS_MAX,
                });
            }
            let mut letters = Vec::with_capacity(offsets.len());
            for offset in offsets {
                let (page, _) = list(inner, handle, offset, 1).await?;
                match page
                    .into_iter()
                    .next()
                    .filter(|l| l.dead_letter_offset == offset)
                {
                    Some(letter) => letters.push(letter),
                    None => {
                        return Err(GroupError::DeadLetterNotFound {
                            group: handle.group.clone(),
                            offset,
                        });
                    }
                }
            }
            letters
        }
    };
    let pairs: Vec<(Position, Offset)> = letters
        .iter()
        .map(|letter| (letter.position(), letter.dead_letter_offset))
        .collect();
    let now_ms = inner.now_ms();
    let (queued, version) = handle.mutate_result(|state| Ok(state.replay(&pairs, now_ms)))?;
    handle.wait_durable(version).await?;
    handle.changed.notify_waiters();
    Ok(queued)
}
