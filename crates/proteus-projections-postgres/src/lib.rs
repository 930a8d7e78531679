//! The PostgreSQL [`ReadModelStore`]: projection records, checkpoints, documents and list
//! items in one PostgreSQL schema (named in [`PostgresReadModelConfig::schema`]), over a
//! bounded pool of tokio-postgres connections (deadpool-postgres).
//!
//! # Tables
//!
//! - `projections (name PK, record json)`: each projection's record (definition and run state),
//!   the exact JSON written, so a definition reads back as the user wrote it;
//! - `checkpoints (name PK, checkpoint json)`: one row per projection, created with its record;
//!   `checkpoint` is NULL before the first commit and after a reset;
//! - `docs (projection, key bytea, doc json, PK (projection, key))`;
//! - `list_items (projection, key bytea, seq bigint, item json, PK (projection, key, seq))`:
//!   one row per kept item, sequences from 0 in the order appended, so a list's count is its
//!   last sequence + 1.
//!
//! Keys are the UTF-8 bytes of the document key, so every string is a key (NUL included) and
//! SQL orders keys exactly as Rust orders strings (by byte). Documents are `json`, not `jsonb`:
//! `jsonb` refuses the string `"\u0000"` and reorders object members; `json` keeps the text
//! written. `docs/backends/postgres.md` describes them.
//!
//! # Commits: one transaction, a few round trips
//!
//! [`check_writes`] runs before anything is sent. The writes are then folded (the last write
//! to a key wins; appends to a key add up, and only the items that remain kept are sent) and
//! the commit runs as one transaction: `BEGIN`; `SELECT … FROM checkpoints … FOR UPDATE`
//! (which serialises the commits of a projection, across processes too, and answers `NotFound`
//! and `CheckpointBehind` before anything is written); then, pipelined on the connection, one
//! `INSERT … SELECT FROM unnest(…) ON CONFLICT DO UPDATE` for the documents written, one
//! `DELETE … = ANY(…)` for those deleted, one statement for the lists (each list's next
//! sequence from one index entry, its trimmed rows deleted, its items inserted), and the
//! checkpoint's `UPDATE`; then `COMMIT`. A commit of thousands of writes therefore takes four
//! round trips (statements are split only past `write_chunk_rows_max` rows or
//! `write_chunk_bytes_max` bytes). With PostgreSQL's default `synchronous_commit = on` a commit
//! that returned is durable.
//!
//! When the connection breaks while `COMMIT` is in flight, the outcome is unknown to the
//! client; the store then asks PostgreSQL (`txid_status` of the transaction's id, read with
//! the lock) whether it committed, and answers accordingly, so a caller that retries a failed
//! commit does not append its list items twice.
//!
//! # Queries
//!
//! A query runs in one `REPEATABLE READ READ ONLY` transaction (one snapshot, as the embedded
//! store's read transaction) and feeds a [`proteus_projections::query::Scan`] in the order it
//! asks ([`ScanOrder`]): keys ascending after the cursor, descending before it, or every
//! document. Rows come by keyset (`WHERE key > $k ORDER BY key LIMIT n`) in chunks growing
//! from about the page size to `query_chunk_rows_max`, streamed, so memory stays bounded and a
//! page sorted by key costs about one page of rows. A projection that keeps lists is scanned
//! by its item rows (keyset on `(key, seq)`), grouped by key into list documents. At most
//! `query_scan_docs_max` documents are read; a query needing more is refused with
//! [`StoreError::QueryTooBroad`] rather than answered partially.
//!
//! Filters are evaluated by the domain's `Scan`, not translated to SQL: every document of a
//! scan is fetched and decoded. Translating conditions to SQL (`jsonb` paths, expression
//! indexes on sort paths) is a future optimisation that would not change any answer.
//!
//! # Migrations
//!
//! The SQL files of `migrations/` are compiled in ([`MIGRATIONS`]) and applied at open, in one
//! transaction under the schema's advisory lock, recorded in `<schema>.readmodel_migrations`.
//!
//! # Failures
//!
//! Every driver or pool failure is [`StoreError::Backend`] (the port has no other kind); the
//! message says when it is temporary (a lost connection, a busy pool, a deadlock, a timeout,
//! a server shutting down), which the projection runner retries like any backend failure.

