//! The safe head: the highest position below which every position is committed or will never
//! be, so a reader that reached it and moved on misses nothing.
//!
//! Appends take positions from a sequence (migration 2), so a position can be handed out and
//! committed after a higher one. Each transaction taking positions also marks the first one
//! it holds with an advisory lock, under the same allocation lock (migration 3). A probe
//! (`safe_head()`) takes the allocation lock and reads the last position handed out and the
//! oldest one marked in flight: every position below that one is committed and visible, or
//! rolled back, since PostgreSQL releases a transaction's locks only after making it visible.
//! A slow writer therefore holds back only the positions from its own on.
//!
//! Every process keeps its own `watch` of the safe head; it only ever moves forward. Probes are
//! made on demand: by feed reads that reach the head, by `wait_for_position`, and by the
//! follower task (module `listener`) while someone waits.

use std::time::{Duration, Instant};

use proteus_eventstore::EventStoreError;
use tokio::sync::watch;

use crate::error::storage;
use crate::{Shared, get, unsigned};

/// Longest a feed read at the head waits for writers in flight when it started, before
/// answering with the head it has (never wrong, only older).
pub(crate) const READ_SETTLE_MS_MAX: u64 = 1_000;

/// Pause between probes while waiting for writers to end, doubling up to the second bound.
const SETTLE_PAUSE_MS_MIN: u64 = 1;
const SETTLE_PAUSE_MS_MAX: u64 = 16;

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

impl Shared {
    /// Probes once and advances the safe head with what that shows.
    pub(crate) async fn probe_head(&self) -> Result<Probe, EventStoreError> {
        // One probe at a time per process: each takes the store's allocation lock.
        let _probing = self.probing.lock().await;
        let rows = self
            .query(&self.sql.safe_head, &[], "reading the head position", false)
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| storage("safe_head answered no row"))?;
        let last = unsigned(get::<i64>(row, 0)?, "head position")?;
        let safe = unsigned(get::<i64>(row, 1)?, "safe head position")?;
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
