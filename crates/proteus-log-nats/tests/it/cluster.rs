//! A topic replicated on a JetStream cluster of three servers of the test's own
//! (`PrivateNatsCluster`, `replicas = 3`): the servers leading its streams killed (`SIGKILL`)
//! one at a time while writers append, as a node of a production cluster fails.

use std::time::Duration;

use proteus_log::port::{EventAppender, EventReader, TopicAdmin};
use proteus_log::{LogError, ReadFrom, ReadLimits, TopicConfig, TopicName};
use proteus_log_conformance::event;
use proteus_log_nats::NatsLog;
use proteus_nats::test_support::{PrivateNatsCluster, until_recovered};

use crate::server_crash::{DOWN_MS, PARTITIONS, append_through_crashes, assert_each_event_once};
use crate::support::{connect, unique_config};

/// How long the log may take to serve again once a node is down: the partition's stream
/// elects a new leader seconds after the old one stops answering (4.2 to 8.4 s measured
/// on nats-server 2.12).
const FAILOVER_WAIT_S: u64 = 30;

/// Every stream of the topic is created with 3 replicas. Each time the leader of partition 0's
/// stream is killed, the two servers left elect another and the log carries on through them
/// (an append to another topic, and a read of it, succeed while the node is down); the node
/// then starts again and catches up. Every call either succeeds or fails retriably, and
/// retried whole, every acknowledged event is stored exactly once with gapless offsets and
/// each key's events in order, read through the log that wrote and a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_topic_keeps_every_event_when_its_leaders_are_killed() {
    let cluster = PrivateNatsCluster::start().await;
    let mut config = unique_config(&cluster.url());
    config.replicas = 3;
    config.request_timeout_ms = 2_000;
    config.reconnect_delay_max_ms = 200;
    let log = connect(config.clone()).await;
    let topic = TopicName::parse("crash").unwrap();
    let probe = TopicName::parse("probe").unwrap();
    for (name, partitions) in [(&topic, PARTITIONS), (&probe, 1)] {
        log.put_topic(name, TopicConfig::with_partitions(partitions))
            .await
            .unwrap();
    }
    let stream_of = |partition: u32| format!("{}_crash_{partition}", config.stream_prefix);
    for partition in 0..PARTITIONS {
        assert_eq!(cluster.replicas_of(&stream_of(partition)).await, 3);
    }

    let mut probes = 0;
    append_through_crashes(&log, &topic, || {
        probes += 1;
        let (cluster, log, probe, stream_of) = (&cluster, &log, &probe, &stream_of);
        let id = format!("probe-{probes}");
        async move {
            let leader = cluster.leader_of(&stream_of(0)).await;
            cluster.kill(leader);
            let killed_at = std::time::Instant::now();
            let appended = until_recovered(
                Duration::from_secs(FAILOVER_WAIT_S),
                |error: &LogError| matches!(error, LogError::Unavailable { .. }),
                || log.append(probe, vec![event(&id, None)]),
            )
            .await;
            let offset = appended[0].offset;
            let read = until_recovered(
                Duration::from_secs(FAILOVER_WAIT_S),
                |error: &LogError| matches!(error, LogError::Unavailable { .. }),
                || log.read(probe, 0, ReadFrom::Offset(offset), ReadLimits::default()),
            )
            .await;
            eprintln!(
                "node {leader} killed: served again after {:?}",
                killed_at.elapsed()
            );
            assert_eq!(read.events[0].offset, offset, "the probe reads back");
            tokio::time::sleep(Duration::from_millis(DOWN_MS)).await;
            cluster.restart(leader).await;
            for partition in 0..PARTITIONS {
                cluster.wait_until_current(&stream_of(partition)).await;
            }
        }
    })
    .await;
    assert_each_event_once(&log, &topic, "the log that wrote").await;
    assert_each_event_once(&connect(config).await, &topic, "a new log").await;
}

