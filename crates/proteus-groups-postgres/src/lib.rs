//! The PostgreSQL [`GroupStore`]: consumer groups and their per-partition progress in one
//! PostgreSQL schema, so a group's acknowledged progress lives with the rest of a team's data
//! and survives the loss of a Proteus machine.
//!
//! Tables (`migrations/`): `groups (topic, grp) → config, created_ms, fence` and `progress
//! (topic, grp, partition) → progress`, both JSON of the domain's types, the second deleted with
//! its group. Every write is one transaction, durable when it returns (PostgreSQL's
//! `synchronous_commit = on`). Fenced writes start by raising the group row's fencing token
//! (`UPDATE … WHERE fence <= $token`), which also locks the row: a concurrent delete cannot
//! leave orphans, a newer coordinator's claim waits for the write or refuses it, and all the
//! partitions given are written together.
//!
//! Connection handling, the schema-name rule and migrations come from `proteus-postgres`.

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use proteus_groups::store::check_fence;
use proteus_groups::{
    GroupConfig, GroupName, GroupRecord, GroupStore, PartitionProgress, StoreError,
};
use proteus_log::TopicName;
use proteus_postgres::{Connection, Migration, Migrations, PgError};
use tokio_postgres::Row;

pub use proteus_postgres::START_HINT;

/// This adapter's migrations, compiled in.
pub const MIGRATIONS: Migrations = Migrations {
    table: "group_migrations",
    what: "consumer groups",
    list: &[
        Migration {
            version: 1,
            name: "initial",
            sql: include_str!("../migrations/0001_initial.sql"),
        },
        Migration {
            version: 2,
            name: "fencing_tokens",
            sql: include_str!("../migrations/0002_fencing_tokens.sql"),
        },
    ],
};

/// Settings of the PostgreSQL group store.
#[derive(Clone)]
pub struct PostgresGroupStoreConfig {
    /// `postgres://user@host:5432/database` (no TLS: a trusted network or a local socket).
    pub url: String,
    /// The PostgreSQL schema holding the groups, created at open (see
    /// [`proteus_postgres::validate_schema_name`]).
    pub schema: String,
    /// Most pooled connections.
    pub pool_size_max: usize,
    pub connect_timeout_ms: u64,
    /// Longest wait for a free pooled connection, in milliseconds.
    pub pool_wait_timeout_ms: u64,
    /// PostgreSQL's `statement_timeout` for the store's sessions, in milliseconds.
    pub statement_timeout_ms: u64,
    /// Whether opening creates the schema when it is missing (what a server does). Off when
    /// groups are only read from it (`proteus migrate-topics --groups-from`): a mistyped
    /// schema is then refused, and nothing is created (an older schema still gets the
    /// migrations it lacks: `Connection::open_existing`).
    pub create_schema: bool,
}

impl PostgresGroupStoreConfig {
    pub fn new(url: impl Into<String>, schema: impl Into<String>) -> Self {
        PostgresGroupStoreConfig {
            url: url.into(),
            schema: schema.into(),
            pool_size_max: 8,
            connect_timeout_ms: 5_000,
            pool_wait_timeout_ms: 10_000,
            statement_timeout_ms: 30_000,
            create_schema: true,
        }
    }
}

impl std::fmt::Debug for PostgresGroupStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresGroupStoreConfig")
            .field("url", &proteus_postgres::redact(&self.url))
            .field("schema", &self.schema)
            .field("pool_size_max", &self.pool_size_max)
            .field("create_schema", &self.create_schema)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct PostgresGroupStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// The server's URL, for messages (redacted where used).
    url: String,
    /// The quoted schema, spliced into statements (validated: `[a-z0-9_]` only).
    schema: String,
}

/// A failed query: [`StoreError::Unavailable`] when the server could not be reached or the
/// failure is one to retry (a lost connection, a restart), [`StoreError::Backend`] otherwise.
fn backend(error: PgError) -> StoreError {
    if error.retriable {
        return StoreError::Unavailable(error.message);
    }
    StoreError::Backend(error.message)
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Backend(format!("the stored {what} is unreadable: {e}")))
}

