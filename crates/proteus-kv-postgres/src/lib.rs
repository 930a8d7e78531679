//! The PostgreSQL [`KvStore`]: namespaced key-value metadata in one PostgreSQL schema, so a
//! runtime's state (an experiment's per-unit state and checkpoint) lives with the rest of a
//! team's data and survives the loss of a Proteus machine.
//!
//! Table (`migrations/`): `kv (namespace, key) → value`, keys and values `bytea`. `bytea`
//! compares bytewise (memcmp, then length), exactly like the port's key order, so scans are
//! range reads of the primary key's index.
//!
//! # Reads
//!
//! [`KvStore::get_many`] and [`KvStore::scan`] are one statement each, so one snapshot:
//! `get_many` joins `unnest($keys) WITH ORDINALITY` to the table, keeping the asked order and
//! duplicates; `scan` reads `key >= prefix` (or `key > after` when `after` is past the prefix)
//! and `key < successor(prefix)` (none for an empty prefix or one of only `0xff` bytes) in key
//! order, with a `LIMIT`.
//!
//! # Commits and their locks
//!
//! A commit is one transaction at PostgreSQL's default READ COMMITTED:
//!
//! 1. `BEGIN`, then transaction-scoped advisory locks (released by `COMMIT`/`ROLLBACK`, by
//!    PostgreSQL even when the connection dies): the **namespace** lock in shared mode, then an
//!    exclusive lock per distinct **key** the commit checks or writes, in ascending lock-id
//!    order. A commit touching more than [`KEY_LOCKS_MAX`] distinct keys takes the namespace
//!    lock exclusively instead (so one commit never holds more than `KEY_LOCKS_MAX + 1` entries
//!    of PostgreSQL's shared lock table). [`KvStore::clear`] takes the namespace lock
//!    exclusively. Lock ids are a fixed 64-bit FNV-1a hash of (schema, namespace[, key]); a
//!    collision only makes two commits wait for each other.
//! 2. One statement evaluates the checks (`value IS DISTINCT FROM expected` over `unnest` of
//!    the checked keys and expected values, absent expected as NULL) and, only when none
//!    fails, applies the writes: their net effect (a later write to a key wins) as one
//!    `INSERT … SELECT FROM unnest(…) ON CONFLICT DO UPDATE` and one `DELETE … = ANY(…)`.
//! 3. `COMMIT`, or `ROLLBACK` and [`KvError::Conflict`] naming the first check that failed.
//!
//! Why this is safe at READ COMMITTED: every commit or clear that touches a key holds that
//! key's lock (or the namespace's exclusive lock) from before its reads until its `COMMIT`
//! (strict two-phase locking), and PostgreSQL makes a transaction visible before releasing its
//! locks. So the statement of step 2, whose snapshot is taken after the locks are granted,
//! sees every earlier commit of those keys, and no other commit can change them before this one
//! commits. Two commits both expecting a key absent cannot both win: the second waits for the
//! first's lock, then sees its insert. Ordering the locks (namespace first, keys ascending)
//! leaves no deadlock between commits; reads take no locks.
//!
//! # Failures
//!
//! A lost connection or a rolled-back transaction (serialization failure, deadlock,
//! administrator shutdown) before `COMMIT` was sent is retried inside the adapter, on another
//! connection, up to [`ATTEMPTS_MAX`] attempts in all: nothing was applied. A `COMMIT` whose
//! answer was lost is [`KvError::Unavailable`] with `retriable` set, saying it may have been
//! applied: the commit's checks make the caller's retry safe. Other failures map to
//! `Unavailable` with `retriable` from the SQLSTATE (see [`proteus_postgres::retriable`]) and
//! the URL redacted.
//!
//! Connection handling, the schema-name rule and migrations come from `proteus-postgres`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use proteus_kv::{
    KvCommit, KvError, KvStore, KvWrite, Namespace, check_commit, check_keys, check_scan,
    display_key,
};
use proteus_postgres::{Connection, Migration, Migrations, PgError};

pub use proteus_postgres::START_HINT;

