//! The harness: a unique namespace per test on the shared NATS server, removed at the end.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use proteus_log_conformance::Harness;
use proteus_log_nats::{NatsLog, NatsLogConfig};

pub const START_NATS: &str = "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server";

pub fn nats_url() -> String {
    std::env::var("PROTEUS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A configuration whose stream and subject prefixes no other test (or run) uses.
pub fn unique_config(url: &str) -> NatsLogConfig {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let tag = format!("{}_{n}_{nanos:x}", std::process::id());
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
            "NATS with JetStream is not reachable at {} ({error}). Start it with:\n  {START_NATS}\nor point PROTEUS_TEST_NATS_URL at a running server.",
            config.url
        ),
    }
}

/// Deletes every stream of `stream_prefix` on a separate runtime (usable from `Drop`).
pub fn delete_streams(url: String, stream_prefix: String) {
    let cleanup = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let Ok(client) = async_nats::connect(url.as_str()).await else {
                return;
            };
            let js = async_nats::jetstream::new(client.clone());
            let prefix = format!("{stream_prefix}_");
            let mut names = Vec::new();
            let mut streams = js.stream_names();
            while let Some(Ok(name)) = streams.next().await {
                if name.starts_with(&prefix) {
                    names.push(name);
                }
            }
            for name in names {
                let _ = js.delete_stream(&name).await;
            }
            let _ = client.flush().await;
        });
    });
    let _ = cleanup.join();
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
