//! What the NATS adapters' integration tests share: the server they use, a TCP proxy in front
//! of it that can cut every connection or silently drop everything (restarting the shared
//! server would disturb every other test), a server of a test's own that it can kill and start
//! again, and deleting a test's streams.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

mod cluster;
use cluster::ClusterMember;
pub use cluster::PrivateNatsCluster;

/// The NATS server the tests use: `PROTEUS_TEST_NATS_URL`, or the local one.
pub fn nats_url() -> String {
    std::env::var("PROTEUS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A tag no other test of this run, or of another run, uses: process id, a counter and the
/// clock's nanoseconds, as `[0-9a-f_]` (valid in stream names and subject tokens alike).
pub fn unique_tag() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}_{n}_{nanos:x}", std::process::id())
}

/// `host:port` of the first server of a NATS URL.
pub fn host_port(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    rest.split(',').next().unwrap_or(rest).to_owned()
}

/// Forwards a local port to a server until stopped; can be started again on the same port,
/// and can turn into a black hole (see [`Proxy::black_hole_when_client_sends`]).
pub struct Proxy {
    pub port: u16,
    upstream: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    black_hole: Arc<BlackHole>,
}

/// When the proxy stops forwarding while keeping connections open.
#[derive(Default)]
struct BlackHole {
    /// The bytes a client write must contain to turn the black hole on.
    trigger: Mutex<Option<Vec<u8>>>,
    on: AtomicBool,
}

impl BlackHole {
    /// Turns the black hole on if `seen` (with the end of what came before it) holds the
    /// trigger; `tail` keeps the end of `seen` for a trigger split across two reads.
    fn watch(&self, tail: &mut Vec<u8>, seen: &[u8]) {
        let trigger = self.trigger.lock().expect("black hole trigger");
        let Some(trigger) = trigger.as_ref() else {
            return;
        };
        tail.extend_from_slice(seen);
        if tail.windows(trigger.len()).any(|window| window == trigger) {
            self.on.store(true, Ordering::SeqCst);
        }
        let keep = trigger.len().saturating_sub(1).min(tail.len());
        tail.drain(..tail.len() - keep);
    }
}

