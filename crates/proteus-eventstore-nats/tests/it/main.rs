//! Integration tests of the NATS JetStream event store against a real server
//! (`PROTEUS_TEST_NATS_URL`, default `nats://127.0.0.1:4222`): the whole `EventStore`
//! conformance suite (twice: as configured, and with an id cache so small that streams' id
//! indexes are evicted all the time), forward feed reads going on page after page with one
//! parked consumer, and so do pages of one long stream (`parked_scans`), a retry of an append
//! thousands of messages back, two instances racing on one stream, an append larger than the
//! server's `max_payload`, appends across a connection outage and across a crash of a server of
//! the test's own (`server_crash`). Each harness uses its own stream and subject prefixes and
//! deletes its streams when it is dropped, even when the test fails. The tests fail (never
//! skip) when NATS is not running, saying how to start it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use proteus_eventstore::conformance::{EventStoreHarness, event, stream};
use proteus_eventstore::{
    Direction, ErrorKind, EventStore, EventStoreError, ExpectedVersion, ProposedEvent,
    READ_COUNT_MAX,
};
use proteus_eventstore_nats::{NatsEventStore, NatsEventStoreConfig, START_HINT};
use proteus_nats::test_support::{
    Proxy, delete_streams, host_port, nats_url, unique_tag, until_recovered,
};

/// A configuration whose stream and subject prefixes no other test (or run) uses.
fn unique_config(url: &str) -> NatsEventStoreConfig {
    let tag = unique_tag();
    NatsEventStoreConfig {
        stream_prefix: format!("PESTEST_{tag}"),
        subject_prefix: format!("pestest.{tag}"),
        wait_poll_interval_ms: 100,
        ..NatsEventStoreConfig::new(url)
    }
}

async fn open(config: NatsEventStoreConfig) -> NatsEventStore {
    match NatsEventStore::open(config.clone()).await {
        Ok(store) => store,
        Err(error) => panic!(
            "NATS with JetStream is not reachable at {} ({error}). Start it: {START_HINT}; or point PROTEUS_TEST_NATS_URL at a running server.",
            config.url
        ),
    }
}

/// A fresh pair of streams per test; `open` connects a new store to them each time (so the
/// suite's reopen sees what the previous store wrote); dropping the harness deletes them.
struct Harness {
    config: NatsEventStoreConfig,
    /// Where the streams are deleted from (the server itself, even when `config` goes
    /// through a proxy).
    cleanup_url: String,
}

impl Harness {
    fn new() -> Self {
        let url = nats_url();
        Harness {
            config: unique_config(&url),
            cleanup_url: url,
        }
    }

    /// With room for 3 cached event ids: indexes are evicted all the time, so idempotency
    /// and expected versions must hold when a stream's ids are read again from its history.
    fn with_tiny_id_cache() -> Self {
        let mut harness = Harness::new();
        harness.config.id_cache_events_max = 3;
        harness
    }

    /// A harness whose store connects through `proxy` (to cut or silence the connection),
    /// with requests bounded by 1 s and reconnection attempts 200 ms apart at most.
    fn behind(proxy: &Proxy) -> Self {
        let mut harness = Harness::new();
        harness.config.url = format!("nats://127.0.0.1:{}", proxy.port);
        harness.config.request_timeout_ms = 1_000;
        harness.config.reconnect_delay_max_ms = 200;
        harness
    }

    async fn store(&self) -> NatsEventStore {
        open(self.config.clone()).await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        delete_streams(self.cleanup_url.clone(), self.config.stream_prefix.clone());
    }
}

#[async_trait]
impl EventStoreHarness for Harness {
    async fn open(&self) -> Arc<dyn EventStore> {
        Arc::new(self.store().await)
    }
}

mod parked_scans;
mod server_crash;

mod conformance {
    use super::Harness;
    proteus_eventstore::event_store_conformance_tests!(Harness::new());
}

mod conformance_with_a_tiny_id_cache {
    use super::Harness;
    proteus_eventstore::event_store_conformance_tests!(Harness::with_tiny_id_cache());
}

fn unavailable(error: &EventStoreError) -> bool {
    error.kind() == ErrorKind::Unavailable
}

fn ids(events: &[proteus_eventstore::RecordedEvent]) -> Vec<String> {
    events.iter().map(|e| e.id.to_string()).collect()
}

