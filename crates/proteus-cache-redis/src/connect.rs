//! Opening the connection: to one server (`redis://`, `rediss://`), to a Redis Cluster
//! (`redis+cluster://`, `rediss+cluster://`, seed nodes separated by commas) or to the primary
//! Sentinels name (`redis+sentinel://`), with the deployment's TLS files, and errors that say
//! what to fix rather than "is it running?".

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use proteus_cache::CacheError;
use redis::aio::ConnectionManager;

use crate::START_HINT;
use crate::cluster::HealingCluster;
use crate::sentinel::{self, SentinelConnection};

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

/// Bound of one connection attempt to a cluster node, and of each command's answer (retries
/// and redirections within the redis crate included).
const CLUSTER_CONNECT_TIMEOUT_MS: u64 = 5_000;
const CLUSTER_RESPONSE_TIMEOUT_MS: u64 = 5_000;
/// Pauses before a cluster command is tried again after `TRYAGAIN` (a multi-key command on a
/// slot being migrated), `CLUSTERDOWN` or a lost node: doubling from the first to the last.
/// The redis crate's defaults start at 1.28 s: a call retried twice would take most of the
/// response bound, where a cache call must be quick or fail.
const CLUSTER_RETRY_WAIT_MIN_MS: u64 = 10;
const CLUSTER_RETRY_WAIT_MAX_MS: u64 = 500;
/// Most calls of one cache operation in flight at once on a cluster
/// ([`Connection::query_each`]: the `SET`s of one write).
const CLUSTER_CALLS_IN_FLIGHT_MAX: usize = 64;

/// A connection that reconnects by itself: to one server, to a cluster (which also follows
/// slots moving between nodes, and is replaced after a call times out: `cluster.rs`), or to
/// the primary Sentinels name (found again after a failover).
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    Cluster(Arc<HealingCluster>),
    Sentinel(Arc<SentinelConnection>),
}

impl Connection {
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        match self {
            Connection::Single(connection) => command.query_async(&mut connection.clone()).await,
            Connection::Cluster(cluster) => cluster.query(command).await,
            Connection::Sentinel(sentinel) => {
                let (generation, mut primary) = sentinel.primary().await?;
                let answer = command.query_async(&mut primary).await;
                sentinel.settle(generation, answer).await
            }
        }
    }

    /// Runs `commands` with at most [`CLUSTER_CALLS_IN_FLIGHT_MAX`] in flight, and returns
    /// their answers in order.
    pub(crate) async fn query_each<T: redis::FromRedisValue>(
        &self,
        commands: Vec<redis::Cmd>,
    ) -> redis::RedisResult<Vec<T>> {
        use futures_util::{StreamExt, TryStreamExt};
        futures_util::stream::iter(commands)
            .map(|command| async move { self.query::<T>(&command).await })
            .buffered(CLUSTER_CALLS_IN_FLIGHT_MAX)
            .try_collect()
            .await
    }

    /// Runs `pipeline` on one server (not a cluster, whose slots one pipeline cannot span).
    pub(crate) async fn query_pipeline(
        &self,
        pipeline: &redis::Pipeline,
    ) -> redis::RedisResult<()> {
        match self {
            Connection::Single(connection) => pipeline.query_async(&mut connection.clone()).await,
            Connection::Sentinel(sentinel) => {
                let (generation, mut primary) = sentinel.primary().await?;
                let answer = pipeline.query_async(&mut primary).await;
                sentinel.settle(generation, answer).await
            }
            Connection::Cluster(_) => Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "a pipeline cannot span a cluster's slots",
            ))),
        }
    }
}

