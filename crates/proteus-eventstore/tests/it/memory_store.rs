//! What only the in-memory store promises: handles, reopening, and waits without a runtime's
//! timer.

use std::time::{Duration, Instant};

use proteus_eventstore::{
    Direction, ErrorKind, EventStore, ExpectedVersion, MemoryEventStore, ProposedEvent, StreamName,
};

fn stream(name: &str) -> StreamName {
    StreamName::parse(name).unwrap()
}

fn event(id: &str) -> ProposedEvent {
    ProposedEvent::new(id, "Happened", &b"{}"[..])
}

#[tokio::test]
async fn clones_share_closing_and_reopen_gives_an_open_handle() {
    let store = MemoryEventStore::new();
    let clone = store.clone();
    store
        .append(&stream("a-1"), ExpectedVersion::NoStream, vec![event("e0")])
        .await
        .unwrap();
    clone.close().await.unwrap();
    let error = store
        .read_stream(&stream("a-1"), 0, Direction::Forward, 10)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    let reopened = store.reopen();
    let page = reopened
        .read_stream(&stream("a-1"), 0, Direction::Forward, 10)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
    // Writes through the new handle are seen by every later handle.
    reopened
        .append(&stream("a-1"), ExpectedVersion::Exact(0), vec![event("e1")])
        .await
        .unwrap();
    let info = store.reopen().stream_info(&stream("a-1")).await.unwrap();
    assert_eq!(info.last_version, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_ends_waits_in_progress() {
    let store = MemoryEventStore::new();
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move { store.wait_for_position(0, Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    store.close().await.unwrap();
    let error = waiting.await.unwrap().unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_waits_end_at_their_own_deadlines() {
    let store = MemoryEventStore::new();
    let mut waits = Vec::new();
    for ms in [120u64, 10, 60, 30, 90, 0] {
        let store = store.clone();
        waits.push(tokio::spawn(async move {
            let started = Instant::now();
            let found = store
                .wait_for_position(0, Duration::from_millis(ms))
                .await
                .unwrap();
            (ms, found, started.elapsed())
        }));
    }
    for wait in waits {
        let (ms, found, elapsed) = wait.await.unwrap();
        assert!(!found);
        assert!(elapsed >= Duration::from_millis(ms), "{ms} ms: {elapsed:?}");
        assert!(
            elapsed < Duration::from_millis(ms + 2_000),
            "{ms} ms: {elapsed:?}"
        );
    }
    // A wait given up before its deadline (its future dropped) leaves nothing behind that
    // disturbs later waits.
    let given_up = tokio::time::timeout(
        Duration::from_millis(20),
        store.wait_for_position(0, Duration::from_secs(30)),
    )
    .await;
    assert!(given_up.is_err());
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move { store.wait_for_position(0, Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    store
        .append(&stream("w-1"), ExpectedVersion::Any, vec![event("e0")])
        .await
        .unwrap();
    assert!(waiting.await.unwrap().unwrap());
}