/// An instance appending to a stream it has never seen, with `Any` or `NoStream`, publishes
/// without reading the stream first (the server checks the subject is empty). Every case where
/// the stream is not empty must still be decided on what it holds: another instance's events
/// (the version continues, a retry is a duplicate, `NoStream` is refused) or its tombstone.
#[tokio::test]
async fn first_appends_without_a_read_still_see_what_other_instances_wrote() {
    let harness = Harness::new();
    let (a, b) = (harness.store().await, harness.store().await);
    let s = stream("seen-by-a");
    let first = vec![event("a-1", "Happened"), event("a-2", "Happened")];
    a.append(&s, ExpectedVersion::NoStream, first.clone())
        .await
        .unwrap();
    // B knows nothing of `s`: each of these starts with a publish the server refuses.
    match b
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![event("b-0", "Happened")],
        )
        .await
    {
        Err(EventStoreError::WrongExpectedVersion { .. }) => {}
        other => panic!("NoStream on a stream with two events: {other:?}"),
    }
    let retried = harness
        .store()
        .await
        .append(&s, ExpectedVersion::Any, first)
        .await
        .unwrap();
    assert!(
        retried.duplicate,
        "a retry of A's append from a fresh instance"
    );
    assert_eq!((retried.first_version, retried.last_version), (0, 1));
    let appended = harness
        .store()
        .await
        .append(&s, ExpectedVersion::Any, vec![event("c-1", "Happened")])
        .await
        .unwrap();
    assert_eq!(appended.first_version, 2, "Any continues the stream");
    let gone = stream("deleted-by-a");
    a.delete_stream(&gone, ExpectedVersion::Any).await.unwrap();
    match b
        .append(&gone, ExpectedVersion::Any, vec![event("b-1", "Happened")])
        .await
    {
        Err(EventStoreError::StreamDeleted { .. }) => {}
        other => panic!("an append to a deleted stream: {other:?}"),
    }
    // And a stream nobody wrote takes the first append at version 0.
    let fresh = b
        .append(
            &stream("new"),
            ExpectedVersion::NoStream,
            vec![event("n-1", "Happened")],
        )
        .await
        .unwrap();
    assert_eq!((fresh.first_version, fresh.duplicate), (0, false));
}

/// A retry of an append made long ago in the store's sequence (thousands of other streams'
/// messages since) is still recognised: the index keeps hashes only, so the store looks for the
/// stored events through windows of the stream's past, newest first, as far back as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_an_append_far_back_in_the_store_is_still_a_duplicate() {
    let harness = Harness::new();
    let store = Arc::new(harness.store().await);
    let s = stream("old-retry");
    let first = vec![event("old-1", "Happened"), event("old-2", "Happened")];
    let original = store
        .append(&s, ExpectedVersion::NoStream, first.clone())
        .await
        .unwrap();
    // 6,000 messages of other streams: more than the first two windows before `s`'s end.
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..750 {
                    store
                        .append(
                            &stream(&format!("other-{writer}")),
                            ExpectedVersion::Any,
                            vec![event(&format!("w{writer}-{i}"), "Happened")],
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    store
        .append(
            &s,
            ExpectedVersion::Exact(1),
            vec![event("new-1", "Happened")],
        )
        .await
        .unwrap();
    // From this instance (ids cached) and from a fresh one (ids read from the history).
    for retrier in [store.clone(), Arc::new(harness.store().await)] {
        let retried = retrier
            .append(&s, ExpectedVersion::Exact(1), first.clone())
            .await
            .unwrap();
        assert_eq!(
            (
                retried.first_position,
                retried.last_position,
                retried.duplicate
            ),
            (original.first_position, original.last_position, true)
        );
        assert_eq!((retried.first_version, retried.last_version), (0, 1));
    }
}

/// Two store instances (two connections, as two Proteus processes would have) race appends
/// with the same expected version, round after round: exactly one wins each round, the
/// losers are told the winner's version, and the stream has every winner's events at
/// consecutive versions. Then both append with `Any` at once: nothing lost, doubled or gapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_racing_on_one_stream_get_one_winner_per_version() {
    let harness = Harness::new();
    let instances = [harness.store().await, harness.store().await];
    let s = stream("race-1");
    let mut last: Option<u64> = None;
    let mut winners: Vec<String> = Vec::new();
    for round in 0..30 {
        let expected = last.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        let mut tasks = Vec::new();
        for (instance, store) in instances.iter().enumerate() {
            for contender in 0..3 {
                let (store, s) = (store.clone(), s.clone());
                let proposed: Vec<ProposedEvent> = (0..1 + (round + contender) % 3)
                    .map(|i| event(&format!("r{round}-i{instance}-c{contender}-e{i}"), "Raced"))
                    .collect();
                tasks.push(tokio::spawn(async move {
                    let result = store.append(&s, expected, proposed.clone()).await;
                    (proposed, result)
                }));
            }
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        let won: Vec<_> = results
            .iter()
            .filter_map(|(proposed, result)| result.as_ref().ok().map(|o| (proposed, *o)))
            .collect();
        assert_eq!(won.len(), 1, "round {round}: one winner: {results:?}");
        let (proposed, outcome) = won[0];
        assert_eq!(outcome.first_version, last.map_or(0, |v| v + 1));
        assert_eq!(
            outcome.last_version - outcome.first_version + 1,
            proposed.len() as u64
        );
        assert!(!outcome.duplicate);
        for (_, result) in &results {
            if let Err(error) = result {
                match error {
                    EventStoreError::WrongExpectedVersion { actual, .. } => {
                        assert_eq!(*actual, Some(outcome.last_version), "losers see the winner")
                    }
                    other => panic!("round {round}: unexpected error {other}"),
                }
            }
        }
        winners.extend(proposed.iter().map(|e| e.id.to_string()));
        last = Some(outcome.last_version);
    }

    // Both instances append with Any at the same time.
    let mut tasks = Vec::new();
    for (instance, store) in instances.iter().enumerate() {
        let (store, s) = (store.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for append in 0..15 {
                let proposed = vec![
                    event(&format!("any-i{instance}-a{append}-0"), "Any"),
                    event(&format!("any-i{instance}-a{append}-1"), "Any"),
                ];
                let outcome = store
                    .append(&s, ExpectedVersion::Any, proposed.clone())
                    .await
                    .unwrap();
                assert!(!outcome.duplicate);
                written.push((outcome.first_version, proposed));
            }
            written
        }));
    }
    let mut any_written = Vec::new();
    for task in tasks {
        any_written.extend(task.await.unwrap());
    }
    any_written.sort_by_key(|(version, _)| *version);
    winners.extend(
        any_written
            .into_iter()
            .flat_map(|(_, proposed)| proposed.into_iter().map(|e| String::from(e.id))),
    );

    let reader = harness.store().await;
    let page = reader
        .read_stream(&s, 0, Direction::Forward, READ_COUNT_MAX)
        .await
        .unwrap();
    assert_eq!(
        ids(&page.events),
        winners,
        "every winner once, in version order"
    );
    let versions: Vec<u64> = page.events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (0..winners.len() as u64).collect::<Vec<_>>());
    assert!(
        page.events
            .windows(2)
            .all(|w| w[0].position < w[1].position)
    );
}

