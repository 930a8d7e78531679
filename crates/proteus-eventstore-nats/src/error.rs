//! How client failures become [`EventStoreError`]s: a server that cannot be reached or does
//! not answer in time is `Unavailable` (retriable); anything else is `Storage`.

use proteus_eventstore::EventStoreError;

/// How to start a local NATS server with JetStream, for messages.
pub use proteus_nats::START_HINT;

pub(crate) fn closed() -> EventStoreError {
    EventStoreError::Unavailable {
        reason:
            "the NATS event store was closed (the server is shutting down); open it again to use it"
                .into(),
    }
}

pub(crate) fn storage(reason: impl Into<String>) -> EventStoreError {
    EventStoreError::Storage(reason.into())
}

/// Maps a client error met at `url` (redacted) while doing `what` (a phrase such as
/// "appending to stream 'x'"). `write` adds that the write may or may not have been stored,
/// so the caller retries it with the same event ids (which makes the retry idempotent).
pub(crate) fn nats<E: std::fmt::Display + std::fmt::Debug>(
    url: &str,
    what: &str,
    error: E,
    write: bool,
) -> EventStoreError {
    let text = format!("{error} {error:?}");
    // The store's streams exist from its opening on, so nobody answering means the stream has
    // no leader at the moment.
    if proteus_nats::client::is_unanswered_by_stream(&text) {
        return EventStoreError::Unavailable {
            reason: format!(
                "no NATS server at {url} took the request while {what}: the store's stream has no leader right now (a JetStream cluster elects a new one within seconds of losing a server; or the stream was deleted); nothing was stored, retry"
            ),
        };
    }
    if proteus_nats::client::is_transient_error(&text) {
        let unknown = if write {
            "; the write may or may not have been stored, so retry it with the same event ids (a retry is recognised and not written twice)"
        } else {
            ""
        };
        EventStoreError::Unavailable {
            reason: format!(
                "NATS JetStream at {url} did not answer while {what}: {error}{unknown}; retry once NATS is reachable (is it running? If not, {START_HINT})"
            ),
        }
    } else {
        storage(format!(
            "NATS JetStream at {url} failed while {what}: {error}"
        ))
    }
}

/// A message of the store's streams that the adapter cannot read.
pub(crate) fn corrupt(stream: &str, seq: u64, reason: impl std::fmt::Display) -> EventStoreError {
    storage(format!(
        "the message at sequence {seq} of JetStream stream {stream} cannot be read: {reason}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proteus_eventstore::ErrorKind;

    #[test]
    fn timeouts_are_retriable_and_say_how_to_start_nats() {
        let error = nats("nats://h:1", "appending to stream 'a'", "timed out", true);
        assert_eq!(error.kind(), ErrorKind::Unavailable);
        let text = error.to_string();
        assert!(
            text.contains("nats://h:1") && text.contains("-js"),
            "{text}"
        );
        assert!(text.contains("same event ids"), "{text}");
        let error = nats(
            "nats://h:1",
            "reading the $all feed",
            "error while processing messages from the stream: 503, None",
            false,
        );
        assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
        let error = nats("nats://h:1", "reading", "invalid stream config", false);
        assert_eq!(error.kind(), ErrorKind::Internal);
    }
}
