//! Chaos: consumers of one group, as real `proteus consume` processes, killed with SIGKILL and
//! restarted at random while a producer writes. At the end every event was processed (printed
//! by a consumer) at least once, the group's committed positions cover everything, and they
//! survive a kill -9 of the server.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{BINARY, ServerProcess};

const EVENTS: usize = 3_000;
const CONSUMERS: usize = 3;

pub(crate) struct Consumer {
    child: Child,
}

impl Consumer {
    pub(crate) fn start(url: &str, seen: Arc<Mutex<BTreeSet<String>>>) -> Consumer {
        let mut child = Command::new(BINARY)
            .args([
                "consume",
                "orders",
                "--group",
                "workers",
                "--max-events",
                "50",
                "--output",
                "json",
                "--server",
                url,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting proteus consume");
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let parsed: Value = serde_json::from_str(&line).unwrap_or_default();
                if let Some(id) = parsed["event"]["id"].as_str() {
                    seen.lock().unwrap().insert(id.to_owned());
                }
            }
        });
        Consumer { child }
    }

    fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// SplitMix64: reproducible randomness from a printed seed.
fn next(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[test]
fn killed_consumers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let url = server.url.clone();
    let http = reqwest::blocking::Client::new();
    let put = |path: &str, body: Value| {
        let response = http.put(format!("{url}{path}")).json(&body).send().unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.text().unwrap()
        );
    };
    put("/v1/topics/orders", json!({"partitions": 4}));
    put(
        "/v1/topics/orders/groups/workers",
        json!({"session_timeout_ms": 1_500, "ack_wait_ms": 3_000, "retry": {"backoff_base_ms": 10, "backoff_max_ms": 100}}),
    );
    let mut seed = std::env::var("PROTEUS_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("chaos seed {seed} (set PROTEUS_CHAOS_SEED to replay)");

    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let mut consumers: Vec<Consumer> = (0..CONSUMERS)
        .map(|_| Consumer::start(&url, seen.clone()))
        .collect();

    let producer = {
        let url = url.clone();
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            for batch in 0..EVENTS / 50 {
                let events: Vec<Value> = (batch * 50..(batch + 1) * 50)
                    .map(|i| json!({"specversion": "1.0", "id": format!("e{i}"), "source": "/chaos", "type": "t", "subject": format!("k{}", i % 17), "data": {"i": i}}))
                    .collect();
                let response = http
                    .post(format!("{url}/v1/topics/orders/events"))
                    .header("content-type", "application/cloudevents-batch+json")
                    .body(serde_json::to_vec(&events).unwrap())
                    .send()
                    .unwrap();
                assert!(response.status().is_success());
                std::thread::sleep(Duration::from_millis(80));
            }
        })
    };

    let mut kills = 0;
    while !producer.is_finished() {
        std::thread::sleep(Duration::from_millis(200 + next(&mut seed) % 400));
        let victim = (next(&mut seed) % CONSUMERS as u64) as usize;
        consumers[victim].kill_9();
        kills += 1;
        if !next(&mut seed).is_multiple_of(3) {
            // Most come back at once; some stay down for a while.
            consumers[victim] = Consumer::start(&url, seen.clone());
        } else {
            std::thread::sleep(Duration::from_millis(next(&mut seed) % 1_000));
            consumers[victim] = Consumer::start(&url, seen.clone());
        }
    }
    producer.join().unwrap();
    assert!(kills >= 5, "the chaos killed only {kills} consumers");

    let description = assert_every_event_processed(&url, &seen, EVENTS, Duration::from_secs(90));
    assert_eq!(description["counters"]["dead_lettered"], 0);
    drop(consumers);

    // Acknowledged positions survive kill -9 of the server itself.
    let mut server = server;
    server.kill_9();
    let restarted = ServerProcess::start(dir.path());
    let after: Value = http
        .get(format!("{}/v1/topics/orders/groups/workers", restarted.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(after["lag_events"], 0, "after kill -9 and restart: {after}");
    let committed = |d: &Value| -> Vec<Value> {
        d["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["committed"].clone())
            .collect()
    };
    assert_eq!(committed(&after), committed(&description));
}

/// Waits at most `wait` for group `workers` of topic `orders` at `url` to have no lag and for
/// `seen` to hold `e0`…`e{events - 1}`, then asserts every event was processed and the
/// committed positions cover every partition. The group's description.
pub(crate) fn assert_every_event_processed(
    url: &str,
    seen: &Mutex<BTreeSet<String>>,
    events: usize,
    wait: Duration,
) -> Value {
    let http = reqwest::blocking::Client::new();
    let deadline = Instant::now() + wait;
    let description = loop {
        let description = http
            .get(format!("{url}/v1/topics/orders/groups/workers"))
            .send()
            .ok()
            .and_then(|response| response.json::<Value>().ok())
            .unwrap_or_default();
        let done = description["lag_events"] == 0 && seen.lock().unwrap().len() == events;
        if done || Instant::now() > deadline {
            break description;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let seen = seen.lock().unwrap();
    let missing: Vec<usize> = (0..events)
        .filter(|i| !seen.contains(&format!("e{i}")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} events never processed, e.g. {:?}; group: {description}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    for partition in description["partitions"].as_array().unwrap() {
        assert_eq!(
            partition["committed"], partition["end_offset"],
            "committed positions cover the partition: {partition}"
        );
    }
    description
}
