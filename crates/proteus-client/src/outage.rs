//! [`Outage`]: riding out a server that cannot serve for a while (restarting, or its backend
//! electing a new leader) instead of failing at its first 503.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use crate::ClientError;

/// A long-running caller's time without the server: each transient error earns a pause
/// before asking again, doubling from [`Outage::PAUSE_MS_MIN`] to [`Outage::PAUSE_MS_MAX`],
/// until the server has been unavailable for longer than `wait_max_ms`. A success ends it.
#[derive(Debug, Clone)]
pub struct Outage {
    since: Option<Instant>,
    pause_ms: u64,
    wait_max_ms: u64,
}

impl Outage {
    /// First pause after a transient error, in milliseconds.
    pub const PAUSE_MS_MIN: u64 = 100;
    /// Longest pause between two attempts, in milliseconds.
    pub const PAUSE_MS_MAX: u64 = 5_000;

    pub fn new(wait_max_ms: u64) -> Outage {
        Outage {
            since: None,
            pause_ms: Self::PAUSE_MS_MIN,
            wait_max_ms,
        }
    }

    /// How long an outage may last before [`Outage::pause_for`] gives up, in milliseconds.
    pub fn wait_max_ms(&self) -> u64 {
        self.wait_max_ms
    }

    /// Whether `error` says the server could not be reached, or that it (or its backend)
    /// cannot serve for now: 502, 503 or 504.
    pub fn is_transient(error: &ClientError) -> bool {
        match error {
            ClientError::Unreachable { .. } => true,
            ClientError::Problem { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }

    /// Whether an outage is going on: a transient error came after the last success.
    pub fn is_ongoing(&self) -> bool {
        self.since.is_some()
    }

    /// The pause before asking again after `error`, or `None` to give up: the error is not
    /// transient, or the outage has lasted `wait_max_ms` already.
    pub fn pause_for(&mut self, error: &ClientError) -> Option<Duration> {
        if !Self::is_transient(error) {
            return None;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() >= Duration::from_millis(self.wait_max_ms) {
            return None;
        }
        let pause = Duration::from_millis(self.pause_ms);
        self.pause_ms = (self.pause_ms * 2).min(Self::PAUSE_MS_MAX);
        Some(pause)
    }

    /// Sleeps through `pause` unless `stop` resolves first (then `true`), so a caller riding
    /// out an outage still stops when asked.
    pub async fn sleep_unless_stopped<F: Future>(stop: &mut Pin<&mut F>, pause: Duration) -> bool {
        tokio::select! {
            _ = stop.as_mut() => true,
            () = tokio::time::sleep(pause) => false,
        }
    }

    /// A call succeeded: how long the outage it ends lasted, if there was one.
    pub fn end(&mut self) -> Option<Duration> {
        self.pause_ms = Self::PAUSE_MS_MIN;
        self.since.take().map(|since| since.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(status: u16) -> ClientError {
        ClientError::Problem {
            status,
            title: String::new(),
            detail: String::new(),
            body: serde_json::Value::Null,
        }
    }

    #[test]
    fn transient_errors_earn_doubling_pauses_within_the_bound() {
        let mut outage = Outage::new(60_000);
        assert_eq!(outage.pause_for(&problem(400)), None, "not transient");
        assert!(!outage.is_ongoing());
        let pauses: Vec<u64> = (0..8)
            .map(|_| outage.pause_for(&problem(503)).unwrap().as_millis() as u64)
            .collect();
        assert_eq!(
            pauses,
            [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000],
            "doubling up to the longest pause"
        );
        assert!(outage.is_ongoing());
        assert!(outage.end().is_some());
        assert_eq!(outage.end(), None, "ended once");
        let unreachable = ClientError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            outage.pause_for(&unreachable),
            Some(Duration::from_millis(100)),
            "a new outage starts from the shortest pause"
        );
    }

    #[test]
    fn an_outage_longer_than_allowed_gives_up() {
        let mut outage = Outage::new(0);
        assert_eq!(outage.pause_for(&problem(502)), None);
        assert!(outage.is_ongoing(), "it gave up on an outage");
    }
}
