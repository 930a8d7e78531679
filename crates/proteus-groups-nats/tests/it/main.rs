//! The NATS consumer-group store runs the whole GroupStore conformance suite, each test in
//! buckets of its own, deleted afterwards; its lease store is tested through the lease module
//! it serves; connection loss is tested through a TCP proxy and through a server of the
//! test's own killed and started again, and on a cluster of three whose leader is killed.
//! NATS with JetStream must be running (the tests fail, saying how to start it, when it is
//! not).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use proteus_groups::conformance::{StoreHarness, create_billing_group, partition_1_at, record};
use proteus_groups::{GroupName, GroupStore, PartitionProgress, StoreError};
use proteus_groups_nats::{NatsGroupStore, NatsGroupStoreConfig, NatsLeaseStore, START_HINT};
use proteus_kv::lease::{self, LeaseState};
use proteus_kv::{KvCheck, KvCommit, KvError, KvStore, KvWrite, Namespace};
use proteus_log::TopicName;
use proteus_nats::test_support::{
    PrivateNatsServer, Proxy, delete_streams, host_port, nats_url, unique_tag, until_recovered,
};

/// A configuration whose buckets no other test (or run) uses.
fn unique_config(url: &str) -> NatsGroupStoreConfig {
    NatsGroupStoreConfig {
        bucket_prefix: format!("PGTEST_{}", unique_tag()),
        ..NatsGroupStoreConfig::new(url)
    }
}

async fn open(config: NatsGroupStoreConfig) -> NatsGroupStore {
    match NatsGroupStore::open(config.clone()).await {
        Ok(store) => store,
        Err(error) => panic!(
            "NATS with JetStream is not reachable at {} ({error}). Start it: {START_HINT}; or point PROTEUS_TEST_NATS_URL at a running server.",
            config.url
        ),
    }
}

/// Buckets of its own; `open` connects a new store to them each time (so the suite's reopen
/// sees what the previous store wrote); dropping the harness deletes them.
struct Harness {
    config: NatsGroupStoreConfig,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            config: unique_config(&nats_url()),
        }
    }

    async fn store(&self) -> NatsGroupStore {
        open(self.config.clone()).await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        delete_streams(nats_url(), format!("KV_{}", self.config.bucket_prefix));
    }
}

#[async_trait]
impl StoreHarness for Harness {
    async fn open(&self) -> Arc<dyn GroupStore> {
        Arc::new(self.store().await)
    }
}

proteus_groups::group_store_conformance_tests!(Harness::new());

fn namespace() -> Namespace {
    Namespace::parse("groups.coordination").unwrap()
}

/// Leases on the NATS lease store: one holder at a time, tokens that grow on hand-over and
/// stay across renewals, and a release that lets the next holder in at once.
#[tokio::test]
async fn leases_have_one_holder_and_growing_tokens() {
    let harness = Harness::new();
    let leases = harness.store().await.lease_store();
    let ns = namespace();
    let key = b"orders/billing";
    let now = 1_700_000_000_000;
    let LeaseState::Held(first) = lease::acquire(&leases, &ns, key, "a", "http://a", now, 1_000)
        .await
        .unwrap()
    else {
        panic!("a free lease is taken");
    };
    assert_eq!(first.token, 1);
    match lease::acquire(&leases, &ns, key, "b", "http://b", now + 10, 1_000)
        .await
        .unwrap()
    {
        LeaseState::HeldByOther(held) => assert_eq!((held.holder.as_str(), held.token), ("a", 1)),
        LeaseState::Held(_) => panic!("b took a lease a still holds"),
    }
    let LeaseState::Held(renewed) =
        lease::acquire(&leases, &ns, key, "a", "http://a", now + 500, 1_000)
            .await
            .unwrap()
    else {
        panic!("the holder renews");
    };
    assert_eq!(renewed.token, 1, "a renewal keeps the token");
    // Past its expiry, b takes it with the next token.
    let LeaseState::Held(taken) =
        lease::acquire(&leases, &ns, key, "b", "http://b", now + 2_000, 1_000)
            .await
            .unwrap()
    else {
        panic!("an expired lease is taken");
    };
    assert_eq!(taken.token, 2);
    lease::release(&leases, &ns, key, "b").await.unwrap();
    let LeaseState::Held(after_release) =
        lease::acquire(&leases, &ns, key, "a", "http://a", now + 2_010, 1_000)
            .await
            .unwrap()
    else {
        panic!("a released lease is free at once");
    };
    assert_eq!(after_release.token, 3, "tokens never go back");
    // Another store on the same buckets (another instance) sees the same lease.
    let other = open(harness.config.clone()).await.lease_store();
    match lease::acquire(&other, &ns, key, "c", "http://c", now + 2_020, 1_000)
        .await
        .unwrap()
    {
        LeaseState::HeldByOther(held) => assert_eq!(held.holder, "a"),
        LeaseState::Held(_) => panic!("c took a lease a holds through another connection"),
    }
}

