//! The topic's name and configuration, kept in the `description` of each of its streams.
//!
//! JetStream stream metadata needs servers 2.10 or newer; the description exists on every
//! JetStream server and is written in the same request as the stream's limits, so the topic
//! configuration and the stream settings derived from it can never disagree. The text is
//! `proteus-topic/2 ` followed by JSON `{"topic": ..., "config": {...}, "role": ...}`, where the
//! role is `{"partition": n}` or `"claims"`. Partition 0's description is the authority: a
//! topic exists when partition 0's stream does.
//!
//! `proteus-topic/1 ` marked the single stream of a topic in the first layout of this adapter
//! (one stream per topic); such streams are recognised only to be refused.

use proteus_log::{PartitionId, TopicConfig, TopicName};
use serde::{Deserialize, Serialize};

const MARKER: &str = "proteus-topic/2 ";
const OLD_LAYOUT_MARKER: &str = "proteus-topic/1 ";

/// What one stream of a topic holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamRole {
    Partition(PartitionId),
    Claims,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub topic: TopicName,
    pub config: TopicConfig,
    pub role: StreamRole,
}

#[derive(Deserialize)]
struct OldLayout {
    topic: TopicName,
}

impl TopicMeta {
    pub fn to_description(&self) -> String {
        format!(
            "{MARKER}{}",
            serde_json::to_string(self).expect("topic metadata always serialises")
        )
    }

    /// The metadata of a stream this adapter created; `None` for any other stream.
    pub fn from_description(description: Option<&str>) -> Option<TopicMeta> {
        let json = description?.strip_prefix(MARKER)?;
        serde_json::from_str(json).ok()
    }

    /// The topic of a stream written with the first layout (one stream per topic).
    pub fn old_layout_topic(description: Option<&str>) -> Option<TopicName> {
        let json = description?.strip_prefix(OLD_LAYOUT_MARKER)?;
        serde_json::from_str::<OldLayout>(json)
            .ok()
            .map(|old| old.topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_foreign_streams_are_ignored() {
        for role in [StreamRole::Partition(2), StreamRole::Claims] {
            let meta = TopicMeta {
                topic: TopicName::parse("orders.v2").unwrap(),
                config: TopicConfig::with_partitions(3),
                role,
            };
            let text = meta.to_description();
            assert_eq!(TopicMeta::from_description(Some(&text)), Some(meta));
        }
        assert_eq!(TopicMeta::from_description(Some("my stream")), None);
        assert_eq!(TopicMeta::from_description(None), None);
    }

    #[test]
    fn old_layout_streams_are_recognised() {
        let old = r#"proteus-topic/1 {"topic":"orders","config":{"partitions":2}}"#;
        assert_eq!(TopicMeta::from_description(Some(old)), None);
        assert_eq!(
            TopicMeta::old_layout_topic(Some(old)),
            Some(TopicName::parse("orders").unwrap())
        );
        assert_eq!(TopicMeta::old_layout_topic(Some("other")), None);
    }
}