/// A fencing token as PostgreSQL's `bigint` (tokens count lease hand-overs: far below 2^63).
fn fence_column(fence: u64) -> i64 {
    i64::try_from(fence).unwrap_or(i64::MAX)
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(e.to_string()))
}

impl PostgresGroupStore {
    /// Whether its PostgreSQL server answers a query on one of the pool's connections within
    /// `timeout` (for `/readyz` and `proteus_backend_up`); `Err` says why not.
    pub async fn check_health(&self, timeout: std::time::Duration) -> Result<(), String> {
        proteus_postgres::check_health(&self.inner.pool, &self.inner.url, timeout).await
    }

    /// Connects, applies the migrations the schema misses (refusing a missing schema when
    /// `create_schema` is off) and builds the pool. Fails with a message saying how to start
    /// PostgreSQL when it cannot be reached.
    pub async fn open(config: PostgresGroupStoreConfig) -> Result<Self, StoreError> {
        let connection = Connection {
            url: config.url.clone(),
            application_name: "proteus-groups",
            pool_size_max: config.pool_size_max,
            connect_timeout_ms: config.connect_timeout_ms,
            pool_wait_timeout_ms: config.pool_wait_timeout_ms,
            statement_timeout_ms: config.statement_timeout_ms,
        };
        let pool = if config.create_schema {
            connection.open(&config.schema, &MIGRATIONS).await
        } else {
            connection.open_existing(&config.schema, &MIGRATIONS).await
        }
        .map_err(backend)?;
        Ok(PostgresGroupStore {
            inner: Arc::new(Inner {
                pool,
                url: config.url.clone(),
                schema: format!("\"{}\"", config.schema),
            }),
        })
    }

    async fn client(&self, what: &str) -> Result<deadpool_postgres::Object, StoreError> {
        self.inner
            .pool
            .get()
            .await
            .map_err(|e| backend(proteus_postgres::pool_error(e, what, &self.inner.url)))
    }

    /// Inside `txn`: raises the group's fencing token to `fence`, locking its row, or rolls back
    /// and reports why not (no such group, or a newer token claimed it).
    async fn fence<'t>(
        &self,
        txn: deadpool_postgres::Transaction<'t>,
        topic: &TopicName,
        group: &GroupName,
        fence: u64,
        what: &str,
    ) -> Result<deadpool_postgres::Transaction<'t>, StoreError> {
        let fail = |e| backend(proteus_postgres::pg(e, what, &self.inner.url));
        let s = &self.inner.schema;
        let raised = txn
            .execute(
                &format!(
                    "UPDATE {s}.groups SET fence = $3 WHERE topic = $1 AND grp = $2 AND fence <= $3"
                ),
                &[&topic.as_str(), &group.as_str(), &fence_column(fence)],
            )
            .await
            .map_err(fail)?;
        if raised == 1 {
            return Ok(txn);
        }
        let claimed = txn
            .query_opt(
                &format!("SELECT fence FROM {s}.groups WHERE topic = $1 AND grp = $2"),
                &[&topic.as_str(), &group.as_str()],
            )
            .await
            .map_err(fail)?
            .map(|row| u64::try_from(row.get::<_, i64>(0)).unwrap_or(0));
        // Ended now rather than when dropped: a dropped transaction's ROLLBACK waits for the
        // connection task, and the group's row lock with it.
        txn.rollback().await.map_err(fail)?;
        match claimed {
            Some(claimed) => {
                check_fence(topic, group, fence, claimed)?;
                Err(StoreError::Backend(format!(
                    "{what}: the group's fencing token changed while being checked; retry"
                )))
            }
            None => Err(StoreError::NotFound {
                topic: topic.clone(),
                group: group.clone(),
            }),
        }
    }

    /// Groups (optionally one) with their progress, sorted by topic, group and partition.
    async fn load(
        &self,
        one: Option<(&TopicName, &GroupName)>,
    ) -> Result<Vec<GroupRecord>, StoreError> {
        let what = "reading consumer groups";
        let client = self.client(what).await?;
        let s = &self.inner.schema;
        let filter = "($1::text IS NULL OR (g.topic = $1 AND g.grp = $2))";
        let (topic, group) = match one {
            Some((t, g)) => (Some(t.as_str()), Some(g.as_str())),
            None => (None, None),
        };
        let groups = client
            .query(
                &format!(
                    "SELECT g.topic, g.grp, g.config::text, g.created_ms, g.fence FROM {s}.groups g \
                     WHERE {filter} ORDER BY g.topic, g.grp"
                ),
                &[&topic, &group],
            )
            .await
            .map_err(|e| backend(proteus_postgres::pg(e, what, &self.inner.url)))?;
        let progress = client
            .query(
                &format!(
                    "SELECT g.topic, g.grp, g.progress::text FROM {s}.progress g \
                     WHERE {filter} ORDER BY g.topic, g.grp, g.partition"
                ),
                &[&topic, &group],
            )
            .await
            .map_err(|e| backend(proteus_postgres::pg(e, what, &self.inner.url)))?;
        let mut records = Vec::with_capacity(groups.len());
        for row in &groups {
            records.push(record(row)?);
        }
        for row in &progress {
            let (topic, group): (String, String) = (row.get(0), row.get(1));
            let partition: PartitionProgress = decode("progress", row.get::<_, &str>(2))?;
            if let Some(record) = records
                .iter_mut()
                .find(|r| r.topic.as_str() == topic && r.group.as_str() == group)
            {
                record.partitions.push(partition);
            }
        }
        Ok(records)
    }
}

