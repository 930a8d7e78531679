//! The RemoteCache conformance suite against a real Redis (`PROTEUS_TEST_REDIS_URL`, by default
//! `redis://127.0.0.1:6379`). Each test uses its own key prefix and deletes its keys afterwards.

mod cluster;
mod sentinel;
mod tls;

use std::sync::Arc;

use async_trait::async_trait;
use proteus_cache::RemoteCache;
use proteus_cache::conformance::CacheHarness;
use proteus_cache_redis::RedisRemoteCache;

fn redis_url() -> String {
    std::env::var("PROTEUS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

struct Harness {
    prefix: String,
    opened: tokio::sync::Mutex<Vec<RedisRemoteCache>>,
}

impl Harness {
    fn new() -> Self {
        Harness {
            prefix: format!("proteus-test:{}:", uuid::Uuid::now_v7()),
            opened: tokio::sync::Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl CacheHarness for Harness {
    async fn open(&self, namespace: &str) -> Arc<dyn RemoteCache> {
        let url = redis_url();
        let cache =
            match RedisRemoteCache::connect(&url, &format!("{}{namespace}:", self.prefix)).await {
                Ok(cache) => cache,
                Err(error) => panic!(
                    "Redis is not reachable at {url} ({error}). Start it with \
                 `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" \
                 --appendonly no`, or point PROTEUS_TEST_REDIS_URL at one."
                ),
            };
        self.opened.lock().await.push(cache.clone());
        Arc::new(cache)
    }

    async fn clean_up(&self) {
        let opened = self.opened.lock().await;
        for cache in opened.iter() {
            cache.clear_namespace().await.unwrap();
        }
        // Nothing of this test's prefix is left behind.
        if let Some(first) = opened.first() {
            let all = first.with_namespace(&self.prefix);
            assert_eq!(all.clear_namespace().await.unwrap(), 0);
        }
    }
}

proteus_cache::remote_cache_conformance_tests!(Harness::new());

#[tokio::test]
async fn glob_characters_in_a_namespace_are_escaped() {
    let harness = Harness::new();
    let odd = harness.open("a*[b]?").await;
    let plain = harness.open("a").await;
    plain
        .put_many(vec![("k".into(), bytes::Bytes::from_static(b"v"))], 60_000)
        .await
        .unwrap();
    odd.put_many(vec![("k".into(), bytes::Bytes::from_static(b"w"))], 60_000)
        .await
        .unwrap();
    let odd_cache = harness.opened.lock().await[0].clone();
    assert_eq!(odd_cache.clear_namespace().await.unwrap(), 1);
    assert_eq!(
        plain.get_many(&["k".into()]).await.unwrap(),
        vec![Some(bytes::Bytes::from_static(b"v"))]
    );
    harness.clean_up().await;
}

#[tokio::test]
async fn an_unreachable_server_is_named_without_its_password_and_how_to_start_it() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let error = match RedisRemoteCache::connect("redis://:s3cret@127.0.0.1:1/0", "p:").await {
        Ok(_) => panic!("connected to a port where nothing listens"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("cannot connect to Redis at redis://:***@127.0.0.1:1/0")
            && error.contains("redis-server --daemonize"),
        "{error}"
    );
    assert!(!error.contains("s3cret"), "{error}");
    let error = match RedisRemoteCache::connect("http://127.0.0.1:6379", "p:").await {
        Ok(_) => panic!("an http URL was taken for Redis"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("invalid Redis URL"), "{error}");
}
