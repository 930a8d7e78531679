//! Exposure events: which variant of which flag a unit (targeting key) was served, appended to a
//! topic for experiment analysis, without ever slowing an evaluation.
//!
//! An evaluation only hashes the targeting key (sampling) and tries to put a small record in a
//! bounded queue; a full queue drops the record and counts it
//! (`proteus_flag_exposures_dropped_total`). A background task appends the queue to the topic in
//! batches. Sampling is by targeting key, so a sampled unit has all of its exposures kept: what
//! an experiment's per-unit analysis needs.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use proteus_log::port::Log;
use proteus_log::{Event, LogError, TopicConfig, TopicName};
use serde_json::json;
use tokio::sync::mpsc;

/// The topic exposures go to.
pub const TOPIC: &str = "proteus.flags.exposures";
/// The CloudEvent type of an exposure.
pub const EVENT_TYPE: &str = "dev.proteus.flag.exposure";
/// Counter of exposures dropped because the queue was full.
pub const DROPPED_METRIC: &str = "proteus_flag_exposures_dropped_total";
/// Counter of exposures appended.
pub const APPENDED_METRIC: &str = "proteus_flag_exposures_total";

#[derive(Clone, Debug, PartialEq)]
pub struct ExposureConfig {
    /// Share of targeting keys whose exposures are kept, 0 (off) to 1 (all).
    pub sample_rate: f64,
    /// Exposures waiting to be appended; past it, new ones are dropped (and counted).
    pub queue_events_max: usize,
    /// Most exposures appended in one batch.
    pub batch_events_max: usize,
    /// Longest an exposure waits for its batch to fill.
    pub linger_ms: u64,
}

impl Default for ExposureConfig {
    fn default() -> Self {
        ExposureConfig {
            sample_rate: 0.0,
            queue_events_max: 100_000,
            batch_events_max: 1_000,
            linger_ms: 200,
        }
    }
}

/// One evaluation worth recording.
#[derive(Debug, Clone)]
pub struct Exposure {
    pub flag_set: String,
    pub flag: String,
    pub variant: String,
    pub targeting_key: String,
    pub reason: &'static str,
    pub time_ms: i64,
}

/// Where evaluations report exposures. Cloning shares the queue.
#[derive(Clone)]
pub struct ExposureSink {
    queue: Option<mpsc::Sender<Exposure>>,
    /// `sample_rate` as a threshold on a 64-bit hash.
    threshold: u64,
}

impl ExposureSink {
    /// A sink that records nothing.
    pub fn disabled() -> ExposureSink {
        ExposureSink {
            queue: None,
            threshold: 0,
        }
    }

    /// Creates the topic if needed and starts the appender task.
    pub async fn start(
        log: Arc<dyn Log>,
        config: ExposureConfig,
    ) -> Result<ExposureSink, LogError> {
        if config.sample_rate <= 0.0 {
            return Ok(ExposureSink::disabled());
        }
        let topic = TopicName::parse(TOPIC).expect("the exposure topic name is valid");
        match log.describe_topic(&topic).await {
            Ok(_) => {}
            Err(LogError::TopicNotFound { .. }) => {
                log.put_topic(&topic, TopicConfig::default()).await?;
            }
            Err(e) => return Err(e),
        }
        let (sender, receiver) = mpsc::channel(config.queue_events_max.max(1));
        tokio::spawn(append_batches(log, topic, receiver, config.clone()));
        Ok(ExposureSink {
            queue: Some(sender),
            threshold: (config.sample_rate.min(1.0) * u64::MAX as f64) as u64,
        })
    }

    /// Whether exposures of `targeting_key` are kept: cheap enough to call on every evaluation.
    pub fn samples(&self, targeting_key: &str) -> bool {
        if self.queue.is_none() || targeting_key.is_empty() {
            return false;
        }
        // SipHash with fixed keys: the same key is sampled the same way on every instance.
        let mut hasher = std::hash::DefaultHasher::new();
        targeting_key.hash(&mut hasher);
        hasher.finish() <= self.threshold
    }

    /// Queues `exposure` unless the queue is full (then it is dropped and counted).
    pub fn record(&self, exposure: Exposure) {
        if let Some(queue) = &self.queue
            && queue.try_send(exposure).is_err()
        {
            metrics::counter!(DROPPED_METRIC).increment(1);
        }
    }
}

async fn append_batches(
    log: Arc<dyn Log>,
    topic: TopicName,
    mut receiver: mpsc::Receiver<Exposure>,
    config: ExposureConfig,
) {
    let linger = Duration::from_millis(config.linger_ms);
    let mut batch = Vec::with_capacity(config.batch_events_max);
    while let Some(first) = receiver.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < config.batch_events_max {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(exposure)) => batch.push(exposure),
                Ok(None) | Err(_) => break,
            }
        }
        let events: Vec<Event> = batch.drain(..).filter_map(|e| to_event(&e)).collect();
        let count = events.len() as u64;
        match log.append(&topic, events).await {
            Ok(_) => metrics::counter!(APPENDED_METRIC).increment(count),
            Err(error) => {
                metrics::counter!(DROPPED_METRIC).increment(count);
                tracing::warn!(%error, count, "exposure events could not be appended and were dropped");
            }
        }
    }
}

/// The CloudEvent of an exposure; the targeting key is the partition key, so one unit's
/// exposures keep their order.
pub fn to_event(exposure: &Exposure) -> Option<Event> {
    let event = json!({
        "specversion": "1.0",
        "id": uuid::Uuid::now_v7().to_string(),
        "source": format!("/proteus/flagsets/{}", exposure.flag_set),
        "type": EVENT_TYPE,
        "subject": exposure.flag,
        "partitionkey": exposure.targeting_key,
        "datacontenttype": "application/json",
        "data": {
            "flagSet": exposure.flag_set,
            "flag": exposure.flag,
            "variant": exposure.variant,
            "targetingKey": exposure.targeting_key,
            "reason": exposure.reason,
            "time_ms": exposure.time_ms,
        },
    });
    let bytes = serde_json::to_vec(&event).ok()?;
    Event::from_json(&bytes).ok()
}
