//! Deadlines for futures without an async runtime.
//!
//! The in-memory adapters live in the domain crates, which must not depend on tokio, yet their
//! waits (`wait_for_events`, `wait_for_position`) time out. One thread per process, started by
//! the first [`Sleep`] that has to wait, wakes each sleep's task when its deadline passes; a
//! sleep dropped before its deadline removes itself. [`WaitUntil`] is such a wait on a
//! condition guarded by its owner's lock, with the wakers kept in [`Parked`].

mod wait;

pub use wait::{Parked, Wait, WaitUntil};

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Waker};
use std::time::Instant;

struct Timer {
    entries: Mutex<Entries>,
    /// Signalled when a new earliest deadline is parked.
    changed: Condvar,
}

struct Entries {
    next_key: u64,
    /// Parked sleeps by deadline (and a key telling equal deadlines apart).
    wakers: BTreeMap<(Instant, u64), Waker>,
}

static TIMER: Timer = Timer {
    entries: Mutex::new(Entries {
        next_key: 0,
        wakers: BTreeMap::new(),
    }),
    changed: Condvar::new(),
};

static STARTED: OnceLock<Result<(), String>> = OnceLock::new();

fn entries() -> MutexGuard<'static, Entries> {
    // Entries are whole between statements; a panic elsewhere does not break them.
    TIMER.entries.lock().unwrap_or_else(|p| p.into_inner())
}

fn start() -> Result<(), String> {
    STARTED
        .get_or_init(|| {
            std::thread::Builder::new()
                .name("proteus-timer".into())
                .spawn(run)
                .map(drop)
                .map_err(|e| format!("cannot start the timer thread of waits: {e}"))
        })
        .clone()
}

/// Wakes each parked sleep once its deadline has passed; sleeps until the next deadline.
fn run() {
    let mut entries = entries();
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        while let Some(entry) = entries.wakers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        if !due.is_empty() {
            drop(entries);
            due.into_iter().for_each(Waker::wake);
            entries = self::entries();
            continue;
        }
        entries = match entries.wakers.keys().next() {
            Some(&(deadline, _)) => {
                TIMER
                    .changed
                    .wait_timeout(entries, deadline.saturating_duration_since(now))
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => TIMER
                .changed
                .wait(entries)
                .unwrap_or_else(|p| p.into_inner()),
        };
    }
}

/// A deadline a future polls.
pub struct Sleep {
    deadline: Instant,
    /// Its key among the parked sleeps, once parked.
    key: Option<u64>,
}

impl Sleep {
    pub fn until(deadline: Instant) -> Sleep {
        Sleep {
            deadline,
            key: None,
        }
    }

    /// Whether the deadline has passed; if not, `cx`'s task is woken when it does. Fails only
    /// if the timer thread cannot be started.
    pub fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Result<bool, String> {
        if Instant::now() >= self.deadline {
            self.unpark();
            return Ok(true);
        }
        start()?;
        let mut entries = entries();
        let key = match self.key {
            Some(key) => key,
            None => {
                entries.next_key += 1;
                entries.next_key
            }
        };
        self.key = Some(key);
        let earliest = entries
            .wakers
            .keys()
            .next()
            .is_none_or(|&first| (self.deadline, key) <= first);
        entries
            .wakers
            .insert((self.deadline, key), cx.waker().clone());
        drop(entries);
        if earliest {
            TIMER.changed.notify_one();
        }
        Ok(false)
    }

    fn unpark(&mut self) {
        if let Some(key) = self.key.take() {
            entries().wakers.remove(&(self.deadline, key));
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.unpark();
    }
}

/// Runs a future to its end on this thread: the tests' executor (no runtime here).
#[cfg(test)]
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Poll, Wake};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::{Sleep, block_on};
    use std::future::poll_fn;
    use std::time::{Duration, Instant};

    #[test]
    fn a_sleep_ends_at_its_deadline_not_before() {
        let started = Instant::now();
        let mut sleep = Sleep::until(started + Duration::from_millis(50));
        block_on(poll_fn(|cx| match sleep.poll_elapsed(cx) {
            Ok(true) => std::task::Poll::Ready(()),
            Ok(false) => std::task::Poll::Pending,
            Err(e) => panic!("{e}"),
        }));
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