/// The connection is cut (a TCP proxy in front of the shared server stops) while an append
/// is made: it fails quickly with a retriable error naming the server (or, had it been
/// stored, succeeds); retried after the proxy is back, it succeeds, and the stream holds the
/// event once, never twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_during_an_outage_fail_retriably_and_succeed_once_after_reconnecting() {
    let proxy = Proxy::start(host_port(&nats_url())).await;
    let harness = Harness::behind(&proxy);
    let store = harness.store().await;
    let s = stream("outage-1");
    store
        .append(
            &s,
            ExpectedVersion::NoStream,
            vec![event("before", "Happened")],
        )
        .await
        .unwrap();

    proxy.stop();
    let started = Instant::now();
    match store
        .append(
            &s,
            ExpectedVersion::Exact(0),
            vec![event("during", "Happened")],
        )
        .await
    {
        Err(error) => {
            assert_eq!(error.kind(), ErrorKind::Unavailable, "retriable: {error}");
            let text = error.to_string();
            assert!(
                text.contains(&harness.config.url),
                "names the server: {text}"
            );
            assert!(
                text.contains("nats-server"),
                "says how to start NATS: {text}"
            );
        }
        Ok(outcome) => assert_eq!(outcome.first_version, 1),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the failure came after {:?}, past the bounded timeout",
        started.elapsed()
    );

    proxy.restart().await;
    let outcome = until_recovered(Duration::from_secs(20), unavailable, || {
        store.append(
            &s,
            ExpectedVersion::Exact(0),
            vec![event("during", "Happened")],
        )
    })
    .await;
    assert_eq!(
        (outcome.first_version, outcome.last_version),
        (1, 1),
        "the retried event follows the first one (as a duplicate if the first try was stored)"
    );
    let page = store
        .read_stream(&s, 0, Direction::Forward, 10)
        .await
        .unwrap();
    assert_eq!(
        ids(&page.events),
        ["before", "during"],
        "the event sent during the outage is stored once, not twice"
    );
    store.close().await.unwrap();
    proxy.stop();
}

