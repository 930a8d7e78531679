//! Which instance coordinates a group when several share one group store.
//!
//! As in Kafka, each group has one coordinator at a time and every other instance forwards the
//! group's requests to it; there is no consensus protocol of our own. The coordinator is whoever
//! holds the group's lease in the shared key-value store ([`proteus_kv::lease`]): key
//! `<topic>/<group>` in the namespace [`LEASE_NAMESPACE`], data the holder's advertised URL.
//!
//! - A request for a group nobody coordinates (no lease, or an expired one) makes the instance
//!   that received it the coordinator: it takes the lease, then claims the group in the store
//!   with the lease's fencing token and loads its state ([`GroupService::activate`]). Every
//!   write it makes carries that token; the store refuses writes with an older one, so a
//!   coordinator that outlived its lease unnoticed (a long pause, clocks apart by more than the
//!   safety margin) cannot overwrite its successor's progress: it drops the group instead.
//! - The coordinator renews its leases every `ttl_ms / 3`. It serves a group only until
//!   `ttl_ms − safety_ms` after the start of its last successful renewal (measured on its own
//!   monotonic clock), so a coordinator that cannot renew stops before its lease expires and
//!   before anyone else may take it; it then drops the group without saving anything
//!   ([`GroupService::deactivate`]).
//! - Other instances cache who holds a lease until the lease's expiry and ask again afterwards,
//!   or at once when forwarding to the holder fails.
//! - A graceful shutdown saves every group's progress, then releases the leases, so another
//!   instance takes over at the next request instead of after the TTL.
//!
//! [`LocalRouter`] is the single-instance router: every group is local, no lease.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use proteus_groups::GroupName;
use proteus_kv::lease::{self, LeaseState};
use proteus_kv::{KvStore, Namespace};
use proteus_log::TopicName;

use crate::GroupService;

/// The key-value namespace of coordinator leases.
pub const LEASE_NAMESPACE: &str = "groups.coordinators";

/// Where a group's requests are handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// By this instance.
    Local,
    /// By the instance reachable at this URL (its advertised base URL, no trailing slash).
    Remote(String),
}

/// Decides, per group, whether this instance handles a request or forwards it.
#[async_trait]
pub trait GroupRouter: Send + Sync {
    /// Where requests for the group go now; may make this instance its coordinator. An error
    /// (the lease store is unreachable) means the request cannot be served now: retry.
    async fn route(&self, topic: &TopicName, group: &GroupName) -> Result<Route, String>;

    /// Forwarding to `url` failed (connection refused, timeout): forget the cached holder so
    /// the next request asks the lease store again.
    fn forward_failed(&self, topic: &TopicName, group: &GroupName, url: &str);

    /// This instance's id, sent along forwarded requests.
    fn instance_id(&self) -> &str;
}

/// One instance: every group is handled here.
pub struct LocalRouter;

#[async_trait]
impl GroupRouter for LocalRouter {
    async fn route(&self, _topic: &TopicName, _group: &GroupName) -> Result<Route, String> {
        Ok(Route::Local)
    }

    fn forward_failed(&self, _topic: &TopicName, _group: &GroupName, _url: &str) {}

    fn instance_id(&self) -> &str {
        "local"
    }
}

/// Settings of [`LeaseCoordinator`].
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Unique per process (a new one at every start).
    pub instance_id: String,
    /// The base URL other instances forward to, e.g. `http://10.0.0.5:7070`.
    pub advertise_url: String,
    /// How long a lease lasts without renewal.
    pub ttl_ms: u64,
    /// How long before its lease expires a coordinator that could not renew stops serving:
    /// covers clock differences between instances and the time a renewal takes.
    pub safety_ms: u64,
}

impl CoordinatorConfig {
    pub fn new(instance_id: impl Into<String>, advertise_url: impl Into<String>) -> Self {
        CoordinatorConfig {
            instance_id: instance_id.into(),
            advertise_url: advertise_url.into().trim_end_matches('/').to_owned(),
            ttl_ms: 10_000,
            safety_ms: 2_000,
        }
    }
}

type Key = (TopicName, GroupName);

/// A lease this instance holds.
struct Held {
    /// Serve the group until then; afterwards drop it.
    serve_until: Instant,
    /// Start of the last successful acquisition or renewal.
    renewed_at: Instant,
}

struct Inner {
    kv: Arc<dyn KvStore>,
    namespace: Namespace,
    config: CoordinatorConfig,
    service: GroupService,
    held: Mutex<HashMap<Key, Held>>,
    /// Holders seen elsewhere: (URL, lease expiry in ms since the epoch).
    remote: Mutex<HashMap<Key, (String, i64)>>,
    /// Serialises taking, renewing and giving up leases (never held on the fast path).
    transitions: tokio::sync::Mutex<()>,
    stopping: std::sync::atomic::AtomicBool,
}

