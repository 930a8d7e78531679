//! The store's settings.

use std::fmt;

use proteus_eventstore::EventStoreError;

// The schema-name rule and URL redaction are the ones every PostgreSQL adapter shares.
pub(crate) use proteus_postgres::redact;
pub use proteus_postgres::{SCHEMA_NAME_BYTES_MAX, validate_schema_name};

/// Settings of the PostgreSQL event store. Every store lives in its own PostgreSQL schema, so
/// one database can hold several (tests run each in a fresh schema).
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresEventStoreConfig {
    /// A libpq-style connection URL or key=value string, such as
    /// `postgres://proteus@db.internal:5432/proteus`. TLS is not supported: connect over a
    /// trusted network or a local socket. `application_name` defaults to
    /// `proteus-eventstore`.
    pub url: String,
    /// The PostgreSQL schema holding the store's tables, created at open if missing: 1 to
    /// [`SCHEMA_NAME_BYTES_MAX`] bytes of lowercase ASCII letters, digits and `_`, starting with
    /// a letter or `_`, not starting with `pg_`. Default `proteus_eventstore`.
    pub schema: String,
    /// Most connections of the pool that serves reads and writes (the LISTEN connection is
    /// one more). Default 16.
    pub pool_size_max: usize,
    /// Longest wait for a new connection to be established, in milliseconds. Default 5,000.
    pub connect_timeout_ms: u64,
    /// Longest wait for a free connection of the pool, in milliseconds; a call that waits
    /// longer fails with `Unavailable`. Default 10,000.
    pub pool_wait_timeout_ms: u64,
    /// Longest statement, in milliseconds (PostgreSQL's `statement_timeout`); 0 for none.
    /// Default 30,000.
    pub statement_timeout_ms: u64,
    /// How often a `wait_for_position` that heard no notification asks the database for its
    /// head anyway, in milliseconds, so a notification lost with the LISTEN connection cannot
    /// hold a waiter until its timeout. Default 500.
    pub listen_fallback_poll_ms: u64,
    /// Most appends committed together in one transaction (group commit). Default 128.
    pub write_batch_appends_max: usize,
    /// Most bytes (as `append_bytes_max` counts them) committed together; an append larger
    /// alone is still written, alone. Default 16 MiB.
    pub write_batch_bytes_max: usize,
    /// Most batches being written at once, each on its own pooled connection; less than
    /// `pool_size_max`, so reads always find a connection. Default 8.
    pub write_batches_in_flight_max: usize,
    /// Most appends waiting for the writer; further appends wait for room (back-pressure).
    /// Default 1,024.
    pub write_queue_appends_max: usize,
    /// Whether opening creates the schema and its tables when they are missing (`true`, the
    /// default, for a store being served), or refuses a schema that holds no event store
    /// (`false`, for a store only read, as `proteus migrate --from postgres://…` does, so a
    /// mistyped schema is an error rather than an empty store; an older schema still gets the
    /// migrations it lacks, as a server opening it would: `Connection::open_existing`).
    pub create_schema: bool,
}

impl Default for PostgresEventStoreConfig {
    fn default() -> Self {
        PostgresEventStoreConfig {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            schema: "proteus_eventstore".into(),
            pool_size_max: 16,
            connect_timeout_ms: 5_000,
            pool_wait_timeout_ms: 10_000,
            statement_timeout_ms: 30_000,
            listen_fallback_poll_ms: 500,
            write_batch_appends_max: 128,
            write_batch_bytes_max: 16 * 1024 * 1024,
            write_batches_in_flight_max: 8,
            write_queue_appends_max: 1_024,
            create_schema: true,
        }
    }
}

impl PostgresEventStoreConfig {
    /// The defaults with this URL and schema.
    pub fn new(url: impl Into<String>, schema: impl Into<String>) -> Self {
        PostgresEventStoreConfig {
            url: url.into(),
            schema: schema.into(),
            ..PostgresEventStoreConfig::default()
        }
    }

    /// Checks every field and gives how to connect (URL, pool bounds, timeouts) and the
    /// driver's configuration and TLS connector built from it.
    pub(crate) fn validate(
        &self,
    ) -> Result<
        (
            proteus_postgres::Connection,
            (tokio_postgres::Config, proteus_postgres::Tls),
        ),
        EventStoreError,
    > {
        let invalid = |reason: String| EventStoreError::InvalidRequest { reason };
        validate_schema_name(&self.schema).map_err(invalid)?;
        for (name, value) in [
            ("pool_size_max", self.pool_size_max as u64),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("pool_wait_timeout_ms", self.pool_wait_timeout_ms),
            ("listen_fallback_poll_ms", self.listen_fallback_poll_ms),
            (
                "write_batch_appends_max",
                self.write_batch_appends_max as u64,
            ),
            ("write_batch_bytes_max", self.write_batch_bytes_max as u64),
            (
                "write_batches_in_flight_max",
                self.write_batches_in_flight_max as u64,
            ),
            (
                "write_queue_appends_max",
                self.write_queue_appends_max as u64,
            ),
        ] {
            if value == 0 {
                return Err(invalid(format!("{name} is 0; it must be at least 1")));
            }
        }
        if self.write_batches_in_flight_max >= self.pool_size_max {
            return Err(invalid(format!(
                "write_batches_in_flight_max ({}) must be less than pool_size_max ({}), so reads always find a connection; lower it or raise pool_size_max",
                self.write_batches_in_flight_max, self.pool_size_max
            )));
        }
        let connection = proteus_postgres::Connection {
            url: self.url.clone(),
            application_name: "proteus-eventstore",
            pool_size_max: self.pool_size_max,
            connect_timeout_ms: self.connect_timeout_ms,
            pool_wait_timeout_ms: self.pool_wait_timeout_ms,
            statement_timeout_ms: self.statement_timeout_ms,
        };
        let driver = connection.config().map_err(invalid)?;
        Ok((connection, driver))
    }
}

impl fmt::Debug for PostgresEventStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresEventStoreConfig")
            .field("url", &redact(&self.url))
            .field("schema", &self.schema)
            .field("pool_size_max", &self.pool_size_max)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("pool_wait_timeout_ms", &self.pool_wait_timeout_ms)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .field("listen_fallback_poll_ms", &self.listen_fallback_poll_ms)
            .field("write_batch_appends_max", &self.write_batch_appends_max)
            .field(
                "write_batches_in_flight_max",
                &self.write_batches_in_flight_max,
            )
            .field("write_batch_bytes_max", &self.write_batch_bytes_max)
            .field("write_queue_appends_max", &self.write_queue_appends_max)
            .field("create_schema", &self.create_schema)
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
        let config = PostgresEventStoreConfig::new("postgres://u:secret@h/db", "s");
        assert!(!format!("{config:?}").contains("secret"));
    }

    #[test]
    fn configs_are_checked() {
        let good = PostgresEventStoreConfig::new("postgres://u@h:5432/db", "s");
        let (_, (pg, _)) = good.validate().unwrap();
        assert_eq!(pg.get_application_name(), Some("proteus-eventstore"));
        for bad in [
            PostgresEventStoreConfig {
                pool_size_max: 0,
                ..good.clone()
            },
            PostgresEventStoreConfig {
                schema: "Bad".into(),
                ..good.clone()
            },
            PostgresEventStoreConfig {
                url: "postgres://u@h:notaport/db".into(),
                ..good.clone()
            },
            PostgresEventStoreConfig {
                listen_fallback_poll_ms: 0,
                ..good.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
