//! The conformance suite of the [`EventStore`] port. Every adapter runs all of it through
//! [`event_store_conformance_tests!`](crate::event_store_conformance_tests):
//!
//! ```text
//! struct Harness { dir: tempfile::TempDir }
//! impl proteus_eventstore::conformance::EventStoreHarness for Harness { ... }
//! proteus_eventstore::event_store_conformance_tests!(Harness::new());
//! ```
//!
//! The randomized concurrency tests print their seed; set `PROTEUS_EVENTSTORE_SEED` to replay
//! one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{ErrorKind, EventStoreError};
use crate::event::{
    AppendOutcome, Direction, ExpectedVersion, FeedPage, ProposedEvent, ReadFilter, RecordedEvent,
};
use crate::limits::{EVENTS_PER_APPEND_MAX, READ_COUNT_MAX, WAIT_MS_MAX};
use crate::name::{Category, StreamName};
use crate::store::EventStore;

/// What the suite needs from an adapter's test set-up.
#[async_trait]
pub trait EventStoreHarness: Send + Sync {
    /// Opens the store on the harness's own storage (a temporary directory, say). Opening
    /// again after `close` and dropping every handle must see everything a completed write
    /// wrote, as after a restart.
    async fn open(&self) -> Arc<dyn EventStore>;
}

/// Closes `store` and opens it again from the same storage.
async fn reopen(
    harness: &dyn EventStoreHarness,
    store: Arc<dyn EventStore>,
) -> Arc<dyn EventStore> {
    store.close().await.expect("close");
    drop(store);
    harness.open().await
}

pub fn stream(name: &str) -> StreamName {
    StreamName::parse(name).unwrap()
}

fn category(name: &str) -> Category {
    Category::parse(name).unwrap()
}

/// An event whose data records its id, so tests can check payloads survive.
pub fn event(id: &str, event_type: &str) -> ProposedEvent {
    ProposedEvent::new(
        id,
        event_type,
        Bytes::from(format!("{{\"id\":\"{id}\",\"n\":[1,2.5,null]}}")),
    )
}

fn events(ids: &[&str]) -> Vec<ProposedEvent> {
    ids.iter().map(|id| event(id, "Happened")).collect()
}

fn ids(events: &[RecordedEvent]) -> Vec<String> {
    events.iter().map(|e| e.id.to_string()).collect()
}

fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

fn assert_strictly_increasing(values: &[u64], what: &str) {
    for pair in values.windows(2) {
        assert!(
            pair[0] < pair[1],
            "{what} not strictly increasing: {values:?}"
        );
    }
}

fn no_filter() -> ReadFilter {
    ReadFilter::default()
}

/// Reads the whole `$all` feed forward in pages of `page_size`.
async fn read_all_pages(
    store: &dyn EventStore,
    filter: &ReadFilter,
    page_size: usize,
) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    let mut from = 0;
    for _ in 0..100_000 {
        let page = store
            .read_all(from, Direction::Forward, page_size, filter)
            .await
            .unwrap();
        assert!(page.events.len() <= page_size);
        all.extend(page.events);
        assert!(
            page.next_position > from || page.is_end,
            "read_all made no progress"
        );
        from = page.next_position;
        if page.is_end {
            return all;
        }
    }
    panic!("read_all never reached the end");
}

fn expect_wrong_version(
    result: Result<AppendOutcome, EventStoreError>,
    wanted_actual: Option<u64>,
) {
    match result {
        Err(EventStoreError::WrongExpectedVersion { actual, .. }) => {
            assert_eq!(actual, wanted_actual, "actual version in the error")
        }
        other => panic!("expected WrongExpectedVersion, got {other:?}"),
    }
}

/// A small deterministic generator (SplitMix64) so randomized tests replay from their seed
/// without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn seed() -> u64 {
    let seed = std::env::var("PROTEUS_EVENTSTORE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    eprintln!("PROTEUS_EVENTSTORE_SEED={seed}");
    seed
}

pub async fn append_numbers_versions_from_zero(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let s = stream("order-1");
    let first = store
        .append(&s, ExpectedVersion::NoStream, events(&["a", "b"]))
        .await
        .unwrap();
    assert_eq!((first.first_version, first.last_version), (0, 1));
    assert!(!first.duplicate);
    assert!(first.first_position >= 1, "positions start at 1");
    assert!(first.first_position < first.last_position);
    let second = store
        .append(&s, ExpectedVersion::Exact(1), events(&["c"]))
        .await
        .unwrap();
    assert_eq!((second.first_version, second.last_version), (2, 2));
    assert!(second.first_position > first.last_position);
    assert_eq!(second.first_position, second.last_position);

    let page = store
        .read_stream(&s, 0, Direction::Forward, 100)
        .await
        .unwrap();
    assert_eq!(ids(&page.events), ["a", "b", "c"]);
    let versions: Vec<u64> = page.events.iter().map(|e| e.version).collect();
    assert_eq!(versions, [0, 1, 2]);
    assert_eq!(
        positions(&page.events),
        [
            first.first_position,
            first.last_position,
            second.first_position
        ]
    );
    let recorded = &page.events[0];
    assert_eq!(recorded.stream, s);
    assert_eq!(recorded.event_type, "Happened");
    assert_eq!(recorded.data, event("a", "Happened").data);
    assert!(
        recorded.recorded_ms > 1_600_000_000_000,
        "recorded_ms is wall-clock ms"
    );
    assert_eq!(page.last_version, 2);
    assert!(page.is_end);
    assert_eq!(page.next_version, 3);
    assert_eq!(page.head_position, second.last_position);

    let info = store.stream_info(&s).await.unwrap();
    assert_eq!(info.last_version, Some(2));
    assert_eq!(info.last_position, Some(second.last_position));
    assert!(!info.deleted);
    assert_eq!(info.snapshot_version, None);
    let missing = store.stream_info(&stream("order-2")).await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound, "{missing}");
}

