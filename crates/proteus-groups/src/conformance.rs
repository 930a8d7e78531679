//! The conformance suite of the [`GroupStore`] port. Every adapter runs all of it through
//! [`group_store_conformance_tests!`](crate::group_store_conformance_tests):
//!
//! ```text
//! struct Harness { dir: tempfile::TempDir }
//! impl proteus_groups::conformance::StoreHarness for Harness { ... }
//! proteus_groups::group_store_conformance_tests!(Harness::new());
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use proteus_log::TopicName;

use crate::config::GroupConfig;
use crate::name::GroupName;
use crate::store::{
    FailureRecord, GroupRecord, GroupStore, PartitionProgress, ReplayRecord, StoreError,
};

/// What the suite needs from an adapter's test set-up.
#[async_trait]
pub trait StoreHarness: Send + Sync {
    /// Opens the store. Opening again after dropping every handle must see everything a
    /// completed write wrote (as after a crash or restart).
    async fn open(&self) -> Arc<dyn GroupStore>;
}

fn topic(name: &str) -> TopicName {
    TopicName::parse(name).unwrap()
}

fn group(name: &str) -> GroupName {
    GroupName::parse(name).unwrap()
}

/// Creates the group `billing` of topic `orders` (2 partitions) in `store`: its topic and
/// name, for tests that save its progress ([`partition_1_at`]) around an outage.
pub async fn create_billing_group(store: &dyn GroupStore) -> (TopicName, GroupName) {
    store
        .create_group(&record("orders", "billing", 2))
        .await
        .unwrap();
    (topic("orders"), group("billing"))
}

/// Progress of partition 1 committed up to `committed`.
pub fn partition_1_at(committed: u64) -> PartitionProgress {
    PartitionProgress {
        partition: 1,
        committed,
        ..PartitionProgress::default()
    }
}

pub fn record(topic_name: &str, group_name: &str, partitions: u32) -> GroupRecord {
    GroupRecord {
        topic: topic(topic_name),
        group: group(group_name),
        config: GroupConfig::default(),
        created_ms: 1_700_000_000_000,
        partitions: (0..partitions)
            .map(|partition| PartitionProgress {
                partition,
                committed: 0,
                ..PartitionProgress::default()
            })
            .collect(),
        fence: 0,
    }
}

pub async fn create_then_load(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    let created = record("orders", "billing", 3);
    store.create_group(&created).await.unwrap();
    let loaded = store
        .load_group(&created.topic, &created.group)
        .await
        .unwrap()
        .expect("created group is found");
    assert_eq!(loaded, created);
    assert!(
        store
            .load_group(&created.topic, &group("other"))
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn create_twice_is_refused(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    let created = record("orders", "billing", 1);
    store.create_group(&created).await.unwrap();
    let again = store.create_group(&created).await.unwrap_err();
    assert!(matches!(again, StoreError::AlreadyExists { .. }), "{again}");
}

pub async fn same_group_name_on_two_topics_is_two_groups(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    store.create_group(&record("a", "g", 1)).await.unwrap();
    store.create_group(&record("b", "g", 2)).await.unwrap();
    assert_eq!(
        store
            .load_group(&topic("b"), &group("g"))
            .await
            .unwrap()
            .unwrap()
            .partitions
            .len(),
        2
    );
}

pub async fn progress_replaces_only_the_partitions_given(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    let created = record("orders", "billing", 3);
    store.create_group(&created).await.unwrap();
    let one = PartitionProgress {
        partition: 1,
        committed: 42,
        acked: vec![(44, 50), (60, 61)],
        failures: vec![FailureRecord {
            offset: 42,
            deliveries: 3,
            last_error: Some("timeout calling payments".into()),
        }],
        replays: vec![ReplayRecord {
            offset: 7,
            dead_letter_offset: 2,
        }],
    };
    store
        .save_progress(
            &created.topic,
            &created.group,
            0,
            std::slice::from_ref(&one),
        )
        .await
        .unwrap();
    let two = PartitionProgress {
        partition: 2,
        committed: 9,
        ..PartitionProgress::default()
    };
    store
        .save_progress(
            &created.topic,
            &created.group,
            0,
            std::slice::from_ref(&two),
        )
        .await
        .unwrap();
    let loaded = store
        .load_group(&created.topic, &created.group)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.partitions[0], created.partitions[0]);
    assert_eq!(loaded.partitions[1], one);
    assert_eq!(loaded.partitions[2], two);
}

pub async fn writes_to_a_missing_group_fail(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    let missing = record("orders", "ghost", 1);
    let error = store
        .save_progress(&missing.topic, &missing.group, 0, &missing.partitions)
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound { .. }), "{error}");
    let error = store
        .update_config(&missing.topic, &missing.group, 0, &GroupConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::NotFound { .. }), "{error}");
    assert!(
        store
            .claim_group(&missing.topic, &missing.group, 1)
            .await
            .unwrap()
            .is_none()
    );
}