mod commit;
mod config;
mod error;
mod migrate;
mod scan;

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use proteus_projections::store::check_writes;
use proteus_projections::{
    Checkpoint, Page, ProjectionName, ProjectionRecord, Query, ReadModelStore, RunState,
    StoreError, Write, list_document,
};
use serde_json::Value;

pub use crate::config::{
    PostgresReadModelConfig, QUERY_SCAN_DOCS_MAX_DEFAULT, SCHEMA_NAME_BYTES_MAX,
    validate_schema_name,
};
pub use crate::error::START_HINT;
pub use crate::migrate::{MIGRATIONS, MIGRATIONS_TABLE, Migration};

use crate::error::{backend, pg};

/// The SQL of every call, with the schema spliced in once at open.
pub(crate) struct Statements {
    save: String,
    load: String,
    list: String,
    lock_record: String,
    update_record: String,
    get_many: String,
    checkpoint: String,
    pub(crate) lock_checkpoint: String,
    pub(crate) create_checkpoint: String,
    pub(crate) save_checkpoint: String,
    pub(crate) upsert_docs: String,
    pub(crate) delete_docs: String,
    pub(crate) append_lists: String,
    pub(crate) xact_status: String,
    clear_checkpoint: String,
    drop_record: String,
    drop_checkpoint: String,
    delete_all_docs: String,
    delete_all_items: String,
    pub(crate) has_lists: String,
    pub(crate) docs_asc: String,
    pub(crate) docs_asc_after: String,
    pub(crate) docs_desc: String,
    pub(crate) docs_desc_before: String,
    pub(crate) items_asc: String,
    pub(crate) items_asc_after: String,
    pub(crate) items_desc: String,
    pub(crate) items_desc_before: String,
}

