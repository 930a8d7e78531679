//! Shared mode: several instances serving the same projections (read models, definitions and
//! checkpoints in one shared [`ReadModelStore`](proteus_projections::ReadModelStore), e.g.
//! PostgreSQL) behave as one service.
//!
//! - **One runner per projection.** An instance runs a projection only while it holds the
//!   lease `projections.runners` / `<name>` in the shared [`KvStore`]
//!   ([`proteus_kv::lease`]). A *keeper* task renews it every `lease_ttl_ms / 3`; when a
//!   renewal finds another holder, or renewals fail until a third of the TTL is left, the
//!   runner is stopped before the lease expires. Instances without the lease try to take it
//!   at every definitions refresh, so a dead instance's projections move within about
//!   `lease_ttl_ms + definitions_refresh_ms`; a graceful close releases them at once.
//! - **Definitions follow the store.** Every `definitions_refresh_ms` each instance re-reads
//!   the projections and reconciles: new ones become runner candidates, deleted ones are
//!   stopped and forgotten, changed run states are applied.
//! - **Control operations move the lease to the caller.** `pause`, `reset`, `delete` and
//!   `create` on an instance that does not hold the lease write a *hand-off request*
//!   (`projections.handoff` / `<name>` = `requester \n requested_ms`); the holder sees it at
//!   its next refresh, stops its runner (finishing the commit in flight) and releases the
//!   lease; the caller takes it, performs the operation exactly as in single-instance mode and
//!   keeps running the projection if it runs. So no commit of another instance can land
//!   after a reset or a delete. The wait is bounded by [`SharedMode::handoff_wait_ms`].

use std::sync::Arc;
use std::time::Duration;

use proteus_kv::lease::{
    self, LEASE_TEXT_BYTES_MAX, LEASE_TTL_MS_MAX, LEASE_TTL_MS_MIN, LeaseState,
};
use proteus_kv::{KvCommit, KvError, KvStore, KvWrite, Namespace};
use proteus_projections::ProjectionName;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{ServiceError, now_ms};

/// The namespace of the runner leases.
pub const RUNNERS_NAMESPACE: &str = "projections.runners";
/// The namespace of the hand-off requests.
pub const HANDOFF_NAMESPACE: &str = "projections.handoff";

/// Shortest and longest definitions refresh, in ms.
pub const DEFINITIONS_REFRESH_MS_MIN: u64 = 10;
pub const DEFINITIONS_REFRESH_MS_MAX: u64 = 60_000;

/// How several instances share projections: the store of their leases, who this instance is,
/// and the timings. See the module docs of `shared` for the protocol.
#[derive(Clone)]
pub struct SharedMode {
    /// Where the runner leases and hand-off requests are kept; every instance must use the
    /// same one (e.g. `proteus-kv-postgres` on the database of the read models).
    pub kv: Arc<dyn KvStore>,
    /// This instance's id, unique among the instances (e.g. host name + process id); at most
    /// 1,024 bytes, no newline.
    pub instance_id: String,
    /// How long a runner lease lasts without renewal, in ms ([`LEASE_TTL_MS_MIN`] to
    /// [`LEASE_TTL_MS_MAX`]); renewed every third of it. A dead instance's projections move
    /// within about this plus `definitions_refresh_ms`. Instances' clocks must agree within a
    /// small fraction of it. Default 10,000.
    pub lease_ttl_ms: u64,
    /// How often the projections are re-read from the store, hand-off requests looked at and
    /// free leases taken, in ms ([`DEFINITIONS_REFRESH_MS_MIN`] to
    /// [`DEFINITIONS_REFRESH_MS_MAX`]). Default 1,000.
    pub definitions_refresh_ms: u64,
}

impl std::fmt::Debug for SharedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMode")
            .field("instance_id", &self.instance_id)
            .field("lease_ttl_ms", &self.lease_ttl_ms)
            .field("definitions_refresh_ms", &self.definitions_refresh_ms)
            .finish_non_exhaustive()
    }
}

impl SharedMode {
    /// Shared mode over `kv` as `instance_id`, with the default timings.
    pub fn new(kv: Arc<dyn KvStore>, instance_id: impl Into<String>) -> SharedMode {
        SharedMode {
            kv,
            instance_id: instance_id.into(),
            lease_ttl_ms: 10_000,
            definitions_refresh_ms: 1_000,
        }
    }

