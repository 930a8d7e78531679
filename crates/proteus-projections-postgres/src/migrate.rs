//! Schema migrations, shipped in the binary and applied at open by `proteus-postgres` (as for
//! every PostgreSQL adapter).
//!
//! Each migration is a SQL file of `migrations/`, numbered from 1. Opening a store runs, in
//! ONE transaction: take a transaction-level advisory lock keyed by the schema's name (the
//! same lock the PostgreSQL event store takes, so two processes, or an event store and a
//! read-model store sharing a schema, migrate one after the other), create the schema and its
//! `readmodel_migrations` table if missing, and apply, in order, every migration whose version
//! is not in that table, recording it there. A failure rolls everything back. A database
//! migrated by a newer build (a version this build does not know) is refused rather than used
//! with the wrong expectations. The table is not the event store's `schema_migrations`, so
//! the two stores' versions never mix when they share a schema.

pub use proteus_postgres::{Migration, Migrations};

/// The table recording applied migrations.
pub const MIGRATIONS_TABLE: &str = "readmodel_migrations";

/// Every migration of this build, in order.
pub const MIGRATIONS: Migrations = Migrations {
    table: MIGRATIONS_TABLE,
    what: "read models",
    list: &[Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../migrations/0001_initial.sql"),
    }],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_consecutive_from_one() {
        for (index, migration) in MIGRATIONS.list.iter().enumerate() {
            assert_eq!(migration.version, index as i32 + 1, "{}", migration.name);
            assert!(!migration.sql.trim().is_empty());
        }
    }
}
