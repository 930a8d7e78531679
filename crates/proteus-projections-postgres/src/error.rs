//! How driver and pool failures become [`StoreError`]s.
//!
//! The port has one variant for infrastructure failures, [`StoreError::Backend`]; its callers
//! (the projection runner) retry every backend failure with backoff. So the mapping here is
//! about the message: what a retry can fix (a lost connection, a busy pool, a server shutting
//! down, a deadlock or timeout) says it is temporary; the rest says what PostgreSQL refused.

use deadpool_postgres::PoolError;
use proteus_projections::StoreError;
use tokio_postgres::error::SqlState;

/// How to start the local PostgreSQL of a developer machine, for messages.
pub const START_HINT: &str = "start it (on Debian: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start)";

pub(crate) fn backend(reason: impl Into<String>) -> StoreError {
    StoreError::Backend(reason.into())
}

/// Whether a PostgreSQL error code means "try again later".
fn retriable(code: &SqlState) -> bool {
    let code = code.code();
    // 08: connection exceptions; 53: insufficient resources (too many connections, disk
    // full, out of memory); 57P0x: the server is shutting down or starting; 40001 and 40P01:
    // serialization failure and deadlock; 55P03: lock not available; 57014: statement
    // timeout or cancel.
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P0")
        || matches!(code, "40001" | "40P01" | "55P03" | "57014")
}

/// Maps a driver error met while doing `what` (a phrase such as "committing to 'orders'").
pub(crate) fn pg(error: tokio_postgres::Error, what: &str) -> StoreError {
    if let Some(db) = error.as_db_error() {
        if retriable(db.code()) {
            return backend(format!(
                "PostgreSQL could not complete {what} for now (temporary, retry): {} ({})",
                db.message(),
                db.code().code()
            ));
        }
        return backend(format!(
            "PostgreSQL failed {what}: {} ({}){}",
            db.message(),
            db.code().code(),
            db.detail().map(|d| format!("; {d}")).unwrap_or_default()
        ));
    }
    let text = error.to_string();
    if text.starts_with("error deserializing") || text.starts_with("error serializing") {
        return backend(format!("{what}: {text}"));
    }
    // Closed connections, I/O errors, connect failures and timeouts.
    backend(format!(
        "the connection to PostgreSQL failed while {what} (temporary, retry): {text}{}",
        std::error::Error::source(&error)
            .map(|s| format!(" ({s})"))
            .unwrap_or_default()
    ))
}

/// Maps a failure to get a connection from the pool.
pub(crate) fn pool(error: PoolError, what: &str) -> StoreError {
    match error {
        PoolError::Backend(error) => {
            let retry = error.as_db_error().is_none_or(|db| retriable(db.code()));
            let mapped = pg(error, what);
            match mapped {
                StoreError::Backend(reason) if retry => StoreError::Backend(format!(
                    "{reason}; is PostgreSQL running? If not, {START_HINT}"
                )),
                other => other,
            }
        }
        PoolError::Closed => backend("the read-model store was closed"),
        PoolError::Timeout(kind) => backend(format!(
            "no PostgreSQL connection became available in time ({kind:?} timeout) while {what} (temporary, retry); every pooled connection is busy (raise pool_size_max) or PostgreSQL does not answer"
        )),
        other => backend(format!("the connection pool failed while {what}: {other}")),
    }
}
