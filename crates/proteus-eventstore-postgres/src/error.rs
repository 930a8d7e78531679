//! How driver and pool failures become [`EventStoreError`]s: what a retry can fix (a lost
//! connection, a busy pool, a server shutting down) is `Unavailable`; the rest is `Storage`.

use deadpool_postgres::PoolError;
use proteus_eventstore::EventStoreError;

pub use proteus_postgres::START_HINT;
use proteus_postgres::retriable;

pub(crate) fn closed() -> EventStoreError {
    EventStoreError::Unavailable {
        reason: "the event store was closed (the server is shutting down)".into(),
    }
}

pub(crate) fn storage(reason: impl Into<String>) -> EventStoreError {
    EventStoreError::Storage(reason.into())
}

/// Maps a driver error met while doing `what` (a phrase such as "appending to stream 'x'").
/// `write` adds that a write may or may not have been committed, so the caller retries it
/// with the same event ids (which makes the retry idempotent).
pub(crate) fn pg(error: tokio_postgres::Error, what: &str, write: bool) -> EventStoreError {
    let unknown = if write {
        "; the write may or may not have been committed, so retry it with the same event ids"
    } else {
        ""
    };
    if let Some(db) = error.as_db_error() {
        if retriable(db.code()) {
            return EventStoreError::Unavailable {
                reason: format!(
                    "PostgreSQL could not complete {what}: {} ({}){unknown}",
                    db.message(),
                    db.code().code()
                ),
            };
        }
        return storage(format!(
            "PostgreSQL failed {what}: {} ({}){}",
            db.message(),
            db.code().code(),
            db.detail().map(|d| format!("; {d}")).unwrap_or_default()
        ));
    }
    let text = error.to_string();
    if text.starts_with("error deserializing") || text.starts_with("error serializing") {
        return storage(format!("{what}: {text}"));
    }
    // Closed connections, I/O errors, connect failures and timeouts.
    EventStoreError::Unavailable {
        reason: format!(
            "the connection to PostgreSQL failed while {what}: {text}{}{unknown}",
            std::error::Error::source(&error)
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        ),
    }
}

/// Maps a failure to get a connection from the pool.
pub(crate) fn pool(error: PoolError, what: &str) -> EventStoreError {
    match error {
        PoolError::Backend(error) => {
            let mapped = pg(error, what, false);
            match mapped {
                EventStoreError::Unavailable { reason } => EventStoreError::Unavailable {
                    reason: format!("{reason}; is PostgreSQL running? If not, {START_HINT}"),
                },
                other => other,
            }
        }
        PoolError::Closed => closed(),
        PoolError::Timeout(kind) => EventStoreError::Unavailable {
            reason: format!(
                "no PostgreSQL connection became available in time ({kind:?} timeout) while {what}; every pooled connection is busy (raise pool_size_max) or PostgreSQL does not answer"
            ),
        },
        other => storage(format!("the connection pool failed while {what}: {other}")),
    }
}
