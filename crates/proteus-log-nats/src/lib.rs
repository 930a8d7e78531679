//! The log port on NATS JetStream.
//!
//! Each partition of a topic is its own JetStream stream, so an event's offset is its stream
//! sequence − 1: assigned by the server, gapless and in order whatever the number of writers,
//! which lets an append pipeline all its publishes. The mapping, what is not supported and why,
//! and every setting are in `docs/backends/nats.md`.
//!
//! ```text
//! stream   <stream_prefix>_<topic, '.' → '~'>_<partition>   description: proteus-topic/2 {topic, config, role}
//! subject  <subject_prefix>.<topic, '.' → '~'>.<partition>
//! claims   <stream_prefix>_<topic, '.' → '~'>_k on <subject_prefix>.<topic, '.' → '~'>.k
//!          (the partition each keyless batch was routed to, by its first event's dedup key)
//! message  headers Nats-Msg-Id: xxh3-128(source, id) in hex (dedup within dedup_window_ms)
//!          payload the CloudEvent's JSON, byte for byte
//! offset   stream sequence - 1
//! ```

mod config;
mod log;
mod meta;
pub mod names;

pub use config::{
    NatsLogConfig, STREAM_PREFIX_BYTES_MAX, SUBJECT_PREFIX_BYTES_MAX, TIMEOUT_MS_MIN,
};
pub use log::{HEADER_BYTES_RESERVED, NatsLog};
pub use meta::{StreamRole, TopicMeta};
