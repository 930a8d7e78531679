//! How driver and pool failures become [`EventStoreError`]s: what a retry can fix (a lost
//! connection, a busy pool, a server shutting down) is `Unavailable`; the rest is `Storage`.

use deadpool_postgres::PoolError;
use proteus_eventstore::EventStoreError;

use proteus_postgres::PgError;
pub use proteus_postgres::START_HINT;

pub(crate) fn closed() -> EventStoreError {
    EventStoreError::Unavailable {
        reason: "the event store was closed (the server is shutting down)".into(),
    }
}

pub(crate) fn storage(reason: impl Into<String>) -> EventStoreError {
    EventStoreError::Storage(reason.into())
}

/// Maps a driver error met while doing `what` (a phrase such as "appending to stream 'x'")
/// on a connection to the server at `url`, as every PostgreSQL adapter does
/// (`proteus_postgres::pg`). `write` adds that a write may or may not have been committed, so
/// the caller retries it with the same event ids (which makes the retry idempotent).
pub(crate) fn pg(
    error: tokio_postgres::Error,
    what: &str,
    write: bool,
    url: &str,
) -> EventStoreError {
    port_error(proteus_postgres::pg(error, what, url), write)
}

/// Maps a failure to get a connection to the server at `url` from the pool.
pub(crate) fn pool(error: PoolError, what: &str, url: &str) -> EventStoreError {
    match error {
        PoolError::Closed => closed(),
        error => port_error(proteus_postgres::pool_error(error, what, url), false),
    }
}

/// What a retry can fix is `Unavailable`; the rest is `Storage`.
pub(crate) fn port_error(error: PgError, write: bool) -> EventStoreError {
    if !error.retriable {
        return storage(error.message);
    }
    let unknown = if write {
        "; the write may or may not have been committed, so retry it with the same event ids"
    } else {
        ""
    };
    EventStoreError::Unavailable {
        reason: format!("{}{unknown}", error.message),
    }
}
