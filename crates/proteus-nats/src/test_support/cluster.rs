//! A JetStream cluster of a test's own: three `nats-server`s on 127.0.0.1, routed to each
//! other, so a test can create replicated streams (`replicas = 3`), kill a stream's leader
//! with `SIGKILL` while clients append, and start it again, as a node of a production cluster
//! fails.

use std::time::{Duration, Instant};

use super::{PrivateNatsServer, free_port, unique_tag};
use crate::client::{REPLICATED_SERVER_VERSION_MIN, version_at_least};

/// The nodes of a private cluster: the fewest that keep a majority with one of them down.
pub const NODES: usize = 3;

/// How long a stream may take to elect a leader, or bring a restarted replica up to date.
/// A stream elects a new leader seconds after the old one stops answering (4.2 to 8.4 s
/// measured on nats-server 2.12).
const CLUSTER_WAIT_S: u64 = 30;

/// Times a private cluster is started before a test gives up on it.
const START_ATTEMPTS_MAX: u32 = 3;

/// The `nats-server` a private cluster runs: `PROTEUS_TEST_NATS_CLUSTER_SERVER` (which
/// `scripts/test` sets to one it fetches, see `scripts/nats-cluster-server`), else the one
/// single servers run. Replicated streams need 2.11 or later (`REPLICATED_SERVER_VERSION_MIN`).
pub(super) fn binary() -> String {
    std::env::var("PROTEUS_TEST_NATS_CLUSTER_SERVER")
        .unwrap_or_else(|_| PrivateNatsServer::binary())
}

/// Fails the test, saying how to get one, unless [`binary`] is recent enough for replicated
/// streams.
fn check_binary_version() {
    let binary = binary();
    let output = std::process::Command::new(&binary)
        .arg("--version")
        .output()
        .unwrap_or_else(|error| panic!("cannot run {binary} --version: {error}"));
    // `nats-server: v2.12.8`
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    let version = printed
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let (major, minor) = REPLICATED_SERVER_VERSION_MIN;
    assert!(
        version_at_least(&version, REPLICATED_SERVER_VERSION_MIN),
        "the cluster tests need nats-server {major}.{minor} or later (replicated streams), and {binary} is {version:?}: run the tests with scripts/test, which fetches one (scripts/nats-cluster-server), or set PROTEUS_TEST_NATS_CLUSTER_SERVER to one"
    );
}

/// What makes a private server one node of a cluster: its name, its route port and the route
/// ports of every node (its own included, as a cluster's configuration usually lists them).
pub(super) struct ClusterMember {
    cluster_name: String,
    server_name: String,
    route_port: u16,
    route_ports: Vec<u16>,
    /// The HTTP monitoring port (`/jsz` says which node leads the metadata).
    monitor_port: u16,
}

impl ClusterMember {
    /// `nats-server` flags of this node.
    pub(super) fn args(&self) -> Vec<String> {
        let routes: Vec<String> = self
            .route_ports
            .iter()
            .map(|port| format!("nats-route://127.0.0.1:{port}"))
            .collect();
        vec![
            "--server_name".into(),
            self.server_name.clone(),
            "--cluster_name".into(),
            self.cluster_name.clone(),
            "--cluster".into(),
            format!("nats://127.0.0.1:{}", self.route_port),
            "--routes".into(),
            routes.join(","),
            "--http_port".into(),
            self.monitor_port.to_string(),
        ]
    }
}

/// Three `nats-server`s forming a JetStream cluster of one test's own (each with its own store
/// directory and ports), so the test can kill nodes without disturbing other tests. Every node
/// is killed, and its directory removed, when dropped.
pub struct PrivateNatsCluster {
    nodes: Vec<PrivateNatsServer>,
    /// Each node's HTTP monitoring port.
    monitor_ports: Vec<u16>,
    /// One client of every node, for the test's own questions (leaders, replicas): it moves
    /// to another node when the one it uses is killed.
    js: async_nats::jetstream::Context,
}