impl Statements {
    fn new(schema: &str) -> Self {
        let s = format!("\"{schema}\"");
        let docs = |condition: &str, order: &str, limit: usize| {
            format!(
                "SELECT key, doc::text FROM {s}.docs WHERE projection = $1{condition} \
                 ORDER BY key {order} LIMIT ${limit}"
            )
        };
        let items = |condition: &str, order: &str, limit: usize| {
            format!(
                "SELECT key, seq, item::text FROM {s}.list_items WHERE projection = $1{condition} \
                 ORDER BY key {order}, seq {order} LIMIT ${limit}"
            )
        };
        Statements {
            // The checkpoint row is created with the record, in the same statement.
            save: format!(
                "WITH saved AS (INSERT INTO {s}.projections (name, record) \
                     VALUES ($1, $2::text::json) \
                     ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record RETURNING name) \
                 INSERT INTO {s}.checkpoints (name) SELECT name FROM saved \
                 ON CONFLICT (name) DO NOTHING"
            ),
            load: format!("SELECT record::text FROM {s}.projections WHERE name = $1"),
            list: format!("SELECT name, record::text FROM {s}.projections ORDER BY name"),
            lock_record: format!(
                "SELECT record::text FROM {s}.projections WHERE name = $1 FOR UPDATE"
            ),
            update_record: format!(
                "UPDATE {s}.projections SET record = $2::text::json WHERE name = $1"
            ),
            // Per requested key (by its ordinal, so duplicates are answered each time): its
            // document, or its list's rows in order. One statement: one snapshot.
            get_many: format!(
                "SELECT u.ord, d.doc::text, NULL::bigint AS seq \
                   FROM unnest($2::bytea[]) WITH ORDINALITY AS u(k, ord) \
                   JOIN {s}.docs d ON d.projection = $1 AND d.key = u.k \
                 UNION ALL \
                 SELECT u.ord, l.item::text, l.seq \
                   FROM unnest($2::bytea[]) WITH ORDINALITY AS u(k, ord) \
                   JOIN {s}.list_items l ON l.projection = $1 AND l.key = u.k \
                 ORDER BY 1, 3"
            ),
            checkpoint: format!("SELECT checkpoint::text FROM {s}.checkpoints WHERE name = $1"),
            lock_checkpoint: format!(
                "SELECT checkpoint::text, txid_current() FROM {s}.checkpoints \
                 WHERE name = $1 FOR UPDATE"
            ),
            create_checkpoint: format!(
                "INSERT INTO {s}.checkpoints (name) SELECT name FROM {s}.projections \
                 WHERE name = $1 ON CONFLICT (name) DO NOTHING"
            ),
            save_checkpoint: format!(
                "UPDATE {s}.checkpoints SET checkpoint = $2::text::json WHERE name = $1"
            ),
            upsert_docs: format!(
                "INSERT INTO {s}.docs (projection, key, doc) \
                 SELECT $1, u.k, u.d::json FROM unnest($2::bytea[], $3::text[]) AS u(k, d) \
                 ON CONFLICT (projection, key) DO UPDATE SET doc = EXCLUDED.doc"
            ),
            delete_docs: format!(
                "DELETE FROM {s}.docs WHERE projection = $1 AND key = ANY($2::bytea[])"
            ),
            // $2 keys, $3 items appended per key, $4 items kept at most per key (after the
            // appends); $5 the key ordinal of each item sent, $6 its index among the key's
            // appended items, $7 its JSON. Only items that stay kept are sent. Both the DELETE
            // and the INSERT see the rows as before the statement, so the DELETE trims only
            // existing rows.
            append_lists: format!(
                "WITH lists AS ( \
                     SELECT l.k, l.added, l.keep, l.ord, \
                            COALESCE((SELECT m.seq + 1 FROM {s}.list_items m \
                                       WHERE m.projection = $1 AND m.key = l.k \
                                       ORDER BY m.seq DESC LIMIT 1), 0) AS next \
                       FROM unnest($2::bytea[], $3::bigint[], $4::bigint[]) \
                            WITH ORDINALITY AS l(k, added, keep, ord)), \
                 trimmed AS ( \
                     DELETE FROM {s}.list_items d USING lists l \
                      WHERE d.projection = $1 AND d.key = l.k \
                        AND d.seq < l.next + l.added - l.keep) \
                 INSERT INTO {s}.list_items (projection, key, seq, item) \
                 SELECT $1, l.k, l.next + i.n, i.item::json \
                   FROM unnest($5::bigint[], $6::bigint[], $7::text[]) AS i(ord, n, item) \
                   JOIN lists l ON l.ord = i.ord"
            ),
            xact_status: "SELECT txid_status($1)".to_owned(),
            clear_checkpoint: format!(
                "INSERT INTO {s}.checkpoints (name, checkpoint) VALUES ($1, NULL) \
                 ON CONFLICT (name) DO UPDATE SET checkpoint = NULL"
            ),
            drop_record: format!("DELETE FROM {s}.projections WHERE name = $1"),
            drop_checkpoint: format!("DELETE FROM {s}.checkpoints WHERE name = $1"),
            delete_all_docs: format!("DELETE FROM {s}.docs WHERE projection = $1"),
            delete_all_items: format!("DELETE FROM {s}.list_items WHERE projection = $1"),
            has_lists: format!(
                "SELECT EXISTS (SELECT 1 FROM {s}.list_items WHERE projection = $1)"
            ),
            docs_asc: docs("", "ASC", 2),
            docs_asc_after: docs(" AND key > $2", "ASC", 3),
            docs_desc: docs("", "DESC", 2),
            docs_desc_before: docs(" AND key < $2", "DESC", 3),
            items_asc: items("", "ASC", 2),
            items_asc_after: items(" AND (key, seq) > ($2, $3)", "ASC", 4),
            items_desc: items("", "DESC", 2),
            items_desc_before: items(" AND (key, seq) < ($2, $3)", "DESC", 4),
        }
    }
}

/// The PostgreSQL read-model store. Clones share the same pool.
#[derive(Clone)]
pub struct PostgresReadModelStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pool: Pool,
    pub(crate) sql: Statements,
    pub(crate) config: PostgresReadModelConfig,
}