/// A read's consumer may be placed on a replica that has just restarted and is still copying
/// what it missed. Reads right after such a restart, each from its own offset and through a new
/// consumer, must return the events from there (waiting for the replica, or `Unavailable`
/// when it takes too long): never "nothing until the end", which makes a reader skip events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_skip_nothing_while_a_restarted_replica_catches_up() {
    const READS: u64 = 60;
    let cluster = PrivateNatsCluster::start().await;
    let (log, topic) = lagging_topic(&cluster).await;
    let follower = kill_a_follower(&cluster, &log, &topic).await;
    append_padded(&log, &topic, 0..LAGGING_EVENTS).await;
    cluster.restart(follower).await;
    let limits = ReadLimits {
        events_max: 5,
        bytes_max: 1024 * 1024,
    };
    for read in 0..READS {
        // Offsets 7 apart: no read resumes the consumer the previous one parked.
        let offset = (read * 7) % LAGGING_EVENTS;
        let batch = until_recovered(
            Duration::from_secs(FAILOVER_WAIT_S),
            |error: &LogError| matches!(error, LogError::Unavailable { .. }),
            || log.read(&topic, 0, ReadFrom::Offset(offset), limits),
        )
        .await;
        assert_eq!(batch.end_offset, LAGGING_EVENTS, "read {read}");
        let offsets: Vec<u64> = batch.events.iter().map(|e| e.offset).collect();
        assert!(
            offsets.first() == Some(&offset),
            "read {read} from offset {offset}: got offsets {offsets:?}, next offset {}",
            batch.next_offset
        );
        assert_eq!(
            batch.next_offset,
            offsets.last().unwrap() + 1,
            "read {read}"
        );
    }
}

/// A topic's settings are kept in its partition 0 stream; while that stream elects a leader
/// (its leader's node killed), the topic's other partitions still take appends at once, as a
/// Kafka topic's partitions fail one by one. (Before the log cached the settings, each append
/// asked partition 0's stream for them first and waited out the request timeout, so no
/// partition of the topic took appends during the election.) Reads while the metadata leader
/// is down: `reads_go_on_while_the_metadata_leader_is_elected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_partitions_take_appends_while_partition_0_elects_a_leader() {
    let cluster = PrivateNatsCluster::start().await;
    let mut config = unique_config(&cluster.url());
    config.replicas = 3;
    let log = connect(config.clone()).await;
    let topic = TopicName::parse("partly").unwrap();
    log.put_topic(&topic, TopicConfig::with_partitions(2))
        .await
        .unwrap();
    // A key of partition 1.
    let key = (0..)
        .map(|i| format!("k{i}"))
        .find(|key| proteus_log::partitioner::partition_for_key(key, 2) == 1)
        .unwrap();
    let first = log
        .append(&topic, vec![event("before", Some(&key))])
        .await
        .unwrap();
    assert_eq!(first[0].partition, 1);
    let stream = |partition: u32| format!("{}_partly_{partition}", config.stream_prefix);
    let leader_of_0 = cluster.leader_of(&stream(0)).await;
    cluster.lead_elsewhere(&stream(1), leader_of_0).await;
    cluster.kill(leader_of_0);
    let killed_at = std::time::Instant::now();
    let appended = log
        .append(&topic, vec![event("during", Some(&key))])
        .await
        .expect("partition 1 takes an append while partition 0 has no leader");
    let took = killed_at.elapsed();
    assert_eq!(
        (appended[0].partition, appended[0].offset),
        (1, first[0].offset + 1)
    );
    assert!(
        took < Duration::from_secs(2),
        "partition 1 took the append only after {took:?}"
    );
    cluster.restart(leader_of_0).await;
}

