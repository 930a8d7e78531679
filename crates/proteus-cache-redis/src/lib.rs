//! The [`RemoteCache`] port on Redis: every key is prefixed by a namespace, reads are one
//! `MGET`, writes one pipeline of `SET key value PX ttl_ms`, deletes one `DEL`. The connection
//! is a `ConnectionManager`, which reconnects by itself after a loss.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use proteus_cache::{CacheError, RemoteCache, check_keys, check_put};
/// `url` with its password hidden, for messages and logs.
pub use proteus_redact::redact;
use redis::aio::ConnectionManager;

/// A Redis-backed remote cache. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct RedisRemoteCache {
    connection: ConnectionManager,
    namespace: String,
    /// The server's URL with its password hidden, for messages.
    url: String,
}

/// The TLS files of a `rediss://` connection, all optional (PEM).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// The CAs that may sign the server's certificate, instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// A client certificate, for a server with `tls-auth-clients yes` (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (unencrypted).
    pub key_file: Option<PathBuf>,
}

impl RedisTls {
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }
}

fn read_tls_file(path: &Path, what: &str) -> Result<Vec<u8>, CacheError> {
    std::fs::read(path).map_err(|e| {
        CacheError::Unavailable(format!(
            "cannot read the Redis TLS {what} file {}: {e}",
            path.display()
        ))
    })
}

/// How to start the local Redis of a developer machine, for messages.
pub const START_HINT: &str = "start it (redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no)";

fn unavailable(error: redis::RedisError) -> CacheError {
    CacheError::Unavailable(format!("redis: {error}"))
}

impl RedisRemoteCache {
    /// Connects to `url` (`redis://host:port[/db]`, or `rediss://` for TLS checked against
    /// the system's CAs); keys are stored as `{namespace}{key}`.
    pub async fn connect(url: &str, namespace: &str) -> Result<RedisRemoteCache, CacheError> {
        Self::connect_with(url, namespace, &RedisTls::default()).await
    }

