//! What the NATS adapters' integration tests share: the server they use, a TCP proxy in front
//! of it that can cut every connection (restarting the shared server would disturb every other
//! test), and deleting a test's streams.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

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

/// Forwards a local port to a server until stopped; can be started again on the same port.
pub struct Proxy {
    pub port: u16,
    upstream: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    /// Listens on a port of its own (port 0) and forwards every connection to `upstream`.
    pub async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
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
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let upstream = self.upstream.clone();
        let tasks = self.tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().expect("proxy tasks").push(pipe);
            }
        });
        self.tasks.lock().expect("proxy tasks").push(accept);
    }

    /// Closes the listener and every forwarded connection.
    pub fn stop(&self) {
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
