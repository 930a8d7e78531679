//! The PostgreSQL [`EventStore`]: streams, the `$all` feed and snapshots in one PostgreSQL
//! schema (named in [`PostgresEventStoreConfig::schema`]), over a bounded pool of
//! tokio-postgres connections (deadpool-postgres).
//!
//! # Tables
//!
//! The sequence `positions` (the last position handed out), `streams` (name, last version and
//! position, tombstone), `events` (the `$all` feed keyed by position, unique
//! `(stream, version)` and `(stream, event_id)`, indexed by `(category, position)`) and
//! `snapshots` (the latest per stream). `docs/backends/postgres.md` describes them.
//!
//! # Appends: one statement, one transaction, group-committed, several in flight
//!
//! Every validation of `proteus_eventstore::limits` runs before anything is sent. Appends are
//! then queued to the store's writer task (module `writer`), which takes everything queued
//! (up to `write_batch_appends_max` / `write_batch_bytes_max`) and sends it as ONE statement:
//! the `append_events` SQL function for a lone append, `append_batch` for several, with up to
//! `write_batches_in_flight_max` batches in flight on separate connections. For each append,
//! `append_events` locks the stream's row (`FOR UPDATE`, creating it if needed), refuses a
//! tombstoned stream, looks its event ids up (a retry is then decided by the domain's
//! `check_idempotency`, exactly as the embedded adapter does), checks the expected version, and
//! only then takes the writers key and its positions and inserts its events in one
//! `INSERT … SELECT FROM unnest(…)` of prepared-statement arrays. An append refused by its own
//! check writes nothing and does not disturb the rest of its batch; a failed statement fails
//! the whole batch, none of it committed.
//!
//! # Positions: why a reader never sees N+1 and then misses N
//!
//! Positions come from a sequence, so a transaction holding position 7 can commit after one
//! holding 8. What makes that safe: the first time a transaction takes positions it also takes
//! an advisory lock naming its first position, under the same momentary allocation lock, and
//! keeps it until it ends; readers only read up to a *safe head* (module `head`): one below the
//! oldest position marked in flight (read from `pg_locks` under the allocation lock), or the
//! last position handed out when none is. PostgreSQL releases locks after the commit is
//! visible, so every position below it is committed or never will be. Feed reads below the
//! known safe head run at once; one that reaches it probes and waits for the positions in
//! flight then, so it sees every append acknowledged before it started. Gaps (a rollback after
//! taking positions) are possible and never fill later. Appends also hold the *writers key* (a
//! shared advisory lock an import takes exclusively); locks are always taken in the order
//! stream rows (sorted by name within a batch), then the writers key, so appends of several
//! processes on the same schema cannot deadlock.
//!
//! # Live waits: LISTEN/NOTIFY, a follower, a fallback poll
//!
//! Module `listener`: after its commits each process sends `pg_notify('<schema>.head', last)`,
//! coalesced and outside the append's transaction (a NOTIFY inside would serialise every commit
//! of the database); one connection per store LISTENs; while `wait_for_position` has waiters,
//! the follower task probes until the safe head reaches what was heard or committed. A waiter
//! that hears nothing for `listen_fallback_poll_ms` probes itself, so a notification lost with
//! the LISTEN connection (which reconnects by itself) delays a waiter by at most that.
//!
//! # Reads
//!
//! Every read is one prepared statement, so one snapshot: a page and the head it reports are
//! consistent. Filtered `$all` reads examine a window of at most `READ_SCAN_EVENTS_MAX`
//! positions, filtered category reads at most that many entries of the category index.
//!
//! # Migrations
//!
//! The SQL files of `migrations/` are compiled in ([`MIGRATIONS`]) and applied at open, in one
//! transaction under an advisory lock keyed by the schema, recorded in
//! `<schema>.schema_migrations`; see module `migrate`.
//!
//! # Failures
//!
//! A lost connection, a pool without a free connection in time, or a server shutting down is
//! [`EventStoreError::Unavailable`] (retriable; an append's message says to retry with the
//! same event ids, which makes the retry idempotent); the pool replaces broken connections by
//! itself. Anything else PostgreSQL refuses is [`EventStoreError::Storage`].