pub async fn metadata_and_schema_version_round_trip(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let s = stream("meta-1");
    let proposed = ProposedEvent::new("m1", "Tagged", &br#"[1, "two", {"three": 3}]"#[..])
        .with_metadata(&br#"{"correlation_id":"c-1","user":"ann"}"#[..])
        .with_schema_version(7);
    store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![proposed.clone(), event("m2", "Plain")],
        )
        .await
        .unwrap();
    let page = store
        .read_stream(&s, 0, Direction::Forward, 10)
        .await
        .unwrap();
    assert_eq!(page.events[0].data, proposed.data);
    assert_eq!(page.events[0].metadata, proposed.metadata);
    assert_eq!(page.events[0].schema_version, Some(7));
    assert_eq!(page.events[1].metadata, None);
    assert_eq!(page.events[1].schema_version, None);
}

pub async fn expected_version_no_stream(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let s = stream("nostream-1");
    store
        .append(&s, ExpectedVersion::NoStream, events(&["a", "b"]))
        .await
        .unwrap();
    expect_wrong_version(
        store
            .append(&s, ExpectedVersion::NoStream, events(&["c"]))
            .await,
        Some(1),
    );
}

pub async fn expected_version_stream_exists(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let s = stream("exists-1");
    expect_wrong_version(
        store
            .append(&s, ExpectedVersion::StreamExists, events(&["a"]))
            .await,
        None,
    );
    store
        .append(&s, ExpectedVersion::Any, events(&["a"]))
        .await
        .unwrap();
    let outcome = store
        .append(&s, ExpectedVersion::StreamExists, events(&["b"]))
        .await
        .unwrap();
    assert_eq!(outcome.first_version, 1);
}

pub async fn expected_version_exact(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let s = stream("exact-1");
    expect_wrong_version(
        store
            .append(&s, ExpectedVersion::Exact(0), events(&["a"]))
            .await,
        None,
    );
    store
        .append(&s, ExpectedVersion::NoStream, events(&["a", "b", "c"]))
        .await
        .unwrap();
    for wrong in [0, 1, 3, 100] {
        let error = store
            .append(&s, ExpectedVersion::Exact(wrong), events(&["d"]))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Conflict);
        assert!(
            error
                .to_string()
                .contains(&format!("expected last version {wrong}")),
            "{error}"
        );
        expect_wrong_version(Err(error), Some(2));
    }
    let outcome = store
        .append(&s, ExpectedVersion::Exact(2), events(&["d"]))
        .await
        .unwrap();
    assert_eq!(outcome.first_version, 3);
    let page = store
        .read_stream(&s, 0, Direction::Forward, 10)
        .await
        .unwrap();
    assert_eq!(
        ids(&page.events),
        ["a", "b", "c", "d"],
        "failed appends wrote nothing"
    );
}

pub async fn expected_version_any(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let s = stream("any-1");
    for (index, id) in ["a", "b", "c"].iter().enumerate() {
        let outcome = store
            .append(&s, ExpectedVersion::Any, events(&[id]))
            .await
            .unwrap();
        assert_eq!(outcome.first_version, index as u64);
    }
}

pub async fn multi_event_appends_are_atomic(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let s = stream("atomic-1");
    store
        .append(&s, ExpectedVersion::NoStream, events(&["a"]))
        .await
        .unwrap();
    // A failed check writes none of the events.
    expect_wrong_version(
        store
            .append(&s, ExpectedVersion::Exact(5), events(&["b", "c", "d"]))
            .await,
        Some(0),
    );
    // One invalid event refuses the whole append.
    let mut batch = events(&["b", "c"]);
    batch.push(ProposedEvent::new("d", "Happened", &b"{not json"[..]));
    let error = store
        .append(&s, ExpectedVersion::Any, batch)
        .await
        .unwrap_err();
    assert!(
        matches!(error, EventStoreError::InvalidEvent { index: 2, .. }),
        "{error}"
    );
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    let page = store
        .read_stream(&s, 0, Direction::Forward, 10)
        .await
        .unwrap();
    assert_eq!(ids(&page.events), ["a"]);

    // The largest append lands whole, at consecutive versions.
    let big: Vec<ProposedEvent> = (0..EVENTS_PER_APPEND_MAX)
        .map(|i| event(&format!("big-{i}"), "Bulk"))
        .collect();
    let outcome = store
        .append(&s, ExpectedVersion::Exact(0), big)
        .await
        .unwrap();
    assert_eq!(outcome.first_version, 1);
    assert_eq!(outcome.last_version, EVENTS_PER_APPEND_MAX as u64);
    let page = store
        .read_stream(&s, 1, Direction::Forward, EVENTS_PER_APPEND_MAX)
        .await
        .unwrap();
    assert_eq!(page.events.len(), EVENTS_PER_APPEND_MAX);
    assert_strictly_increasing(&positions(&page.events), "positions of one append");
    assert_eq!(
        page.events.first().unwrap().position,
        outcome.first_position
    );
    assert_eq!(page.events.last().unwrap().position, outcome.last_position);
    // Events of one append are contiguous in $all: nothing interleaves.
    let all = store
        .read_all(
            outcome.first_position,
            Direction::Forward,
            EVENTS_PER_APPEND_MAX,
            &no_filter(),
        )
        .await
        .unwrap();
    assert!(all.events.iter().all(|e| e.stream == s));
}

pub async fn retries_are_idempotent(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let s = stream("idem-1");
    let original = store
        .append(&s, ExpectedVersion::NoStream, events(&["a", "b"]))
        .await
        .unwrap();
    store
        .append(&s, ExpectedVersion::Exact(1), events(&["c"]))
        .await
        .unwrap();
    // The same append again, with its now-stale expected version: its original outcome.
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Any,
        ExpectedVersion::Exact(17),
        ExpectedVersion::StreamExists,
    ] {
        let retry = store
            .append(&s, expected, events(&["a", "b"]))
            .await
            .unwrap();
        assert_eq!(
            retry,
            AppendOutcome {
                duplicate: true,
                ..original
            },
            "retry with {expected}"
        );
    }
    // A tail of a former append is recognised too: its ids are at consecutive versions.
    let tail = store
        .append(&s, ExpectedVersion::Any, events(&["b", "c"]))
        .await
        .unwrap();
    assert!(tail.duplicate);
    assert_eq!((tail.first_version, tail.last_version), (1, 2));
    let page = store
        .read_stream(&s, 0, Direction::Forward, 10)
        .await
        .unwrap();
    assert_eq!(ids(&page.events), ["a", "b", "c"], "retries wrote nothing");

    // The same id in another stream is another event.
    let other = store
        .append(&stream("idem-2"), ExpectedVersion::NoStream, events(&["a"]))
        .await
        .unwrap();
    assert!(!other.duplicate);
}

pub async fn partial_retries_conflict(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let s = stream("conflict-1");
    store
        .append(&s, ExpectedVersion::NoStream, events(&["a", "b", "c"]))
        .await
        .unwrap();
    for (batch, why) in [
        (vec!["a", "x"], "are not"),
        (vec!["x", "b"], "are not"),
        (vec!["b", "a"], "not in this order"),
        (vec!["a", "c"], "not in this order"),
    ] {
        let error = store
            .append(&s, ExpectedVersion::Any, events(&batch))
            .await
            .unwrap_err();
        assert!(
            matches!(error, EventStoreError::IdempotencyConflict { .. }),
            "{batch:?}: {error}"
        );
        assert_eq!(error.kind(), ErrorKind::Conflict);
        assert!(error.to_string().contains(why), "{batch:?}: {error}");
    }
    let error = store
        .append(&s, ExpectedVersion::Any, events(&["x", "y", "x"]))
        .await
        .unwrap_err();
    assert!(
        matches!(error, EventStoreError::InvalidEvent { index: 2, .. }),
        "{error}"
    );
    let page = store
        .read_stream(&s, 0, Direction::Forward, 10)
        .await
        .unwrap();
    assert_eq!(ids(&page.events), ["a", "b", "c"]);
}

