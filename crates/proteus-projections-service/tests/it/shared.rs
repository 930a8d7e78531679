//! Shared mode: instances in one process sharing one event store, one read-model store and
//! one key-value store behave as one service: a projection runs on exactly one of them, moves
//! when its instance closes or dies, and is served and controlled through any of them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proteus_eventstore::MemoryEventStore;
use proteus_kv::{MemoryKvStore, Namespace};
use proteus_projections::{MemoryReadModelStore, RunState};
use proteus_projections_service::{
    ErrorKind, ProjectionService, ProjectionServiceConfig, RUNNERS_NAMESPACE, SharedMode,
};

use crate::support::{
    Rng, account_events, all_events, append, assert_same, balances, docs, expected, head,
};

const TTL_MS: u64 = 1_000;

struct Cluster {
    events: Arc<MemoryEventStore>,
    store: Arc<MemoryReadModelStore>,
    kv: Arc<MemoryKvStore>,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            events: Arc::new(MemoryEventStore::new()),
            store: Arc::new(MemoryReadModelStore::new()),
            kv: Arc::new(MemoryKvStore::new()),
        }
    }

    async fn instance(&self, id: &str) -> ProjectionService {
        let config = ProjectionServiceConfig {
            live_wait_ms: 200,
            retry_backoff_ms_min: 10,
            retry_backoff_ms_max: 200,
            ..Default::default()
        };
        let shared = SharedMode {
            lease_ttl_ms: TTL_MS,
            definitions_refresh_ms: 100,
            ..SharedMode::new(self.kv.clone(), id)
        };
        ProjectionService::open_shared(
            self.events.clone(),
            self.store.clone(),
            config,
            None,
            shared,
        )
        .await
        .unwrap()
    }

    async fn append_accounts(&self, from: u64, to: u64, rng: &mut Rng) {
        for account in from..to {
            append(
                self.events.as_ref(),
                &format!("acct-{account}"),
                account_events(account, rng, 8),
            )
            .await;
        }
    }

    /// The lease holder of `name`, as stored.
    async fn holder(&self, name: &str) -> Option<String> {
        let namespace = Namespace::parse(RUNNERS_NAMESPACE).unwrap();
        proteus_kv::lease::current(self.kv.as_ref(), &namespace, name.as_bytes())
            .await
            .unwrap()
            .filter(|lease| lease.expires_ms > now_ms())
            .map(|lease| lease.holder)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Polls `check` until it holds, failing after `within`.
async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Which of `instances` run `name` now.
fn runners(instances: &[(&str, &ProjectionService)], name: &str) -> Vec<String> {
    instances
        .iter()
        .filter(|(_, service)| service.runs_here(name))
        .map(|(id, _)| (*id).to_owned())
        .collect()
}

/// Waits until `service` has read `name` up to the head of the event store.
async fn settle(cluster: &Cluster, service: &ProjectionService, name: &str) {
    let head = head(cluster.events.as_ref()).await;
    let reached = service
        .wait_for_position(name, head, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(reached, "{name} did not reach {head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_created_on_one_instance_is_served_by_the_other_and_runs_once() {
    let cluster = Cluster::new();
    let mut rng = Rng::new(11);
    cluster.append_accounts(0, 20, &mut rng).await;
    let a = cluster.instance("a").await;
    let b = cluster.instance("b").await;
    a.create("balances", &balances(), None).await.unwrap();
    // B serves it at once (it loads what it has not seen yet from the store).
    let started = Instant::now();
    let status = b.status("balances").await.unwrap();
    assert_eq!(status.state, RunState::Running);
    b.query("balances", &Default::default()).await.unwrap();
    b.get("balances", "acct-1").await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    // And lists it after a refresh.
    eventually("B lists balances", Duration::from_secs(2), async || {
        b.list().await.iter().any(|s| s.name.as_str() == "balances")
    })
    .await;

    // Read-your-writes through the instance that does not run it.
    settle(&cluster, &b, "balances").await;
    let model = expected(&all_events(cluster.events.as_ref()).await);
    assert_same("balances on b", &docs(&b, "balances").await, &model[0]);
    let written = append(
        cluster.events.as_ref(),
        "acct-3",
        vec![(
            "Deposited",
            serde_json::json!({"owner": "owner-3", "amount": 5}),
        )],
    )
    .await;
    for service in [&a, &b] {
        assert!(
            service
                .wait_for_position("balances", written, Duration::from_secs(10))
                .await
                .unwrap()
        );
    }
    let model = expected(&all_events(cluster.events.as_ref()).await);
    assert_same("balances on a", &docs(&a, "balances").await, &model[0]);
    assert_same("balances on b", &docs(&b, "balances").await, &model[0]);

    // Exactly one instance runs it, the lease holder, and both statuses name it; never both
    // over several refreshes and lease renewals.
    let instances = [("a", &a), ("b", &b)];
    for _ in 0..30 {
        let running = runners(&instances, "balances");
        assert_eq!(running.len(), 1, "running on {running:?}");
        assert_eq!(
            cluster.holder("balances").await.as_deref(),
            Some(&*running[0])
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let running = runners(&instances, "balances").pop().unwrap();
    for service in [&a, &b] {
        let status = service.status("balances").await.unwrap();
        assert_eq!(status.runner.as_deref(), Some(&*running), "{status:?}");
        assert_eq!(status.lag, 0, "{status:?}");
    }
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projection_moves_when_its_instance_closes_or_dies_and_converges() {
    let cluster = Cluster::new();
    let mut rng = Rng::new(12);
    cluster.append_accounts(0, 10, &mut rng).await;
    let a = cluster.instance("a").await;
    let b = cluster.instance("b").await;
    // The creating instance holds the lease: it runs the projection.
    a.create("balances", &balances(), None).await.unwrap();
    assert!(a.runs_here("balances") && !b.runs_here("balances"));
    settle(&cluster, &a, "balances").await;

    // A graceful close releases the lease: B takes over at its next refresh.
    a.close().await;
    drop(a);
    let closed = Instant::now();
    eventually("B runs balances", Duration::from_secs(3), async || {
        b.runs_here("balances")
    })
    .await;
    eprintln!("taken over {:?} after a close", closed.elapsed());
    cluster.append_accounts(10, 20, &mut rng).await;
    settle(&cluster, &b, "balances").await;

    // An instance that dies (dropped without close) keeps its lease until it expires; then
    // another takes over.
    let c = cluster.instance("c").await;
    assert!(!c.runs_here("balances"));
    drop(b);
    let died = Instant::now();
    eventually(
        "C runs balances",
        Duration::from_millis(TTL_MS + 3_000),
        async || c.runs_here("balances"),
    )
    .await;
    eprintln!("taken over {:?} after a death", died.elapsed());
    cluster.append_accounts(20, 30, &mut rng).await;
    settle(&cluster, &c, "balances").await;

    // The same documents as the independent model and as a rebuild from zero.
    let model = expected(&all_events(cluster.events.as_ref()).await);
    let moved = docs(&c, "balances").await;
    assert_same("balances", &moved, &model[0]);
    c.create("rebuilt", &balances(), None).await.unwrap();
    settle(&cluster, &c, "rebuilt").await;
    assert_same("rebuilt", &docs(&c, "rebuilt").await, &moved);
    let status = c.status("balances").await.unwrap();
    assert_eq!(status.runner.as_deref(), Some("c"));
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_through_either_instance_takes_effect_where_it_runs() {
    let cluster = Cluster::new();
    let mut rng = Rng::new(13);
    cluster.append_accounts(0, 10, &mut rng).await;
    let a = cluster.instance("a").await;
    let b = cluster.instance("b").await;
    let instances = [("a", &a), ("b", &b)];
    a.create("balances", &balances(), None).await.unwrap();
    assert_eq!(runners(&instances, "balances"), ["a"]);
    settle(&cluster, &a, "balances").await;

    // Reset through B: A hands the projection over; B rebuilds it and runs it.
    let status = b.reset("balances").await.unwrap();
    assert_eq!(status.state, RunState::Running);
    assert_eq!(runners(&instances, "balances"), ["b"]);
    settle(&cluster, &a, "balances").await;
    let model = expected(&all_events(cluster.events.as_ref()).await);
    assert_same("after reset", &docs(&a, "balances").await, &model[0]);

    // Pause through A (B runs it): nobody runs it, both show it paused.
    let status = a.pause("balances").await.unwrap();
    assert_eq!(status.state, RunState::Paused);
    assert!(runners(&instances, "balances").is_empty());
    eventually("B shows paused", Duration::from_secs(2), async || {
        b.status("balances").await.unwrap().state == RunState::Paused
    })
    .await;
    cluster.append_accounts(10, 15, &mut rng).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(runners(&instances, "balances").is_empty());

    // Resume through B: it runs again, on one instance, and catches up.
    b.resume("balances").await.unwrap();
    eventually("one instance runs it", Duration::from_secs(2), async || {
        runners(&instances, "balances").len() == 1
    })
    .await;
    settle(&cluster, &a, "balances").await;
    let model = expected(&all_events(cluster.events.as_ref()).await);
    assert_same("after resume", &docs(&b, "balances").await, &model[0]);

    // Create is idempotent across instances, and conflicts across them too.
    a.create("balances", &balances(), None).await.unwrap();
    let conflict = b
        .create("balances", &crate::support::by_type(), None)
        .await
        .unwrap_err();
    assert_eq!(conflict.kind(), ErrorKind::Conflict);

    // Delete through the instance that does not run it stops it on the one that does.
    let running = runners(&instances, "balances").pop().unwrap();
    let other = if running == "a" { &b } else { &a };
    other.delete("balances").await.unwrap();
    assert!(runners(&instances, "balances").is_empty());
    for service in [&a, &b] {
        eventually("the other forgets it", Duration::from_secs(2), async || {
            service
                .status("balances")
                .await
                .is_err_and(|e| e.kind() == ErrorKind::NotFound)
                && service.list().await.is_empty()
        })
        .await;
    }
    assert_eq!(cluster.holder("balances").await, None);
    // Created again elsewhere, it starts from zero.
    a.create("balances", &balances(), None).await.unwrap();
    settle(&cluster, &b, "balances").await;
    let model = expected(&all_events(cluster.events.as_ref()).await);
    assert_same("recreated", &docs(&b, "balances").await, &model[0]);
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_started_together_share_the_saved_projections() {
    let cluster = Cluster::new();
    let mut rng = Rng::new(14);
    cluster.append_accounts(0, 5, &mut rng).await;
    {
        let first = cluster.instance("first").await;
        for name in ["p1", "p2", "p3", "p4"] {
            first.create(name, &balances(), None).await.unwrap();
        }
        first.close().await;
    }
    let a = cluster.instance("a").await;
    let b = cluster.instance("b").await;
    let instances = [("a", &a), ("b", &b)];
    eventually(
        "every projection runs once",
        Duration::from_secs(3),
        async || {
            ["p1", "p2", "p3", "p4"]
                .iter()
                .all(|name| runners(&instances, name).len() == 1)
        },
    )
    .await;
    cluster.append_accounts(5, 10, &mut rng).await;
    let model = expected(&all_events(cluster.events.as_ref()).await);
    for name in ["p1", "p2", "p3", "p4"] {
        settle(&cluster, &b, name).await;
        assert_same(name, &docs(&a, name).await, &model[0]);
        assert_eq!(runners(&instances, name).len(), 1);
    }
    a.close().await;
    b.close().await;
}

/// The same against the PostgreSQL read-model store, each instance with its own connection
/// pool on one schema (as separate processes would be).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_a_postgresql_read_model_store() {
    use proteus_projections_postgres::{PostgresReadModelConfig, PostgresReadModelStore};

    let url = std::env::var("PROTEUS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!(
        "proteus_rm_shared_{}_{}",
        std::process::id(),
        now_ms() % 1_000_000_000
    );
    let open = async || -> Arc<PostgresReadModelStore> {
        let config = PostgresReadModelConfig {
            pool_size_max: 4,
            ..PostgresReadModelConfig::new(url.clone(), schema.clone())
        };
        Arc::new(PostgresReadModelStore::open(config).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at {url} ({e}); start it or set PROTEUS_TEST_POSTGRES_URL")
        }))
    };
    let events = Arc::new(MemoryEventStore::new());
    let kv = Arc::new(MemoryKvStore::new());
    let instance = async |id: &str, store: Arc<PostgresReadModelStore>| {
        let shared = SharedMode {
            lease_ttl_ms: TTL_MS,
            definitions_refresh_ms: 100,
            ..SharedMode::new(kv.clone(), id)
        };
        ProjectionService::open_shared(
            events.clone(),
            store,
            ProjectionServiceConfig::default(),
            None,
            shared,
        )
        .await
        .unwrap()
    };
    let mut rng = Rng::new(15);
    for account in 0..10 {
        append(
            events.as_ref(),
            &format!("acct-{account}"),
            account_events(account, &mut rng, 8),
        )
        .await;
    }
    let a = instance("a", open().await).await;
    let b = instance("b", open().await).await;
    let instances = [("a", &a), ("b", &b)];
    a.create("balances", &balances(), None).await.unwrap();
    let status = b.status("balances").await.unwrap();
    assert_eq!(status.runner.as_deref(), Some("a"));
    let head = head(events.as_ref()).await;
    assert!(
        b.wait_for_position("balances", head, Duration::from_secs(30))
            .await
            .unwrap()
    );
    for _ in 0..10 {
        assert_eq!(runners(&instances, "balances"), ["a"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.close().await;
    eventually("B runs balances", Duration::from_secs(3), async || {
        b.runs_here("balances")
    })
    .await;
    for account in 10..20 {
        append(
            events.as_ref(),
            &format!("acct-{account}"),
            account_events(account, &mut rng, 8),
        )
        .await;
    }
    let head = crate::support::head(events.as_ref()).await;
    assert!(
        b.wait_for_position("balances", head, Duration::from_secs(30))
            .await
            .unwrap()
    );
    let model = expected(&all_events(events.as_ref()).await);
    assert_same("balances", &docs(&b, "balances").await, &model[0]);
    b.delete("balances").await.unwrap();
    b.close().await;
    drop((a, b));
    // Drop the schema with everything in it.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .unwrap();
}