mod config;
mod error;
mod head;
mod import;
mod listener;
mod migrate;
mod writer;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::Pool;
use proteus_eventstore::limits::{
    READ_SCAN_EVENTS_MAX, ValidatedAppend, check_expected_version, validate_filter,
    validate_read_count, validate_snapshot, validate_wait,
};
use proteus_eventstore::{
    AppendOutcome, Category, DeleteOutcome, Direction, EventStore, EventStoreError,
    ExpectedVersion, FeedPage, ReadFilter, RecordedEvent, Snapshot, StreamInfo, StreamName,
    StreamPage,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

pub use crate::config::{PostgresEventStoreConfig, SCHEMA_NAME_BYTES_MAX, validate_schema_name};
pub use crate::error::START_HINT;
pub use crate::migrate::{MIGRATIONS, Migration};

use crate::error::{closed, pg, storage};

/// The columns of an event, in the order [`decode_event`] reads them, from alias `e`.
const EVENT_COLUMNS: &str = "e.position, e.stream, e.version, e.event_id, e.event_type, \
     e.schema_version, e.data, e.metadata, e.recorded_ms";

/// The SQL of every call, with the schema spliced in once at open.
pub(crate) struct Statements {
    append: String,
    append_batch: String,
    delete: String,
    put_snapshot: String,
    safe_head: String,
    notify: String,
    stream_forward: String,
    stream_backward: String,
    all_forward: String,
    all_backward: String,
    category: String,
    stream_info: String,
    get_snapshot: String,
}

/// The filter's conditions on `e`, with its types as `$a` and prefix as `$b`.
fn filter_sql(types: usize, prefix: usize) -> String {
    format!(
        "(${types}::text[] IS NULL OR e.event_type = ANY(${types}::text[])) \
         AND (${prefix}::text IS NULL OR starts_with(e.stream, ${prefix}::text))"
    )
}

impl Statements {
    fn new(schema: &str) -> Self {
        let s = format!("\"{schema}\"");
        let c = EVENT_COLUMNS;
        Statements {
            append: format!(
                "SELECT o_status, o_actual, o_first_version, o_first_position, o_known_versions, \
                 o_known_positions FROM {s}.append_events($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            ),
            append_batch: format!(
                "SELECT o_status, o_actual, o_first_version, o_first_position, o_known_versions, \
                 o_known_positions FROM {s}.append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            ),
            delete: format!("SELECT o_status, o_actual FROM {s}.delete_stream($1, $2, $3)"),
            put_snapshot: format!(
                "SELECT o_status, o_actual FROM {s}.put_snapshot($1, $2, $3, $4)"
            ),
            safe_head: format!("SELECT o_last, o_safe FROM {s}.safe_head()"),
            notify: "SELECT pg_notify($1, $2)".into(),
            stream_forward: format!(
                "SELECT st.last_version, st.deleted, h.position, st.last_position, {c} \
                 FROM {s}.streams st CROSS JOIN (SELECT $4::bigint AS position) h \
                 LEFT JOIN LATERAL (SELECT * FROM {s}.events x \
                     WHERE x.stream = st.name AND x.version >= $2 \
                     ORDER BY x.version LIMIT $3) e ON true \
                 WHERE st.name = $1 ORDER BY e.version"
            ),
            stream_backward: format!(
                "SELECT st.last_version, st.deleted, h.position, st.last_position, {c} \
                 FROM {s}.streams st CROSS JOIN (SELECT $4::bigint AS position) h \
                 LEFT JOIN LATERAL (SELECT * FROM {s}.events x \
                     WHERE x.stream = st.name AND x.version <= $2 \
                     ORDER BY x.version DESC LIMIT $3) e ON true \
                 WHERE st.name = $1 ORDER BY e.version DESC"
            ),
            // $1 from, $2 the last position of the scan window, $3 types, $4 prefix, $5 count,
            // $6 the safe head.
            all_forward: format!(
                "SELECT h.position, {c} FROM (SELECT $6::bigint AS position) h \
                 LEFT JOIN LATERAL (SELECT * FROM {s}.events e \
                     WHERE e.position >= $1 AND e.position <= LEAST(h.position, $2) AND {f} \
                     ORDER BY e.position LIMIT $5) e ON true \
                 ORDER BY e.position",
                f = filter_sql(3, 4)
            ),
            // $1 from, $2 the scan window's size, $3 types, $4 prefix, $5 count, $6 the safe head.
            all_backward: format!(
                "SELECT h.position, {c} FROM (SELECT $6::bigint AS position) h \
                 LEFT JOIN LATERAL (SELECT * FROM {s}.events e \
                     WHERE e.position <= LEAST(h.position, $1) \
                     AND e.position > LEAST(h.position, $1) - $2 AND {f} \
                     ORDER BY e.position DESC LIMIT $5) e ON true \
                 ORDER BY e.position DESC",
                f = filter_sql(3, 4)
            ),
            // $1 category, $2 from, $3 most entries scanned, $4 types, $5 prefix, $6 count,
            // $7 the safe head.
            // `scan` bounds the work (index only); `page` is what passes the filter in it;
            // `stop` is the last entry examined; `more` whether the category goes on after it.
            category: format!(
                "WITH h AS (SELECT $7::bigint AS head), \
                 scan AS (SELECT x.position FROM {s}.events x, h \
                     WHERE x.category = $1 AND x.position >= $2 AND x.position <= h.head \
                     ORDER BY x.position LIMIT $3), \
                 bound AS (SELECT max(position) AS upto, count(*) AS scanned FROM scan), \
                 page AS (SELECT e.* FROM {s}.events e, bound \
                     WHERE e.category = $1 AND e.position >= $2 AND e.position <= bound.upto \
                     AND {f} ORDER BY e.position LIMIT $6), \
                 stop AS (SELECT CASE WHEN (SELECT count(*) FROM page) >= $6 \
                     THEN (SELECT max(position) FROM page) ELSE (SELECT upto FROM bound) END AS at) \
                 SELECT h.head, bound.scanned, stop.at, \
                     EXISTS (SELECT 1 FROM {s}.events y WHERE y.category = $1 \
                         AND y.position > stop.at AND y.position <= h.head), {c} \
                 FROM h CROSS JOIN bound CROSS JOIN stop LEFT JOIN page e ON true \
                 ORDER BY e.position",
                f = filter_sql(4, 5)
            ),
            stream_info: format!(
                "SELECT st.last_version, st.last_position, st.deleted, sn.version \
                 FROM {s}.streams st LEFT JOIN {s}.snapshots sn ON sn.stream = st.name \
                 WHERE st.name = $1"
            ),
            get_snapshot: format!(
                "SELECT st.deleted, sn.version, sn.snapshot_type, sn.data, sn.recorded_ms \
                 FROM {s}.streams st LEFT JOIN {s}.snapshots sn ON sn.stream = st.name \
                 WHERE st.name = $1"
            ),
        }
    }
}

/// The PostgreSQL event store. Clones share the same pool and listener.
#[derive(Clone)]
pub struct PostgresEventStore {
    inner: Arc<Inner>,
}

/// What the store's handles and its writer task share.
pub(crate) struct Shared {
    pub(crate) pool: Pool,
    /// The server's URL, for messages (redacted where used).
    pub(crate) url: String,
    pub(crate) sql: Statements,
    /// The safe head (module `head`): every position up to it is committed or never will be.
    /// `wait_for_position` waits on it.
    pub(crate) head: watch::Sender<u64>,
    /// The highest position this process's appends committed, for the follower to announce.
    pub(crate) committed: watch::Sender<u64>,
    /// The highest position heard of from other processes or seen handed out by a probe.
    pub(crate) heard: watch::Sender<u64>,
    /// Held by the probe of the safe head running now: one at a time per process.
    pub(crate) probing: tokio::sync::Mutex<()>,
}

struct Inner {
    shared: Arc<Shared>,
    schema: String,
    /// Appends for the writer task; `None` once closed.
    writes: Mutex<Option<mpsc::Sender<writer::AppendRequest>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The LISTEN connection's task and the follower (module `listener`).
    background: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
    fallback_poll: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping the sender lets the writer finish what is queued and stop.
        if let Ok(mut writes) = self.writes.lock() {
            writes.take();
        }
        if let Ok(mut background) = self.background.lock() {
            background.drain(..).for_each(|task| task.abort());
        }
    }
}

impl Shared {
    /// Runs one prepared (and cached) statement on a pooled connection.
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
        write: bool,
    ) -> Result<Vec<Row>, EventStoreError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| error::pool(e, what, &self.url))?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|e| pg(e, what, false, &self.url))?;
        client
            .query(&statement, params)
            .await
            .map_err(|e| pg(e, what, write, &self.url))
    }
}

