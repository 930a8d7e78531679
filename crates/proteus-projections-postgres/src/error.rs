//! How driver and pool failures become [`StoreError`]s.
//!
//! The port has one variant for infrastructure failures, [`StoreError::Backend`]; its callers
//! (the projection runner) retry every backend failure with backoff. So the mapping here is
//! about the message: what a retry can fix (a lost connection, a busy pool, a server shutting
//! down, a deadlock or timeout) says it is temporary; the rest says what PostgreSQL refused.

use deadpool_postgres::PoolError;
use proteus_projections::StoreError;

pub use proteus_postgres::START_HINT;

pub(crate) fn backend(reason: impl Into<String>) -> StoreError {
    StoreError::Backend(reason.into())
}

/// Maps a driver error met while doing `what` (a phrase such as "committing to 'orders'")
/// on a connection to the server at `url`.
pub(crate) fn pg(error: tokio_postgres::Error, what: &str, url: &str) -> StoreError {
    backend(proteus_postgres::pg(error, what, url).message)
}

/// Maps a failure to get a connection to the server at `url` from the pool.
pub(crate) fn pool(error: PoolError, what: &str, url: &str) -> StoreError {
    backend(proteus_postgres::pool_error(error, what, url).message)
}
