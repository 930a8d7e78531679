//! The harness: a unique namespace per test on the shared NATS server, removed at the end.

use std::time::Duration;

use proteus_log_conformance::Harness;
use proteus_log_nats::{NatsLog, NatsLogConfig};
use proteus_nats::START_HINT;

use proteus_nats::test_support::{Proxy, unique_tag};
pub use proteus_nats::test_support::{delete_streams, nats_url};

/// A configuration whose stream and subject prefixes no other test (or run) uses.
pub fn unique_config(url: &str) -> NatsLogConfig {
    let tag = unique_tag();
    NatsLogConfig {
        url: url.to_owned(),
        stream_prefix: format!("PTEST_{tag}"),
        subject_prefix: format!("ptest.{tag}"),
        request_timeout_ms: 5_000,
        retention_interval_ms: 0,
        ..NatsLogConfig::default()
    }
}

/// Connects, or fails the test saying how to start NATS.
pub async fn connect(config: NatsLogConfig) -> NatsLog {
    match NatsLog::connect(config.clone()).await {
        Ok(log) => log,
        Err(error) => panic!(
            "NATS with JetStream is not reachable at {} ({error}). {START_HINT}; or point PROTEUS_TEST_NATS_URL at a running server.",
            config.url
        ),
    }
}

pub struct NatsHarness {
    pub config: NatsLogConfig,
    /// Where the streams are deleted from at the end (the server itself, even when `config`
    /// goes through a proxy).
    cleanup_url: String,
}

impl NatsHarness {
    pub fn new() -> Self {
        let url = nats_url();
        NatsHarness {
            config: unique_config(&url),
            cleanup_url: url,
        }
    }

    /// A harness whose log connects through `proxy` (to cut or silence the connection), with
    /// requests bounded by `request_timeout_ms` and reconnection attempts 200 ms apart at most.
    pub fn behind(proxy: &Proxy, request_timeout_ms: u64) -> Self {
        let mut harness = NatsHarness::new();
        harness.config.url = format!("nats://127.0.0.1:{}", proxy.port);
        harness.config.request_timeout_ms = request_timeout_ms;
        harness.config.reconnect_delay_max_ms = 200;
        harness
    }
}

impl Drop for NatsHarness {
    fn drop(&mut self) {
        delete_streams(self.cleanup_url.clone(), self.config.stream_prefix.clone());
    }
}

impl Harness for NatsHarness {
    type Log = NatsLog;

    async fn open(&mut self) -> NatsLog {
        connect(self.config.clone()).await
    }

    /// The server stamps messages with its own clock, which cannot be moved: wait instead.
    async fn advance_clock(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }

    async fn apply_retention(&self, log: &NatsLog) {
        log.apply_retention().await.unwrap();
    }
}
