//! The RemoteCache conformance suite on a Redis Cluster of the test's own (three primaries on
//! ports of their own, slots split between them), reached with `redis+cluster://` and one seed
//! node, and what only a cluster can show: the keys of one call spread over every node.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use proteus_cache::RemoteCache;
use proteus_cache::conformance::CacheHarness;
use proteus_cache_redis::RedisRemoteCache;

const NODES: usize = 3;
const SLOTS: u32 = 16_384;

/// Three `redis-server`s in cluster mode, each owning a third of the slots; killed (with
/// their directory) when dropped.
struct PrivateRedisCluster {
    ports: Vec<u16>,
    /// Each node's cluster bus port, which `CLUSTER MEET` must be told (it assumes port +
    /// 10,000 otherwise).
    bus_ports: Vec<u16>,
    nodes: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Drop for PrivateRedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port()
}

/// `redis-cli -p PORT ARGS…`, its output.
fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("cannot run redis-cli; install Redis (Debian: apt install redis-server)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl PrivateRedisCluster {
    fn start() -> PrivateRedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = PrivateRedisCluster {
            ports: Vec::new(),
            bus_ports: Vec::new(),
            nodes: Vec::new(),
            dir,
        };
        for index in 0..NODES {
            let (port, bus_port) = (free_port(), free_port());
            let node = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-port", &bus_port.to_string()])
                .arg("--cluster-config-file")
                .arg(cluster.dir.path().join(format!("nodes-{index}.conf")))
                .arg("--dir")
                .arg(cluster.dir.path())
                .args(["--save", "", "--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect(
                    "cannot run redis-server; install Redis (Debian: apt install redis-server)",
                );
            cluster.ports.push(port);
            cluster.bus_ports.push(bus_port);
            cluster.nodes.push(node);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for &port in &cluster.ports {
            while cli(port, &["PING"]).trim() != "PONG" {
                assert!(
                    Instant::now() < deadline,
                    "redis-server on {port} did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // What `redis-cli --cluster create` does, without its waits: slots split in three,
        // then the first node meets the others.
        let per_node = SLOTS / NODES as u32;
        for (index, &port) in cluster.ports.iter().enumerate() {
            let first = per_node * index as u32;
            let last = if index == NODES - 1 {
                SLOTS - 1
            } else {
                first + per_node - 1
            };
            let answer = cli(
                port,
                &[
                    "CLUSTER",
                    "ADDSLOTSRANGE",
                    &first.to_string(),
                    &last.to_string(),
                ],
            );
            assert_eq!(answer.trim(), "OK", "ADDSLOTSRANGE on {port}: {answer}");
        }
        for (&port, &bus_port) in cluster.ports.iter().zip(&cluster.bus_ports).skip(1) {
            let answer = cli(
                cluster.ports[0],
                &[
                    "CLUSTER",
                    "MEET",
                    "127.0.0.1",
                    &port.to_string(),
                    &bus_port.to_string(),
                ],
            );
            assert_eq!(answer.trim(), "OK", "CLUSTER MEET {port}: {answer}");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for &port in &cluster.ports {
            while !cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(
                    Instant::now() < deadline,
                    "the private Redis Cluster did not form within 20 s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// A cluster URL naming one node only: the client learns the others from it.
    fn url(&self) -> String {
        format!("redis+cluster://127.0.0.1:{}", self.ports[1])
    }
}

struct ClusterHarness {
    cluster: PrivateRedisCluster,
    opened: tokio::sync::Mutex<Vec<RedisRemoteCache>>,
}

impl ClusterHarness {
    fn start() -> ClusterHarness {
        ClusterHarness {
            cluster: PrivateRedisCluster::start(),
            opened: tokio::sync::Mutex::new(Vec::new()),
        }
    }
}

#[async_trait]
impl CacheHarness for ClusterHarness {
    async fn open(&self, namespace: &str) -> Arc<dyn RemoteCache> {
        let cache = RedisRemoteCache::connect(&self.cluster.url(), &format!("{namespace}:"))
            .await
            .expect("the private Redis Cluster");
        self.opened.lock().await.push(cache.clone());
        Arc::new(cache)
    }
}

mod conformance {
    use super::ClusterHarness;

    proteus_cache::remote_cache_conformance_tests!(ClusterHarness::start());
}

#[tokio::test]
async fn the_keys_of_one_call_spread_over_every_node_and_come_back_in_order() {
    let harness = ClusterHarness::start();
    let cache = RedisRemoteCache::connect(&harness.cluster.url(), "spread:")
        .await
        .unwrap();
    let keys: Vec<String> = (0..200).map(|n| format!("key-{n}")).collect();
    let entries: Vec<(String, Bytes)> = keys
        .iter()
        .map(|key| (key.clone(), Bytes::from(format!("value of {key}"))))
        .collect();
    cache.put_many(entries.clone(), 60_000).await.unwrap();

    for &port in &harness.cluster.ports {
        let held: u64 = cli(port, &["DBSIZE"]).trim().parse().unwrap();
        assert!(
            held > 20,
            "node {port} holds {held} of 200 keys: they did not spread"
        );
    }
    let got = cache.get_many(&keys).await.unwrap();
    let expected: Vec<Option<Bytes>> = entries.into_iter().map(|(_, v)| Some(v)).collect();
    assert_eq!(got, expected);
    cache
        .check_health(Duration::from_secs(2))
        .await
        .expect("PING on every primary");

    cache.delete_many(&keys[..100]).await.unwrap();
    let got = cache.get_many(&keys).await.unwrap();
    assert!(got[..100].iter().all(Option::is_none));
    assert!(got[100..].iter().all(Option::is_some));
    assert_eq!(cache.clear_namespace().await.unwrap(), 100);
}

#[tokio::test]
async fn a_cluster_url_to_a_single_server_says_it_is_not_a_cluster() {
    let single = super::redis_url().replace("redis://", "redis+cluster://");
    let error = match RedisRemoteCache::connect(&single, "p:").await {
        Ok(_) => panic!("a single server was taken for a cluster"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("not a Redis Cluster") && error.contains("redis://HOST:PORT"),
        "{error}"
    );
}
