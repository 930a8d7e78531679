//! The in-memory store runs the KvStore conformance suite (its durability test checks nothing:
//! the memory store does not outlive its process).

use std::sync::Arc;

use async_trait::async_trait;
use proteus_kv::conformance::KvHarness;
use proteus_kv::{KvStore, MemoryKvStore};

struct Harness;

#[async_trait]
impl KvHarness for Harness {
    async fn open(&self) -> Arc<dyn KvStore> {
        Arc::new(MemoryKvStore::new())
    }
}

proteus_kv::kv_conformance_tests!(Harness);

/// Eight instances race for one lease at the same instant, again and again: exactly one holds
/// it each round, and every other one is told who.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_instances_never_share_a_lease() {
    use proteus_kv::lease::{LeaseState, acquire};
    let kv: Arc<dyn KvStore> = Arc::new(MemoryKvStore::new());
    let ns = proteus_kv::Namespace::parse("leases").unwrap();
    for round in 0..50i64 {
        let now = round * 10_000;
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (kv, ns) = (kv.clone(), ns.clone());
                tokio::spawn(async move {
                    let holder = format!("instance-{i}");
                    acquire(kv.as_ref(), &ns, b"group", &holder, "", now, 5_000)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut holders = Vec::new();
        let mut told = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                LeaseState::Held(lease) => holders.push(lease.holder),
                LeaseState::HeldByOther(lease) => told.push(lease.holder),
            }
        }
        assert_eq!(holders.len(), 1, "round {round}: {holders:?}");
        assert!(
            told.iter().all(|h| *h == holders[0]),
            "{told:?} vs {holders:?}"
        );
    }
}
