//! A Redis Cluster connection that replaces itself after a call times out.
//!
//! The redis crate's cluster connection (1.8, and 2.0's release candidates) can wedge while
//! slots move between nodes (`redis-cli --cluster reshard`, a managed service scaling out):
//! its background task waits for a slot refresh that never gets its lock, and from then on
//! every call ends at the response bound, even after the move is over (seen in
//! `tests/it/cluster.rs`: eight calls in a row, 5 s each). A fresh connection learns the
//! topology again and works at once, so a call that times out drops the connection it used
//! and the next call opens another. Cache commands are idempotent; the call that timed out is
//! reported as it is (a miss, or a write that failed).

use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::sync::Mutex;

/// Longest a call waits for a connection to use: another caller may be opening one (to a
/// cluster that does not answer, say), and a call must stay bounded however many wait.
const CONNECTION_WAIT_MS: u64 = 5_000;

/// The connection in use and how many were dropped before it.
struct Current {
    generation: u64,
    connection: Option<ClusterConnection>,
}

pub(crate) struct HealingCluster {
    client: ClusterClient,
    current: Mutex<Current>,
    /// The cluster's URL without its password, for the log.
    shown: String,
}

impl HealingCluster {
    /// Opens the first connection (an error is the caller's to explain).
    pub(crate) async fn open(
        client: ClusterClient,
        shown: &str,
    ) -> redis::RedisResult<HealingCluster> {
        let connection = client.get_async_connection().await?;
        Ok(HealingCluster {
            client,
            current: Mutex::new(Current {
                generation: 0,
                connection: Some(connection),
            }),
            shown: shown.to_owned(),
        })
    }

    /// The connection to use and its generation, opening one if the last was dropped (one
    /// caller opens it; the others wait for it).
    async fn connection(&self) -> redis::RedisResult<(u64, ClusterConnection)> {
        let mut current = self.current.lock().await;
        let connection = match &current.connection {
            Some(connection) => connection.clone(),
            None => {
                let connection = self.client.get_async_connection().await?;
                current.connection = Some(connection.clone());
                connection
            }
        };
        Ok((current.generation, connection))
    }

    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        let wait = Duration::from_millis(CONNECTION_WAIT_MS);
        let (generation, mut connection) = match tokio::time::timeout(wait, self.connection()).await
        {
            Ok(connection) => connection?,
            Err(_) => return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        };
        let answer = command.query_async(&mut connection).await;
        if answer.as_ref().is_err_and(redis::RedisError::is_timeout) {
            let mut current = self.current.lock().await;
            // Calls that timed out on the same connection drop it once.
            if current.generation == generation {
                current.generation += 1;
                current.connection = None;
                tracing::warn!(
                    url = %self.shown,
                    "a Redis Cluster call timed out; the next call opens a fresh cluster connection"
                );
            }
        }
        answer
    }
}