/// This adapter's migrations, compiled in.
pub const MIGRATIONS: Migrations = Migrations {
    table: "kv_migrations",
    what: "key-value metadata",
    list: &[Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../migrations/0001_initial.sql"),
    }],
};

/// Most distinct keys a commit locks one by one; a commit touching more locks its whole
/// namespace.
pub const KEY_LOCKS_MAX: usize = 32;

/// Most attempts of one call when an attempt failed before anything could be applied (the
/// connection was lost, or PostgreSQL rolled the transaction back).
pub const ATTEMPTS_MAX: u32 = 3;

/// Settings of the PostgreSQL key-value store.
#[derive(Clone)]
pub struct PostgresKvStoreConfig {
    /// `postgres://user@host:5432/database` (no TLS: a trusted network or a local socket).
    pub url: String,
    /// The PostgreSQL schema holding the table, created at open (see
    /// [`proteus_postgres::validate_schema_name`]).
    pub schema: String,
    /// Most pooled connections.
    pub pool_size_max: usize,
    pub connect_timeout_ms: u64,
    /// Longest wait for a free pooled connection, in milliseconds.
    pub pool_wait_timeout_ms: u64,
    /// PostgreSQL's `statement_timeout` for the store's sessions (lock waits included), in
    /// milliseconds.
    pub statement_timeout_ms: u64,
}

impl PostgresKvStoreConfig {
    pub fn new(url: impl Into<String>, schema: impl Into<String>) -> Self {
        PostgresKvStoreConfig {
            url: url.into(),
            schema: schema.into(),
            pool_size_max: 8,
            connect_timeout_ms: 5_000,
            pool_wait_timeout_ms: 10_000,
            statement_timeout_ms: 30_000,
        }
    }
}

impl std::fmt::Debug for PostgresKvStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresKvStoreConfig")
            .field("url", &proteus_postgres::redact(&self.url))
            .field("schema", &self.schema)
            .field("pool_size_max", &self.pool_size_max)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct PostgresKvStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresKvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresKvStore")
            .field("schema", &self.inner.schema)
            .finish_non_exhaustive()
    }
}

struct Inner {
    pool: Pool,
    /// The server's URL, for messages (redacted where used).
    url: String,
    /// The schema's name (validated: `[a-z0-9_]` only), part of every lock id.
    schema: String,
    sql: Sql,
}

/// The statements, with the quoted schema spliced in once.
struct Sql {
    get_many: String,
    /// By `[after is the lower bound][the prefix has a successor]`.
    scan: [[String; 2]; 2],
    check_and_write: String,
    clear: String,
}

impl Sql {
    fn new(schema: &str) -> Sql {
        let kv = format!("\"{schema}\".kv");
        let scan = |exclusive: bool, bounded: bool| {
            format!(
                "SELECT key, value FROM {kv} WHERE namespace = $1::text AND key {} $2::bytea{} \
                 ORDER BY key LIMIT {}",
                if exclusive { ">" } else { ">=" },
                if bounded { " AND key < $3::bytea" } else { "" },
                if bounded { "$4::int8" } else { "$3::int8" },
            )
        };
        Sql {
            get_many: format!(
                "SELECT kv.value FROM unnest($2::bytea[]) WITH ORDINALITY AS q(key, i) \
                 LEFT JOIN {kv} AS kv ON kv.namespace = $1::text AND kv.key = q.key \
                 ORDER BY q.i"
            ),
            scan: [
                [scan(false, false), scan(false, true)],
                [scan(true, false), scan(true, true)],
            ],
            // One snapshot for the checks and the writes (data-modifying CTEs all run, on the
            // statement's snapshot); the writes apply only when no check failed. Puts and
            // deletes never share a key (they are a commit's net effect).
            check_and_write: format!(
                "WITH failed AS ( \
                     SELECT c.i FROM unnest($2::bytea[], $3::bytea[]) WITH ORDINALITY \
                         AS c(key, expected, i) \
                     LEFT JOIN {kv} AS kv ON kv.namespace = $1::text AND kv.key = c.key \
                     WHERE kv.value IS DISTINCT FROM c.expected \
                     ORDER BY c.i LIMIT 1 \
                 ), puts AS ( \
                     INSERT INTO {kv} (namespace, key, value) \
                     SELECT $1::text, p.key, p.value \
                     FROM unnest($4::bytea[], $5::bytea[]) AS p(key, value) \
                     WHERE NOT EXISTS (SELECT 1 FROM failed) \
                     ON CONFLICT (namespace, key) DO UPDATE SET value = EXCLUDED.value \
                 ), deletes AS ( \
                     DELETE FROM {kv} WHERE namespace = $1::text AND key = ANY($6::bytea[]) \
                     AND NOT EXISTS (SELECT 1 FROM failed) \
                 ) \
                 SELECT (SELECT i FROM failed)"
            ),
            clear: format!("DELETE FROM {kv} WHERE namespace = $1::text"),
        }
    }
}