pub async fn deleted_streams_are_gone_for_good(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let s = stream("gone-1");
    let outcome = store
        .append(&s, ExpectedVersion::NoStream, events(&["a", "b"]))
        .await
        .unwrap();
    store
        .put_snapshot(&s, 1, "State", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let error = store
        .delete_stream(&s, ExpectedVersion::Exact(0))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            EventStoreError::WrongExpectedVersion {
                actual: Some(1),
                ..
            }
        ),
        "{error}"
    );
    let deleted = store
        .delete_stream(&s, ExpectedVersion::Exact(1))
        .await
        .unwrap();
    assert_eq!(deleted.last_version, Some(1));

    let gone = |result: Result<(), EventStoreError>, what: &str| match result {
        Err(EventStoreError::StreamDeleted { stream }) => {
            assert!(stream.as_str().starts_with("gone-"), "{what}: {stream}")
        }
        other => panic!("{what}: expected StreamDeleted, got {other:?}"),
    };
    for expected in [
        ExpectedVersion::Any,
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(1),
    ] {
        gone(
            store.append(&s, expected, events(&["c"])).await.map(drop),
            "append",
        );
    }
    // Even a retry of an append that had succeeded.
    gone(
        store
            .append(&s, ExpectedVersion::Any, events(&["a", "b"]))
            .await
            .map(drop),
        "retry",
    );
    gone(
        store
            .read_stream(&s, 0, Direction::Forward, 10)
            .await
            .map(drop),
        "read",
    );
    gone(
        store.read_aggregate(&s, 10).await.map(drop),
        "read_aggregate",
    );
    gone(store.get_snapshot(&s).await.map(drop), "get_snapshot");
    gone(
        store
            .put_snapshot(&s, 1, "State", Bytes::from_static(b"{}"))
            .await,
        "put_snapshot",
    );
    gone(
        store
            .delete_stream(&s, ExpectedVersion::Any)
            .await
            .map(drop),
        "delete again",
    );
    let error = store
        .delete_stream(&s, ExpectedVersion::Any)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Gone);
    assert!(error.to_string().contains("new stream name"), "{error}");

    let info = store.stream_info(&s).await.unwrap();
    assert!(info.deleted);
    assert_eq!(info.last_version, Some(1));

    // Its events stay in $all and in its category.
    let all = read_all_pages(store.as_ref(), &no_filter(), 100).await;
    assert_eq!(
        positions(&all),
        [outcome.first_position, outcome.last_position]
    );
    let page = store
        .read_category(&category("gone"), 0, 10, &no_filter())
        .await
        .unwrap();
    assert_eq!(ids(&page.events), ["a", "b"]);

    // A stream that never existed can be tombstoned to reserve its name.
    let reserved = stream("gone-2");
    let error = store
        .delete_stream(&reserved, ExpectedVersion::StreamExists)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            EventStoreError::WrongExpectedVersion { actual: None, .. }
        ),
        "{error}"
    );
    let deleted = store
        .delete_stream(&reserved, ExpectedVersion::NoStream)
        .await
        .unwrap();
    assert_eq!(deleted.last_version, None);
    gone(
        store
            .append(&reserved, ExpectedVersion::NoStream, events(&["z"]))
            .await
            .map(drop),
        "append to reserved",
    );
    let info = store.stream_info(&reserved).await.unwrap();
    assert!(info.deleted && info.last_version.is_none());
}

