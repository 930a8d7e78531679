//! The shared backends a server depends on (NATS JetStream, PostgreSQL, Redis), checked in the
//! background and reported by `GET /readyz` and the `proteus_backend_up` gauge.
//!
//! Checks run on their own schedule, never per request: a readiness probe every second from
//! each of many instances must not turn into as many queries against PostgreSQL. An outage
//! does not make `/readyz` fail unless the probe asks for it (`?require_backends=true`):
//! every instance shares the same backends, so failing readiness everywhere would take flag
//! evaluations and cached reads, which still work, out of service along with the rest.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::Serialize;

/// How often the background task checks every backend.
pub const BACKEND_CHECK_INTERVAL_MS: u64 = 5_000;
/// Longest a single check may take before it counts as down.
pub const BACKEND_CHECK_TIMEOUT_MS: u64 = 2_000;

type CheckFn = Arc<dyn Fn(Duration) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// One backend of one store: how to check it.
#[derive(Clone)]
pub struct BackendCheck {
    /// The store it serves: `log`, `event_store`, `groups`, `read_models`, `metadata`, `cache`.
    store: &'static str,
    /// `nats`, `postgres` or `redis`.
    backend: &'static str,
    check: CheckFn,
}

impl BackendCheck {
    /// `check(target, timeout)` answers `Ok` when the backend serves `target`'s calls now, or
    /// says why not. It must end within `timeout`.
    pub fn new<T, F, Fut>(store: &'static str, backend: &'static str, target: T, check: F) -> Self
    where
        T: Clone + Send + Sync + 'static,
        F: Fn(T, Duration) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        BackendCheck {
            store,
            backend,
            check: Arc::new(move |timeout| Box::pin(check(target.clone(), timeout))),
        }
    }
}

/// What the last check of one backend found.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BackendStatus {
    pub store: &'static str,
    pub backend: &'static str,
    pub up: bool,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the check ended, in Unix milliseconds.
    pub checked_ms: i64,
    /// How long the check took.
    pub latency_ms: u64,
}

/// The checks and their latest results. Cheap to clone; clones share the results.
#[derive(Clone, Default)]
pub struct BackendHealth {
    checks: Arc<Vec<BackendCheck>>,
    latest: Arc<RwLock<Vec<BackendStatus>>>,
}

impl BackendHealth {
    pub fn new(checks: Vec<BackendCheck>) -> Self {
        BackendHealth {
            checks: Arc::new(checks),
            latest: Arc::default(),
        }
    }

    /// The latest result of every check (empty before the first round, or with no shared
    /// backend).
    pub fn statuses(&self) -> Vec<BackendStatus> {
        self.latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs every check at once, each bounded by `timeout`, then publishes the results: the
    /// statuses, the gauge, and a log line for each backend that went down or came back.
    pub async fn check_now(&self, timeout: Duration) {
        // Each check promises to end within `timeout`; this bound holds if one does not.
        let bound = timeout + timeout / 2;
        let rounds = self.checks.iter().map(|check| async move {
            let started = Instant::now();
            let outcome = tokio::time::timeout(bound, (check.check)(timeout))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {} ms", bound.as_millis())));
            BackendStatus {
                store: check.store,
                backend: check.backend,
                up: outcome.is_ok(),
                error: outcome.err(),
                checked_ms: crate::ofrep::now_ms(),
                latency_ms: started.elapsed().as_millis() as u64,
            }
        });
        let statuses = futures_util::future::join_all(rounds).await;
        let previous = std::mem::replace(
            &mut *self.latest.write().unwrap_or_else(|p| p.into_inner()),
            statuses.clone(),
        );
        for status in &statuses {
            metrics::gauge!("proteus_backend_up", "store" => status.store, "backend" => status.backend)
                .set(if status.up { 1.0 } else { 0.0 });
            let was_up = previous
                .iter()
                .find(|p| p.store == status.store)
                .map(|p| p.up);
            match (was_up, &status.error) {
                (Some(true) | None, Some(error)) => tracing::warn!(
                    store = status.store,
                    backend = status.backend,
                    %error,
                    "a backend is down: calls that need it fail with 503 until it is back"
                ),
                (Some(false), None) => tracing::info!(
                    store = status.store,
                    backend = status.backend,
                    "a backend is back"
                ),
                _ => {}
            }
        }
    }

    /// Checks every `interval` (the first time after one interval: run
    /// [`BackendHealth::check_now`] first) until `shutdown` resolves. Does nothing without
    /// checks.
    pub async fn run(
        self,
        interval: Duration,
        timeout: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        if self.checks.is_empty() {
            return;
        }
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => self.check_now(timeout).await,
                _ = &mut shutdown => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn statuses_follow_each_check_and_a_slow_one_counts_as_down() {
        let healthy = Arc::new(AtomicBool::new(true));
        let health = BackendHealth::new(vec![
            BackendCheck::new("log", "nats", healthy.clone(), |healthy, _| async move {
                if healthy.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("not connected to NATS at nats://h:4222".to_owned())
                }
            }),
            BackendCheck::new("cache", "redis", (), |(), timeout| async move {
                // A check that breaks its promise to end within `timeout`.
                tokio::time::sleep(timeout * 10).await;
                Ok(())
            }),
        ]);
        assert!(
            health.statuses().is_empty(),
            "nothing before the first round"
        );
        let timeout = Duration::from_millis(50);
        health.check_now(timeout).await;
        let statuses = health.statuses();
        assert_eq!(statuses.len(), 2);
        assert!(
            statuses[0].up && statuses[0].error.is_none(),
            "{statuses:?}"
        );
        assert!(!statuses[1].up, "{statuses:?}");
        assert!(
            statuses[1]
                .error
                .as_deref()
                .unwrap()
                .contains("no answer within 75 ms"),
            "{statuses:?}"
        );
        assert!(statuses[1].latency_ms < 1_000, "{statuses:?}");

        healthy.store(false, Ordering::SeqCst);
        health.check_now(timeout).await;
        let log = &health.statuses()[0];
        assert!(!log.up);
        assert_eq!(
            log.error.as_deref(),
            Some("not connected to NATS at nats://h:4222")
        );
        healthy.store(true, Ordering::SeqCst);
        health.check_now(timeout).await;
        assert!(health.statuses()[0].up);
    }

    #[tokio::test]
    async fn run_stops_at_shutdown() {
        let health =
            BackendHealth::new(vec![BackendCheck::new("log", "nats", (), |(), _| async {
                Ok(())
            })]);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(health.clone().run(
            Duration::from_millis(10),
            Duration::from_millis(10),
            async move {
                let _ = stopped.await;
            },
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(health.statuses().len(), 1, "checked on its schedule");
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("run ends at shutdown")
            .unwrap();
    }
}
