//! [`TieredCache`]: an in-process L1 in front of an optional shared L2, kept fresh across
//! instances by invalidation events in the log.
//!
//! # Invalidation and why a read after a commit is never stale for long
//!
//! * A writer commits to its source of truth, then calls [`TieredCache::invalidate`]: the keys
//!   leave this instance's L1 and the L2, and an event naming them is appended to
//!   [`INVALIDATION_TOPIC`]. Every other instance runs [`TieredCache::follow_invalidations`],
//!   which drops the named keys from its L1 (and from the L2 again, see below).
//! * A reader that missed the cache loads from the source and offers the value with
//!   [`TieredCache::fill`], passing the [`FillToken`] it took *before* reading the source. Each
//!   key hashes to one of [`EPOCH_STRIPES`] epochs, bumped by every invalidation of a key in the
//!   stripe (local or followed) *before* the keys are dropped. A fill is refused when the epoch
//!   moved since its token, and a fill that raced an invalidation removes what it just wrote
//!   (L1 and L2) when it sees the epoch moved afterwards. So a value read before a commit is
//!   never left in either level after this instance learnt of the commit's invalidation. Because
//!   the follower deletes followed keys from the L2 too, a stale L2 fill of a slow instance is
//!   removed once that instance sees the invalidation.
//! * L1 entries live at most `l1_ttl_ms`, a bound on staleness should an invalidation be lost
//!   (the follower also clears the whole L1 when it cannot read the topic).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use metrics::Counter;
use proteus_log::LogError;
use proteus_log::event::Event;
use proteus_log::port::{Log, ReadFrom, ReadLimits};
use proteus_log::position::Cursor;
use proteus_log::topic::{TopicConfig, TopicName};
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::port::{CacheError, KEYS_PER_CALL_MAX, RemoteCache, check_keys};

/// The log topic invalidation events are appended to and followed from.
pub const INVALIDATION_TOPIC: &str = "proteus.cache.invalidations";
/// The CloudEvents `type` of an invalidation.
pub const INVALIDATION_EVENT_TYPE: &str = "proteus.cache.invalidated";
/// Number of fill epochs keys are hashed to.
pub const EPOCH_STRIPES: usize = 1_024;
/// Most key bytes one invalidation event carries; larger invalidations are split.
const EVENT_KEY_BYTES_MAX: usize = 256 * 1024;
/// How long the follower waits for new invalidations before polling again.
const FOLLOW_WAIT_MS: u64 = 1_000;
/// How long the follower waits after a failed read of the topic before trying again.
const FOLLOW_RETRY_MS: u64 = 500;
/// Bytes an L1 entry weighs beyond its key and value.
const ENTRY_OVERHEAD_BYTES: u64 = 64;

#[derive(Clone, Debug)]
pub struct TieredConfig {
    /// The `cache` label of the metrics, and the scope of invalidation events: instances only
    /// apply invalidations of caches with the same name.
    pub name: String,
    /// Most bytes (keys, values and a small overhead) the L1 holds; the coldest entries are
    /// evicted beyond it.
    pub l1_bytes_max: u64,
    /// Longest time an L1 entry is served.
    pub l1_ttl_ms: u64,
    /// Time to live of entries written to the L2.
    pub l2_ttl_ms: u64,
}

impl TieredConfig {
    pub fn new(name: impl Into<String>) -> Self {
        TieredConfig {
            name: name.into(),
            l1_bytes_max: 64 * 1024 * 1024,
            l1_ttl_ms: 60_000,
            l2_ttl_ms: 10 * 60_000,
        }
    }
}

/// Taken before reading the source of a value, given back to [`TieredCache::fill`].
#[derive(Clone, Copy, Debug)]
pub struct FillToken {
    stripe: usize,
    epoch: u64,
}