/// Reads by time and from an offset while the node leading the cluster's metadata is down and
/// the others elect another. JetStream answers no request to create a consumer until then (the
/// metadata leader places consumers), which a read used to wait out for the whole request
/// timeout (5 s) before failing. The partition's own stream, led elsewhere, still serves its
/// messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_on_while_the_metadata_leader_is_elected() {
    let cluster = PrivateNatsCluster::start().await;
    let (log, topic) = lagging_topic(&cluster).await;
    let events = |ids: std::ops::Range<u32>| ids.map(|n| event(&format!("e{n}"), None)).collect();
    log.append(&topic, events(0..10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(20)).await;
    log.append(&topic, events(10..50)).await.unwrap();
    let stream = format!("{}_{topic}_0", log.config().stream_prefix);
    let metadata_leader = cluster.metadata_leader().await;
    cluster.lead_elsewhere(&stream, metadata_leader).await;
    cluster.wait_until_current(&stream).await;
    cluster.kill(metadata_leader);
    let killed_at = std::time::Instant::now();
    let limits = ReadLimits {
        events_max: 20,
        bytes_max: 1024 * 1024,
    };
    let offsets = |batch: &proteus_log::ReadBatch| -> Vec<u64> {
        batch.events.iter().map(|e| e.offset).collect()
    };
    let by_time = log
        .read(&topic, 0, ReadFrom::TimeMs(since_ms), limits)
        .await
        .expect("a read by time while the metadata leader is being elected");
    assert_eq!(offsets(&by_time), (10..30).collect::<Vec<u64>>());
    let by_offset = log
        .read(&topic, 0, ReadFrom::Offset(30), limits)
        .await
        .expect("a read from an offset while the metadata leader is being elected");
    assert_eq!(offsets(&by_offset), (30..50).collect::<Vec<u64>>());
    assert_eq!(by_offset.next_offset, 50);
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "the two reads took {took:?} with the metadata leader down"
    );
    cluster.restart(metadata_leader).await;
}

/// A read by time through a consumer placed on a replica that restarted after missing the
/// events from that time on, and some before it: the consumer starts where the replica's copy
/// ends, before the time asked. Every read must still start at the first event appended at or
/// after the time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_reads_start_at_their_time_while_a_restarted_replica_catches_up() {
    const READS: u64 = 40;
    const BEFORE: u64 = 10_000;
    let cluster = PrivateNatsCluster::start().await;
    let (log, topic) = lagging_topic(&cluster).await;
    let follower = kill_a_follower(&cluster, &log, &topic).await;
    append_padded(&log, &topic, 0..BEFORE).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since_ms = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()) as i64;
    tokio::time::sleep(Duration::from_millis(20)).await;
    append_padded(&log, &topic, BEFORE..BEFORE + 100).await;
    cluster.restart(follower).await;
    let limits = ReadLimits {
        events_max: 5,
        bytes_max: 1024 * 1024,
    };
    for read in 0..READS {
        let batch = until_recovered(
            Duration::from_secs(FAILOVER_WAIT_S),
            |error: &LogError| matches!(error, LogError::Unavailable { .. }),
            || log.read(&topic, 0, ReadFrom::TimeMs(since_ms), limits),
        )
        .await;
        let offsets: Vec<u64> = batch.events.iter().map(|e| e.offset).collect();
        assert_eq!(
            offsets.first(),
            Some(&BEFORE),
            "read {read} from {since_ms} ms: got offsets {offsets:?} (times {:?})",
            batch
                .events
                .iter()
                .map(|e| e.append_time_ms)
                .collect::<Vec<_>>()
        );
    }
}

/// Events `lagging_topic`'s tests append while a replica is down.
const LAGGING_EVENTS: u64 = 3_000;

/// A log with 3 replicas on `cluster`, and a topic of one partition.
async fn lagging_topic(cluster: &PrivateNatsCluster) -> (NatsLog, TopicName) {
    let mut config = unique_config(&cluster.url());
    config.replicas = 3;
    let log = connect(config).await;
    let topic = TopicName::parse("lagging").unwrap();
    log.put_topic(&topic, TopicConfig::with_partitions(1))
        .await
        .unwrap();
    (log, topic)
}

/// Kills a node holding a replica of `topic`'s partition 0 but not leading it; which one.
async fn kill_a_follower(cluster: &PrivateNatsCluster, log: &NatsLog, topic: &TopicName) -> usize {
    let stream = format!("{}_{topic}_0", log.config().stream_prefix);
    let follower = (cluster.leader_of(&stream).await + 1) % 3;
    cluster.kill(follower);
    follower
}

