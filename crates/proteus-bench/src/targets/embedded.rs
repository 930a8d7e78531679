//! Proteus in this process: the embedded log, appended to through the `EventAppender` port.

use std::path::Path;

use async_trait::async_trait;
use proteus_log::port::{EventAppender, Log, TopicAdmin};
use proteus_log::{AppendReceipt, Event, TopicConfig, TopicName};
use proteus_log_embedded::{Durability, EmbeddedConfig, EmbeddedLog};

use super::{Bench, Setup, Sink};
use crate::events::Batch;

pub struct EmbeddedBench {
    log: EmbeddedLog,
    topic: TopicName,
}

/// Opens the log in `dir` with `durability`.
pub async fn open(dir: &Path, durability: Durability) -> Result<EmbeddedLog, String> {
    EmbeddedLog::open(EmbeddedConfig {
        durability,
        ..EmbeddedConfig::new(dir)
    })
    .await
    .map_err(|e| format!("cannot open the log in {}: {e}", dir.display()))
}

/// Creates `topic` with `partitions` partitions unless it exists (an existing topic keeps its
/// settings; a different partition count is an error).
pub async fn ensure_topic(
    log: &EmbeddedLog,
    topic: &TopicName,
    config: TopicConfig,
) -> Result<(), String> {
    match log.describe_topic(topic).await {
        Ok(description) if description.config.partitions == config.partitions => Ok(()),
        Ok(description) => Err(format!(
            "topic '{topic}' already has {} partitions, not {}: give --partitions {} or another --topic",
            description.config.partitions, config.partitions, description.config.partitions
        )),
        Err(_) => log
            .put_topic(topic, config)
            .await
            .map(drop)
            .map_err(|e| format!("cannot create topic '{topic}': {e}")),
    }
}

/// Checks receipts: one per event, none a duplicate.
pub fn check_receipts(receipts: &[AppendReceipt], events: usize) -> Result<(), String> {
    if receipts.len() != events {
        return Err(format!(
            "the log returned {} receipts for {events} events",
            receipts.len()
        ));
    }
    let duplicates = receipts.iter().filter(|r| r.duplicate).count();
    if duplicates > 0 {
        return Err(format!(
            "{duplicates} of {events} events were taken for duplicates of earlier ones and not appended"
        ));
    }
    Ok(())
}

impl EmbeddedBench {
    /// Sinks appending to `topic` of a log the caller already opened (and will shut down).
    pub fn on(log: EmbeddedLog, topic: TopicName) -> EmbeddedBench {
        EmbeddedBench { log, topic }
    }

    pub async fn prepare(dir: &Path, setup: &Setup) -> Result<EmbeddedBench, String> {
        let log = open(dir, setup.durability).await?;
        let config = TopicConfig {
            partitions: setup.partitions,
            ..TopicConfig::default()
        };
        if let Err(e) = ensure_topic(&log, &setup.topic, config).await {
            let _ = log.shutdown().await;
            return Err(e);
        }
        Ok(EmbeddedBench {
            log,
            topic: setup.topic.clone(),
        })
    }
}

#[async_trait]
impl Bench for EmbeddedBench {
    async fn sink(&self) -> Result<Box<dyn Sink>, String> {
        Ok(Box::new(EmbeddedSink {
            log: self.log.clone(),
            topic: self.topic.clone(),
            staged: Vec::new(),
        }))
    }

    async fn finish(&self) -> Result<(), String> {
        self.log
            .shutdown()
            .await
            .map_err(|e| format!("shutting the log down failed: {e}"))
    }
}

struct EmbeddedSink {
    log: EmbeddedLog,
    topic: TopicName,
    staged: Vec<Event>,
}

#[async_trait]
impl Sink for EmbeddedSink {
    fn stage(&mut self, batch: Batch) -> Result<(), String> {
        // The server does this parsing when a request arrives; in-process it is done before the
        // clock starts, so the latency is the append's alone.
        self.staged = Event::batch_from_json(&batch.body).map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn send(&mut self) -> Result<(), String> {
        let events = std::mem::take(&mut self.staged);
        let count = events.len();
        let receipts = self
            .log
            .append(&self.topic, events)
            .await
            .map_err(|e| format!("append failed: {e}"))?;
        check_receipts(&receipts, count)
    }
}