pub async fn stream_reads_page_both_ways(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let s = stream("pages-1");
    let all: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    store
        .append(&s, ExpectedVersion::NoStream, events(&refs))
        .await
        .unwrap();
    store
        .append(
            &stream("pages-2"),
            ExpectedVersion::NoStream,
            events(&["other"]),
        )
        .await
        .unwrap();

    // Forward in pages of 3.
    let mut seen = Vec::new();
    let mut from = 0;
    loop {
        let page = store
            .read_stream(&s, from, Direction::Forward, 3)
            .await
            .unwrap();
        assert!(page.events.len() <= 3);
        seen.extend(ids(&page.events));
        from = page.next_version;
        if page.is_end {
            break;
        }
    }
    assert_eq!(seen, all);
    assert_eq!(from, 10);

    let page = store
        .read_stream(&s, 4, Direction::Forward, 2)
        .await
        .unwrap();
    assert_eq!(ids(&page.events), ["e4", "e5"]);
    assert_eq!(
        (page.next_version, page.is_end, page.last_version),
        (6, false, 9)
    );

    // Backward from the end in pages of 4.
    let mut seen = Vec::new();
    let mut from = u64::MAX;
    loop {
        let page = store
            .read_stream(&s, from, Direction::Backward, 4)
            .await
            .unwrap();
        seen.extend(ids(&page.events));
        if page.is_end {
            break;
        }
        from = page.next_version;
    }
    let reversed: Vec<String> = all.iter().rev().cloned().collect();
    assert_eq!(seen, reversed);

    let page = store
        .read_stream(&s, 4, Direction::Backward, 2)
        .await
        .unwrap();
    assert_eq!(ids(&page.events), ["e4", "e3"]);
    assert_eq!((page.next_version, page.is_end), (2, false));
    let page = store
        .read_stream(&s, 1, Direction::Backward, 5)
        .await
        .unwrap();
    assert_eq!(ids(&page.events), ["e1", "e0"]);
    assert!(page.is_end);

    // Past the end: empty, at the end.
    let page = store
        .read_stream(&s, 10, Direction::Forward, 5)
        .await
        .unwrap();
    assert!(page.events.is_empty() && page.is_end);
    assert_eq!(page.next_version, 10);
    let page = store
        .read_stream(&s, 50, Direction::Forward, 5)
        .await
        .unwrap();
    assert!(page.events.is_empty() && page.is_end);

    let error = store
        .read_stream(&stream("pages-3"), 0, Direction::Forward, 5)
        .await
        .unwrap_err();
    assert!(
        matches!(error, EventStoreError::StreamNotFound { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("pages-3"), "{error}");
}

/// Writes a small mixed history: `(stream, type, id)` in commit order.
async fn write_history(store: &dyn EventStore) -> Vec<(String, String, String)> {
    let plan: [(&str, &[(&str, &str)]); 5] = [
        ("order-1", &[("Placed", "o1-0"), ("Paid", "o1-1")]),
        ("cart-1", &[("Added", "c1-0")]),
        ("order-2", &[("Placed", "o2-0")]),
        ("orderline-1", &[("Placed", "ol1-0")]),
        ("order-1", &[("Shipped", "o1-2"), ("Paid", "o1-3")]),
    ];
    let mut history = Vec::new();
    for (name, batch) in plan {
        let proposed = batch.iter().map(|(t, id)| event(id, t)).collect();
        store
            .append(&stream(name), ExpectedVersion::Any, proposed)
            .await
            .unwrap();
        for (t, id) in batch {
            history.push((name.to_owned(), t.to_string(), id.to_string()));
        }
    }
    history
}

pub async fn all_feed_reads_both_ways_with_filters(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let empty = store
        .read_all(0, Direction::Forward, 10, &no_filter())
        .await
        .unwrap();
    assert!(empty.events.is_empty() && empty.is_end);
    assert_eq!(empty.head_position, 0);

    let history = write_history(store.as_ref()).await;
    let all_ids: Vec<String> = history.iter().map(|(_, _, id)| id.clone()).collect();

    for page_size in [1, 2, 3, 100] {
        let all = read_all_pages(store.as_ref(), &no_filter(), page_size).await;
        assert_eq!(ids(&all), all_ids, "page size {page_size}");
        assert_strictly_increasing(&positions(&all), "$all positions");
    }
    let first = store
        .read_all(0, Direction::Forward, 100, &no_filter())
        .await
        .unwrap();
    let head = first.events.last().unwrap().position;
    assert_eq!(first.head_position, head);
    assert!(first.is_end);
    assert_eq!(first.next_position, head + 1);
    // Inclusive start.
    let third = first.events[2].position;
    let page = store
        .read_all(third, Direction::Forward, 2, &no_filter())
        .await
        .unwrap();
    assert_eq!(ids(&page.events), all_ids[2..4]);
    assert!(!page.is_end);
    assert_eq!(page.next_position, first.events[3].position + 1);

    // Backward: the same events, newest first, in pages.
    let mut backward = Vec::new();
    let mut from = u64::MAX;
    loop {
        let page = store
            .read_all(from, Direction::Backward, 3, &no_filter())
            .await
            .unwrap();
        backward.extend(ids(&page.events));
        if page.is_end {
            break;
        }
        from = page.next_position;
    }
    let reversed: Vec<String> = all_ids.iter().rev().cloned().collect();
    assert_eq!(backward, reversed);
    let page = store
        .read_all(third, Direction::Backward, 10, &no_filter())
        .await
        .unwrap();
    assert_eq!(ids(&page.events), ["c1-0", "o1-1", "o1-0"]);
    assert!(page.is_end);

    // Filters, forward and backward, paged.
    let by_type = ReadFilter {
        event_types: vec!["Placed".into(), "Shipped".into()],
        stream_prefix: None,
    };
    let by_prefix = ReadFilter {
        event_types: vec![],
        stream_prefix: Some("order-".into()),
    };
    let both = ReadFilter {
        event_types: vec!["Paid".into()],
        stream_prefix: Some("order-1".into()),
    };
    for filter in [by_type, by_prefix, both] {
        let wanted: Vec<String> = history
            .iter()
            .filter(|(s, t, _)| filter.matches(s, t))
            .map(|(_, _, id)| id.clone())
            .collect();
        assert!(!wanted.is_empty());
        for page_size in [1, 2, 100] {
            let got = read_all_pages(store.as_ref(), &filter, page_size).await;
            assert_eq!(ids(&got), wanted, "{filter:?} pages of {page_size}");
        }
        let page = store
            .read_all(u64::MAX, Direction::Backward, 100, &filter)
            .await
            .unwrap();
        let reversed: Vec<String> = wanted.iter().rev().cloned().collect();
        assert_eq!(ids(&page.events), reversed, "{filter:?} backward");
    }
    let nothing = ReadFilter {
        event_types: vec!["Unknown".into()],
        stream_prefix: None,
    };
    let page = store
        .read_all(0, Direction::Forward, 10, &nothing)
        .await
        .unwrap();
    assert!(page.events.is_empty() && page.is_end);
    assert_eq!(
        page.next_position,
        head + 1,
        "a filtered read skips what it scanned"
    );
}

pub async fn category_reads(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let history = write_history(store.as_ref()).await;
    let wanted: Vec<String> = history
        .iter()
        .filter(|(s, _, _)| s.starts_with("order-"))
        .map(|(_, _, id)| id.clone())
        .collect();
    assert_eq!(wanted, ["o1-0", "o1-1", "o2-0", "o1-2", "o1-3"]);

    let order = category("order");
    let page = store
        .read_category(&order, 0, 100, &no_filter())
        .await
        .unwrap();
    assert_eq!(ids(&page.events), wanted, "orderline-1 is another category");
    assert_strictly_increasing(&positions(&page.events), "category positions");
    assert!(page.is_end);
    assert_eq!(page.next_position, page.head_position + 1);

    // Paged, inclusive start.
    let mut seen = Vec::new();
    let mut from = 0;
    loop {
        let page = store
            .read_category(&order, from, 2, &no_filter())
            .await
            .unwrap();
        seen.extend(ids(&page.events));
        from = page.next_position;
        if page.is_end {
            break;
        }
    }
    assert_eq!(seen, wanted);
    let third = store
        .read_category(&order, 0, 100, &no_filter())
        .await
        .unwrap()
        .events[2]
        .position;
    let page = store
        .read_category(&order, third, 100, &no_filter())
        .await
        .unwrap();
    assert_eq!(ids(&page.events), ["o2-0", "o1-2", "o1-3"]);

    let paid = ReadFilter {
        event_types: vec!["Paid".into()],
        stream_prefix: None,
    };
    let page = store.read_category(&order, 0, 100, &paid).await.unwrap();
    assert_eq!(ids(&page.events), ["o1-1", "o1-3"]);
    let just_two = ReadFilter {
        event_types: vec![],
        stream_prefix: Some("order-2".into()),
    };
    let page = store
        .read_category(&order, 0, 100, &just_two)
        .await
        .unwrap();
    assert_eq!(ids(&page.events), ["o2-0"]);

    let page = store
        .read_category(&category("orderline"), 0, 100, &no_filter())
        .await
        .unwrap();
    assert_eq!(ids(&page.events), ["ol1-0"]);
    let page = store
        .read_category(&category("nothing"), 0, 100, &no_filter())
        .await
        .unwrap();
    assert!(page.events.is_empty() && page.is_end);
    // A stream without '-' is its own category.
    store
        .append(&stream("settings"), ExpectedVersion::Any, events(&["s0"]))
        .await
        .unwrap();
    let page = store
        .read_category(&category("settings"), 0, 100, &no_filter())
        .await
        .unwrap();
    assert_eq!(ids(&page.events), ["s0"]);
}

pub async fn snapshots(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let s = stream("snap-1");
    let error = store
        .put_snapshot(&s, 0, "State", Bytes::from_static(b"{}"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
    assert!(store.get_snapshot(&s).await.unwrap().is_none());
    store
        .append(&s, ExpectedVersion::NoStream, events(&["a", "b", "c"]))
        .await
        .unwrap();
    let error = store
        .put_snapshot(&s, 3, "State", Bytes::from_static(b"{}"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            EventStoreError::SnapshotAheadOfStream {
                version: 3,
                last_version: Some(2),
                ..
            }
        ),
        "{error}"
    );
    let error = store
        .put_snapshot(&s, 1, "State", Bytes::from_static(b"{oops"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
    let error = store
        .put_snapshot(&s, 1, "bad type", Bytes::from_static(b"{}"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");

    store
        .put_snapshot(&s, 1, "State.v1", Bytes::from_static(br#"{"count":2}"#))
        .await
        .unwrap();
    let snapshot = store.get_snapshot(&s).await.unwrap().unwrap();
    assert_eq!(snapshot.stream, s);
    assert_eq!(snapshot.version, 1);
    assert_eq!(snapshot.snapshot_type, "State.v1");
    assert_eq!(snapshot.data.as_ref(), br#"{"count":2}"#);
    assert_eq!(
        store.stream_info(&s).await.unwrap().snapshot_version,
        Some(1)
    );
    let error = store
        .put_snapshot(&s, 0, "State.v1", Bytes::from_static(b"{}"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            EventStoreError::SnapshotOutdated {
                version: 0,
                stored_version: 1,
                ..
            }
        ),
        "{error}"
    );
    // The same version replaces (a new fold or type); a newer one too.
    store
        .put_snapshot(&s, 1, "State.v2", Bytes::from_static(br#"{"n":2}"#))
        .await
        .unwrap();
    assert_eq!(
        store.get_snapshot(&s).await.unwrap().unwrap().snapshot_type,
        "State.v2"
    );
    store
        .put_snapshot(&s, 2, "State.v2", Bytes::from_static(br#"{"n":3}"#))
        .await
        .unwrap();
    let snapshot = store.get_snapshot(&s).await.unwrap().unwrap();
    assert_eq!(
        (snapshot.version, snapshot.data.as_ref()),
        (2, &br#"{"n":3}"#[..])
    );
    // Snapshots are per stream.
    assert!(
        store
            .get_snapshot(&stream("snap-2"))
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn aggregates_load_from_the_latest_snapshot(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let s = stream("agg-1");
    let all: Vec<String> = (0..8).map(|i| format!("e{i}")).collect();
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    store
        .append(&s, ExpectedVersion::NoStream, events(&refs))
        .await
        .unwrap();
    let aggregate = store.read_aggregate(&s, 100).await.unwrap();
    assert!(aggregate.snapshot.is_none());
    assert_eq!(ids(&aggregate.events), all);
    assert!(aggregate.is_end);
    assert_eq!(aggregate.last_version, 7);

    store
        .put_snapshot(&s, 4, "State", Bytes::from_static(br#"{"upto":4}"#))
        .await
        .unwrap();
    let aggregate = store.read_aggregate(&s, 100).await.unwrap();
    assert_eq!(aggregate.snapshot.as_ref().unwrap().version, 4);
    assert_eq!(ids(&aggregate.events), ["e5", "e6", "e7"]);
    assert!(aggregate.is_end);

    let aggregate = store.read_aggregate(&s, 2).await.unwrap();
    assert_eq!(ids(&aggregate.events), ["e5", "e6"]);
    assert!(!aggregate.is_end);
    assert_eq!(aggregate.next_version, 7);

    store
        .put_snapshot(&s, 7, "State", Bytes::from_static(br#"{"upto":7}"#))
        .await
        .unwrap();
    let aggregate = store.read_aggregate(&s, 100).await.unwrap();
    assert!(aggregate.events.is_empty() && aggregate.is_end);

    let error = store
        .read_aggregate(&stream("agg-2"), 100)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::NotFound, "{error}");
    let error = store.read_aggregate(&s, 0).await.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
}

/// An aggregate loaded while a writer appends and snapshots the stream is one state the
/// stream had: its events follow its snapshot without a gap, and its end is not before the
/// snapshot (an adapter that reads the snapshot and the stream's end at the same time must
/// read the end again when the snapshot is newer).
pub async fn aggregates_stay_whole_while_snapshots_move(harness: &dyn EventStoreHarness) {
    const ROUNDS: u64 = 150;
    let store = harness.open().await;
    let s = stream("agg-moving");
    store
        .append(&s, ExpectedVersion::NoStream, events(&["m0"]))
        .await
        .unwrap();
    let writer = {
        let (store, s) = (store.clone(), s.clone());
        tokio::spawn(async move {
            for version in 1..=ROUNDS {
                let id = format!("m{version}");
                store
                    .append(&s, ExpectedVersion::Exact(version - 1), events(&[&id]))
                    .await
                    .unwrap();
                let state = Bytes::from(format!(r#"{{"upto":{version}}}"#));
                store
                    .put_snapshot(&s, version, "State", state)
                    .await
                    .unwrap();
            }
        })
    };
    let mut loads = 0u64;
    while !writer.is_finished() || loads == 0 {
        let aggregate = store.read_aggregate(&s, 1_000).await.unwrap();
        loads += 1;
        let from_version = match &aggregate.snapshot {
            Some(snapshot) => {
                let state = format!(r#"{{"upto":{}}}"#, snapshot.version);
                assert_eq!(snapshot.data, state.as_bytes(), "load {loads}");
                assert!(
                    aggregate.last_version >= snapshot.version,
                    "load {loads}: the stream ends at {} before its snapshot at {}",
                    aggregate.last_version,
                    snapshot.version
                );
                snapshot.version + 1
            }
            None => 0,
        };
        let versions: Vec<u64> = aggregate.events.iter().map(|e| e.version).collect();
        let expected: Vec<u64> = (from_version..from_version + versions.len() as u64).collect();
        assert_eq!(
            versions, expected,
            "load {loads}: events follow the snapshot"
        );
        assert!(aggregate.is_end, "load {loads}: 1,000 events reach the end");
        assert_eq!(
            aggregate.last_version,
            from_version + versions.len() as u64 - 1,
            "load {loads}: the events reach the stream's last version"
        );
    }
    writer.await.unwrap();
    let aggregate = store.read_aggregate(&s, 1_000).await.unwrap();
    assert_eq!(aggregate.snapshot.map(|s| s.version), Some(ROUNDS));
    assert!(aggregate.events.is_empty() && aggregate.last_version == ROUNDS);
}

pub async fn waits_end_when_a_position_is_committed(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let started = Instant::now();
    assert!(
        !store
            .wait_for_position(0, Duration::from_millis(50))
            .await
            .unwrap()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(45),
        "the wait lasted its timeout"
    );

    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            store
                .append(&stream("wait-1"), ExpectedVersion::Any, events(&["a"]))
                .await
                .unwrap()
        })
    };
    let started = Instant::now();
    assert!(
        store
            .wait_for_position(0, Duration::from_secs(10))
            .await
            .unwrap()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken by the append"
    );
    let outcome = writer.await.unwrap();
    // The event is readable once the wait says so.
    let page = store
        .read_all(0, Direction::Forward, 10, &no_filter())
        .await
        .unwrap();
    assert_eq!(page.head_position, outcome.last_position);

    // Already there: no wait.
    let started = Instant::now();
    assert!(
        store
            .wait_for_position(outcome.last_position - 1, Duration::from_secs(10))
            .await
            .unwrap()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        !store
            .wait_for_position(outcome.last_position, Duration::from_millis(30))
            .await
            .unwrap()
    );
    let error = store
        .wait_for_position(0, Duration::from_millis(WAIT_MS_MAX + 1))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("wait_ms_max"), "{error}");
}

pub async fn everything_survives_a_reopen(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let history = write_history(store.as_ref()).await;
    let kept = stream("keep-1");
    let original = store
        .append(&kept, ExpectedVersion::NoStream, events(&["k0", "k1"]))
        .await
        .unwrap();
    store
        .put_snapshot(&kept, 1, "State", Bytes::from_static(br#"{"k":1}"#))
        .await
        .unwrap();
    store
        .delete_stream(&stream("cart-1"), ExpectedVersion::Any)
        .await
        .unwrap();
    let before = read_all_pages(store.as_ref(), &no_filter(), 100).await;
    assert_eq!(before.len(), history.len() + 2);

    let store = reopen(harness, store).await;
    let after = read_all_pages(store.as_ref(), &no_filter(), 100).await;
    assert_eq!(after, before, "the $all feed survives");
    let page = store
        .read_stream(&stream("order-1"), 0, Direction::Forward, 100)
        .await
        .unwrap();
    assert_eq!(ids(&page.events), ["o1-0", "o1-1", "o1-2", "o1-3"]);
    let page = store
        .read_category(&category("order"), 0, 100, &no_filter())
        .await
        .unwrap();
    assert_eq!(page.events.len(), 5);
    assert_eq!(
        store
            .get_snapshot(&kept)
            .await
            .unwrap()
            .unwrap()
            .data
            .as_ref(),
        br#"{"k":1}"#
    );
    assert!(store.stream_info(&stream("cart-1")).await.unwrap().deleted);
    let error = store
        .append(&stream("cart-1"), ExpectedVersion::Any, events(&["x"]))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Gone);
    // Idempotency and versions survive.
    let retry = store
        .append(&kept, ExpectedVersion::NoStream, events(&["k0", "k1"]))
        .await
        .unwrap();
    assert_eq!(
        retry,
        AppendOutcome {
            duplicate: true,
            ..original
        }
    );
    expect_wrong_version(
        store
            .append(&kept, ExpectedVersion::Exact(0), events(&["k2"]))
            .await,
        Some(1),
    );
    // New positions continue after the old ones.
    let next = store
        .append(&kept, ExpectedVersion::Exact(1), events(&["k2"]))
        .await
        .unwrap();
    assert_eq!(next.first_version, 2);
    assert!(next.first_position > after.last().unwrap().position);
    assert!(
        store
            .wait_for_position(next.first_position - 1, Duration::ZERO)
            .await
            .unwrap()
    );
}

pub async fn limits_are_enforced(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let s = stream("limits-1");
    let invalid = |result: Result<AppendOutcome, EventStoreError>, what: &str| {
        let error = result.expect_err(what);
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{what}: {error}");
        error.to_string()
    };
    invalid(
        store.append(&s, ExpectedVersion::Any, vec![]).await,
        "empty",
    );
    let too_many: Vec<ProposedEvent> = (0..=EVENTS_PER_APPEND_MAX)
        .map(|i| event(&i.to_string(), "T"))
        .collect();
    let text = invalid(
        store.append(&s, ExpectedVersion::Any, too_many).await,
        "too many",
    );
    assert!(text.contains("events_per_append_max"), "{text}");
    invalid(
        store
            .append(&s, ExpectedVersion::Any, vec![event(&"i".repeat(129), "T")])
            .await,
        "long id",
    );
    invalid(
        store
            .append(&s, ExpectedVersion::Any, vec![event("a", "")])
            .await,
        "empty type",
    );
    invalid(
        store
            .append(
                &s,
                ExpectedVersion::Any,
                vec![event("a", "T").with_metadata(&b"\"not an object\""[..])],
            )
            .await,
        "metadata",
    );
    assert!(
        store.stream_info(&s).await.is_err(),
        "refused appends created nothing"
    );
    store
        .append(&s, ExpectedVersion::Any, events(&["a"]))
        .await
        .unwrap();

    for count in [0, READ_COUNT_MAX + 1] {
        let error = store
            .read_stream(&s, 0, Direction::Forward, count)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
        let error = store
            .read_all(0, Direction::Forward, count, &no_filter())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
        let error = store
            .read_category(&category("limits"), 0, count, &no_filter())
            .await
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
    }
    let page = store
        .read_all(0, Direction::Forward, READ_COUNT_MAX, &no_filter())
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
    let wide = ReadFilter {
        event_types: (0..=crate::limits::FILTER_EVENT_TYPES_MAX)
            .map(|i| format!("T{i}"))
            .collect(),
        stream_prefix: None,
    };
    let error = store
        .read_all(0, Direction::Forward, 10, &wide)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("filter_event_types_max"),
        "{error}"
    );
    let error = store
        .read_category(&category("limits"), 0, 10, &wide)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidInput, "{error}");
}

pub async fn closed_stores_refuse_calls(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let s = stream("closed-1");
    store
        .append(&s, ExpectedVersion::Any, events(&["a"]))
        .await
        .unwrap();
    store.close().await.unwrap();
    let error = store
        .append(&s, ExpectedVersion::Any, events(&["b"]))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    let error = store
        .read_stream(&s, 0, Direction::Forward, 1)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    // Closing twice is harmless.
    store.close().await.unwrap();
    drop(store);
    let store = harness.open().await;
    let page = store
        .read_stream(&s, 0, Direction::Forward, 10)
        .await
        .unwrap();
    assert_eq!(ids(&page.events), ["a"]);
}

/// Many tasks race to append at the same expected version, round after round: exactly one
/// wins each round, every loser is told the winner's version, and the stream ends with every
/// winner's events at consecutive versions, none lost or doubled.
pub async fn racing_appenders_get_one_winner_per_version(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let seed = seed();
    let mut rng = Rng::new(seed);
    let s = stream("race-1");
    let mut last: Option<u64> = None;
    let mut winners_ids: Vec<String> = Vec::new();
    for round in 0..40 {
        let expected = match last {
            None => ExpectedVersion::NoStream,
            Some(version) => ExpectedVersion::Exact(version),
        };
        let contenders = 2 + rng.below(9);
        let mut tasks = Vec::new();
        for contender in 0..contenders {
            let count = 1 + rng.below(4);
            let proposed: Vec<ProposedEvent> = (0..count)
                .map(|i| event(&format!("r{round}-c{contender}-e{i}"), "Raced"))
                .collect();
            let yields = rng.below(4);
            let (store, s) = (store.clone(), s.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..yields {
                    tokio::task::yield_now().await;
                }
                let result = store.append(&s, expected, proposed.clone()).await;
                (proposed, result)
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        let winners: Vec<_> = results
            .iter()
            .filter_map(|(proposed, result)| result.as_ref().ok().map(|o| (proposed, *o)))
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "seed {seed} round {round}: exactly one append wins {expected}: {results:?}"
        );
        let (proposed, outcome) = winners[0];
        assert_eq!(
            outcome.first_version,
            last.map_or(0, |v| v + 1),
            "seed {seed}"
        );
        assert_eq!(
            outcome.last_version - outcome.first_version + 1,
            proposed.len() as u64
        );
        assert!(!outcome.duplicate);
        for (_, result) in &results {
            if let Err(error) = result {
                match error {
                    EventStoreError::WrongExpectedVersion { actual, .. } => assert_eq!(
                        *actual,
                        Some(outcome.last_version),
                        "seed {seed}: losers see the winner"
                    ),
                    other => panic!("seed {seed}: unexpected error {other}"),
                }
            }
        }
        winners_ids.extend(proposed.iter().map(|e| e.id.to_string()));
        last = Some(outcome.last_version);
    }
    let page = store
        .read_stream(&s, 0, Direction::Forward, READ_COUNT_MAX)
        .await
        .unwrap();
    assert_eq!(ids(&page.events), winners_ids, "seed {seed}");
    let versions: Vec<u64> = page.events.iter().map(|e| e.version).collect();
    let contiguous: Vec<u64> = (0..page.events.len() as u64).collect();
    assert_eq!(versions, contiguous, "seed {seed}: no gaps, no doubles");
    assert_strictly_increasing(&positions(&page.events), "positions");
}

/// Writers that read the version, append with it and retry on conflict, all on one stream:
/// every append lands exactly once, at consecutive versions, each writer's in its order.
pub async fn optimistic_writers_converge_without_gaps(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let seed = seed();
    let mut rng = Rng::new(seed);
    let s = stream("counter-1");
    let writers = 8;
    let appends_per_writer = 12;
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let (store, s) = (store.clone(), s.clone());
        let counts: Vec<u64> = (0..appends_per_writer).map(|_| 1 + rng.below(3)).collect();
        tasks.push(tokio::spawn(async move {
            let mut written = Vec::new();
            let mut conflicts = 0u32;
            for (append, count) in counts.into_iter().enumerate() {
                let proposed: Vec<ProposedEvent> = (0..count)
                    .map(|i| event(&format!("w{writer}-a{append}-e{i}"), "Counted"))
                    .collect();
                loop {
                    let expected = match store.stream_info(&s).await {
                        Ok(info) => ExpectedVersion::Exact(info.last_version.unwrap()),
                        Err(EventStoreError::StreamNotFound { .. }) => ExpectedVersion::NoStream,
                        Err(other) => panic!("{other}"),
                    };
                    match store.append(&s, expected, proposed.clone()).await {
                        Ok(outcome) => {
                            assert!(!outcome.duplicate);
                            written.extend(proposed.iter().map(|e| e.id.to_string()));
                            break;
                        }
                        Err(EventStoreError::WrongExpectedVersion { .. }) => {
                            conflicts += 1;
                            assert!(conflicts < 10_000, "livelock");
                        }
                        Err(other) => panic!("{other}"),
                    }
                }
            }
            written
        }));
    }
    let mut expected_ids = HashSet::new();
    let mut per_writer = Vec::new();
    for task in tasks {
        let written = task.await.unwrap();
        expected_ids.extend(written.iter().cloned());
        per_writer.push(written);
    }
    let page = store
        .read_stream(&s, 0, Direction::Forward, READ_COUNT_MAX)
        .await
        .unwrap();
    let got = ids(&page.events);
    assert_eq!(
        got.len(),
        expected_ids.len(),
        "seed {seed}: nothing lost or doubled"
    );
    assert_eq!(got.iter().cloned().collect::<HashSet<_>>(), expected_ids);
    let versions: Vec<u64> = page.events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (0..got.len() as u64).collect::<Vec<_>>());
    for (writer, written) in per_writer.iter().enumerate() {
        let prefix = format!("w{writer}-");
        let in_stream: Vec<&String> = got.iter().filter(|id| id.starts_with(&prefix)).collect();
        let mine: Vec<&String> = written.iter().collect();
        assert_eq!(in_stream, mine, "seed {seed}: writer {writer}'s order");
    }
}

/// Concurrent appends to many streams, some of them failing their check, some of them the
/// same retried write: the failures and retries do not disturb the others (an adapter that
/// commits appends in batches must isolate them).
pub async fn concurrent_appends_are_isolated(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let mut tasks = Vec::new();
    for i in 0..60u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let stream_index = (i / 3) % 6;
            let s = stream(&format!("iso-{stream_index}"));
            let (expected, proposed) = match i % 3 {
                // Good appends.
                0 => (
                    ExpectedVersion::Any,
                    vec![event(&format!("good-{i}"), "Good")],
                ),
                // Appends that can never match.
                1 => (
                    ExpectedVersion::Exact(1_000_000),
                    vec![event(&format!("bad-{i}"), "Bad")],
                ),
                // The same write twice, concurrently: written once.
                _ => (
                    ExpectedVersion::Any,
                    vec![
                        event(&format!("twin-{stream_index}-a"), "Twin"),
                        event(&format!("twin-{stream_index}-b"), "Twin"),
                    ],
                ),
            };
            (i, store.append(&s, expected, proposed).await)
        }));
    }
    let mut twins: HashMap<u64, Vec<AppendOutcome>> = HashMap::new();
    for task in tasks {
        let (i, result) = task.await.unwrap();
        match i % 3 {
            0 => assert!(!result.unwrap().duplicate),
            1 => assert!(
                matches!(result, Err(EventStoreError::WrongExpectedVersion { .. })),
                "{result:?}"
            ),
            _ => twins.entry((i / 3) % 6).or_default().push(result.unwrap()),
        }
    }
    assert_eq!(twins.len(), 6, "every stream got its twin writes");
    for (stream_index, outcomes) in twins {
        let written: Vec<_> = outcomes.iter().filter(|o| !o.duplicate).collect();
        assert_eq!(
            written.len(),
            1,
            "stream {stream_index}: one twin writes: {outcomes:?}"
        );
        for outcome in &outcomes {
            assert_eq!(
                (outcome.first_version, outcome.first_position),
                (written[0].first_version, written[0].first_position)
            );
        }
    }
    for stream_index in 0..6 {
        let page = store
            .read_stream(
                &stream(&format!("iso-{stream_index}")),
                0,
                Direction::Forward,
                100,
            )
            .await
            .unwrap();
        let types: Vec<&str> = page.events.iter().map(|e| &*e.event_type).collect();
        assert!(!types.contains(&"Bad"), "{types:?}");
        assert_eq!(
            types.iter().filter(|t| **t == "Twin").count(),
            2,
            "{types:?}"
        );
        let versions: Vec<u64> = page.events.iter().map(|e| e.version).collect();
        assert_eq!(versions, (0..page.events.len() as u64).collect::<Vec<_>>());
    }
    let all = read_all_pages(store.as_ref(), &no_filter(), 1000).await;
    assert_strictly_increasing(&positions(&all), "$all positions");
    assert_eq!(all.len(), 20 + 12);
}

/// A reader catches up on `$all` and then follows it live with `wait_for_position`, while
/// writers append concurrently: it sees every event exactly once, in position order.
pub async fn catch_up_then_live_misses_nothing(harness: &dyn EventStoreHarness) {
    let store = harness.open().await;
    let seed = seed();
    let mut rng = Rng::new(seed);
    // Some history before the reader starts.
    store
        .append(
            &stream("live-0"),
            ExpectedVersion::Any,
            events(&["before-0", "before-1"]),
        )
        .await
        .unwrap();
    let writers = 4;
    let appends_per_writer = 40;
    let plans: Vec<Vec<(u64, u64)>> = (0..writers)
        .map(|_| {
            (0..appends_per_writer)
                .map(|_| (1 + rng.below(3), rng.below(3)))
                .collect()
        })
        .collect();
    let total: usize = 2 + plans
        .iter()
        .flatten()
        .map(|(count, _)| *count as usize)
        .sum::<usize>();

    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut seen: Vec<RecordedEvent> = Vec::new();
            let mut from = 0u64;
            while seen.len() < total {
                assert!(
                    Instant::now() < deadline,
                    "reader saw {} of {total}",
                    seen.len()
                );
                let page = store
                    .read_all(from, Direction::Forward, 7, &ReadFilter::default())
                    .await
                    .unwrap();
                if let (Some(last), Some(first)) = (seen.last(), page.events.first()) {
                    assert!(first.position > last.position, "position went back");
                }
                seen.extend(page.events.iter().cloned());
                from = page.next_position;
                if page.events.is_empty() {
                    store
                        .wait_for_position(from.saturating_sub(1), Duration::from_secs(1))
                        .await
                        .unwrap();
                }
            }
            seen
        })
    };
    let mut tasks = Vec::new();
    for (writer, plan) in plans.into_iter().enumerate() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for (append, (count, pause)) in plan.into_iter().enumerate() {
                let proposed: Vec<ProposedEvent> = (0..count)
                    .map(|i| event(&format!("w{writer}-a{append}-e{i}"), "Live"))
                    .collect();
                let s = stream(&format!("live-{writer}-{}", append % 3));
                store
                    .append(&s, ExpectedVersion::Any, proposed.clone())
                    .await
                    .unwrap();
                written.extend(proposed.into_iter().map(|e| e.id.to_string()));
                if pause > 0 {
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            }
            written
        }));
    }
    let mut written = HashSet::new();
    for task in tasks {
        written.extend(task.await.unwrap());
    }
    let seen = reader.await.unwrap();
    assert_strictly_increasing(&positions(&seen), "live positions");
    let seen_ids = ids(&seen);
    let unique: HashSet<&String> = seen_ids.iter().collect();
    assert_eq!(
        unique.len(),
        seen_ids.len(),
        "seed {seed}: an event was seen twice"
    );
    written.insert("before-0".into());
    written.insert("before-1".into());
    assert_eq!(
        seen_ids.iter().cloned().collect::<HashSet<_>>(),
        written,
        "seed {seed}"
    );
    let all = read_all_pages(store.as_ref(), &no_filter(), 1000).await;
    assert_eq!(
        all, seen,
        "seed {seed}: the live view equals the stored feed"
    );
    let page: FeedPage = store
        .read_all(0, Direction::Forward, 1, &no_filter())
        .await
        .unwrap();
    assert_eq!(page.head_position, seen.last().unwrap().position);
}

/// Runs the whole suite against `$harness` (an expression building a fresh
/// [`EventStoreHarness`] for each test).
#[macro_export]
macro_rules! event_store_conformance_tests {
    ($harness:expr) => {
        $crate::event_store_conformance_tests!(@tests $harness;
            append_numbers_versions_from_zero,
            metadata_and_schema_version_round_trip,
            expected_version_no_stream,
            expected_version_stream_exists,
            expected_version_exact,
            expected_version_any,
            multi_event_appends_are_atomic,
            retries_are_idempotent,
            partial_retries_conflict,
            deleted_streams_are_gone_for_good,
            stream_reads_page_both_ways,
            all_feed_reads_both_ways_with_filters,
            category_reads,
            snapshots,
            aggregates_load_from_the_latest_snapshot,
            aggregates_stay_whole_while_snapshots_move,
            waits_end_when_a_position_is_committed,
            everything_survives_a_reopen,
            limits_are_enforced,
            closed_stores_refuse_calls,
            racing_appenders_get_one_winner_per_version,
            optimistic_writers_converge_without_gaps,
            concurrent_appends_are_isolated,
            catch_up_then_live_misses_nothing,
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $harness;
                $crate::conformance::$name(&harness).await;
            }
        )*
    };
}