    /// As [`connect`](Self::connect), with a private CA and a client certificate (a
    /// `rediss://` URL is then required).
    pub async fn connect_with(
        url: &str,
        namespace: &str,
        tls: &RedisTls,
    ) -> Result<RedisRemoteCache, CacheError> {
        let shown = redact(url);
        let over_tls = url.starts_with("rediss://");
        let refuse = |message: String| Err(CacheError::Unavailable(message));
        let invalid = |e: redis::RedisError| {
            CacheError::Unavailable(format!(
                "invalid Redis URL {shown}: {e}; use the form redis://HOST:PORT[/DB] (rediss:// for TLS)"
            ))
        };
        if over_tls {
            // The redis crate builds its TLS configuration with rustls's process-wide provider,
            // which rustls picks by itself only when exactly one is compiled in; say which.
            // (Err: another caller installed one first, which is as good.)
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client_tls = match (&tls.cert_file, &tls.key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_tls_file(cert, "client certificate")?,
                client_key: read_tls_file(key, "client key")?,
            }),
            (Some(_), None) => {
                return refuse(
                    "a client certificate is given for Redis without its key: name the key's PEM file with --cache-tls-key".to_owned(),
                );
            }
            (None, Some(_)) => {
                return refuse(
                    "a client key is given for Redis without its certificate: name the certificate's PEM file with --cache-tls-cert".to_owned(),
                );
            }
        };
        let client = if tls.is_empty() {
            redis::Client::open(url).map_err(invalid)?
        } else if !over_tls {
            return refuse(format!(
                "TLS files are given for Redis at {shown}, whose URL does not ask for TLS: write it rediss://…"
            ));
        } else {
            let root_cert = match &tls.ca_file {
                Some(path) => Some(read_tls_file(path, "CA")?),
                None => None,
            };
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )
            .map_err(|e| {
                CacheError::Unavailable(format!(
                    "the Redis TLS files cannot be used: {e}; give PEM files (--cache-tls-ca, --cache-tls-cert, --cache-tls-key), the key unencrypted and matching the certificate"
                ))
            })?
        };
        let connect_error = |e: redis::RedisError| {
            let text = e.to_string();
            if e.kind() == redis::ErrorKind::AuthenticationFailed
                || text.contains("WRONGPASS")
                || text.contains("NOAUTH")
            {
                return CacheError::Unavailable(format!(
                    "Redis at {shown} refused the login: {e}; check the password in the URL (redis://:password@host:6379, or redis://user:password@host:6379 for an ACL user)"
                ));
            }
            if over_tls
                && (text.contains("certificate")
                    || text.contains("TLS")
                    || text.contains("tls")
                    || text.contains("alert"))
            {
                return CacheError::Unavailable(format!(
                    "TLS with Redis at {shown} failed: {e}; if a private CA signed the server's certificate, name its PEM file with --cache-tls-ca; if the server checks clients (tls-auth-clients), name a certificate its CA signed with --cache-tls-cert and --cache-tls-key"
                ));
            }
            CacheError::Unavailable(format!(
                "cannot connect to Redis at {shown}: {e}; is it running? If not, {START_HINT}"
            ))
        };
        // One attempt first: the connection manager retries its first connection with
        // back-off (about 9 s), which only delays what a refused certificate or a stopped
        // server will say anyway.
        let mut probe = client
            .get_multiplexed_async_connection()
            .await
            .map_err(connect_error)?;
        redis::cmd("PING")
            .query_async::<String>(&mut probe)
            .await
            .map_err(connect_error)?;
        drop(probe);
        let connection = ConnectionManager::new(client)
            .await
            .map_err(connect_error)?;
        Ok(RedisRemoteCache {
            connection,
            namespace: namespace.to_owned(),
            url: shown,
        })
    }

    /// The same connection with keys in another namespace.
    pub fn with_namespace(&self, namespace: &str) -> RedisRemoteCache {
        RedisRemoteCache {
            connection: self.connection.clone(),
            namespace: namespace.to_owned(),
            url: self.url.clone(),
        }
    }

    /// Whether Redis answers `PING` on this cache's connection within `timeout` (for
    /// `/readyz` and `proteus_backend_up`); `Err` says why not.
    pub async fn check_health(&self, timeout: std::time::Duration) -> Result<(), String> {
        let mut connection = self.connection.clone();
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut connection);
        match tokio::time::timeout(timeout, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(format!(
                "Redis at {} does not answer PING: {error}; is it running? If not, {START_HINT}",
                self.url
            )),
            Err(_) => Err(format!(
                "Redis at {} did not answer PING within {} ms",
                self.url,
                timeout.as_millis()
            )),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    /// Deletes every key of this namespace (SCAN + DEL); for tests and administration.
    pub async fn clear_namespace(&self) -> Result<u64, CacheError> {
        let mut connection = self.connection.clone();
        let pattern = format!("{}*", escape_glob(&self.namespace));
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut connection)
                .await
                .map_err(unavailable)?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut connection)
                    .await
                    .map_err(unavailable)?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[async_trait]
impl RemoteCache for RedisRemoteCache {
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, CacheError> {
        check_keys(keys.iter().map(String::as_str))?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let full: Vec<String> = keys.iter().map(|k| self.full_key(k)).collect();
        let mut connection = self.connection.clone();
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(&full)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        if values.len() != keys.len() {
            return Err(CacheError::Unavailable(format!(
                "redis answered {} values to an MGET of {} keys",
                values.len(),
                keys.len()
            )));
        }
        Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
    }

    async fn put_many(&self, entries: Vec<(String, Bytes)>, ttl_ms: u64) -> Result<(), CacheError> {
        check_put(&entries, ttl_ms)?;
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        pipeline.atomic();
        for (key, value) in &entries {
            pipeline
                .cmd("SET")
                .arg(self.full_key(key))
                .arg(value.as_ref())
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
        }
        let mut connection = self.connection.clone();
        pipeline
            .query_async::<()>(&mut connection)
            .await
            .map_err(unavailable)
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), CacheError> {
        check_keys(keys.iter().map(String::as_str))?;
        if keys.is_empty() {
            return Ok(());
        }
        let full: Vec<String> = keys.iter().map(|k| self.full_key(k)).collect();
        let mut connection = self.connection.clone();
        redis::cmd("DEL")
            .arg(&full)
            .query_async::<u64>(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