/// One failed attempt of a call: the error, and whether the adapter may make the attempt again
/// at once because nothing was applied (the connection was lost, or PostgreSQL rolled the
/// transaction back).
struct Failed {
    error: KvError,
    again: bool,
}

impl From<KvError> for Failed {
    fn from(error: KvError) -> Self {
        Failed {
            error,
            again: false,
        }
    }
}

fn unavailable(error: PgError) -> KvError {
    KvError::Unavailable {
        message: error.message,
        retriable: error.retriable,
    }
}

/// Maps a driver error met before any `COMMIT` was sent to the server at `url`.
fn failed(error: tokio_postgres::Error, what: &str, url: &str) -> Failed {
    let again = match error.code() {
        // Serialization failure, deadlock, administrator shutdown: rolled back.
        Some(code) => matches!(code.code(), "40001" | "40P01" | "57P01"),
        // The connection was lost: PostgreSQL rolls back what it had not committed.
        None => true,
    };
    Failed {
        error: unavailable(proteus_postgres::pg(error, what, url)),
        again,
    }
}

/// Maps a `COMMIT` that failed: when its answer was lost, the commit may have been applied.
fn commit_failed(error: tokio_postgres::Error, what: &str, url: &str) -> Failed {
    let answer_lost = error.as_db_error().is_none();
    let mut mapped = proteus_postgres::pg(error, what, url);
    if answer_lost {
        mapped.retriable = true;
        mapped.message.push_str(
            "; the answer to COMMIT was lost, so it may or may not have been applied: \
             read the keys again, or retry the commit (its checks make a retry safe)",
        );
    }
    Failed {
        error: unavailable(mapped),
        again: false,
    }
}

fn unreadable(error: tokio_postgres::Error, what: &str) -> Failed {
    KvError::Corrupt(format!("a row read while {what} is unreadable: {error}")).into()
}

/// Makes `attempt` again while it fails with nothing applied, up to [`ATTEMPTS_MAX`] times.
async fn with_attempts<T, F, Fut>(mut attempt: F) -> Result<T, KvError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failed>>,
{
    let mut made = 1;
    loop {
        match attempt().await {
            Err(Failed { again: true, .. }) if made < ATTEMPTS_MAX => {
                tokio::time::sleep(Duration::from_millis(5 << made)).await;
                made += 1;
            }
            result => return result.map_err(|failed| failed.error),
        }
    }
}

/// A fixed 64-bit FNV-1a hash of `parts` (stable across builds and machines: every process
/// sharing a schema must compute the same lock ids).
fn lock_id(parts: &[&[u8]]) -> i64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
        // A separator (no namespace holds 0xff) so parts cannot run into one another.
        hash ^= 0xff;
        hash = hash.wrapping_mul(PRIME);
    }
    hash as i64
}

/// The advisory locks of one commit.
struct Locks {
    namespace: i64,
    /// The keys' lock ids, sorted and distinct; `None`: the namespace exclusively.
    keys: Option<Vec<i64>>,
}

impl Locks {
    /// One simple query taking them in order (its statements run one after the other).
    fn sql(&self) -> String {
        // `'…'::int8` literals: ids are formatted integers, and a quoted literal reads even
        // i64::MIN.
        match &self.keys {
            None => format!("SELECT pg_advisory_xact_lock('{}'::int8);", self.namespace),
            Some(keys) => {
                let mut sql = format!(
                    "SELECT pg_advisory_xact_lock_shared('{}'::int8);",
                    self.namespace
                );
                for key in keys {
                    sql.push_str(&format!(" SELECT pg_advisory_xact_lock('{key}'::int8);"));
                }
                sql
            }
        }
    }
}