impl FillToken {
    /// The epoch of the key's stripe when the token was taken.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

#[derive(Clone)]
struct L1Entry {
    value: Bytes,
    expires: Instant,
}

#[derive(Clone)]
struct ByteWeighter;

impl Weighter<String, L1Entry> for ByteWeighter {
    fn weight(&self, key: &String, entry: &L1Entry) -> u64 {
        key.len() as u64 + entry.value.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

#[derive(Clone)]
struct EvictionCounter(Counter);

impl Lifecycle<String, L1Entry> for EvictionCounter {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _state: &mut Self::RequestState, _key: String, _entry: L1Entry) {
        self.0.increment(1);
    }
}

type L1 = Cache<String, L1Entry, ByteWeighter, DefaultHashBuilder, EvictionCounter>;

struct Metrics {
    hits_l1: Counter,
    hits_l2: Counter,
    misses_l1: Counter,
    misses_l2: Counter,
}

impl Metrics {
    fn new(name: &str) -> Self {
        let counter = |metric: &'static str, level: &'static str| metrics::counter!(metric, "cache" => name.to_owned(), "level" => level);
        Metrics {
            hits_l1: counter("proteus_cache_hits_total", "l1"),
            hits_l2: counter("proteus_cache_hits_total", "l2"),
            misses_l1: counter("proteus_cache_misses_total", "l1"),
            misses_l2: counter("proteus_cache_misses_total", "l2"),
        }
    }
}

/// The data of an invalidation event.
#[derive(Debug, Serialize, Deserialize)]
struct Invalidation {
    cache: String,
    instance: String,
    keys: Vec<String>,
}

/// An L1 in front of an optional L2. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct TieredCache {
    inner: Arc<Inner>,
}

struct Inner {
    config: TieredConfig,
    l1: L1,
    l2: Option<Arc<dyn RemoteCache>>,
    log: Option<(Arc<dyn Log>, TopicName)>,
    instance_id: String,
    epochs: Vec<AtomicU64>,
    metrics: Metrics,
}

impl TieredCache {
    /// A tiered cache. With a `log`, invalidations are published to [`INVALIDATION_TOPIC`]
    /// (created here when missing); run [`follow_invalidations`](Self::follow_invalidations)
    /// to apply other instances' invalidations.
    pub async fn open(
        config: TieredConfig,
        l2: Option<Arc<dyn RemoteCache>>,
        log: Option<Arc<dyn Log>>,
    ) -> Result<TieredCache, CacheError> {
        let log = match log {
            Some(log) => {
                let topic = TopicName::parse(INVALIDATION_TOPIC)
                    .map_err(|e| CacheError::Unavailable(e.to_string()))?;
                ensure_topic(log.as_ref(), &topic).await?;
                Some((log, topic))
            }
            None => None,
        };
        let evictions = metrics::counter!(
            "proteus_cache_evictions_total",
            "cache" => config.name.clone(),
            "level" => "l1"
        );
        let weight_capacity = config.l1_bytes_max.max(1);
        let estimated_items = (weight_capacity / 1_024).clamp(16, 1_000_000) as usize;
        let l1 = Cache::with(
            estimated_items,
            weight_capacity,
            ByteWeighter,
            DefaultHashBuilder::default(),
            EvictionCounter(evictions),
        );
        let metrics = Metrics::new(&config.name);
        Ok(TieredCache {
            inner: Arc::new(Inner {
                config,
                l1,
                l2,
                log,
                instance_id: uuid::Uuid::now_v7().to_string(),
                epochs: (0..EPOCH_STRIPES).map(|_| AtomicU64::new(0)).collect(),
                metrics,
            }),
        })
    }

    /// This instance's id, carried by the invalidations it publishes.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    pub fn config(&self) -> &TieredConfig {
        &self.inner.config
    }

    /// Take before reading `key`'s value from the source of truth; pass to [`fill`](Self::fill).
    pub fn fill_token(&self, key: &str) -> FillToken {
        let stripe = stripe_of(key);
        FillToken {
            stripe,
            epoch: self.inner.epochs[stripe].load(Ordering::SeqCst),
        }
    }

    fn token_is_current(&self, token: FillToken) -> bool {
        self.inner.epochs[token.stripe].load(Ordering::SeqCst) == token.epoch
    }