/// A bound for SQL `bigint`: positions and versions beyond it cannot exist.
pub(crate) fn big(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn unsigned(value: i64, what: &str) -> Result<u64, EventStoreError> {
    u64::try_from(value).map_err(|_| storage(format!("the stored {what} {value} is negative")))
}

pub(crate) fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    index: usize,
) -> Result<T, EventStoreError> {
    row.try_get(index)
        .map_err(|e| storage(format!("cannot decode column {index} of a stored row: {e}")))
}

/// Decodes the [`EVENT_COLUMNS`] starting at column `at`; `None` for the NULLs of an outer join
/// that found no event. `stream`: the stream's name when the caller knows it.
fn decode_event(
    row: &Row,
    at: usize,
    stream: Option<&StreamName>,
) -> Result<Option<RecordedEvent>, EventStoreError> {
    let Some(position) = get::<Option<i64>>(row, at)? else {
        return Ok(None);
    };
    let stream = match stream {
        Some(stream) => stream.clone(),
        None => {
            let name: &str = get(row, at + 1)?;
            StreamName::parse(name)
                .map_err(|e| storage(format!("a stored stream name is invalid: {e}")))?
        }
    };
    let schema_version: Option<i64> = get(row, at + 5)?;
    Ok(Some(RecordedEvent {
        stream,
        version: unsigned(get(row, at + 2)?, "version")?,
        position: unsigned(position, "position")?,
        id: get::<String>(row, at + 3)?.into(),
        event_type: get::<String>(row, at + 4)?.into(),
        schema_version: schema_version
            .map(|v| {
                u32::try_from(v).map_err(|_| storage("a stored schema version is out of range"))
            })
            .transpose()?,
        data: Bytes::from(get::<Vec<u8>>(row, at + 6)?),
        metadata: get::<Option<Vec<u8>>>(row, at + 7)?.map(Bytes::from),
        recorded_ms: get(row, at + 8)?,
    }))
}

