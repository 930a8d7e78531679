//! A Proteus consumer group over HTTP: one member pulls with long polling and acknowledges each
//! batch in one request, keeping a few acknowledgements in flight while it pulls the next batch
//! (an acknowledgement returns once it is durable; many share one commit).

use async_trait::async_trait;
use proteus_client::{Client, ClientError};
use proteus_log::TopicName;
use serde::Deserialize;
use serde_json::json;
use tokio::task::JoinSet;

use super::{ACKS_IN_FLIGHT_MAX, GROUP, Mode, PULL_EVENTS_MAX, Receiver};

/// Long-poll wait of one pull.
const WAIT_MS: u64 = 1_000;

pub struct GroupMember {
    client: Client,
    topic: String,
    member: String,
    pull_events: u32,
    acks: JoinSet<Result<(), ClientError>>,
}

fn failed(what: &str, url: &str, error: ClientError) -> String {
    match error {
        ClientError::Unreachable { .. } => format!(
            "{what}: {error}; start Proteus with `proteus serve --listen HOST:PORT --data-dir DIR` or fix --target ({url})"
        ),
        other => format!("{what}: {other}"),
    }
}

/// Deletes `topic` (and so its groups) if it exists, so a run starts from an empty topic.
pub async fn delete_topic(url: &str, topic: &TopicName) -> Result<(), String> {
    let client = Client::new(url).map_err(|e| e.to_string())?;
    match client.delete_topic(topic.as_str()).await {
        Ok(()) | Err(ClientError::Problem { status: 404, .. }) => Ok(()),
        Err(e) => Err(failed(&format!("deleting topic '{topic}'"), url, e)),
    }
}

impl GroupMember {
    /// Creates the group (at the end of the topic for latency, at its beginning with room for
    /// the largest batches for drain) and joins it.
    pub async fn open(
        url: &str,
        topic: &TopicName,
        mode: Mode,
        pull_events: u32,
    ) -> Result<GroupMember, String> {
        let client = Client::new(url).map_err(|e| e.to_string())?;
        let config = match mode {
            Mode::Latency => json!({ "start": "end" }),
            Mode::Drain => json!({
                "start": "beginning",
                "unacked_events_max": 1_000_000,
                "batch": { "events_max": PULL_EVENTS_MAX, "bytes_max": 16 * 1024 * 1024 },
            }),
        };
        client
            .put_group(topic.as_str(), GROUP, &config)
            .await
            .map_err(|e| failed(&format!("creating group '{GROUP}'"), url, e))?;
        let membership = client
            .join_group(topic.as_str(), GROUP, Some("bench-member"))
            .await
            .map_err(|e| failed(&format!("joining group '{GROUP}'"), url, e))?;
        Ok(GroupMember {
            client,
            topic: topic.to_string(),
            member: membership.member_id,
            pull_events,
            acks: JoinSet::new(),
        })
    }

    async fn wait_for_one_ack(&mut self) -> Result<(), String> {
        match self.acks.join_next().await {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(format!("acknowledging failed: {e}")),
            Some(Err(e)) => Err(format!("an acknowledgement task failed: {e}")),
        }
    }
}

/// Only the id of an event is read.
#[derive(Deserialize)]
struct EventId<'a> {
    #[serde(borrow)]
    id: &'a str,
}

#[async_trait]
impl Receiver for GroupMember {
    async fn receive(
        &mut self,
        seen: &mut (dyn for<'s> FnMut(&'s str) + Send),
    ) -> Result<usize, String> {
        let pulled = self
            .client
            .pull(&self.topic, GROUP, &self.member, self.pull_events, WAIT_MS)
            .await
            .map_err(|e| format!("pulling failed: {e}"))?;
        let count = pulled.events.len();
        if count == 0 {
            return Ok(0);
        }
        let mut positions = Vec::with_capacity(count);
        for delivered in pulled.events {
            let event: EventId = serde_json::from_str(delivered.event.get())
                .map_err(|e| format!("a delivered event has no id: {e}"))?;
            seen(event.id);
            positions.push(delivered.position);
        }
        while self.acks.len() >= ACKS_IN_FLIGHT_MAX {
            self.wait_for_one_ack().await?;
        }
        let (client, topic, member) =
            (self.client.clone(), self.topic.clone(), self.member.clone());
        let generation = pulled.generation;
        self.acks.spawn(async move {
            client
                .ack(&topic, GROUP, &member, generation, &positions)
                .await
                .map(drop)
        });
        Ok(count)
    }

    async fn settle(&mut self) -> Result<(), String> {
        while !self.acks.is_empty() {
            self.wait_for_one_ack().await?;
        }
        // Every acknowledgement returned: the group's committed position must be the end.
        let described = self
            .client
            .describe_group(&self.topic, GROUP)
            .await
            .map_err(|e| format!("describing group '{GROUP}' failed: {e}"))?;
        let lag = described["lag_events"].as_u64();
        if lag != Some(0) {
            return Err(format!(
                "every event was acknowledged but group '{GROUP}' reports lag_events {lag:?}; its description: {described}"
            ));
        }
        Ok(())
    }
}
