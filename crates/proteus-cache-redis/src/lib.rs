//! The [`RemoteCache`] port on Redis: every key is prefixed by a namespace, reads are one
//! `MGET`, writes one pipeline of `SET key value PX ttl_ms`, deletes one `DEL`. The connection
//! is a `ConnectionManager`, which reconnects by itself after a loss.

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

/// How to start the local Redis of a developer machine, for messages.
pub const START_HINT: &str = "start it (redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no)";

fn unavailable(error: redis::RedisError) -> CacheError {
    CacheError::Unavailable(format!("redis: {error}"))
}

impl RedisRemoteCache {
    /// Connects to `url` (`redis://host:port[/db]`, or `rediss://` for TLS checked against
    /// the system's CAs); keys are stored as `{namespace}{key}`.
    pub async fn connect(url: &str, namespace: &str) -> Result<RedisRemoteCache, CacheError> {
        Self::connect_with(url, namespace, None).await
    }

    /// As [`connect`](Self::connect), trusting the CAs of the PEM file `tls_ca_file` besides
    /// the system's (a `rediss://` URL is then required).
    pub async fn connect_with(
        url: &str,
        namespace: &str,
        tls_ca_file: Option<&std::path::Path>,
    ) -> Result<RedisRemoteCache, CacheError> {
        let shown = redact(url);
        let over_tls = url.starts_with("rediss://");
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
        let client = match tls_ca_file {
            None => redis::Client::open(url).map_err(invalid)?,
            Some(_) if !over_tls => {
                return Err(CacheError::Unavailable(format!(
                    "a TLS CA file is given for Redis at {shown}, whose URL does not ask for TLS: write it rediss://…"
                )));
            }
            Some(path) => {
                let root_cert = std::fs::read(path).map_err(|e| {
                    CacheError::Unavailable(format!(
                        "cannot read the Redis TLS CA file {}: {e}",
                        path.display()
                    ))
                })?;
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )
                .map_err(invalid)?
            }
        };
        let connection = ConnectionManager::new(client).await.map_err(|e| {
            let text = e.to_string();
            if over_tls
                && (text.contains("certificate") || text.contains("TLS") || text.contains("tls"))
            {
                return CacheError::Unavailable(format!(
                    "TLS with Redis at {shown} failed: {e}; if a private CA signed the server's certificate, name its PEM file with --cache-tls-ca"
                ));
            }
            CacheError::Unavailable(format!(
                "cannot connect to Redis at {shown}: {e}; is it running? If not, {START_HINT}"
            ))
        })?;
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
