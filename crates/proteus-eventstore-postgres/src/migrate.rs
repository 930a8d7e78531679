//! Schema migrations, shipped in the binary and applied at open.
//!
//! Each migration is a SQL file of `migrations/`, numbered from 1. Opening a store runs, in
//! ONE transaction: take a transaction-level advisory lock keyed by the schema's name (so two
//! processes opening the same store at once apply each migration once: the second waits, then
//! finds them applied), create the schema and its `schema_migrations` table if missing, and
//! apply, in order, every migration whose version is not in that table, recording it there. A
//! failure rolls everything back. A database migrated by a newer build (a version this build
//! does not know) is refused rather than used with the wrong expectations.

use proteus_eventstore::EventStoreError;

use crate::error::{pg, storage};

/// One migration: its version (from 1, consecutive), a short name and its SQL.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration of this build, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "concurrent_appends",
        sql: include_str!("../migrations/0002_concurrent_appends.sql"),
    },
    Migration {
        version: 3,
        name: "exact_safe_head",
        sql: include_str!("../migrations/0003_exact_safe_head.sql"),
    },
];

/// The first key of the advisory lock (the second is the schema name's hash): "PRTS".
const ADVISORY_LOCK_CLASS: i32 = 0x5052_5453;

/// Applies what `schema` misses of [`MIGRATIONS`]; returns the versions applied now.
pub(crate) async fn migrate(
    client: &mut tokio_postgres::Client,
    schema: &str,
) -> Result<Vec<i32>, EventStoreError> {
    let what = format!("migrating schema {schema}");
    let fail = |e| pg(e, &what, false);
    let txn = client.transaction().await.map_err(fail)?;
    txn.execute(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        &[&ADVISORY_LOCK_CLASS, &schema],
    )
    .await
    .map_err(fail)?;
    // `schema` passed `validate_schema_name`: only [a-z0-9_], safe to splice.
    txn.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
         CREATE TABLE IF NOT EXISTS \"{schema}\".schema_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(fail)?;
    let applied: Vec<i32> = txn
        .query(
            &format!("SELECT version FROM \"{schema}\".schema_migrations ORDER BY version"),
            &[],
        )
        .await
        .map_err(fail)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    if let Some(&newest) = applied.last()
        && newest > known
    {
        return Err(storage(format!(
            "schema {schema} was migrated to version {newest} by a newer Proteus, but this one knows versions up to {known}; run the newer version, or use another schema"
        )));
    }
    let mut done = Vec::new();
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        txn.batch_execute(&format!("SET LOCAL search_path TO \"{schema}\""))
            .await
            .map_err(fail)?;
        txn.batch_execute(migration.sql).await.map_err(|e| {
            storage(format!(
                "migration {} ({}) of schema {schema} failed: {}",
                migration.version,
                migration.name,
                pg(e, &what, false)
            ))
        })?;
        txn.execute(
            &format!("INSERT INTO \"{schema}\".schema_migrations (version, name) VALUES ($1, $2)"),
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(fail)?;
        done.push(migration.version);
    }
    txn.commit().await.map_err(fail)?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_from_one() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, index as i32 + 1, "{}", migration.name);
            assert!(!migration.sql.trim().is_empty());
        }
    }
}