/// The [`GroupRouter`] of instances sharing a group store: coordinators chosen by leases.
#[derive(Clone)]
pub struct LeaseCoordinator {
    inner: Arc<Inner>,
}

fn lease_key(topic: &TopicName, group: &GroupName) -> Vec<u8> {
    format!("{topic}/{group}").into_bytes()
}

impl LeaseCoordinator {
    /// Starts the renewal task (it ends with the last clone).
    pub fn start(
        kv: Arc<dyn KvStore>,
        service: GroupService,
        config: CoordinatorConfig,
    ) -> Result<LeaseCoordinator, String> {
        let namespace = Namespace::parse(LEASE_NAMESPACE).map_err(|e| e.to_string())?;
        if config.safety_ms.saturating_mul(2) >= config.ttl_ms {
            return Err(format!(
                "the lease safety margin ({} ms) must be less than half the lease TTL ({} ms)",
                config.safety_ms, config.ttl_ms
            ));
        }
        let coordinator = LeaseCoordinator {
            inner: Arc::new(Inner {
                kv,
                namespace,
                config,
                service,
                held: Mutex::new(HashMap::new()),
                remote: Mutex::new(HashMap::new()),
                transitions: tokio::sync::Mutex::new(()),
                stopping: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        tokio::spawn(maintain(Arc::downgrade(&coordinator.inner)));
        Ok(coordinator)
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.inner.config
    }

    /// The groups this instance coordinates now.
    pub fn coordinated(&self) -> Vec<(TopicName, GroupName)> {
        let now = Instant::now();
        let mut keys: Vec<Key> = self
            .inner
            .held
            .lock()
            .expect("held lock")
            .iter()
            .filter(|(_, held)| held.serve_until > now)
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        keys
    }

    /// Gives up every lease (after [`GroupService::shutdown`] saved the groups' progress) and
    /// stops renewing.
    pub async fn release_all(&self) {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::Release);
        let _transitions = self.inner.transitions.lock().await;
        let keys: Vec<Key> = self
            .inner
            .held
            .lock()
            .expect("held lock")
            .drain()
            .map(|(key, _)| key)
            .collect();
        for (topic, group) in keys {
            if let Err(error) = lease::release(
                self.inner.kv.as_ref(),
                &self.inner.namespace,
                &lease_key(&topic, &group),
                &self.inner.config.instance_id,
            )
            .await
            {
                tracing::warn!(%topic, %group, %error,
                    "could not release the group's coordinator lease; it expires by itself");
            }
        }
    }
}

impl Inner {
    fn now_ms(&self) -> i64 {
        (self.service.inner.config.clock)()
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.config.ttl_ms)
    }

    fn serve_for(&self) -> Duration {
        Duration::from_millis(self.config.ttl_ms - self.config.safety_ms)
    }

    fn holds(&self, key: &Key) -> bool {
        self.held
            .lock()
            .expect("held lock")
            .get(key)
            .is_some_and(|held| held.serve_until > Instant::now())
    }

    /// Forgets a lease this instance no longer serves under, and drops the group.
    fn drop_group(&self, key: &Key, why: &str) {
        self.held.lock().expect("held lock").remove(key);
        if self.service.deactivate(&key.0, &key.1) {
            tracing::warn!(topic = %key.0, group = %key.1, reason = why,
                "stopped coordinating the group");
        }
    }

    /// Takes or renews the lease (bounded by a third of the TTL).
    async fn acquire(&self, key: &Key) -> Result<(LeaseState, Instant), String> {
        let started = Instant::now();
        let lease_key = lease_key(&key.0, &key.1);
        let attempt = lease::acquire(
            self.kv.as_ref(),
            &self.namespace,
            &lease_key,
            &self.config.instance_id,
            &self.config.advertise_url,
            self.now_ms(),
            self.config.ttl_ms,
        );
        match tokio::time::timeout(self.ttl() / 3, attempt).await {
            Ok(Ok(state)) => Ok((state, started)),
            Ok(Err(error)) => Err(format!("the coordinator lease store failed: {error}")),
            Err(_) => Err(format!(
                "the coordinator lease store did not answer within {} ms",
                self.config.ttl_ms / 3
            )),
        }
    }

    async fn route(&self, topic: &TopicName, group: &GroupName) -> Result<Route, String> {
        let key = (topic.clone(), group.clone());
        if self.service.take_fenced_out(topic, group) {
            // The store refused this instance's write: a newer coordinator claimed the group
            // (this one's lease ran out unnoticed, e.g. a long pause). Ask the lease store again.
            self.held.lock().expect("held lock").remove(&key);
        } else if self.holds(&key) {
            return Ok(Route::Local);
        }
        if let Some((url, expires_ms)) = self.remote.lock().expect("remote lock").get(&key)
            && *expires_ms > self.now_ms()
        {
            return Ok(Route::Remote(url.clone()));
        }
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return Err("this instance is shutting down".into());
        }
        let _transitions = self.transitions.lock().await;
        if self.holds(&key) {
            return Ok(Route::Local);
        }
        // A lease held here earlier but not renewed in time: what runs here may be stale.
        if self.held.lock().expect("held lock").contains_key(&key)
            || self.service.is_active(topic, group)
        {
            self.drop_group(&key, "its lease was not renewed in time");
        }
        match self.acquire(&key).await? {
            (LeaseState::Held(lease), started) => {
                self.remote.lock().expect("remote lock").remove(&key);
                tracing::info!(%topic, %group, token = lease.token,
                    "coordinating the group here (lease taken)");
                if let Err(error) = self.service.activate(topic, group, lease.token).await {
                    // Not serving it: let another instance (or a later request) try.
                    let _ = lease::release(
                        self.kv.as_ref(),
                        &self.namespace,
                        &lease_key(topic, group),
                        &self.config.instance_id,
                    )
                    .await;
                    return Err(format!("cannot load the group's state: {error}"));
                }
                self.held.lock().expect("held lock").insert(
                    key.clone(),
                    Held {
                        serve_until: started + self.serve_for(),
                        renewed_at: started,
                    },
                );
                Ok(Route::Local)
            }
            (LeaseState::HeldByOther(lease), _) => {
                let url = lease.data.trim_end_matches('/').to_owned();
                self.remote
                    .lock()
                    .expect("remote lock")
                    .insert(key, (url.clone(), lease.expires_ms));
                Ok(Route::Remote(url))
            }
        }
    }

