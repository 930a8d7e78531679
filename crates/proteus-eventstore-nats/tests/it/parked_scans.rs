//! Forward feed reads, and forward pages of one stream, park their consumer where a page stops,
//! and the next page from there goes on with it: one consumer for a whole catch-up instead of
//! one created and deleted per page, every event returned once, in order, whether a page stops
//! inside an append or at its end, and whether events arrive between pages. Backward feed
//! pages go on from the window of sequences the previous page read, and read ahead, so a reader
//! paging back creates a consumer every few pages, not on every one.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use proteus_eventstore::conformance::{event, stream};
use proteus_eventstore::{
    Direction, EventStore, EventStoreError, ExpectedVersion, FeedPage, ProposedEvent, ReadFilter,
};

use super::{Harness, ids};

/// The names of the consumers of the store's events stream.
async fn consumers(harness: &Harness) -> BTreeSet<String> {
    use futures_util::TryStreamExt;
    let client = async_nats::connect(&harness.cleanup_url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(harness.config.events_stream()).await.unwrap();
    stream.consumer_names().try_collect().await.unwrap()
}

/// Appends `appends` appends of 7 events, append `a` to the stream and with the event type
/// `to(a)` names; returns their ids in the order they were written.
async fn write_to<F>(store: &dyn EventStore, tag: &str, appends: usize, to: F) -> Vec<String>
where
    F: Fn(usize) -> (String, String),
{
    let mut written = Vec::new();
    for a in 0..appends {
        let (s, event_type) = to(a);
        let events: Vec<_> = (0..7)
            .map(|i| event(&format!("{tag}-{a}-{i}"), &event_type))
            .collect();
        written.extend(events.iter().map(|e| e.id.to_string()));
        store
            .append(&stream(&s), ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    written
}

/// Appends `appends` appends of 7 events, in turn to three streams (append `a`'s events of
/// type `T{a % 3}`); returns their ids in the order they were written.
async fn write(store: &dyn EventStore, tag: &str, appends: usize) -> Vec<String> {
    write_to(store, tag, appends, |a| {
        (format!("feed-{}", a % 3), format!("T{}", a % 3))
    })
    .await
}

/// Reads pages with `read` from position `from` until one is the end; returns the events'
/// ids and the position after the last page.
async fn ids_to_the_end<F, Fut>(mut from: u64, mut read: F) -> (Vec<String>, u64)
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<FeedPage, EventStoreError>>,
{
    let mut ids_read = Vec::new();
    loop {
        let page = read(from).await.unwrap();
        ids_read.extend(ids(&page.events));
        from = page.next_position;
        if page.is_end {
            return (ids_read, from);
        }
    }
}

#[tokio::test]
async fn pages_read_one_after_another_go_on_with_one_consumer() {
    let harness = Harness::new();
    let store = harness.store().await;
    let mut written = write(&store, "a", 6).await;
    let all = ReadFilter::default();
    let (mut read, mut from, mut pages) = (Vec::new(), 0, 0);
    let mut consumer = None;
    loop {
        // Pages of 5 stop inside appends of 7, and at their ends every seventh page.
        let page = store
            .read_all(from, Direction::Forward, 5, &all)
            .await
            .unwrap();
        read.extend(ids(&page.events));
        from = page.next_position;
        pages += 1;
        let now = consumers(&harness).await;
        assert_eq!(now.len(), 1, "page {pages}: one consumer, parked: {now:?}");
        match &consumer {
            None => consumer = Some(now),
            Some(first) => assert_eq!(&now, first, "page {pages} read with another consumer"),
        }
        if pages == 3 {
            // Events arriving between pages are read by the parked consumer too.
            written.extend(write(&store, "b", 2).await);
        }
        if page.is_end {
            break;
        }
    }
    assert_eq!(read, written);
    assert!(pages >= 11, "{pages} pages");

    // At the head: the next events are read on from there, by the same consumer.
    let more = write(&store, "c", 1).await;
    let page = store
        .read_all(from, Direction::Forward, 100, &all)
        .await
        .unwrap();
    assert_eq!(ids(&page.events), more);
    assert!(page.is_end);
    assert_eq!(Some(consumers(&harness).await), consumer);
    store.close().await.unwrap();
}

/// The consumer of a parked scan is deleted behind the store's back (by an operator, or the
/// server forgetting it): the next page is read with a new consumer, nothing missed or
/// repeated, and at once (the deleted consumer's silence is not waited out).
#[tokio::test]
async fn a_parked_scan_whose_consumer_is_gone_reads_on_with_a_new_one() {
    let mut harness = Harness::new();
    harness.config.request_timeout_ms = 30_000;
    let store = harness.store().await;
    let written = write(&store, "a", 4).await;
    let all = ReadFilter::default();
    let first = store
        .read_all(0, Direction::Forward, 10, &all)
        .await
        .unwrap();
    let parked = consumers(&harness).await;
    assert_eq!(parked.len(), 1);
    {
        let client = async_nats::connect(&harness.cleanup_url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let events = js.get_stream(harness.config.events_stream()).await.unwrap();
        for name in &parked {
            events.delete_consumer(name).await.unwrap();
        }
    }
    let started = Instant::now();
    let (rest, _) = ids_to_the_end(first.next_position, |from| {
        store.read_all(from, Direction::Forward, 10, &all)
    })
    .await;
    assert_eq!([ids(&first.events), rest].concat(), written);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}: a fetch waited for the deleted consumer (request timeout 30 s)",
        started.elapsed()
    );
    let now = consumers(&harness).await;
    assert!(
        now.is_disjoint(&parked),
        "{now:?} after deleting {parked:?}"
    );
    store.close().await.unwrap();
}

/// A category read and a filtered `$all` read page through the same way, each with its own
/// parked consumer.
#[tokio::test]
async fn category_and_filtered_reads_page_through_their_own_parked_consumers() {
    let harness = Harness::new();
    let store = harness.store().await;
    let written = write(&store, "a", 6).await;
    let category = proteus_eventstore::Category::parse("feed").unwrap();
    let every = ReadFilter::default();
    let (read, _) = ids_to_the_end(0, |from| store.read_category(&category, from, 4, &every)).await;
    assert_eq!(read, written);

    // Only the second append of every three: its events, in pages of 3.
    let filter = ReadFilter {
        event_types: vec!["T1".into()],
        stream_prefix: None,
    };
    let wanted: Vec<String> = written
        .chunks(7)
        .enumerate()
        .filter(|(a, _)| a % 3 == 1)
        .flat_map(|(_, ids)| ids.to_vec())
        .collect();
    let (read, at_head) = ids_to_the_end(0, |from| {
        store.read_all(from, Direction::Forward, 3, &filter)
    })
    .await;
    assert_eq!(read, wanted);
    // Both stopped at the head, one reading the category's subjects, one every stream's.
    assert_eq!(consumers(&harness).await.len(), 2, "one parked per reader");

    // Two readers stopping at the same place both park there.
    let (a, b) = tokio::join!(
        store.read_all(0, Direction::Forward, 1_000, &every),
        store.read_all(0, Direction::Forward, 1_000, &every),
    );
    assert_eq!(a.unwrap().next_position, at_head);
    assert_eq!(b.unwrap().next_position, at_head);
    assert_eq!(
        consumers(&harness).await.len(),
        4,
        "two more parked at the head"
    );
    store.close().await.unwrap();
}

/// Appends `appends` appends of 7 events to `s`; returns their ids in order.
async fn write_stream(store: &dyn EventStore, s: &str, tag: &str, appends: usize) -> Vec<String> {
    write_to(store, tag, appends, |_| (s.to_owned(), "T".to_owned())).await
}

/// A stream read forward page after page, as a client pages through a long stream: one
/// consumer for the whole read (none searched for and created per page), every event once and
/// at its version, events appended between pages included; at the stream's end nothing is
/// parked, and neither backward pages nor a whole aggregate park anything.
#[tokio::test]
async fn pages_of_one_stream_go_on_with_one_consumer_and_none_is_left_at_its_end() {
    let harness = Harness::new();
    let store = harness.store().await;
    // Another stream interleaved, so the stream's messages are not the events stream's.
    let mut written = Vec::new();
    for round in 0..3 {
        written.extend(write_stream(&store, "long-1", &format!("a{round}"), 3).await);
        write_stream(&store, "other-1", &format!("o{round}"), 2).await;
    }
    let long = stream("long-1");
    let (mut read, mut from, mut pages, mut pages_parked) = (Vec::new(), 0, 0, 0);
    let mut consumer = None;
    loop {
        // Pages of 5 stop inside appends of 7, and at their ends every seventh page.
        let page = store
            .read_stream(&long, from, Direction::Forward, 5)
            .await
            .unwrap();
        for (offset, event) in page.events.iter().enumerate() {
            assert_eq!(event.version, from + offset as u64, "page {pages}");
        }
        read.extend(ids(&page.events));
        from = page.next_version;
        pages += 1;
        if pages == 3 {
            // Events appended between pages are read by the parked consumer too.
            written.extend(write_stream(&store, "long-1", "b", 2).await);
        }
        if page.is_end {
            break;
        }
        // Parked by every page before the last append, which the stream's end holds: the
        // pages within it need no consumer, and the parked one is dropped.
        let now = consumers(&harness).await;
        let within_last_append = from >= (written.len() as u64 / 7 - 1) * 7;
        match (&consumer, now.len(), within_last_append) {
            (_, 0, true) => {}
            (None, 1, false) => consumer = Some(now),
            (Some(first), 1, false) => {
                assert_eq!(&now, first, "page {pages} read with another consumer");
                pages_parked += 1;
            }
            _ => panic!("page {pages} (next version {from}): consumers {now:?}"),
        }
    }
    assert_eq!(read, written);
    assert!(
        pages >= 15 && pages_parked >= 12,
        "{pages} pages, {pages_parked} parked"
    );
    // The last page read to the stream's end: its consumer was deleted, not parked.
    wait_for_no_consumers(&harness).await;

    // Backward pages and an aggregate hold no consumer after them.
    let backward = store
        .read_stream(&long, u64::MAX, Direction::Backward, 10)
        .await
        .unwrap();
    assert_eq!(backward.events.len(), 10);
    wait_for_no_consumers(&harness).await;
    let aggregate = store.read_aggregate(&long, 1_000).await.unwrap();
    assert_eq!(ids(&aggregate.events), written);
    wait_for_no_consumers(&harness).await;
    store.close().await.unwrap();
}

/// Waits (at most 10 s) until the store's read consumers are deleted: a scan not parked deletes
/// its consumer in the background.
async fn wait_for_no_consumers(harness: &Harness) {
    let started = Instant::now();
    loop {
        let now = consumers(harness).await;
        if now.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "consumers left: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Counts the consumers the server creates on the store's events stream from now on, from its
/// JetStream advisories.
struct ConsumersCreated {
    advisories: async_nats::Subscriber,
    _client: async_nats::Client,
}

impl ConsumersCreated {
    async fn watch(harness: &Harness) -> Self {
        let client = async_nats::connect(&harness.cleanup_url).await.unwrap();
        let subject = format!(
            "$JS.EVENT.ADVISORY.CONSUMER.CREATED.{}.>",
            harness.config.events_stream()
        );
        let advisories = client.subscribe(subject).await.unwrap();
        client.flush().await.unwrap();
        ConsumersCreated {
            advisories,
            _client: client,
        }
    }

    /// How many were created since the last count (advisories still on their way are waited
    /// for until none comes for half a second).
    async fn count(&mut self) -> usize {
        use futures_util::StreamExt;
        let mut created = 0;
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(500), self.advisories.next()).await
        {
            created += 1;
        }
        created
    }
}

/// Reads backward from the end in pages of `page_size` until one is the end; returns the
/// events' ids and the number of pages.
async fn ids_backward(
    store: &dyn EventStore,
    page_size: usize,
    filter: &ReadFilter,
) -> (Vec<String>, usize) {
    let (mut read, mut from, mut pages) = (Vec::new(), u64::MAX, 0);
    loop {
        let page = store
            .read_all(from, Direction::Backward, page_size, filter)
            .await
            .unwrap();
        read.extend(ids(&page.events));
        pages += 1;
        if page.is_end {
            return (read, pages);
        }
        assert!(
            page.next_position < from,
            "page {pages} went no further back"
        );
        from = page.next_position;
    }
}

/// A reader paging back through `$all` (pages of 5 in appends of 7) gets every event once,
/// newest first, with a consumer created for a window every few pages, not for each page; a
/// filtered reader the same; nothing is left on the server afterwards.
#[tokio::test]
async fn backward_pages_go_on_from_the_window_already_read() {
    let harness = Harness::new();
    let store = harness.store().await;
    let written = write(&store, "a", 60).await;
    let all = ReadFilter::default();
    let mut created = ConsumersCreated::watch(&harness).await;

    let (read, pages) = ids_backward(&store, 5, &all).await;
    let newest_first: Vec<String> = written.iter().rev().cloned().collect();
    assert_eq!(read, newest_first);
    assert_eq!(pages, 84);
    let windows = created.count().await;
    assert!(
        (1..=pages / 6).contains(&windows),
        "{windows} consumers created for {pages} backward pages"
    );

    // One stream's category and one event type: only the first of every three appends.
    let filter = ReadFilter {
        event_types: vec!["T0".into()],
        stream_prefix: Some("feed-".into()),
    };
    let wanted: Vec<String> = written
        .chunks(7)
        .enumerate()
        .filter(|(a, _)| a % 3 == 0)
        .flat_map(|(_, ids)| ids.to_vec())
        .rev()
        .collect();
    created.count().await;
    let (read, pages) = ids_backward(&store, 3, &filter).await;
    assert_eq!(read, wanted);
    let windows = created.count().await;
    assert!(
        (1..=pages / 4).contains(&windows),
        "{windows} consumers created for {pages} filtered backward pages"
    );

    // Appends between pages are above where the reader stands: it reads on below them.
    let first = store
        .read_all(u64::MAX, Direction::Backward, 5, &all)
        .await
        .unwrap();
    write(&store, "b", 2).await;
    let (rest, _) = ids_to_the_end_backward(&store, first.next_position, 5, &all).await;
    assert_eq!([ids(&first.events), rest].concat(), newest_first);
    wait_for_no_consumers(&harness).await;
    store.close().await.unwrap();
}

/// Backward pages from `from` to the end, as [`ids_backward`] does from the newest event.
async fn ids_to_the_end_backward(
    store: &dyn EventStore,
    from: u64,
    page_size: usize,
    filter: &ReadFilter,
) -> (Vec<String>, u64) {
    ids_to_the_end(from, |from| {
        store.read_all(from, Direction::Backward, page_size, filter)
    })
    .await
}

/// Appends of two events of 300 KB each: a backward page keeps at most a mebibyte of its window
/// for the next one, so the older messages it read are read again, and every event still comes
/// once, newest first, whatever the page size.
#[tokio::test]
async fn backward_pages_of_large_events_park_a_bounded_rest() {
    let harness = Harness::new();
    let store = harness.store().await;
    let pad = "x".repeat(300_000);
    let mut written = Vec::new();
    for a in 0..6 {
        let events: Vec<ProposedEvent> = (0..2)
            .map(|i| {
                let id = format!("large-{a}-{i}");
                let data = format!("{{\"pad\":\"{pad}\"}}");
                ProposedEvent::new(id, "Large", bytes::Bytes::from(data))
            })
            .collect();
        written.extend(events.iter().map(|e| e.id.to_string()));
        store
            .append(
                &stream(&format!("large-{}", a % 2)),
                ExpectedVersion::Any,
                events,
            )
            .await
            .unwrap();
    }
    let newest_first: Vec<String> = written.iter().rev().cloned().collect();
    for page_size in [1, 3, 4] {
        let (read, _) = ids_backward(&store, page_size, &ReadFilter::default()).await;
        assert_eq!(read, newest_first, "pages of {page_size}");
    }
    store.close().await.unwrap();
}

/// A reader paging back through one long stream (pages of 5 in appends of 7, another stream
/// interleaved) gets every event once at its version, newest first, with a range read (a
/// consumer) every few pages, not for each page.
#[tokio::test]
async fn backward_pages_of_one_stream_go_on_from_what_the_page_before_read() {
    let harness = Harness::new();
    let store = harness.store().await;
    let mut written = Vec::new();
    for round in 0..10 {
        written.extend(write_stream(&store, "back-1", &format!("a{round}"), 3).await);
        write_stream(&store, "other-1", &format!("o{round}"), 1).await;
    }
    let back = stream("back-1");
    let mut created = ConsumersCreated::watch(&harness).await;
    let (mut read, mut from, mut pages) = (Vec::new(), u64::MAX, 0);
    loop {
        let page = store
            .read_stream(&back, from, Direction::Backward, 5)
            .await
            .unwrap();
        let top = from.min(written.len() as u64 - 1);
        for (offset, event) in page.events.iter().enumerate() {
            assert_eq!(event.version, top - offset as u64, "page {pages}");
        }
        read.extend(ids(&page.events));
        pages += 1;
        if pages == 3 {
            // Appends above where the reader stands do not disturb it.
            write_stream(&store, "back-1", "later", 1).await;
        }
        if page.is_end {
            break;
        }
        from = page.next_version;
    }
    let newest_first: Vec<String> = written.iter().rev().cloned().collect();
    assert_eq!(read, newest_first);
    assert_eq!(pages, 42);
    let windows = created.count().await;
    assert!(
        (1..=pages / 6).contains(&windows),
        "{windows} consumers created for {pages} backward pages of one stream"
    );
    wait_for_no_consumers(&harness).await;
    store.close().await.unwrap();
}
