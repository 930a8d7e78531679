//! `proteus-postgres` against real PostgreSQL servers: what every adapter's connections share.

mod hosts;
mod tls;

use proteus_postgres::test_support::unique_name;
use proteus_postgres::{Connection, Migrations, PgError};

const NO_MIGRATIONS: Migrations = Migrations {
    table: "connection_test_migrations",
    what: "connection test",
    list: &[],
};

/// Opens a pool on `url` as every adapter does (the migrating connection first, in a schema
/// of its own), and answers `sql` (one text value) on a pooled connection.
async fn ask_pooled(url: &str, sql: &str) -> Result<String, PgError> {
    let connection = Connection {
        url: url.to_owned(),
        application_name: "proteus-it-connections",
        pool_size_max: 1,
        connect_timeout_ms: 5_000,
        pool_wait_timeout_ms: 5_000,
        statement_timeout_ms: 5_000,
    };
    let pool = connection
        .open(&unique_name("conn"), &NO_MIGRATIONS)
        .await?;
    let client = pool.get().await.expect("a pooled connection");
    let row = client.query_one(sql, &[]).await.expect("an answer");
    Ok(row.get(0))
}
