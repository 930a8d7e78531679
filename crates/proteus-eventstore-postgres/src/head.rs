//! The safe head: the highest position below which every position is committed or will never
//! be, so a reader that reached it and moved on misses nothing.
//!
//! Appends take positions from a sequence while holding the store's writers key (see
//! migration 2), so a position can be handed out and committed after a higher one. A probe
//! (`head_probe`) reads the last position handed out and then the writers holding the key: a
//! *candidate*. A candidate becomes safe once none of its writers holds the key any more (it
//! committed, visibly, or rolled back); then its last position is the safe head. Writers that
//! started after the probe do not matter: they took higher positions.
//!
//! Every process keeps its own pending candidates and its own `watch` of the safe head; it only
//! ever moves forward. Probes are made on demand: by feed reads that reach the head, by
//! `wait_for_position`, and by the follower task (module `listener`) while someone waits.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use proteus_eventstore::EventStoreError;
use tokio::sync::watch;

use crate::error::storage;
use crate::{Shared, get, unsigned};

/// Pending candidates kept per process; beyond it the newest but one is dropped (the oldest
/// become safe first, the newest covers the most).
const PENDING_PROBES_MAX: usize = 64;

/// Longest a feed read at the head waits for writers in flight when it started, before
/// answering with the head it has (never wrong, only older).
pub(crate) const READ_SETTLE_MS_MAX: u64 = 1_000;

/// Pause between probes while waiting for writers to end, doubling up to the second bound.
const SETTLE_PAUSE_MS_MIN: u64 = 1;
const SETTLE_PAUSE_MS_MAX: u64 = 16;

/// Probes and their candidates; one probe at a time per process.
#[derive(Default)]
pub(crate) struct Candidates {
    /// (last position handed out, writers in flight then), oldest first.
    pending: VecDeque<(u64, Vec<String>)>,
}

/// What one probe learnt.
pub(crate) struct Probe {
    /// The safe head after it.
    pub safe: u64,
    /// The last position handed out when it ran.
    pub last: u64,
}

/// Advances `watch` to `position` if it is higher (the heads never go back).
pub(crate) fn advance(watch: &watch::Sender<u64>, position: u64) {
    watch.send_if_modified(|current| {
        if position > *current {
            *current = position;
            true
        } else {
            false
        }
    });
}

impl Candidates {
    /// Adds the candidate just probed and returns the highest last position whose writers have
    /// all ended (0 if none), forgetting every candidate at or below it.
    fn settle(&mut self, last: u64, writers: Vec<String>, safe_before: u64) -> u64 {
        let in_flight: HashSet<&str> = writers.iter().map(String::as_str).collect();
        let mut safe = safe_before;
        for (candidate, holders) in &self.pending {
            if *candidate > safe && holders.iter().all(|h| !in_flight.contains(h.as_str())) {
                safe = *candidate;
            }
        }
        if writers.is_empty() {
            safe = safe.max(last);
        } else if last > safe {
            self.pending.push_back((last, writers));
        }
        self.pending.retain(|(candidate, _)| *candidate > safe);
        if self.pending.len() > PENDING_PROBES_MAX {
            let newest_but_one = self.pending.len() - 2;
            self.pending.remove(newest_but_one);
        }
        safe
    }
}

impl Shared {
    /// Probes once and advances the safe head with what that shows.
    pub(crate) async fn probe_head(&self) -> Result<Probe, EventStoreError> {
        let mut candidates = self.candidates.lock().await;
        let rows = self
            .query(
                &self.sql.head_probe,
                &[],
                "reading the head position",
                false,
            )
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| storage("head_probe answered no row"))?;
        let last = unsigned(get::<Option<i64>>(row, 0)?.unwrap_or(0), "head position")?;
        let writers: Vec<String> = get(row, 1)?;
        let safe = candidates.settle(last, writers, *self.head.borrow());
        advance(&self.head, safe);
        advance(&self.heard, last);
        Ok(Probe {
            safe: *self.head.borrow(),
            last,
        })
    }

    /// The safe head once every writer in flight now has ended (bounded by
    /// [`READ_SETTLE_MS_MAX`]): a read made with it sees every append acknowledged before.
    pub(crate) async fn settled_head(&self) -> Result<u64, EventStoreError> {
        let first = self.probe_head().await?;
        if first.safe >= first.last {
            return Ok(first.safe);
        }
        let deadline = Instant::now() + Duration::from_millis(READ_SETTLE_MS_MAX);
        let mut pause = Duration::from_millis(SETTLE_PAUSE_MS_MIN);
        loop {
            tokio::time::sleep(pause).await;
            let probe = self.probe_head().await?;
            if probe.safe >= first.last || Instant::now() >= deadline {
                return Ok(probe.safe);
            }
            pause = (pause * 2).min(Duration::from_millis(SETTLE_PAUSE_MS_MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writers(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn no_writer_in_flight_makes_the_last_position_safe() {
        let mut candidates = Candidates::default();
        assert_eq!(candidates.settle(7, vec![], 0), 7);
        assert!(candidates.pending.is_empty());
    }

    #[test]
    fn a_candidate_is_safe_once_all_its_writers_have_ended() {
        let mut candidates = Candidates::default();
        assert_eq!(candidates.settle(10, writers(&["a", "b"]), 3), 3);
        // b still writes, c started since: 10 is not safe yet.
        assert_eq!(candidates.settle(12, writers(&["b", "c"]), 3), 3);
        // a and b are gone; c (after the first probe) still writes: 10 is safe, 12 is not.
        assert_eq!(candidates.settle(15, writers(&["c", "d"]), 3), 10);
        assert_eq!(candidates.pending.len(), 2);
        assert_eq!(candidates.settle(15, writers(&[]), 10), 15);
        assert!(candidates.pending.is_empty());
    }

    #[test]
    fn the_safe_head_never_goes_back() {
        let mut candidates = Candidates::default();
        assert_eq!(candidates.settle(5, writers(&["a"]), 9), 9);
        assert!(
            candidates.pending.is_empty(),
            "a candidate below the head is dropped"
        );
    }

    #[test]
    fn pending_candidates_are_bounded() {
        let mut candidates = Candidates::default();
        for last in 1..=(PENDING_PROBES_MAX as u64 + 10) {
            candidates.settle(last, writers(&["stuck"]), 0);
        }
        assert_eq!(candidates.pending.len(), PENDING_PROBES_MAX);
        assert_eq!(
            candidates.pending.front().unwrap().0,
            1,
            "the oldest is kept"
        );
        assert_eq!(
            candidates.pending.back().unwrap().0,
            PENDING_PROBES_MAX as u64 + 10,
            "the newest is kept"
        );
    }
}
