//! What the PostgreSQL adapters' tests share (feature `test-support`, for tests only): the
//! server to test against, a message saying how to start it, an admin connection, schemas
//! that drop themselves, and a server of a test's own that it can kill and start again.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::START_HINT;

/// Where the tests find PostgreSQL when `PROTEUS_TEST_POSTGRES_URL` is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The PostgreSQL the tests use: `PROTEUS_TEST_POSTGRES_URL`, or the local one.
pub fn url() -> String {
    std::env::var("PROTEUS_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// What a test says when PostgreSQL cannot be reached: how to start it.
pub fn unreachable(error: impl std::fmt::Display) -> String {
    format!(
        "PostgreSQL is not reachable at {} ({error}). These tests need it: {START_HINT}, with trust authentication for 127.0.0.1 and a database named test (createdb -U postgres test), or set PROTEUS_TEST_POSTGRES_URL",
        url()
    )
}

/// A connection of its own, for what tests do behind a store's back.
pub async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls)
        .await
        .unwrap_or_else(|e| panic!("{}", unreachable(e)));
    tokio::spawn(connection);
    client
}

/// A name no other test, in this process or another, uses: `<tag>_<pid>_<n>_<nanos>`.
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{tag}_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Drops `schema` and everything in it, from any context (a runtime or none, after a panic).
pub fn drop_schema(schema: &str) {
    let schema = schema.to_owned();
    // Drop may run inside a runtime: use a thread with its own.
    let dropped = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        runtime.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url(), NoTls).await?;
            tokio::spawn(connection);
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .await
        })
    })
    .join();
    if let Ok(Err(error)) = dropped {
        eprintln!("could not drop a test schema: {error}");
    }
}

/// A schema for one test, named after `tag` and unique, dropped (with everything in it) when
/// this is dropped.
pub struct TestSchema {
    pub name: String,
}

impl TestSchema {
    pub fn new(tag: &str) -> Self {
        TestSchema {
            name: unique_name(tag),
        }
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        drop_schema(&self.name);
    }
}

/// A PostgreSQL server of one test's own, in a fresh data directory (`initdb`, trust
/// authentication, `fsync` on), listening on a port of its own, so the test can kill it
/// (`SIGKILL` to the postmaster and every backend, as a crash) and start it again, which runs
/// crash recovery, while the other tests keep the shared server. Killed, and its directory
/// removed, when dropped. Run as root (as CI does), it runs the server as the `postgres` user,
/// since PostgreSQL refuses to run as root.
pub struct PrivatePostgres {
    pub port: u16,
    bin_dir: PathBuf,
    data_dir: PathBuf,
    /// The user and group to run as, when this process is root.
    run_as: Option<(u32, u32)>,
    postmaster: Mutex<Option<Child>>,
}

