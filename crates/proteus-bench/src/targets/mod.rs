//! The systems a workload runs against, each behind the same two traits: [`Bench`] prepares the
//! target (topic, stream, key or table) and opens one [`Sink`] per producer; a sink sends
//! batches over its own connection and waits for them to be acknowledged.

pub mod embedded;
pub mod http;
pub mod nats;
pub(crate) mod postgres;
mod redis;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use proteus_log::TopicName;
use proteus_log_embedded::Durability;

pub use embedded::EmbeddedBench;
pub use http::{HttpBench, problem_message};
pub use postgres::check_table_name;

use crate::events::Batch;

/// How long connecting to a target may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where events go, from the `--target` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Proteus over its HTTP API: `http://host:port`.
    Http(String),
    /// Proteus in this process: `embedded:/path/to/data-dir`.
    Embedded(PathBuf),
    /// NATS JetStream: `nats://host:port`.
    Nats(String),
    /// Redis Streams: `redis://host:port`.
    Redis(String),
    /// PostgreSQL: `postgres://user@host:port/database`.
    Postgres(String),
}

const TARGET_FORMS: &str = "http://HOST:PORT (Proteus over HTTP), embedded:DIR (Proteus in this process), nats://HOST:PORT (NATS JetStream), redis://HOST:PORT (Redis Streams) or postgres://USER@HOST:PORT/DATABASE (PostgreSQL)";

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let unknown = || format!("unknown --target {text:?}: use {TARGET_FORMS}");
        let (scheme, rest) = text.split_once(':').ok_or_else(unknown)?;
        let needs_host = |target: Target| match rest.strip_prefix("//") {
            Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(target),
            _ => Err(format!(
                "--target {text:?} has no host: write it as {scheme}://HOST:PORT"
            )),
        };
        match scheme {
            "http" => {
                let url = reqwest::Url::parse(text)
                    .map_err(|e| format!("--target {text:?} is not a valid URL: {e}"))?;
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(format!(
                        "--target {text:?} has no host: write it as http://HOST:PORT"
                    ));
                }
                if url.path() != "/" || url.query().is_some() {
                    return Err(format!(
                        "--target {text:?} must be the server's base URL, http://HOST:PORT, without a path"
                    ));
                }
                Ok(Target::Http(text.trim_end_matches('/').to_owned()))
            }
            "https" => Err(format!(
                "--target {text:?}: the benchmark client speaks plain HTTP only; run it against http://HOST:PORT"
            )),
            "embedded" if !rest.is_empty() => Ok(Target::Embedded(PathBuf::from(rest))),
            "embedded" => Err(
                "--target embedded: needs the data directory, e.g. embedded:/tmp/proteus-bench"
                    .into(),
            ),
            "nats" => needs_host(Target::Nats(text.to_owned())),
            "redis" => needs_host(Target::Redis(text.to_owned())),
            "postgres" | "postgresql" => needs_host(Target::Postgres(text.to_owned())),
            _ => Err(unknown()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Http(url) => write!(f, "proteus http {url}"),
            Target::Embedded(dir) => write!(f, "proteus in-process {}", dir.display()),
            Target::Nats(url) => write!(f, "nats jetstream {}", redact(url)),
            Target::Redis(url) => write!(f, "redis streams {}", redact(url)),
            Target::Postgres(url) => write!(f, "postgresql {}", redact(url)),
        }
    }
}

pub use proteus_redact::redact;

/// Sends batches for one producer, over its own connection.
#[async_trait]
pub trait Sink: Send {
    /// Turns a batch into what the target is sent (parsing, arrays, headers). Not timed.
    fn stage(&mut self, batch: Batch) -> Result<(), String>;

    /// Sends the staged batch and returns once the target has acknowledged every event of it
    /// as durable as the target is configured to be. Timed: this is the batch latency.
    async fn send(&mut self) -> Result<(), String>;
}

/// A prepared target: opens sinks, and cleans up at the end.
#[async_trait]
pub trait Bench: Send + Sync {
    /// A sink with its own connection (or, in-process, its own handle).
    async fn sink(&self) -> Result<Box<dyn Sink>, String>;

