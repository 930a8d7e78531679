//! Group commit: one writer task per store takes every queued append (up to the batch bounds)
//! and writes them in ONE statement, so ONE transaction and one commit (one WAL flush)
//! acknowledge them all. A lone append calls `append_events`; several call `append_batch`,
//! which locks all their streams first (in name order), then applies them in order.
//!
//! Up to `write_batches_in_flight_max` batches run at once, each on its own pooled
//! connection: appends do not serialise on anything but their streams' rows (positions come
//! from a sequence, see the crate's docs), so PostgreSQL flushes the WAL of concurrent
//! batches together. An append whose own check fails (expected version, idempotency,
//! tombstone) is answered with its error and does not affect the others; a failure of the
//! statement (a lost connection, a timeout) fails every append of the batch, none of which
//! was then committed.

use std::sync::Arc;

use proteus_eventstore::limits::{Idempotency, check_expected_version, check_idempotency};
use proteus_eventstore::{
    AppendOutcome, EventStoreError, ExpectedVersion, ProposedEvent, StreamName,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::error::storage;
use crate::head::advance;
use crate::{Shared, expected_sql, get, unsigned};

pub(crate) struct AppendRequest {
    pub stream: StreamName,
    pub expected: ExpectedVersion,
    pub events: Vec<ProposedEvent>,
    /// Its size for `write_batch_bytes_max`, as `validate_append` counts it.
    pub bytes: usize,
    pub reply: oneshot::Sender<Result<AppendOutcome, EventStoreError>>,
}

pub(crate) struct BatchLimits {
    pub appends_max: usize,
    pub bytes_max: usize,
    pub in_flight_max: usize,
}

/// Runs until every sender is gone, then returns after answering everything queued and
/// finishing every batch in flight.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut requests: mpsc::Receiver<AppendRequest>,
    limits: BatchLimits,
) {
    let slots = Arc::new(Semaphore::new(limits.in_flight_max.max(1)));
    let mut in_flight = JoinSet::new();
    let mut carried: Option<AppendRequest> = None;
    loop {
        // Wait for a free slot before taking appends, so they keep gathering meanwhile.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        while in_flight.try_join_next().is_some() {}
        let first = match carried.take() {
            Some(request) => request,
            None => match requests.recv().await {
                Some(request) => request,
                None => break,
            },
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        // Whatever is already waiting joins, up to the bounds; the first is always taken.
        while batch.len() < limits.appends_max {
            match requests.try_recv() {
                Ok(request) => {
                    if bytes + request.bytes > limits.bytes_max {
                        carried = Some(request);
                        break;
                    }
                    bytes += request.bytes;
                    batch.push(request);
                }
                Err(_) => break,
            }
        }
        let shared = shared.clone();
        in_flight.spawn(async move {
            if batch.len() == 1 {
                let request = batch.remove(0);
                let result = append_one(&shared, &request).await;
                let _ = request.reply.send(result);
            } else {
                append_batch(&shared, batch).await;
            }
            drop(slot);
        });
    }
    while in_flight.join_next().await.is_some() {}
}

async fn append_one(
    shared: &Shared,
    request: &AppendRequest,
) -> Result<AppendOutcome, EventStoreError> {
    let events = &request.events;
    let category = request.stream.category();
    let (kind, version) = expected_sql(request.expected);
    let ids: Vec<&str> = events.iter().map(|e| &*e.id).collect();
    let types: Vec<&str> = events.iter().map(|e| &*e.event_type).collect();
    let schema_versions: Vec<Option<i64>> = events
        .iter()
        .map(|e| e.schema_version.map(i64::from))
        .collect();
    let data: Vec<&[u8]> = events.iter().map(|e| e.data.as_ref()).collect();
    let metadata: Vec<Option<&[u8]>> = events.iter().map(|e| e.metadata.as_deref()).collect();
    let rows = shared
        .query(
            &shared.sql.append,
            &[
                &request.stream.as_str(),
                &category.as_str(),
                &kind,
                &version,
                &ids,
                &types,
                &schema_versions,
                &data,
                &metadata,
            ],
            "appending",
            true,
        )
        .await?;
    let row = rows
        .first()
        .ok_or_else(|| storage("append_events answered no row"))?;
    decode(shared, row, request)
}

async fn append_batch(shared: &Shared, batch: Vec<AppendRequest>) {
    let result = async {
        let categories: Vec<_> = batch.iter().map(|r| r.stream.category()).collect();
        let streams: Vec<&str> = batch.iter().map(|r| r.stream.as_str()).collect();
        let category_names: Vec<&str> = categories.iter().map(|c| c.as_str()).collect();
        let (kinds, expected): (Vec<i16>, Vec<i64>) =
            batch.iter().map(|r| expected_sql(r.expected)).unzip();
        let counts: Vec<i32> = batch.iter().map(|r| r.events.len() as i32).collect();
        let events = || batch.iter().flat_map(|r| r.events.iter());
        let ids: Vec<&str> = events().map(|e| &*e.id).collect();
        let types: Vec<&str> = events().map(|e| &*e.event_type).collect();
        let schema_versions: Vec<Option<i64>> =
            events().map(|e| e.schema_version.map(i64::from)).collect();
        let data: Vec<&[u8]> = events().map(|e| e.data.as_ref()).collect();
        let metadata: Vec<Option<&[u8]>> = events().map(|e| e.metadata.as_deref()).collect();
        let params: [&(dyn ToSql + Sync); 10] = [
            &streams,
            &category_names,
            &kinds,
            &expected,
            &counts,
            &ids,
            &types,
            &schema_versions,
            &data,
            &metadata,
        ];
        let rows = shared
            .query(&shared.sql.append_batch, &params, "appending", true)
            .await?;
        if rows.len() != batch.len() {
            return Err(storage(format!(
                "append_batch answered {} rows for {} appends",
                rows.len(),
                batch.len()
            )));
        }
        Ok(rows)
    }
    .await;
    match result {
        Ok(rows) => {
            let outcomes: Vec<_> = batch
                .iter()
                .zip(&rows)
                .map(|(request, row)| decode(shared, row, request))
                .collect();
            for (request, outcome) in batch.into_iter().zip(outcomes) {
                let _ = request.reply.send(outcome);
            }
        }
        Err(error) => {
            for request in batch {
                let _ = request.reply.send(Err(copy(&error)));
            }
        }
    }
}

/// The same error for every append of a failed batch.
fn copy(error: &EventStoreError) -> EventStoreError {
    match error {
        EventStoreError::Unavailable { reason } => EventStoreError::Unavailable {
            reason: reason.clone(),
        },
        other => EventStoreError::Storage(other.to_string()),
    }
}

/// Turns one result row of `append_events` into the append's answer, deciding idempotency
/// with the domain's rule.
fn decode(
    shared: &Shared,
    row: &Row,
    request: &AppendRequest,
) -> Result<AppendOutcome, EventStoreError> {
    let (stream, expected, events) = (&request.stream, request.expected, &request.events);
    let status: i16 = get(row, 0)?;
    let actual = get::<Option<i64>>(row, 1)?
        .map(|v| unsigned(v, "version"))
        .transpose()?;
    let count = events.len() as u64;
    match status {
        0 => {
            let first_version = unsigned(get(row, 2)?, "version")?;
            let first_position = unsigned(get(row, 3)?, "position")?;
            let last_position = first_position + count - 1;
            // Committed (positions below it may not be yet: module `head` decides that).
            advance(&shared.committed, last_position);
            Ok(AppendOutcome {
                first_version,
                last_version: first_version + count - 1,
                first_position,
                last_position,
                duplicate: false,
            })
        }
        1 => Err(EventStoreError::StreamDeleted {
            stream: stream.clone(),
        }),
        2 => {
            check_expected_version(stream, expected, actual)?;
            Err(storage(format!(
                "PostgreSQL refused an append to '{stream}' for its expected version {expected}, which matches the stream's version {actual:?}"
            )))
        }
        3 => {
            let as_u64 = |values: Option<Vec<Option<i64>>>| {
                values
                    .unwrap_or_default()
                    .into_iter()
                    .map(|v| v.map(|v| unsigned(v, "version")).transpose())
                    .collect::<Result<Vec<Option<u64>>, EventStoreError>>()
            };
            let versions = as_u64(get(row, 4)?)?;
            let positions = as_u64(get(row, 5)?)?;
            if versions.len() != events.len() || positions.len() != events.len() {
                return Err(storage("PostgreSQL answered the wrong number of known ids"));
            }
            match check_idempotency(stream, events, &versions)? {
                Idempotency::Duplicate { first_version } => {
                    let (Some(first_position), Some(last_position)) =
                        (positions[0], positions[events.len() - 1])
                    else {
                        return Err(storage("a known event id has no position"));
                    };
                    Ok(AppendOutcome {
                        first_version,
                        last_version: first_version + count - 1,
                        first_position,
                        last_position,
                        duplicate: true,
                    })
                }
                Idempotency::New => Err(storage(
                    "PostgreSQL reported known event ids but returned none",
                )),
            }
        }
        other => Err(storage(format!("append_events answered status {other}"))),
    }
}
