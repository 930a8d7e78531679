//! Redis Streams: one connection per producer, each batch one pipeline of `XADD`s.

use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use super::{Bench, Setup, Sink, connecting};
use crate::events::Batch;

/// How long Redis may take to answer a pipeline (the client's default, 500 ms, is shorter than
/// an `appendfsync always` pipeline can take under load).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct RedisBench {
    client: redis::Client,
    url: String,
    key: String,
    keep: bool,
}

async fn connect(client: &redis::Client, url: &str) -> Result<MultiplexedConnection, String> {
    let shown = super::redact(url);
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(super::CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    connecting(&format!("Redis at {shown}"), async {
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| {
                format!(
                    "cannot reach Redis at {shown}: {e}; start it with `redis-server --daemonize yes --bind 127.0.0.1 --port 6379` or fix --target"
                )
            })
    })
    .await
}

async fn delete_key(connection: &mut MultiplexedConnection, key: &str) -> Result<(), String> {
    redis::cmd("DEL")
        .arg(key)
        .query_async::<()>(connection)
        .await
        .map_err(|e| format!("deleting stream key {key} failed: {e}"))
}

impl RedisBench {
    pub async fn prepare(url: &str, setup: &Setup) -> Result<RedisBench, String> {
        let client = redis::Client::open(url)
            .map_err(|e| format!("invalid Redis URL {}: {e}", super::redact(url)))?;
        let mut connection = connect(&client, url).await?;
        let key = setup.topic.as_str().to_owned();
        // Only a stream from an earlier run is replaced; any other key is someone's data.
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .map_err(|e| format!("reading the type of key {key} failed: {e}"))?;
        match kind.as_str() {
            "none" => {}
            "stream" => delete_key(&mut connection, &key).await?,
            other => {
                return Err(format!(
                    "Redis key {key} exists and holds a {other}, not a stream; choose another --topic"
                ));
            }
        }
        Ok(RedisBench {
            client,
            url: url.to_owned(),
            key,
            keep: setup.keep,
        })
    }
}

#[async_trait]
impl Bench for RedisBench {
    async fn sink(&self) -> Result<Box<dyn Sink>, String> {
        // Every call opens a new connection: producers do not share one.
        let connection = connect(&self.client, &self.url).await?;
        Ok(Box::new(RedisSink {
            connection,
            key: self.key.clone(),
            staged: None,
        }))
    }

    async fn finish(&self) -> Result<(), String> {
        if self.keep {
            return Ok(());
        }
        let mut connection = connect(&self.client, &self.url).await?;
        delete_key(&mut connection, &self.key).await
    }
}

struct RedisSink {
    connection: MultiplexedConnection,
    key: String,
    staged: Option<(redis::Pipeline, usize)>,
}

#[async_trait]
impl Sink for RedisSink {
    fn stage(&mut self, batch: Batch) -> Result<(), String> {
        let mut pipe = redis::pipe();
        for i in 0..batch.len() {
            pipe.cmd("XADD")
                .arg(&self.key)
                .arg("*")
                .arg("id")
                .arg(batch.id(i))
                .arg("event")
                .arg(&batch.body[batch.events[i].clone()]);
        }
        self.staged = Some((pipe, batch.len()));
        Ok(())
    }

    async fn send(&mut self) -> Result<(), String> {
        let (pipe, count) = self.staged.take().ok_or("no batch staged")?;
        let ids: Vec<String> = pipe
            .query_async(&mut self.connection)
            .await
            .map_err(|e| format!("XADD pipeline failed: {e}"))?;
        if ids.len() != count {
            return Err(format!(
                "Redis answered {} ids for {count} XADDs",
                ids.len()
            ));
        }
        Ok(())
    }
}