    /// Ends the run: removes the stream, key or table created for it unless `--keep` was
    /// given, and shuts the in-process log down.
    async fn finish(&self) -> Result<(), String>;
}

/// What a workload needs created before it starts.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Topic (Proteus), stream (NATS) or key (Redis).
    pub topic: TopicName,
    /// Partitions of the Proteus topic; ignored by the other targets.
    pub partitions: u32,
    /// Durability of the in-process log.
    pub durability: Durability,
    /// Table for PostgreSQL.
    pub postgres_table: String,
    /// Leave the stream, key or table in place at the end.
    pub keep: bool,
    /// Connections the producers will open (HTTP keeps that many alive).
    pub producers: usize,
}

/// Connects to the target and creates what the run writes to.
pub async fn prepare(target: &Target, setup: &Setup) -> Result<Arc<dyn Bench>, String> {
    Ok(match target {
        Target::Http(url) => Arc::new(HttpBench::prepare(url, setup).await?),
        Target::Embedded(dir) => Arc::new(EmbeddedBench::prepare(dir, setup).await?),
        Target::Nats(url) => Arc::new(nats::NatsBench::prepare(url, setup).await?),
        Target::Redis(url) => Arc::new(redis::RedisBench::prepare(url, setup).await?),
        Target::Postgres(url) => Arc::new(postgres::PostgresBench::prepare(url, setup).await?),
    })
}

/// Runs `future` for at most [`CONNECT_TIMEOUT`], naming `what` if it does not finish.
pub async fn connecting<T>(
    what: &str,
    future: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(CONNECT_TIMEOUT, future)
        .await
        .map_err(|_| {
            format!(
                "{what}: no answer within {} s; is it running and listening there?",
                CONNECT_TIMEOUT.as_secs()
            )
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_from_their_scheme() {
        assert_eq!(
            "http://127.0.0.1:7070/".parse::<Target>().unwrap(),
            Target::Http("http://127.0.0.1:7070".into())
        );
        assert_eq!(
            "embedded:/tmp/x".parse::<Target>().unwrap(),
            Target::Embedded("/tmp/x".into())
        );
        assert_eq!(
            "nats://127.0.0.1:4222".parse::<Target>().unwrap(),
            Target::Nats("nats://127.0.0.1:4222".into())
        );
        assert!(matches!(
            "redis://127.0.0.1:6379".parse::<Target>().unwrap(),
            Target::Redis(_)
        ));
        assert!(matches!(
            "postgres://u@h:5432/db".parse::<Target>().unwrap(),
            Target::Postgres(_)
        ));
        assert!(matches!(
            "postgresql://u@h:5432/db".parse::<Target>().unwrap(),
            Target::Postgres(_)
        ));
    }

    #[test]
    fn reports_never_show_passwords() {
        let target: Target = "postgres://u:p@h:1/d".parse().unwrap();
        assert_eq!(target.to_string(), "postgresql postgres://u:***@h:1/d");
    }

    #[test]
    fn bad_targets_say_what_to_write() {
        let error = "kafka://x:9092".parse::<Target>().unwrap_err();
        assert!(error.contains("nats://HOST:PORT"), "{error}");
        assert!("127.0.0.1:7070".parse::<Target>().is_err());
        assert!(
            "no-scheme"
                .parse::<Target>()
                .unwrap_err()
                .contains("unknown --target")
        );
        assert!(
            "embedded:"
                .parse::<Target>()
                .unwrap_err()
                .contains("data directory")
        );
        assert!(
            "https://x:1"
                .parse::<Target>()
                .unwrap_err()
                .contains("plain HTTP")
        );
        assert!(
            "http://x:1/v1"
                .parse::<Target>()
                .unwrap_err()
                .contains("without a path")
        );
        assert!("http://".parse::<Target>().is_err());
        assert!("nats://".parse::<Target>().unwrap_err().contains("no host"));
        assert!("redis:".parse::<Target>().unwrap_err().contains("no host"));
    }
}
