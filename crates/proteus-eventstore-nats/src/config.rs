//! How the store connects and names things.

use serde::{Deserialize, Serialize};

/// Settings of the NATS JetStream event store. Every limit is named with its unit last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsEventStoreConfig {
    /// Server URL(s), comma-separated, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The store's JetStream streams are `<stream_prefix>_EVENTS` and
    /// `<stream_prefix>_SNAPSHOTS`. `[A-Za-z0-9_-]`, 1 to 64 bytes.
    pub stream_prefix: String,
    /// Events are published on `<subject_prefix>.s.<category>.<stream>`, snapshots on
    /// `<subject_prefix>.snap.<stream>`. One or more subject tokens of `[A-Za-z0-9_-]`,
    /// separated by `.`.
    pub subject_prefix: String,
    /// How long one JetStream request (publish acknowledgement, message get, stream info,
    /// consumer creation, fetch) may take before the call fails with `Unavailable`.
    pub request_timeout_ms: u64,
    /// How long the first connection may take.
    pub connect_timeout_ms: u64,
    /// Longest pause between two reconnection attempts (the client backs off up to this).
    pub reconnect_delay_max_ms: u64,
    /// CA and client certificate files of the deployment\'s own (`proteus_nats::NatsSecurity`).
    pub security: proteus_nats::NatsSecurity,
    /// JetStream replicas of the streams created (1, 3 or 5).
    pub replicas: usize,
    /// `wait_for_position` wakes on the store's core NATS messages; this is its fallback poll
    /// interval, the worst-case wake-up latency if a wake-up is missed (during a reconnection,
    /// for instance).
    pub wait_poll_interval_ms: u64,
    /// How many times one append is sent again after another writer changed its stream
    /// between the read of the stream's end and the publish (only `Any` and retried appends
    /// are sent again; an `Exact` expectation that no longer holds fails at once) before it
    /// fails with `Unavailable`.
    pub append_conflict_retries_max: u32,
    /// Most event ids kept in memory, over all streams, to decide idempotency without
    /// reading a stream's history again; 10 to 20 bytes each (a 64-bit hash in a hash table
    /// that doubles as it grows; the stored event confirms a hit and gives its version and
    /// position), so the default 6,000,000 is 60 to 120 MB (the server grew by about 28 bytes
    /// per cached id in a benchmark, its allocator keeping the tables outgrown for a while:
    /// about what 4,000,000 ids, the default until ids were kept without their positions, took).
    /// Past it the indexes of the least recently
    /// used streams are dropped until three quarters remain, and rebuilt from their streams on
    /// their next append (correctness never depends on the cache).
    pub id_cache_events_max: usize,
    /// Whether opening creates the store's streams when they are missing (`true`, the
    /// default, for a store being served), or refuses a prefix whose streams do not exist
    /// (`false`, for a store only read, as `proteus migrate --from nats://…` does, so a
    /// mistyped prefix is an error rather than an empty store).
    pub create_streams: bool,
}

impl Default for NatsEventStoreConfig {
    fn default() -> Self {
        NatsEventStoreConfig {
            url: "nats://127.0.0.1:4222".into(),
            stream_prefix: "PROTEUS_ES".into(),
            subject_prefix: "proteus.es".into(),
            request_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
            reconnect_delay_max_ms: 2_000,
            security: proteus_nats::NatsSecurity::default(),
            replicas: 1,
            wait_poll_interval_ms: 250,
            append_conflict_retries_max: 64,
            id_cache_events_max: 6_000_000,
            create_streams: true,
        }
    }
}

pub use proteus_nats::{STREAM_PREFIX_BYTES_MAX, SUBJECT_PREFIX_BYTES_MAX, TIMEOUT_MS_MIN};

/// The largest `id_cache_events_max`: 10 to 30 GB of ids.
pub const ID_CACHE_EVENTS_MAX: usize = 1_000_000_000;

impl NatsEventStoreConfig {
    /// A configuration for `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        NatsEventStoreConfig {
            url: url.into(),
            ..NatsEventStoreConfig::default()
        }
    }

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
        })?;
        if !(1..=ID_CACHE_EVENTS_MAX).contains(&self.id_cache_events_max) {
            return Err(format!(
                "id_cache_events_max: must be between 1 and {ID_CACHE_EVENTS_MAX} ids (10 to 30 bytes each), got {}",
                self.id_cache_events_max
            ));
        }
        Ok(())
    }

    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.stream_prefix)
    }

    pub fn snapshots_stream(&self) -> String {
        format!("{}_SNAPSHOTS", self.stream_prefix)
    }
}

pub use proteus_nats::redact;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_fields_are_named() {
        assert!(NatsEventStoreConfig::default().validate().is_ok());
        let bad = NatsEventStoreConfig {
            stream_prefix: "a.b".into(),
            ..NatsEventStoreConfig::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("stream_prefix"));
        let bad = NatsEventStoreConfig {
            subject_prefix: "a..b".into(),
            ..NatsEventStoreConfig::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("subject_prefix"));
        let bad = NatsEventStoreConfig {
            replicas: 2,
            ..NatsEventStoreConfig::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("replicas"));
        for ids in [0, ID_CACHE_EVENTS_MAX + 1] {
            let bad = NatsEventStoreConfig {
                id_cache_events_max: ids,
                ..NatsEventStoreConfig::default()
            };
            assert!(
                bad.validate()
                    .unwrap_err()
                    .starts_with("id_cache_events_max")
            );
        }
    }
}
