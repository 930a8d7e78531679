//! The peer: a NATS JetStream durable pull consumer on the stream the producers write to,
//! reading with the client's continuous pull (`messages()`, which keeps batches requested ahead).
//!
//! Latency mode acknowledges each message (`AckPolicy::Explicit`); drain mode acknowledges the
//! last message of each batch (`AckPolicy::All`, JetStream's batch acknowledgement). NATS
//! acknowledgements are fire-and-forget publishes: the client does not wait for the server to
//! store them, whereas a Proteus acknowledgement returns once durable.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_trait::async_trait;
use futures_util::{FutureExt, StreamExt};
use proteus_log::TopicName;
use serde::Deserialize;

use super::{GROUP, Mode, Receiver};
use crate::targets::nats::{connect, stream_name};

/// How long one `receive` waits for a first message.
const WAIT: Duration = Duration::from_secs(1);
/// How long the server may take to apply the last acknowledgements.
const SETTLE: Duration = Duration::from_secs(10);
/// Unacknowledged messages the server lets the consumer hold (its flow control).
const ACK_PENDING_MAX: i64 = 1_000_000;

pub struct PullConsumer {
    consumer: consumer::PullConsumer,
    messages: consumer::pull::Stream,
    ack_each: bool,
    pull_events: usize,
}

impl PullConsumer {
    pub async fn open(
        url: &str,
        topic: &TopicName,
        mode: Mode,
        pull_events: u32,
    ) -> Result<PullConsumer, String> {
        let jetstream = jetstream::new(connect(url).await?);
        let name = stream_name(topic.as_str());
        let stream = jetstream
            .get_stream(&name)
            .await
            .map_err(|e| format!("opening JetStream stream {name} failed: {e}"))?;
        let (ack_policy, deliver_policy) = match mode {
            Mode::Latency => (consumer::AckPolicy::Explicit, consumer::DeliverPolicy::New),
            Mode::Drain => (consumer::AckPolicy::All, consumer::DeliverPolicy::All),
        };
        let pull: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(GROUP.to_owned()),
                ack_policy,
                deliver_policy,
                max_ack_pending: ACK_PENDING_MAX,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating durable consumer {GROUP} on {name} failed: {e}"))?;
        let messages = pull
            .stream()
            .max_messages_per_batch(pull_events as usize)
            .messages()
            .await
            .map_err(|e| format!("starting to pull from {name} failed: {e}"))?;
        Ok(PullConsumer {
            consumer: pull,
            messages,
            ack_each: mode == Mode::Latency,
            pull_events: pull_events as usize,
        })
    }
}

#[derive(Deserialize)]
struct EventId<'a> {
    #[serde(borrow)]
    id: &'a str,
}

#[async_trait]
impl Receiver for PullConsumer {
    async fn receive(
        &mut self,
        seen: &mut (dyn for<'s> FnMut(&'s str) + Send),
    ) -> Result<usize, String> {
        let first = match tokio::time::timeout(WAIT, self.messages.next()).await {
            Err(_) => return Ok(0),
            Ok(None) => return Err("the JetStream consumer's message stream ended".into()),
            Ok(Some(message)) => message,
        };
        let mut batch = vec![first];
        // Then whatever has already arrived, without waiting.
        while batch.len() < self.pull_events {
            match self.messages.next().now_or_never() {
                Some(Some(message)) => batch.push(message),
                _ => break,
            }
        }
        let count = batch.len();
        let mut last = None;
        for message in batch {
            let message = message.map_err(|e| format!("pulling from JetStream failed: {e}"))?;
            let event: EventId = serde_json::from_slice(&message.payload)
                .map_err(|e| format!("a JetStream message is not a CloudEvent with an id: {e}"))?;
            seen(event.id);
            if self.ack_each {
                message
                    .ack()
                    .await
                    .map_err(|e| format!("acknowledging failed: {e}"))?;
            } else {
                last = Some(message);
            }
        }
        if let Some(message) = last {
            message
                .ack()
                .await
                .map_err(|e| format!("acknowledging failed: {e}"))?;
        }
        Ok(count)
    }

    async fn settle(&mut self) -> Result<(), String> {
        // Acknowledgements are unconfirmed publishes: wait until the server has applied them
        // all, so the run ends, as on Proteus, when every acknowledgement took effect.
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let info = self
                .consumer
                .info()
                .await
                .map_err(|e| format!("reading the JetStream consumer's state failed: {e}"))?;
            if info.num_ack_pending == 0 && info.num_pending == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "JetStream still reports {} unacknowledged and {} undelivered messages {} s after the last acknowledgement",
                    info.num_ack_pending,
                    info.num_pending,
                    SETTLE.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