fn decode_events(
    rows: &[Row],
    at: usize,
    stream: Option<&StreamName>,
) -> Result<Vec<RecordedEvent>, EventStoreError> {
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        events.extend(decode_event(row, at, stream)?);
    }
    Ok(events)
}

/// `(kind, version)` of an expected version, as the SQL functions take it.
pub(crate) fn expected_sql(expected: ExpectedVersion) -> (i16, i64) {
    match expected {
        ExpectedVersion::Any => (0, 0),
        ExpectedVersion::NoStream => (1, 0),
        ExpectedVersion::StreamExists => (2, 0),
        // -1 matches no stream: a version beyond bigint cannot exist.
        ExpectedVersion::Exact(version) => (3, i64::try_from(version).unwrap_or(-1)),
    }
}

fn filter_params(filter: &ReadFilter) -> (Option<Vec<&str>>, Option<&str>) {
    let types = (!filter.event_types.is_empty())
        .then(|| filter.event_types.iter().map(String::as_str).collect());
    (types, filter.stream_prefix.as_deref())
}

impl PostgresEventStore {
    /// Whether its PostgreSQL server answers a query on one of the pool's connections within
    /// `timeout` (for `/readyz` and `proteus_backend_up`); `Err` says why not.
    pub async fn check_health(&self, timeout: std::time::Duration) -> Result<(), String> {
        let shared = &self.inner.shared;
        proteus_postgres::check_health(&shared.pool, &shared.url, timeout).await
    }

