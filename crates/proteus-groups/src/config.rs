//! A group's settings, their defaults and their limits.

use proteus_log::{Offset, TopicName};
use serde::{Deserialize, Serialize};

/// Where a new group starts reading each partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StartPosition {
    /// The first retained event: nothing already in the topic is missed.
    #[default]
    Beginning,
    /// The end: only events appended after the group is created.
    End,
    /// This offset in every partition (clamped to what each partition holds).
    Offset(Offset),
    /// The first event appended at or after this time, in milliseconds since the Unix epoch.
    TimeMs(i64),
}

/// How failed deliveries are retried: exponential backoff with full jitter — the n-th retry
/// waits a uniformly random time in `[0, min(backoff_max_ms, backoff_base_ms * 2^(n-1))]` —
/// and, once an event was delivered `deliveries_max` times without an ack, a dead letter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(default = "defaults::backoff_base_ms")]
    pub backoff_base_ms: u64,
    #[serde(default = "defaults::backoff_max_ms")]
    pub backoff_max_ms: u64,
    #[serde(default = "defaults::deliveries_max")]
    pub deliveries_max: u32,
}

/// How many events one delivery carries, for pull and push alike.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most events in one delivery; pull requests may ask for fewer.
    #[serde(default = "defaults::batch_events_max")]
    pub events_max: u32,
    /// Most bytes of events in one delivery (a single larger event is still delivered alone).
    #[serde(default = "defaults::batch_bytes_max")]
    pub bytes_max: u32,
    /// How long a delivery that has some events waits for more before it is sent.
    #[serde(default)]
    pub linger_ms: u64,
}

/// How a push group sends events to its webhook.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushMode {
    /// One event per request, in the CloudEvents HTTP binary mode: attributes as `ce-` headers,
    /// the data as the body.
    #[default]
    Binary,
    /// Up to `batch.events_max` events per request as `application/cloudevents-batch+json`.
    Batch,
}

/// Push delivery: the server itself consumes the group and POSTs events to `url`. Ordering is
/// kept per partition (one request in flight per partition); the retry policy and dead letters
/// apply as for pull.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// `http://` or `https://` URL that receives the events. A 2xx answer acknowledges them;
    /// anything else, a timeout or a connection failure is a failed delivery.
    pub url: String,
    #[serde(default)]
    pub mode: PushMode,
    /// Most requests in flight at once (each for a different partition).
    #[serde(default = "defaults::push_concurrency_max")]
    pub concurrency_max: u32,
    /// How long the webhook has to answer one request.
    #[serde(default = "defaults::push_timeout_ms")]
    pub timeout_ms: u64,
    /// When set, each request carries Standard Webhooks `webhook-id`, `webhook-timestamp` and
    /// `webhook-signature` (HMAC-SHA256) headers so the receiver can verify the sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret: Option<String>,
}

/// Everything configurable about a group. Unknown fields are refused so a typo is an error, not
/// a silently ignored setting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// Where the group starts; used only when the group is created.
    #[serde(default)]
    pub start: StartPosition,
    /// How long a delivered event may stay unacknowledged before it is redelivered.
    #[serde(default = "defaults::ack_wait_ms")]
    pub ack_wait_ms: u64,
    /// Most events delivered and not yet acknowledged (including those waiting for a retry)
    /// across the group: past it, pulls return nothing new until acks come in.
    #[serde(default = "defaults::unacked_events_max")]
    pub unacked_events_max: u32,
    /// A member that neither heartbeats nor pulls for this long is removed and its partitions
    /// are reassigned.
    #[serde(default = "defaults::session_timeout_ms")]
    pub session_timeout_ms: u64,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Where dead letters go; `{topic}.{group}.dlq` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<TopicName>,
    #[serde(default)]
    pub batch: BatchConfig,
    /// Present for push groups, which take no members of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushConfig>,
}

pub mod defaults {
    pub fn ack_wait_ms() -> u64 {
        30_000
    }
    pub fn unacked_events_max() -> u32 {
        10_000
    }
    pub fn session_timeout_ms() -> u64 {
        10_000
    }
    pub fn backoff_base_ms() -> u64 {
        1_000
    }
    pub fn backoff_max_ms() -> u64 {
        60_000
    }
    pub fn deliveries_max() -> u32 {
        5
    }
    pub fn batch_events_max() -> u32 {
        1_000
    }
    pub fn batch_bytes_max() -> u32 {
        1024 * 1024
    }
    pub fn push_concurrency_max() -> u32 {
        4
    }
    pub fn push_timeout_ms() -> u64 {
        10_000
    }
}