    /// Checks every bound; the error names the setting and its allowed range.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let invalid = |reason: String| Err(ServiceError::InvalidConfig { reason });
        if self.instance_id.is_empty()
            || self.instance_id.len() > LEASE_TEXT_BYTES_MAX
            || self.instance_id.contains('\n')
        {
            return invalid(format!(
                "the instance id {:?} must be 1 to {LEASE_TEXT_BYTES_MAX} bytes without newlines",
                self.instance_id
            ));
        }
        if !(LEASE_TTL_MS_MIN..=LEASE_TTL_MS_MAX).contains(&self.lease_ttl_ms) {
            return invalid(format!(
                "lease_ttl_ms is {}; it must be {LEASE_TTL_MS_MIN} to {LEASE_TTL_MS_MAX}",
                self.lease_ttl_ms
            ));
        }
        if !(DEFINITIONS_REFRESH_MS_MIN..=DEFINITIONS_REFRESH_MS_MAX)
            .contains(&self.definitions_refresh_ms)
        {
            return invalid(format!(
                "definitions_refresh_ms is {}; it must be {DEFINITIONS_REFRESH_MS_MIN} to {DEFINITIONS_REFRESH_MS_MAX}",
                self.definitions_refresh_ms
            ));
        }
        Ok(())
    }

    /// How long a control operation waits for the holder to hand a projection over: a live
    /// holder does it at its next refresh; a dead one's lease expires after the TTL.
    pub fn handoff_wait_ms(&self) -> u64 {
        self.lease_ttl_ms + 3 * self.definitions_refresh_ms + 1_000
    }

    /// A hand-off request older than this is ignored (its requester gave up or died).
    pub(crate) fn handoff_fresh_ms(&self) -> i64 {
        (self.handoff_wait_ms() + self.definitions_refresh_ms) as i64
    }
}

/// The namespaces, parsed once.
pub(crate) struct Spaces {
    pub runners: Namespace,
    pub handoff: Namespace,
}

impl Spaces {
    pub fn new() -> Spaces {
        Spaces {
            // Both names follow the namespace rule.
            runners: Namespace::parse(RUNNERS_NAMESPACE).expect("a valid namespace"),
            handoff: Namespace::parse(HANDOFF_NAMESPACE).expect("a valid namespace"),
        }
    }
}

pub(crate) fn coordination(what: &str, error: KvError) -> ServiceError {
    ServiceError::Coordination {
        reason: format!("{what}: {error}"),
    }
}

/// This instance's hold on a runner lease: the keeper task renewing it, and `lost`, set when
/// the lease must no longer be acted on.
pub(crate) struct LeaseHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    pub lost: watch::Receiver<bool>,
}

impl LeaseHandle {
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow() || self.task.is_finished()
    }

    /// Starts renewing `lease` (just taken) until stopped, lost, or the service shuts down.
    pub fn keep(
        mode: &SharedMode,
        spaces: &Arc<Spaces>,
        name: &ProjectionName,
        lease: lease::Lease,
        service: watch::Receiver<bool>,
    ) -> LeaseHandle {
        let (stop, stop_rx) = watch::channel(false);
        let (lost_tx, lost) = watch::channel(false);
        let task = tokio::spawn(keeper(
            mode.clone(),
            spaces.clone(),
            name.clone(),
            lease.expires_ms,
            lost_tx,
            stop_rx,
            service,
        ));
        LeaseHandle { stop, task, lost }
    }

    /// Stops renewing and, unless the lease was lost, releases it. Call only once the runner
    /// has stopped: from then on another instance may run the projection.
    pub async fn release(mut self, mode: &SharedMode, spaces: &Spaces, name: &ProjectionName) {
        self.stop.send_replace(true);
        let _ = (&mut self.task).await;
        if *self.lost.borrow() {
            return;
        }
        if let Err(error) = lease::release(
            mode.kv.as_ref(),
            &spaces.runners,
            name.as_str().as_bytes(),
            &mode.instance_id,
        )
        .await
        {
            tracing::warn!(projection = %name, %error, "cannot release a projection's runner lease; it expires by itself");
        }
    }
}

