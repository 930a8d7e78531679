//! A topic on JetStream is readable with JetStream's own consumers, beside Proteus's groups:
//! a durable pull consumer on a partition's stream receives each event as its CloudEvent JSON,
//! redelivers what it was not acked after `ack_wait`, and publishes JetStream's max-deliveries
//! advisory when it gives up, as any JetStream client expects (docs/backends/nats.md, "Reading
//! topics with JetStream's own consumers").

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use proteus_log::port::{EventAppender, EventReader, TopicAdmin};
use proteus_log::{ReadFrom, ReadLimits, TopicConfig, TopicName};
use proteus_log_conformance::event;
use proteus_log_nats::names::partition_stream;

use crate::support::{NatsHarness, connect, nats_url};

/// One pull request for up to three messages, ending after `expires`.
async fn pull(consumer: &consumer::PullConsumer, expires: Duration) -> consumer::pull::Batch {
    consumer
        .fetch()
        .max_messages(3)
        .expires(expires)
        .messages()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_pull_consumer_reads_acks_redelivers_and_gives_up_like_jetstream() {
    let harness = NatsHarness::new();
    let log = connect(harness.config.clone()).await;
    let topic = TopicName::parse("orders.v1").unwrap();
    log.put_topic(&topic, TopicConfig::with_partitions(1))
        .await
        .unwrap();
    log.append(
        &topic,
        vec![event("a", None), event("b", None), event("c", None)],
    )
    .await
    .unwrap();

    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let stream_name = partition_stream(&harness.config.stream_prefix, &topic, 0);
    let stream = js.get_stream(&stream_name).await.unwrap();
    let advisories_subject =
        format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream_name}.billing");
    let mut advisories = client.subscribe(advisories_subject).await.unwrap();
    let billing: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("billing".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_millis(500),
            max_deliver: 2,
            ..Default::default()
        })
        .await
        .unwrap();

    // First delivery: every event as the CloudEvent Proteus stored; "c" is left unacked.
    let mut delivered = Vec::new();
    let mut messages = pull(&billing, Duration::from_secs(2)).await;
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        let cloud_event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(cloud_event["specversion"], "1.0");
        assert_eq!(cloud_event["source"], "/conformance");
        let id = cloud_event["id"].as_str().unwrap().to_owned();
        if id != "c" {
            message.ack().await.unwrap();
        }
        delivered.push(id);
    }
    assert_eq!(delivered, ["a", "b", "c"]);

    // After ack_wait, JetStream redelivers "c", and only "c".
    let mut again = pull(&billing, Duration::from_secs(3)).await;
    let redelivered = again.next().await.expect("a redelivery").unwrap();
    let cloud_event: serde_json::Value = serde_json::from_slice(&redelivered.payload).unwrap();
    assert_eq!(cloud_event["id"], "c");
    assert_eq!(redelivered.info().unwrap().delivered, 2);
    drop(again);

    // Not acked on its last delivery: at the next pull after ack_wait JetStream gives up
    // (nothing is delivered) and says so in its advisory, naming the stream sequence, which is
    // the event's offset + 1.
    let mut last = pull(&billing, Duration::from_secs(2)).await;
    assert!(last.next().await.is_none(), "nothing after max_deliver");
    let advisory = tokio::time::timeout(Duration::from_secs(10), advisories.next())
        .await
        .expect("a max-deliveries advisory within 10 s")
        .unwrap();
    let advisory: serde_json::Value = serde_json::from_slice(&advisory.payload).unwrap();
    assert_eq!(advisory["stream_seq"], 3, "{advisory}");
    assert_eq!(advisory["deliveries"], 2, "{advisory}");

    // The consumer is JetStream's, not Proteus's: the topic and its reads are untouched.
    let batch = log
        .read(&topic, 0, ReadFrom::Offset(0), ReadLimits::default())
        .await
        .unwrap();
    assert_eq!(batch.events.len(), 3);
    stream.delete_consumer("billing").await.unwrap();
}
