//! Consumer groups: administration, the member calls, and [`Consumer`], which runs a handler
//! over a group with heartbeats and acks taken care of.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::{Client, ClientError, Outage};

/// What joining a group gives a member.
#[derive(Debug, Clone, Deserialize)]
pub struct Membership {
    pub member_id: String,
    pub generation: u64,
    pub partitions: Vec<u32>,
    pub session_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Assignment {
    pub member_id: String,
    pub generation: u64,
    pub partitions: Vec<u32>,
}

/// One event handed to a member.
#[derive(Debug, Clone, Deserialize)]
pub struct Delivered {
    /// `partition:offset`: what ack, nack and in-progress take.
    pub position: String,
    pub partition: u32,
    pub offset: u64,
    /// 1 on the first delivery.
    pub delivery_count: u32,
    pub deadline_ms: i64,
    /// A dead letter replayed into the group.
    pub replay: bool,
    pub append_time_ms: i64,
    /// The CloudEvent as stored.
    pub event: Box<RawValue>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Pulled {
    pub generation: u64,
    pub partitions: Vec<u32>,
    pub events: Vec<Delivered>,
}

fn group_path(topic: &str, group: &str) -> String {
    format!("/v1/topics/{topic}/groups/{group}")
}

impl Client {
    /// Creates a group or updates its settings; `config` is the JSON body of
    /// `PUT /v1/topics/{topic}/groups/{group}`.
    pub async fn put_group(
        &self,
        topic: &str,
        group: &str,
        config: &Value,
    ) -> Result<Value, ClientError> {
        let response = self
            .send(
                self.http
                    .put(self.url(&group_path(topic, group)))
                    .json(config),
            )
            .await?;
        self.json(response).await
    }

    pub async fn list_groups(&self, topic: &str) -> Result<Vec<Value>, ClientError> {
        let response = self
            .send(
                self.http
                    .get(self.url(&format!("/v1/topics/{topic}/groups"))),
            )
            .await?;
        let body: Value = self.json(response).await?;
        Ok(body["groups"].as_array().cloned().unwrap_or_default())
    }

    pub async fn describe_group(&self, topic: &str, group: &str) -> Result<Value, ClientError> {
        let response = self
            .send(self.http.get(self.url(&group_path(topic, group))))
            .await?;
        self.json(response).await
    }

    pub async fn delete_group(&self, topic: &str, group: &str) -> Result<(), ClientError> {
        self.send(self.http.delete(self.url(&group_path(topic, group))))
            .await?;
        Ok(())
    }

    /// Moves the group to `to` (`"beginning"`, `"end"`, `{"offset": n}` or `{"time_ms": t}`);
    /// returns the new committed offset of each partition.
    pub async fn reset_group(
        &self,
        topic: &str,
        group: &str,
        to: &Value,
        partitions: Option<&[u32]>,
    ) -> Result<Value, ClientError> {
        let mut body = json!({ "to": to });
        if let Some(partitions) = partitions {
            body["partitions"] = json!(partitions);
        }
        let response = self
            .send(
                self.http
                    .post(self.url(&format!("{}/reset", group_path(topic, group))))
                    .json(&body),
            )
            .await?;
        let body: Value = self.json(response).await?;
        Ok(body["committed"].clone())
    }

    pub async fn join_group(
        &self,
        topic: &str,
        group: &str,
        member_id: Option<&str>,
    ) -> Result<Membership, ClientError> {
        let body = match member_id {
            Some(id) => json!({ "member_id": id }),
            None => json!({}),
        };
        let response = self
            .send(
                self.http
                    .post(self.url(&format!("{}/members", group_path(topic, group))))
                    .json(&body),
            )
            .await?;
        self.json(response).await
    }

    fn member_url(&self, topic: &str, group: &str, member: &str, action: &str) -> String {
        self.url(&format!(
            "{}/members/{member}{action}",
            group_path(topic, group)
        ))
    }