    fn bump(&self, keys: &[String]) {
        for key in keys {
            self.inner.epochs[stripe_of(key)].fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The value of `key`: from the L1, else from the L2 (then kept in the L1), else `None`.
    /// An L2 that fails is logged and counted as a miss.
    pub async fn get(&self, key: &str) -> Option<Bytes> {
        let inner = &self.inner;
        if let Some(entry) = inner.l1.get(key) {
            if entry.expires > Instant::now() {
                inner.metrics.hits_l1.increment(1);
                return Some(entry.value);
            }
            inner.l1.remove(key);
        }
        inner.metrics.misses_l1.increment(1);
        let l2 = inner.l2.as_ref()?;
        let token = self.fill_token(key);
        match l2.get_many(&[key.to_owned()]).await {
            Ok(mut values) => match values.pop().flatten() {
                Some(value) => {
                    inner.metrics.hits_l2.increment(1);
                    self.fill_l1(key, value.clone(), token);
                    Some(value)
                }
                None => {
                    inner.metrics.misses_l2.increment(1);
                    None
                }
            },
            Err(error) => {
                inner.metrics.misses_l2.increment(1);
                tracing::warn!(cache = %inner.config.name, %error, "L2 cache read failed");
                None
            }
        }
    }

    fn fill_l1(&self, key: &str, value: Bytes, token: FillToken) {
        if !self.token_is_current(token) {
            return;
        }
        let expires = Instant::now() + Duration::from_millis(self.inner.config.l1_ttl_ms);
        self.inner
            .l1
            .insert(key.to_owned(), L1Entry { value, expires });
        if !self.token_is_current(token) {
            self.inner.l1.remove(key);
        }
    }

    /// Offers a value read from the source of truth after `token` was taken. It is cached in
    /// both levels unless an invalidation of the key's stripe happened since the token.
    pub async fn fill(&self, key: &str, value: Bytes, token: FillToken) {
        if check_keys(std::iter::once(key)).is_err() {
            return;
        }
        self.fill_l1(key, value.clone(), token);
        let Some(l2) = &self.inner.l2 else { return };
        if !self.token_is_current(token) {
            return;
        }
        let key = key.to_owned();
        let put = l2
            .put_many(vec![(key.clone(), value)], self.inner.config.l2_ttl_ms)
            .await;
        if let Err(error) = put {
            tracing::warn!(cache = %self.inner.config.name, %error, "L2 cache write failed");
        }
        if !self.token_is_current(token)
            && let Err(error) = l2.delete_many(std::slice::from_ref(&key)).await
        {
            tracing::warn!(cache = %self.inner.config.name, %error, "L2 cache delete failed");
        }
    }

    /// Stores a value known to be current in both levels (for writers).
    pub async fn put(&self, key: &str, value: Bytes) -> Result<(), CacheError> {
        check_keys(std::iter::once(key))?;
        let expires = Instant::now() + Duration::from_millis(self.inner.config.l1_ttl_ms);
        self.inner.l1.insert(
            key.to_owned(),
            L1Entry {
                value: value.clone(),
                expires,
            },
        );
        if let Some(l2) = &self.inner.l2 {
            l2.put_many(vec![(key.to_owned(), value)], self.inner.config.l2_ttl_ms)
                .await?;
        }
        Ok(())
    }

    /// Drops `keys` from this instance's L1 and from the L2, and publishes their invalidation
    /// so every instance following the topic drops them too. Call it after the source of truth
    /// changed. An error means some instance may still hold the old value; the caller should
    /// retry or report it.
    pub async fn invalidate(&self, keys: &[String]) -> Result<(), CacheError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.bump(keys);
        for key in keys {
            self.inner.l1.remove(key.as_str());
        }
        if let Some(l2) = &self.inner.l2 {
            for chunk in keys.chunks(KEYS_PER_CALL_MAX) {
                l2.delete_many(chunk).await?;
            }
        }
        if let Some((log, topic)) = &self.inner.log {
            let mut events = Vec::new();
            for chunk in chunk_by_bytes(keys) {
                events.push(self.invalidation_event(chunk)?);
            }
            log.append(topic, events)
                .await
                .map_err(|e| CacheError::Unavailable(format!("publishing invalidations: {e}")))?;
        }
        Ok(())
    }

    /// Drops every L1 entry (the L2 is left alone).
    pub fn clear_l1(&self) {
        for epoch in &self.inner.epochs {
            epoch.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.l1.clear();
    }

    fn invalidation_event(&self, keys: &[String]) -> Result<Event, CacheError> {
        let event = serde_json::json!({
            "specversion": "1.0",
            "id": uuid::Uuid::now_v7().to_string(),
            "source": format!("/proteus/cache/{}", self.inner.instance_id),
            "type": INVALIDATION_EVENT_TYPE,
            "subject": self.inner.config.name,
            "datacontenttype": "application/json",
            "data": Invalidation {
                cache: self.inner.config.name.clone(),
                instance: self.inner.instance_id.clone(),
                keys: keys.to_vec(),
            },
        });
        let bytes =
            serde_json::to_vec(&event).map_err(|e| CacheError::Unavailable(e.to_string()))?;
        Event::from_json(&bytes).map_err(|e| CacheError::Unavailable(e.to_string()))
    }

    /// Applies an invalidation followed from the log.
    async fn apply(&self, invalidation: Invalidation) {
        if invalidation.cache != self.inner.config.name
            || invalidation.instance == self.inner.instance_id
        {
            return;
        }
        self.bump(&invalidation.keys);
        for key in &invalidation.keys {
            self.inner.l1.remove(key.as_str());
        }
        // A fill of ours racing the writer's L2 delete may have put the old value back.
        if let Some(l2) = &self.inner.l2 {
            for chunk in invalidation.keys.chunks(KEYS_PER_CALL_MAX) {
                if let Err(error) = l2.delete_many(chunk).await {
                    tracing::warn!(cache = %self.inner.config.name, %error, "L2 cache delete failed");
                }
            }
        }
    }

    /// Starts following [`INVALIDATION_TOPIC`] from its current end: every invalidation other
    /// instances publish after this returns is applied. Without a log there is nothing to
    /// follow and `None` is returned. Abort the handle to stop.
    pub async fn follow_invalidations(&self) -> Result<Option<JoinHandle<()>>, CacheError> {
        let Some((log, topic)) = self.inner.log.clone() else {
            return Ok(None);
        };
        let mut cursor = end_of(log.as_ref(), &topic).await?;
        let cache = self.clone();
        Ok(Some(tokio::spawn(async move {
            loop {
                match cache.follow_once(log.as_ref(), &topic, &mut cursor).await {
                    Ok(()) => {}
                    Err(error) => {
                        // Invalidations may have been missed: forget everything, start again
                        // from the end.
                        tracing::warn!(cache = %cache.inner.config.name, %error,
                            "following cache invalidations failed; clearing the L1");
                        cache.clear_l1();
                        tokio::time::sleep(Duration::from_millis(FOLLOW_RETRY_MS)).await;
                        match end_of(log.as_ref(), &topic).await {
                            Ok(end) => {
                                cursor = end;
                                cache.clear_l1();
                            }
                            Err(_) => continue,
                        }
                    }
                }
            }
        })))
    }

    async fn follow_once(
        &self,
        log: &dyn Log,
        topic: &TopicName,
        cursor: &mut Cursor,
    ) -> Result<(), LogError> {
        let positions: Vec<_> = cursor.iter().collect();
        let mut read_any = false;
        for (partition, from) in positions {
            let batch = log
                .read(
                    topic,
                    partition,
                    ReadFrom::Offset(from),
                    ReadLimits::default(),
                )
                .await?;
            for stored in &batch.events {
                let envelope: serde_json::Value = match serde_json::from_slice(&stored.json) {
                    Ok(value) => value,
                    Err(_) => continue,
                };
                if envelope["type"] != INVALIDATION_EVENT_TYPE {
                    continue;
                }
                if let Ok(invalidation) =
                    serde_json::from_value::<Invalidation>(envelope["data"].clone())
                {
                    self.apply(invalidation).await;
                }
            }
            if !batch.events.is_empty() {
                read_any = true;
            }
            cursor.set(partition, batch.next_offset);
        }
        if !read_any {
            log.wait_for_events(topic, cursor, Duration::from_millis(FOLLOW_WAIT_MS))
                .await?;
        }
        Ok(())
    }
}

fn stripe_of(key: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % EPOCH_STRIPES as u64) as usize
}

fn chunk_by_bytes(keys: &[String]) -> Vec<&[String]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, key) in keys.iter().enumerate() {
        if i > start && (bytes + key.len() > EVENT_KEY_BYTES_MAX || i - start >= KEYS_PER_CALL_MAX)
        {
            chunks.push(&keys[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += key.len();
    }
    if start < keys.len() {
        chunks.push(&keys[start..]);
    }
    chunks
}

async fn ensure_topic(log: &dyn Log, topic: &TopicName) -> Result<(), CacheError> {
    match log.describe_topic(topic).await {
        Ok(_) => Ok(()),
        Err(LogError::TopicNotFound { .. }) => {
            let config = TopicConfig {
                partitions: 1,
                retention_ms: Some(60 * 60 * 1_000),
                ..TopicConfig::default()
            };
            match log.put_topic(topic, config).await {
                Ok(_) => Ok(()),
                // Another instance created it first.
                Err(LogError::TopicConflict { .. }) => Ok(()),
                Err(e) => Err(CacheError::Unavailable(format!(
                    "creating the topic {INVALIDATION_TOPIC}: {e}"
                ))),
            }
        }
        Err(e) => Err(CacheError::Unavailable(format!(
            "describing the topic {INVALIDATION_TOPIC}: {e}"
        ))),
    }
}

async fn end_of(log: &dyn Log, topic: &TopicName) -> Result<Cursor, CacheError> {
    let description = log
        .describe_topic(topic)
        .await
        .map_err(|e| CacheError::Unavailable(format!("describing {INVALIDATION_TOPIC}: {e}")))?;
    let mut cursor = Cursor::new();
    for partition in description.partitions {
        cursor.set(partition.partition, partition.next_offset);
    }
    Ok(cursor)
}