/// Copies `from` to `to` until either closes; with `watch`, looks in what it copies for the
/// black hole's trigger. While the black hole is on, reads and drops everything.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    black_hole: Arc<BlackHole>,
    watch: bool,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut tail = Vec::new();
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if watch {
            black_hole.watch(&mut tail, &buffer[..read]);
        }
        if black_hole.on.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    /// Listens on a port of its own and forwards every connection to `upstream`.
    pub async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", free_port()))
            .await
            .expect("cannot listen on 127.0.0.1");
        let port = listener
            .local_addr()
            .expect("a listener has an address")
            .port();
        let proxy = Proxy {
            port,
            upstream,
            tasks: Arc::new(Mutex::new(Vec::new())),
            black_hole: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let upstream = self.upstream.clone();
        let tasks = self.tasks.clone();
        let black_hole = self.black_hole.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = TcpStream::connect(upstream.as_str()).await else {
                    continue;
                };
                let (client_reads, client_writes) = client.into_split();
                let (server_reads, server_writes) = server.into_split();
                let mut tasks = tasks.lock().expect("proxy tasks");
                tasks.push(tokio::spawn(forward(
                    client_reads,
                    server_writes,
                    black_hole.clone(),
                    true,
                )));
                tasks.push(tokio::spawn(forward(
                    server_reads,
                    client_writes,
                    black_hole.clone(),
                    false,
                )));
            }
        });
        self.tasks.lock().expect("proxy tasks").push(accept);
    }

    /// From the first client write containing `trigger` on (that write included), forwards
    /// nothing more in either direction, on every connection, while keeping them open: a
    /// server that froze, or a network that drops everything, at the worst moment (for
    /// example just as a fetch is requested: `b"CONSUMER.MSG.NEXT"`). [`Proxy::stop`] ends it.
    pub fn black_hole_when_client_sends(&self, trigger: &[u8]) {
        assert!(!trigger.is_empty(), "a black hole needs a trigger");
        *self.black_hole.trigger.lock().expect("black hole trigger") = Some(trigger.to_vec());
    }

    /// Whether the black hole is on: the trigger was sent.
    pub fn is_black_hole(&self) -> bool {
        self.black_hole.on.load(Ordering::SeqCst)
    }

    /// Turns the proxy into a black hole at the next fetch request, runs `read`, and returns
    /// its error: the test fails if the read hangs (30 s), never asked for a fetch, succeeded,
    /// or failed later than 10 s (past a bounded timeout).
    pub async fn error_of_a_read_whose_fetch_is_never_answered<T, E>(
        &self,
        read: impl std::future::Future<Output = Result<T, E>>,
    ) -> E {
        self.black_hole_when_client_sends(b"CONSUMER.MSG.NEXT");
        let started = Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("the read hung: a fetch whose answer never came was waited for without bound");
        assert!(self.is_black_hole(), "the read never asked for its events");
        let Err(error) = read else {
            panic!("nothing was answered, yet the read succeeded");
        };
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the failure came after {:?}, past the bounded timeout",
            started.elapsed()
        );
        error
    }

    /// Closes the listener and every forwarded connection, and turns the black hole off.
    pub fn stop(&self) {
        *self.black_hole.trigger.lock().expect("black hole trigger") = None;
        self.black_hole.on.store(false, Ordering::SeqCst);
        for task in self.tasks.lock().expect("proxy tasks").drain(..) {
            task.abort();
        }
    }

    /// Listens again on the same port (waiting up to 10 s for the kernel to free it).
    pub async fn restart(&self) {
        let socket = TcpSocket::new_v4().expect("a socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        let deadline = Instant::now() + Duration::from_secs(10);
        let address = format!("127.0.0.1:{}", self.port)
            .parse()
            .expect("an address");
        loop {
            match socket.bind(address) {
                Ok(()) => break,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("cannot listen again on port {}: {error}", self.port),
            }
        }
        self.serve(socket.listen(64).expect("listening again"));
    }
}

/// How long a private server may take to answer JetStream requests once started.
/// A server of a cluster answers once the cluster has a metadata leader, which on 2 cores shared
/// with other suites starting clusters took over 20 s once in CI (2026-11-28).
const ANSWER_WAIT_S: u64 = 60;

/// A free port on 127.0.0.1 for a server the test may kill and start again on it.
fn free_port() -> u16 {
    proteus_testkit::restartable_port()
}

/// A `nats-server` of one test's own: JetStream on, its store in a fresh directory, listening
/// on a port of its own, so the test can kill it (`SIGKILL`, as a crash) and start it again on
/// the same port and store while the other tests keep the shared server. Killed, and its
/// directory removed, when dropped.
pub struct PrivateNatsServer {
    pub port: u16,
    store_dir: PathBuf,
    /// What clients must log in with (`--user`/`--pass`, or `--auth` for a token).
    login: Option<Login>,
    /// TLS the server requires, when set.
    tls: Option<ServerTls>,
    /// Its place in a [`PrivateNatsCluster`], when it is one of its nodes.
    cluster: Option<ClusterMember>,
    process: Mutex<Option<Child>>,
}

/// The TLS a private server requires: its certificate and key (PEM files), and when clients
/// must present a certificate, the CA that signs theirs (`--tlsverify`).
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub verify_clients_ca_file: Option<PathBuf>,
}

/// How a private server's clients authenticate.
#[derive(Clone, Debug)]
pub enum Login {
    UserPassword(String, String),
    Token(String),
    /// One user, known by the public key of this seed (`authorization { users = [{ nkey }] }`).
    Nkey {
        seed: String,
    },
    /// Operator (decentralized JWT) mode: the server trusts one operator and knows one
    /// account with JetStream; `user_creds` logs in a user of that account.
    Operator(OperatorLogin),
}

