//! How client failures are worded: what failed, where, and how to get NATS back.

use std::fmt::Display;

use proteus_nats::START_HINT;

/// A request to NATS at `url` (redacted) that failed while doing `what` (a phrase such as
/// "saving the progress of group 'g'"). A write that failed this way may or may not have
/// been stored; every write of the store can be sent again safely.
pub(crate) fn failure(url: &str, what: &str, error: impl Display) -> String {
    format!(
        "NATS JetStream at {url} failed while {what}: {error}; retry once NATS answers (is it running? If not, {START_HINT})"
    )
}

/// A value of a bucket that does not decode.
pub(crate) fn corrupt(bucket: &str, key: &str, error: impl Display) -> String {
    format!("the value of key {key:?} in NATS key-value bucket {bucket} cannot be read: {error}")
}