impl Inner {
    /// A pooled connection.
    pub(crate) async fn client(&self, what: &str) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| error::pool(e, what, &self.config.url))
    }
}

pub(crate) fn not_found(name: &ProjectionName) -> StoreError {
    StoreError::NotFound {
        projection: name.clone(),
    }
}

/// Decodes a stored document or item of `key`.
pub(crate) fn decode(key: &str, text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|e| {
        backend(format!(
            "document '{key}' is not valid JSON in the store: {e}"
        ))
    })
}

/// A stored key: its UTF-8 bytes.
pub(crate) fn decode_key(bytes: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec())
        .map_err(|e| backend(format!("a stored document key is not UTF-8: {e}")))
}

pub(crate) fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    index: usize,
) -> Result<T, StoreError> {
    row.try_get(index)
        .map_err(|e| backend(format!("cannot decode column {index} of a stored row: {e}")))
}

fn decode_record(name: &str, text: &str) -> Result<ProjectionRecord, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| backend(format!("stored projection '{name}' is unreadable: {e}")))
}

pub(crate) fn decode_checkpoint(name: &str, text: &str) -> Result<Checkpoint, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| backend(format!("the checkpoint of '{name}' is unreadable: {e}")))
}

impl PostgresReadModelStore {
    /// Whether its PostgreSQL server answers a query on one of the pool's connections within
    /// `timeout` (for `/readyz` and `proteus_backend_up`); `Err` says why not.
    pub async fn check_health(&self, timeout: std::time::Duration) -> Result<(), String> {
        proteus_postgres::check_health(&self.inner.pool, &self.inner.config.url, timeout).await
    }

    /// Connects, applies the migrations this schema misses (creating it if needed) and fills
    /// the pool lazily. Fails with a message saying how to start PostgreSQL when it cannot be
    /// reached.
    pub async fn open(config: PostgresReadModelConfig) -> Result<Self, StoreError> {
        let schema = config.schema.clone();
        let pool = config
            .validate()?
            .open(&schema, &migrate::MIGRATIONS)
            .await
            .map_err(|e| backend(e.message))?;
        Ok(PostgresReadModelStore {
            inner: Arc::new(Inner {
                pool,
                sql: Statements::new(&schema),
                config,
            }),
        })
    }

    /// The schema this store lives in.
    pub fn schema(&self) -> &str {
        &self.inner.config.schema
    }

    /// Closes the pool: calls in flight finish, later ones fail.
    pub fn close(&self) {
        self.inner.pool.close();
    }
}

#[async_trait]
impl ReadModelStore for PostgresReadModelStore {
    async fn save_projection(&self, record: &ProjectionRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(record).map_err(|e| backend(e.to_string()))?;
        let what = format!("saving projection '{}'", record.name);
        let client = self.inner.client(&what).await?;
        let statement = client
            .prepare_cached(&self.inner.sql.save)
            .await
            .map_err(|e| pg(e, &what, &self.inner.config.url))?;
        client
            .execute(&statement, &[&record.name.as_str(), &json])
            .await
            .map_err(|e| pg(e, &what, &self.inner.config.url))?;
        Ok(())
    }

    async fn load_projection(
        &self,
        name: &ProjectionName,
    ) -> Result<Option<ProjectionRecord>, StoreError> {
        let what = format!("loading projection '{name}'");
        let client = self.inner.client(&what).await?;
        let statement = client
            .prepare_cached(&self.inner.sql.load)
            .await
            .map_err(|e| pg(e, &what, &self.inner.config.url))?;
        let row = client
            .query_opt(&statement, &[&name.as_str()])
            .await
            .map_err(|e| pg(e, &what, &self.inner.config.url))?;
        row.map(|row| decode_record(name.as_str(), column(&row, 0)?))
            .transpose()
    }

