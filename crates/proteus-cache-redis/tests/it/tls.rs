//! `rediss://` against a private `redis-server` that speaks only TLS, with a certificate for
//! 127.0.0.1 signed by a CA made for the test: trusted when the CA file is given, refused
//! otherwise with the flag that names it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proteus_cache::RemoteCache;
use proteus_cache_redis::RedisRemoteCache;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A `redis-server` of the test's own on a TLS port only; killed when dropped.
struct TlsRedis {
    port: u16,
    child: Child,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_tls_redis(dir: &std::path::Path) -> (TlsRedis, std::path::PathBuf) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let write = |name: &str, contents: String| {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    };
    let ca_file = write("ca.pem", ca.pem());
    let cert_file = write("redis.pem", cert.pem());
    let key_file = write("redis-key.pem", key.serialize_pem());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
        .arg("--tls-cert-file")
        .arg(&cert_file)
        .arg("--tls-key-file")
        .arg(&key_file)
        .arg("--tls-ca-cert-file")
        .arg(&ca_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run redis-server; install Redis (Debian: apt install redis-server)");
    let server = TlsRedis { port, child };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server with TLS did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, ca_file)
}

#[tokio::test]
async fn rediss_with_a_private_ca_is_trusted_when_named_and_refused_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ca_file) = start_tls_redis(dir.path());
    let url = format!("rediss://127.0.0.1:{}", server.port);

    let cache = RedisRemoteCache::connect_with(&url, "tls-test:", Some(&ca_file))
        .await
        .expect("TLS with the named CA");
    cache
        .put_many(vec![("k".to_owned(), Bytes::from_static(b"v"))], 60_000)
        .await
        .unwrap();
    let got = cache.get_many(&["k".to_owned()]).await.unwrap();
    assert_eq!(got, vec![Some(Bytes::from_static(b"v"))]);
    cache
        .check_health(Duration::from_secs(2))
        .await
        .expect("PING over TLS");

    let refused = RedisRemoteCache::connect(&url, "tls-test:")
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        refused.contains("TLS with Redis") && refused.contains("--cache-tls-ca"),
        "{refused}"
    );
    let plain = RedisRemoteCache::connect_with(
        &format!("redis://127.0.0.1:{}", server.port),
        "tls-test:",
        Some(&ca_file),
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(plain.contains("rediss://"), "{plain}");
}