    pub async fn heartbeat(
        &self,
        topic: &str,
        group: &str,
        member: &str,
    ) -> Result<Assignment, ClientError> {
        let response = self
            .send(
                self.http
                    .post(self.member_url(topic, group, member, "/heartbeat")),
            )
            .await?;
        self.json(response).await
    }

    pub async fn leave_group(
        &self,
        topic: &str,
        group: &str,
        member: &str,
    ) -> Result<(), ClientError> {
        self.send(self.http.delete(self.member_url(topic, group, member, "")))
            .await?;
        Ok(())
    }

    pub async fn pull(
        &self,
        topic: &str,
        group: &str,
        member: &str,
        max_events: u32,
        wait_ms: u64,
    ) -> Result<Pulled, ClientError> {
        let response = self
            .send(
                self.http
                    .post(self.member_url(topic, group, member, "/pull"))
                    .timeout(Duration::from_millis(wait_ms + 30_000))
                    .json(&json!({ "max_events": max_events, "max_bytes": 16 * 1024 * 1024, "wait_ms": wait_ms })),
            )
            .await?;
        self.json(response).await
    }

    pub async fn ack(
        &self,
        topic: &str,
        group: &str,
        member: &str,
        generation: u64,
        positions: &[String],
    ) -> Result<Value, ClientError> {
        let body = json!({ "generation": generation, "positions": positions });
        let response = self
            .send(
                self.http
                    .post(self.member_url(topic, group, member, "/ack"))
                    .json(&body),
            )
            .await?;
        self.json(response).await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn nack(
        &self,
        topic: &str,
        group: &str,
        member: &str,
        generation: u64,
        positions: &[String],
        delay_ms: Option<u64>,
        error: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut body = json!({ "generation": generation, "positions": positions });
        if let Some(delay_ms) = delay_ms {
            body["delay_ms"] = json!(delay_ms);
        }
        if let Some(error) = error {
            body["error"] = json!(error);
        }
        let response = self
            .send(
                self.http
                    .post(self.member_url(topic, group, member, "/nack"))
                    .json(&body),
            )
            .await?;
        self.json(response).await
    }

    pub async fn in_progress(
        &self,
        topic: &str,
        group: &str,
        member: &str,
        generation: u64,
        positions: &[String],
    ) -> Result<Value, ClientError> {
        let body = json!({ "generation": generation, "positions": positions });
        let response = self
            .send(
                self.http
                    .post(self.member_url(topic, group, member, "/in-progress"))
                    .json(&body),
            )
            .await?;
        self.json(response).await
    }

    /// A page of dead letters from dead-letter offset `from`, and where the next page starts.
    pub async fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        from: u64,
        limit: u32,
    ) -> Result<(Vec<Value>, u64), ClientError> {
        let response = self
            .send(self.http.get(self.url(&format!(
                "{}/dead-letters?from={from}&limit={limit}",
                group_path(topic, group)
            ))))
            .await?;
        let body: Value = self.json(response).await?;
        Ok((
            body["dead_letters"].as_array().cloned().unwrap_or_default(),
            body["next_offset"].as_u64().unwrap_or(from),
        ))
    }

    /// Replays dead letters into the group: all of them, or those at the given dead-letter
    /// offsets. Returns how many were queued.
    pub async fn replay_dead_letters(
        &self,
        topic: &str,
        group: &str,
        offsets: Option<&[u64]>,
    ) -> Result<u64, ClientError> {
        let body = match offsets {
            Some(offsets) => json!({ "offsets": offsets }),
            None => json!({ "all": true }),
        };
        let response = self
            .send(
                self.http
                    .post(self.url(&format!("{}/dead-letters/replay", group_path(topic, group))))
                    .json(&body),
            )
            .await?;
        let body: Value = self.json(response).await?;
        Ok(body["replayed"].as_u64().unwrap_or(0))
    }
}

/// How a [`Consumer`] pulls.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Rejoin with this id after a restart to be recognised; a new id is made up when absent.
    pub member_id: Option<String>,
    pub max_events: u32,
    /// Long-poll wait of each pull; kept under the heartbeat interval.
    pub wait_ms: u64,
    /// How long [`Consumer::run`] keeps asking again while the server cannot be reached or
    /// answers 502, 503 or 504 (it restarts, or its backend elects a new leader) before
    /// returning the error; 0 returns the first.
    pub unavailable_wait_max_ms: u64,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            member_id: None,
            max_events: 100,
            wait_ms: 5_000,
            unavailable_wait_max_ms: 60_000,
        }
    }
}