fn record(row: &Row) -> Result<GroupRecord, StoreError> {
    let topic: String = row.get(0);
    let group: String = row.get(1);
    let unreadable =
        |e: String| StoreError::Backend(format!("a stored group name is invalid: {e}"));
    Ok(GroupRecord {
        topic: TopicName::parse(&topic).map_err(|e| unreadable(e.to_string()))?,
        group: GroupName::parse(&group).map_err(|e| unreadable(e.to_string()))?,
        config: decode::<GroupConfig>("group settings", row.get::<_, &str>(2))?,
        created_ms: row.get(3),
        partitions: Vec::new(),
        fence: u64::try_from(row.get::<_, i64>(4)).unwrap_or(0),
    })
}

#[async_trait]
impl GroupStore for PostgresGroupStore {
    async fn create_group(&self, record: &GroupRecord) -> Result<(), StoreError> {
        let what = format!("creating group '{}'", record.group);
        let fail = |e| backend(proteus_postgres::pg(e, &what, &self.inner.url));
        let config = encode(&record.config)?;
        let partitions: Vec<i32> = record
            .partitions
            .iter()
            .map(|p| i32::try_from(p.partition).unwrap_or(i32::MAX))
            .collect();
        let progress: Vec<String> = record
            .partitions
            .iter()
            .map(encode)
            .collect::<Result<_, _>>()?;
        let mut client = self.client(&what).await?;
        let s = &self.inner.schema;
        let txn = client.transaction().await.map_err(fail)?;
        let inserted = txn
            .execute(
                &format!(
                    "INSERT INTO {s}.groups (topic, grp, config, created_ms, fence) \
                     VALUES ($1, $2, $3::text::json, $4, $5) ON CONFLICT DO NOTHING"
                ),
                &[
                    &record.topic.as_str(),
                    &record.group.as_str(),
                    &config,
                    &record.created_ms,
                    &fence_column(record.fence),
                ],
            )
            .await
            .map_err(fail)?;
        if inserted == 0 {
            // Ended now rather than when dropped: a dropped transaction's ROLLBACK waits for
            // the connection task, and the group's row lock with it.
            txn.rollback().await.map_err(fail)?;
            return Err(StoreError::AlreadyExists {
                topic: record.topic.clone(),
                group: record.group.clone(),
            });
        }
        txn.execute(
            &format!(
                "INSERT INTO {s}.progress (topic, grp, partition, progress) \
                 SELECT $1, $2, p, j::json FROM unnest($3::integer[], $4::text[]) AS u(p, j)"
            ),
            &[
                &record.topic.as_str(),
                &record.group.as_str(),
                &partitions,
                &progress,
            ],
        )
        .await
        .map_err(fail)?;
        txn.commit().await.map_err(fail)
    }