    /// Connects, applies the migrations this schema misses (creating it if needed, unless
    /// `create_schema` is off), fills the
    /// pool lazily and starts the LISTEN connection. Fails with `Unavailable` when PostgreSQL
    /// cannot be reached.
    pub async fn open(config: PostgresEventStoreConfig) -> Result<Self, EventStoreError> {
        let (connection, (pg_config, tls)) = config.validate()?;
        let schema = config.schema.clone();
        let pool = if config.create_schema {
            connection.open(&schema, &migrate::MIGRATIONS).await
        } else {
            connection
                .open_existing(&schema, &migrate::MIGRATIONS)
                .await
        }
        .map_err(|e| error::port_error(e, false))?;
        let sql = Statements::new(&schema);
        let shared = Arc::new(Shared {
            pool,
            url: config.url.clone(),
            sql,
            head: watch::channel(0).0,
            committed: watch::channel(0).0,
            heard: watch::channel(0).0,
            probing: Default::default(),
        });
        shared.settled_head().await?;
        let channel = format!("{schema}.head");
        let background = vec![
            tokio::spawn(listener::listen(
                pg_config,
                tls,
                channel.clone(),
                shared.clone(),
            )),
            tokio::spawn(listener::follow(shared.clone(), channel)),
        ];
        let (writes, requests) = mpsc::channel(config.write_queue_appends_max);
        let writer = tokio::spawn(writer::run(
            shared.clone(),
            requests,
            writer::BatchLimits {
                appends_max: config.write_batch_appends_max,
                bytes_max: config.write_batch_bytes_max,
                in_flight_max: config.write_batches_in_flight_max,
            },
        ));
        Ok(PostgresEventStore {
            inner: Arc::new(Inner {
                shared,
                schema,
                writes: Mutex::new(Some(writes)),
                writer: Mutex::new(Some(writer)),
                background: Mutex::new(background),
                closed: AtomicBool::new(false),
                fallback_poll: Duration::from_millis(config.listen_fallback_poll_ms),
            }),
        })
    }

    /// The PostgreSQL schema holding this store.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    fn check_open(&self) -> Result<(), EventStoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(closed())
        } else {
            Ok(())
        }
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
        write: bool,
    ) -> Result<Vec<Row>, EventStoreError> {
        self.check_open()?;
        self.inner.shared.query(sql, params, what, write).await
    }

    async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        what: &str,
        write: bool,
    ) -> Result<Row, EventStoreError> {
        self.query(sql, params, what, write)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| storage(format!("{what}: PostgreSQL answered no row")))
    }

    /// A category read that sees positions up to `head` (a safe head).
    async fn read_category_to(
        &self,
        category: &Category,
        from_position: u64,
        max_count: usize,
        filter: &ReadFilter,
        head: u64,
    ) -> Result<FeedPage, EventStoreError> {
        let (types, prefix) = filter_params(filter);
        // Without a filter every entry scanned is returned: scan just the page.
        let scan = if filter.is_empty() {
            max_count
        } else {
            READ_SCAN_EVENTS_MAX
        };
        let rows = self
            .query(
                &self.inner.shared.sql.category,
                &[
                    &category.as_str(),
                    &big(from_position),
                    &(scan as i64),
                    &types,
                    &prefix,
                    &(max_count as i64),
                    &big(head),
                ],
                "reading a category",
                false,
            )
            .await?;
        let first = rows
            .first()
            .ok_or_else(|| storage("a category read answered no row"))?;
        let head_position = unsigned(get(first, 0)?, "head position")?;
        let scanned: i64 = get(first, 1)?;
        let stop: Option<i64> = get(first, 2)?;
        let more: bool = get(first, 3)?;
        let events = decode_events(&rows, 4, None)?;
        let is_end = scanned == 0 || !more;
        let next_position = match stop {
            Some(stop) if !is_end => unsigned(stop, "position")? + 1,
            _ => from_position.max(head_position + 1),
        };
        Ok(FeedPage {
            events,
            next_position,
            is_end,
            head_position,
        })
    }

    /// Runs one `$all` statement: the head it reports and its events.
    async fn read_feed(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(u64, Vec<RecordedEvent>), EventStoreError> {
        let rows = self
            .query(sql, params, "reading the $all feed", false)
            .await?;
        let first = rows
            .first()
            .ok_or_else(|| storage("a read of $all answered no row"))?;
        let head_position = unsigned(get(first, 0)?, "head position")?;
        Ok((head_position, decode_events(&rows, 1, None)?))
    }

    /// A read of `$all` that sees positions up to `head` (a safe head).
    async fn read_all_to(
        &self,
        from_position: u64,
        direction: Direction,
        max_count: usize,
        filter: &ReadFilter,
        head: u64,
    ) -> Result<FeedPage, EventStoreError> {
        let (types, prefix) = filter_params(filter);
        // A filtered read examines at most READ_SCAN_EVENTS_MAX positions (a window of
        // positions holds at most that many events); an unfiltered one just its page.
        let window = if filter.is_empty() {
            u64::MAX
        } else {
            READ_SCAN_EVENTS_MAX as u64
        };
        let from = big(from_position);
        match direction {
            Direction::Forward => {
                let upper = from_position.saturating_add(window - 1);
                let (head_position, events) = self
                    .read_feed(
                        &self.inner.shared.sql.all_forward,
                        &[
                            &from,
                            &big(upper),
                            &types,
                            &prefix,
                            &(max_count as i64),
                            &big(head),
                        ],
                    )
                    .await?;
                let next_position = match events.last() {
                    Some(last) if events.len() == max_count => last.position + 1,
                    _ => from_position.max(upper.min(head_position).saturating_add(1)),
                };
                Ok(FeedPage {
                    events,
                    next_position,
                    is_end: next_position > head_position,
                    head_position,
                })
            }
            Direction::Backward => {
                let (head_position, events) = self
                    .read_feed(
                        &self.inner.shared.sql.all_backward,
                        &[
                            &from,
                            &big(window),
                            &types,
                            &prefix,
                            &(max_count as i64),
                            &big(head),
                        ],
                    )
                    .await?;
                // The lowest position examined: the last event of a full page, else the
                // bottom of the window.
                let lowest = match events.last() {
                    Some(last) if events.len() == max_count => last.position,
                    _ => from_position
                        .min(head_position)
                        .saturating_sub(window - 1)
                        .max(1),
                };
                let is_end = lowest <= 1;
                Ok(FeedPage {
                    events,
                    next_position: if is_end { 0 } else { lowest - 1 },
                    is_end,
                    head_position,
                })
            }
        }
    }
}

