//! Appends across a connection outage, simulated with a TCP proxy in front of the shared
//! server (restarting the server itself would disturb every other test using it).

use std::time::{Duration, Instant};

use proteus_log::port::{EventAppender, EventReader, TopicAdmin};
use proteus_log::{LogError, ReadFrom, ReadLimits, TopicConfig, TopicName};
use proteus_log_conformance::event;
use proteus_nats::test_support::{Proxy, host_port, until_recovered};

use crate::support::{NatsHarness, connect, nats_url};

fn unavailable(error: &LogError) -> bool {
    matches!(error, LogError::Unavailable { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_during_an_outage_fail_retriably_and_succeed_once_after_reconnecting() {
    let proxy = Proxy::start(host_port(&nats_url())).await;
    let harness = NatsHarness::behind(&proxy, 1_000);
    let log = connect(harness.config.clone()).await;
    let name = TopicName::parse("outage").unwrap();
    log.put_topic(&name, TopicConfig::with_partitions(1))
        .await
        .unwrap();
    log.append(&name, vec![event("before", None)])
        .await
        .unwrap();

    proxy.stop();
    let started = Instant::now();
    let error = log
        .append(&name, vec![event("during", None)])
        .await
        .unwrap_err();
    assert!(
        matches!(error, LogError::Unavailable { .. }),
        "an append during an outage is retriable: {error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the failure came after {:?}, past the bounded timeout",
        started.elapsed()
    );

    proxy.restart().await;
    let receipt = until_recovered(Duration::from_secs(20), unavailable, || {
        log.append(&name, vec![event("during", None)])
    })
    .await[0];
    assert_eq!(receipt.offset, 1, "the retried event follows the first one");
    let batch = log
        .read(&name, 0, ReadFrom::Offset(0), ReadLimits::default())
        .await
        .unwrap();
    assert_eq!(
        batch.events.len(),
        2,
        "the event sent during the outage is stored once, not twice"
    );
    proxy.stop();
}

/// The network drops everything (the proxy turns into a black hole) just as a read asks the
/// server for its events: the read fails retriably within the request timeout instead of
/// waiting forever for an answer that will never come, and reads again once NATS is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_fetch_is_never_answered_fails_retriably_instead_of_hanging() {
    let proxy = Proxy::start(host_port(&nats_url())).await;
    let harness = NatsHarness::behind(&proxy, 1_000);
    let log = connect(harness.config.clone()).await;
    let name = TopicName::parse("silent").unwrap();
    log.put_topic(&name, TopicConfig::with_partitions(1))
        .await
        .unwrap();
    log.append(&name, vec![event("a", None), event("b", None)])
        .await
        .unwrap();

    let error = proxy
        .error_of_a_read_whose_fetch_is_never_answered(log.read(
            &name,
            0,
            ReadFrom::Offset(0),
            ReadLimits::default(),
        ))
        .await;
    assert!(
        matches!(error, LogError::Unavailable { .. }),
        "retriable: {error}"
    );

    proxy.stop();
    proxy.restart().await;
    let batch = until_recovered(Duration::from_secs(20), unavailable, || {
        log.read(&name, 0, ReadFrom::Offset(0), ReadLimits::default())
    })
    .await;
    assert_eq!(batch.events.len(), 2);
    proxy.stop();
}
