//! Pulls: hand a member its redeliveries and new events, long-polling and lingering within
//! bounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proteus_groups::dead_letter::{original_json, parse_dead_letter};
use proteus_groups::state::Position;
use proteus_groups::{GroupError, MemberId};
use proteus_log::{Cursor, LogError, PartitionId, ReadFrom, ReadLimits};

use crate::handle::GroupHandle;
use crate::{Inner, metrics_names as names};

/// What a pull asks for; each bound is capped by the group's `batch` settings.
#[derive(Clone, Copy, Debug)]
pub struct PullRequest {
    pub events_max: u32,
    pub bytes_max: u32,
    /// How long to wait for a first event when none is ready.
    pub wait_ms: u64,
}

/// One delivered event.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub position: Position,
    /// 1 for the first delivery.
    pub deliveries: u32,
    /// Ack, nack or extend before this time (ms since the epoch), or it is redelivered.
    pub deadline_ms: i64,
    /// A dead letter replayed into the group.
    pub replay: bool,
    pub append_time_ms: i64,
    /// The CloudEvent, JSON.
    pub json: Bytes,
}

#[derive(Clone, Debug)]
pub struct PullResponse {
    pub generation: u64,
    pub partitions: Vec<PartitionId>,
    pub deliveries: Vec<Delivery>,
}

/// Spreads first reads over partitions so one busy partition does not starve the others.
static ROTATION: AtomicUsize = AtomicUsize::new(0);

pub(crate) async fn pull(
    inner: &Arc<Inner>,
    handle: &Arc<GroupHandle>,
    member: &MemberId,
    request: PullRequest,
    only: Option<PartitionId>,
) -> Result<PullResponse, GroupError> {
    let batch = handle.config().batch;
    let events_max = request.events_max.clamp(1, batch.events_max) as usize;
    let bytes_max = request.bytes_max.clamp(1, batch.bytes_max) as usize;
    let wait = Duration::from_millis(request.wait_ms.min(inner.config.wait_ms_max));
    let started = Instant::now();
    let deadline = started + wait;
    let mut linger_until: Option<Instant> = None;
    let mut deliveries: Vec<Delivery> = Vec::new();
    let mut bytes = 0usize;
    let mut shutdown = inner.shutdown.clone();
    loop {
        if handle.is_abandoned() {
            return Err(GroupError::Store(proteus_groups::StoreError::Unavailable(
                crate::handle::ABANDONED.to_owned(),
            )));
        }
        let notified = handle.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let fetched = fetch_once(
            inner,
            handle,
            member,
            events_max - deliveries.len(),
            bytes_max.saturating_sub(bytes),
            only,
            &mut deliveries,
        )
        .await?;
        bytes = deliveries.iter().map(|d| d.json.len()).sum();
        if deliveries.len() >= events_max || bytes >= bytes_max {
            break;
        }
        let now = Instant::now();
        if !deliveries.is_empty() {
            if batch.linger_ms == 0 {
                break;
            }
            let until = *linger_until.get_or_insert(now + Duration::from_millis(batch.linger_ms));
            if now >= until {
                break;
            }
        }
        let wait_until = match linger_until {
            Some(until) if !deliveries.is_empty() => until,
            _ => deadline,
        };
        if now >= wait_until || *shutdown.borrow() {
            break;
        }
        // A retry that falls due wakes us too.
        let now_ms = inner.now_ms();
        let next_due = handle
            .with_state(|state| state.next_due_ms())
            .map(|due| Duration::from_millis(due.saturating_sub(now_ms).max(1) as u64));
        let mut sleep_for = wait_until - now;
        if let Some(due) = next_due {
            sleep_for = sleep_for.min(due);
        }
        let watch_log = !fetched.at_capacity && fetched.cursor.iter().next().is_some();
        tokio::select! {
            () = &mut notified => {}
            result = inner.log.wait_for_events(&handle.topic, &fetched.cursor, sleep_for), if watch_log => {
                match result {
                    Ok(_) => {}
                    Err(LogError::TopicNotFound { .. }) => break,
                    Err(error) => return Err(error.into()),
                }
            }
            () = tokio::time::sleep(sleep_for), if !watch_log => {}
            _ = shutdown.changed() => break,
        }
    }
    let now_ms = inner.now_ms();
    let assignment = handle.with_state(|state| state.heartbeat(member, now_ms))?;
    Ok(PullResponse {
        generation: assignment.generation,
        partitions: assignment.partitions,
        deliveries,
    })
}

struct Fetched {
    /// No new event may be handed out until some are acknowledged.
    at_capacity: bool,
    /// Where the member's partitions are read next (for long polling).
    cursor: Cursor,
}

