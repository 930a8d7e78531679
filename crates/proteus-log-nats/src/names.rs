//! How topics and partitions are named in JetStream.
//!
//! A topic name is `[A-Za-z0-9._-]`; stream names and subject tokens cannot hold `.`. The
//! *token* of a topic is its name with every `.` replaced by `~`, a character topic names never
//! contain, so the mapping is one-to-one: `orders.v2` → `orders~v2`.
//!
//! - the topic's *base*: `<stream_prefix>_<token>`; when a stream name built on it could be
//!   longer than [`STREAM_NAME_BYTES_MAX`] (the server uses the name as a directory name), the
//!   token is cut and followed by `-` and the 16 hex digits of xxh3-64 of the full topic name,
//!   which keeps names distinct;
//! - partition `n`'s stream: `<base>_<n>`. The partition is the part after the last `_`, all
//!   digits, so no two (topic, partition) pairs share a stream name;
//! - the topic's claims stream (where keyless batches record their partition, see `log`):
//!   `<base>_k`, which no partition stream can be (they end in a digit);
//! - partition subject: `<subject_prefix>.<token>.<partition>`, claims subject
//!   `<subject_prefix>.<token>.k`.
//!
//! The topic's real name is also stored in each stream's description (see `meta`), which is
//! what listing reads back.

use proteus_log::{PartitionId, TopicName};

/// Longest stream name this adapter creates, in bytes (file systems allow 255 per directory
/// name; the margin leaves room for the server's own suffixes).
pub const STREAM_NAME_BYTES_MAX: usize = 200;
/// Room kept after the base for `_` and a partition number (partitions are below 10,000).
const PARTITION_SUFFIX_BYTES_MAX: usize = 5;

/// The subject token of a topic.
pub fn topic_token(topic: &TopicName) -> String {
    topic.as_str().replace('.', "~")
}

/// What every stream name of a topic starts with.
fn base(stream_prefix: &str, topic: &TopicName) -> String {
    let token = topic_token(topic);
    let name = format!("{stream_prefix}_{token}");
    if name.len() + PARTITION_SUFFIX_BYTES_MAX <= STREAM_NAME_BYTES_MAX {
        return name;
    }
    let hash = xxhash_rust::xxh3::xxh3_64(topic.as_str().as_bytes());
    let keep = STREAM_NAME_BYTES_MAX - PARTITION_SUFFIX_BYTES_MAX - stream_prefix.len() - 1 - 17;
    format!("{stream_prefix}_{}-{hash:016x}", &token[..keep])
}

/// The stream that holds one partition of a topic.
pub fn partition_stream(stream_prefix: &str, topic: &TopicName, partition: PartitionId) -> String {
    format!("{}_{partition}", base(stream_prefix, topic))
}

/// The stream where keyless batches of a topic claim their partition.
pub fn claims_stream(stream_prefix: &str, topic: &TopicName) -> String {
    format!("{}_k", base(stream_prefix, topic))
}

/// The single stream of a topic written by the first version of this adapter (one stream per
/// topic, a subject per partition), looked for only to refuse it clearly.
pub fn old_layout_stream(stream_prefix: &str, topic: &TopicName) -> String {
    let token = topic_token(topic);
    let name = format!("{stream_prefix}_{token}");
    if name.len() <= STREAM_NAME_BYTES_MAX {
        return name;
    }
    let hash = xxhash_rust::xxh3::xxh3_64(topic.as_str().as_bytes());
    let keep = STREAM_NAME_BYTES_MAX - stream_prefix.len() - 1 - 17;
    format!("{stream_prefix}_{}-{hash:016x}", &token[..keep])
}

/// The subject of one partition.
pub fn partition_subject(
    subject_prefix: &str,
    topic: &TopicName,
    partition: PartitionId,
) -> String {
    format!("{subject_prefix}.{}.{partition}", topic_token(topic))
}

/// The subject of a topic's claims stream.
pub fn claims_subject(subject_prefix: &str, topic: &TopicName) -> String {
    format!("{subject_prefix}.{}.k", topic_token(topic))
}

/// Every subject of a topic (what `wait_for_events` subscribes to).
pub fn topic_subjects(subject_prefix: &str, topic: &TopicName) -> String {
    format!("{subject_prefix}.{}.*", topic_token(topic))
}

/// The partition a subject of this topic names, if it is one.
pub fn partition_of_subject(subject: &str) -> Option<PartitionId> {
    subject.rsplit('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn topic(name: &str) -> TopicName {
        TopicName::parse(name).unwrap()
    }

    #[test]
    fn dots_become_tildes_and_names_stay_distinct() {
        assert_eq!(
            partition_stream("PROTEUS", &topic("orders.v2"), 3),
            "PROTEUS_orders~v2_3"
        );
        assert_eq!(claims_stream("P", &topic("orders")), "P_orders_k");
        assert_eq!(old_layout_stream("P", &topic("orders.v2")), "P_orders~v2");
        assert_eq!(
            partition_subject("proteus", &topic("orders.v2"), 7),
            "proteus.orders~v2.7"
        );
        assert_eq!(claims_subject("p", &topic("x")), "p.x.k");
        assert_eq!(topic_subjects("p.q", &topic("x")), "p.q.x.*");
        assert_eq!(partition_of_subject("p.q.x.12"), Some(12));
        assert_eq!(partition_of_subject("p.q.x.k"), None);
    }

    #[test]
    fn topics_with_underscores_digits_and_dots_never_share_a_stream() {
        let topics = ["a", "a_1", "a_1_0", "a.1", "a_k", "a-1", "a1", "a_10"];
        let mut seen = HashSet::new();
        for name in topics {
            let name = topic(name);
            for partition in [0, 1, 10, 1023] {
                let stream = partition_stream("P", &name, partition);
                assert!(seen.insert(stream.clone()), "{stream} named twice");
            }
            let claims = claims_stream("P", &name);
            assert!(seen.insert(claims.clone()), "{claims} named twice");
        }
    }

    #[test]
    fn long_names_are_cut_and_hashed() {
        let long_a = topic(&format!("{}a", "x".repeat(248)));
        let long_b = topic(&format!("{}b", "x".repeat(248)));
        let a = partition_stream("PROTEUS", &long_a, 1023);
        let b = partition_stream("PROTEUS", &long_b, 1023);
        assert_eq!(a.len(), STREAM_NAME_BYTES_MAX);
        assert_ne!(a, b);
        assert!(a.starts_with("PROTEUS_xxx"));
        assert!(claims_stream("PROTEUS", &long_a).len() <= STREAM_NAME_BYTES_MAX);
        let prefix = "P".repeat(64);
        assert!(partition_stream(&prefix, &long_a, 9999).len() <= STREAM_NAME_BYTES_MAX);
    }
}
