//! `GET /v1/topics/{topic}/events/stream`: a live tail as Server-Sent Events.
//!
//! Each SSE message carries one event (`data:` is the same JSON object a read returns) and its
//! `id:` is the stream's cursor after that event: `partition:next_offset` pairs for every
//! streamed partition. A client that reconnects with `Last-Event-ID` resumes exactly after the
//! last event it received, with no gap and no repeat.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use proteus_log::{Cursor, PartitionId, ReadFrom, ReadLimits, StoredEvent, TopicName};
use serde::Deserialize;

use crate::AppState;
use crate::events::{Start, parse_start, render_event};
use crate::extract::{PathParams, QueryParams, topic_name};
use crate::problem::Problem;

/// Events read from one partition at a time while streaming.
const STREAM_READ_LIMITS: ReadLimits = ReadLimits {
    events_max: 500,
    bytes_max: 1024 * 1024,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    from: Option<String>,
    from_time: Option<String>,
    partition: Option<PartitionId>,
}

pub async fn stream(
    State(state): State<AppState>,
    PathParams(topic): PathParams<String>,
    QueryParams(query): QueryParams<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, Problem> {
    let name = topic_name(&topic)?;
    let description = state.log.describe_topic(&name).await?;
    let partition_count = description.partitions.len() as u32;
    let partitions: Vec<PartitionId> = match query.partition {
        Some(p) if p >= partition_count => {
            return Err(proteus_log::LogError::PartitionNotFound {
                topic: name,
                partition: p,
                partitions: partition_count,
            }
            .into());
        }
        Some(p) => vec![p],
        None => (0..partition_count).collect(),
    };
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str().map_err(|_| {
                Problem::bad_request(
                    "invalid-cursor",
                    "Invalid Last-Event-ID",
                    "Last-Event-ID is not valid ASCII",
                )
            })
        })
        .transpose()?;
    let mut cursor = Cursor::new();
    let resume_from = last_event_id.or(query.from.as_deref().filter(|f| f.contains(':')));
    if let Some(text) = resume_from {
        let given: Cursor = text
            .parse()
            .map_err(|e: proteus_log::position::InvalidCursor| {
                Problem::bad_request("invalid-cursor", "Invalid stream position", e.to_string())
            })?;
        for &p in &partitions {
            cursor.set(p, given.get(p).unwrap_or(0));
        }
    } else {
        // A stream starts at the end (a live tail) unless told otherwise.
        let from = query.from.as_deref().or(if query.from_time.is_some() {
            None
        } else {
            Some("end")
        });
        match parse_start(from, query.from_time.as_deref())? {
            Start::Beginning => partitions.iter().for_each(|&p| cursor.set(p, 0)),
            Start::End => {
                for &p in &partitions {
                    cursor.set(p, description.partitions[p as usize].next_offset);
                }
            }
            Start::Offset(offset) if partitions.len() == 1 => cursor.set(partitions[0], offset),
            Start::Offset(_) => {
                return Err(Problem::invalid_query(
                    "'from' as a plain offset needs 'partition'; for several partitions give a position such as 0:12,1:7",
                ));
            }
            Start::TimeMs(time_ms) => {
                for &p in &partitions {
                    let limits = ReadLimits {
                        events_max: 1,
                        bytes_max: 1,
                    };
                    let batch = state
                        .log
                        .read(&name, p, ReadFrom::TimeMs(time_ms), limits)
                        .await?;
                    cursor.set(
                        p,
                        batch.events.first().map_or(batch.next_offset, |e| e.offset),
                    );
                }
            }
        }
    }
    let keep_alive = Duration::from_millis(state.config.sse_keep_alive_ms);
    let tail = Tail {
        state,
        topic: name,
        partitions,
        cursor,
        pending: VecDeque::new(),
        next_partition: 0,
        finished: false,
        wait: keep_alive,
    };
    let events = futures_util::stream::unfold(tail, |mut tail| async move {
        tail.next().await.map(|event| (Ok(event), tail))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(keep_alive)))
}

struct Tail {
    state: AppState,
    topic: TopicName,
    partitions: Vec<PartitionId>,
    cursor: Cursor,
    pending: VecDeque<StoredEvent>,
    /// Partitions are read in turn so a busy one cannot starve the others.
    next_partition: usize,
    finished: bool,
    wait: Duration,
}

impl Tail {
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.cursor.set(event.partition, event.offset + 1);
                let mut data = Vec::with_capacity(event.json.len() + 80);
                render_event(&mut data, &event);
                // Raw CR/LF can only be insignificant whitespace in valid JSON (inside strings
                // they are escaped), so blanking them keeps the meaning and the SSE framing.
                for byte in &mut data {
                    if *byte == b'\n' || *byte == b'\r' {
                        *byte = b' ';
                    }
                }
                let data = String::from_utf8(data)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                return Some(SseEvent::default().id(self.cursor.to_string()).data(data));
            }
            if self.finished {
                return None;
            }
            if let Err(problem) = self.fill().await {
                self.finished = true;
                return Some(
                    SseEvent::default()
                        .event("problem")
                        .data(problem.body().to_string()),
                );
            }
            if self.pending.is_empty() {
                let waited = tokio::select! {
                    waited = self.state.log.wait_for_events(&self.topic, &self.cursor, self.wait) => waited,
                    () = self.state.shutting_down() => return None,
                };
                if let Err(e) = waited {
                    self.finished = true;
                    return Some(
                        SseEvent::default()
                            .event("problem")
                            .data(Problem::from(e).body().to_string()),
                    );
                }
            }
        }
    }

    /// Reads the next batch from the first partition, in turn, that has events.
    async fn fill(&mut self) -> Result<(), Problem> {
        for _ in 0..self.partitions.len() {
            let partition = self.partitions[self.next_partition];
            self.next_partition = (self.next_partition + 1) % self.partitions.len();
            let from = self.cursor.get(partition).unwrap_or(0);
            let batch = self
                .state
                .log
                .read(
                    &self.topic,
                    partition,
                    ReadFrom::Offset(from),
                    STREAM_READ_LIMITS,
                )
                .await?;
            if !batch.events.is_empty() {
                self.pending.extend(batch.events);
                return Ok(());
            }
            // Retention may have moved the start past the cursor.
            self.cursor.set(partition, batch.next_offset.max(from));
        }
        Ok(())
    }
}
