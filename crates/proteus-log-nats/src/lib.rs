//! The log port on NATS JetStream.
//!
//! A topic is a JetStream stream, a partition is one subject of it, and every event carries its
//! offset within its partition in a header that the adapter assigns and the server checks, so
//! offsets are gapless per partition as the port promises. The mapping, what is not supported
//! and why, and every setting are in `docs/backends/nats.md`.
//!
//! ```text
//! stream   <stream_prefix>_<topic, '.' → '~'>         description: proteus-topic/1 {topic, config}
//! subject  <subject_prefix>.<topic, '.' → '~'>.<partition>
//! message  headers Nats-Msg-Id: xxh3-128(source, id) in hex (dedup within dedup_window_ms)
//!                  Nats-Expected-Last-Subject-Sequence: the partition's previous message
//!                  Proteus-Offset: the event's offset in its partition
//!          payload the CloudEvent's JSON, byte for byte
//! ```

mod config;
mod log;
mod meta;
pub mod names;

pub use config::{
    NatsLogConfig, STREAM_PREFIX_BYTES_MAX, SUBJECT_PREFIX_BYTES_MAX, TIMEOUT_MS_MIN,
};
pub use log::{HEADER_BYTES_RESERVED, NatsLog, OFFSET_HEADER};
pub use meta::TopicMeta;
