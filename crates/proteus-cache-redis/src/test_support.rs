//! What tests share (feature `test-support`, for tests only): a `redis-server` of a test's
//! own (plain or TLS-only), a Redis Cluster, and a primary with a replica watched by a
//! Sentinel (plain or over TLS).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NODES: usize = 3;
const SLOTS: u32 = 16_384;

/// Three `redis-server`s in cluster mode on free ports, each owning a third of the slots
/// (and, with [`start_with_replicas`](Self::start_with_replicas), a replica each), formed as
/// `redis-cli --cluster create` would (without its waits); killed (with their directory) when
/// dropped.
pub struct PrivateRedisCluster {
    /// The primaries' ports, in the order they were started.
    pub ports: Vec<u16>,
    /// The replicas' ports (none, or the replica of each primary, in the same order).
    pub replica_ports: Vec<u16>,
    /// Every node's cluster bus port, which `CLUSTER MEET` must be told (it assumes port +
    /// 10,000 otherwise).
    bus_ports: Vec<u16>,
    /// Every node: the primaries, then the replicas.
    nodes: Vec<Child>,
    /// Set when every node speaks only TLS (client and cluster bus).
    tls: Option<ServerTls>,
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

/// A free port on 127.0.0.1 for a server the test may kill and start again on it.
fn free_port() -> u16 {
    proteus_testkit::restartable_port()
}

/// `redis-cli -p PORT ARGS…`, its output.
pub fn cli(port: u16, args: &[&str]) -> String {
    cli_as(port, None, args)
}

/// `redis-cli -p PORT [-a PASSWORD] ARGS…`, its output.
pub fn cli_as(port: u16, password: Option<&str>, args: &[&str]) -> String {
    cli_with(port, password, None, args)
}

/// `redis-cli`, over TLS trusting `tls`'s CA when it is given.
fn cli_with(port: u16, password: Option<&str>, tls: Option<&ServerTls>, args: &[&str]) -> String {
    let mut command = redis_cli(tls);
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(password) = password {
        command.args(["--no-auth-warning", "-a", password]);
    }
    let output = command
        .args(args)
        .output()
        .expect("cannot run redis-cli; install Redis (Debian: apt install redis-server)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A `redis-cli` command, speaking TLS and trusting `tls`'s CA when it is given.
fn redis_cli(tls: Option<&ServerTls>) -> Command {
    let mut command = Command::new("redis-cli");
    if let Some(tls) = tls {
        command.args(["--tls", "--cacert"]).arg(&tls.ca);
    }
    command
}

impl PrivateRedisCluster {
    pub fn start() -> PrivateRedisCluster {
        Self::start_inner(false, None)
    }

    /// Every node listening on TLS only, the cluster bus included (`tls-cluster yes`), with
    /// `tls`'s certificate: clients connect with `rediss+cluster://`.
    pub fn start_over_tls(tls: ServerTls) -> PrivateRedisCluster {
        Self::start_inner(false, Some(tls))
    }

    /// Each primary with a replica, and nodes that declare a silent peer failed after 1 s (15 s
    /// by default), so a killed primary's replica takes over within seconds.
    pub fn start_with_replicas() -> PrivateRedisCluster {
        Self::start_inner(true, None)
    }

    fn start_inner(with_replicas: bool, tls: Option<ServerTls>) -> PrivateRedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = PrivateRedisCluster {
            ports: Vec::new(),
            replica_ports: Vec::new(),
            bus_ports: Vec::new(),
            nodes: Vec::new(),
            tls,
            dir,
        };
        let tls_cluster: &[&str] = if cluster.tls.is_some() {
            &["--tls-cluster", "yes"]
        } else {
            &[]
        };
        let node_count = if with_replicas { 2 * NODES } else { NODES };
        let node_timeout_ms = if with_replicas { "1000" } else { "15000" };
        for index in 0..node_count {
            let (port, bus_port) = (free_port(), free_port());
            let config_file = cluster.dir.path().join(format!("nodes-{index}.conf"));
            let config_file = config_file.to_string_lossy();
            let bus_port_text = bus_port.to_string();
            let mut args = vec![
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus_port_text,
                "--cluster-config-file",
                &config_file,
                "--cluster-node-timeout",
                node_timeout_ms,
            ];
            args.extend(tls_cluster);
            let node = redis_server(port, cluster.dir.path(), cluster.tls.as_ref(), &args);
            if index < NODES {
                cluster.ports.push(port);
            } else {
                cluster.replica_ports.push(port);
            }
            cluster.bus_ports.push(bus_port);
            cluster.nodes.push(node);
        }
        let every_port: Vec<u16> = cluster
            .ports
            .iter()
            .chain(&cluster.replica_ports)
            .copied()
            .collect();
        for &port in &every_port {
            wait_until(10, &format!("redis-server on {port} did not start"), || {
                cluster.cli(port, &["PING"]).trim() == "PONG"
            });
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
            let answer = cluster.cli(
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
        for (&port, &bus_port) in every_port.iter().zip(&cluster.bus_ports).skip(1) {
            let answer = cluster.cli(
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
        for &port in &every_port {
            wait_until(20, "the private Redis Cluster did not form", || {
                cluster
                    .cli(port, &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
            });
        }
        for (&primary, &replica) in cluster.ports.iter().zip(&cluster.replica_ports) {
            let primary_id = cluster.cli(primary, &["CLUSTER", "MYID"]).trim().to_owned();
            // Refused until the replica has heard of the primary through the cluster bus.
            wait_until(10, "CLUSTER REPLICATE was not accepted", || {
                cluster
                    .cli(replica, &["CLUSTER", "REPLICATE", &primary_id])
                    .trim()
                    == "OK"
            });
        }
        for &replica in &cluster.replica_ports {
            wait_until(20, "a replica did not catch up with its primary", || {
                cluster
                    .cli(replica, &["INFO", "replication"])
                    .contains("master_link_status:up")
            });
        }
        cluster
    }

    /// Whether the replica of primary `index` is now a primary (after that primary was killed,
    /// say), and the cluster answers again.
    pub fn replica_took_over(&self, index: usize) -> bool {
        let replica = self.replica_ports[index];
        self.cli(replica, &["ROLE"]).starts_with("master")
            && self
                .cli(replica, &["CLUSTER", "INFO"])
                .contains("cluster_state:ok")
    }

    /// Stops node `index` (`SIGSTOP`): it keeps its connections open and answers nothing, as
    /// a hung machine does, until [`resume_node`](Self::resume_node).
    pub fn pause_node(&self, index: usize) {
        signal(&self.nodes[index], "-STOP");
    }

    pub fn resume_node(&self, index: usize) {
        signal(&self.nodes[index], "-CONT");
    }

    /// Kills node `index` (`SIGKILL`), as a crash.
    pub fn kill_node(&mut self, index: usize) {
        let _ = self.nodes[index].kill();
        let _ = self.nodes[index].wait();
    }

    /// Starts moving `slots` slots, with their keys, from node `from` to node `to`, as an
    /// operator rebalancing the cluster does (`redis-cli --cluster reshard`: each slot marked
    /// migrating and importing, its keys sent with `MIGRATE`, then given to `to`). The
    /// `redis-cli` is returned running; [`SlotMove::finished`] says when it is done. Its output (a line
    /// per slot, more than a pipe holds) goes to `reshard.log` in the cluster's directory.
    pub fn start_moving_slots(&self, from: usize, to: usize, slots: u32) -> SlotMove {
        let id = |index: usize| {
            self.cli(self.ports[index], &["CLUSTER", "MYID"])
                .trim()
                .to_owned()
        };
        let log = self.dir.path().join("reshard.log");
        let output = std::fs::File::create(&log).unwrap();
        let errors = output.try_clone().unwrap();
        let child = redis_cli(self.tls.as_ref())
            .args(["--cluster", "reshard"])
            .arg(format!("127.0.0.1:{}", self.ports[0]))
            .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            // A few keys per MIGRATE, so moving a slot takes several steps during which its
            // keys are split between the two nodes (ASK redirections).
            .args(["--cluster-pipeline", "2"])
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .spawn()
            .expect("cannot run redis-cli; install Redis (Debian: apt install redis-server)");
        SlotMove { child, log }
    }

    /// `redis-cli` on one of this cluster's nodes (over TLS if the cluster speaks it).
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        cli_with(port, None, self.tls.as_ref(), args)
    }

    /// A cluster URL naming one node only: the client learns the others from it
    /// (`rediss+cluster://` over TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss+cluster"
        } else {
            "redis+cluster"
        };
        format!("{scheme}://127.0.0.1:{}", self.ports[1])
    }
}

/// A `redis-cli --cluster reshard` under way; killed if dropped before it finished.
pub struct SlotMove {
    child: Child,
    log: PathBuf,
}

impl SlotMove {
    /// Whether it is done; panics with its output if it failed.
    pub fn finished(&mut self) -> bool {
        let Some(status) = self.child.try_wait().unwrap() else {
            return false;
        };
        assert!(
            status.success(),
            "redis-cli --cluster reshard failed ({status}): {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        true
    }

    /// What `redis-cli --cluster reshard` printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SlotMove {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` (`-STOP`, `-CONT`) to `process`.
fn signal(process: &Child, signal: &str) {
    let status = Command::new("kill")
        .arg(signal)
        .arg(process.id().to_string())
        .status()
        .expect("cannot run kill");
    assert!(status.success(), "kill {signal} {} failed", process.id());
}

/// Waits (at most `seconds`) until `ready` holds, panicking with `what` after.
fn wait_until(seconds: u64, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within {seconds} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The files of a TLS-only `redis-server` (PEM): its certificate (valid for 127.0.0.1) and
/// key, and the CA that signed them, which also signs the certificates of clients it checks.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `tls-auth-clients yes`: a client must show a certificate the CA signed.
    pub check_clients: bool,
}

impl ServerTls {
    /// Its settings as configuration lines (`tls-port`, the files, and TLS for replication,
    /// so a replica and a Sentinel reach a primary that speaks only TLS).
    fn config_lines(&self, port: u16) -> String {
        format!(
            "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients {}\ntls-replication yes\n",
            self.cert.display(),
            self.key.display(),
            self.ca.display(),
            if self.check_clients { "yes" } else { "no" },
        )
    }
}

/// A `redis-server` on `port` (TLS only with `tls`; more flags in `args`), its output
/// discarded. It may not be listening yet: see [`wait_for_port`].
pub fn redis_server(port: u16, dir: &Path, tls: Option<&ServerTls>, args: &[&str]) -> Child {
    // The configuration file holds the listening settings: redis-server reads it before the
    // command line's flags.
    let config = dir.join(format!("redis-{port}.conf"));
    let listen = match tls {
        Some(tls) => tls.config_lines(port),
        None => format!("port {port}\n"),
    };
    std::fs::write(&config, format!("bind 127.0.0.1\n{listen}")).unwrap();
    Command::new("redis-server")
        .arg(&config)
        .arg("--dir")
        .arg(dir)
        .args(["--save", "", "--appendonly", "no"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run redis-server; install Redis (Debian: apt install redis-server)")
}

/// Waits (at most 10 s) until something listens on `port`.
pub fn wait_for_port(port: u16) {
    wait_until(10, &format!("nothing listens on port {port}"), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// A primary, its replica and one Sentinel watching them under the name `cache` (quorum 1,
/// down after 1 s), all on free ports, all asking for the same password if one is given and
/// all speaking only TLS if asked (as the Bitnami Helm chart sets them up); killed (with their
/// directory) when dropped.
pub struct PrivateRedisSentinel {
    pub primary_port: u16,
    pub replica_port: u16,
    pub sentinel_port: u16,
    password: Option<String>,
    tls: Option<ServerTls>,
    processes: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for PrivateRedisSentinel {
    fn drop(&mut self) {
        for process in &mut self.processes {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl PrivateRedisSentinel {
    pub const PRIMARY_NAME: &str = "cache";

    pub fn start() -> PrivateRedisSentinel {
        Self::start_with_password(None)
    }

    pub fn start_with_password(password: Option<&str>) -> PrivateRedisSentinel {
        Self::start_with(password, None)
    }

    /// With `tls`, every process listens on TLS only, replicates over it, and the Sentinel
    /// watches the primary over it.
    pub fn start_with(password: Option<&str>, tls: Option<ServerTls>) -> PrivateRedisSentinel {
        let dir = tempfile::tempdir().unwrap();
        let (primary_port, replica_port, sentinel_port) = (free_port(), free_port(), free_port());
        let auth: Vec<&str> = match password {
            Some(password) => vec!["--requirepass", password, "--masterauth", password],
            None => Vec::new(),
        };
        let primary = redis_server(primary_port, dir.path(), tls.as_ref(), &auth);
        let replica_dir = dir.path().join("replica");
        std::fs::create_dir(&replica_dir).unwrap();
        let primary_port_text = primary_port.to_string();
        let mut replica_args = vec!["--replicaof", "127.0.0.1", &primary_port_text];
        replica_args.extend(&auth);
        let replica = redis_server(replica_port, &replica_dir, tls.as_ref(), &replica_args);
        // Sentinel rewrites its configuration file: it needs one of its own.
        let config = dir.path().join("sentinel.conf");
        let name = Self::PRIMARY_NAME;
        let sentinel_auth = password.map_or(String::new(), |password| {
            format!("sentinel auth-pass {name} {password}\nrequirepass {password}\n")
        });
        let listen = match &tls {
            Some(tls) => tls.config_lines(sentinel_port),
            None => format!("port {sentinel_port}\n"),
        };
        std::fs::write(
            &config,
            format!(
                "{listen}bind 127.0.0.1\nsentinel monitor {name} 127.0.0.1 {primary_port} 1\nsentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\n{sentinel_auth}"
            ),
        )
        .unwrap();
        let sentinel = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run redis-server --sentinel");
        let setup = PrivateRedisSentinel {
            primary_port,
            replica_port,
            sentinel_port,
            password: password.map(str::to_owned),
            tls,
            processes: vec![primary, replica, sentinel],
            _dir: dir,
        };
        wait_until(10, "the replica did not catch up with the primary", || {
            setup
                .cli(replica_port, &["INFO", "replication"])
                .contains("master_link_status:up")
        });
        wait_until(10, "the Sentinel did not name the primary", || {
            setup.current_primary_port() == primary_port
        });
        setup
    }

    /// `redis-cli` on one of this setup's ports, with its password.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        cli_with(port, self.password.as_deref(), self.tls.as_ref(), args)
    }

    /// `redis+sentinel://127.0.0.1:SENTINEL/cache` (`rediss+sentinel://` over TLS; without
    /// the password).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss+sentinel"
        } else {
            "redis+sentinel"
        };
        format!(
            "{scheme}://127.0.0.1:{}/{}",
            self.sentinel_port,
            Self::PRIMARY_NAME
        )
    }

    /// The port of the primary the Sentinel names now.
    pub fn current_primary_port(&self) -> u16 {
        let answer = self.cli(
            self.sentinel_port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::PRIMARY_NAME],
        );
        answer
            .lines()
            .nth(1)
            .and_then(|port| port.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until the Sentinel knows the replica (it learns it from the primary's `INFO`,
    /// read every 10 s), without which it cannot promote it.
    pub fn wait_until_the_sentinel_knows_the_replica(&self) {
        let replica_port = self.replica_port.to_string();
        wait_until(30, "the Sentinel did not learn of the replica", || {
            self.cli(
                self.sentinel_port,
                &["SENTINEL", "REPLICAS", Self::PRIMARY_NAME],
            )
            .lines()
            .any(|line| line.trim() == replica_port)
        });
    }

    /// Stops the primary (`SIGSTOP`): it keeps its connections open and answers nothing, as a
    /// hung machine does; the Sentinel calls it down after 1 s and promotes the replica.
    pub fn pause_primary(&self) {
        signal(&self.processes[0], "-STOP");
    }

    pub fn resume_primary(&self) {
        signal(&self.processes[0], "-CONT");
    }

    /// Makes the Sentinel promote the replica (`SENTINEL FAILOVER`), and waits until it names
    /// the replica as the primary.
    pub fn fail_over(&self) {
        // Refused (NOGOODSLAVE) until the Sentinel has seen the replica in the primary's
        // INFO, which it reads every 10 s.
        wait_until(30, "SENTINEL FAILOVER was not accepted", || {
            self.cli(
                self.sentinel_port,
                &["SENTINEL", "FAILOVER", Self::PRIMARY_NAME],
            )
            .trim()
                == "OK"
        });
        wait_until(20, "the Sentinel did not promote the replica", || {
            self.current_primary_port() == self.replica_port
                && self.cli(self.replica_port, &["ROLE"]).starts_with("master")
        });
    }
}
