//! How the store connects and names its buckets.

use serde::{Deserialize, Serialize};

/// Settings of the NATS consumer-group store. Every limit is named with its unit last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsGroupStoreConfig {
    /// Server URL(s), comma-separated, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The buckets are `<bucket_prefix>_GROUPS` and `<bucket_prefix>_LEASES` (JetStream streams
    /// `KV_<bucket_prefix>_GROUPS`, …). `[A-Za-z0-9_-]`, 1 to 64 bytes.
    pub bucket_prefix: String,
    /// How long one JetStream request (a read, a write's acknowledgement) may take.
    pub request_timeout_ms: u64,
    /// How long the first connection may take.
    pub connect_timeout_ms: u64,
    /// Longest pause between two reconnection attempts (the client backs off up to this).
    pub reconnect_delay_max_ms: u64,
    /// CA and client certificate files of the deployment\'s own (`proteus_nats::NatsSecurity`).
    pub security: proteus_nats::NatsSecurity,
    /// JetStream replicas of the buckets created (1, 3 or 5).
    pub replicas: usize,
    /// How many times one write reads its value again after another writer changed it
    /// between the read and the write, before it fails. A group has one writer (its
    /// coordinator), so conflicts only come from a hand-over or a settings change.
    pub write_attempts_max: u32,
    /// Whether opening creates the buckets when they are missing (what a server does). Off
    /// when groups are only read from them (`proteus migrate-topics --groups-from`): a
    /// mistyped prefix is then refused, and nothing is created.
    pub create_buckets: bool,
    /// Most keys a listing reads one by one, which it does only while a cluster elects its
    /// metadata leader (no consumer can be created then); past it the listing fails
    /// retriably. Each key is a get, 16 in flight.
    pub listing_by_gets_keys_max: usize,
}

impl Default for NatsGroupStoreConfig {
    fn default() -> Self {
        NatsGroupStoreConfig {
            url: "nats://127.0.0.1:4222".into(),
            bucket_prefix: "PROTEUS".into(),
            request_timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
            reconnect_delay_max_ms: 2_000,
            security: proteus_nats::NatsSecurity::default(),
            replicas: 1,
            write_attempts_max: 16,
            create_buckets: true,
            listing_by_gets_keys_max: 100_000,
        }
    }
}

impl NatsGroupStoreConfig {
    /// A configuration for `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        NatsGroupStoreConfig {
            url: url.into(),
            ..NatsGroupStoreConfig::default()
        }
    }

    /// Checks every field; the error names the field and says what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        proteus_nats::validate(&proteus_nats::CommonSettings {
            url: &self.url,
            stream_prefix: &self.bucket_prefix,
            subject_prefix: None,
            timeouts_ms: &[
                ("request_timeout_ms", self.request_timeout_ms),
                ("connect_timeout_ms", self.connect_timeout_ms),
            ],
            replicas: self.replicas,
        })
        .map_err(|reason| reason.replacen("stream_prefix", "bucket_prefix", 1))?;
        if self.write_attempts_max == 0 {
            return Err("write_attempts_max: must be at least 1".into());
        }
        if self.listing_by_gets_keys_max == 0 {
            return Err("listing_by_gets_keys_max: must be at least 1".into());
        }
        Ok(())
    }

    pub fn groups_bucket(&self) -> String {
        format!("{}_GROUPS", self.bucket_prefix)
    }

    pub fn leases_bucket(&self) -> String {
        format!("{}_LEASES", self.bucket_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_their_field() {
        assert!(NatsGroupStoreConfig::default().validate().is_ok());
        let bad_prefix = NatsGroupStoreConfig {
            bucket_prefix: "a.b".into(),
            ..NatsGroupStoreConfig::default()
        };
        assert!(
            bad_prefix
                .validate()
                .unwrap_err()
                .starts_with("bucket_prefix")
        );
        let no_attempts = NatsGroupStoreConfig {
            write_attempts_max: 0,
            ..NatsGroupStoreConfig::default()
        };
        assert!(
            no_attempts
                .validate()
                .unwrap_err()
                .starts_with("write_attempts_max")
        );
    }
}