impl Login {
    /// A fresh user NKEY.
    pub fn new_nkey_user() -> Login {
        let user = nkeys::KeyPair::new_user();
        Login::Nkey {
            seed: user.seed().expect("a generated key has a seed"),
        }
    }
}

/// An operator, its system account (JetStream needs one), an account it signed (JetStream
/// allowed) and a user the account signed, as `nsc` would make them; `user_creds` is the user's
/// `.creds` file.
#[derive(Clone, Debug)]
pub struct OperatorLogin {
    pub operator_jwt: String,
    /// Public key and JWT of each account the server must know.
    pub accounts: Vec<(String, String)>,
    pub user_creds: String,
}

impl OperatorLogin {
    pub fn generate() -> OperatorLogin {
        let operator = nkeys::KeyPair::new_operator();
        let system = nkeys::KeyPair::new_account();
        let account = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        let unlimited = -1;
        let operator_jwt = signed_jwt(
            &operator,
            &operator.public_key(),
            serde_json::json!({
                "type": "operator",
                "version": 2,
                "system_account": system.public_key(),
            }),
        );
        let system_jwt = signed_jwt(
            &operator,
            &system.public_key(),
            serde_json::json!({ "type": "account", "version": 2 }),
        );
        let account_jwt = signed_jwt(
            &operator,
            &account.public_key(),
            serde_json::json!({
                "type": "account",
                "version": 2,
                "limits": {
                    "subs": unlimited, "data": unlimited, "payload": unlimited,
                    "imports": unlimited, "exports": unlimited, "wildcards": true,
                    "conn": unlimited, "leaf": unlimited,
                    "mem_storage": unlimited, "disk_storage": unlimited,
                    "streams": unlimited, "consumer": unlimited,
                },
            }),
        );
        let user_jwt = signed_jwt(
            &account,
            &user.public_key(),
            serde_json::json!({
                "type": "user", "version": 2, "pub": {}, "sub": {},
                "subs": unlimited, "data": unlimited, "payload": unlimited,
            }),
        );
        let seed = user.seed().expect("a generated key has a seed");
        OperatorLogin {
            operator_jwt,
            accounts: vec![
                (system.public_key(), system_jwt),
                (account.public_key(), account_jwt),
            ],
            user_creds: format!(
                "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
            ),
        }
    }
}

/// A NATS JWT (`ed25519-nkey`) with `nats` as its NATS claims, signed by `issuer`.
fn signed_jwt(issuer: &nkeys::KeyPair, subject: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let issued_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    let header = encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": unique_tag(),
        "iat": issued_at,
        "iss": issuer.public_key(),
        "name": "proteus-test",
        "sub": subject,
        "nats": nats,
    });
    let claims = encode(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{claims}");
    let signature = issuer
        .sign(signing_input.as_bytes())
        .expect("a generated key signs");
    format!("{signing_input}.{}", encode(&signature))
}

