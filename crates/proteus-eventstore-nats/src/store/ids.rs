//! The per-stream index of event ids that idempotency needs (JetStream cannot look an id up),
//! and its bound: `id_cache_events_max` ids over all streams, the least recently used streams
//! dropped first.

use super::*;

/// The key of an event id in an [`IdIndex`]: its 64-bit xxh3 hash. 10 to 20 bytes per cached
/// id with the table's slack, instead of about 110 with the id itself, so the same memory
/// keeps several times more ids (and a stream's history is read again that much less often).
pub(super) fn id_key(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

/// The hasher of [`IdIndex::ids`], whose keys are already hashes ([`id_key`]): hashing them
/// again with the default SipHash was 2.5% of the server's time on small batched appends.
#[derive(Default)]
pub(super) struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed with it; any other input is folded in, never lost.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

/// Which event ids one stream holds, up to a stream sequence: what idempotency needs.
#[derive(Default)]
pub(super) struct IdIndex {
    /// The stream sequence up to which the stream's messages are indexed.
    pub(super) seq: u64,
    /// [`id_key`] of each event id. A hit is only a hint: [`NatsEventStore::confirm_hits`]
    /// finds the stored event (in the stream's last message, where a retry's usually is, else
    /// in its earlier messages, newest first), which also gives its version and position.
    /// Keeping no position makes an entry 8 bytes instead of 16 (24 before 2026-11-28): the
    /// tables' growth was 9.4% of the server's time on small batched appends, most of it the
    /// kernel zeroing the pages they took, and the cache holds twice the ids in the same memory.
    pub(super) ids: HashSet<u64, BuildHasherDefault<Prehashed>>,
    /// The stream's end as this instance's last append left it: (the subject's last stream
    /// sequence, the stream's last version). The next append publishes against it without
    /// reading the end first; the server's expected-sequence check refuses it if anyone wrote
    /// since, and the end is then read again.
    pub(super) tail: Option<(u64, u64)>,
}

/// A stream's [`IdIndex`] and when it was last used (a tick of `index_uses`).
#[derive(Default)]
pub(super) struct IndexSlot {
    pub(super) index: Mutex<IdIndex>,
    pub(super) last_used: AtomicU64,
}

/// The stream sequences of the first window before a stream's last message that
/// [`NatsEventStore::confirm_hits`] reads for the hits it did not find there.
pub(super) const CONFIRM_WINDOW_SEQS_MIN: u64 = 4_096;

/// What an eviction keeps: this share of `id_cache_events_max`, so evictions are rare.
pub(super) const ID_CACHE_KEPT_PERCENT: usize = 75;

/// The id cache's metrics, labelled with the store's stream prefix.
pub(super) struct IdCacheMetrics {
    /// `proteus_eventstore_nats_id_cache_events`: ids cached over all streams.
    events: metrics::Gauge,
    /// `proteus_eventstore_nats_id_cache_evicted_streams_total`: streams whose index was
    /// dropped to keep the cache within `id_cache_events_max`.
    evicted_streams: metrics::Counter,
    /// `proteus_eventstore_nats_id_history_reads_total`: appends that read a stream's messages
    /// to index ids this instance has not seen (a stream new to it, evicted, or written by
    /// another instance since).
    history_reads: metrics::Counter,
}

impl IdCacheMetrics {
    pub(super) fn new(stream_prefix: &str) -> Self {
        let labels = [("store", stream_prefix.to_owned())];
        IdCacheMetrics {
            events: metrics::gauge!("proteus_eventstore_nats_id_cache_events", &labels),
            evicted_streams: metrics::counter!(
                "proteus_eventstore_nats_id_cache_evicted_streams_total",
                &labels
            ),
            history_reads: metrics::counter!(
                "proteus_eventstore_nats_id_history_reads_total",
                &labels
            ),
        }
    }
}

impl NatsEventStore {
    pub(super) fn index_lock(&self, stream: &StreamName) -> Arc<IndexSlot> {
        let slot = {
            let mut indexes = self.inner.indexes.lock().expect("index lock poisoned");
            indexes
                .entry(stream.as_str().to_owned())
                .or_default()
                .clone()
        };
        let tick = self.inner.index_uses.fetch_add(1, Ordering::Relaxed);
        slot.last_used.store(tick, Ordering::Relaxed);
        slot
    }

    pub(super) fn account_ids(&self, added: usize) {
        let total = self.inner.cached_ids.fetch_add(added, Ordering::AcqRel) + added;
        if total > self.inner.config.id_cache_events_max {
            self.evict_ids();
        } else {
            self.inner.id_cache_metrics.events.set(total as f64);
        }
    }

    /// Drops the indexes of the least recently used streams ([`evictions`]) until the cache
    /// holds at most [`ID_CACHE_KEPT_PERCENT`] of `id_cache_events_max` ids. Indexes in use
    /// (locked) are neither counted nor dropped; a dropped one is read again from its stream on
    /// its next append.
    pub(super) fn evict_ids(&self) {
        let target = self.inner.config.id_cache_events_max / 100 * ID_CACHE_KEPT_PERCENT;
        let mut indexes = self.inner.indexes.lock().expect("index lock poisoned");
        let mut idle: Vec<IdleIndex> = Vec::new();
        for (stream, slot) in indexes.iter() {
            if let Ok(index) = slot.index.try_lock() {
                idle.push(IdleIndex {
                    last_used: slot.last_used.load(Ordering::Relaxed),
                    ids: index.ids.len(),
                    stream: stream.clone(),
                });
            }
        }
        let mut total: usize = idle.iter().map(|index| index.ids).sum();
        let mut evicted = 0u64;
        for index in evictions(idle, total.saturating_sub(target)) {
            indexes.remove(&index.stream);
            total -= index.ids;
            evicted += 1;
        }
        self.inner.cached_ids.store(total, Ordering::Release);
        let metrics = &self.inner.id_cache_metrics;
        metrics.events.set(total as f64);
        metrics.evicted_streams.increment(evicted);
    }

    /// The (version, position) of each event of an append whose id the stream already holds:
    /// `hits` are the index's, each confirmed against the stored events (the index keys ids
    /// by hash, and two ids can share one). The stream's last message, at `last_seq`, is read
    /// first: a retry is most often of the last append. Hits not found there are looked for
    /// in the stream's earlier messages, newest first, until the last of them is found.
    pub(super) async fn confirm_hits(
        &self,
        stream: &StreamName,
        subject: &str,
        events: &[ProposedEvent],
        hits: &[bool],
        last_seq: u64,
    ) -> Result<Vec<Option<(u64, u64)>>, EventStoreError> {
        let what = format!("confirming the event ids of stream '{stream}'");
        let mut found = vec![None; events.len()];
        // Each id looked for → its event's index in the append.
        let mut sought: HashMap<&str, usize> = HashMap::new();
        for (at, (event, hit)) in events.iter().zip(hits).enumerate() {
            if *hit {
                sought.entry(&*event.id).or_insert(at);
            }
        }
        if let Some(msg) = self.next_on(subject, last_seq, &what).await?
            && msg.seq == last_seq
        {
            self.find_ids(&msg, &mut sought, &mut found)?;
        }
        // Then windows of stream sequences before it, newest first and each twice as wide as
        // the one after it: a retry of a recent append is found without reading a long
        // stream whole, and an old one reads it at most about twice.
        let mut end = last_seq.saturating_sub(1);
        let mut width = CONFIRM_WINDOW_SEQS_MIN;
        while !sought.is_empty() && end >= 1 {
            let start = end.saturating_sub(width - 1).max(1);
            let mut scan = self
                .scan(
                    &self.inner.events,
                    subject,
                    start,
                    end,
                    FETCH_MESSAGES_MAX,
                    &what,
                )
                .await?;
            while !sought.is_empty()
                && let Some(msg) = scan.next().await?
            {
                self.find_ids(&msg, &mut sought, &mut found)?;
            }
            end = start - 1;
            width = width.saturating_mul(2);
        }
        Ok(found)
    }

    /// Takes out of `sought` each id the events of `msg` hold, setting its event's (version,
    /// position) in `found`.
    fn find_ids(
        &self,
        msg: &Msg,
        sought: &mut HashMap<&str, usize>,
        found: &mut [Option<(u64, u64)>],
    ) -> Result<(), EventStoreError> {
        if let Record::Events {
            first_version,
            count,
        } = self.record(msg)?
        {
            for (i, event) in self.decode(msg, count)?.iter().enumerate() {
                if let Some(at) = sought.remove(&*event.id) {
                    found[at] = Some((first_version + i as u64, position_of(msg.seq, i as u64)));
                }
            }
        }
        Ok(())
    }

    /// Brings `index` up to `last_seq`, reading the stream's messages it has not seen.
    pub(super) async fn refresh_index(
        &self,
        stream: &StreamName,
        subject: &str,
        index: &mut IdIndex,
        last_seq: u64,
    ) -> Result<(), EventStoreError> {
        if index.seq > last_seq {
            *index = IdIndex::default();
        }
        if index.seq == last_seq {
            return Ok(());
        }
        let before = index.ids.len();
        self.inner.id_cache_metrics.history_reads.increment(1);
        let what = format!("reading the event ids of stream '{stream}'");
        let mut scan = self
            .scan(
                &self.inner.events,
                subject,
                index.seq + 1,
                last_seq,
                FETCH_MESSAGES_MAX,
                &what,
            )
            .await?;
        while let Some(msg) = scan.next().await? {
            if let Record::Events { count, .. } = self.record(&msg)? {
                let decoded = self.decode(&msg, count)?;
                index.ids.reserve(decoded.len());
                for event in decoded {
                    index.ids.insert(id_key(&event.id));
                }
            }
        }
        index.seq = last_seq;
        self.account_ids(index.ids.len().saturating_sub(before));
        Ok(())
    }
}

/// An index an eviction may drop: not in use when the eviction looked.
#[derive(Clone, Debug)]
pub(super) struct IdleIndex {
    /// The tick of `index_uses` at its last use.
    pub(super) last_used: u64,
    /// The ids it holds.
    pub(super) ids: usize,
    pub(super) stream: String,
}

/// The idle indexes to drop to free `ids_to_free` ids: the least recently used first.
///
/// Least recently used suits the workload event sourcing makes: aggregates written for a while,
/// then left. Its worst case is writers going round more streams than the cache holds, in turn:
/// the stream dropped is the next one written, so each append reads its stream's history
/// again. Other orders were tried on a simulation of the cache (`scripts/simulate-id-cache`,
/// 2026-11-29) and none was worth the trade. 1,000 streams written in turn, 100 events an
/// append, 10 rounds through a cache of 500,000 ids: LRU read 3.5 ids of history again per id
/// written, a random order 2.4, a random order sparing the most recent quarter 2.7. 200
/// aggregates active at a time (10 events an append, 20 appends each), all fitting in a cache
/// of 50,000: LRU read none, random 0.6 per id written; 400, not all fitting: LRU 0.9, random
/// 1.9. The cure for the round robin is a cache sized to the streams being written
/// (`id_cache_events_max`), which `proteus_eventstore_nats_id_history_reads_total` shows is
/// missing.
pub(super) fn evictions(mut idle: Vec<IdleIndex>, ids_to_free: usize) -> Vec<IdleIndex> {
    idle.sort_unstable_by_key(|index| index.last_used);
    let (mut freed, mut dropped) = (0, 0);
    for index in &idle {
        if freed >= ids_to_free {
            break;
        }
        freed += index.ids;
        dropped += 1;
    }
    idle.truncate(dropped);
    idle
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model of the cache over a workload: each stream's cached ids and last use, and how
    /// many ids appends read again from histories because their stream had been dropped.
    struct Model {
        cached: HashMap<u64, (u64, usize)>,
        history: HashMap<u64, usize>,
        cap: usize,
        tick: u64,
        ids_written: usize,
        ids_read_again: usize,
        evictions: usize,
    }

    impl Model {
        fn new(cap: usize) -> Self {
            Model {
                cached: HashMap::new(),
                history: HashMap::new(),
                cap,
                tick: 0,
                ids_written: 0,
                ids_read_again: 0,
                evictions: 0,
            }
        }

        /// An append of `events` to `stream`, as `append_impl` and `account_ids` make it.
        fn append(&mut self, stream: u64, events: usize) {
            self.tick += 1;
            let history = self.history.entry(stream).or_default();
            let cached = self.cached.entry(stream).or_insert((0, 0));
            if cached.1 < *history {
                self.ids_read_again += *history - cached.1;
                cached.1 = *history;
            }
            *cached = (self.tick, cached.1 + events);
            *history += events;
            self.ids_written += events;
            let total: usize = self.cached.values().map(|(_, ids)| ids).sum();
            if total > self.cap {
                self.evictions += 1;
                // The stream being appended to is locked, so not idle.
                let idle = self
                    .cached
                    .iter()
                    .filter(|(name, _)| **name != stream)
                    .map(|(name, (last_used, ids))| IdleIndex {
                        last_used: *last_used,
                        ids: *ids,
                        stream: name.to_string(),
                    })
                    .collect();
                let target = self.cap / 100 * ID_CACHE_KEPT_PERCENT;
                for index in evictions(idle, total - target) {
                    self.cached.remove(&index.stream.parse::<u64>().unwrap());
                }
            }
        }
    }

    /// `active` aggregates at a time, each written 20 times (10 events an append) at random
    /// among the active ones and then left for a new one: 1,000,000 ids written.
    fn aggregates(model: &mut Model, active: usize) {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut random = move |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below as u64) as usize
        };
        let mut live: Vec<(u64, u32)> = (0..active as u64).map(|id| (id, 20)).collect();
        let mut next = active as u64;
        for _ in 0..100_000 {
            let at = random(active);
            let (stream, left) = &mut live[at];
            model.append(*stream, 10);
            *left -= 1;
            if *left == 0 {
                live[at] = (next, 20);
                next += 1;
            }
        }
    }

    #[test]
    fn aggregates_written_for_a_while_are_never_read_again_while_they_fit() {
        // 300 active aggregates of at most 200 ids each: at most 60,000, within the 75,000 ids
        // an eviction keeps; only finished aggregates are dropped. (A random order of eviction
        // reads 3 ids again per id written here.)
        let mut model = Model::new(100_000);
        aggregates(&mut model, 300);
        assert!(model.evictions > 10, "the cache overflowed");
        assert_eq!(
            model.ids_read_again, 0,
            "{} of {} ids read again",
            model.ids_read_again, model.ids_written
        );
    }

    #[test]
    fn an_eviction_drops_the_least_recently_used_until_it_has_freed_enough() {
        let idle: Vec<IdleIndex> = [(5, 10), (1, 10), (9, 10), (3, 10)]
            .into_iter()
            .map(|(last_used, ids)| IdleIndex {
                last_used,
                ids,
                stream: format!("used-at-{last_used}"),
            })
            .collect();
        let names = |dropped: Vec<IdleIndex>| -> Vec<String> {
            dropped.into_iter().map(|index| index.stream).collect()
        };
        assert!(evictions(idle.clone(), 0).is_empty());
        assert_eq!(names(evictions(idle.clone(), 1)), ["used-at-1"]);
        assert_eq!(names(evictions(idle.clone(), 10)), ["used-at-1"]);
        assert_eq!(
            names(evictions(idle.clone(), 11)),
            ["used-at-1", "used-at-3"]
        );
        assert_eq!(evictions(idle.clone(), 1_000).len(), 4);
    }
}