/// Appends events `e<n>` for `ids`, 100 per call, each padded to 4 KiB so that a replica takes
/// a while to copy them (retried while the cluster elects).
async fn append_padded(log: &NatsLog, topic: &TopicName, ids: std::ops::Range<u64>) {
    let pad = "x".repeat(4_096);
    let ids: Vec<u64> = ids.collect();
    for chunk in ids.chunks(100) {
        let events: Vec<_> = chunk
            .iter()
            .map(|n| {
                let json = serde_json::json!({
                    "specversion": "1.0", "id": format!("e{n}"), "source": "/lagging",
                    "type": "test.event", "data": {"pad": pad},
                });
                proteus_log::Event::from_json(json.to_string().as_bytes()).unwrap()
            })
            .collect();
        until_recovered(
            Duration::from_secs(FAILOVER_WAIT_S),
            |error: &LogError| matches!(error, LogError::Unavailable { .. }),
            || log.append(topic, events.clone()),
        )
        .await;
    }
}

/// `replicas = 3` is refused on a server older than 2.11, saying why and what to do (the
/// shared test server is Debian's 2.9); a newer single server refuses it itself (replicated
/// streams need a cluster).
#[tokio::test]
async fn replicas_are_refused_on_a_server_that_cannot_keep_them_exact() {
    let url = crate::support::nats_url();
    let mut config = unique_config(&url);
    config.replicas = 3;
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let version = client.server_info().version;
    let old = !proteus_nats::client::version_at_least(
        &version,
        proteus_nats::client::REPLICATED_SERVER_VERSION_MIN,
    );
    let error = match NatsLog::connect(config.clone()).await {
        Ok(log) => {
            // Only a newer server gets this far: creating a replicated stream fails there.
            assert!(!old, "a {version} server was accepted with replicas = 3");
            let created = log
                .put_topic(
                    &TopicName::parse("replicated").unwrap(),
                    TopicConfig::with_partitions(1),
                )
                .await;
            crate::support::delete_streams(url.clone(), config.stream_prefix.clone());
            created
                .expect_err("a single server cannot hold 3 replicas")
                .to_string()
        }
        Err(error) => error.to_string(),
    };
    if old {
        assert!(
            error.contains("replicas = 3 needs nats-server 2.11 or later")
                && error.contains(&version)
                && error.contains("replicas = 1"),
            "{error}"
        );
    } else {
        assert!(error.contains("replicas"), "{error}");
    }
}

/// A log whose streams have 3 replicas on a cluster of the test's own, started with the first
/// `open`: the import suite runs on it, since `proteus migrate-topics` copies into replicated
/// partitions differently (see `PartitionImport for NatsLog`).
pub struct ClusterHarness {
    cluster: Option<PrivateNatsCluster>,
    config: Option<proteus_log_nats::NatsLogConfig>,
}

impl ClusterHarness {
    pub fn new() -> ClusterHarness {
        ClusterHarness {
            cluster: None,
            config: None,
        }
    }
}

impl proteus_log_conformance::Harness for ClusterHarness {
    type Log = NatsLog;

    async fn open(&mut self) -> NatsLog {
        if self.cluster.is_none() {
            let cluster = PrivateNatsCluster::start().await;
            let mut config = unique_config(&cluster.url());
            config.replicas = 3;
            // Creating a replicated stream waits for its three servers to agree: on two cores
            // shared with other tests' clusters, CI once saw it take more than 5 s.
            config.request_timeout_ms = 15_000;
            self.config = Some(config);
            self.cluster = Some(cluster);
        }
        connect(self.config.clone().expect("set with the cluster")).await
    }

    async fn advance_clock(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }

    async fn apply_retention(&self, log: &NatsLog) {
        log.apply_retention().await.unwrap();
    }
}

mod imports_into_replicated_partitions {
    proteus_log_conformance::log_import_conformance_tests!(super::ClusterHarness::new());
}
