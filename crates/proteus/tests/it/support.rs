//! Starting and stopping real `proteus serve` processes, and running the CLI: once, or as a
//! follower whose output is read as it comes.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub const BINARY: &str = env!("CARGO_BIN_EXE_proteus");

/// A `proteus serve` child process on a port of its own. Killed when dropped.
pub struct ServerProcess {
    pub child: Child,
    pub url: String,
    pub logs: Arc<Mutex<Vec<String>>>,
    /// The thread copying stderr into `logs`; joined once the process has exited, so its last
    /// lines ("stopped cleanly") are in `logs` before a test reads them.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ServerProcess {
    pub fn start(data_dir: &Path) -> ServerProcess {
        ServerProcess::start_with(data_dir, &[], &[])
    }

    pub fn start_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let mut command = Command::new(BINARY);
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("starting proteus serve");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let serving = line.contains("Proteus is serving").then(|| line.clone());
                sink.lock().unwrap().push(line);
                if let Some(line) = serving {
                    let parsed: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                    if let Some(address) = parsed["address"].as_str() {
                        let _ = address_tx.send(address.to_owned());
                    }
                }
            }
        });
        let url = match address_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "proteus serve did not start; its log:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        ServerProcess {
            child,
            url,
            logs,
            reader: Some(reader),
        }
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.finish_reading();
    }

    /// Waits for the rest of the exited process's log (its stderr ends with it).
    fn finish_reading(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// SIGTERM, then waits for the exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.finish_reading();
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "proteus serve did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a CLI command against `server`; returns (exit code, stdout, stderr).
/// The server's `/metrics` text.
pub fn metrics_text(http: &reqwest::blocking::Client, server: &str) -> String {
    http.get(format!("{server}/metrics"))
        .send()
        .and_then(|response| response.text())
        .expect("GET /metrics")
}

pub fn run_cli(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(BINARY)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A `proteus migrate … --follow` (or `migrate-topics … --follow`) process whose output is
/// read as it comes.
pub struct Follower {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    out: String,
}

impl Follower {
    /// Starts `subcommand` with `args` and waits until its first pass is over and it
    /// follows, so changes made after this are copied by following, not by that pass.
    pub fn start(subcommand: &str, args: &[&str]) -> Follower {
        let mut child = Command::new(BINARY)
            .arg(subcommand)
            .args(args)
            .arg("--follow")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let mut follower = Follower {
            child,
            lines,
            out: String::new(),
        };
        follower.wait_for("following new events");
        follower
    }

    /// Waits (at most 30 s) until its output says `text`.
    pub fn wait_for(&mut self, text: &str) {
        self.wait_until(&format!("{text:?}"), |out| out.contains(text));
    }

    /// Waits (at most 30 s per line) until `done` holds of its output so far; `what` names
    /// what is awaited in the failure message.
    pub fn wait_until(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        while !done(&self.out) {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("it never said {what}: {}", self.out));
            self.out.push_str(&line);
            self.out.push('\n');
        }
    }

    /// What it printed so far.
    pub fn out_so_far(&self) -> &str {
        &self.out
    }

    /// Ctrl-C (the cut-over); expects a successful exit and returns everything it printed
    /// (its standard output, then its standard error).
    pub fn interrupt(mut self) -> String {
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
        }
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let mut out = std::mem::take(&mut self.out);
        out.extend(self.lines.iter().map(|line| line + "\n"));
        assert!(status.success(), "{out}{err}");
        out.push_str(&err);
        out
    }
}

impl Drop for Follower {
    /// A test that fails midway leaves no follower running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use proteus_nats::test_support::{delete_streams, nats_url};

// The PostgreSQL the tests use, and dropping a test's schema: shared with the adapters' tests.
pub use proteus_postgres::test_support::{drop_schema, url as postgres_url};
