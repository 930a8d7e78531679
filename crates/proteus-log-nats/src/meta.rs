//! The topic's name and configuration, kept in its stream's `description`.
//!
//! JetStream stream metadata needs servers 2.10 or newer; the description exists on every
//! JetStream server and is written in the same request as the stream's limits, so the topic
//! configuration and the stream settings derived from it can never disagree. The text is
//! `proteus-topic/1 ` followed by JSON `{"topic": ..., "config": {...}}`.

use proteus_log::{TopicConfig, TopicName};
use serde::{Deserialize, Serialize};

const MARKER: &str = "proteus-topic/1 ";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub topic: TopicName,
    pub config: TopicConfig,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_foreign_streams_are_ignored() {
        let meta = TopicMeta {
            topic: TopicName::parse("orders.v2").unwrap(),
            config: TopicConfig::with_partitions(3),
        };
        let text = meta.to_description();
        assert_eq!(TopicMeta::from_description(Some(&text)), Some(meta));
        assert_eq!(TopicMeta::from_description(Some("my stream")), None);
        assert_eq!(TopicMeta::from_description(None), None);
    }
}
