//! How the adapter connects and names things.

use serde::{Deserialize, Serialize};

/// Settings of the NATS JetStream log. Every limit is named with its unit last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsLogConfig {
    /// Server URL(s), comma-separated, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Stream names are `<stream_prefix>_<topic>` (see `docs/backends/nats.md` for the
    /// sanitising rule). `[A-Za-z0-9_-]`, 1 to 64 bytes.
    pub stream_prefix: String,
    /// Partition subjects are `<subject_prefix>.<topic>.<partition>`. One or more subject
    /// tokens of `[A-Za-z0-9_-]`, separated by `.`.
    pub subject_prefix: String,
    /// How long one JetStream request (publish ack, stream info, message get) may take before
    /// the call fails with `LogError::Unavailable`.
    pub request_timeout_ms: u64,
    /// How long the first connection may take.
    pub connect_timeout_ms: u64,
    /// Longest pause between two reconnection attempts (the client backs off up to this).
    pub reconnect_delay_max_ms: u64,
    /// CA and client certificate files of the deployment\'s own (`proteus_nats::NatsSecurity`).
    pub security: proteus_nats::NatsSecurity,
    /// JetStream replicas of each stream created (1, 3 or 5).
    pub replicas: usize,
    /// `wait_for_events` wakes on the partition subjects' core NATS messages; this is its
    /// fallback poll interval, the worst-case wake-up latency if a wake-up message is missed
    /// (during a reconnection, for instance).
    pub wait_poll_interval_ms: u64,
    /// How often the background task applies `retention_ms` to every topic of this prefix.
    /// 0 disables the task ([`crate::NatsLog::apply_retention`] can still be called).
    pub retention_interval_ms: u64,
    /// No effect since partitions became streams (offsets are stream sequences, so appends
    /// never race); kept so that configurations written for earlier versions still load.
    pub append_conflict_retries_max: u32,
}

impl Default for NatsLogConfig {
    fn default() -> Self {
        NatsLogConfig {
            url: "nats://127.0.0.1:4222".into(),
            stream_prefix: "PROTEUS".into(),
            subject_prefix: "proteus".into(),
            request_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
            reconnect_delay_max_ms: 2_000,
            security: proteus_nats::NatsSecurity::default(),
            replicas: 1,
            wait_poll_interval_ms: 250,
            retention_interval_ms: 60_000,
            append_conflict_retries_max: 64,
        }
    }
}

pub use proteus_nats::{STREAM_PREFIX_BYTES_MAX, SUBJECT_PREFIX_BYTES_MAX, TIMEOUT_MS_MIN};

impl NatsLogConfig {
    /// Checks every field; the error names the field and says what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        proteus_nats::validate(&proteus_nats::CommonSettings {
            url: &self.url,
            stream_prefix: &self.stream_prefix,
            subject_prefix: Some(&self.subject_prefix),
            timeouts_ms: &[
                ("request_timeout_ms", self.request_timeout_ms),
                ("connect_timeout_ms", self.connect_timeout_ms),
                ("wait_poll_interval_ms", self.wait_poll_interval_ms),
            ],
            replicas: self.replicas,
        })
    }
}
