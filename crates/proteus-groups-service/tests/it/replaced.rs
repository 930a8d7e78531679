//! A group whose stored position is past the end of its partition (its topic was replaced by
//! another of the same name, or lost events the group had acknowledged) reads the partition
//! again from its first event, rather than waiting at the old position and skipping every
//! event written up to it.

use std::sync::Arc;

use proteus_groups_service::proteus_groups::memory::MemoryGroupStore;
use proteus_groups_service::proteus_groups::state::Position;
use proteus_groups_service::proteus_groups::{GroupConfig, GroupName, GroupStore};
use proteus_groups_service::{GroupService, PullRequest, ServiceConfig};
use proteus_log::memory::MemoryLog;
use proteus_log::{Event, Log, TopicConfig, TopicName};

async fn log_with(topic: &TopicName, ids: &[String]) -> Arc<dyn Log> {
    let log: Arc<dyn Log> = Arc::new(MemoryLog::default());
    log.put_topic(topic, TopicConfig::with_partitions(1))
        .await
        .unwrap();
    let events = ids
        .iter()
        .map(|id| {
            let json = serde_json::json!({
                "specversion": "1.0", "id": id, "source": "/test", "type": "order.created"
            });
            Event::from_json(json.to_string().as_bytes()).unwrap()
        })
        .collect();
    log.append(topic, events).await.unwrap();
    log
}

/// Joins, pulls everything ready and acks it; returns the ids pulled.
async fn consume(groups: &GroupService, topic: &TopicName, group: &GroupName) -> Vec<String> {
    let member = groups.join(topic, group, None).await.unwrap();
    let member_id = member.assignment.member_id;
    let request = PullRequest {
        events_max: 100,
        bytes_max: 1 << 20,
        wait_ms: 0,
    };
    let pulled = groups
        .pull(topic, group, &member_id, request)
        .await
        .unwrap();
    let positions: Vec<Position> = pulled.deliveries.iter().map(|d| d.position).collect();
    groups
        .ack(topic, group, &member_id, pulled.generation, &positions)
        .await
        .unwrap();
    pulled
        .deliveries
        .iter()
        .map(|delivery| {
            let event: serde_json::Value = serde_json::from_slice(&delivery.json).unwrap();
            event["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_past_the_end_of_a_replaced_topic_reads_it_from_its_first_event() {
    let store = Arc::new(MemoryGroupStore::default());
    let topic = TopicName::parse("orders").unwrap();
    let group = GroupName::parse("billing").unwrap();
    let old: Vec<String> = (0..10).map(|i| format!("old{i}")).collect();
    let first = log_with(&topic, &old).await;
    let groups = GroupService::open(first, store.clone(), ServiceConfig::default())
        .await
        .unwrap();
    groups
        .put_group(&topic, &group, GroupConfig::default())
        .await
        .unwrap();
    assert_eq!(consume(&groups, &topic, &group).await, old);
    groups.shutdown().await;
    let stored = store.load_group(&topic, &group).await.unwrap().unwrap();
    assert_eq!(stored.partitions[0].committed, 10);

    // The same topic name on another log, holding 3 events.
    let new: Vec<String> = (0..3).map(|i| format!("new{i}")).collect();
    let second = log_with(&topic, &new).await;
    let groups = GroupService::open(second, store.clone(), ServiceConfig::default())
        .await
        .unwrap();
    assert_eq!(consume(&groups, &topic, &group).await, new);
    groups.shutdown().await;
    let stored = store.load_group(&topic, &group).await.unwrap().unwrap();
    assert_eq!(stored.partitions[0].committed, 3);
}
