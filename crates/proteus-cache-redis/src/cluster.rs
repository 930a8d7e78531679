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

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use crate::reopening::Reopening;

pub(crate) struct HealingCluster {
    client: ClusterClient,
    connection: Reopening<ClusterConnection>,
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
            connection: Reopening::new(Some(connection)),
            shown: shown.to_owned(),
        })
    }

    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        let (generation, mut connection) = self
            .connection
            .get(|| self.client.get_async_connection())
            .await?;
        let answer = command.query_async(&mut connection).await;
        if answer.as_ref().is_err_and(redis::RedisError::is_timeout)
            && self.connection.drop_generation(generation).await
        {
            tracing::warn!(
                url = %self.shown,
                "a Redis Cluster call timed out; the next call opens a fresh cluster connection"
            );
        }
        answer
    }
}
