//! Topic names and per-topic configuration.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest topic name, in bytes (the same limit as Kafka).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Most partitions a topic may have.
pub const PARTITIONS_MAX: u32 = 1024;
/// Largest value `event_bytes_max` may take.
pub const EVENT_BYTES_MAX_LIMIT: u32 = 16 * 1024 * 1024;
/// Smallest and largest segment sizes. Small segments are allowed so tests and low-volume
/// topics can exercise retention; large ones are capped so index positions fit in 32 bits.
pub const SEGMENT_BYTES_MIN: u64 = 1024;
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Shortest time-based segment roll.
pub const SEGMENT_MS_MIN: u64 = 1_000;
/// Longest dedup window (one day) and most dedup entries kept per topic.
pub const DEDUP_WINDOW_MS_MAX: u64 = 24 * 60 * 60 * 1_000;
pub const DEDUP_ENTRIES_MAX_LIMIT: u32 = 10_000_000;

/// A validated topic name: 1 to 249 bytes of `[A-Za-z0-9._-]`, starting with a letter or digit.
///
/// The charset keeps names safe as file names, URL path segments, NATS subjects (after mapping
/// `.`) and PostgreSQL identifiers without quoting surprises.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct TopicName(String);

impl TopicName {
    pub fn parse(name: &str) -> Result<Self, InvalidTopicName> {
        let invalid = |reason: String| InvalidTopicName {
            name: name.to_owned(),
            reason,
        };
        crate::name::check_name(name, TOPIC_NAME_BYTES_MAX).map_err(invalid)?;
        Ok(TopicName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TopicName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        TopicName::parse(&name).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid topic name {name:?}: {reason}")]
pub struct InvalidTopicName {
    pub name: String,
    pub reason: String,
}

/// Per-topic configuration, as given to `PUT /v1/topics/{topic}` and stored with the topic.
///
/// Every field has a default, so `{}` creates a one-partition topic. `partitions` is fixed at
/// creation; the other fields may be changed later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Number of partitions, 1 to [`PARTITIONS_MAX`]. Fixed at creation.
    #[serde(default = "defaults::partitions")]
    pub partitions: u32,
    /// Delete whole segments whose newest event is older than this. `null`: keep forever.
    #[serde(default = "defaults::retention_ms")]
    pub retention_ms: Option<u64>,
    /// Delete the oldest whole segments while a partition holds more than this. `null`: no
    /// size limit. Applies per partition, like Kafka's `retention.bytes`.
    #[serde(default)]
    pub retention_bytes: Option<u64>,
    /// Largest event accepted, in bytes of its JSON (structured-mode) form.
    #[serde(default = "defaults::event_bytes_max")]
    pub event_bytes_max: u32,
    /// A partition starts a new segment file once the current one reaches this size.
    #[serde(default = "defaults::segment_bytes")]
    pub segment_bytes: u64,
    /// A partition starts a new segment once the current one's first event is this old, so
    /// age-based retention works on quiet topics too.
    #[serde(default = "defaults::segment_ms")]
    pub segment_ms: u64,
    /// An event whose (`source`, `id`) was appended within this window is not appended again.
    /// 0 disables deduplication.
    #[serde(default = "defaults::dedup_window_ms")]
    pub dedup_window_ms: u64,
    /// At most this many (`source`, `id`) pairs are remembered per topic; the oldest are
    /// forgotten first, so on a very busy topic the effective window is shorter.
    #[serde(default = "defaults::dedup_entries_max")]
    pub dedup_entries_max: u32,
}

pub mod defaults {
    pub fn partitions() -> u32 {
        1
    }
    pub fn retention_ms() -> Option<u64> {
        Some(7 * 24 * 60 * 60 * 1_000)
    }
    pub fn event_bytes_max() -> u32 {
        1024 * 1024
    }
    pub fn segment_bytes() -> u64 {
        64 * 1024 * 1024
    }
    pub fn segment_ms() -> u64 {
        24 * 60 * 60 * 1_000
    }
    pub fn dedup_window_ms() -> u64 {
        2 * 60 * 1_000
    }
    pub fn dedup_entries_max() -> u32 {
        250_000
    }
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            partitions: defaults::partitions(),
            retention_ms: defaults::retention_ms(),
            retention_bytes: None,
            event_bytes_max: defaults::event_bytes_max(),
            segment_bytes: defaults::segment_bytes(),
            segment_ms: defaults::segment_ms(),
            dedup_window_ms: defaults::dedup_window_ms(),
            dedup_entries_max: defaults::dedup_entries_max(),
        }
    }
}