    async fn list_projections(&self) -> Result<Vec<ProjectionRecord>, StoreError> {
        let what = "listing projections";
        let client = self.inner.client(what).await?;
        let statement = client
            .prepare_cached(&self.inner.sql.list)
            .await
            .map_err(|e| pg(e, what, &self.inner.config.url))?;
        let rows = client
            .query(&statement, &[])
            .await
            .map_err(|e| pg(e, what, &self.inner.config.url))?;
        let mut records = rows
            .iter()
            .map(|row| decode_record(column(row, 0)?, column(row, 1)?))
            .collect::<Result<Vec<_>, _>>()?;
        // The column sorts by byte already; sorting again keeps the promise whatever it is.
        records.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        Ok(records)
    }

    async fn set_state(
        &self,
        name: &ProjectionName,
        state: &RunState,
        updated_ms: i64,
    ) -> Result<(), StoreError> {
        let what = format!("changing the state of projection '{name}'");
        let fail = |e| pg(e, &what, &self.inner.config.url);
        let mut client = self.inner.client(&what).await?;
        let lock = client
            .prepare_cached(&self.inner.sql.lock_record)
            .await
            .map_err(fail)?;
        let update = client
            .prepare_cached(&self.inner.sql.update_record)
            .await
            .map_err(fail)?;
        let txn = client.transaction().await.map_err(fail)?;
        let changed = async {
            let Some(row) = txn
                .query_opt(&lock, &[&name.as_str()])
                .await
                .map_err(fail)?
            else {
                return Err(not_found(name));
            };
            let mut record = decode_record(name.as_str(), column(&row, 0)?)?;
            record.state = state.clone();
            record.updated_ms = updated_ms;
            let json = serde_json::to_string(&record).map_err(|e| backend(e.to_string()))?;
            txn.execute(&update, &[&name.as_str(), &json])
                .await
                .map_err(fail)?;
            Ok(())
        }
        .await;
        finish(txn, changed, fail).await
    }

    async fn get(&self, name: &ProjectionName, key: &str) -> Result<Option<Value>, StoreError> {
        let mut docs = self.get_many(name, &[key.to_owned()]).await?;
        Ok(docs.pop().flatten())
    }

    async fn get_many(
        &self,
        name: &ProjectionName,
        keys: &[String],
    ) -> Result<Vec<Option<Value>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let what = format!("reading documents of projection '{name}'");
        let fail = |e| pg(e, &what, &self.inner.config.url);
        let client = self.inner.client(&what).await?;
        let statement = client
            .prepare_cached(&self.inner.sql.get_many)
            .await
            .map_err(fail)?;
        let key_bytes: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let rows = client
            .query(&statement, &[&name.as_str(), &key_bytes])
            .await
            .map_err(fail)?;
        /// What was found for one requested key.
        enum Found {
            Doc(Value),
            List(Vec<Value>, i64),
        }
        let mut found: Vec<Option<Found>> = keys.iter().map(|_| None).collect();
        for row in &rows {
            let ord: i64 = column(row, 0)?;
            let index = usize::try_from(ord - 1)
                .ok()
                .filter(|&i| i < keys.len())
                .ok_or_else(|| backend(format!("a read returned key ordinal {ord}")))?;
            let key = &keys[index];
            let value = decode(key, column(row, 1)?)?;
            let seq: Option<i64> = column(row, 2)?;
            let slot = &mut found[index];
            match (seq, slot) {
                // A key is a document or a list; if both were stored, the list wins (as in the
                // embedded store, whose list tables take precedence).
                (Some(seq), Some(Found::List(items, last))) => {
                    items.push(value);
                    *last = seq;
                }
                (Some(seq), slot) => *slot = Some(Found::List(vec![value], seq)),
                (None, slot @ None) => *slot = Some(Found::Doc(value)),
                (None, Some(_)) => {}
            }
        }
        Ok(found
            .into_iter()
            .map(|found| match found {
                None => None,
                Some(Found::Doc(doc)) => Some(doc),
                Some(Found::List(items, last)) => {
                    Some(list_document(items, u64::try_from(last).unwrap_or(0) + 1))
                }
            })
            .collect())
    }

    async fn commit(
        &self,
        name: &ProjectionName,
        writes: Vec<Write>,
        checkpoint: Checkpoint,
    ) -> Result<(), StoreError> {
        check_writes(&writes)?;
        commit::commit(&self.inner, name, writes, checkpoint).await
    }

    async fn checkpoint(&self, name: &ProjectionName) -> Result<Option<Checkpoint>, StoreError> {
        let what = format!("reading the checkpoint of projection '{name}'");
        let client = self.inner.client(&what).await?;
        let statement = client
            .prepare_cached(&self.inner.sql.checkpoint)
            .await
            .map_err(|e| pg(e, &what, &self.inner.config.url))?;
        let row = client
            .query_opt(&statement, &[&name.as_str()])
            .await
            .map_err(|e| pg(e, &what, &self.inner.config.url))?;
        match row {
            None => Ok(None),
            Some(row) => column::<Option<&str>>(&row, 0)?
                .map(|text| decode_checkpoint(name.as_str(), text))
                .transpose(),
        }
    }

    async fn query(&self, name: &ProjectionName, query: &Query) -> Result<Page, StoreError> {
        query.check()?;
        scan::run(&self.inner, name, query).await
    }

    async fn reset(&self, name: &ProjectionName) -> Result<(), StoreError> {
        let what = format!("resetting projection '{name}'");
        self.remove(name, &what, false).await.map(|_| ())
    }

    async fn drop_projection(&self, name: &ProjectionName) -> Result<bool, StoreError> {
        let what = format!("dropping projection '{name}'");
        self.remove(name, &what, true).await
    }
}

