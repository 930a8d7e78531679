//! Two `proteus serve` processes sharing one NATS JetStream log: a topic created through one is
//! used through the other, an event published through one is read (and waited for) through the
//! other, a retried event is recognised as a duplicate whichever instance receives it, and a
//! flag set changed, or a schema registered, through one is served by the other.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::support::{ServerProcess, delete_streams, nats_url};

/// A stream-name prefix of its own; every stream under it is deleted when the test ends.
struct Prefix(String);

impl Prefix {
    fn new() -> Prefix {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Prefix(format!("ITSHARED{}x{nanos}", std::process::id()))
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        delete_streams(nats_url(), self.0.clone().clone());
    }
}

fn start(data_dir: &std::path::Path, prefix: &Prefix) -> ServerProcess {
    ServerProcess::start_with(
        data_dir,
        &[
            "--storage-log",
            &nats_url(),
            "--storage-log-prefix",
            &prefix.0,
        ],
        &[],
    )
}

fn publish(http: &reqwest::blocking::Client, server: &str, id: &str) -> Value {
    let response = http
        .post(format!("{server}/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents+json")
        .json(&json!({
            "specversion": "1.0", "id": id, "source": "/it", "type": "OrderPlaced",
            "data": {"n": 1}
        }))
        .send()
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.json().unwrap()
}

#[test]
fn two_instances_share_one_nats_log() {
    let prefix = Prefix::new();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(dirs[0].path(), &prefix);
    let b = start(dirs[1].path(), &prefix);
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let status = http
        .put(format!("{}/v1/topics/orders", a.url))
        .json(&json!({"partitions": 1}))
        .send()
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 201);
    let described: Value = http
        .get(format!("{}/v1/topics/orders", b.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(described["name"], "orders", "{described}");
    // JetStream keeps its own storage: no segments to count, and the CLI shows none.
    assert!(
        described["partitions"][0]["segments"].is_null(),
        "{described}"
    );
    let table = std::process::Command::new(crate::support::BINARY)
        .args(["topic", "describe", "orders", "--server", &b.url])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("topic orders") && !table.contains("segment") && !table.contains("SEGMENTS"),
        "{table}"
    );

    // B long-polls the partition; A's publish wakes it.
    let waiter = {
        let (http, url) = (http.clone(), b.url.clone());
        std::thread::spawn(move || -> Value {
            http.get(format!(
                "{url}/v1/topics/orders/partitions/0/events?from=0&wait_ms=20000"
            ))
            .send()
            .unwrap()
            .json()
            .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    publish(&http, &a.url, "order-1");
    let read = waiter.join().unwrap();
    let events = read["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{read}");
    assert_eq!(events[0]["event"]["id"], "order-1");

    // The same event retried through B is a duplicate of A's, not a second event.
    publish(&http, &b.url, "order-1");
    publish(&http, &b.url, "order-2");
    let read: Value = http
        .get(format!(
            "{}/v1/topics/orders/partitions/0/events?from=0",
            a.url
        ))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let ids: Vec<&str> = read["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["order-1", "order-2"], "{read}");

    // A flag set written through A is evaluated through B (OFREP) shortly after.
    let document = |text: &str| {
        json!({"flags": {"banner": {
            "state": "ENABLED", "variants": {"v": text}, "defaultVariant": "v"
        }}})
    };
    for (text, version) in [("first", 1), ("second", 2)] {
        let response = http
            .put(format!("{}/v1/flagsets/default", a.url))
            .json(&document(text))
            .send()
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        let started = std::time::Instant::now();
        loop {
            let evaluated: Value = http
                .post(format!("{}/ofrep/v1/evaluate/flags/banner", b.url))
                .json(&json!({"context": {"targetingKey": "u"}}))
                .send()
                .unwrap()
                .json()
                .unwrap();
            if evaluated["value"] == text {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "B still serves {evaluated} for version {version}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // B's next change builds on A's version.
    let response = http
        .put(format!("{}/v1/flagsets/default?expected_version=2", b.url))
        .json(&document("third"))
        .send()
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());

    // A schema registered through A is known to B, which registers the next version.
    let schema = |fields: &[&str]| {
        let properties: serde_json::Map<String, Value> = fields
            .iter()
            .map(|f| (f.to_string(), json!({"type": "string"})))
            .collect();
        json!({"schema": {"type": "object", "properties": properties,
                          "additionalProperties": false}})
    };
    let response = http
        .post(format!("{}/v1/schemas/OrderPlaced", a.url))
        .json(&schema(&["id"]))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let started = std::time::Instant::now();
    while http
        .get(format!("{}/v1/schemas/OrderPlaced", b.url))
        .send()
        .unwrap()
        .status()
        .as_u16()
        != 200
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "B never learnt A's schema"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let registered: Value = http
        .post(format!("{}/v1/schemas/OrderPlaced", b.url))
        .json(&schema(&["id", "total"]))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(registered["version"], 2, "{registered}");
    drop((a, b));
}
