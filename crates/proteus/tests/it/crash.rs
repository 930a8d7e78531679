//! Acknowledged means durable: kill -9 a loaded server many times and check every
//! acknowledged event is there, at its acknowledged position, exactly once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::ServerProcess;

const TOPIC: &str = "crash";
const PARTITIONS: u32 = 4;
const PRODUCERS: usize = 8;
const BATCH_EVENTS: usize = 20;

/// (partition, offset) of every acknowledged event id.
type Acked = HashMap<String, (u32, u64)>;

fn cycles() -> usize {
    std::env::var("PROTEUS_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

fn event(id: &str, key: Option<&str>) -> Value {
    let mut event = json!({"specversion": "1.0", "id": id, "source": "/crash", "type": "crash.test", "data": {"pad": "x".repeat(200)}});
    if let Some(key) = key {
        event["partitionkey"] = key.into();
    }
    event
}

/// Sends batches until the server stops answering; returns what was acknowledged and counts
/// acknowledged batches in `progress`.
async fn produce(
    url: String,
    producer: usize,
    cycle: usize,
    progress: Arc<AtomicUsize>,
) -> Vec<(String, Option<String>, u32, u64)> {
    let http = reqwest::Client::new();
    let mut acked = Vec::new();
    for seq in 0.. {
        let events: Vec<Value> = (0..BATCH_EVENTS)
            .map(|i| {
                let id = format!("c{cycle}-p{producer}-b{seq}-{i}");
                let key = (i % 2 == 0).then(|| format!("key-{producer}-{}", i % 3));
                event(&id, key.as_deref())
            })
            .collect();
        let response = http
            .post(format!("{url}/v1/topics/{TOPIC}/events"))
            .header("content-type", "application/cloudevents-batch+json")
            .json(&events)
            .send()
            .await;
        // A failed request (the server died) acknowledged nothing: stop this producer.
        let Ok(response) = response else { return acked };
        if !response.status().is_success() {
            return acked;
        }
        let Ok(body) = response.json::<Value>().await else {
            return acked;
        };
        for (event, result) in events.iter().zip(body["results"].as_array().unwrap()) {
            assert_eq!(result["duplicate"], false, "fresh ids are never duplicates");
            progress.fetch_add(1, Ordering::Relaxed);
            acked.push((
                event["id"].as_str().unwrap().to_owned(),
                event
                    .get("partitionkey")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                result["partition"].as_u64().unwrap() as u32,
                result["offset"].as_u64().unwrap(),
            ));
        }
    }
    acked
}

async fn wait_for_progress(progress: &AtomicUsize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while progress.load(Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no append was acknowledged within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads every partition and checks the acknowledged events against it.
async fn verify(url: &str, acked: &Acked) {
    let http = reqwest::Client::new();
    let mut stored: HashMap<String, (u32, u64)> = HashMap::new();
    for partition in 0..PARTITIONS {
        let mut from = 0u64;
        loop {
            let page: Value = http
                .get(format!("{url}/v1/topics/{TOPIC}/partitions/{partition}/events?from={from}&limit=10000&bytes_max=16777216"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let events = page["events"].as_array().unwrap();
            if events.is_empty() {
                break;
            }
            for record in events {
                let offset = record["offset"].as_u64().unwrap();
                assert_eq!(
                    offset, from,
                    "offsets of partition {partition} are contiguous"
                );
                from = offset + 1;
                let id = record["event"]["id"].as_str().unwrap().to_owned();
                let previous = stored.insert(id.clone(), (partition, offset));
                assert!(
                    previous.is_none(),
                    "event {id} is stored twice: {previous:?} and {:?}",
                    (partition, offset)
                );
            }
        }
    }
    for (id, position) in acked {
        assert_eq!(
            stored.get(id),
            Some(position),
            "acknowledged event {id} is not where it was acknowledged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_events_survive_kill_9_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Acked = HashMap::new();
    let mut newest_acked: Option<(String, (u32, u64))> = None;
    // Per key, the offsets in the order the producer sent them.
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for cycle in 0..cycles() {
        let mut server = ServerProcess::start(dir.path());
        if cycle == 0 {
            let response = reqwest::Client::new()
                .put(format!("{}/v1/topics/{TOPIC}", server.url))
                .json(&json!({"partitions": PARTITIONS}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 201);
        }
        verify(&server.url, &acked).await;
        if let Some((id, (partition, offset))) = &newest_acked {
            // The dedup index was rebuilt from the log: a retry of a recent event is
            // recognised (older ones may be past the dedup window or its entry bound).
            let retry: Value = reqwest::Client::new()
                .post(format!("{}/v1/topics/{TOPIC}/events", server.url))
                .header("content-type", "application/cloudevents-batch+json")
                .json(&[event(id, None)])
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(
                retry["results"][0],
                json!({"partition": partition, "offset": offset, "duplicate": true}),
                "{}",
                server.log_text()
            );
        }
        let progress = Arc::new(AtomicUsize::new(0));
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| tokio::spawn(produce(server.url.clone(), p, cycle, progress.clone())))
            .collect();
        // Kill while the load is running, at a different moment each cycle: wait for the first
        // acknowledgements (a loaded CI machine can be slow to start), then a varying while.
        wait_for_progress(&progress).await;
        let run_ms = 50 + (cycle as u64 * 97) % 400;
        tokio::time::sleep(Duration::from_millis(run_ms)).await;
        server.kill_9();
        let mut cycle_acked = 0;
        for producer in producers {
            for (id, key, partition, offset) in producer.await.unwrap() {
                if let Some(key) = key {
                    per_key.entry(key).or_default().push(offset);
                }
                newest_acked = Some((id.clone(), (partition, offset)));
                acked.insert(id, (partition, offset));
                cycle_acked += 1;
            }
        }
        assert!(
            cycle_acked > 0,
            "cycle {cycle}: the load acknowledged nothing before the kill"
        );
    }
    let server = ServerProcess::start(dir.path());
    verify(&server.url, &acked).await;
    for (key, offsets) in per_key {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "events of key {key} kept their order"
        );
    }
}

/// Supervisors send SIGTERM as soon as a server reports ready: it must already be caught then.
/// (Once, the handler was installed just after the "serving" line, and such a SIGTERM killed
/// the process with the signal's default action.)
#[test]
fn sigterm_right_after_serving_is_announced_stops_cleanly() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let mut server = ServerProcess::start(dir.path());
        let code = server.terminate();
        assert_eq!(
            code,
            Some(0),
            "exit after SIGTERM; log:\n{}",
            server.log_text()
        );
        assert!(
            server.log_text().contains("stopped cleanly"),
            "{}",
            server.log_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_appends_in_flight_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path());
    reqwest::Client::new()
        .put(format!("{}/v1/topics/{TOPIC}", server.url))
        .json(&json!({"partitions": PARTITIONS}))
        .send()
        .await
        .unwrap();
    let progress = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| tokio::spawn(produce(server.url.clone(), p, 0, progress.clone())))
        .collect();
    wait_for_progress(&progress).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let code = tokio::task::spawn_blocking(move || {
        let code = server.terminate();
        (code, server)
    })
    .await
    .unwrap();
    let (code, server) = code;
    assert_eq!(
        code,
        Some(0),
        "exit code after SIGTERM; log:\n{}",
        server.log_text()
    );
    assert!(server.log_text().contains("stopped cleanly"));
    let mut acked = Acked::new();
    for producer in producers {
        for (id, _, partition, offset) in producer.await.unwrap() {
            acked.insert(id, (partition, offset));
        }
    }
    assert!(!acked.is_empty());
    let restarted = ServerProcess::start(dir.path());
    verify(&restarted.url, &acked).await;
}