impl PostgresReadModelStore {
    /// Removes a projection's documents, lists and checkpoint in one transaction, and with
    /// `drop` its record too; without `drop`, [`StoreError::NotFound`] when it does not exist.
    /// Returns whether the record existed.
    ///
    /// Locks are taken in the order record row, then checkpoint row (commits take only the
    /// latter), and the rows are deleted only once the checkpoint row is held, by statements
    /// whose snapshot is later than any commit that held it before: no document of a commit
    /// can survive a reset or drop that returned after it.
    async fn remove(
        &self,
        name: &ProjectionName,
        what: &str,
        drop: bool,
    ) -> Result<bool, StoreError> {
        let sql = &self.inner.sql;
        let fail = |e| pg(e, what, &self.inner.config.url);
        let mut client = self.inner.client(what).await?;
        let (first, second) = if drop {
            (&sql.drop_record, &sql.drop_checkpoint)
        } else {
            (&sql.lock_record, &sql.clear_checkpoint)
        };
        let first = client.prepare_cached(first).await.map_err(fail)?;
        let second = client.prepare_cached(second).await.map_err(fail)?;
        let docs = client
            .prepare_cached(&sql.delete_all_docs)
            .await
            .map_err(fail)?;
        let items = client
            .prepare_cached(&sql.delete_all_items)
            .await
            .map_err(fail)?;
        let txn = client.transaction().await.map_err(fail)?;
        let removed = async {
            txn.batch_execute(&format!(
                "SET LOCAL statement_timeout = {}",
                self.inner.config.reset_statement_timeout_ms
            ))
            .await
            .map_err(fail)?;
            let name_str = name.as_str();
            let existed = txn.execute(&first, &[&name_str]).await.map_err(fail)? > 0;
            if !existed && !drop {
                return Err(not_found(name));
            }
            txn.execute(&second, &[&name_str]).await.map_err(fail)?;
            futures_util::future::try_join(
                txn.execute(&docs, &[&name_str]),
                txn.execute(&items, &[&name_str]),
            )
            .await
            .map_err(fail)?;
            Ok(existed)
        }
        .await;
        finish(txn, removed, fail).await
    }
}

/// Commits `txn` after `result`, or rolls it back (now, rather than when the connection is
/// next used) after an error.
async fn finish<T>(
    txn: deadpool_postgres::Transaction<'_>,
    result: Result<T, StoreError>,
    fail: impl Fn(tokio_postgres::Error) -> StoreError,
) -> Result<T, StoreError> {
    match result {
        Ok(value) => {
            txn.commit().await.map_err(fail)?;
            Ok(value)
        }
        Err(error) => {
            let _ = txn.rollback().await;
            Err(error)
        }
    }
}