/// The network drops everything (the proxy turns into a black hole) just as a read asks the
/// server for a stream's events: the read fails retriably within the request timeout instead
/// of waiting forever for an answer that will never come (an append that must read the
/// stream's ids did the same, holding the stream's lock), and reads again once NATS is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_fetch_is_never_answered_fails_retriably_instead_of_hanging() {
    let proxy = Proxy::start(host_port(&nats_url())).await;
    let harness = Harness::behind(&proxy);
    let store = harness.store().await;
    let s = stream("silent-1");
    // Three appends, three messages: reading them all takes a fetch.
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        let expected = match i {
            0 => ExpectedVersion::NoStream,
            i => ExpectedVersion::Exact(i as u64 - 1),
        };
        store
            .append(&s, expected, vec![event(id, "Happened")])
            .await
            .unwrap();
    }

    let error = proxy
        .error_of_a_read_whose_fetch_is_never_answered(store.read_stream(
            &s,
            0,
            Direction::Forward,
            10,
        ))
        .await;
    assert_eq!(error.kind(), ErrorKind::Unavailable, "retriable: {error}");

    proxy.stop();
    proxy.restart().await;
    let page = until_recovered(Duration::from_secs(20), unavailable, || {
        store.read_stream(&s, 0, Direction::Forward, 10)
    })
    .await;
    assert_eq!(ids(&page.events), ["a", "b", "c"]);
    store.close().await.unwrap();
    proxy.stop();
}

/// An unreachable server is a retriable error that names it (without its password) and says
/// how to start NATS.
#[tokio::test]
async fn an_unreachable_server_is_unavailable_and_says_how_to_start_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let config = NatsEventStoreConfig {
        connect_timeout_ms: 500,
        ..NatsEventStoreConfig::new(format!("nats://me:secret@127.0.0.1:{port}"))
    };
    let error = match NatsEventStore::open(config).await {
        Ok(_) => panic!("nothing listens on port {port}"),
        Err(error) => error,
    };
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    let text = error.to_string();
    assert!(text.contains("me:***@127.0.0.1"), "{text}");
    assert!(!text.contains("secret"), "{text}");
    assert!(text.contains("nats-server"), "{text}");
}

/// A store opened only to be read (`proteus migrate --from nats://…`) refuses a prefix whose
/// streams do not exist instead of creating them; once they exist it opens.
#[tokio::test]
async fn a_store_opened_without_creating_needs_its_streams() {
    let harness = Harness::new();
    let reader = NatsEventStoreConfig {
        create_streams: false,
        ..harness.config.clone()
    };
    let error = match NatsEventStore::open(reader.clone()).await {
        Ok(_) => panic!("the streams do not exist yet"),
        Err(error) => error,
    };
    let text = error.to_string();
    assert!(
        text.contains(&format!(
            "JetStream stream {}_EVENTS does not exist",
            harness.config.stream_prefix
        )) && text.contains("no event store with this stream prefix"),
        "{text}"
    );
    // Still nothing: the refusal created no stream, so a second reader is refused too.
    assert!(NatsEventStore::open(reader.clone()).await.is_err());
    open(harness.config.clone()).await.close().await.unwrap();
    NatsEventStore::open(reader)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
}

/// An append the store's limits allow but one NATS message cannot carry (the server's
/// `max_payload`, 1 MB by default) is refused before anything is sent, naming the limit, and
/// leaves the stream as it was. The limit is the client's copy of the server's, read on every
/// append: read as zero, the first append would fail; read as unbounded, the refusal would come
/// from the client library with a limit far above the append.
#[tokio::test]
async fn an_append_larger_than_the_servers_max_payload_is_refused_whole() {
    let harness = Harness::new();
    let store = harness.store().await;
    let orders = stream("order-big");
    store
        .append(
            &orders,
            ExpectedVersion::NoStream,
            vec![event("small", "OrderPlaced")],
        )
        .await
        .unwrap();
    // Two events of 600 KB of data: within every limit of the event store (1 MiB each, 8 MiB
    // an append), above the 1 MB one message carries on a server left at its default.
    let big =
        |id: &str| ProposedEvent::new(id, "OrderPlaced", format!("\"{}\"", "x".repeat(600_000)));
    let error = store
        .append(
            &orders,
            ExpectedVersion::Exact(0),
            vec![big("big-1"), big("big-2")],
        )
        .await
        .unwrap_err();
    match &error {
        EventStoreError::LimitExceeded {
            limit, value, max, ..
        } => {
            assert_eq!(*limit, "nats_max_payload");
            assert!(*value > 1_200_000 && *max < *value && *max > 0, "{error}");
        }
        other => panic!("expected the NATS payload limit, got {other:?}"),
    }
    assert!(error.to_string().contains("max_payload"), "{error}");
    let page = store
        .read_stream(&orders, 0, Direction::Forward, 10)
        .await
        .unwrap();
    assert_eq!(
        ids(&page.events),
        ["small"],
        "nothing of the refused append is written"
    );
}