/// A commit ready to send: its checks, the net effect of its writes, its locks.
struct Plan {
    check_keys: Vec<Vec<u8>>,
    check_expected: Vec<Option<Vec<u8>>>,
    put_keys: Vec<Vec<u8>>,
    put_values: Vec<Vec<u8>>,
    delete_keys: Vec<Vec<u8>>,
    locks: Locks,
}

impl Plan {
    fn new(schema: &str, namespace: &Namespace, commit: KvCommit) -> Plan {
        let mut net: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for write in commit.writes {
            match write {
                KvWrite::Put { key, value } => net.insert(key, Some(value)),
                KvWrite::Delete { key } => net.insert(key, None),
            };
        }
        let (schema, ns) = (schema.as_bytes(), namespace.as_str().as_bytes());
        let mut key_locks: Vec<i64> = commit
            .checks
            .iter()
            .map(|check| &check.key)
            .chain(net.keys())
            .map(|key| lock_id(&[b"proteus-kv key", schema, ns, key]))
            .collect();
        key_locks.sort_unstable();
        key_locks.dedup();
        let locks = Locks {
            namespace: lock_id(&[b"proteus-kv namespace", schema, ns]),
            keys: (key_locks.len() <= KEY_LOCKS_MAX).then_some(key_locks),
        };
        let (mut check_keys, mut check_expected) = (Vec::new(), Vec::new());
        for check in commit.checks {
            check_keys.push(check.key);
            check_expected.push(check.expected);
        }
        let (mut put_keys, mut put_values, mut delete_keys) = (Vec::new(), Vec::new(), Vec::new());
        for (key, value) in net {
            match value {
                Some(value) => {
                    put_keys.push(key);
                    put_values.push(value);
                }
                None => delete_keys.push(key),
            }
        }
        Plan {
            check_keys,
            check_expected,
            put_keys,
            put_values,
            delete_keys,
            locks,
        }
    }
}

/// The smallest key above every key starting with `prefix`; `None` when there is none (an
/// empty prefix, or one of only `0xff` bytes).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|&b| b != 0xff)?;
    let mut successor = prefix[..=last].to_vec();
    successor[last] += 1;
    Some(successor)
}

impl PostgresKvStore {
    /// Whether its PostgreSQL server answers a query on one of the pool's connections within
    /// `timeout` (for `/readyz` and `proteus_backend_up`); `Err` says why not.
    pub async fn check_health(&self, timeout: std::time::Duration) -> Result<(), String> {
        proteus_postgres::check_health(&self.inner.pool, &self.inner.url, timeout).await
    }

    /// Connects, applies the migrations the schema misses and builds the pool. Fails with a
    /// message naming the (redacted) URL and saying how to start PostgreSQL when it cannot be
    /// reached.
    pub async fn open(config: PostgresKvStoreConfig) -> Result<Self, KvError> {
        proteus_postgres::validate_schema_name(&config.schema).map_err(KvError::Invalid)?;
        if config.pool_size_max == 0 {
            return Err(KvError::Invalid(
                "pool_size_max is 0; it must be at least 1".into(),
            ));
        }
        let connection = Connection {
            url: config.url.clone(),
            application_name: "proteus-kv",
            pool_size_max: config.pool_size_max,
            connect_timeout_ms: config.connect_timeout_ms,
            pool_wait_timeout_ms: config.pool_wait_timeout_ms,
            statement_timeout_ms: config.statement_timeout_ms,
        };
        connection.config().map_err(KvError::Invalid)?;
        let pool = connection
            .open(&config.schema, &MIGRATIONS)
            .await
            .map_err(unavailable)?;
        Ok(PostgresKvStore {
            inner: Arc::new(Inner {
                pool,
                url: config.url.clone(),
                sql: Sql::new(&config.schema),
                schema: config.schema,
            }),
        })
    }