/// Opens `url` (`shown`: the same without its password).
pub(crate) async fn open(url: &str, shown: &str, tls: &RedisTls) -> Result<Connection, CacheError> {
    let sentinel_url = sentinel::parse(url, shown).map_err(CacheError::Unavailable)?;
    let nodes = cluster_nodes(url, shown).map_err(CacheError::Unavailable)?;
    let over_tls = ["rediss://", "rediss+cluster://", "rediss+sentinel://"]
        .iter()
        .any(|scheme| url.starts_with(scheme));
    if over_tls {
        // The redis crate builds its TLS configuration with rustls's process-wide provider,
        // which rustls picks by itself only when exactly one is compiled in; say which.
        // (Err: another caller installed one first, which is as good.)
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let certificates = certificates(tls, over_tls, shown)?;
    if let Some(sentinel_url) = sentinel_url {
        let connection = SentinelConnection::new(&sentinel_url, certificates).map_err(|e| {
            CacheError::Unavailable(format!("invalid Redis Sentinel URL {shown}: {e}"))
        })?;
        let connection = Connection::Sentinel(Arc::new(connection));
        connection
            .query::<String>(&redis::cmd("PING"))
            .await
            .map_err(|e| connect_error(e, shown, over_tls))?;
        return Ok(connection);
    }
    let invalid = |e: redis::RedisError| {
        CacheError::Unavailable(format!(
            "invalid Redis URL {shown}: {e}; use the form redis://HOST:PORT[/DB] (rediss:// for TLS), or redis+cluster://HOST:PORT,HOST:PORT for a Redis Cluster"
        ))
    };
    let unusable_files = |e: redis::RedisError| {
        CacheError::Unavailable(format!(
            "the Redis TLS files cannot be used: {e}; give PEM files (--cache-tls-ca, --cache-tls-cert, --cache-tls-key), the key unencrypted and matching the certificate"
        ))
    };
    let connect_error = |e: redis::RedisError| connect_error(e, shown, over_tls);
    if let Some(nodes) = nodes {
        let mut builder = redis::cluster::ClusterClient::builder(nodes)
            .connection_timeout(Duration::from_millis(CLUSTER_CONNECT_TIMEOUT_MS))
            .response_timeout(Duration::from_millis(CLUSTER_RESPONSE_TIMEOUT_MS))
            .min_retry_wait(CLUSTER_RETRY_WAIT_MIN_MS)
            .max_retry_wait(CLUSTER_RETRY_WAIT_MAX_MS)
            .retry_wait_formula(CLUSTER_RETRY_WAIT_MIN_MS, 2);
        if let Some(certificates) = certificates {
            builder = builder.certs(certificates);
        }
        let client = builder.build().map_err(|e| {
            if over_tls {
                unusable_files(e)
            } else {
                invalid(e)
            }
        })?;
        let cluster = HealingCluster::open(client, shown)
            .await
            .map_err(connect_error)?;
        let connection = Connection::Cluster(Arc::new(cluster));
        connection
            .query::<redis::Value>(&redis::cmd("PING"))
            .await
            .map_err(connect_error)?;
        return Ok(connection);
    }
    let client = match certificates {
        None => redis::Client::open(url).map_err(invalid)?,
        Some(certificates) => {
            redis::Client::build_with_tls(url, certificates).map_err(unusable_files)?
        }
    };
    // One attempt first: the connection manager retries its first connection with back-off
    // (about 9 s), which only delays what a refused certificate or a stopped server will say
    // anyway.
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
    Ok(Connection::Single(connection))
}

/// The redis crate's certificates for `tls`, or `None` when no file is given.
fn certificates(
    tls: &RedisTls,
    over_tls: bool,
    shown: &str,
) -> Result<Option<redis::TlsCertificates>, CacheError> {
    let refuse = |message: String| Err(CacheError::Unavailable(message));
    if tls.is_empty() {
        return Ok(None);
    }
    if !over_tls {
        return refuse(format!(
            "TLS files are given for Redis at {shown}, whose URL does not ask for TLS: write it rediss://… (rediss+cluster://… for a cluster, rediss+sentinel://… through Sentinel)"
        ));
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
    let root_cert = match &tls.ca_file {
        Some(path) => Some(read_tls_file(path, "CA")?),
        None => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

fn read_tls_file(path: &Path, what: &str) -> Result<Vec<u8>, CacheError> {
    std::fs::read(path).map_err(|e| {
        CacheError::Unavailable(format!(
            "cannot read the Redis TLS {what} file {}: {e}",
            path.display()
        ))
    })
}

/// Why connecting failed, and what to do: a refused login or certificate is not a stopped
/// server.
fn connect_error(error: redis::RedisError, shown: &str, over_tls: bool) -> CacheError {
    let text = error.to_string();
    if error.kind() == redis::ErrorKind::AuthenticationFailed
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
    {
        let sentinels = if shown.starts_with("redis+sentinel://") {
            "; for Sentinels that ask for a password, add ?sentinel_password=PASSWORD"
        } else {
            ""
        };
        return CacheError::Unavailable(format!(
            "Redis at {shown} refused the login: {error}; check the password in the URL (redis://:password@host:6379, or redis://user:password@host:6379 for an ACL user){sentinels}"
        ));
    }
    if over_tls
        && (text.contains("certificate")
            || text.contains("TLS")
            || text.contains("tls")
            || text.contains("alert"))
    {
        return CacheError::Unavailable(format!(
            "TLS with Redis at {shown} failed: {error}; if a private CA signed the server's certificate, name its PEM file with --cache-tls-ca; if the server checks clients (tls-auth-clients), name a certificate its CA signed with --cache-tls-cert and --cache-tls-key"
        ));
    }
    if text.contains("MasterNameNotFoundBySentinel")
        || text.contains("No master found")
        || text.contains("Couldn't open connection to a sentinel")
    {
        return CacheError::Unavailable(format!(
            "the Sentinels of {shown} name no primary: {error}; check the Sentinel addresses and the primary's name (sentinel monitor NAME … in sentinel.conf)"
        ));
    }
    if text.contains("cluster support disabled") || text.contains("ERR This instance has cluster") {
        return CacheError::Unavailable(format!(
            "Redis at {shown} is not a Redis Cluster ({error}): use redis://HOST:PORT for a single server"
        ));
    }
    CacheError::Unavailable(format!(
        "cannot connect to Redis at {shown}: {error}; is it running? If not, {START_HINT}"
    ))
}

/// The login (`user:password@`, or empty) and the hosts of an authority that lists several,
/// `[user:password@]h1:p1,h2:p2`; `None` if a host is empty.
pub(crate) fn login_and_hosts(authority: &str) -> Option<(&str, Vec<&str>)> {
    let (login, hosts) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
    (!hosts.iter().any(|host| host.is_empty())).then_some((login, hosts))
}

/// The seed nodes of a cluster URL, as the redis crate takes them: `redis+cluster://[user:
/// password@]h1:p1,h2:p2` gives `redis://[user:password@]h1:p1` and the same for `h2:p2`
/// (`rediss` for `rediss+cluster`). `Ok(None)`: not a cluster URL.
fn cluster_nodes(url: &str, shown: &str) -> Result<Option<Vec<String>>, String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        ("redis", rest)
    } else if let Some(rest) = url.strip_prefix("rediss+cluster://") {
        ("rediss", rest)
    } else {
        return Ok(None);
    };
    let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
    if !matches!(database, "" | "0") {
        return Err(format!(
            "{shown}: a Redis Cluster has only database 0; remove /{database}"
        ));
    }
    let (login, hosts) = login_and_hosts(authority).ok_or_else(|| {
        format!(
            "{shown}: an empty node; write redis+cluster://HOST:PORT,HOST:PORT (one node is enough to find the others)"
        )
    })?;
    Ok(Some(
        hosts
            .into_iter()
            .map(|host| format!("{scheme}://{login}{host}"))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::cluster_nodes;

    fn nodes(url: &str) -> Result<Option<Vec<String>>, String> {
        cluster_nodes(url, &crate::redact(url))
    }

    #[test]
    fn cluster_urls_give_one_node_url_each_with_the_login() {
        assert_eq!(nodes("redis://h:6379").unwrap(), None);
        assert_eq!(
            nodes("redis+cluster://u:p%40ss@a:7000,b:7001/").unwrap(),
            Some(vec![
                "redis://u:p%40ss@a:7000".to_owned(),
                "redis://u:p%40ss@b:7001".to_owned()
            ])
        );
        assert_eq!(
            nodes("rediss+cluster://cfg.example.com:6379").unwrap(),
            Some(vec!["rediss://cfg.example.com:6379".to_owned()])
        );
        let error = nodes("redis+cluster://:secret@a:7000/3").unwrap_err();
        assert!(error.contains("only database 0"), "{error}");
        assert!(!error.contains("secret"), "{error}");
        let error = nodes("redis+cluster://a:7000,,b:7001").unwrap_err();
        assert!(error.contains("an empty node"), "{error}");
    }
}
