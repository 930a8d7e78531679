//! Importing events recorded by another store with their positions, versions, ids and times
//! kept: what `proteus migrate` uses to move an event store to PostgreSQL.

use std::collections::BTreeMap;

use proteus_eventstore::{EventStoreError, RecordedEvent};

use crate::error::{pg, pool};
use crate::head::advance;
use crate::{PostgresEventStore, big};

/// Most events imported in one call (one transaction).
pub const IMPORT_EVENTS_MAX: usize = 10_000;

impl PostgresEventStore {
    /// Writes `events`, in position order, exactly as another store recorded them, in one
    /// transaction holding its streams' rows and then the writers key exclusively (appends
    /// wait meanwhile; readers wait for the import to end before trusting its positions). They
    /// must all come after every position this store has handed out, and each stream's versions
    /// must continue its own without gap. Refused, writing nothing, when any of that does not
    /// hold, when a stream is deleted here, or over [`IMPORT_EVENTS_MAX`].
    pub async fn import(&self, events: &[RecordedEvent]) -> Result<(), EventStoreError> {
        let invalid = |reason: String| EventStoreError::InvalidRequest { reason };
        if events.is_empty() {
            return Ok(());
        }
        if events.len() > IMPORT_EVENTS_MAX {
            return Err(invalid(format!(
                "{} events in one import; the most is {IMPORT_EVENTS_MAX}",
                events.len()
            )));
        }
        if events.windows(2).any(|w| w[0].position >= w[1].position) {
            return Err(invalid(
                "imported events must be in strictly increasing position order".into(),
            ));
        }
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
        // Each stream's first imported version must follow what the store holds.
        let mut firsts: BTreeMap<&str, u64> = BTreeMap::new();
        let mut lasts: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for event in events {
            let stream = event.stream.as_str();
            if let Some(&(version, _)) = lasts.get(stream)
                && event.version != version + 1
            {
                return Err(invalid(format!(
                    "stream '{stream}' jumps from version {version} to {} within the import",
                    event.version
                )));
            }
            firsts.entry(stream).or_insert(event.version);
            lasts.insert(stream, (event.version, event.position));
        }
        let txn = client.transaction().await.map_err(fail)?;
        // Stream rows first (placeholders for new ones, all locked in name order), then the
        // writers key: the order appends take them in, so an import and appends cannot deadlock.
        let names: Vec<&str> = firsts.keys().copied().collect();
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
        if events[0].position <= head {
            return Err(invalid(format!(
                "the first imported event is at position {}, not after this store's head {head}; import only what follows it",
                events[0].position
            )));
        }
        let mut stored: BTreeMap<String, (Option<i64>, bool)> = BTreeMap::new();
        for row in rows {
            stored.insert(row.get(0), (row.get(1), row.get(2)));
        }
        for (stream, first) in &firsts {
            let (last, deleted) = stored.get(*stream).copied().unwrap_or((None, false));
            if deleted {
                return Err(invalid(format!(
                    "stream '{stream}' is deleted in this store"
                )));
            }
            let expected = last.map_or(0, |v| v as u64 + 1);
            if *first != expected {
                return Err(invalid(format!(
                    "stream '{stream}' continues at version {expected} in this store, but the import starts it at {first}"
                )));
            }
        }
        let positions: Vec<i64> = events.iter().map(|e| big(e.position)).collect();
        let streams: Vec<&str> = events.iter().map(|e| e.stream.as_str()).collect();
        let versions: Vec<i64> = events.iter().map(|e| big(e.version)).collect();
        let categories: Vec<String> = events
            .iter()
            .map(|e| e.stream.category().to_string())
            .collect();
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
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
        .map_err(fail)?;
        let last_names: Vec<&str> = lasts.keys().copied().collect();
        let last_versions: Vec<i64> = lasts.values().map(|&(v, _)| big(v)).collect();
        let last_positions: Vec<i64> = lasts.values().map(|&(_, p)| big(p)).collect();
        txn.execute(
            &format!(
                "INSERT INTO {schema}.streams (name, last_version, last_position) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[]) \
                 ON CONFLICT (name) DO UPDATE SET last_version = EXCLUDED.last_version, \
                 last_position = EXCLUDED.last_position"
            ),
            &[&last_names, &last_versions, &last_positions],
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