    /// One round of upkeep: drop groups whose lease ran out, renew the others when due, give
    /// up leases of groups that do not exist (taken for a request about a missing group).
    async fn maintain(&self) {
        let now = Instant::now();
        let renew_every = self.ttl() / 3;
        let (expired, due): (Vec<Key>, Vec<Key>) = {
            let held = self.held.lock().expect("held lock");
            let expired = held
                .iter()
                .filter(|(_, h)| h.serve_until <= now)
                .map(|(k, _)| k.clone())
                .collect();
            let due = held
                .iter()
                .filter(|(_, h)| h.serve_until > now && now - h.renewed_at >= renew_every)
                .map(|(k, _)| k.clone())
                .collect();
            (expired, due)
        };
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let _transitions = self.transitions.lock().await;
        for key in expired {
            self.drop_group(&key, "its lease could not be renewed in time");
        }
        for key in due {
            if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            if !self.held.lock().expect("held lock").contains_key(&key) {
                continue;
            }
            if !self.service.is_active(&key.0, &key.1) {
                // No such group (deleted, or never created): let the lease go.
                self.held.lock().expect("held lock").remove(&key);
                let _ = lease::release(
                    self.kv.as_ref(),
                    &self.namespace,
                    &lease_key(&key.0, &key.1),
                    &self.config.instance_id,
                )
                .await;
                continue;
            }
            match self.acquire(&key).await {
                Ok((LeaseState::Held(_), started)) => {
                    if let Some(held) = self.held.lock().expect("held lock").get_mut(&key) {
                        held.serve_until = started + self.serve_for();
                        held.renewed_at = started;
                    }
                }
                Ok((LeaseState::HeldByOther(lease), _)) => {
                    self.drop_group(&key, "another instance holds its lease");
                    self.remote.lock().expect("remote lock").insert(
                        key,
                        (
                            lease.data.trim_end_matches('/').to_owned(),
                            lease.expires_ms,
                        ),
                    );
                }
                Err(error) => {
                    tracing::warn!(topic = %key.0, group = %key.1, %error,
                        "renewing the group's coordinator lease failed; retrying");
                }
            }
        }
        // Groups running here without a lease (a request raced with a lease lost meanwhile).
        let strays: Vec<Key> = self
            .service
            .active_groups()
            .into_iter()
            .filter(|key| !self.held.lock().expect("held lock").contains_key(key))
            .collect();
        for key in strays {
            self.drop_group(&key, "it runs here without a lease");
        }
    }
}

async fn maintain(inner: Weak<Inner>) {
    loop {
        let tick = {
            let Some(inner) = inner.upgrade() else { return };
            if inner.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            inner.maintain().await;
            (inner.ttl() / 20).max(Duration::from_millis(20))
        };
        tokio::time::sleep(tick).await;
    }
}

#[async_trait]
impl GroupRouter for LeaseCoordinator {
    async fn route(&self, topic: &TopicName, group: &GroupName) -> Result<Route, String> {
        self.inner.route(topic, group).await
    }

    fn forward_failed(&self, topic: &TopicName, group: &GroupName, url: &str) {
        let key = (topic.clone(), group.clone());
        let mut remote = self.inner.remote.lock().expect("remote lock");
        if remote.get(&key).is_some_and(|(cached, _)| cached == url) {
            remote.remove(&key);
        }
    }

    fn instance_id(&self) -> &str {
        &self.inner.config.instance_id
    }
}