/// A member of a group that runs a handler on every event: acks what the handler accepted
/// (one request per batch), nacks what it refused with its error, heartbeats while the handler
/// runs, rejoins if its session was lost, and rides out a server that cannot serve for a while
/// ([`ConsumerOptions::unavailable_wait_max_ms`]).
///
/// ```no_run
/// # async fn example() -> Result<(), proteus_client::ClientError> {
/// let client = proteus_client::Client::new("http://127.0.0.1:7070")?;
/// let mut consumer = proteus_client::Consumer::join(
///     client, "orders", "billing", Default::default()).await?;
/// consumer.run(|delivered| async move {
///     println!("{}", delivered.event);
///     Ok(()) // Err("reason".into()) nacks it for a retry
/// }, std::future::pending::<()>()).await?;
/// # Ok(()) }
/// ```
pub struct Consumer {
    client: Client,
    topic: String,
    group: String,
    options: ConsumerOptions,
    membership: Membership,
    outage: Outage,
}

impl Consumer {
    pub async fn join(
        client: Client,
        topic: &str,
        group: &str,
        options: ConsumerOptions,
    ) -> Result<Consumer, ClientError> {
        let membership = client
            .join_group(topic, group, options.member_id.as_deref())
            .await?;
        Ok(Consumer {
            client,
            topic: topic.to_owned(),
            group: group.to_owned(),
            outage: Outage::new(options.unavailable_wait_max_ms),
            options,
            membership,
        })
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Pulls and handles events until `stop` resolves, then leaves the group.
    pub async fn run<F, Fut>(
        &mut self,
        mut handler: F,
        stop: impl Future<Output = ()>,
    ) -> Result<(), ClientError>
    where
        F: FnMut(Delivered) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        tokio::pin!(stop);
        loop {
            let wait_ms = self
                .options
                .wait_ms
                .min(self.membership.heartbeat_interval_ms);
            let pulled = tokio::select! {
                () = &mut stop => break,
                pulled = self.client.pull(&self.topic, &self.group, &self.membership.member_id, self.options.max_events, wait_ms) => pulled,
            };
            let pulled = match pulled {
                Ok(pulled) => pulled,
                Err(error) if is_lost_session(&error) => {
                    if !self.rejoin(&mut stop).await? {
                        return Ok(());
                    }
                    continue;
                }
                Err(error) => {
                    let pause = self.outage.pause_for(&error).ok_or(error)?;
                    if Outage::sleep_unless_stopped(&mut stop, pause).await {
                        break;
                    }
                    continue;
                }
            };
            self.outage.end();
            self.membership.generation = pulled.generation;
            self.membership.partitions = pulled.partitions;
            if pulled.events.is_empty() {
                continue;
            }
            let mut acks = Vec::new();
            let mut nacks: Vec<(String, String)> = Vec::new();
            {
                // Heartbeat while the handler works so a slow batch does not end the session.
                let heartbeat = self.heartbeat_while_busy();
                tokio::pin!(heartbeat);
                for delivered in pulled.events {
                    let position = delivered.position.clone();
                    let handled = tokio::select! {
                        result = handler(delivered) => result,
                        () = &mut heartbeat => unreachable!("the heartbeat loop never ends"),
                    };
                    match handled {
                        Ok(()) => acks.push(position),
                        Err(reason) => nacks.push((position, reason)),
                    }
                }
            }
            if !self.settle(acks, nacks, &mut stop).await? {
                // Stopped while the server was unavailable: what was not settled is
                // delivered again.
                return Ok(());
            }
        }
        self.client
            .leave_group(&self.topic, &self.group, &self.membership.member_id)
            .await
            .or_else(|error| {
                if is_lost_session(&error) {
                    Ok(())
                } else {
                    Err(error)
                }
            })
    }