/// Bounds every setting must respect.
pub mod limits {
    pub const ACK_WAIT_MS_MIN: u64 = 100;
    pub const ACK_WAIT_MS_MAX: u64 = 12 * 60 * 60 * 1_000;
    pub const UNACKED_EVENTS_MAX_LIMIT: u32 = 1_000_000;
    pub const SESSION_TIMEOUT_MS_MIN: u64 = 500;
    pub const SESSION_TIMEOUT_MS_MAX: u64 = 5 * 60 * 1_000;
    /// Longest retry delay, whether from the backoff policy or asked for by a nack.
    pub const RETRY_DELAY_MS_MAX: u64 = 24 * 60 * 60 * 1_000;
    pub const DELIVERIES_MAX_LIMIT: u32 = 1_000;
    pub const BATCH_EVENTS_MAX_LIMIT: u32 = 10_000;
    pub const BATCH_BYTES_MAX_LIMIT: u32 = 16 * 1024 * 1024;
    pub const LINGER_MS_MAX: u64 = 10_000;
    pub const PUSH_CONCURRENCY_MAX_LIMIT: u32 = 256;
    pub const PUSH_TIMEOUT_MS_MIN: u64 = 100;
    pub const PUSH_TIMEOUT_MS_MAX: u64 = 5 * 60 * 1_000;
    pub const PUSH_URL_BYTES_MAX: usize = 2_048;
    pub const HMAC_SECRET_BYTES_MIN: usize = 16;
    pub const HMAC_SECRET_BYTES_MAX: usize = 256;
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            backoff_base_ms: defaults::backoff_base_ms(),
            backoff_max_ms: defaults::backoff_max_ms(),
            deliveries_max: defaults::deliveries_max(),
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            events_max: defaults::batch_events_max(),
            bytes_max: defaults::batch_bytes_max(),
            linger_ms: 0,
        }
    }
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            start: StartPosition::default(),
            ack_wait_ms: defaults::ack_wait_ms(),
            unacked_events_max: defaults::unacked_events_max(),
            session_timeout_ms: defaults::session_timeout_ms(),
            retry: RetryPolicy::default(),
            dead_letter_topic: None,
            batch: BatchConfig::default(),
            push: None,
        }
    }
}

/// A setting out of bounds: which one, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidGroupConfig {
    pub field: &'static str,
    pub reason: String,
}

fn within<T: PartialOrd + std::fmt::Display + Copy>(
    field: &'static str,
    value: T,
    min: T,
    max: T,
) -> Result<(), InvalidGroupConfig> {
    if value < min || value > max {
        return Err(InvalidGroupConfig {
            field,
            reason: format!("{value} is out of range; use {min} to {max}"),
        });
    }
    Ok(())
}

impl GroupConfig {
    pub fn validate(&self) -> Result<(), InvalidGroupConfig> {
        use limits::*;
        within(
            "ack_wait_ms",
            self.ack_wait_ms,
            ACK_WAIT_MS_MIN,
            ACK_WAIT_MS_MAX,
        )?;
        within(
            "unacked_events_max",
            self.unacked_events_max,
            1,
            UNACKED_EVENTS_MAX_LIMIT,
        )?;
        within(
            "session_timeout_ms",
            self.session_timeout_ms,
            SESSION_TIMEOUT_MS_MIN,
            SESSION_TIMEOUT_MS_MAX,
        )?;
        within(
            "retry.backoff_base_ms",
            self.retry.backoff_base_ms,
            0,
            RETRY_DELAY_MS_MAX,
        )?;
        within(
            "retry.backoff_max_ms",
            self.retry.backoff_max_ms,
            self.retry.backoff_base_ms,
            RETRY_DELAY_MS_MAX,
        )?;
        within(
            "retry.deliveries_max",
            self.retry.deliveries_max,
            1,
            DELIVERIES_MAX_LIMIT,
        )?;
        within(
            "batch.events_max",
            self.batch.events_max,
            1,
            BATCH_EVENTS_MAX_LIMIT,
        )?;
        within(
            "batch.bytes_max",
            self.batch.bytes_max,
            1,
            BATCH_BYTES_MAX_LIMIT,
        )?;
        within("batch.linger_ms", self.batch.linger_ms, 0, LINGER_MS_MAX)?;
        if let StartPosition::TimeMs(time_ms) = self.start {
            within("start.time_ms", time_ms, 0, i64::MAX)?;
        }
        if let Some(push) = &self.push {
            push.validate()?;
        }
        Ok(())
    }