/// A configuration value out of its allowed range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidTopicConfig {
    pub field: &'static str,
    pub reason: String,
}

impl TopicConfig {
    pub fn with_partitions(partitions: u32) -> Self {
        TopicConfig {
            partitions,
            ..TopicConfig::default()
        }
    }

    pub fn validate(&self) -> Result<(), InvalidTopicConfig> {
        fn check(
            ok: bool,
            field: &'static str,
            reason: impl FnOnce() -> String,
        ) -> Result<(), InvalidTopicConfig> {
            if ok {
                Ok(())
            } else {
                Err(InvalidTopicConfig {
                    field,
                    reason: reason(),
                })
            }
        }
        check(
            (1..=PARTITIONS_MAX).contains(&self.partitions),
            "partitions",
            || {
                format!(
                    "must be between 1 and {PARTITIONS_MAX}, got {}",
                    self.partitions
                )
            },
        )?;
        check(self.retention_ms != Some(0), "retention_ms", || {
            "must be positive, or null to keep events forever".into()
        })?;
        check(self.retention_bytes != Some(0), "retention_bytes", || {
            "must be positive, or null for no size limit".into()
        })?;
        check(
            (1..=EVENT_BYTES_MAX_LIMIT).contains(&self.event_bytes_max),
            "event_bytes_max",
            || {
                format!(
                    "must be between 1 and {EVENT_BYTES_MAX_LIMIT}, got {}",
                    self.event_bytes_max
                )
            },
        )?;
        check(
            (SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes),
            "segment_bytes",
            || {
                format!(
                    "must be between {SEGMENT_BYTES_MIN} and {SEGMENT_BYTES_MAX}, got {}",
                    self.segment_bytes
                )
            },
        )?;
        check(self.segment_ms >= SEGMENT_MS_MIN, "segment_ms", || {
            format!("must be at least {SEGMENT_MS_MIN}, got {}", self.segment_ms)
        })?;
        check(
            self.dedup_window_ms <= DEDUP_WINDOW_MS_MAX,
            "dedup_window_ms",
            || {
                format!(
                    "must be at most {DEDUP_WINDOW_MS_MAX} (one day), got {}",
                    self.dedup_window_ms
                )
            },
        )?;
        check(
            self.dedup_entries_max <= DEDUP_ENTRIES_MAX_LIMIT,
            "dedup_entries_max",
            || {
                format!(
                    "must be at most {DEDUP_ENTRIES_MAX_LIMIT}, got {}",
                    self.dedup_entries_max
                )
            },
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_charset_and_length() {
        for good in ["orders", "a", "Orders.v2", "9lives", "x_y-z.w"] {
            assert!(TopicName::parse(good).is_ok(), "{good} should be valid");
        }
        assert!(TopicName::parse(&"a".repeat(TOPIC_NAME_BYTES_MAX)).is_ok());
        for bad in ["", ".", "..", "-x", "_x", "a/b", "a b", "é", "a:b"] {
            assert!(TopicName::parse(bad).is_err(), "{bad} should be invalid");
        }
        let long = TopicName::parse(&"a".repeat(TOPIC_NAME_BYTES_MAX + 1)).unwrap_err();
        assert!(long.reason.contains("at most 249 bytes"), "{}", long.reason);
    }

    #[test]
    fn an_empty_body_gives_the_documented_defaults() {
        let config: TopicConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config, TopicConfig::default());
        assert_eq!(config.retention_ms, Some(604_800_000));
        let forever: TopicConfig = serde_json::from_str(r#"{"retention_ms": null}"#).unwrap();
        assert_eq!(forever.retention_ms, None);
    }

    #[test]
    fn unknown_fields_and_out_of_range_values_are_rejected() {
        assert!(serde_json::from_str::<TopicConfig>(r#"{"partition": 3}"#).is_err());
        let zero = TopicConfig::with_partitions(0).validate().unwrap_err();
        assert_eq!(zero.field, "partitions");
        let huge = TopicConfig {
            event_bytes_max: EVENT_BYTES_MAX_LIMIT + 1,
            ..TopicConfig::default()
        };
        assert_eq!(huge.validate().unwrap_err().field, "event_bytes_max");
    }
}