impl PrivatePostgres {
    /// Creates the cluster and starts it (waiting until it answers, at most [`START_WAIT_S`]).
    pub async fn start() -> PrivatePostgres {
        let bin_dir = postgres_bin_dir();
        let port = proteus_testkit::restartable_port();
        let data_dir = std::env::temp_dir().join(unique_name("proteus-pg"));
        std::fs::create_dir(&data_dir).expect("cannot create a data directory");
        let root = std::fs::metadata("/proc/self").is_ok_and(|me| me.uid() == 0);
        let run_as = root.then(|| {
            let ids = postgres_user_ids();
            std::os::unix::fs::chown(&data_dir, Some(ids.0), Some(ids.1))
                .expect("cannot give the data directory to the postgres user");
            ids
        });
        let server = PrivatePostgres {
            port,
            bin_dir,
            data_dir,
            run_as,
            postmaster: Mutex::new(None),
        };
        let mut initdb = server.command("initdb");
        initdb
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "-D",
            ])
            .arg(&server.data_dir);
        let output = initdb.output().expect("cannot run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        server.start_and_wait().await;
        server
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command.stdin(Stdio::null());
        command
    }

    /// Turns TLS on with this certificate chain and key (PEM), and restarts the server. The
    /// files go in the data directory, owned by the server's user and readable by it alone,
    /// as PostgreSQL requires of a key.
    pub async fn enable_tls(&self, certificate_pem: &str, key_pem: &str) {
        self.write_server_file("server.crt", certificate_pem);
        self.write_server_file("server.key", key_pem);
        self.configure("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'");
        self.stop_and_start().await;
    }

    /// Makes `user` (created here) able to log in only over TLS with a client certificate
    /// signed by the CA `ca_pem` whose common name is `user` (`cert` authentication), and
    /// restarts the server. Other users keep trust authentication. Call after
    /// [`enable_tls`](Self::enable_tls).
    pub async fn require_client_certificate(&self, user: &str, ca_pem: &str) {
        self.admin()
            .await
            .batch_execute(&format!("CREATE ROLE \"{user}\" LOGIN SUPERUSER"))
            .await
            .expect("cannot create the certificate's role");
        self.write_server_file("root.crt", ca_pem);
        self.configure("ssl_ca_file = 'root.crt'");
        // The first line that matches decides: the user by certificate over TLS, never plain.
        self.authenticate_first(&format!(
            "hostssl all {user} 127.0.0.1/32 cert\nhost all {user} 127.0.0.1/32 reject"
        ));
        self.stop_and_start().await;
    }

    /// Makes `user` (created here) log in with `password` only (`scram-sha-256` in
    /// `pg_hba.conf`), and restarts the server; other users keep trust authentication.
    pub async fn require_password(&self, user: &str, password: &str) {
        self.admin()
            .await
            .batch_execute(&format!(
                "SET password_encryption = 'scram-sha-256'; CREATE ROLE \"{user}\" LOGIN SUPERUSER PASSWORD '{password}'"
            ))
            .await
            .expect("cannot create the role");
        self.authenticate_first(&format!("host all {user} 127.0.0.1/32 scram-sha-256"));
        // A restart rather than a reload: it returns once the server answers with the rule.
        self.stop_and_start().await;
    }

    /// A connection as the `postgres` superuser (trust authentication).
    pub async fn admin(&self) -> tokio_postgres::Client {
        let (admin, connection) = tokio_postgres::connect(&self.url(), NoTls)
            .await
            .expect("cannot connect to the private PostgreSQL");
        tokio::spawn(connection);
        admin
    }

    /// Appends settings to `postgresql.conf` (read at the next start).
    fn configure(&self, settings: &str) {
        let conf = self.data_dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("cannot read postgresql.conf");
        text.push_str(&format!("\n{settings}\n"));
        std::fs::write(&conf, text).expect("cannot write postgresql.conf");
    }

    /// Puts `rules` first in `pg_hba.conf`, where they win over the trust rules after them.
    fn authenticate_first(&self, rules: &str) {
        let hba = self.data_dir.join("pg_hba.conf");
        let existing = std::fs::read_to_string(&hba).expect("cannot read pg_hba.conf");
        std::fs::write(&hba, format!("{rules}\n{existing}")).expect("cannot write pg_hba.conf");
    }

    /// Writes a file into the data directory, owned by the server's user and readable by it
    /// alone, as PostgreSQL requires of a key.
    fn write_server_file(&self, name: &str, contents: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data_dir.join(name);
        std::fs::write(&path, contents).expect("cannot write a TLS file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .expect("cannot restrict a TLS file");
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .expect("cannot give a TLS file to the postgres user");
        }
    }

    /// Kills the postmaster and its backends with `SIGKILL` and waits for the postmaster.
    pub fn kill(&self) {
        let running = self.postmaster.lock().expect("postmaster").take();
        if let Some(mut postmaster) = running {
            // The postmaster leads its own process group, which its backends inherit.
            let group = format!("-{}", postmaster.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = postmaster.kill();
            let _ = postmaster.wait();
        }
    }

    /// Kills the server (as [`kill`](Self::kill): a crash) and starts it again on its port and
    /// data directory, which runs crash recovery; waits until it answers.
    pub async fn restart(&self) {
        self.kill();
        self.start_and_wait().await;
    }

    /// Stops the server cleanly (a fast shutdown: no crash recovery at the next start) and
    /// starts it again, for a change of settings.
    async fn stop_and_start(&self) {
        let running = self.postmaster.lock().expect("postmaster").take();
        if let Some(mut postmaster) = running {
            let _ = Command::new("kill")
                .args(["-INT", &postmaster.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(SHUTDOWN_WAIT_S);
            while matches!(postmaster.try_wait(), Ok(None)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !matches!(postmaster.try_wait(), Ok(Some(_))) {
                // Not stopped in time: killed, with its backends.
                *self.postmaster.lock().expect("postmaster") = Some(postmaster);
                self.kill();
            }
        }
        self.start_and_wait().await;
    }

    /// Where the server's own messages go (its standard error), quoted when it does not start.
    fn log_path(&self) -> PathBuf {
        self.data_dir.with_extension("log")
    }

    fn spawn_postmaster(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("cannot open the private PostgreSQL's log");
        let mut postgres = self.command("postgres");
        postgres
            .arg("-D")
            .arg(&self.data_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-k")
            .arg(&self.data_dir)
            .args(["-c", "fsync=on", "-c", "max_connections=100"])
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        let child = postgres.spawn().expect("cannot run postgres");
        *self.postmaster.lock().expect("postmaster") = Some(child);
    }

    /// Starts the server on its port and data directory and waits until it answers, at most
    /// [`START_WAIT_S`]. A postmaster that exits at once (right after a kill, the old backends'
    /// shared memory or lock file can still be in the way for a moment) is started again, up
    /// to [`START_ATTEMPTS_MAX`] times; a failure quotes the server's last messages.
    async fn start_and_wait(&self) {
        self.spawn_postmaster();
        let deadline = Instant::now() + Duration::from_secs(START_WAIT_S);
        let mut attempts = 1;
        loop {
            if let Ok((client, connection)) = tokio_postgres::connect(&self.url(), NoTls).await {
                tokio::spawn(connection);
                if client.simple_query("SELECT 1").await.is_ok() {
                    return;
                }
            }
            let exited = self
                .postmaster
                .lock()
                .expect("postmaster")
                .as_mut()
                .is_some_and(|postmaster| matches!(postmaster.try_wait(), Ok(Some(_))));
            let log = || {
                let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            };
            if exited {
                assert!(
                    attempts < START_ATTEMPTS_MAX,
                    "the private PostgreSQL on port {} exited at start {attempts} times; its last messages:\n{}",
                    self.port,
                    log()
                );
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.spawn_postmaster();
            }
            assert!(
                Instant::now() < deadline,
                "the private PostgreSQL on port {} did not answer within {START_WAIT_S} s; its last messages:\n{}",
                self.port,
                log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Longest wait for a private PostgreSQL to answer after it is started: crash recovery with
/// `fsync` on, on a machine a whole test suite loads (CI once saw 30 s pass).
const START_WAIT_S: u64 = 60;
/// Starts of a private PostgreSQL whose postmaster exits at once before the test fails.
const START_ATTEMPTS_MAX: u32 = 3;
/// Longest wait for a fast shutdown before a settings change restarts the server.
const SHUTDOWN_WAIT_S: u64 = 30;

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let _ = std::fs::remove_file(self.log_path());
    }
}

/// `PROTEUS_TEST_POSTGRES_BIN`, else the newest `/usr/lib/postgresql/<version>/bin` (Debian's
/// layout).
fn postgres_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PROTEUS_TEST_POSTGRES_BIN") {
        return PathBuf::from(dir);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| Path::new(bin).join("postgres").is_file())
        .max();
    match newest {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server binaries in /usr/lib/postgresql/<version>/bin; install them (Debian: apt install postgresql) or set PROTEUS_TEST_POSTGRES_BIN to the directory holding initdb and postgres"
        ),
    }
}

/// The uid and gid of the `postgres` user, from `/etc/passwd`.
fn postgres_user_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.first() != Some(&"postgres") || fields.len() < 4 {
                return None;
            }
            Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
        })
        .expect("running as root, the private PostgreSQL needs a postgres user to run as (PostgreSQL refuses root); create one (Debian's postgresql package does)")
}
