//! The RemoteCache conformance suite on Redis found through Sentinel (`redis+sentinel://`),
//! a primary, its replica and a Sentinel of each test's own, and what only Sentinel can show:
//! after a failover the cache writes to the promoted replica, losing at most the calls in
//! flight; the same over TLS (`rediss+sentinel://`) with a CA made for the test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use proteus_cache::RemoteCache;
use proteus_cache::conformance::CacheHarness;
use proteus_cache_redis::test_support::PrivateRedisSentinel;
use proteus_cache_redis::{RedisRemoteCache, RedisTls};

struct SentinelHarness {
    setup: PrivateRedisSentinel,
}

impl SentinelHarness {
    fn start() -> SentinelHarness {
        SentinelHarness {
            setup: PrivateRedisSentinel::start(),
        }
    }
}

#[async_trait]
impl CacheHarness for SentinelHarness {
    async fn open(&self, namespace: &str) -> Arc<dyn RemoteCache> {
        let cache = RedisRemoteCache::connect(&self.setup.url(), &format!("{namespace}:"))
            .await
            .expect("the primary the private Sentinel names");
        Arc::new(cache)
    }
}

mod conformance {
    use super::SentinelHarness;

    proteus_cache::remote_cache_conformance_tests!(SentinelHarness::start());
}

#[tokio::test]
async fn after_a_failover_the_cache_writes_to_the_promoted_replica() {
    let setup = PrivateRedisSentinel::start();
    let cache = RedisRemoteCache::connect(&setup.url(), "failover:")
        .await
        .unwrap();
    follows_a_failover(&setup, &cache).await;
}

#[tokio::test]
async fn over_tls_the_cache_reaches_sentinels_and_primary_and_follows_a_failover() {
    let dir = tempfile::tempdir().unwrap();
    let made = crate::tls::make_certificates(dir.path());
    let setup = PrivateRedisSentinel::start_with(None, Some(made.server.clone()));
    assert!(setup.url().starts_with("rediss+sentinel://"));
    let with_ca = RedisTls {
        ca_file: Some(made.server.ca.clone()),
        ..RedisTls::default()
    };

    let refused = crate::tls::refusal(&setup.url(), &RedisTls::default()).await;
    assert!(
        refused.contains("TLS with Redis") && refused.contains("--cache-tls-ca"),
        "{refused}"
    );
    let plain = setup.url().replacen("rediss+", "redis+", 1);
    let refused = crate::tls::refusal(&plain, &with_ca).await;
    assert!(refused.contains("rediss+sentinel://"), "{refused}");

    let cache = RedisRemoteCache::connect_with(&setup.url(), "failover:", &with_ca)
        .await
        .expect("the primary the Sentinel names, over TLS");
    follows_a_failover(&setup, &cache).await;
}