impl PrivateNatsServer {
    /// The binary: `PROTEUS_TEST_NATS_SERVER`, else `nats-server` on the `PATH`, else
    /// `/usr/sbin/nats-server` (Debian's package).
    fn binary() -> String {
        if let Ok(path) = std::env::var("PROTEUS_TEST_NATS_SERVER") {
            return path;
        }
        let on_path = std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join("nats-server").is_file())
        });
        if on_path {
            "nats-server".into()
        } else {
            "/usr/sbin/nats-server".into()
        }
    }

    /// Starts a server and waits until JetStream answers (at most `ANSWER_WAIT_S`).
    pub async fn start() -> PrivateNatsServer {
        Self::start_with_login(None).await
    }

    /// Starts a server whose clients must log in, and waits until JetStream answers.
    pub async fn start_with_login(login: Option<Login>) -> PrivateNatsServer {
        Self::start_with(login, None).await
    }

    /// Starts a server with a login and TLS of its own, and waits until it answers (with TLS,
    /// until it greets a TCP client: the readiness check has no certificate to present).
    pub async fn start_with(login: Option<Login>, tls: Option<ServerTls>) -> PrivateNatsServer {
        let server = PrivateNatsServer::unstarted(login, tls, None);
        server.restart().await;
        server
    }

    /// A server on a free port with a fresh store directory, not running yet.
    fn unstarted(
        login: Option<Login>,
        tls: Option<ServerTls>,
        cluster: Option<ClusterMember>,
    ) -> PrivateNatsServer {
        PrivateNatsServer {
            port: free_port(),
            store_dir: std::env::temp_dir().join(format!("proteus-nats-{}", unique_tag())),
            login,
            tls,
            cluster,
            process: Mutex::new(None),
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server with `SIGKILL` and waits for it to be gone.
    pub fn kill(&self) {
        if let Some(mut child) = self.process.lock().expect("server process").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on its port and store, and waits until JetStream answers.
    pub async fn restart(&self) {
        self.kill();
        self.spawn();
        self.wait_until_answering().await;
    }

    /// A cluster's node runs the cluster's binary, which may be newer.
    fn binary_to_run(&self) -> String {
        match self.cluster {
            Some(_) => cluster::binary(),
            None => Self::binary(),
        }
    }

    /// Starts the process, without waiting for it: a cluster's nodes answer JetStream requests
    /// only once a majority of them run.
    fn spawn(&self) {
        let binary = self.binary_to_run();
        let mut command = Command::new(&binary);
        command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store_dir);
        match &self.login {
            Some(Login::UserPassword(user, password)) => {
                command.args(["--user", user, "--pass", password]);
            }
            Some(Login::Token(token)) => {
                command.args(["--auth", token]);
            }
            Some(Login::Nkey { seed }) => {
                let public_key = nkeys::KeyPair::from_seed(seed)
                    .expect("a valid seed")
                    .public_key();
                command.arg("-c").arg(self.config_file(&format!(
                    "authorization {{ users = [ {{ nkey: \"{public_key}\" }} ] }}\n"
                )));
            }
            Some(Login::Operator(login)) => {
                let preload: Vec<String> = login
                    .accounts
                    .iter()
                    .map(|(public_key, jwt)| format!("{public_key}: \"{jwt}\""))
                    .collect();
                command.arg("-c").arg(self.config_file(&format!(
                    "operator: \"{}\"\nresolver: MEMORY\nresolver_preload: {{ {} }}\n",
                    login.operator_jwt,
                    preload.join(", ")
                )));
            }
            None => {}
        }
        if let Some(tls) = &self.tls {
            command
                .args(["--tls", "--tlscert"])
                .arg(&tls.cert_file)
                .arg("--tlskey")
                .arg(&tls.key_file);
            if let Some(ca_file) = &tls.verify_clients_ca_file {
                command.args(["--tlsverify", "--tlscacert"]).arg(ca_file);
            }
        }
        if let Some(member) = &self.cluster {
            command.args(member.args());
        }
        // Its own messages (a port already taken, say) go to a file beside the store, so a
        // server that exits at start-up can say why.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .expect("cannot create the private nats-server's log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run {binary}: {error}; install NATS (Debian: apt install nats-server) or set PROTEUS_TEST_NATS_SERVER to its path"
                )
            });
        *self.process.lock().expect("server process") = Some(child);
    }

    /// Waits until the server answers JetStream requests (at most `ANSWER_WAIT_S`).
    async fn wait_until_answering(&self) {
        if let Err(failure) = self.until_answering().await {
            panic!("{failure}");
        }
    }

    /// Waits until the server answers JetStream requests (at most `ANSWER_WAIT_S`); why not
    /// otherwise, telling a process that exited (a port taken between `free_port` and the
    /// server's bind, for one) from one that never answered.
    async fn until_answering(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(ANSWER_WAIT_S);
        loop {
            if self.jetstream_answers().await {
                return Ok(());
            }
            let exited = match self.process.lock().expect("server process").as_mut() {
                Some(child) => child.try_wait().ok().flatten(),
                None => None,
            };
            let what = format!("{} on port {}", self.binary_to_run(), self.port);
            if let Some(status) = exited {
                return Err(format!(
                    "{what} exited at start-up ({status}); its last lines:\n{}",
                    self.log_tail()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{what} did not answer within {ANSWER_WAIT_S} s; its last lines:\n{}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Where its standard error goes.
    fn log_file(&self) -> PathBuf {
        self.store_dir.with_extension("log")
    }

    /// The last lines it wrote.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn jetstream_answers(&self) -> bool {
        if self.tls.is_some() {
            return self.greets().await;
        }
        let options = match &self.login {
            Some(Login::UserPassword(user, password)) => {
                async_nats::ConnectOptions::with_user_and_password(user.clone(), password.clone())
            }
            Some(Login::Token(token)) => async_nats::ConnectOptions::with_token(token.clone()),
            Some(Login::Nkey { seed }) => async_nats::ConnectOptions::with_nkey(seed.clone()),
            Some(Login::Operator(login)) => {
                async_nats::ConnectOptions::with_credentials(&login.user_creds)
                    .expect("the generated credentials parse")
            }
            None => async_nats::ConnectOptions::new(),
        };
        let Ok(client) = options
            .connection_timeout(Duration::from_millis(500))
            .connect(self.url())
            .await
        else {
            return false;
        };
        let check = crate::client::jetstream_answers(&client);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), check).await,
            Ok(Ok(()))
        )
    }
}