/// Many tasks doing read, increment, commit-if-unchanged on one key lose no increment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_and_set_on_one_key_loses_no_update() {
    const TASKS: u64 = 8;
    const INCREMENTS: u64 = 10;
    let harness = Harness::new();
    let leases = harness.store().await.lease_store();
    let ns = namespace();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let leases = leases.clone();
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..INCREMENTS {
                loop {
                    let read = leases.get_many(&ns, &[b"n".to_vec()]).await.unwrap();
                    let n = read[0]
                        .as_deref()
                        .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
                    tokio::task::yield_now().await;
                    let commit = KvCommit {
                        checks: vec![KvCheck {
                            key: b"n".to_vec(),
                            expected: read[0].clone(),
                        }],
                        writes: vec![KvWrite::Put {
                            key: b"n".to_vec(),
                            value: (n + 1).to_be_bytes().to_vec(),
                        }],
                    };
                    match leases.commit(&ns, commit).await {
                        Ok(()) => break,
                        Err(KvError::Conflict { .. }) => continue,
                        Err(other) => panic!("{other}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let read = leases.get_many(&ns, &[b"n".to_vec()]).await.unwrap();
    assert_eq!(
        read[0]
            .as_deref()
            .map(|v| u64::from_be_bytes(v.try_into().unwrap())),
        Some(TASKS * INCREMENTS)
    );
    // A delete checked against the value applies; the key then reads absent.
    let commit = KvCommit {
        checks: vec![KvCheck {
            key: b"n".to_vec(),
            expected: read[0].clone(),
        }],
        writes: vec![KvWrite::Delete { key: b"n".to_vec() }],
    };
    leases.commit(&ns, commit).await.unwrap();
    assert_eq!(
        leases.get_many(&ns, &[b"n".to_vec()]).await.unwrap(),
        vec![None]
    );
}

/// What JetStream cannot do atomically is refused, naming the alternative, and changes nothing.
#[tokio::test]
async fn what_cannot_be_atomic_is_refused() {
    let harness = Harness::new();
    let leases: NatsLeaseStore = harness.store().await.lease_store();
    let ns = namespace();
    let two_keys = KvCommit {
        checks: vec![],
        writes: vec![
            KvWrite::Put {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
            },
            KvWrite::Put {
                key: b"b".to_vec(),
                value: b"2".to_vec(),
            },
        ],
    };
    let refused = leases.commit(&ns, two_keys).await.unwrap_err();
    assert!(matches!(refused, KvError::Invalid(_)), "{refused}");
    assert!(refused.to_string().contains("--metadata"), "{refused}");
    assert_eq!(
        leases.get_many(&ns, &[b"a".to_vec()]).await.unwrap(),
        vec![None]
    );
    let read = leases
        .get_many(&ns, &[b"a".to_vec(), b"b".to_vec()])
        .await
        .unwrap_err();
    assert!(read.to_string().contains("snapshot"), "{read}");
    assert!(matches!(
        leases.scan(&ns, b"", None, 10).await,
        Err(KvError::Invalid(_))
    ));
    assert!(matches!(leases.clear(&ns).await, Err(KvError::Invalid(_))));
}

/// Names with dots (allowed in topics and groups) map to distinct keys.
#[tokio::test]
async fn dotted_names_stay_distinct() {
    let harness = Harness::new();
    let store = harness.store().await;
    store.create_group(&record("a.b", "c", 1)).await.unwrap();
    store.create_group(&record("a", "b.c", 1)).await.unwrap();
    store.create_group(&record("a..b.", "c", 1)).await.unwrap();
    let listed: Vec<(String, String)> = store
        .list_groups()
        .await
        .unwrap()
        .into_iter()
        .map(|g| (g.topic.to_string(), g.group.to_string()))
        .collect();
    assert_eq!(
        listed,
        [("a", "b.c"), ("a..b.", "c"), ("a.b", "c")].map(|(t, g)| (t.to_owned(), g.to_owned()))
    );
}

/// A listing is one pass over the bucket: with many groups, some deleted and some written
/// again, it holds each live group once, as last written.
#[tokio::test]
async fn a_listing_of_many_groups_holds_each_live_one_once_as_last_written() {
    let harness = Harness::new();
    let store = harness.store().await;
    let names: Vec<String> = (0..300).map(|i| format!("g{i:03}")).collect();
    for name in &names {
        store
            .create_group(&record("orders", name, 1))
            .await
            .unwrap();
    }
    let topic = TopicName::parse("orders").unwrap();
    for (i, name) in names.iter().enumerate() {
        let group = GroupName::parse(name.as_str()).unwrap();
        match i % 3 {
            0 => assert!(store.delete_group(&topic, &group).await.unwrap()),
            1 => {
                let progress = PartitionProgress {
                    partition: 0,
                    committed: i as u64,
                    ..PartitionProgress::default()
                };
                store
                    .save_progress(&topic, &group, 0, &[progress])
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
    let listed = store.list_groups().await.unwrap();
    let expected: Vec<(String, u64)> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(i, name)| (name.clone(), if i % 3 == 1 { i as u64 } else { 0 }))
        .collect();
    let actual: Vec<(String, u64)> = listed
        .iter()
        .map(|g| (g.group.to_string(), g.partitions[0].committed))
        .collect();
    assert_eq!(actual, expected);
}

/// A group too large for one NATS message is refused with an error naming the limit and what
/// to do, and nothing is stored.
#[tokio::test]
async fn a_group_larger_than_a_message_is_refused_clearly() {
    let harness = Harness::new();
    let store = harness.store().await;
    let mut huge = record("orders", "billing", 1);
    // Acked ranges above the committed offset: 100,000 of them are about 2.5 MB of JSON.
    huge.partitions[0].acked = (0..100_000u64).map(|i| (10 + 3 * i, 11 + 3 * i)).collect();
    let error = store.create_group(&huge).await.unwrap_err();
    assert!(error.to_string().contains("max_payload"), "{error}");
    assert!(error.to_string().contains("--groups postgres"), "{error}");
    let topic = TopicName::parse("orders").unwrap();
    let group = GroupName::parse("billing").unwrap();
    assert!(store.load_group(&topic, &group).await.unwrap().is_none());
}

/// An unreachable server is a clear error saying how to start NATS.
#[tokio::test]
async fn an_unreachable_server_says_how_to_start_it() {
    let error = NatsGroupStore::open(NatsGroupStoreConfig {
        connect_timeout_ms: 500,
        ..NatsGroupStoreConfig::new("nats://127.0.0.1:1")
    })
    .await
    .unwrap_err();
    assert!(error.to_string().contains("nats-server"), "{error}");
    let error = NatsGroupStore::open(NatsGroupStoreConfig {
        bucket_prefix: "bad.prefix".into(),
        ..NatsGroupStoreConfig::new(nats_url())
    })
    .await
    .unwrap_err();
    assert!(error.to_string().contains("bucket_prefix"), "{error}");
}

/// Opened only to be read (`create_buckets: false`, as `proteus migrate-topics --groups-from`
/// does), a prefix with no buckets is refused, naming the option to check, and nothing is
/// created: the same open is refused again, until a server's open makes the buckets.
#[tokio::test]
async fn a_store_opened_to_read_refuses_missing_buckets_and_creates_none() {
    let harness = Harness::new();
    let reading = NatsGroupStoreConfig {
        create_buckets: false,
        ..harness.config.clone()
    };
    for _ in 0..2 {
        let error = NatsGroupStore::open(reading.clone()).await.err().unwrap();
        let message = error.to_string();
        assert!(
            message.contains(&format!("{}_GROUPS", harness.config.bucket_prefix))
                && message.contains("--groups-prefix"),
            "{message}"
        );
    }
    harness.store().await;
    NatsGroupStore::open(reading).await.unwrap();
}

/// With every connection cut, a save fails retriably (`Unavailable`) with an error naming the
/// server instead of hanging; once NATS is reachable again the store reconnects by itself and the next save
/// lands.
#[tokio::test]
async fn a_lost_connection_fails_clearly_and_reconnects() {
    let proxy = Proxy::start(host_port(&nats_url())).await;
    let mut harness = Harness::new();
    harness.config.url = format!("nats://127.0.0.1:{}", proxy.port);
    harness.config.request_timeout_ms = 1_000;
    harness.config.reconnect_delay_max_ms = 200;
    let store = harness.store().await;
    let (topic, group) = create_billing_group(&store).await;
    let progress = partition_1_at;

    proxy.stop();
    let started = Instant::now();
    match store.save_progress(&topic, &group, 0, &[progress(5)]).await {
        Err(StoreError::Unavailable(text)) => {
            assert!(text.contains(&harness.config.url), "{text}");
        }
        other => panic!("a save through a cut connection: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // The health check (`/readyz`, `proteus_backend_up`) says so too, within its bound.
    let check = Duration::from_millis(1_000);
    let started = Instant::now();
    let unhealthy = store.check_health(check).await.unwrap_err();
    assert!(unhealthy.contains(&harness.config.url), "{unhealthy}");
    assert!(started.elapsed() < Duration::from_secs(3), "{unhealthy}");

    proxy.restart().await;
    // Every store error is a backend error, which a retry may fix.
    let seven = [progress(7)];
    until_recovered(
        Duration::from_secs(15),
        |_| true,
        || store.save_progress(&topic, &group, 0, &seven),
    )
    .await;
    let loaded = open(NatsGroupStoreConfig {
        url: nats_url(),
        ..harness.config.clone()
    })
    .await
    .load_group(&topic, &group)
    .await
    .unwrap()
    .unwrap();
    assert_eq!(loaded.partitions[1].committed, 7);
    store.check_health(check).await.expect("healthy once back");
    proxy.stop();
}

/// The NATS server itself killed (`SIGKILL`) and started again on the same store (a server of
/// the test's own): `proteus_groups::crash`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_survives_a_killed_server_and_the_store_reconnects() {
    let server = PrivateNatsServer::start().await;
    let mut config = unique_config(&server.url());
    config.request_timeout_ms = 1_000;
    config.reconnect_delay_max_ms = 200;
    let store = Arc::new(open(config.clone()).await);
    proteus_groups::crash::progress_survives_a_crash(
        store,
        &config.url,
        || server.kill(),
        server.restart(),
        async { Arc::new(open(config.clone()).await) as Arc<dyn GroupStore> },
    )
    .await;
}

/// Buckets with 3 replicas on a cluster of three servers of the test's own: with the server
/// leading the groups bucket killed, the two left elect another leader and a save lands through
/// the same store (within the election's seconds), the saved progress reads back, and once the
/// node is back and caught up a new store reads it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_buckets_keep_progress_when_their_leader_is_killed() {
    let cluster = proteus_nats::test_support::PrivateNatsCluster::start().await;
    let mut config = unique_config(&cluster.url());
    config.replicas = 3;
    config.request_timeout_ms = 2_000;
    config.reconnect_delay_max_ms = 200;
    let store = open(config.clone()).await;
    let buckets = [config.groups_bucket(), config.leases_bucket()].map(|b| format!("KV_{b}"));
    for bucket in &buckets {
        assert_eq!(cluster.replicas_of(bucket).await, 3, "{bucket}");
    }
    let (topic, group) = create_billing_group(&store).await;
    let progress = partition_1_at;
    store
        .save_progress(&topic, &group, 0, &[progress(5)])
        .await
        .unwrap();

    let leader = cluster.leader_of(&buckets[0]).await;
    cluster.kill(leader);
    let saved = [progress(6)];
    until_recovered(
        Duration::from_secs(30),
        |error: &StoreError| matches!(error, StoreError::Unavailable(_)),
        || store.save_progress(&topic, &group, 0, &saved),
    )
    .await;
    let loaded = store.load_group(&topic, &group).await.unwrap().unwrap();
    assert_eq!(loaded.partitions[1].committed, 6, "saved with a node down");

    cluster.restart(leader).await;
    cluster.wait_until_current(&buckets[0]).await;
    let reopened = open(config).await;
    let loaded = reopened.load_group(&topic, &group).await.unwrap().unwrap();
    assert_eq!(loaded.partitions[1].committed, 6, "read by a new store");
}

/// While a cluster elects its metadata leader (the node that led it was killed) no consumer
/// can be created, so a listing reads each group by itself: it still answers, within seconds,
/// with every live group and without the deleted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_goes_on_while_the_metadata_leader_is_elected() {
    let cluster = proteus_nats::test_support::PrivateNatsCluster::start().await;
    let mut config = unique_config(&cluster.url());
    config.replicas = 3;
    let store = open(config.clone()).await;
    // The same bucket, read by a store that lists at most 2 keys one by one.
    let bounded = open(NatsGroupStoreConfig {
        listing_by_gets_keys_max: 2,
        ..config.clone()
    })
    .await;
    for group in ["audit", "billing", "shipping"] {
        store
            .create_group(&record("orders", group, 2))
            .await
            .unwrap();
    }
    let orders = TopicName::parse("orders").unwrap();
    let shipping = GroupName::parse("shipping").unwrap();
    assert!(store.delete_group(&orders, &shipping).await.unwrap());
    let bucket = format!("KV_{}", config.groups_bucket());
    let metadata_leader = cluster.metadata_leader().await;
    cluster.lead_elsewhere(&bucket, metadata_leader).await;
    cluster.wait_until_current(&bucket).await;
    cluster.kill(metadata_leader);
    let killed_at = Instant::now();
    let (listed, refused) = tokio::join!(
        async {
            let listed = store.list_groups().await;
            (listed, killed_at.elapsed())
        },
        bounded.list_groups()
    );
    let (listed, took) = listed;
    let listed: Vec<String> = listed
        .expect("a listing while the metadata leader is being elected")
        .into_iter()
        .map(|g| format!("{}/{}", g.topic, g.group))
        .collect();
    assert_eq!(listed, ["orders/audit", "orders/billing"]);
    assert!(
        took < Duration::from_secs(4),
        "the listing took {took:?} with the metadata leader down"
    );
    // Three keys (the deleted group's marker is one) are more than the bounded store reads
    // one by one: refused, retriably, saying which bound.
    match refused {
        Err(StoreError::Unavailable(message)) => assert!(
            message.contains("more than 2 keys (listing_by_gets_keys_max)"),
            "{message}"
        ),
        other => panic!("a listing of 3 keys by gets with a bound of 2 gave {other:?}"),
    }
    cluster.restart(metadata_leader).await;
}