/// Writes through `cache`, fails `setup` over, and checks that within 15 s and at most two
/// failed calls the cache writes to and reads from the promoted replica.
async fn follows_a_failover(setup: &PrivateRedisSentinel, cache: &RedisRemoteCache) {
    let one = |value: &'static [u8]| vec![("k".to_owned(), Bytes::from_static(value))];
    cache.put_many(one(b"before"), 60_000).await.unwrap();
    assert_eq!(
        setup.cli(setup.primary_port, &["GET", "failover:k"]).trim(),
        "before"
    );

    setup.fail_over();

    // The connection still points at the old primary. Until the Sentinel turns it into a
    // replica it takes writes (which its demotion discards, as Redis's asynchronous replication
    // does), then refuses them: that failed call makes the cache ask the Sentinel again, and
    // the next writes land on the promoted replica.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut failed_calls = 0;
    loop {
        match cache.put_many(one(b"after"), 60_000).await {
            Ok(()) if setup.cli(setup.replica_port, &["GET", "failover:k"]).trim() == "after" => {
                break;
            }
            Ok(()) => {}
            Err(_) => failed_calls += 1,
        }
        assert!(
            Instant::now() < deadline,
            "the cache did not write to the promoted replica within 15 s of the failover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        failed_calls <= 2,
        "{failed_calls} calls failed after the failover"
    );
    assert_eq!(
        cache.get_many(&["k".to_owned()]).await.unwrap(),
        vec![Some(Bytes::from_static(b"after"))]
    );
    cache
        .check_health(Duration::from_secs(2))
        .await
        .expect("PING on the new primary");
}

#[tokio::test]
async fn a_primary_name_the_sentinels_do_not_know_is_refused_with_what_to_check() {
    let setup = PrivateRedisSentinel::start();
    let url = format!("redis+sentinel://127.0.0.1:{}/nobody", setup.sentinel_port);
    let error = match RedisRemoteCache::connect(&url, "p:").await {
        Ok(_) => panic!("a primary no Sentinel monitors was reached"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("name no primary") && error.contains("sentinel monitor"),
        "{error}"
    );
}

#[tokio::test]
async fn sentinels_and_primary_with_a_password_as_helm_charts_set_them_up() {
    let setup = PrivateRedisSentinel::start_with_password(Some("s3cret"));
    let port = setup.sentinel_port;
    let with_both =
        format!("redis+sentinel://:s3cret@127.0.0.1:{port}/cache?sentinel_password=s3cret");
    let cache = RedisRemoteCache::connect(&with_both, "auth:")
        .await
        .unwrap();
    cache
        .put_many(vec![("k".to_owned(), Bytes::from_static(b"v"))], 60_000)
        .await
        .unwrap();
    assert_eq!(
        setup.cli(setup.primary_port, &["GET", "auth:k"]).trim(),
        "v"
    );

    for (url, says) in [
        (
            format!("redis+sentinel://:s3cret@127.0.0.1:{port}/cache"),
            "sentinel_password",
        ),
        (
            format!("redis+sentinel://127.0.0.1:{port}/cache?sentinel_password=s3cret"),
            "check the password in the URL",
        ),
    ] {
        let error = match RedisRemoteCache::connect(&url, "p:").await {
            Ok(_) => panic!("{url} logged in with a password missing"),
            Err(error) => error.to_string(),
        };
        assert!(
            error.contains("refused the login") && error.contains(says),
            "{url}: {error}"
        );
        assert!(!error.contains("s3cret"), "{error}");
    }
}

#[tokio::test]
async fn calls_stay_bounded_while_the_primary_hangs_and_follow_the_promoted_replica() {
    let setup = PrivateRedisSentinel::start();
    let cache = RedisRemoteCache::connect(&setup.url(), "hung:")
        .await
        .unwrap();
    let one = |value: &'static [u8]| vec![("k".to_owned(), Bytes::from_static(value))];
    cache.put_many(one(b"before"), 60_000).await.unwrap();

    // The primary stops answering; the Sentinel calls it down after 1 s and promotes the
    // replica. Meanwhile calls fail (the first at the 5 s bound, which drops the connection)
    // and then wait for a connection to whichever primary the Sentinel names: however many
    // wait at once, each ends within the bound.
    setup.wait_until_the_sentinel_knows_the_replica();
    setup.pause_primary();
    let paused = Instant::now();
    assert!(cache.get_many(&["k".to_owned()]).await.is_err());
    let calls = (0..8).map(|_| {
        let cache = cache.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = cache.put_many(one(b"during"), 60_000).await;
            (started.elapsed(), answer)
        })
    });
    for call in futures_util::future::join_all(calls).await {
        let (took, _) = call.unwrap();
        assert!(took < Duration::from_secs(12), "a call took {took:?}");
    }
    loop {
        let started = Instant::now();
        let written = cache.put_many(one(b"after"), 60_000).await;
        assert!(
            started.elapsed() < Duration::from_secs(12),
            "a call took {:?}",
            started.elapsed()
        );
        if written.is_ok() && setup.cli(setup.replica_port, &["GET", "hung:k"]).trim() == "after" {
            break;
        }
        assert!(
            paused.elapsed() < Duration::from_secs(45),
            "the cache does not write to the promoted replica 45 s after the primary hung ({written:?}; the Sentinel names port {})",
            setup.current_primary_port()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "the cache wrote to the promoted replica {:?} after the primary hung",
        paused.elapsed()
    );
    setup.resume_primary();
}
