//! A harness over a temporary directory with a clock the test moves.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use proteus_log_conformance::Harness;
use proteus_log_embedded::{EmbeddedConfig, EmbeddedLog};

pub struct TempLog {
    pub dir: tempfile::TempDir,
    pub now_ms: Arc<AtomicI64>,
}

impl TempLog {
    pub fn new() -> Self {
        TempLog {
            dir: tempfile::tempdir().unwrap(),
            now_ms: Arc::new(AtomicI64::new(1_800_000_000_000)),
        }
    }

    pub fn config(&self) -> EmbeddedConfig {
        let now_ms = self.now_ms.clone();
        EmbeddedConfig {
            // Retention runs only when a test asks.
            retention_check_interval_ms: 3_600_000,
            clock: Arc::new(move || now_ms.load(Ordering::SeqCst)),
            ..EmbeddedConfig::new(self.dir.path())
        }
    }

    pub async fn open(&self) -> EmbeddedLog {
        EmbeddedLog::open(self.config()).await.unwrap()
    }
}

impl Harness for TempLog {
    type Log = EmbeddedLog;

    async fn open(&mut self) -> EmbeddedLog {
        TempLog::open(self).await
    }

    async fn advance_clock(&self, by: Duration) {
        self.now_ms
            .fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }

    async fn apply_retention(&self, log: &EmbeddedLog) {
        log.run_retention().await.unwrap();
    }
}