impl PrivateNatsServer {
    /// Writes the server's configuration file (beside its store) and returns its path.
    fn config_file(&self, text: &str) -> PathBuf {
        let path = self.store_dir.with_extension("conf");
        std::fs::write(&path, text).expect("cannot write the nats-server configuration");
        path
    }

    /// Whether the server sends its `INFO` greeting to a new TCP connection.
    async fn greets(&self) -> bool {
        use tokio::io::AsyncReadExt;
        let Ok(Ok(mut stream)) = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(("127.0.0.1", self.port)),
        )
        .await
        else {
            return false;
        };
        let mut greeting = [0u8; 4];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut greeting)).await,
            Ok(Ok(_)) if &greeting == b"INFO"
        )
    }
}

impl Drop for PrivateNatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store_dir);
        let _ = std::fs::remove_file(self.store_dir.with_extension("conf"));
        let _ = std::fs::remove_file(self.log_file());
    }
}

/// Deletes every stream named `<stream_prefix>_…` on a runtime of its own, so it can be
/// called from `Drop`.
pub fn delete_streams(url: String, stream_prefix: String) {
    let cleanup = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            let Ok(client) = async_nats::connect(url.as_str()).await else {
                return;
            };
            let js = async_nats::jetstream::new(client.clone());
            let prefix = format!("{stream_prefix}_");
            let mut names = Vec::new();
            let mut streams = js.stream_names();
            while let Some(Ok(name)) = streams.next().await {
                if name.starts_with(&prefix) {
                    names.push(name);
                }
            }
            for name in names {
                let _ = js.delete_stream(&name).await;
            }
            let _ = client.flush().await;
        });
    });
    let _ = cleanup.join();
}

/// Calls `attempt` every 100 ms until it succeeds, as a client would after an outage, and
/// returns what it gave: the test fails if an attempt fails with an error `retriable` does not
/// accept (a retry cannot fix it) or if none succeeds within `within` (the adapter did not
/// reconnect by itself).
pub async fn until_recovered<T, E, Fut>(
    within: Duration,
    retriable: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> Fut,
) -> T
where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(error) if retriable(&error) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) if retriable(&error) => {
                panic!("not recovered by itself within {within:?}: {error}")
            }
            Err(error) => panic!("failed, and not retriably: {error}"),
        }
    }
}

/// Certificates of a CA made for the test, as PEM files (shared with the other adapters' tests).
pub use proteus_testkit::tls::{TlsFiles, make_tls_files};
