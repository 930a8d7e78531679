//! [`NatsGroupStore`]: the `GroupStore` port on a JetStream key-value bucket, one value per
//! group written by compare-and-set.

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{self, DeliverPolicy};
use async_nats::jetstream::stream::{self, DiscardPolicy, LastRawMessageErrorKind, StorageType};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use proteus_groups::StoreError;
use proteus_groups::store::check_fence;
use proteus_groups::{GroupConfig, GroupName, GroupRecord, GroupStore, PartitionProgress};
use proteus_log::TopicName;
use proteus_nats::client::{consumer_in_time, next_fetched};

use crate::config::NatsGroupStoreConfig;
use crate::error::{corrupt, failure};
use crate::leases::NatsLeaseStore;

/// The header JetStream key-value buckets mark deletes and purges with (`DEL`, `PURGE`).
const KV_OPERATION_HEADER: &str = "KV-Operation";

/// Gets of a listing without a consumer in flight at once.
const LISTING_GETS_IN_FLIGHT: usize = 16;

/// A listing's groups by topic, then group.
fn sorted(records: BTreeMap<String, GroupRecord>) -> Vec<GroupRecord> {
    let mut records: Vec<GroupRecord> = records.into_values().collect();
    records.sort_by(|a, b| (&a.topic, &a.group).cmp(&(&b.topic, &b.group)));
    records
}

/// Consumer groups in the bucket `<bucket_prefix>_GROUPS`; see the crate docs. Cloning shares
/// the connection.
#[derive(Clone)]
pub struct NatsGroupStore {
    config: NatsGroupStoreConfig,
    /// The configured URL with passwords hidden, for messages.
    url: String,
    client: async_nats::Client,
    groups: kv::Store,
    leases: kv::Store,
}

impl std::fmt::Debug for NatsGroupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsGroupStore")
            .field("url", &self.url)
            .field("bucket_prefix", &self.config.bucket_prefix)
            .finish()
    }
}

/// The bucket key of a group: `<topic>.<group>`, each `.` inside a name written `=` (names
/// never hold `=`, so the mapping is one-to-one, and a key never has an empty subject token).
pub(crate) fn group_key(topic: &TopicName, group: &GroupName) -> String {
    format!(
        "{}.{}",
        topic.as_str().replace('.', "="),
        group.as_str().replace('.', "=")
    )
}