#[async_trait]
impl EventStore for PostgresEventStore {
    async fn append_validated(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
        append: ValidatedAppend,
    ) -> Result<AppendOutcome, EventStoreError> {
        let bytes = append.bytes();
        let events = append.into_events();
        self.check_open()?;
        let sender = self
            .inner
            .writes
            .lock()
            .map_err(|_| closed())?
            .clone()
            .ok_or_else(closed)?;
        let (reply, answer) = oneshot::channel();
        sender
            .send(writer::AppendRequest {
                stream: stream.clone(),
                expected,
                events,
                bytes,
                reply,
            })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| EventStoreError::Unavailable {
            reason: "the event store's writer stopped before answering; the append may or may not have been committed, so retry it with the same event ids".into(),
        })?
    }

    async fn delete_stream(
        &self,
        stream: &StreamName,
        expected: ExpectedVersion,
    ) -> Result<DeleteOutcome, EventStoreError> {
        let (kind, version) = expected_sql(expected);
        let row = self
            .query_one(
                &self.inner.shared.sql.delete,
                &[&stream.as_str(), &kind, &version],
                "deleting a stream",
                true,
            )
            .await?;
        let status: i16 = get(&row, 0)?;
        let actual = get::<Option<i64>>(&row, 1)?
            .map(|v| unsigned(v, "version"))
            .transpose()?;
        match status {
            0 => Ok(DeleteOutcome {
                last_version: actual,
            }),
            1 => Err(EventStoreError::StreamDeleted {
                stream: stream.clone(),
            }),
            2 => {
                check_expected_version(stream, expected, actual)?;
                Err(storage(format!(
                    "PostgreSQL refused deleting '{stream}' for its expected version {expected}, which matches"
                )))
            }
            other => Err(storage(format!("delete_stream answered status {other}"))),
        }
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_version: u64,
        direction: Direction,
        max_count: usize,
    ) -> Result<StreamPage, EventStoreError> {
        validate_read_count(max_count)?;
        let sql = match direction {
            Direction::Forward => &self.inner.shared.sql.stream_forward,
            Direction::Backward => &self.inner.shared.sql.stream_backward,
        };
        // Stream reads follow versions, not the feed: they report the safe head known, or a
        // settled one when the stream is past it.
        let head = big(*self.inner.shared.head.borrow());
        let rows = self
            .query(
                sql,
                &[
                    &stream.as_str(),
                    &big(from_version),
                    &(max_count as i64),
                    &head,
                ],
                "reading a stream",
                false,
            )
            .await?;
        let Some(first) = rows.first() else {
            return Err(EventStoreError::StreamNotFound {
                stream: stream.clone(),
            });
        };
        if get::<bool>(first, 1)? {
            return Err(EventStoreError::StreamDeleted {
                stream: stream.clone(),
            });
        }
        let Some(last_version) = get::<Option<i64>>(first, 0)? else {
            return Err(EventStoreError::StreamNotFound {
                stream: stream.clone(),
            });
        };
        let last_version = unsigned(last_version, "version")?;
        let mut head_position = unsigned(get(first, 2)?, "head position")?;
        let stream_position = get::<Option<i64>>(first, 3)?.unwrap_or(0);
        if unsigned(stream_position, "position")? > head_position {
            head_position = self.inner.shared.settled_head().await?;
        }
        let events = decode_events(&rows, 4, Some(stream))?;
        let (next_version, is_end) = match direction {
            Direction::Forward => {
                let next = events.last().map_or(from_version, |e| e.version + 1);
                (next, next > last_version)
            }
            Direction::Backward => {
                let lowest = events.last().map_or(0, |e| e.version);
                (lowest.saturating_sub(1), lowest == 0)
            }
        };
        Ok(StreamPage {
            stream: stream.clone(),
            events,
            next_version,
            is_end,
            last_version,
            head_position,
        })
    }

    async fn read_category(
        &self,
        category: &Category,
        from_position: u64,
        max_count: usize,
        filter: &ReadFilter,
    ) -> Result<FeedPage, EventStoreError> {
        validate_read_count(max_count)?;
        validate_filter(filter)?;
        let cached = *self.inner.shared.head.borrow();
        if from_position <= cached {
            let page = self
                .read_category_to(category, from_position, max_count, filter, cached)
                .await?;
            if page.next_position <= cached {
                return Ok(page);
            }
        }
        let settled = self.inner.shared.settled_head().await?;
        self.read_category_to(category, from_position, max_count, filter, settled)
            .await
    }

    async fn read_all(
        &self,
        from_position: u64,
        direction: Direction,
        max_count: usize,
        filter: &ReadFilter,
    ) -> Result<FeedPage, EventStoreError> {
        validate_read_count(max_count)?;
        validate_filter(filter)?;
        if direction == Direction::Forward {
            let cached = *self.inner.shared.head.borrow();
            if from_position <= cached {
                let page = self
                    .read_all_to(from_position, direction, max_count, filter, cached)
                    .await?;
                if page.next_position <= cached {
                    return Ok(page);
                }
            }
        }
        // At the head (or from the end backwards): wait for the writers in flight now.
        let settled = self.inner.shared.settled_head().await?;
        self.read_all_to(from_position, direction, max_count, filter, settled)
            .await
    }

    async fn stream_info(&self, stream: &StreamName) -> Result<StreamInfo, EventStoreError> {
        let rows = self
            .query(
                &self.inner.shared.sql.stream_info,
                &[&stream.as_str()],
                "reading a stream's info",
                false,
            )
            .await?;
        let not_found = || EventStoreError::StreamNotFound {
            stream: stream.clone(),
        };
        let row = rows.first().ok_or_else(not_found)?;
        let last_version = get::<Option<i64>>(row, 0)?
            .map(|v| unsigned(v, "version"))
            .transpose()?;
        let deleted: bool = get(row, 2)?;
        if last_version.is_none() && !deleted {
            return Err(not_found());
        }
        Ok(StreamInfo {
            stream: stream.clone(),
            last_version,
            last_position: get::<Option<i64>>(row, 1)?
                .map(|v| unsigned(v, "position"))
                .transpose()?,
            deleted,
            snapshot_version: get::<Option<i64>>(row, 3)?
                .map(|v| unsigned(v, "version"))
                .transpose()?,
        })
    }

    async fn put_snapshot(
        &self,
        stream: &StreamName,
        version: u64,
        snapshot_type: &str,
        data: Bytes,
    ) -> Result<(), EventStoreError> {
        validate_snapshot(snapshot_type, &data)?;
        let row = self
            .query_one(
                &self.inner.shared.sql.put_snapshot,
                &[
                    &stream.as_str(),
                    &big(version),
                    &snapshot_type,
                    &data.as_ref(),
                ],
                "storing a snapshot",
                true,
            )
            .await?;
        let status: i16 = get(&row, 0)?;
        let actual = get::<Option<i64>>(&row, 1)?
            .map(|v| unsigned(v, "version"))
            .transpose()?;
        match (status, actual) {
            (0, _) => Ok(()),
            (1, _) => Err(EventStoreError::StreamDeleted {
                stream: stream.clone(),
            }),
            (4, _) => Err(EventStoreError::StreamNotFound {
                stream: stream.clone(),
            }),
            (5, last_version) => Err(EventStoreError::SnapshotAheadOfStream {
                stream: stream.clone(),
                version,
                last_version,
            }),
            (6, Some(stored_version)) => Err(EventStoreError::SnapshotOutdated {
                stream: stream.clone(),
                version,
                stored_version,
            }),
            (other, _) => Err(storage(format!("put_snapshot answered status {other}"))),
        }
    }

    async fn get_snapshot(&self, stream: &StreamName) -> Result<Option<Snapshot>, EventStoreError> {
        let rows = self
            .query(
                &self.inner.shared.sql.get_snapshot,
                &[&stream.as_str()],
                "reading a snapshot",
                false,
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        if get::<bool>(row, 0)? {
            return Err(EventStoreError::StreamDeleted {
                stream: stream.clone(),
            });
        }
        let Some(version) = get::<Option<i64>>(row, 1)? else {
            return Ok(None);
        };
        Ok(Some(Snapshot {
            stream: stream.clone(),
            version: unsigned(version, "snapshot version")?,
            snapshot_type: get(row, 2)?,
            data: Bytes::from(get::<Vec<u8>>(row, 3)?),
            recorded_ms: get(row, 4)?,
        }))
    }

    async fn wait_for_position(
        &self,
        after: u64,
        timeout: Duration,
    ) -> Result<bool, EventStoreError> {
        validate_wait(timeout)?;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        let deadline = Instant::now() + timeout;
        let shared = &self.inner.shared;
        let mut head = shared.head.subscribe();
        if *head.borrow_and_update() > after {
            return Ok(true);
        }
        // A commit of another process may not have been announced yet: ask once, and wake the
        // follower, which probes while anyone waits.
        let probe = shared.probe_head().await?;
        shared.heard.send_modify(|_| {});
        if probe.safe > after {
            return Ok(true);
        }
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let slice = (deadline - now).min(self.inner.fallback_poll);
            match tokio::time::timeout(slice, head.changed()).await {
                Ok(Ok(())) => {
                    if self.inner.closed.load(Ordering::Acquire) {
                        return Err(closed());
                    }
                    if *head.borrow_and_update() > after {
                        return Ok(true);
                    }
                }
                Ok(Err(_)) => return Err(closed()),
                Err(_) => {
                    // Nothing heard for a while: the LISTEN connection may be down.
                    if Instant::now() < deadline && shared.probe_head().await?.safe > after {
                        return Ok(true);
                    }
                }
            }
        }
    }

    async fn close(&self) -> Result<(), EventStoreError> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Ok(mut background) = self.inner.background.lock() {
            background.drain(..).for_each(|task| task.abort());
        }
        // The writer commits what is queued, then stops.
        self.inner.writes.lock().map_err(|_| closed())?.take();
        let writer = self.inner.writer.lock().map_err(|_| closed())?.take();
        if let Some(writer) = writer {
            writer
                .await
                .map_err(|e| storage(format!("the writer task failed: {e}")))?;
        }
        // Reads in flight finish on their connections; new ones are refused.
        self.inner.shared.pool.close();
        // Wake waiters so they see the store closed.
        self.inner.shared.head.send_modify(|_| {});
        Ok(())
    }
}
