//! The health check of each store on a shared backend (`/readyz`, `proteus_backend_up`; see
//! `proteus_server::health`): every adapter has its own `check_health`, named here once so
//! `serve` registers a store in one line.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use proteus_cache_redis::RedisRemoteCache;
use proteus_eventstore_nats::NatsEventStore;
use proteus_eventstore_postgres::PostgresEventStore;
use proteus_groups_nats::NatsGroupStore;
use proteus_groups_postgres::PostgresGroupStore;
use proteus_kv_postgres::PostgresKvStore;
use proteus_log_nats::NatsLog;
use proteus_projections_postgres::PostgresReadModelStore;
use proteus_server::health::BackendCheck;

/// An adapter whose backend can be checked: `Ok` when it serves calls now, within `timeout`.
pub trait CheckHealth: Send + Sync + 'static {
    fn check_health(&self, timeout: Duration) -> impl Future<Output = Result<(), String>> + Send;
}

macro_rules! check_health_of {
    ($($adapter:ty),* $(,)?) => {$(
        impl CheckHealth for $adapter {
            fn check_health(
                &self,
                timeout: Duration,
            ) -> impl Future<Output = Result<(), String>> + Send {
                // The adapter's own (inherent) method.
                <$adapter>::check_health(self, timeout)
            }
        }
    )*};
}

check_health_of!(
    NatsLog,
    NatsEventStore,
    NatsGroupStore,
    PostgresEventStore,
    PostgresGroupStore,
    PostgresKvStore,
    PostgresReadModelStore,
    RedisRemoteCache,
);

/// The check of `store` (`log`, `event_store`, …) kept on `backend` (`nats`, `postgres`,
/// `redis`) by `adapter`.
pub fn check<A: CheckHealth>(
    store: &'static str,
    backend: &'static str,
    adapter: Arc<A>,
) -> BackendCheck {
    BackendCheck::new(store, backend, adapter, |adapter, timeout| async move {
        adapter.check_health(timeout).await
    })
}
