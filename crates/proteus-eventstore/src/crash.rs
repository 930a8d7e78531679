//! The crash test every adapter whose backend a test can kill runs (feature `conformance`):
//! writers append without pause while the backend server is killed (`SIGKILL`) and started
//! again, several times; every append must either succeed or fail retriably, and, retried with
//! the same ids and expected version until it succeeds (as clients are told to), be stored
//! exactly once. Killing a server mid-append is the case the conformance suite cannot reach:
//! an append stored whose answer was lost, whose retry must be recognised as a duplicate.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::conformance::{event, stream};
use crate::{Direction, ErrorKind, EventStore, ExpectedVersion, StreamName};

/// Writers, each appending to a stream of its own without pause, so appends are in flight
/// when the server dies.
pub const WRITERS: usize = 4;
/// Appends of each writer, each one event `e<i>` at version `i`.
pub const APPENDS_PER_WRITER: usize = 40;
/// Appends acknowledged (all writers together) before each crash: several crashes, so that
/// some fall while an append is stored and its answer not yet sent.
pub const APPENDS_BEFORE_CRASHES: [usize; 3] = [40, 80, 120];
/// How long one append may keep being retried.
pub const RETRY_FOR_S: u64 = 60;

/// What the writers saw.
#[derive(Debug)]
pub struct CrashRun {
    pub streams: Vec<StreamName>,
    /// Tries that failed (retriably).
    pub failures: usize,
    /// Retries answered as duplicates: their first try was stored, its answer lost.
    pub recognised_retries: usize,
}

/// Appends `e0…` to `s`, each with its exact expected version, retrying a failed append with
/// the same ids and expectation until it succeeds. Returns (failures, recognised retries).
async fn write(
    store: Arc<dyn EventStore>,
    s: StreamName,
    acknowledged: Arc<AtomicUsize>,
) -> (usize, usize) {
    let (mut failures, mut recognised_retries) = (0, 0);
    for i in 0..APPENDS_PER_WRITER {
        let expected = match i {
            0 => ExpectedVersion::NoStream,
            i => ExpectedVersion::Exact(i as u64 - 1),
        };
        let events = vec![event(&format!("e{i}"), "Happened")];
        let deadline = Instant::now() + Duration::from_secs(RETRY_FOR_S);
        let mut retry = false;
        loop {
            match store.append(&s, expected, events.clone()).await {
                Ok(outcome) => {
                    assert_eq!(outcome.first_version, i as u64, "{s} e{i}: {outcome:?}");
                    assert!(
                        !outcome.duplicate || retry,
                        "{s} e{i} is a duplicate on its first try"
                    );
                    recognised_retries += usize::from(outcome.duplicate);
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(error) => {
                    assert_eq!(
                        error.kind(),
                        ErrorKind::Unavailable,
                        "{s} e{i} failed, and not retriably: {error}"
                    );
                    assert!(
                        Instant::now() < deadline,
                        "{s} e{i} still failing after {RETRY_FOR_S} s: the store did not reconnect by itself ({error})"
                    );
                    failures += 1;
                    retry = true;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    (failures, recognised_retries)
}

/// Runs the writers on `store` and calls `crash` (kill the server, wait, start it again) after
/// each of [`APPENDS_BEFORE_CRASHES`] acknowledged appends. Fails if no append failed: then the
/// crashes were not seen.
pub async fn append_through_crashes<F, C>(store: Arc<dyn EventStore>, mut crash: C) -> CrashRun
where
    C: FnMut() -> F,
    F: Future<Output = ()>,
{
    let tag = std::process::id();
    let streams: Vec<StreamName> = (0..WRITERS)
        .map(|w| stream(&format!("crash{tag}-{w}")))
        .collect();
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = streams
        .iter()
        .map(|s| tokio::spawn(write(store.clone(), s.clone(), acknowledged.clone())))
        .collect();
    for before in APPENDS_BEFORE_CRASHES {
        // Bounded, so a writer that failed (its panic is printed) or hangs fails the test, not
        // hangs it.
        let deadline = Instant::now() + Duration::from_secs(RETRY_FOR_S);
        while acknowledged.load(Ordering::Relaxed) < before {
            assert!(
                Instant::now() < deadline,
                "fewer than {before} appends acknowledged after {RETRY_FOR_S} s: a writer stopped (see its panic above) or hangs in an append that neither succeeds nor fails"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        crash().await;
    }
    let (mut failures, mut recognised_retries) = (0, 0);
    for writer in writers {
        let (failed, recognised) = writer.await.expect("a writer panicked");
        failures += failed;
        recognised_retries += recognised;
    }
    assert!(
        failures > 0,
        "no append failed while the server was down: the test did not see the crashes"
    );
    CrashRun {
        streams,
        failures,
        recognised_retries,
    }
}

/// Every stream of `run` read through `reader` holds `e0…` exactly once, at versions 0….
pub async fn assert_each_event_once(reader: &dyn EventStore, run: &CrashRun, reader_name: &str) {
    let expected_ids: Vec<String> = (0..APPENDS_PER_WRITER).map(|i| format!("e{i}")).collect();
    for s in &run.streams {
        let page = reader
            .read_stream(s, 0, Direction::Forward, APPENDS_PER_WRITER * 2)
            .await
            .unwrap_or_else(|error| panic!("{reader_name}: reading {s}: {error}"));
        let ids: Vec<&str> = page.events.iter().map(|e| &*e.id).collect();
        assert_eq!(
            ids, expected_ids,
            "{reader_name}, {s}: every event once, in order"
        );
        let versions: Vec<u64> = page.events.iter().map(|e| e.version).collect();
        assert_eq!(
            versions,
            (0..APPENDS_PER_WRITER as u64).collect::<Vec<_>>(),
            "{reader_name}, {s}"
        );
    }
}