impl PrivateNatsCluster {
    /// Starts the three nodes and waits until each answers JetStream requests (which needs a
    /// metadata leader, elected once a majority runs). A cluster that does not come up (a node
    /// exited, its port taken by another test between `free_port` and its bind, or no answer)
    /// is started again on other ports, at most `START_ATTEMPTS_MAX` times in all.
    pub async fn start() -> PrivateNatsCluster {
        check_binary_version();
        let mut attempt = 1;
        let (nodes, monitor_ports) = loop {
            let (nodes, monitor_ports) = Self::spawn_nodes();
            let mut failure = None;
            for node in &nodes {
                if let Err(why) = node.until_answering().await {
                    failure = Some(why);
                    break;
                }
            }
            let Some(failure) = failure else {
                break (nodes, monitor_ports);
            };
            assert!(
                attempt < START_ATTEMPTS_MAX,
                "the private cluster did not start in {attempt} attempts: {failure}"
            );
            eprintln!(
                "the private cluster did not start ({failure}); starting it again on other ports"
            );
            attempt += 1;
        };
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(Duration::from_secs(2)))
            .reconnect_delay_callback(|_| Duration::from_millis(100))
            .connect(nodes.iter().map(PrivateNatsServer::url).collect::<Vec<_>>())
            .await
            .expect("no node of the private cluster answers");
        let cluster = PrivateNatsCluster {
            nodes,
            monitor_ports,
            js: async_nats::jetstream::new(client),
        };
        cluster.wait_until_every_node_takes_replicas().await;
        cluster
    }

    /// Waits (at most `CLUSTER_WAIT_S`) until a stream with a replica on every node can be
    /// created: a node answers before the metadata leader counts it online again, and until
    /// then creating a replicated stream fails ("no suitable peers for placement").
    async fn wait_until_every_node_takes_replicas(&self) {
        let js = &self.js;
        let name = format!("PTEST_PLACEMENT_{}", unique_tag());
        let config = async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("ptest.placement.{}", unique_tag())],
            num_replicas: NODES,
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(CLUSTER_WAIT_S);
        loop {
            match js.create_stream(config.clone()).await {
                Ok(_) => {
                    let _ = js.delete_stream(&name).await;
                    return;
                }
                Err(error) => assert!(
                    Instant::now() < deadline,
                    "no stream with {NODES} replicas can be created on the private cluster after {CLUSTER_WAIT_S} s: {error}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Three nodes on fresh ports and stores, started without waiting, and their monitoring
    /// ports.
    fn spawn_nodes() -> (Vec<PrivateNatsServer>, Vec<u16>) {
        let cluster_name = format!("ptest_{}", unique_tag());
        let route_ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let monitor_ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let nodes: Vec<PrivateNatsServer> = route_ports
            .iter()
            .enumerate()
            .map(|(node, &route_port)| {
                let member = ClusterMember {
                    cluster_name: cluster_name.clone(),
                    server_name: Self::server_name(node),
                    route_port,
                    route_ports: route_ports.clone(),
                    monitor_port: monitor_ports[node],
                };
                PrivateNatsServer::unstarted(None, None, Some(member))
            })
            .collect();
        for node in &nodes {
            node.spawn();
        }
        (nodes, monitor_ports)
    }

    fn server_name(node: usize) -> String {
        format!("n{node}")
    }

    /// Every node's URL, comma-separated, as a client of a cluster is configured.
    pub fn url(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(PrivateNatsServer::url).collect();
        urls.join(",")
    }

    /// Kills node `node` with `SIGKILL`.
    pub fn kill(&self, node: usize) {
        self.nodes[node].kill();
    }

    /// Starts node `node` again on its ports and store, and waits until it answers and the
    /// cluster places replicas on it again.
    pub async fn restart(&self, node: usize) {
        self.nodes[node].restart().await;
        self.wait_until_every_node_takes_replicas().await;
    }

    /// The stream's description as the cluster gives it now, or why not.
    async fn info(&self, stream: &str) -> Result<async_nats::jetstream::stream::Info, String> {
        let stream = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| e.to_string())?;
        Ok(stream.cached_info().clone())
    }

    /// The node leading `stream` once it has a leader (waits at most `CLUSTER_WAIT_S`).
    pub async fn leader_of(&self, stream: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(CLUSTER_WAIT_S);
        loop {
            let leader = self.info(stream).await.ok().and_then(|info| {
                let leader = info.cluster?.leader?;
                (0..NODES).find(|&node| Self::server_name(node) == leader)
            });
            if let Some(node) = leader {
                return node;
            }
            assert!(
                Instant::now() < deadline,
                "stream {stream} has no leader after {CLUSTER_WAIT_S} s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The node leading the cluster's metadata (which places every stream and consumer), as
    /// the running nodes' `/jsz` report it once one is elected (waits at most
    /// `CLUSTER_WAIT_S`).
    pub async fn metadata_leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(CLUSTER_WAIT_S);
        loop {
            for &port in &self.monitor_ports {
                let leader = reported_metadata_leader(port).await;
                if let Some(node) = (0..NODES).find(|&n| leader == Some(Self::server_name(n))) {
                    return node;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no node reports a metadata leader after {CLUSTER_WAIT_S} s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Moves the leadership of `stream` off node `node` (asking its leader to step down until
    /// another node leads it; at most `CLUSTER_WAIT_S`), so a test can kill `node` without
    /// touching `stream`'s leader.
    pub async fn lead_elsewhere(&self, stream: &str, node: usize) {
        let deadline = Instant::now() + Duration::from_secs(CLUSTER_WAIT_S);
        while self.leader_of(stream).await == node {
            assert!(
                Instant::now() < deadline,
                "stream {stream} is still led by node {node} after {CLUSTER_WAIT_S} s"
            );
            let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
            let _ = self.js.client().request(subject, "".into()).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// How many nodes hold `stream` (its leader and its replicas).
    pub async fn replicas_of(&self, stream: &str) -> usize {
        let info = self
            .info(stream)
            .await
            .unwrap_or_else(|error| panic!("cannot describe stream {stream}: {error}"));
        info.config.num_replicas
    }

    /// Waits (at most `CLUSTER_WAIT_S`) until `stream` has a leader and every other replica is
    /// online and up to date: after a node restarts, before the next one may be killed without
    /// losing the stream's majority.
    pub async fn wait_until_current(&self, stream: &str) {
        let deadline = Instant::now() + Duration::from_secs(CLUSTER_WAIT_S);
        loop {
            let current = self.info(stream).await.ok().is_some_and(|info| {
                info.cluster.is_some_and(|cluster| {
                    cluster.leader.is_some()
                        && cluster.replicas.len() + 1 == info.config.num_replicas
                        && cluster
                            .replicas
                            .iter()
                            .all(|peer| peer.current && !peer.offline)
                })
            });
            if current {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "stream {stream}'s replicas are not all up to date after {CLUSTER_WAIT_S} s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The metadata leader's server name as the node monitored on `port` reports it
/// (`GET /jsz`, `meta_cluster.leader`), or `None` if it does not answer or knows none.
async fn reported_metadata_leader(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const ANSWER_WAIT: Duration = Duration::from_secs(2);
    /// `/jsz` without details is a few hundred bytes.
    const ANSWER_BYTES_MAX: u64 = 1024 * 1024;
    let exchange = async {
        let mut connection = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        connection
            .write_all(b"GET /jsz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        (&mut connection)
            .take(ANSWER_BYTES_MAX)
            .read_to_end(&mut response)
            .await
            .ok()?;
        Some(response)
    };
    let response = tokio::time::timeout(ANSWER_WAIT, exchange).await.ok()??;
    let body_at = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let jsz: serde_json::Value = serde_json::from_slice(&response[body_at..]).ok()?;
    jsz["meta_cluster"]["leader"].as_str().map(str::to_owned)
}
