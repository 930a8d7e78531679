//! How topics and partitions are named in JetStream.
//!
//! A topic name is `[A-Za-z0-9._-]`; stream names and subject tokens cannot hold `.`. The
//! *token* of a topic is its name with every `.` replaced by `~`, a character topic names never
//! contain, so the mapping is one-to-one: `orders.v2` → `orders~v2`.
//!
//! - stream: `<stream_prefix>_<token>`; when that is longer than [`STREAM_NAME_BYTES_MAX`]
//!   (the server uses the name as a directory name), the token is cut and followed by `-` and
//!   the 16 hex digits of xxh3-64 of the full topic name, which keeps names distinct;
//! - partition subject: `<subject_prefix>.<token>.<partition>`; the stream listens on
//!   `<subject_prefix>.<token>.*`.
//!
//! The topic's real name is also stored in the stream's description (see `meta`), which is
//! what listing reads back.

use proteus_log::{PartitionId, TopicName};

/// Longest stream name this adapter creates, in bytes (file systems allow 255 per directory
/// name; the margin leaves room for the server's own suffixes).
pub const STREAM_NAME_BYTES_MAX: usize = 200;

/// The subject token of a topic.
pub fn topic_token(topic: &TopicName) -> String {
    topic.as_str().replace('.', "~")
}

/// The stream that holds a topic.
pub fn stream_name(stream_prefix: &str, topic: &TopicName) -> String {
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

/// The subjects a topic's stream listens on.
pub fn stream_subjects(subject_prefix: &str, topic: &TopicName) -> String {
    format!("{subject_prefix}.{}.*", topic_token(topic))
}

/// The partition a subject of this topic names, if it is one.
pub fn partition_of_subject(subject: &str) -> Option<PartitionId> {
    subject.rsplit('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> TopicName {
        TopicName::parse(name).unwrap()
    }

    #[test]
    fn dots_become_tildes_and_names_stay_distinct() {
        assert_eq!(
            stream_name("PROTEUS", &topic("orders.v2")),
            "PROTEUS_orders~v2"
        );
        assert_ne!(
            stream_name("P", &topic("a.b")),
            stream_name("P", &topic("a_b"))
        );
        assert_eq!(
            partition_subject("proteus", &topic("orders.v2"), 7),
            "proteus.orders~v2.7"
        );
        assert_eq!(stream_subjects("p.q", &topic("x")), "p.q.x.*");
        assert_eq!(partition_of_subject("p.q.x.12"), Some(12));
    }

    #[test]
    fn long_names_are_cut_and_hashed() {
        let long_a = topic(&format!("{}a", "x".repeat(248)));
        let long_b = topic(&format!("{}b", "x".repeat(248)));
        let a = stream_name("PROTEUS", &long_a);
        let b = stream_name("PROTEUS", &long_b);
        assert_eq!(a.len(), STREAM_NAME_BYTES_MAX);
        assert_ne!(a, b);
        assert!(a.starts_with("PROTEUS_xxx"));
    }
}