    /// The dead-letter topic of group `group` on `topic`.
    pub fn dead_letter_topic_for(&self, topic: &TopicName, group: &crate::GroupName) -> TopicName {
        match &self.dead_letter_topic {
            Some(name) => name.clone(),
            None => default_dead_letter_topic(topic, group),
        }
    }
}

/// `{topic}.{group}.dlq`, shortened (keeping a hash of the full name) when that would pass the
/// 249-byte topic-name limit.
pub fn default_dead_letter_topic(topic: &TopicName, group: &crate::GroupName) -> TopicName {
    let full = format!("{}.{}.dlq", topic.as_str(), group.as_str());
    if let Ok(name) = TopicName::parse(&full) {
        return name;
    }
    let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    let short = format!("{}.{hash:016x}.dlq", &topic.as_str()[..200]);
    TopicName::parse(&short).expect("a 200-byte topic prefix plus a hash is a valid topic name")
}

impl PushConfig {
    fn validate(&self) -> Result<(), InvalidGroupConfig> {
        use limits::*;
        let url_error = |reason: String| InvalidGroupConfig {
            field: "push.url",
            reason,
        };
        if self.url.len() > PUSH_URL_BYTES_MAX {
            return Err(url_error(format!(
                "the URL is {} bytes; the most is {PUSH_URL_BYTES_MAX}",
                self.url.len()
            )));
        }
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return Err(url_error(format!(
                "{:?} is not an absolute URL; use http://host:port/path or https://…",
                self.url
            )));
        };
        if !matches!(scheme, "http" | "https") {
            return Err(url_error(format!(
                "scheme {scheme:?} is not supported; use http or https"
            )));
        }
        if rest.is_empty() || rest.starts_with('/') {
            return Err(url_error(format!("{:?} has no host", self.url)));
        }
        within(
            "push.concurrency_max",
            self.concurrency_max,
            1,
            PUSH_CONCURRENCY_MAX_LIMIT,
        )?;
        within(
            "push.timeout_ms",
            self.timeout_ms,
            PUSH_TIMEOUT_MS_MIN,
            PUSH_TIMEOUT_MS_MAX,
        )?;
        if let Some(secret) = &self.hmac_secret {
            within(
                "push.hmac_secret (bytes)",
                secret.len(),
                HMAC_SECRET_BYTES_MIN,
                HMAC_SECRET_BYTES_MAX,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let config: GroupConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, GroupConfig::default());
        config.validate().unwrap();
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<GroupConfig>(&json).unwrap(), config);
    }

    #[test]
    fn start_positions_parse() {
        for (text, expected) in [
            (r#""beginning""#, StartPosition::Beginning),
            (r#""end""#, StartPosition::End),
            (r#"{"offset": 42}"#, StartPosition::Offset(42)),
            (
                r#"{"time_ms": 1700000000000}"#,
                StartPosition::TimeMs(1_700_000_000_000),
            ),
        ] {
            assert_eq!(
                serde_json::from_str::<StartPosition>(text).unwrap(),
                expected
            );
        }
    }

    #[test]
    fn out_of_range_settings_name_the_field() {
        let mut config = GroupConfig::default();
        config.retry.deliveries_max = 0;
        assert_eq!(config.validate().unwrap_err().field, "retry.deliveries_max");
        let config = GroupConfig {
            push: Some(PushConfig {
                url: "ftp://x".into(),
                mode: PushMode::Binary,
                concurrency_max: 1,
                timeout_ms: 1000,
                hmac_secret: None,
            }),
            ..GroupConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().field, "push.url");
        assert!(serde_json::from_str::<GroupConfig>(r#"{"ack_wait":1}"#).is_err());
    }

    #[test]
    fn long_names_get_a_valid_dead_letter_topic() {
        let topic = TopicName::parse(&"t".repeat(249)).unwrap();
        let group = crate::GroupName::parse(&"g".repeat(128)).unwrap();
        let name = default_dead_letter_topic(&topic, &group);
        assert!(name.as_str().ends_with(".dlq"));
        let short = default_dead_letter_topic(
            &TopicName::parse("orders").unwrap(),
            &crate::GroupName::parse("billing").unwrap(),
        );
        assert_eq!(short.as_str(), "orders.billing.dlq");
    }
}
