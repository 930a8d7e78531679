//! The per-topic memory of recently appended (`source`, `id`) pairs.
//!
//! Two generations of hash maps: new keys go into the current one; when it has covered a whole
//! window, or holds half of `entries_max`, it becomes the previous generation and the old
//! previous one is dropped whole. Nothing is ever removed key by key, so the maps never fill
//! with tombstones and never rehash in place while an append holds the topic's lock (a single
//! map under constant insert-and-remove churn did, for milliseconds at a time). Each entry keeps
//! its append time, so a key is a duplicate exactly while it is younger than the window.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use proteus_log::{DedupKey, Offset, PartitionId};

/// Keys are already xxh3 hashes: hashing them again would only cost time.
#[derive(Default)]
pub struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }
}

#[derive(Clone, Copy)]
struct Entry {
    partition: PartitionId,
    offset: Offset,
    time_ms: i64,
}

type Positions = HashMap<u128, Entry, BuildHasherDefault<PassThroughHasher>>;

struct Generation {
    started_ms: i64,
    positions: Positions,
}

impl Generation {
    fn new(started_ms: i64, capacity: usize) -> Self {
        Generation {
            started_ms,
            positions: Positions::with_capacity_and_hasher(capacity, BuildHasherDefault::default()),
        }
    }
}

/// Bounded in time (`window_ms`) and in size (`entries_max`).
pub struct DedupIndex {
    window_ms: u64,
    entries_max: usize,
    current: Generation,
    previous: Generation,
}

/// Largest map allocated ahead of need when a generation starts.
const GENERATION_CAPACITY_MAX: usize = 1 << 20;

impl DedupIndex {
    pub fn new(window_ms: u64, entries_max: u32) -> Self {
        DedupIndex {
            window_ms,
            entries_max: entries_max as usize,
            current: Generation::new(i64::MIN, 0),
            previous: Generation::new(i64::MIN, 0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.window_ms > 0 && self.entries_max > 0
    }

    /// Entries held, expired ones included until their generation is dropped.
    pub fn len(&self) -> usize {
        self.current.positions.len() + self.previous.positions.len()
    }

    pub fn reconfigure(&mut self, window_ms: u64, entries_max: u32) {
        self.window_ms = window_ms;
        self.entries_max = entries_max as usize;
        if !self.enabled() || self.len() > self.entries_max {
            self.current = Generation::new(i64::MIN, 0);
            self.previous = Generation::new(i64::MIN, 0);
        }
    }

    /// The original position of `key` if it was appended within the window before `now_ms`.
    pub fn get(&self, key: DedupKey, now_ms: i64) -> Option<(PartitionId, Offset)> {
        let cutoff = now_ms.saturating_sub(self.window_ms as i64);
        [&self.current, &self.previous]
            .into_iter()
            .find_map(|generation| generation.positions.get(&key.0))
            .filter(|entry| entry.time_ms >= cutoff)
            .map(|entry| (entry.partition, entry.offset))
    }

    pub fn insert(&mut self, key: DedupKey, partition: PartitionId, offset: Offset, time_ms: i64) {
        if !self.enabled() {
            return;
        }
        self.rotate_if_due(time_ms);
        self.current.positions.insert(
            key.0,
            Entry {
                partition,
                offset,
                time_ms,
            },
        );
    }

    /// Starts a new generation once the current one spans a whole window or holds half the
    /// allowed entries; the generation before it is dropped. Every entry therefore stays at
    /// least a window, unless `entries_max` forces an earlier turn.
    fn rotate_if_due(&mut self, now_ms: i64) {
        let half = (self.entries_max / 2).max(1);
        let spans_window = now_ms.saturating_sub(self.current.started_ms) >= self.window_ms as i64;
        if self.current.positions.len() >= half || spans_window {
            let capacity = self
                .current
                .positions
                .len()
                .min(half)
                .min(GENERATION_CAPACITY_MAX);
            let next = Generation::new(now_ms, capacity);
            self.previous = std::mem::replace(&mut self.current, next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_a_duplicate_exactly_while_younger_than_the_window() {
        let mut index = DedupIndex::new(1_000, 100);
        index.insert(DedupKey(1), 0, 10, 0);
        index.insert(DedupKey(2), 1, 20, 600);
        assert_eq!(index.get(DedupKey(1), 1_000), Some((0, 10)));
        assert_eq!(index.get(DedupKey(1), 1_001), None, "older than the window");
        index.insert(DedupKey(3), 0, 30, 1_500); // rotates: 1 and 2 become the previous generation
        assert_eq!(index.get(DedupKey(2), 1_500), Some((1, 20)));
        index.insert(DedupKey(4), 0, 40, 2_600); // rotates again: 1 and 2 are dropped
        assert_eq!(index.get(DedupKey(2), 1_500), None);
        assert_eq!(index.get(DedupKey(3), 2_500), Some((0, 30)));
    }

    #[test]
    fn the_entry_count_stays_within_its_bound() {
        let mut index = DedupIndex::new(60_000, 10);
        for i in 0..1_000u64 {
            index.insert(DedupKey(u128::from(i)), 0, i, 0);
            assert!(index.len() <= 10, "{} entries after {i}", index.len());
        }
        assert_eq!(
            index.get(DedupKey(999), 0),
            Some((0, 999)),
            "the newest are kept"
        );
        assert_eq!(index.get(DedupKey(0), 0), None, "the oldest go first");
        let mut disabled = DedupIndex::new(0, 3);
        disabled.insert(DedupKey(1), 0, 0, 0);
        assert_eq!(disabled.get(DedupKey(1), 0), None);
    }
}