    async fn update_config(
        &self,
        topic: &TopicName,
        group: &GroupName,
        fence: u64,
        config: &GroupConfig,
    ) -> Result<(), StoreError> {
        let what = format!("updating group '{group}'");
        let fail = |e| backend(proteus_postgres::pg(e, &what, &self.inner.url));
        let config = encode(config)?;
        let mut client = self.client(&what).await?;
        let s = &self.inner.schema;
        let txn = client.transaction().await.map_err(fail)?;
        let txn = self.fence(txn, topic, group, fence, &what).await?;
        txn.execute(
            &format!("UPDATE {s}.groups SET config = $3::text::json WHERE topic = $1 AND grp = $2"),
            &[&topic.as_str(), &group.as_str(), &config],
        )
        .await
        .map_err(fail)?;
        txn.commit().await.map_err(fail)
    }

    async fn save_progress(
        &self,
        topic: &TopicName,
        group: &GroupName,
        fence: u64,
        progress: &[PartitionProgress],
    ) -> Result<(), StoreError> {
        let what = format!("saving the progress of group '{group}'");
        let fail = |e| backend(proteus_postgres::pg(e, &what, &self.inner.url));
        let partitions: Vec<i32> = progress
            .iter()
            .map(|p| i32::try_from(p.partition).unwrap_or(i32::MAX))
            .collect();
        let encoded: Vec<String> = progress.iter().map(encode).collect::<Result<_, _>>()?;
        let mut client = self.client(&what).await?;
        let s = &self.inner.schema;
        let txn = client.transaction().await.map_err(fail)?;
        let txn = self.fence(txn, topic, group, fence, &what).await?;
        txn.execute(
            &format!(
                "INSERT INTO {s}.progress (topic, grp, partition, progress) \
                 SELECT $1, $2, p, j::json FROM unnest($3::integer[], $4::text[]) AS u(p, j) \
                 ON CONFLICT (topic, grp, partition) DO UPDATE SET progress = EXCLUDED.progress"
            ),
            &[&topic.as_str(), &group.as_str(), &partitions, &encoded],
        )
        .await
        .map_err(fail)?;
        txn.commit().await.map_err(fail)
    }

    async fn claim_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
        fence: u64,
    ) -> Result<Option<GroupRecord>, StoreError> {
        let what = format!("claiming group '{group}'");
        let fail = |e| backend(proteus_postgres::pg(e, &what, &self.inner.url));
        {
            let mut client = self.client(&what).await?;
            let txn = client.transaction().await.map_err(fail)?;
            match self.fence(txn, topic, group, fence, &what).await {
                Ok(txn) => txn.commit().await.map_err(fail)?,
                Err(StoreError::NotFound { .. }) => return Ok(None),
                Err(other) => return Err(other),
            }
        }
        // Read after the claim committed: every write with an older token ended before it (the
        // row lock) and is seen, and none can follow.
        self.load_group(topic, group).await
    }

    async fn load_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
    ) -> Result<Option<GroupRecord>, StoreError> {
        Ok(self.load(Some((topic, group))).await?.into_iter().next())
    }

    async fn list_groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        self.load(None).await
    }

    async fn delete_group(&self, topic: &TopicName, group: &GroupName) -> Result<bool, StoreError> {
        let what = format!("deleting group '{group}'");
        let client = self.client(&what).await?;
        let s = &self.inner.schema;
        let deleted = client
            .execute(
                &format!("DELETE FROM {s}.groups WHERE topic = $1 AND grp = $2"),
                &[&topic.as_str(), &group.as_str()],
            )
            .await
            .map_err(|e| backend(proteus_postgres::pg(e, &what, &self.inner.url)))?;
        Ok(deleted > 0)
    }
}