    /// Acks `acks` and nacks `nacks`, asking again through an outage; `false` when `stop`
    /// came first.
    async fn settle(
        &mut self,
        acks: Vec<String>,
        nacks: Vec<(String, String)>,
        stop: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<bool, ClientError> {
        let generation = self.membership.generation;
        let member = self.membership.member_id.as_str();
        let (client, topic, group) = (&self.client, self.topic.as_str(), self.group.as_str());
        if !acks.is_empty() {
            let ack = || client.ack(topic, group, member, generation, &acks);
            if !until_taken(&mut self.outage, stop, ack).await? {
                return Ok(false);
            }
        }
        for (position, reason) in &nacks {
            let positions = std::slice::from_ref(position);
            let nack = || {
                client.nack(
                    topic,
                    group,
                    member,
                    generation,
                    positions,
                    None,
                    Some(reason),
                )
            };
            if !until_taken(&mut self.outage, stop, nack).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn heartbeat_while_busy(&self) {
        let interval = Duration::from_millis(self.membership.heartbeat_interval_ms.max(10));
        loop {
            tokio::time::sleep(interval).await;
            let _ = self
                .client
                .heartbeat(&self.topic, &self.group, &self.membership.member_id)
                .await;
        }
    }

    /// Joins again under the same member id, asking again through an outage; `false` when
    /// `stop` came first.
    async fn rejoin(
        &mut self,
        stop: &mut Pin<&mut impl Future<Output = ()>>,
    ) -> Result<bool, ClientError> {
        loop {
            let joined = self
                .client
                .join_group(&self.topic, &self.group, Some(&self.membership.member_id))
                .await;
            match joined {
                Ok(membership) => {
                    self.membership = membership;
                    self.outage.end();
                    return Ok(true);
                }
                Err(error) => {
                    let pause = self.outage.pause_for(&error).ok_or(error)?;
                    if Outage::sleep_unless_stopped(stop, pause).await {
                        return Ok(false);
                    }
                }
            }
        }
    }
}

/// Sends an ack or nack (`send`) until the server takes it or fences it (the partition moved:
/// its new owner gets the events again), asking again through an outage; `false` when `stop`
/// came first.
async fn until_taken<Fut>(
    outage: &mut Outage,
    stop: &mut Pin<&mut impl Future<Output = ()>>,
    send: impl Fn() -> Fut,
) -> Result<bool, ClientError>
where
    Fut: Future<Output = Result<Value, ClientError>>,
{
    loop {
        match send().await {
            Ok(_) => break,
            Err(error) if is_fenced(&error) => break,
            Err(error) => {
                let pause = outage.pause_for(&error).ok_or(error)?;
                if Outage::sleep_unless_stopped(stop, pause).await {
                    return Ok(false);
                }
            }
        }
    }
    outage.end();
    Ok(true)
}

fn problem_type(error: &ClientError) -> Option<&str> {
    match error {
        ClientError::Problem { body, .. } => body.get("type").and_then(|t| t.as_str()),
        _ => None,
    }
}

fn is_lost_session(error: &ClientError) -> bool {
    problem_type(error) == Some("/problems/unknown-member")
}

fn is_fenced(error: &ClientError) -> bool {
    matches!(
        problem_type(error),
        Some(
            "/problems/stale-generation"
                | "/problems/not-owner"
                | "/problems/unknown-member"
                | "/problems/not-delivered"
        )
    )
}