    async fn client(&self, what: &str) -> Result<Object, Failed> {
        self.inner
            .pool
            .get()
            .await
            .map_err(|e| unavailable(proteus_postgres::pool_error(e, what, &self.inner.url)).into())
    }

    async fn try_get_many(
        &self,
        namespace: &Namespace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, Failed> {
        let what = format!("reading {} keys of namespace {namespace}", keys.len());
        let fail = |e| failed(e, &what, &self.inner.url);
        let client = self.client(&what).await?;
        let statement = client
            .prepare_cached(&self.inner.sql.get_many)
            .await
            .map_err(fail)?;
        let rows = client
            .query(&statement, &[&namespace.as_str(), &keys])
            .await
            .map_err(fail)?;
        if rows.len() != keys.len() {
            return Err(KvError::Corrupt(format!(
                "{what} returned {} rows for {} keys",
                rows.len(),
                keys.len()
            ))
            .into());
        }
        rows.iter()
            .map(|row| row.try_get(0).map_err(|e| unreadable(e, &what)))
            .collect()
    }

    async fn try_scan(
        &self,
        namespace: &Namespace,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: i64,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Failed> {
        let what = format!("scanning namespace {namespace}");
        let fail = |e| failed(e, &what, &self.inner.url);
        let (lower, exclusive) = match after {
            Some(after) if after >= prefix => (after, true),
            _ => (prefix, false),
        };
        let upper = prefix_successor(prefix);
        let client = self.client(&what).await?;
        let statement = client
            .prepare_cached(
                &self.inner.sql.scan[usize::from(exclusive)][usize::from(upper.is_some())],
            )
            .await
            .map_err(fail)?;
        let ns = namespace.as_str();
        let rows = match &upper {
            Some(upper) => {
                client
                    .query(&statement, &[&ns, &lower, upper, &limit])
                    .await
            }
            None => client.query(&statement, &[&ns, &lower, &limit]).await,
        }
        .map_err(fail)?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0).map_err(|e| unreadable(e, &what))?,
                    row.try_get(1).map_err(|e| unreadable(e, &what))?,
                ))
            })
            .collect()
    }

    async fn try_commit(&self, namespace: &Namespace, plan: &Plan) -> Result<(), Failed> {
        let what = format!("committing to namespace {namespace}");
        let fail = |e| failed(e, &what, &self.inner.url);
        let mut client = self.client(&what).await?;
        let statement = client
            .prepare_cached(&self.inner.sql.check_and_write)
            .await
            .map_err(fail)?;
        let txn = client.transaction().await.map_err(fail)?;
        txn.batch_execute(&plan.locks.sql()).await.map_err(fail)?;
        let row = txn
            .query_one(
                &statement,
                &[
                    &namespace.as_str(),
                    &plan.check_keys,
                    &plan.check_expected,
                    &plan.put_keys,
                    &plan.put_values,
                    &plan.delete_keys,
                ],
            )
            .await
            .map_err(fail)?;
        let failed_check: Option<i64> = row.try_get(0).map_err(|e| unreadable(e, &what))?;
        if let Some(index) = failed_check {
            // Ended now rather than when dropped, to release the locks at once. Should the
            // ROLLBACK fail, the connection is gone and PostgreSQL rolls back anyway.
            let _ = txn.rollback().await;
            let key = usize::try_from(index - 1)
                .ok()
                .and_then(|i| plan.check_keys.get(i))
                .map_or_else(|| format!("(check {index})"), |key| display_key(key));
            return Err(KvError::Conflict {
                namespace: namespace.to_string(),
                key,
            }
            .into());
        }
        txn.commit()
            .await
            .map_err(|e| commit_failed(e, &what, &self.inner.url))
    }

    async fn try_clear(&self, namespace: &Namespace) -> Result<u64, Failed> {
        let what = format!("clearing namespace {namespace}");
        let fail = |e| failed(e, &what, &self.inner.url);
        let mut client = self.client(&what).await?;
        let statement = client
            .prepare_cached(&self.inner.sql.clear)
            .await
            .map_err(fail)?;
        let txn = client.transaction().await.map_err(fail)?;
        let locks = Locks {
            namespace: lock_id(&[
                b"proteus-kv namespace",
                self.inner.schema.as_bytes(),
                namespace.as_str().as_bytes(),
            ]),
            keys: None,
        };
        txn.batch_execute(&locks.sql()).await.map_err(fail)?;
        let cleared = txn
            .execute(&statement, &[&namespace.as_str()])
            .await
            .map_err(fail)?;
        txn.commit()
            .await
            .map_err(|e| commit_failed(e, &what, &self.inner.url))?;
        Ok(cleared)
    }
}

