//! The store's settings.

use std::fmt;

use proteus_projections::StoreError;

// The schema-name rule and URL redaction are the ones every PostgreSQL adapter shares.
pub(crate) use proteus_postgres::redact;
pub use proteus_postgres::{SCHEMA_NAME_BYTES_MAX, validate_schema_name};

/// Documents one query may read when no other limit is set (as the embedded store).
pub const QUERY_SCAN_DOCS_MAX_DEFAULT: usize = 1_000_000;

/// Settings of the PostgreSQL read-model store. Every store lives in its own PostgreSQL
/// schema, so one database can hold several (tests run each in a fresh schema); its tables do
/// not clash with the PostgreSQL event store's, so both may also share one schema.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresReadModelConfig {
    /// A libpq-style connection URL or key=value string, such as
    /// `postgres://proteus@db.internal:5432/proteus`. TLS is not supported: connect over a
    /// trusted network or a local socket. `application_name` defaults to
    /// `proteus-readmodels`. The database must use the UTF8 encoding.
    pub url: String,
    /// The PostgreSQL schema holding the store's tables, created at open if missing: 1 to
    /// [`SCHEMA_NAME_BYTES_MAX`] bytes of lowercase ASCII letters, digits and `_`, starting with
    /// a letter or `_`, not starting with `pg_`. Default `proteus_readmodels`.
    pub schema: String,
    /// Most connections of the pool. Default 16.
    pub pool_size_max: usize,
    /// Longest wait for a new connection to be established, in milliseconds. Default 5,000.
    pub connect_timeout_ms: u64,
    /// Longest wait for a free connection of the pool, in milliseconds. Default 10,000.
    pub pool_wait_timeout_ms: u64,
    /// Longest statement, in milliseconds (PostgreSQL's `statement_timeout`); 0 for none.
    /// Default 30,000.
    pub statement_timeout_ms: u64,
    /// Longest statement of `reset` and `drop_projection`, which delete every row of a
    /// projection in one transaction, in milliseconds; 0 for none. Default 600,000.
    pub reset_statement_timeout_ms: u64,
    /// Most documents one query reads before it is refused with `QueryTooBroad` (as the
    /// embedded store's option of the same name). Default 1,000,000.
    pub query_scan_docs_max: usize,
    /// Most rows one statement of a query fetches; a query reads in chunks growing from about
    /// its page size up to this. Default 1,000.
    pub query_chunk_rows_max: usize,
    /// Most documents or list items one statement of a commit sends. Default 10,000 (so
    /// every commit within `COMMIT_WRITES_MAX` needs one statement per kind of write).
    pub write_chunk_rows_max: usize,
    /// Most bytes of JSON one statement of a commit sends; a larger document or list is
    /// still sent, alone. Default 32 MiB (PostgreSQL takes at most 1 GiB per parameter).
    pub write_chunk_bytes_max: usize,
}

impl Default for PostgresReadModelConfig {
    fn default() -> Self {
        PostgresReadModelConfig {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            schema: "proteus_readmodels".into(),
            pool_size_max: 16,
            connect_timeout_ms: 5_000,
            pool_wait_timeout_ms: 10_000,
            statement_timeout_ms: 30_000,
            reset_statement_timeout_ms: 600_000,
            query_scan_docs_max: QUERY_SCAN_DOCS_MAX_DEFAULT,
            query_chunk_rows_max: 1_000,
            write_chunk_rows_max: 10_000,
            write_chunk_bytes_max: 32 * 1024 * 1024,
        }
    }
}

impl PostgresReadModelConfig {
    /// The defaults with this URL and schema.
    pub fn new(url: impl Into<String>, schema: impl Into<String>) -> Self {
        PostgresReadModelConfig {
            url: url.into(),
            schema: schema.into(),
            ..PostgresReadModelConfig::default()
        }
    }

    /// Checks every field and gives how to connect (URL, pool bounds, timeouts).
    pub(crate) fn validate(&self) -> Result<proteus_postgres::Connection, StoreError> {
        let invalid =
            |reason: String| StoreError::Backend(format!("invalid configuration: {reason}"));
        validate_schema_name(&self.schema).map_err(invalid)?;
        for (name, value) in [
            ("pool_size_max", self.pool_size_max as u64),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("pool_wait_timeout_ms", self.pool_wait_timeout_ms),
            ("query_scan_docs_max", self.query_scan_docs_max as u64),
            ("query_chunk_rows_max", self.query_chunk_rows_max as u64),
            ("write_chunk_rows_max", self.write_chunk_rows_max as u64),
            ("write_chunk_bytes_max", self.write_chunk_bytes_max as u64),
        ] {
            if value == 0 {
                return Err(invalid(format!("{name} is 0; it must be at least 1")));
            }
        }
        let connection = proteus_postgres::Connection {
            url: self.url.clone(),
            application_name: "proteus-readmodels",
            pool_size_max: self.pool_size_max,
            connect_timeout_ms: self.connect_timeout_ms,
            pool_wait_timeout_ms: self.pool_wait_timeout_ms,
            statement_timeout_ms: self.statement_timeout_ms,
        };
        connection.config().map_err(invalid)?;
        Ok(connection)
    }
}

impl fmt::Debug for PostgresReadModelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresReadModelConfig")
            .field("url", &redact(&self.url))
            .field("schema", &self.schema)
            .field("pool_size_max", &self.pool_size_max)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("pool_wait_timeout_ms", &self.pool_wait_timeout_ms)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .field(
                "reset_statement_timeout_ms",
                &self.reset_statement_timeout_ms,
            )
            .field("query_scan_docs_max", &self.query_scan_docs_max)
            .field("query_chunk_rows_max", &self.query_chunk_rows_max)
            .field("write_chunk_rows_max", &self.write_chunk_rows_max)
            .field("write_chunk_bytes_max", &self.write_chunk_bytes_max)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Schema names and URL redaction are `proteus_postgres`'s, tested there; what this
    /// config adds is its `Debug`, which must not show the password.
    #[test]
    fn debug_hides_the_password() {
        let config = PostgresReadModelConfig::new("postgres://u:secret@h/db", "s");
        assert!(!format!("{config:?}").contains("secret"));
    }

    #[test]
    fn configs_are_checked() {
        let good = PostgresReadModelConfig::new("postgres://u@h:5432/db", "s");
        let (pg, _) = good.validate().unwrap().config().unwrap();
        assert_eq!(pg.get_application_name(), Some("proteus-readmodels"));
        for bad in [
            PostgresReadModelConfig {
                pool_size_max: 0,
                ..good.clone()
            },
            PostgresReadModelConfig {
                schema: "Bad".into(),
                ..good.clone()
            },
            PostgresReadModelConfig {
                url: "postgres://u@h:notaport/db".into(),
                ..good.clone()
            },
            PostgresReadModelConfig {
                query_scan_docs_max: 0,
                ..good.clone()
            },
            PostgresReadModelConfig {
                write_chunk_bytes_max: 0,
                ..good.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
