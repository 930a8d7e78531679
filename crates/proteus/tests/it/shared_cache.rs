//! Two `proteus serve` processes sharing PostgreSQL read models, a NATS log and a Redis cache
//! (the shared Redis, a Redis Cluster of the test's own, and a primary found through a Sentinel
//! of the test's own): a document read through one is fresh after the other's projection
//! commits a change (the invalidation travels through the log), never served stale from either
//! cache level.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::support::{ServerProcess, delete_streams, drop_schema, nats_url, postgres_url};

fn redis_url() -> String {
    std::env::var("PROTEUS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A name of its own for every shared resource; all are removed when the test ends (even when
/// it fails): the two PostgreSQL schemas, the NATS streams and the Redis keys.
struct Namespace(String);

impl Namespace {
    fn new() -> Namespace {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Namespace(format!("itcache{}x{nanos}", std::process::id()))
    }

    fn events_schema(&self) -> String {
        format!("{}_events", self.0)
    }

    fn models_schema(&self) -> String {
        format!("{}_models", self.0)
    }

    fn nats_prefix(&self) -> String {
        self.0.to_uppercase()
    }

    fn redis_prefix(&self) -> String {
        format!("{}:", self.0)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        for schema in [self.events_schema(), self.models_schema()] {
            drop_schema(&schema);
        }
        delete_streams(nats_url(), self.nats_prefix());
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let redis_prefix = self.redis_prefix();
        runtime.block_on(async {
            if let Ok(cache) =
                proteus_cache_redis::RedisRemoteCache::connect(&redis_url(), &redis_prefix).await
            {
                let _ = cache.clear_namespace().await;
            }
        });
    }
}

fn start(data_dir: &std::path::Path, namespace: &Namespace, cache_url: &str) -> ServerProcess {
    ServerProcess::start_with(
        data_dir,
        &[
            "--event-store",
            &postgres_url(),
            "--event-store-schema",
            &namespace.events_schema(),
            "--read-models",
            &postgres_url(),
            "--read-models-schema",
            &namespace.models_schema(),
            "--storage-log",
            &nats_url(),
            "--storage-log-prefix",
            &namespace.nats_prefix(),
            "--cache",
            cache_url,
            "--cache-prefix",
            &namespace.redis_prefix(),
        ],
        &[],
    )
}

#[test]
fn a_document_read_through_one_instance_is_fresh_after_the_other_commits() {
    a_document_stays_fresh_across_instances(&redis_url());
}

#[test]
fn the_same_on_a_redis_cluster() {
    let cluster = proteus_cache_redis::test_support::PrivateRedisCluster::start();
    a_document_stays_fresh_across_instances(&cluster.url());
}

#[test]
fn the_same_through_redis_sentinel() {
    let setup = proteus_cache_redis::test_support::PrivateRedisSentinel::start();
    a_document_stays_fresh_across_instances(&setup.url());
}

fn a_document_stays_fresh_across_instances(cache_url: &str) {
    let namespace = Namespace::new();
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = start(dirs[0].path(), &namespace, cache_url);
    let status = http
        .put(format!("{}/v1/projections/balances", a.url))
        .json(&json!({
            "source": {"category": "acct"},
            "state": {"key": "stream", "handlers": {
                "Deposited": {"increment": {"balance": {"path": "/data/amount"}}}}}
        }))
        .send()
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    // B starts after the projection exists, so it serves it too. Pausing it through B stops
    // B's runner only (A's keeps running): every change is then committed by A, and B's cache
    // can only learn of it through the invalidations A publishes to the log.
    let b = start(dirs[1].path(), &namespace, cache_url);
    let status = http
        .post(format!("{}/v1/projections/balances/pause", b.url))
        .send()
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");

    let deposit = |amount: i64| -> u64 {
        let response = http
            .post(format!("{}/v1/streams/acct-1", a.url))
            .json(&json!({"type": "Deposited", "data": {"amount": amount}}))
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        let body: Value = response.json().unwrap();
        body["last_position"].as_u64().unwrap()
    };
    let doc = |url: &str, wait: Option<u64>| -> Value {
        let query = match wait {
            Some(position) => format!("?wait_for_position={position}&wait_ms=10000"),
            None => String::new(),
        };
        http.get(format!("{url}/v1/projections/balances/docs/acct-1{query}"))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };

    let mut balance = 0;
    for amount in 1..=5 {
        let position = deposit(amount);
        balance += amount;
        // A has committed the change.
        let through_a = doc(&a.url, Some(position));
        assert_eq!(through_a["doc"]["balance"], balance, "{through_a}");
        // B, whose L1 (and the shared L2) held the previous value, serves the new one as soon
        // as the invalidation arrives: well within a second, far below the L1 lifetime.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let through_b = doc(&b.url, None);
            if through_b["doc"]["balance"] == balance {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "B still serves {through_b} after A committed balance {balance}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // And keeps serving it (the cache holds it now), from both instances.
        for _ in 0..3 {
            assert_eq!(doc(&b.url, None)["doc"]["balance"], balance);
            assert_eq!(doc(&a.url, None)["doc"]["balance"], balance);
        }
    }
    // The cache reports itself per level.
    let metrics = crate::support::metrics_text(&http, &b.url);
    for line in [
        "proteus_cache_hits_total{cache=\"projections\",level=\"l1\"}",
        "proteus_cache_misses_total{cache=\"projections\",level=\"l2\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }
    drop(a);
    drop(b);
}
