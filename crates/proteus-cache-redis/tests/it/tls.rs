//! Logins and `rediss://` against `redis-server`s of the tests' own: one that speaks only TLS
//! with a certificate for 127.0.0.1 signed by a CA made for the test (trusted when the CA file
//! is given, refused otherwise with the flag that names it), one that also checks client
//! certificates, and one that asks for a password.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proteus_cache::RemoteCache;
use proteus_cache_redis::test_support::{ServerTls, redis_server, wait_for_port};
use proteus_cache_redis::{RedisRemoteCache, RedisTls};

/// A `redis-server` of the test's own; killed when dropped.
struct PrivateRedis {
    port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis-server` on a free port, TLS only with `tls`, more flags in `args`.
fn start_redis(tls: Option<&ServerTls>, args: &[&str]) -> PrivateRedis {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let child = redis_server(port, dir.path(), tls, args);
    wait_for_port(port);
    PrivateRedis {
        port,
        child,
        _dir: dir,
    }
}

/// A CA, the server's certificate for 127.0.0.1 (not checking clients), and a client
/// certificate, in `dir`.
pub(crate) struct Made {
    pub(crate) server: ServerTls,
    pub(crate) client_cert: PathBuf,
    pub(crate) client_key: PathBuf,
}

pub(crate) fn make_certificates(dir: &Path) -> Made {
    let files = proteus_testkit::tls::make_tls_files(dir);
    Made {
        server: ServerTls {
            ca: files.ca,
            cert: files.server_cert,
            key: files.server_key,
            check_clients: false,
        },
        client_cert: files.client_cert,
        client_key: files.client_key,
    }
}

/// What connecting to `url` with `tls` is refused with.
pub(crate) async fn refusal(url: &str, tls: &RedisTls) -> String {
    match RedisRemoteCache::connect_with(url, "tls-test:", tls).await {
        Ok(_) => panic!("{url} was reached with {tls:?}"),
        Err(error) => error.to_string(),
    }
}

#[tokio::test]
async fn rediss_with_a_private_ca_is_trusted_when_named_and_refused_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let made = make_certificates(dir.path());
    let server = start_redis(Some(&made.server), &[]);
    let url = format!("rediss://127.0.0.1:{}", server.port);
    let with_ca = RedisTls {
        ca_file: Some(made.server.ca.clone()),
        ..RedisTls::default()
    };

    let cache = RedisRemoteCache::connect_with(&url, "tls-test:", &with_ca)
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

    // Refused at once (not after the connection manager's retries), naming the flag.
    let started = Instant::now();
    let refused = refusal(&url, &RedisTls::default()).await;
    assert!(
        refused.contains("TLS with Redis") && refused.contains("--cache-tls-ca"),
        "{refused}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a refused certificate took {:?} to report",
        started.elapsed()
    );
    let plain = refusal(&format!("redis://127.0.0.1:{}", server.port), &with_ca).await;
    assert!(plain.contains("rediss://"), "{plain}");
}

#[tokio::test]
async fn a_server_that_checks_clients_takes_the_client_certificate_and_refuses_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let made = make_certificates(dir.path());
    let checking = ServerTls {
        check_clients: true,
        ..made.server.clone()
    };
    let server = start_redis(Some(&checking), &[]);
    let url = format!("rediss://127.0.0.1:{}", server.port);
    let with_certificate = RedisTls {
        ca_file: Some(made.server.ca.clone()),
        cert_file: Some(made.client_cert.clone()),
        key_file: Some(made.client_key.clone()),
    };

    let cache = RedisRemoteCache::connect_with(&url, "tls-test:", &with_certificate)
        .await
        .expect("TLS with a client certificate");
    cache
        .put_many(vec![("k".to_owned(), Bytes::from_static(b"v"))], 60_000)
        .await
        .unwrap();
    assert_eq!(
        cache.get_many(&["k".to_owned()]).await.unwrap(),
        vec![Some(Bytes::from_static(b"v"))]
    );

    let without = RedisTls {
        cert_file: None,
        key_file: None,
        ..with_certificate.clone()
    };
    let refused = refusal(&url, &without).await;
    assert!(
        refused.contains("TLS with Redis") && refused.contains("--cache-tls-cert"),
        "{refused}"
    );
    let half = RedisTls {
        key_file: None,
        ..with_certificate.clone()
    };
    let refused = refusal(&url, &half).await;
    assert!(refused.contains("--cache-tls-key"), "{refused}");
    let missing = RedisTls {
        cert_file: Some(dir.path().join("nowhere.pem")),
        ..with_certificate.clone()
    };
    let refused = refusal(&url, &missing).await;
    assert!(
        refused.contains("cannot read the Redis TLS client certificate file"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_password_in_the_url_logs_in_and_a_wrong_one_says_so() {
    let server = start_redis(None, &["--requirepass", "open-sesame"]);
    let port = server.port;

    let cache = RedisRemoteCache::connect(&format!("redis://:open-sesame@127.0.0.1:{port}"), "p:")
        .await
        .expect("the right password");
    cache
        .check_health(Duration::from_secs(2))
        .await
        .expect("PING after logging in");

    for url in [
        format!("redis://:wrong@127.0.0.1:{port}"),
        format!("redis://127.0.0.1:{port}"),
    ] {
        let refused = refusal(&url, &RedisTls::default()).await;
        assert!(
            refused.contains("refused the login") && refused.contains("password in the URL"),
            "{url}: {refused}"
        );
        assert!(!refused.contains("is it running"), "{refused}");
        assert!(!refused.contains("wrong@"), "{refused}");
    }
}
