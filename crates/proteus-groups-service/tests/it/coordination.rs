//! Two group services sharing one group store and one lease store, as two `proteus serve`
//! instances do: one coordinator per group, renewal, and a coordinator that cannot renew
//! dropping the group before its lease expires, after which the other takes it over from the
//! stored progress; a coordinator that outlived its lease unnoticed is fenced off by the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use proteus_groups_service::coordination::{
    CoordinatorConfig, GroupRouter, LeaseCoordinator, Route,
};
use proteus_groups_service::proteus_groups::memory::MemoryGroupStore;
use proteus_groups_service::proteus_groups::state::Position;
use proteus_groups_service::proteus_groups::{GroupConfig, GroupName, GroupStore};
use proteus_groups_service::{GroupService, PullRequest, ServiceConfig};
use proteus_kv::{KvCommit, KvError, KvStore, MemoryKvStore, Namespace};
use proteus_log::Log;

/// A lease store that can be cut off, as a network partition would.
struct Flaky {
    inner: Arc<MemoryKvStore>,
    down: AtomicBool,
}

impl Flaky {
    fn check(&self) -> Result<(), KvError> {
        if self.down.load(Ordering::Acquire) {
            Err(KvError::Unavailable {
                message: "cut off".into(),
                retriable: true,
            })
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl KvStore for Flaky {
    async fn get_many(
        &self,
        namespace: &Namespace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        self.check()?;
        self.inner.get_many(namespace, keys).await
    }

    async fn commit(&self, namespace: &Namespace, commit: KvCommit) -> Result<(), KvError> {
        self.check()?;
        self.inner.commit(namespace, commit).await
    }

    async fn scan(
        &self,
        namespace: &Namespace,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError> {
        self.check()?;
        self.inner.scan(namespace, prefix, after, limit).await
    }

    async fn clear(&self, namespace: &Namespace) -> Result<u64, KvError> {
        self.check()?;
        self.inner.clear(namespace).await
    }
}

struct Instance {
    groups: GroupService,
    coordinator: LeaseCoordinator,
    kv: Arc<Flaky>,
}

async fn instance(
    log: Arc<dyn Log>,
    store: Arc<dyn GroupStore>,
    kv: Arc<MemoryKvStore>,
    name: &str,
) -> Instance {
    instance_with_clock_skew(log, store, kv, name, 0).await
}

/// An instance whose wall clock is `skew_ms` ahead of the others'.
async fn instance_with_clock_skew(
    log: Arc<dyn Log>,
    store: Arc<dyn GroupStore>,
    kv: Arc<MemoryKvStore>,
    name: &str,
    skew_ms: i64,
) -> Instance {
    let system = proteus_groups_service::system_clock();
    let groups = GroupService::open(
        log,
        store,
        ServiceConfig {
            shared: true,
            clock: Arc::new(move || system() + skew_ms),
            ..ServiceConfig::default()
        },
    )
    .await
    .unwrap();
    let kv = Arc::new(Flaky {
        inner: kv,
        down: AtomicBool::new(false),
    });
    let config = CoordinatorConfig {
        ttl_ms: 1_000,
        safety_ms: 300,
        ..CoordinatorConfig::new(name, format!("http://{name}/"))
    };
    let coordinator = LeaseCoordinator::start(kv.clone(), groups.clone(), config).unwrap();
    Instance {
        groups,
        coordinator,
        kv,
    }
}

async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Ten events in a two-partition topic, and the group store and lease store the instances of a
/// test share with it.
async fn shared_backends() -> (crate::Fixture, Arc<dyn GroupStore>, Arc<MemoryKvStore>) {
    let fixture = crate::Fixture::new(2).await;
    fixture.publish(10, 4).await;
    (
        fixture,
        Arc::new(MemoryGroupStore::new()),
        Arc::new(MemoryKvStore::new()),
    )
}

#[tokio::test]
async fn one_coordinator_per_group_and_a_takeover_after_a_lost_lease() {
    let (fixture, store, kv) = shared_backends().await;
    let (log, topic) = (fixture.log.clone(), fixture.topic.clone());
    let a = instance(log.clone(), store.clone(), kv.clone(), "a").await;
    let b = instance(log.clone(), store.clone(), kv.clone(), "b").await;
    let group = GroupName::parse("billing").unwrap();

    // A request through A makes A the coordinator; B forwards to A.
    assert_eq!(
        a.coordinator.route(&topic, &group).await.unwrap(),
        Route::Local
    );
    assert!(
        a.groups
            .put_group(&topic, &group, GroupConfig::default())
            .await
            .unwrap()
    );
    assert_eq!(
        b.coordinator.route(&topic, &group).await.unwrap(),
        Route::Remote("http://a".into())
    );
    assert!(!b.groups.is_active(&topic, &group));
    // B lists it from the shared store.
    let listed = b.groups.list(&topic).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].group, group);

    // A member consumes and acks everything through A.
    let member = a.groups.join(&topic, &group, None).await.unwrap();
    let member_id = member.assignment.member_id.clone();
    let pulled = a
        .groups
        .pull(
            &topic,
            &group,
            &member_id,
            PullRequest {
                events_max: 100,
                bytes_max: 1 << 20,
                wait_ms: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(pulled.deliveries.len(), 10);
    let positions: Vec<Position> = pulled.deliveries.iter().map(|d| d.position).collect();
    a.groups
        .ack(&topic, &group, &member_id, pulled.generation, &positions)
        .await
        .unwrap();

    // Renewals keep A the coordinator well past the TTL.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        a.coordinator.route(&topic, &group).await.unwrap(),
        Route::Local
    );
    assert_eq!(
        a.coordinator.coordinated(),
        vec![(topic.clone(), group.clone())]
    );
    assert_eq!(
        b.coordinator.route(&topic, &group).await.unwrap(),
        Route::Remote("http://a".into())
    );

    // A loses the lease store: it stops serving the group before the lease can expire.
    a.kv.down.store(true, Ordering::Release);
    let dropped_after = eventually(Duration::from_secs(2), "A drops the group", || async {
        !a.groups.is_active(&topic, &group)
    })
    .await;
    assert!(
        dropped_after < Duration::from_millis(1_000),
        "dropped after {dropped_after:?}, the lease lasts 1 s"
    );
    assert!(a.coordinator.coordinated().is_empty());
    assert!(a.coordinator.route(&topic, &group).await.is_err());

    // Once the lease expired, B takes the group over from the stored progress: nothing left
    // to deliver, since every event was acknowledged.
    eventually(Duration::from_secs(3), "B takes over", || async {
        b.coordinator.route(&topic, &group).await.unwrap() == Route::Local
    })
    .await;
    assert!(b.groups.is_active(&topic, &group));
    let described = b.groups.describe(&topic, &group).await.unwrap();
    assert_eq!(described.lag_events, 0, "{described:?}");
    assert!(described.members.is_empty());
    let rejoined = b.groups.join(&topic, &group, Some(member_id.clone())).await;
    let rejoined = rejoined.unwrap();
    let pulled = b
        .groups
        .pull(
            &topic,
            &group,
            &rejoined.assignment.member_id,
            PullRequest {
                events_max: 100,
                bytes_max: 1 << 20,
                wait_ms: 0,
            },
        )
        .await
        .unwrap();
    assert!(pulled.deliveries.is_empty());

    // A, reconnected, forwards to B.
    a.kv.down.store(false, Ordering::Release);
    assert_eq!(
        a.coordinator.route(&topic, &group).await.unwrap(),
        Route::Remote("http://b".into())
    );

    // B shuts down cleanly: its lease is released and A takes the group at once.
    b.groups.shutdown().await;
    b.coordinator.release_all().await;
    a.coordinator.forward_failed(&topic, &group, "http://b");
    assert_eq!(
        a.coordinator.route(&topic, &group).await.unwrap(),
        Route::Local
    );
    drop(fixture);
}

/// A coordinator that still believes it holds its lease (it cannot reach the lease store, and
/// another instance's clock runs far enough ahead to see the lease expired) must not save
/// progress over its successor's: the successor claimed the group with a newer fencing token,
/// so the store refuses the old coordinator's acks, and it drops the group.
#[tokio::test]
async fn a_coordinator_past_its_lease_cannot_overwrite_its_successor() {
    let (fixture, store, kv) = shared_backends().await;
    let (log, topic) = (fixture.log.clone(), fixture.topic.clone());
    let a = instance(log.clone(), store.clone(), kv.clone(), "a").await;
    // B's clock is 5 s ahead: more than the lease (1 s) and its safety margin.
    let b = instance_with_clock_skew(log.clone(), store.clone(), kv.clone(), "b", 5_000).await;
    let group = GroupName::parse("billing").unwrap();
    let pull = PullRequest {
        events_max: 100,
        bytes_max: 1 << 20,
        wait_ms: 0,
    };

    assert_eq!(
        a.coordinator.route(&topic, &group).await.unwrap(),
        Route::Local
    );
    a.groups
        .put_group(&topic, &group, GroupConfig::default())
        .await
        .unwrap();
    assert_eq!(
        store
            .load_group(&topic, &group)
            .await
            .unwrap()
            .unwrap()
            .fence,
        1,
        "created with the first lease's token"
    );
    let member = a.groups.join(&topic, &group, None).await.unwrap();
    let member_id = member.assignment.member_id.clone();
    let pulled = a
        .groups
        .pull(&topic, &group, &member_id, pull)
        .await
        .unwrap();
    assert_eq!(pulled.deliveries.len(), 10);
    let positions: Vec<Position> = pulled.deliveries.iter().map(|d| d.position).collect();

    // A cannot renew (it keeps serving until just before its lease would expire), and B,
    // whose clock says the lease already expired, takes the group over.
    a.kv.down.store(true, Ordering::Release);
    assert_eq!(
        b.coordinator.route(&topic, &group).await.unwrap(),
        Route::Local
    );
    assert!(a.groups.is_active(&topic, &group), "A does not know yet");

    // A's acks are refused by the store: nothing it saves lands over B's claim.
    let refused = a
        .groups
        .ack(&topic, &group, &member_id, pulled.generation, &positions)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("stopped coordinating"),
        "{refused}"
    );
    assert!(!a.groups.is_active(&topic, &group), "A dropped the group");
    let stored = store.load_group(&topic, &group).await.unwrap().unwrap();
    assert_eq!(stored.fence, 2, "B claimed it with the next token");
    assert!(
        stored
            .partitions
            .iter()
            .all(|p| p.committed == 0 && p.acked.is_empty()),
        "{stored:?}"
    );

    // B serves the events again, and its acks are saved.
    let member = b.groups.join(&topic, &group, None).await.unwrap();
    let pulled = b
        .groups
        .pull(&topic, &group, &member.assignment.member_id, pull)
        .await
        .unwrap();
    assert_eq!(pulled.deliveries.len(), 10);
    let positions: Vec<Position> = pulled.deliveries.iter().map(|d| d.position).collect();
    b.groups
        .ack(
            &topic,
            &group,
            &member.assignment.member_id,
            pulled.generation,
            &positions,
        )
        .await
        .unwrap();
    let stored = store.load_group(&topic, &group).await.unwrap().unwrap();
    assert_eq!(
        stored.partitions.iter().map(|p| p.committed).sum::<u64>(),
        10
    );

    // A, reconnected, asks the lease store again and forwards to B.
    a.kv.down.store(false, Ordering::Release);
    assert_eq!(
        a.coordinator.route(&topic, &group).await.unwrap(),
        Route::Remote("http://b".into())
    );
    drop(fixture);
}
