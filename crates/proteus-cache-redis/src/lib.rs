//! The [`RemoteCache`] port on Redis, one server (found through Sentinel or not) or a Redis
//! Cluster: every key is prefixed by a namespace, reads are one `MGET`, writes one transaction
//! of `SET key value PX ttl_ms`, deletes one `DEL`. On a cluster, where a transaction cannot
//! span slots and a multi-key command split by node stalled while slots moved, each key is its
//! own `GET`, `SET` or `DEL`, at most 64 in flight. The connection reconnects by itself after a
//! loss.

mod cluster;
mod connect;
mod reopening;
mod sentinel;
#[cfg(feature = "test-support")]
pub mod test_support;

use async_trait::async_trait;
use bytes::Bytes;
use connect::Connection;
pub use connect::RedisTls;
use proteus_cache::{CacheError, RemoteCache, check_keys, check_put};
/// `url` with its password hidden, for messages and logs.
pub use proteus_redact::redact;

/// A Redis-backed remote cache. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct RedisRemoteCache {
    connection: Connection,
    namespace: String,
    /// The server's URL with its password hidden, for messages.
    url: String,
}

/// Whether `text` names a Redis this adapter connects to: `redis://`, `rediss://`,
/// `redis+cluster://`, `rediss+cluster://`, `redis+sentinel://` or `rediss+sentinel://`.
pub fn is_redis_url(text: &str) -> bool {
    [
        "redis://",
        "rediss://",
        "redis+cluster://",
        "rediss+cluster://",
        "redis+sentinel://",
        "rediss+sentinel://",
    ]
    .iter()
    .any(|scheme| text.starts_with(scheme))
}

/// How to start the local Redis of a developer machine, for messages.
pub const START_HINT: &str = "start it (redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no)";

fn unavailable(error: redis::RedisError) -> CacheError {
    CacheError::Unavailable(format!("redis: {error}"))
}

impl RedisRemoteCache {
    /// Connects to `url` (`redis://host:port[/db]`, `rediss://` for TLS checked against the
    /// system's CAs, `redis+cluster://host:port,host:port` or `rediss+cluster://…` for a Redis
    /// Cluster, `redis+sentinel://…` or `rediss+sentinel://…` through Sentinel); keys are
    /// stored as `{namespace}{key}`.
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
        let connection = connect::open(url, &shown, tls).await?;
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
        let command = redis::cmd("PING");
        // A cluster answers from every primary; any answer without error will do.
        let ping = self.connection.query::<redis::Value>(&command);
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

    /// Deletes every key of this namespace (SCAN + DEL; on a cluster, KEYS on every primary
    /// + DEL); for tests and administration.
    pub async fn clear_namespace(&self) -> Result<u64, CacheError> {
        let pattern = format!("{}*", escape_glob(&self.namespace));
        let delete = |keys: Vec<Vec<u8>>| async move {
            if keys.is_empty() {
                return Ok(0);
            }
            self.connection
                .query::<u64>(redis::cmd("DEL").arg(&keys))
                .await
                .map_err(unavailable)
        };
        if let Connection::Cluster(_) = &self.connection {
            let keys: Vec<Vec<u8>> = self
                .connection
                .query(redis::cmd("KEYS").arg(&pattern))
                .await
                .map_err(unavailable)?;
            return delete(keys).await;
        }
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .connection
                .query(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(500),
                )
                .await
                .map_err(unavailable)?;
            deleted += delete(keys).await?;
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
        let values: Vec<Option<Vec<u8>>> = match &self.connection {
            // One GET per key: an MGET split by node by the redis crate's cluster connection
            // stalled until the response bound whenever slots were moving.
            Connection::Cluster(_) => {
                let gets = full.iter().map(|key| redis::cmd("GET").arg(key).clone());
                self.connection.query_each(gets.collect()).await
            }
            _ => self.connection.query(redis::cmd("MGET").arg(&full)).await,
        }
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
        let set = |key: &str, value: &Bytes| {
            let mut command = redis::cmd("SET");
            command
                .arg(self.full_key(key))
                .arg(value.as_ref())
                .arg("PX")
                .arg(ttl_ms);
            command
        };
        match &self.connection {
            Connection::Single(_) | Connection::Sentinel(_) => {
                let mut pipeline = redis::pipe();
                pipeline.atomic();
                for (key, value) in &entries {
                    pipeline.add_command(set(key, value)).ignore();
                }
                self.connection
                    .query_pipeline(&pipeline)
                    .await
                    .map_err(unavailable)
            }
            Connection::Cluster(_) => {
                // Keys fall in different slots, which one transaction cannot span: the SETs
                // go out together, each to its slot's node.
                let commands = entries.iter().map(|(key, value)| set(key, value)).collect();
                self.connection
                    .query_each::<()>(commands)
                    .await
                    .map_err(unavailable)?;
                Ok(())
            }
        }
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), CacheError> {
        check_keys(keys.iter().map(String::as_str))?;
        if keys.is_empty() {
            return Ok(());
        }
        let full: Vec<String> = keys.iter().map(|k| self.full_key(k)).collect();
        match &self.connection {
            // One DEL per key, as for reads.
            Connection::Cluster(_) => {
                let deletes = full.iter().map(|key| redis::cmd("DEL").arg(key).clone());
                self.connection
                    .query_each::<u64>(deletes.collect())
                    .await
                    .map(drop)
            }
            _ => self
                .connection
                .query::<u64>(redis::cmd("DEL").arg(&full))
                .await
                .map(drop),
        }
        .map_err(unavailable)
    }
}
