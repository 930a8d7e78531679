//! Push delivery against real local webhooks that fail on purpose, and the service's durable
//! acks across a restart.

mod coordination;
mod replaced;
mod webhook;

use std::sync::Arc;

use proteus_groups_embedded::EmbeddedGroupStore;
use proteus_groups_service::{GroupService, ServiceConfig};
use proteus_log::{Event, Log, TopicConfig, TopicName};
use proteus_log_embedded::{EmbeddedConfig, EmbeddedLog};

pub struct Fixture {
    pub log: Arc<dyn Log>,
    pub groups: GroupService,
    pub topic: TopicName,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub async fn new(partitions: u32) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn Log> = Arc::new(
            EmbeddedLog::open(EmbeddedConfig::new(dir.path()))
                .await
                .unwrap(),
        );
        let store = Arc::new(EmbeddedGroupStore::open(dir.path()).unwrap());
        let groups = GroupService::open(log.clone(), store, ServiceConfig::default())
            .await
            .unwrap();
        let topic = TopicName::parse("orders").unwrap();
        log.put_topic(&topic, TopicConfig::with_partitions(partitions))
            .await
            .unwrap();
        Fixture {
            log,
            groups,
            topic,
            _dir: dir,
        }
    }

    /// Appends events `0..count` keyed `k{i % keys}`.
    pub async fn publish(&self, count: usize, keys: usize) {
        let events = (0..count)
            .map(|i| {
                let json = serde_json::json!({
                    "specversion": "1.0", "id": format!("e{i}"), "source": "/test",
                    "type": "order.created", "partitionkey": format!("k{}", i % keys),
                    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                    "data": {"n": i}
                });
                Event::from_json(json.to_string().as_bytes()).unwrap()
            })
            .collect();
        self.log.append(&self.topic, events).await.unwrap();
    }
}

/// Polls `check` every 20 ms for up to `seconds`.
pub async fn eventually(seconds: u64, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}
