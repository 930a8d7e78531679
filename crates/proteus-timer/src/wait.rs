//! Waits parked on a condition that their owner's lock guards, ended by the condition, by the
//! owner (closing), or by a deadline: what the in-memory adapters' `wait_for_events` and
//! `wait_for_position` share.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::Sleep;

/// The wakers of parked waits, each under an id its wait keeps. Keep it inside the lock that
/// guards the condition: a wait checks and parks under that lock, and every change takes it
/// before waking, so no change slips between the check and the park.
pub struct Parked<T> {
    next_id: u64,
    /// Per wait: what it waits for (`T`) and its waker.
    waits: HashMap<u64, (T, Waker)>,
}

impl<T> Default for Parked<T> {
    fn default() -> Self {
        Parked {
            next_id: 0,
            waits: HashMap::new(),
        }
    }
}

impl<T> Parked<T> {
    /// Parks the wait of `slot` (again) with `waker`, giving it an id the first time.
    pub fn park(&mut self, slot: &mut Option<u64>, awaited: T, waker: &Waker) {
        let id = *slot.get_or_insert_with(|| {
            self.next_id += 1;
            self.next_id
        });
        self.waits.insert(id, (awaited, waker.clone()));
    }

    /// Takes the wait of `slot` out, if it is parked.
    pub fn unpark(&mut self, slot: &mut Option<u64>) {
        if let Some(id) = slot.take() {
            self.waits.remove(&id);
        }
    }

    /// Takes out the waits that `ended` says are over and returns their wakers, to wake once
    /// the lock is released.
    pub fn take_where(&mut self, ended: impl Fn(&T) -> bool) -> Vec<Waker> {
        let mut woken = Vec::new();
        self.waits.retain(|_, (awaited, waker)| {
            if ended(awaited) {
                woken.push(waker.clone());
                false
            } else {
                true
            }
        });
        woken
    }

    /// Takes out every wait (its owner closes, or every wait must check again).
    pub fn take_all(&mut self) -> Vec<Waker> {
        self.waits.drain().map(|(_, (_, waker))| waker).collect()
    }
}

/// What a [`WaitUntil`] waits for.
pub trait Wait {
    type Output;

    /// Under the owner's lock: `Some` if the wait is over (taking `slot` out of the parked
    /// waits), else `None` after parking `waker` under `slot` in the same critical section.
    fn check_or_park(&self, slot: &mut Option<u64>, waker: &Waker) -> Option<Self::Output>;

    /// Takes `slot` out of the parked waits (the wait ended or was dropped).
    fn unpark(&self, slot: &mut Option<u64>);

    /// What the wait ends with when its deadline passes first.
    fn timed_out(&self) -> Self::Output;

    /// What the wait ends with when the timer thread cannot be started.
    fn timer_failed(&self, reason: String) -> Self::Output;
}

/// A future ending when its [`Wait`] says so or at `deadline`; dropping it unparks it.
pub struct WaitUntil<W: Wait> {
    wait: W,
    sleep: Sleep,
    /// Its id among the parked waits, once parked.
    slot: Option<u64>,
}

impl<W: Wait> WaitUntil<W> {
    pub fn new(wait: W, deadline: Instant) -> Self {
        WaitUntil {
            wait,
            sleep: Sleep::until(deadline),
            slot: None,
        }
    }

    fn unpark(&mut self) {
        if self.slot.is_some() {
            self.wait.unpark(&mut self.slot);
        }
    }
}

impl<W: Wait + Unpin> Future for WaitUntil<W> {
    type Output = W::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<W::Output> {
        let this = &mut *self;
        if let Some(done) = this.wait.check_or_park(&mut this.slot, cx.waker()) {
            return Poll::Ready(done);
        }
        match this.sleep.poll_elapsed(cx) {
            Ok(false) => Poll::Pending,
            Ok(true) => {
                this.unpark();
                Poll::Ready(this.wait.timed_out())
            }
            Err(reason) => {
                this.unpark();
                Poll::Ready(this.wait.timer_failed(reason))
            }
        }
    }
}

impl<W: Wait> Drop for WaitUntil<W> {
    fn drop(&mut self) {
        self.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_on;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A flag guarded by the lock its waits park under.
    #[derive(Default)]
    struct Flag {
        state: Mutex<(bool, Parked<()>)>,
    }

    impl Flag {
        fn set(&self) {
            let woken = {
                let mut state = self.state.lock().unwrap();
                state.0 = true;
                state.1.take_all()
            };
            woken.into_iter().for_each(Waker::wake);
        }

        fn parked(&self) -> usize {
            self.state.lock().unwrap().1.waits.len()
        }
    }

    struct FlagSet<'a>(&'a Flag);

    impl Wait for FlagSet<'_> {
        type Output = bool;

        fn check_or_park(&self, slot: &mut Option<u64>, waker: &Waker) -> Option<bool> {
            let mut state = self.0.state.lock().unwrap();
            if state.0 {
                state.1.unpark(slot);
                return Some(true);
            }
            state.1.park(slot, (), waker);
            None
        }

        fn unpark(&self, slot: &mut Option<u64>) {
            self.0.state.lock().unwrap().1.unpark(slot);
        }

        fn timed_out(&self) -> bool {
            false
        }

        fn timer_failed(&self, reason: String) -> bool {
            panic!("{reason}")
        }
    }

    #[test]
    fn a_wait_ends_when_its_condition_holds_or_at_its_deadline_and_leaves_nothing_parked() {
        let flag = Arc::new(Flag::default());
        let deadline = Instant::now() + Duration::from_millis(30);
        assert!(
            !block_on(WaitUntil::new(FlagSet(&flag), deadline)),
            "timed out"
        );
        assert_eq!(flag.parked(), 0);

        let setter = {
            let flag = flag.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                flag.set();
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        assert!(block_on(WaitUntil::new(FlagSet(&flag), deadline)));
        setter.join().unwrap();
        assert_eq!(flag.parked(), 0);

        // Parked, then dropped before anything happens: it takes itself out.
        let unset = Flag::default();
        let mut wait = Box::pin(WaitUntil::new(FlagSet(&unset), deadline));
        let waker = Waker::noop();
        assert!(
            wait.as_mut()
                .poll(&mut Context::from_waker(waker))
                .is_pending()
        );
        assert_eq!(unset.parked(), 1);
        drop(wait);
        assert_eq!(unset.parked(), 0);
    }

    #[test]
    fn take_where_wakes_only_the_waits_that_ended() {
        let mut parked = Parked::default();
        let waker = Waker::noop();
        let (mut a, mut b) = (None, None);
        parked.park(&mut a, 5u64, waker);
        parked.park(&mut b, 9u64, waker);
        assert_eq!(parked.take_where(|after| *after < 7).len(), 1);
        assert_eq!(parked.waits.len(), 1);
        parked.unpark(&mut b);
        assert!(parked.waits.is_empty() && b.is_none());
    }
}