/// Opens the bucket `name`, creating it (one value per key, file storage) when missing. The
/// stream is created with the settings JetStream's own key-value buckets use, directly:
/// the client's `create_key_value` first asks for account details NATS 2.9 does not send.
pub(crate) async fn ensure_bucket(
    js: &jetstream::Context,
    url: &str,
    name: &str,
    description: &str,
    (replicas, create): (usize, bool),
) -> Result<kv::Store, String> {
    let what = format!("opening key-value bucket {name}");
    match js.get_key_value(name).await {
        Ok(store) => return Ok(store),
        Err(error) if !create => {
            return Err(format!(
                "{what} at {url}: {error}; no consumer groups are kept under that bucket prefix there (a server creates the bucket when it starts with --groups nats://…): name the --groups-prefix of the servers that use it"
            ));
        }
        Err(_) => {}
    }
    let config = stream::Config {
        name: format!("KV_{name}"),
        description: Some(description.to_owned()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_messages: -1,
        max_bytes: -1,
        storage: StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: DiscardPolicy::New,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let stream_name = config.name.clone();
    // An error here may be another instance creating it at the same moment: open it then.
    let created = js.create_stream(config).await;
    let store = match js.get_key_value(name).await {
        Ok(store) => store,
        Err(error) => {
            return Err(match created {
                Err(create_error) => failure(url, &what, create_error),
                Ok(_) => failure(url, &what, error),
            });
        }
    };
    if replicas > 1 {
        wait_for_leader(js, &stream_name).await;
    }
    Ok(store)
}

/// Longest wait, after creating a replicated bucket, for its replicas to elect a leader.
const BUCKET_LEADER_WAIT_MS: u64 = 10_000;

/// Waits (at most [`BUCKET_LEADER_WAIT_MS`]) until the replicated stream `stream` has a
/// leader: a bucket just created on a cluster answers its first requests "no responders"
/// until one is elected, which a store opened on a fresh cluster would otherwise hand to its
/// first caller. Past the bound the store is opened anyway; its requests say the bucket has
/// no leader, a retriable error.
async fn wait_for_leader(js: &jetstream::Context, stream: &str) {
    let deadline = std::time::Instant::now() + Duration::from_millis(BUCKET_LEADER_WAIT_MS);
    while std::time::Instant::now() < deadline {
        // Getting the stream fetches its info: one request per look.
        if let Ok(handle) = js.get_stream(stream).await
            && (handle.cached_info().cluster.as_ref()).is_some_and(|c| c.leader.is_some())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl NatsGroupStore {
    /// Whether its NATS server is reachable on this handle's connection and answers JetStream
    /// requests within `timeout` (for `/readyz` and `proteus_backend_up`); `Err` says why not.
    pub async fn check_health(&self, timeout: std::time::Duration) -> Result<(), String> {
        proteus_nats::client::check_health(&self.client, &self.config.url, timeout).await
    }

    /// Connects to NATS, checks that JetStream answers and opens (creating them if missing,
    /// unless `create_buckets` is off) the groups and leases buckets. The error says what
    /// failed and how to start NATS.
    pub async fn open(config: NatsGroupStoreConfig) -> Result<NatsGroupStore, StoreError> {
        config.validate().map_err(|reason| {
            StoreError::Backend(format!("invalid NATS consumer-group settings: {reason}"))
        })?;
        let url = proteus_nats::redact(&config.url);
        let client = proteus_nats::client::connect(&proteus_nats::client::ClientSettings {
            url: &config.url,
            name: "proteus-groups",
            connect_timeout_ms: config.connect_timeout_ms,
            request_timeout_ms: config.request_timeout_ms,
            reconnect_delay_max_ms: config.reconnect_delay_max_ms,
            connections: None,
            security: &config.security,
        })
        .await
        .map_err(StoreError::Backend)?;
        proteus_nats::client::check_replicas_supported(&client, &config.url, config.replicas)
            .map_err(|reason| {
                StoreError::Backend(format!("invalid NATS consumer-group settings: {reason}"))
            })?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_millis(config.request_timeout_ms));
        let groups = ensure_bucket(
            &js,
            &url,
            &config.groups_bucket(),
            "Proteus consumer groups: settings, fencing token and progress of each group",
            (config.replicas, config.create_buckets),
        )
        .await
        .map_err(StoreError::Backend)?;
        let leases = ensure_bucket(
            &js,
            &url,
            &config.leases_bucket(),
            "Proteus consumer groups: which instance coordinates each group (leases)",
            (config.replicas, config.create_buckets),
        )
        .await
        .map_err(StoreError::Backend)?;
        Ok(NatsGroupStore {
            config,
            url,
            client,
            groups,
            leases,
        })
    }

    pub fn config(&self) -> &NatsGroupStoreConfig {
        &self.config
    }

    /// The coordinator leases' store, on the same connection.
    pub fn lease_store(&self) -> NatsLeaseStore {
        NatsLeaseStore::new(
            self.leases.clone(),
            self.url.clone(),
            self.config.write_attempts_max,
        )
    }

    /// A failed request while doing `what`: [`StoreError::Unavailable`] when NATS could not be
    /// reached, did not answer in time or had no leader for the bucket (a cluster electing
    /// one), [`StoreError::Backend`] otherwise.
    fn backend(&self, what: &str, error: impl std::fmt::Display + std::fmt::Debug) -> StoreError {
        let text = format!("{error} {error:?}");
        if proteus_nats::client::is_unanswered_by_stream(&text) {
            StoreError::Unavailable(failure(
                &self.url,
                what,
                format!(
                    "{error} (the bucket has no leader right now: a JetStream cluster elects \
                     one within seconds of losing a server; or the bucket was deleted)"
                ),
            ))
        } else if proteus_nats::client::is_transient_error(&text) {
            StoreError::Unavailable(failure(&self.url, what, error))
        } else {
            StoreError::Backend(failure(&self.url, what, error))
        }
    }

    /// The group stored at `key` and the revision to write it back against; `None` when the
    /// key is absent or deleted.
    async fn read(&self, key: &str, what: &str) -> Result<Option<(GroupRecord, u64)>, StoreError> {
        let entry = self
            .groups
            .entry(key)
            .await
            .map_err(|error| self.backend(what, error))?;
        match entry {
            Some(entry) if entry.operation == Operation::Put => {
                let record = serde_json::from_slice(&entry.value).map_err(|error| {
                    StoreError::Backend(corrupt(&self.config.groups_bucket(), key, error))
                })?;
                Ok(Some((record, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Applies one key's value to a listing: its group, or its removal for a delete or purge
    /// marker (a put carries no operation header).
    fn keep_last_value(
        &self,
        records: &mut BTreeMap<String, GroupRecord>,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: &[u8],
    ) -> Result<(), StoreError> {
        let key = subject
            .strip_prefix(self.groups.prefix.as_str())
            .unwrap_or(subject)
            .to_owned();
        let deleted = headers
            .and_then(|headers| headers.get(KV_OPERATION_HEADER))
            .is_some_and(|operation| operation.as_str() != "PUT");
        if deleted {
            records.remove(&key);
        } else {
            let record = serde_json::from_slice(payload).map_err(|error| {
                StoreError::Backend(corrupt(&self.config.groups_bucket(), &key, error))
            })?;
            records.insert(key, record);
        }
        Ok(())
    }

    /// The listing without a consumer: the bucket's keys from the stream's subject counts
    /// (answered by the bucket stream's leader, like the gets), then each key's last value,
    /// [`LISTING_GETS_IN_FLIGHT`] at a time. Slower per group than the consumer, and at most
    /// `listing_by_gets_keys_max` keys; only used while no consumer can be created.
    async fn list_groups_by_gets(&self, what: &str) -> Result<Vec<GroupRecord>, StoreError> {
        let mut subjects = self
            .groups
            .stream
            .info_with_subjects(format!("{}>", self.groups.prefix))
            .await
            .map_err(|error| self.backend(what, error))?;
        let keys_max = self.config.listing_by_gets_keys_max;
        let mut keys = Vec::new();
        while let Some(subject) = subjects.next().await {
            let (subject, _messages) = subject.map_err(|error| self.backend(what, error))?;
            if keys.len() == keys_max {
                return Err(StoreError::Unavailable(failure(
                    &self.url,
                    what,
                    format!(
                        "the bucket holds more than {keys_max} keys (listing_by_gets_keys_max), \
                         too many to list one by one while the cluster elects its metadata \
                         leader; retry in a few seconds"
                    ),
                )));
            }
            keys.push(subject);
        }
        let stream = &self.groups.stream;
        let mut values = futures_util::stream::iter(keys)
            .map(|subject| async move {
                let value = stream.get_last_raw_message_by_subject(&subject).await;
                (subject, value)
            })
            .buffer_unordered(LISTING_GETS_IN_FLIGHT);
        let mut records: BTreeMap<String, GroupRecord> = BTreeMap::new();
        while let Some((subject, value)) = values.next().await {
            match value {
                Ok(message) => self.keep_last_value(
                    &mut records,
                    &subject,
                    Some(&message.headers),
                    &message.payload,
                )?,
                // Purged since the subjects were listed: no group.
                Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {}
                Err(error) => return Err(self.backend(what, error)),
            }
        }
        Ok(sorted(records))
    }

    /// The record as bytes, refused when it would not fit in one NATS message.
    fn encode(&self, record: &GroupRecord) -> Result<Bytes, StoreError> {
        let bytes = serde_json::to_vec(record)
            .map_err(|error| StoreError::Backend(format!("cannot encode a group: {error}")))?;
        // Leave room for the subject and headers in the server's payload limit.
        let max_payload = self.client.max_payload().saturating_sub(1024);
        if bytes.len() > max_payload {
            return Err(StoreError::Backend(format!(
                "group '{}' of topic '{}' holds {} bytes of settings and progress, more than the \
                 {max_payload} one NATS message carries here; raise max_payload in the NATS \
                 server's configuration, or keep groups in PostgreSQL (--groups postgres://…)",
                record.group,
                record.topic,
                bytes.len()
            )));
        }
        Ok(Bytes::from(bytes))
    }

    /// Reads the group, lets `change` modify it (or refuse), and writes it back only if no
    /// other write came in between, reading again when one did. `None`: no such group.
    async fn modify(
        &self,
        topic: &TopicName,
        group: &GroupName,
        what: &str,
        change: impl Fn(&mut GroupRecord) -> Result<(), StoreError>,
    ) -> Result<Option<GroupRecord>, StoreError> {
        let key = group_key(topic, group);
        for _ in 0..self.config.write_attempts_max {
            let Some((mut record, revision)) = self.read(&key, what).await? else {
                return Ok(None);
            };
            change(&mut record)?;
            let value = self.encode(&record)?;
            match self.groups.update(&key, value, revision).await {
                Ok(_) => return Ok(Some(record)),
                Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => continue,
                Err(error) => return Err(self.backend(what, error)),
            }
        }
        Err(StoreError::Backend(format!(
            "{what}: the group changed under {} writes in a row (another instance writing it \
             at the same time); retry",
            self.config.write_attempts_max
        )))
    }
}

#[async_trait]
impl GroupStore for NatsGroupStore {
    async fn create_group(&self, record: &GroupRecord) -> Result<(), StoreError> {
        let mut record = record.clone();
        record.partitions.sort_by_key(|p| p.partition);
        let value = self.encode(&record)?;
        let key = group_key(&record.topic, &record.group);
        match self.groups.create(&key, value).await {
            Ok(_) => Ok(()),
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {
                Err(StoreError::AlreadyExists {
                    topic: record.topic,
                    group: record.group,
                })
            }
            Err(error) => Err(self.backend(
                &format!(
                    "creating group '{}' of topic '{}'",
                    record.group, record.topic
                ),
                error,
            )),
        }
    }

    async fn update_config(
        &self,
        topic: &TopicName,
        group: &GroupName,
        fence: u64,
        config: &GroupConfig,
    ) -> Result<(), StoreError> {
        let what = format!("changing the settings of group '{group}' of topic '{topic}'");
        self.modify(topic, group, &what, |record| {
            check_fence(topic, group, fence, record.fence)?;
            record.fence = fence;
            record.config = config.clone();
            Ok(())
        })
        .await?
        .map(|_| ())
        .ok_or_else(|| StoreError::not_found(topic, group))
    }

    async fn save_progress(
        &self,
        topic: &TopicName,
        group: &GroupName,
        fence: u64,
        progress: &[PartitionProgress],
    ) -> Result<(), StoreError> {
        let what = format!("saving the progress of group '{group}' of topic '{topic}'");
        self.modify(topic, group, &what, |record| {
            check_fence(topic, group, fence, record.fence)?;
            record.fence = fence;
            for saved in progress {
                match record
                    .partitions
                    .binary_search_by_key(&saved.partition, |p| p.partition)
                {
                    Ok(at) => record.partitions[at] = saved.clone(),
                    Err(at) => record.partitions.insert(at, saved.clone()),
                }
            }
            Ok(())
        })
        .await?
        .map(|_| ())
        .ok_or_else(|| StoreError::not_found(topic, group))
    }

    async fn claim_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
        fence: u64,
    ) -> Result<Option<GroupRecord>, StoreError> {
        let what = format!("claiming group '{group}' of topic '{topic}'");
        self.modify(topic, group, &what, |record| {
            check_fence(topic, group, fence, record.fence)?;
            record.fence = fence;
            Ok(())
        })
        .await
    }

    async fn load_group(
        &self,
        topic: &TopicName,
        group: &GroupName,
    ) -> Result<Option<GroupRecord>, StoreError> {
        let what = format!("loading group '{group}' of topic '{topic}'");
        Ok(self
            .read(&group_key(topic, group), &what)
            .await?
            .map(|(record, _)| record))
    }

    async fn list_groups(&self) -> Result<Vec<GroupRecord>, StoreError> {
        let what = "listing the consumer groups";
        // One ordered consumer delivering each key's last value, as the bucket's own key
        // listing does, rather than listing keys and then reading each group in turn: a
        // listing is one pass over the bucket however many groups it holds. While a cluster
        // elects its metadata leader no consumer can be created: the listing then reads
        // each key's last value by itself (`list_groups_by_gets`).
        let consumer = consumer_in_time(
            &self.groups.stream,
            consumer::push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                description: Some("proteus: listing the consumer groups".into()),
                filter_subject: format!("{}>", self.groups.prefix),
                deliver_policy: DeliverPolicy::LastPerSubject,
                replay_policy: consumer::ReplayPolicy::Instant,
                ..Default::default()
            },
        )
        .await
        .map_err(|error| self.backend(what, error))?;
        let Some(consumer) = consumer else {
            return self.list_groups_by_gets(what).await;
        };
        // By key, so that a group written again (or deleted) during the listing ends with its
        // last value.
        let mut records: BTreeMap<String, GroupRecord> = BTreeMap::new();
        let pending_at_start = consumer.cached_info().num_pending;
        if pending_at_start > 0 {
            let mut messages = consumer
                .messages()
                .await
                .map_err(|error| self.backend(what, error))?;
            let idle = Duration::from_millis(self.config.request_timeout_ms);
            // Writes made during the listing are delivered too, so a listing ends when it has
            // caught up with them; groups saved faster than they can be read would keep it
            // going, so past this many values it gives up and asks for a retry.
            let values_max = pending_at_start.saturating_mul(4).saturating_add(1024);
            let mut values = 0u64;
            loop {
                values += 1;
                if values > values_max {
                    return Err(self.backend(
                        what,
                        format!(
                            "the groups changed faster than they could be listed ({values_max} \
                             values read for {pending_at_start} groups); retry"
                        ),
                    ));
                }
                let message = match next_fetched(&mut messages, idle)
                    .await
                    .map_err(|error| self.backend(what, error))?
                {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => return Err(self.backend(what, error)),
                    None => return Err(self.backend(what, "the listing ended early")),
                };
                let info = message.info().map_err(|error| self.backend(what, error))?;
                let pending = info.pending;
                self.keep_last_value(
                    &mut records,
                    &message.subject,
                    message.headers.as_ref(),
                    &message.payload,
                )?;
                if pending == 0 {
                    break;
                }
            }
        }
        Ok(sorted(records))
    }

    async fn delete_group(&self, topic: &TopicName, group: &GroupName) -> Result<bool, StoreError> {
        let what = format!("deleting group '{group}' of topic '{topic}'");
        let key = group_key(topic, group);
        for _ in 0..self.config.write_attempts_max {
            let Some((_, revision)) = self.read(&key, &what).await? else {
                return Ok(false);
            };
            // Purge rather than delete: the group's last value goes, only a marker stays.
            match self
                .groups
                .purge_expect_revision(&key, Some(revision))
                .await
            {
                Ok(()) => return Ok(true),
                Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => continue,
                Err(error) => return Err(self.backend(&what, error)),
            }
        }
        Err(StoreError::Backend(format!(
            "{what}: the group changed under {} attempts in a row; retry",
            self.config.write_attempts_max
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_one_to_one_and_valid_subject_tokens() {
        let key = |t: &str, g: &str| {
            group_key(&TopicName::parse(t).unwrap(), &GroupName::parse(g).unwrap())
        };
        assert_eq!(key("orders.v2", "billing"), "orders=v2.billing");
        assert_ne!(key("a.b", "c"), key("a", "b.c"));
        assert!(!key("a..b.", "c").split('.').any(str::is_empty));
    }

    /// The size quoted in docs/backends/nats.md: the largest topic (1,024 partitions) with
    /// ten-digit committed offsets and nothing pending fits well within NATS's default 1 MiB.
    #[test]
    fn a_group_of_the_largest_topic_fits_in_one_message() {
        let record = GroupRecord {
            topic: TopicName::parse("orders").unwrap(),
            group: GroupName::parse("billing").unwrap(),
            config: GroupConfig::default(),
            created_ms: 1_700_000_000_000,
            partitions: (0..1024)
                .map(|partition| PartitionProgress {
                    partition,
                    committed: 1_000_000_000 + u64::from(partition),
                    ..PartitionProgress::default()
                })
                .collect(),
            fence: 42,
        };
        let bytes = serde_json::to_vec(&record).unwrap().len();
        assert!(bytes < 48 * 1024, "{bytes} bytes");
    }
}
