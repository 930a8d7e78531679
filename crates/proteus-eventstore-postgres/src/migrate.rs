//! Schema migrations, shipped in the binary and applied at open by `proteus-postgres` (as for
//! every PostgreSQL adapter).
//!
//! Each migration is a SQL file of `migrations/`, numbered from 1. Opening a store runs, in
//! ONE transaction: take a transaction-level advisory lock keyed by the schema's name (so two
//! processes opening the same store at once apply each migration once: the second waits, then
//! finds them applied), create the schema and its `schema_migrations` table if missing, and
//! apply, in order, every migration whose version is not in that table, recording it there. A
//! failure rolls everything back. A database migrated by a newer build (a version this build
//! does not know) is refused rather than used with the wrong expectations.

pub use proteus_postgres::{Migration, Migrations};

/// Every migration of this build, in order, recorded in each schema's `schema_migrations`.
pub const MIGRATIONS: Migrations = Migrations {
    table: "schema_migrations",
    what: "event streams",
    list: &[
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
    ],
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
