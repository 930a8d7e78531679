//! The example against a real `proteus serve`, as the README runs it: twice, since a second run
//! must not trip over the first one's orders.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EXAMPLE: &str = env!("CARGO_BIN_EXE_order-service");

/// `cargo test --workspace` builds the `proteus` binary beside this one.
fn proteus() -> PathBuf {
    let path = PathBuf::from(EXAMPLE).with_file_name("proteus");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p proteus` (cargo test --workspace does)",
        path.display()
    );
    path
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(data_dir: &std::path::Path) -> (Server, String) {
    // A port of our own: bind port 0, note it, release it for the server.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let child = Command::new(proteus())
        .args(["serve", "--listen", &address, "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let started = Instant::now();
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "proteus serve did not listen on {address}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, format!("http://{address}"))
}

#[test]
fn the_order_service_runs_against_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url) = start_server(dir.path());
    for _ in 0..2 {
        let output = Command::new(EXAMPLE)
            .env("PROTEUS_SERVER", &url)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("refused: add a pen"), "{stdout}");
        assert!(
            stdout.contains("\"shipped\" for \"alice\", 1 items, total 12.5"),
            "{stdout}"
        );
        assert!(
            stdout.contains("\"placed\" for \"bob\", 3 items, total 43.0"),
            "{stdout}"
        );
    }
}
