//! Importing events recorded by another store with their positions, versions, ids and times
//! kept: what `proteus migrate` uses to move an event store to PostgreSQL.

use std::collections::BTreeMap;

use proteus_eventstore::limits::{check_import_position, check_imported_stream, validate_import};
use proteus_eventstore::{EventStoreError, RecordedEvent};

use crate::error::{pg, pool};
use crate::head::advance;
use crate::{PostgresEventStore, big};

impl PostgresEventStore {
    /// Writes `events`, in position order, exactly as another store recorded them, in one
    /// transaction holding its streams' rows and then the writers key exclusively (appends
    /// wait meanwhile; readers wait for the import to end before trusting its positions). They
    /// must all come after every position this store has handed out, and each stream's versions
    /// must continue its own without gap. Refused, writing nothing, when any of that does not
    /// hold, when a stream is deleted here, or over [`proteus_eventstore::IMPORT_EVENTS_MAX`].
    pub async fn import(&self, events: &[RecordedEvent]) -> Result<(), EventStoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let imported = validate_import(events)?;
        let what = "importing events";
        let schema = format!("\"{}\"", self.schema());
        let mut client = self
            .inner
            .shared
            .pool
            .get()
            .await
            .map_err(|e| pool(e, what, &self.inner.shared.url))?;
        let fail = |e| pg(e, what, true, &self.inner.shared.url);
        let txn = client.transaction().await.map_err(fail)?;
        // Stream rows first (placeholders for new ones, all locked in name order), then the
        // writers key: the order appends take them in, so an import and appends cannot deadlock.
        let names: Vec<&str> = imported.keys().map(|stream| stream.as_str()).collect();
        txn.execute(
            &format!(
                "INSERT INTO {schema}.streams (name) SELECT n FROM unnest($1::text[]) AS n \
                 ORDER BY n ON CONFLICT (name) DO NOTHING"
            ),
            &[&names],
        )
        .await
        .map_err(fail)?;
        let rows = txn
            .query(
                &format!(
                    "SELECT name, last_version, deleted FROM {schema}.streams \
                     WHERE name = ANY($1) ORDER BY name FOR UPDATE"
                ),
                &[&names],
            )
            .await
            .map_err(fail)?;
        txn.execute(
            &format!("SELECT pg_advisory_xact_lock(o_class, o_key) FROM {schema}.writers_key()"),
            &[],
        )
        .await
        .map_err(fail)?;
        let head = txn
            .query_one(
                &format!(
                    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {schema}.positions"
                ),
                &[],
            )
            .await
            .map_err(fail)?;
        let head = u64::try_from(head.get::<_, i64>(0)).unwrap_or(0);
        check_import_position(events[0].position, head)?;
        let mut stored: BTreeMap<String, (Option<i64>, bool)> = BTreeMap::new();
        for row in rows {
            stored.insert(row.get(0), (row.get(1), row.get(2)));
        }
        for (stream, imported) in &imported {
            let (last, deleted) = stored
                .get(stream.as_str())
                .copied()
                .unwrap_or((None, false));
            check_imported_stream(stream.as_str(), imported, last.map(|v| v as u64), deleted)?;
        }
        let positions: Vec<i64> = events.iter().map(|e| big(e.position)).collect();
        let streams: Vec<&str> = events.iter().map(|e| e.stream.as_str()).collect();
        let versions: Vec<i64> = events.iter().map(|e| big(e.version)).collect();
        let categories: Vec<String> = events
            .iter()
            .map(|e| e.stream.category().to_string())
            .collect();
        let ids: Vec<&str> = events.iter().map(|e| &*e.id).collect();
        let types: Vec<&str> = events.iter().map(|e| &*e.event_type).collect();
        let schema_versions: Vec<Option<i64>> = events
            .iter()
            .map(|e| e.schema_version.map(i64::from))
            .collect();
        let data: Vec<&[u8]> = events.iter().map(|e| e.data.as_ref()).collect();
        let metadata: Vec<Option<&[u8]>> = events.iter().map(|e| e.metadata.as_deref()).collect();
        let recorded: Vec<i64> = events.iter().map(|e| e.recorded_ms).collect();
        txn.execute(
            &format!(
                "INSERT INTO {schema}.events (position, stream, version, category, event_id, \
                 event_type, schema_version, data, metadata, recorded_ms) \
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], \
                 $5::text[], $6::text[], $7::bigint[], $8::bytea[], $9::bytea[], $10::bigint[])"
            ),
            &[
                &positions,
                &streams,
                &versions,
                &categories,
                &ids,
                &types,
                &schema_versions,
                &data,
                &metadata,
                &recorded,
            ],
        )
        .await
        .map_err(|e| match e.code() {
            // The unique (stream, event id) index: refused like any import that does not
            // continue this store, and rolled back whole.
            Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                EventStoreError::InvalidRequest {
                    reason: format!(
                        "an imported event id is already in its stream in this store ({})",
                        e.as_db_error()
                            .and_then(|d| d.detail())
                            .unwrap_or("duplicate key")
                    ),
                }
            }
            _ => fail(e),
        })?;
        let last_versions: Vec<i64> = imported.values().map(|s| big(s.last_version)).collect();
        let last_positions: Vec<i64> = imported.values().map(|s| big(s.last_position)).collect();
        txn.execute(
            &format!(
                "INSERT INTO {schema}.streams (name, last_version, last_position) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) \
                 ON CONFLICT (name) DO UPDATE SET last_version = EXCLUDED.last_version, \
                 last_position = EXCLUDED.last_position"
            ),
            &[&names, &last_versions, &last_positions],
        )
        .await
        .map_err(fail)?;
        let new_head = events[events.len() - 1].position;
        // Marks the positions in flight, then moves the sequence past them (not transactional:
        // a rolled-back import leaves a gap, which readers skip).
        txn.execute(
            &format!("SELECT {schema}.import_positions($1, $2)"),
            &[&big(events[0].position), &big(new_head)],
        )
        .await
        .map_err(fail)?;
        txn.commit().await.map_err(fail)?;
        // The follower announces it to every process.
        advance(&self.inner.shared.committed, new_head);
        Ok(())
    }
}
