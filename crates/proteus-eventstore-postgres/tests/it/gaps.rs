//! Positions handed out but not yet committed: readers never see past them, so no reader
//! observes a gap that is later filled.
//!
//! First, deterministically: a transaction behind the store's back takes a position the way an
//! append does and stays open while a later append commits; the feed must stop just before it
//! (not earlier) until that transaction ends. Then concurrent appends to different streams, from two stores on one
//! schema (two processes, as far as PostgreSQL can tell), while readers follow `$all` live: no
//! append fails there, so each reader must see positions 1, 2, 3, ... each exactly once, in
//! order, and end with the stored feed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proteus_eventstore::{
    Direction, EventStore, ExpectedVersion, ProposedEvent, ReadFilter, RecordedEvent, StreamName,
};

use crate::support::{TestSchema, admin};

const WRITERS: usize = 8;
const APPENDS_PER_WRITER: usize = 60;
const READERS: usize = 3;

async fn follow(store: Arc<dyn EventStore>, total: usize, page_size: usize) -> Vec<RecordedEvent> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen: Vec<RecordedEvent> = Vec::new();
    let mut from = 0;
    while seen.len() < total {
        assert!(
            Instant::now() < deadline,
            "reader saw {} of {total}",
            seen.len()
        );
        let page = store
            .read_all(from, Direction::Forward, page_size, &ReadFilter::default())
            .await
            .unwrap();
        for event in &page.events {
            let wanted = seen.last().map_or(1, |e| e.position + 1);
            assert_eq!(
                event.position,
                wanted,
                "the reader saw position {} after {:?}: a gap (later filled)",
                event.position,
                seen.last().map(|e| e.position)
            );
            seen.push(event.clone());
        }
        assert!(page.head_position >= seen.last().map_or(0, |e| e.position));
        from = page.next_position;
        if page.is_end {
            store
                .wait_for_position(from.saturating_sub(1), Duration::from_secs(2))
                .await
                .unwrap();
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_leave_no_gap_a_reader_could_see() {
    let schema = TestSchema::new("gaps");
    let first: Arc<dyn EventStore> = Arc::new(schema.open().await);
    let second: Arc<dyn EventStore> = Arc::new(schema.open().await);
    let sizes: Vec<Vec<usize>> = (0..WRITERS)
        .map(|w| {
            (0..APPENDS_PER_WRITER)
                .map(|a| 1 + (w * 7 + a * 3) % 4)
                .collect()
        })
        .collect();
    let total: usize = sizes.iter().flatten().sum();

    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let store = if r % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            tokio::spawn(follow(store, total, 1 + r * 5))
        })
        .collect();
    let started = Instant::now();
    let writers: Vec<_> = sizes
        .into_iter()
        .enumerate()
        .map(|(w, sizes)| {
            let store = if w % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            tokio::spawn(async move {
                let s = StreamName::parse(&format!("gap-{w}")).unwrap();
                let mut ids = Vec::new();
                for (a, size) in sizes.into_iter().enumerate() {
                    let events: Vec<ProposedEvent> = (0..size)
                        .map(|e| ProposedEvent::new(format!("w{w}-a{a}-e{e}"), "G", &b"{}"[..]))
                        .collect();
                    let expected = if a == 0 {
                        ExpectedVersion::NoStream
                    } else {
                        ExpectedVersion::StreamExists
                    };
                    store.append(&s, expected, events.clone()).await.unwrap();
                    ids.extend(events.into_iter().map(|e| String::from(e.id)));
                }
                ids
            })
        })
        .collect();
    let mut written = HashSet::new();
    for writer in writers {
        written.extend(writer.await.unwrap());
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{} appends ({total} events) from {WRITERS} writers in {elapsed:?}",
        WRITERS * APPENDS_PER_WRITER
    );
    let mut stored = Vec::new();
    let mut from = 0;
    loop {
        let page = first
            .read_all(from, Direction::Forward, 1000, &ReadFilter::default())
            .await
            .unwrap();
        stored.extend(page.events);
        from = page.next_position;
        if page.is_end {
            break;
        }
    }
    assert_eq!(stored.len(), total);
    let stored_ids: HashSet<String> = stored.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(stored_ids, written);
    for reader in readers {
        let seen = reader.await.unwrap();
        assert_eq!(seen, stored, "a live reader saw exactly the stored feed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_stops_before_a_position_whose_transaction_is_open() {
    let schema = TestSchema::new("held");
    let store = schema.open().await;
    let s = |name: &str| StreamName::parse(name).unwrap();
    let one = |id: &str| vec![ProposedEvent::new(id, "H", &b"{}"[..])];
    let before = store
        .append(&s("held-a"), ExpectedVersion::Any, one("a"))
        .await
        .unwrap();
    // What an append does, without committing: take the writers key, then a position.
    let mut admin = admin().await;
    let open = admin.transaction().await.unwrap();
    let quoted = format!("\"{}\"", schema.name);
    open.execute(
        &format!("SELECT pg_advisory_xact_lock_shared(o_class, o_key) FROM {quoted}.writers_key()"),
        &[],
    )
    .await
    .unwrap();
    let held: i64 = open
        .query_one(&format!("SELECT {quoted}.take_positions(1)"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(held as u64, before.last_position + 1);

    let after = store
        .append(&s("held-b"), ExpectedVersion::Any, one("b"))
        .await
        .unwrap();
    assert!(after.first_position > held as u64);

    let all = ReadFilter::default();
    let page = store
        .read_all(0, Direction::Forward, 100, &all)
        .await
        .unwrap();
    let ids: Vec<&str> = page.events.iter().map(|e| &*e.id).collect();
    assert_eq!(
        ids,
        ["a"],
        "the committed append after the held position is not shown yet"
    );
    // Exactly up to the held position: a, committed before it, is not held back, although
    // no read ran between a and the held position.
    assert_eq!(page.head_position, held as u64 - 1);
    assert!(page.is_end);
    assert!(
        !store
            .wait_for_position(before.last_position, Duration::from_millis(300))
            .await
            .unwrap(),
        "no position past the held one is announced"
    );

    // The holder ends without writing (as a rolled-back append would): a gap, then b.
    let waiter = {
        let store = store.clone();
        let after_a = before.last_position;
        tokio::spawn(async move {
            store
                .wait_for_position(after_a, Duration::from_secs(10))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    open.rollback().await.unwrap();
    assert!(waiter.await.unwrap().unwrap(), "the waiter is woken");
    let page = store
        .read_all(page.next_position, Direction::Forward, 100, &all)
        .await
        .unwrap();
    let ids: Vec<&str> = page.events.iter().map(|e| &*e.id).collect();
    assert_eq!(ids, ["b"]);
    assert_eq!(page.events[0].position, after.first_position);
    assert_eq!(page.head_position, after.last_position);
}