async fn fetch_once(
    inner: &Arc<Inner>,
    handle: &Arc<GroupHandle>,
    member: &MemberId,
    events_max: usize,
    bytes_max: usize,
    only: Option<PartitionId>,
    out: &mut Vec<Delivery>,
) -> Result<Fetched, GroupError> {
    let _fetching = handle.fetch.lock().await;
    let now_ms = inner.now_ms();
    let plan = handle.with_state(|state| {
        state.plan_pull(member, events_max as u32, only, only.is_some(), now_ms)
    })?;
    let topic = &handle.topic;
    let labels = handle.labels();
    if !plan.redeliveries.is_empty() {
        metrics::counter!(names::REDELIVERED, &labels).increment(plan.redeliveries.len() as u64);
    }
    for redelivery in &plan.redeliveries {
        match read_one(inner, handle, redelivery.position, redelivery.replay_of).await? {
            Some((append_time_ms, json)) => out.push(Delivery {
                position: redelivery.position,
                deliveries: redelivery.deliveries,
                deadline_ms: redelivery.deadline_ms,
                replay: redelivery.replay_of.is_some(),
                append_time_ms,
                json,
            }),
            None => {
                handle.mutate(|state| state.drop_vanished(redelivery.position));
            }
        }
    }
    let mut remaining = plan.new_events_max as usize;
    let mut bytes: usize = out.iter().map(|d| d.json.len()).sum();
    let reads = &plan.reads;
    let start = if reads.is_empty() {
        0
    } else {
        ROTATION.fetch_add(1, Ordering::Relaxed) % reads.len()
    };
    let mut first_deliveries = 0u64;
    for index in 0..reads.len() {
        if remaining == 0 || bytes >= bytes_max {
            break;
        }
        let (partition, mut from) = reads[(start + index) % reads.len()];
        let limits = ReadLimits {
            events_max: remaining as u32,
            bytes_max: (bytes_max - bytes) as u32,
        };
        let batch = match inner
            .log
            .read(topic, partition, ReadFrom::Offset(from), limits)
            .await
        {
            Ok(batch) => batch,
            Err(LogError::OffsetOutOfRange { end_offset, .. }) => {
                from = restart_partition(inner, handle, partition, from, end_offset).await?;
                inner
                    .log
                    .read(topic, partition, ReadFrom::Offset(from), limits)
                    .await?
            }
            Err(error) => return Err(error.into()),
        };
        if batch.events.is_empty() {
            continue;
        }
        let offsets: Vec<u64> = batch.events.iter().map(|e| e.offset).collect();
        let recorded = handle.mutate_value(|state| {
            state.record_first_deliveries(member, partition, from, &offsets, now_ms)
        });
        let mut events = batch.events.into_iter().peekable();
        for delivery in recorded {
            while events.peek().is_some_and(|e| e.offset < delivery.offset) {
                events.next();
            }
            let Some(event) = events.next() else { break };
            bytes += event.json.len();
            out.push(Delivery {
                position: Position {
                    partition,
                    offset: delivery.offset,
                },
                deliveries: delivery.deliveries,
                deadline_ms: delivery.deadline_ms,
                replay: false,
                append_time_ms: event.append_time_ms,
                json: event.json,
            });
            remaining -= 1;
            first_deliveries += 1;
        }
    }
    if first_deliveries > 0 {
        metrics::counter!(names::DELIVERED, &labels).increment(first_deliveries);
    }
    let mut cursor = Cursor::new();
    for (partition, offset) in handle.with_state(|state| state.fetch_positions(member)) {
        if only.is_none_or(|p| p == partition) {
            cursor.set(partition, offset);
        }
    }
    Ok(Fetched {
        at_capacity: plan.new_events_max == 0,
        cursor,
    })
}

/// The group reads `partition` at `from`, past its end: the topic was replaced by another of
/// the same name (a backend switched without `proteus migrate-topics`), or lost events the
/// group had acknowledged (a crash of a log that acknowledges before syncing). Waiting there
/// would skip every event written up to `from`; the group starts the partition again at its
/// first event instead (events it may have seen come again rather than new ones being lost),
/// and says so. Returns the new position.
async fn restart_partition(
    inner: &Inner,
    handle: &GroupHandle,
    partition: PartitionId,
    from: u64,
    end_offset: u64,
) -> Result<u64, GroupError> {
    let first_offset = inner
        .probe(&handle.topic, partition, ReadFrom::Offset(0))
        .await?
        .first_offset;
    tracing::warn!(
        topic = %handle.topic,
        group = %handle.group,
        partition,
        position = from,
        end_offset,
        first_offset,
        "the group's position is past the end of the partition (the topic was replaced, or lost acknowledged events): reading it again from its first event; to skip what it holds instead, reset the group to the end"
    );
    metrics::counter!(names::RESTARTED_PARTITIONS, &handle.labels()).increment(1);
    handle.mutate(|state| state.reset(&[(partition, first_offset)].into()));
    Ok(first_offset)
}

/// Reads one event to deliver again: from the log, or for a replay from the dead-letter topic.
/// `None` when it is gone.
async fn read_one(
    inner: &Inner,
    handle: &GroupHandle,
    position: Position,
    replay_of: Option<u64>,
) -> Result<Option<(i64, Bytes)>, GroupError> {
    let one = ReadLimits {
        events_max: 1,
        bytes_max: 1,
    };
    let (topic, partition, offset) = match replay_of {
        Some(dead_letter_offset) => (
            handle
                .config()
                .dead_letter_topic_for(&handle.topic, &handle.group),
            0,
            dead_letter_offset,
        ),
        None => (handle.topic.clone(), position.partition, position.offset),
    };
    let batch = match inner
        .log
        .read(&topic, partition, ReadFrom::Offset(offset), one)
        .await
    {
        Ok(batch) => batch,
        Err(LogError::OffsetOutOfRange { .. } | LogError::TopicNotFound { .. }) => {
            return Ok(None);
        }
        Err(error) => return Err(error.into()),
    };
    let Some(event) = batch
        .events
        .into_iter()
        .next()
        .filter(|e| e.offset == offset)
    else {
        return Ok(None);
    };
    if replay_of.is_none() {
        return Ok(Some((event.append_time_ms, event.json)));
    }
    Ok(parse_dead_letter(&event)
        .map(|letter| (event.append_time_ms, Bytes::from(original_json(&letter)))))
}