/// A claim raises the group's fencing token; writes and claims with a lower token are refused
/// and change nothing; equal or higher tokens write (and raise it); the token survives a reopen
/// and starts afresh when the group is deleted and created again.
pub async fn writes_with_an_older_fencing_token_are_refused(harness: &dyn StoreHarness) {
    let created = record("orders", "billing", 2);
    let (t, g) = (&created.topic, &created.group);
    let progress = |committed| PartitionProgress {
        partition: 0,
        committed,
        ..PartitionProgress::default()
    };
    {
        let store = harness.open().await;
        store.create_group(&created).await.unwrap();
        // A lone instance writes with token 0.
        store.save_progress(t, g, 0, &[progress(3)]).await.unwrap();
        // The first coordinator claims with 4 and sees what is stored.
        let claimed = store.claim_group(t, g, 4).await.unwrap().unwrap();
        assert_eq!(claimed.fence, 4);
        assert_eq!(claimed.partitions[0].committed, 3);
        store.save_progress(t, g, 4, &[progress(5)]).await.unwrap();
        // Its successor claims with 5: from now on token 4 is refused, for every write.
        assert_eq!(store.claim_group(t, g, 5).await.unwrap().unwrap().fence, 5);
        let refused = store
            .save_progress(t, g, 4, &[progress(1)])
            .await
            .unwrap_err();
        assert!(
            matches!(
                refused,
                StoreError::Fenced {
                    fence: 4,
                    claimed: 5,
                    ..
                }
            ),
            "{refused}"
        );
        assert!(
            refused.to_string().contains("newer coordinator"),
            "{refused}"
        );
        let config = GroupConfig {
            ack_wait_ms: 4_444,
            ..GroupConfig::default()
        };
        let refused = store.update_config(t, g, 4, &config).await.unwrap_err();
        assert!(matches!(refused, StoreError::Fenced { .. }), "{refused}");
        let refused = store.claim_group(t, g, 3).await.unwrap_err();
        assert!(matches!(refused, StoreError::Fenced { .. }), "{refused}");
        let refused = store.save_progress(t, g, 0, &[progress(9)]).await;
        assert!(matches!(refused, Err(StoreError::Fenced { .. })));
        // Nothing the refused writes carried was stored.
        let loaded = store.load_group(t, g).await.unwrap().unwrap();
        assert_eq!(loaded.partitions[0].committed, 5);
        assert_ne!(loaded.config.ack_wait_ms, 4_444);
        // The successor writes; a write with a newer token raises it too.
        store.save_progress(t, g, 5, &[progress(6)]).await.unwrap();
        store.update_config(t, g, 7, &config).await.unwrap();
        assert!(matches!(
            store.save_progress(t, g, 5, &[progress(7)]).await,
            Err(StoreError::Fenced { claimed: 7, .. })
        ));
    }
    let store = harness.open().await;
    let loaded = store.load_group(t, g).await.unwrap().unwrap();
    assert_eq!(loaded.fence, 7);
    assert_eq!(loaded.partitions[0].committed, 6);
    assert_eq!(loaded.config.ack_wait_ms, 4_444);
    assert_eq!(store.list_groups().await.unwrap()[0].fence, 7);
    assert!(matches!(
        store.save_progress(t, g, 6, &[progress(8)]).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(store.delete_group(t, g).await.unwrap());
    store.create_group(&created).await.unwrap();
    store.save_progress(t, g, 1, &[progress(2)]).await.unwrap();
}

pub async fn config_updates_keep_progress(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    let created = record("orders", "billing", 1);
    store.create_group(&created).await.unwrap();
    let progress = PartitionProgress {
        partition: 0,
        committed: 5,
        ..PartitionProgress::default()
    };
    store
        .save_progress(
            &created.topic,
            &created.group,
            0,
            std::slice::from_ref(&progress),
        )
        .await
        .unwrap();
    let config = GroupConfig {
        ack_wait_ms: 1_234,
        ..GroupConfig::default()
    };
    store
        .update_config(&created.topic, &created.group, 0, &config)
        .await
        .unwrap();
    let loaded = store
        .load_group(&created.topic, &created.group)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.config.ack_wait_ms, 1_234);
    assert_eq!(loaded.partitions[0], progress);
}

pub async fn list_is_sorted_and_delete_removes(harness: &dyn StoreHarness) {
    let store = harness.open().await;
    assert!(store.list_groups().await.unwrap().is_empty());
    for (t, g) in [("b", "y"), ("a", "z"), ("b", "x"), ("a", "a")] {
        store.create_group(&record(t, g, 1)).await.unwrap();
    }
    let names: Vec<(String, String)> = store
        .list_groups()
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.topic.as_str().to_owned(), r.group.as_str().to_owned()))
        .collect();
    let expected: Vec<(String, String)> = [("a", "a"), ("a", "z"), ("b", "x"), ("b", "y")]
        .iter()
        .map(|(t, g)| (t.to_string(), g.to_string()))
        .collect();
    assert_eq!(names, expected);
    assert!(store.delete_group(&topic("b"), &group("x")).await.unwrap());
    assert!(!store.delete_group(&topic("b"), &group("x")).await.unwrap());
    assert!(
        store
            .load_group(&topic("b"), &group("x"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.list_groups().await.unwrap().len(), 3);
    // A deleted name can be created again, from scratch.
    store.create_group(&record("b", "x", 2)).await.unwrap();
    let again = store
        .load_group(&topic("b"), &group("x"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.partitions.len(), 2);
    assert_eq!(again.partitions[0].committed, 0);
    // A listing shows each group as last written.
    let progress = PartitionProgress {
        partition: 0,
        committed: 5,
        ..PartitionProgress::default()
    };
    store
        .save_progress(&topic("a"), &group("a"), 0, &[progress])
        .await
        .unwrap();
    let listed = store.list_groups().await.unwrap();
    assert_eq!(listed[0].partitions[0].committed, 5);
    let recreated = listed
        .iter()
        .find(|r| r.topic.as_str() == "b" && r.group.as_str() == "x")
        .unwrap();
    assert_eq!(recreated.partitions.len(), 2);
    assert_eq!(listed.len(), 4);
}

pub async fn everything_survives_a_reopen(harness: &dyn StoreHarness) {
    let created = record("orders", "billing", 2);
    let progress = PartitionProgress {
        partition: 1,
        committed: 1_000_000,
        acked: vec![(1_000_002, 1_000_010)],
        ..PartitionProgress::default()
    };
    {
        let store = harness.open().await;
        store.create_group(&created).await.unwrap();
        store
            .save_progress(
                &created.topic,
                &created.group,
                0,
                std::slice::from_ref(&progress),
            )
            .await
            .unwrap();
    }
    let store = harness.open().await;
    let loaded = store
        .load_group(&created.topic, &created.group)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.partitions[1], progress);
}

/// Runs the whole suite against `$harness` (an expression building a fresh [`StoreHarness`]
/// for each test).
#[macro_export]
macro_rules! group_store_conformance_tests {
    ($harness:expr) => {
        $crate::group_store_conformance_tests!(@tests $harness;
            create_then_load,
            create_twice_is_refused,
            same_group_name_on_two_topics_is_two_groups,
            progress_replaces_only_the_partitions_given,
            writes_to_a_missing_group_fail,
            writes_with_an_older_fencing_token_are_refused,
            config_updates_keep_progress,
            list_is_sorted_and_delete_removes,
            everything_survives_a_reopen,
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let harness = $harness;
                $crate::conformance::$name(&harness).await;
            }
        )*
    };
}
