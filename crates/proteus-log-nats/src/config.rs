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
            replicas: 1,
            wait_poll_interval_ms: 250,
            retention_interval_ms: 60_000,
            append_conflict_retries_max: 64,
        }
    }
}

/// Longest `stream_prefix`, in bytes.
pub const STREAM_PREFIX_BYTES_MAX: usize = 64;
/// Longest `subject_prefix`, in bytes.
pub const SUBJECT_PREFIX_BYTES_MAX: usize = 128;
/// Smallest `request_timeout_ms` and `wait_poll_interval_ms`.
pub const TIMEOUT_MS_MIN: u64 = 10;

impl NatsLogConfig {
    /// Checks every field; the error names the field and says what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        let word = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if self.url.trim().is_empty() {
            return Err("url: must not be empty (e.g. nats://127.0.0.1:4222)".into());
        }
        if !word(&self.stream_prefix) || self.stream_prefix.len() > STREAM_PREFIX_BYTES_MAX {
            return Err(format!(
                "stream_prefix: must be 1 to {STREAM_PREFIX_BYTES_MAX} bytes of A-Z, a-z, 0-9, '_' or '-', got {:?}",
                self.stream_prefix
            ));
        }
        if self.subject_prefix.len() > SUBJECT_PREFIX_BYTES_MAX
            || !self.subject_prefix.split('.').all(word)
        {
            return Err(format!(
                "subject_prefix: must be 1 to {SUBJECT_PREFIX_BYTES_MAX} bytes of subject tokens (A-Z, a-z, 0-9, '_', '-') separated by '.', got {:?}",
                self.subject_prefix
            ));
        }
        for (field, value) in [
            ("request_timeout_ms", self.request_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("wait_poll_interval_ms", self.wait_poll_interval_ms),
        ] {
            if value < TIMEOUT_MS_MIN {
                return Err(format!(
                    "{field}: must be at least {TIMEOUT_MS_MIN}, got {value}"
                ));
            }
        }
        if ![1, 3, 5].contains(&self.replicas) {
            return Err(format!(
                "replicas: must be 1, 3 or 5, got {}",
                self.replicas
            ));
        }
        Ok(())
    }
}
