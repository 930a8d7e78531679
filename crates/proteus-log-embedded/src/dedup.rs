//! The per-topic memory of recently appended (`source`, `id`) pairs.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use proteus_log::{DedupKey, Offset, PartitionId};

/// Keys are already xxh3 hashes: hashing them again would only cost time.
#[derive(Default)]
struct PassThroughHasher(u64);

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

/// Bounded in time (`window_ms`) and in size (`entries_max`): the oldest entries go first.
pub struct DedupIndex {
    window_ms: u64,
    entries_max: usize,
    positions: HashMap<u128, (PartitionId, Offset), BuildHasherDefault<PassThroughHasher>>,
    /// Keys in insertion order with their append time, to expire the oldest.
    order: VecDeque<(i64, u128)>,
}

impl DedupIndex {
    pub fn new(window_ms: u64, entries_max: u32) -> Self {
        DedupIndex {
            window_ms,
            entries_max: entries_max as usize,
            positions: HashMap::default(),
            order: VecDeque::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.window_ms > 0 && self.entries_max > 0
    }

    pub fn len(&self) -> usize {
        self.positions.len()
    }

    pub fn reconfigure(&mut self, window_ms: u64, entries_max: u32) {
        self.window_ms = window_ms;
        self.entries_max = entries_max as usize;
        self.evict_over_capacity();
    }

    pub fn get(&self, key: DedupKey) -> Option<(PartitionId, Offset)> {
        self.positions.get(&key.0).copied()
    }

    pub fn insert(&mut self, key: DedupKey, partition: PartitionId, offset: Offset, time_ms: i64) {
        if !self.enabled() {
            return;
        }
        if self.positions.insert(key.0, (partition, offset)).is_none() {
            self.order.push_back((time_ms, key.0));
        }
        self.evict_over_capacity();
    }

    /// Forgets entries appended before `now_ms - window_ms`.
    pub fn expire(&mut self, now_ms: i64) {
        let cutoff = now_ms.saturating_sub(self.window_ms as i64);
        while let Some(&(time_ms, key)) = self.order.front() {
            if time_ms >= cutoff {
                break;
            }
            self.order.pop_front();
            self.positions.remove(&key);
        }
    }

    fn evict_over_capacity(&mut self) {
        while self.order.len() > self.entries_max {
            if let Some((_, key)) = self.order.pop_front() {
                self.positions.remove(&key);
            }
        }
        if !self.enabled() {
            self.positions.clear();
            self.order.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_by_age_and_by_count() {
        let mut index = DedupIndex::new(1_000, 3);
        for i in 0..3u64 {
            index.insert(DedupKey(u128::from(i)), 0, i, 100 * i as i64);
        }
        assert_eq!(index.get(DedupKey(0)), Some((0, 0)));
        index.insert(DedupKey(9), 1, 9, 300);
        assert_eq!(
            index.get(DedupKey(0)),
            None,
            "the oldest goes when over capacity"
        );
        assert_eq!(index.len(), 3);
        index.expire(1_150);
        assert_eq!(
            index.get(DedupKey(1)),
            None,
            "appended at 100, older than 1150 - 1000"
        );
        assert_eq!(index.get(DedupKey(2)), Some((0, 2)));
        let mut disabled = DedupIndex::new(0, 3);
        disabled.insert(DedupKey(1), 0, 0, 0);
        assert_eq!(disabled.get(DedupKey(1)), None);
    }
}