#[async_trait]
impl KvStore for PostgresKvStore {
    async fn get_many(
        &self,
        namespace: &Namespace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        check_keys(keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        with_attempts(|| self.try_get_many(namespace, keys)).await
    }

    async fn commit(&self, namespace: &Namespace, commit: KvCommit) -> Result<(), KvError> {
        check_commit(&commit)?;
        if commit.checks.is_empty() && commit.writes.is_empty() {
            return Ok(());
        }
        let plan = Plan::new(&self.inner.schema, namespace, commit);
        with_attempts(|| self.try_commit(namespace, &plan)).await
    }

    async fn scan(
        &self,
        namespace: &Namespace,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError> {
        check_scan(prefix, limit)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        with_attempts(|| self.try_scan(namespace, prefix, after, limit)).await
    }

    async fn clear(&self, namespace: &Namespace) -> Result<u64, KvError> {
        with_attempts(|| self.try_clear(namespace)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_successors() {
        assert_eq!(prefix_successor(b""), None);
        assert_eq!(prefix_successor(&[0xff]), None);
        assert_eq!(prefix_successor(&[0xff, 0xff, 0xff]), None);
        assert_eq!(prefix_successor(b"a"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(&[0x00]), Some(vec![0x01]));
        assert_eq!(prefix_successor(&[0x01, 0xff]), Some(vec![0x02]));
        assert_eq!(
            prefix_successor(&[0x61, 0xfe, 0xff]),
            Some(vec![0x61, 0xff])
        );
    }

    #[test]
    fn lock_ids_are_fixed_and_separate_their_parts() {
        // Every process sharing a schema must agree: the ids never change between builds.
        assert_eq!(lock_id(&[]), 0xcbf2_9ce4_8422_2325_u64 as i64);
        assert_eq!(lock_id(&[b"a"]), lock_id(&[b"a"]));
        assert_ne!(lock_id(&[b"ab", b"c"]), lock_id(&[b"a", b"bc"]));
    }

    #[test]
    fn a_plan_keeps_the_net_effect_and_bounds_its_locks() {
        let ns = Namespace::parse("n").unwrap();
        let put = |key: &[u8], value: &[u8]| KvWrite::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        let plan = Plan::new(
            "s",
            &ns,
            KvCommit {
                checks: vec![proteus_kv::KvCheck {
                    key: b"c".to_vec(),
                    expected: None,
                }],
                writes: vec![
                    put(b"a", b"1"),
                    KvWrite::Delete { key: b"b".to_vec() },
                    put(b"b", b"2"),
                    KvWrite::Delete { key: b"a".to_vec() },
                    put(b"c", b"3"),
                ],
            },
        );
        assert_eq!(plan.put_keys, vec![b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(plan.put_values, vec![b"2".to_vec(), b"3".to_vec()]);
        assert_eq!(plan.delete_keys, vec![b"a".to_vec()]);
        let keys = plan.locks.keys.as_ref().unwrap();
        assert_eq!(keys.len(), 3, "c is checked and written: one lock");
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert!(
            plan.locks
                .sql()
                .starts_with("SELECT pg_advisory_xact_lock_shared(")
        );

        let many = Plan::new(
            "s",
            &ns,
            KvCommit {
                checks: vec![],
                writes: (0..=KEY_LOCKS_MAX as u32)
                    .map(|i| put(&i.to_be_bytes(), b"v"))
                    .collect(),
            },
        );
        assert!(many.locks.keys.is_none());
        assert_eq!(
            many.locks.sql(),
            format!(
                "SELECT pg_advisory_xact_lock('{}'::int8);",
                many.locks.namespace
            )
        );
    }
}