async fn keeper(
    mode: SharedMode,
    spaces: Arc<Spaces>,
    name: ProjectionName,
    mut expires_ms: i64,
    lost: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
    mut service: watch::Receiver<bool>,
) {
    let period = Duration::from_millis((mode.lease_ttl_ms / 3).max(1));
    let margin = (mode.lease_ttl_ms / 3) as i64;
    let mut delay = period;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = service.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(delay) => {}
        }
        let renewed = lease::acquire(
            mode.kv.as_ref(),
            &spaces.runners,
            name.as_str().as_bytes(),
            &mode.instance_id,
            "",
            now_ms(),
            mode.lease_ttl_ms,
        )
        .await;
        match renewed {
            Ok(LeaseState::Held(lease)) => {
                expires_ms = lease.expires_ms;
                delay = period;
            }
            Ok(LeaseState::HeldByOther(other)) => {
                tracing::warn!(projection = %name, holder = %other.holder, "another instance took this projection's runner lease; stopping its runner");
                lost.send_replace(true);
                return;
            }
            Err(error) => {
                if now_ms().saturating_add(margin) >= expires_ms {
                    tracing::warn!(projection = %name, %error, "cannot renew this projection's runner lease before it expires; stopping its runner");
                    lost.send_replace(true);
                    return;
                }
                tracing::debug!(projection = %name, %error, "renewing a projection's runner lease failed; retrying");
                delay = period / 3;
            }
        }
    }
}

/// Takes the lease of `name` if it is free (or already this instance's).
pub(crate) async fn try_acquire(
    mode: &SharedMode,
    spaces: &Spaces,
    name: &ProjectionName,
) -> Result<LeaseState, KvError> {
    lease::acquire(
        mode.kv.as_ref(),
        &spaces.runners,
        name.as_str().as_bytes(),
        &mode.instance_id,
        "",
        now_ms(),
        mode.lease_ttl_ms,
    )
    .await
}

/// Who runs `name` now (an unexpired lease's holder).
pub(crate) async fn holder(
    mode: &SharedMode,
    spaces: &Spaces,
    name: &ProjectionName,
) -> Result<Option<String>, KvError> {
    let current =
        lease::current(mode.kv.as_ref(), &spaces.runners, name.as_str().as_bytes()).await?;
    Ok(current
        .filter(|l| l.expires_ms > now_ms())
        .map(|l| l.holder))
}

fn encode_request(requester: &str, requested_ms: i64) -> Vec<u8> {
    format!("{requester}\n{requested_ms}").into_bytes()
}

fn decode_request(bytes: &[u8]) -> Option<(String, i64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (requester, ms) = text.split_once('\n')?;
    Some((requester.to_owned(), ms.parse().ok()?))
}

/// Asks the holder of `name` to hand it over to this instance; returns the request as written
/// (to withdraw it).
pub(crate) async fn request_handoff(
    mode: &SharedMode,
    spaces: &Spaces,
    name: &ProjectionName,
) -> Result<Vec<u8>, KvError> {
    let value = encode_request(&mode.instance_id, now_ms());
    mode.kv
        .commit(
            &spaces.handoff,
            KvCommit {
                checks: Vec::new(),
                writes: vec![KvWrite::Put {
                    key: name.as_str().as_bytes().to_vec(),
                    value: value.clone(),
                }],
            },
        )
        .await?;
    Ok(value)
}

/// Removes this instance's hand-off request (unless another instance replaced it).
pub(crate) async fn withdraw_handoff(
    mode: &SharedMode,
    spaces: &Spaces,
    name: &ProjectionName,
    request: Vec<u8>,
) {
    let key = name.as_str().as_bytes().to_vec();
    let commit = KvCommit {
        checks: vec![proteus_kv::KvCheck {
            key: key.clone(),
            expected: Some(request),
        }],
        writes: vec![KvWrite::Delete { key }],
    };
    match mode.kv.commit(&spaces.handoff, commit).await {
        Ok(()) | Err(KvError::Conflict { .. }) => {}
        Err(error) => {
            tracing::debug!(projection = %name, %error, "cannot withdraw a hand-off request; it goes stale by itself");
        }
    }
}

/// The projections other instances asked to be handed over, with fresh requests.
pub(crate) async fn foreign_requests(
    mode: &SharedMode,
    spaces: &Spaces,
) -> Result<Vec<ProjectionName>, KvError> {
    const PAGE: usize = 500;
    let now = now_ms();
    let mut names = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = mode
            .kv
            .scan(&spaces.handoff, b"", after.as_deref(), PAGE)
            .await?;
        let full = page.len() == PAGE;
        for (key, value) in &page {
            let Some((requester, requested_ms)) = decode_request(value) else {
                continue;
            };
            if requester == mode.instance_id
                || now.saturating_sub(requested_ms) > mode.handoff_fresh_ms()
            {
                continue;
            }
            if let Some(name) = std::str::from_utf8(key)
                .ok()
                .and_then(|k| ProjectionName::parse(k).ok())
            {
                names.push(name);
            }
        }
        match page.last() {
            Some((key, _)) if full => after = Some(key.clone()),
            _ => return Ok(names),
        }
    }
}

impl Drop for LeaseHandle {
    /// A handle dropped without [`LeaseHandle::release`] stops renewing: the lease expires.
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
