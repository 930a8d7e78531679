//! NATS JetStream: a file-backed stream, and asynchronous publishing (every message of a batch
//! published, then every acknowledgement awaited).

use async_nats::jetstream;
use async_nats::jetstream::message::PublishMessage;
use async_trait::async_trait;

use super::{Bench, Setup, Sink, connecting};
use crate::events::Batch;

/// The stream for a topic: stream names cannot hold `.`, so it becomes `_`.
pub fn stream_name(topic: &str) -> String {
    topic.replace('.', "_")
}

pub struct NatsBench {
    url: String,
    stream: String,
    subject: String,
    keep: bool,
}

pub(crate) async fn connect(url: &str) -> Result<async_nats::Client, String> {
    connect_for(url, "--target").await
}

/// Connects to the NATS server `flag` names; every failure says how to start it.
pub(crate) async fn connect_for(url: &str, flag: &str) -> Result<async_nats::Client, String> {
    let shown = super::redact(url);
    let hint = format!(
        "start it with `nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server` or fix {flag}"
    );
    connecting(&format!("NATS at {shown}"), async {
        async_nats::ConnectOptions::new()
            .connection_timeout(super::CONNECT_TIMEOUT)
            .connect(url)
            .await
            .map_err(|e| format!("cannot reach NATS at {shown}: {e}; {hint}"))
    })
    .await
    .map_err(|e| {
        if e.contains(&hint) {
            e
        } else {
            format!("{e}; {hint}")
        }
    })
}

/// Deletes `stream` if it exists.
pub(crate) async fn delete_stream(
    jetstream: &jetstream::Context,
    stream: &str,
) -> Result<(), String> {
    match jetstream.delete_stream(stream).await {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::DeleteStreamErrorKind::JetStream(ref error)
                    if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(format!("deleting stream {stream} failed: {e}")),
    }
}

impl NatsBench {
    pub async fn prepare(url: &str, setup: &Setup) -> Result<NatsBench, String> {
        let stream = stream_name(setup.topic.as_str());
        let client = connect(url).await?;
        let jetstream = jetstream::new(client);
        delete_stream(&jetstream, &stream)
            .await
            .map_err(|e| format!("{e}; is JetStream enabled (nats-server -js)?"))?;
        jetstream
            .create_stream(jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![format!("{}.>", setup.topic)],
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating JetStream stream {stream} failed: {e}"))?;
        Ok(NatsBench {
            url: url.to_owned(),
            stream,
            subject: format!("{}.events", setup.topic),
            keep: setup.keep,
        })
    }
}

#[async_trait]
impl Bench for NatsBench {
    async fn sink(&self) -> Result<Box<dyn Sink>, String> {
        let client = connect(&self.url).await?;
        Ok(Box::new(NatsSink {
            jetstream: jetstream::new(client),
            subject: self.subject.clone(),
            staged: Vec::new(),
        }))
    }

    async fn finish(&self) -> Result<(), String> {
        if self.keep {
            return Ok(());
        }
        let client = connect(&self.url).await?;
        delete_stream(&jetstream::new(client), &self.stream).await
    }
}

struct NatsSink {
    jetstream: jetstream::Context,
    subject: String,
    staged: Vec<PublishMessage>,
}

#[async_trait]
impl Sink for NatsSink {
    fn stage(&mut self, batch: Batch) -> Result<(), String> {
        // `Nats-Msg-Id` is the event id, so JetStream deduplicates like Proteus does.
        self.staged = (0..batch.len())
            .map(|i| {
                PublishMessage::build()
                    .payload(batch.event(i))
                    .message_id(batch.id(i))
            })
            .collect();
        Ok(())
    }

    async fn send(&mut self) -> Result<(), String> {
        let messages = std::mem::take(&mut self.staged);
        let count = messages.len();
        let mut acks = Vec::with_capacity(count);
        for message in messages {
            let ack = self
                .jetstream
                .send_publish(self.subject.clone(), message)
                .await
                .map_err(|e| format!("publish failed: {e}"))?;
            acks.push(ack);
        }
        let mut duplicates = 0;
        for ack in acks {
            let ack = ack
                .await
                .map_err(|e| format!("publish not acknowledged: {e}"))?;
            duplicates += usize::from(ack.duplicate);
        }
        if duplicates > 0 {
            return Err(format!(
                "{duplicates} of {count} messages were taken for duplicates of earlier ones and not stored"
            ));
        }
        Ok(())
    }
}
