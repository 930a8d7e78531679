//! Stores in a temporary directory, event writers, waiting and reading whole read models.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proteus_eventstore::{
    Direction, EventStore, ExpectedVersion, ProposedEvent, ReadFilter, RecordedEvent, StreamName,
};
use proteus_eventstore_embedded::{EmbeddedConfig, EmbeddedEventStore};
use proteus_projections::{Query, RunState};
use proteus_projections_embedded::EmbeddedReadModelStore;
use proteus_projections_service::{ProjectionService, ProjectionServiceConfig, ProjectionStatus};
use serde_json::{Value, json};

pub struct Env {
    pub events: Arc<EmbeddedEventStore>,
    pub service: ProjectionService,
}

impl Env {
    pub async fn open(dir: &Path, config: ProjectionServiceConfig) -> Env {
        Env::open_with(dir, dir, config).await
    }

    /// Events in `events_dir`, read models in `models_dir`.
    pub async fn open_with(
        events_dir: &Path,
        models_dir: &Path,
        config: ProjectionServiceConfig,
    ) -> Env {
        let events =
            Arc::new(EmbeddedEventStore::open(events_dir, EmbeddedConfig::default()).unwrap());
        let store = Arc::new(EmbeddedReadModelStore::open(models_dir).unwrap());
        let service = ProjectionService::open(events.clone(), store, config)
            .await
            .unwrap();
        Env { events, service }
    }

    /// Stops the runners and releases both files, so the directory can be opened again.
    pub async fn close(self) {
        self.service.close().await;
        drop(self.service);
        self.events.close().await.unwrap();
    }

    pub async fn head(&self) -> u64 {
        head(self.events.as_ref()).await
    }

    /// Waits until `name` has read up to the head of the event store.
    pub async fn settle(&self, name: &str) -> ProjectionStatus {
        let head = self.head().await;
        let reached = self
            .service
            .wait_for_position(name, head, Duration::from_secs(120))
            .await
            .unwrap();
        let status = self.service.status(name).await.unwrap();
        assert!(
            reached,
            "{name} did not catch up with head {head}: {status:?}"
        );
        status
    }

    pub async fn docs(&self, name: &str) -> BTreeMap<String, Value> {
        docs(&self.service, name).await
    }

    /// Polls until `name` is failed.
    pub async fn failed(&self, name: &str) -> ProjectionStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.service.status(name).await.unwrap();
            if matches!(status.state, RunState::Failed { .. }) {
                return status;
            }
            assert!(Instant::now() < deadline, "{name} did not fail: {status:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub async fn head(events: &dyn EventStore) -> u64 {
    events
        .read_all(u64::MAX, Direction::Forward, 1, &ReadFilter::default())
        .await
        .unwrap()
        .head_position
}

/// Every document of a projection, by key, read page by page.
pub async fn docs(service: &ProjectionService, name: &str) -> BTreeMap<String, Value> {
    let mut all = BTreeMap::new();
    let mut query = Query {
        limit: 1000,
        ..Query::default()
    };
    loop {
        let page = service.query(name, &query).await.unwrap();
        all.extend(page.items);
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => return all,
        }
    }
}

/// Every event of the store, in order.
pub async fn all_events(events: &dyn EventStore) -> Vec<RecordedEvent> {
    let mut all = Vec::new();
    let mut from = 0;
    loop {
        let page = events
            .read_all(from, Direction::Forward, 10_000, &ReadFilter::default())
            .await
            .unwrap();
        all.extend(page.events);
        from = page.next_position;
        if page.is_end {
            return all;
        }
    }
}

pub async fn append(events: &dyn EventStore, stream: &str, batch: Vec<(&str, Value)>) -> u64 {
    let stream = StreamName::parse(stream).unwrap();
    let proposed = batch
        .into_iter()
        .map(|(event_type, data)| {
            ProposedEvent::new(uuid(), event_type, serde_json::to_vec(&data).unwrap())
        })
        .collect();
    events
        .append(&stream, ExpectedVersion::Any, proposed)
        .await
        .unwrap()
        .last_position
}

pub fn uuid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A small deterministic generator (xorshift), seeded from the clock unless given.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn from_clock() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        eprintln!("rng seed {nanos}");
        Rng::new(nanos)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The bank-account events of stream `acct-<account>`: `Opened` first, then deposits and
/// withdrawals, sometimes `Closed` at the end, with noise of another category in between.
pub fn account_events(account: u64, rng: &mut Rng, count: usize) -> Vec<(&'static str, Value)> {
    let owner = format!("owner-{}", account % 7);
    let mut out = vec![("Opened", json!({"owner": owner}))];
    for _ in 1..count {
        let amount = rng.below(100) as i64 + 1;
        if rng.below(3) == 0 {
            out.push(("Withdrawn", json!({"owner": owner, "delta": -amount})));
        } else {
            out.push(("Deposited", json!({"owner": owner, "amount": amount})));
        }
    }
    if rng.below(5) == 0 {
        out.push(("Closed", json!({"owner": owner})));
    }
    out
}

/// A state projection of balances over category `acct`.
pub fn balances() -> Value {
    json!({
        "source": {"category": "acct"},
        "state": {"handlers": {
            "Opened": {"set": {"owner": {"path": "/data/owner"}, "balance": {"const": 0}}},
            "Deposited": {"increment": {"balance": {"path": "/data/amount"}},
                          "append": {"history": {"path": "/data/amount", "max_items": 3}}},
            "Withdrawn": {"increment": {"balance": {"path": "/data/delta"}}},
            "Closed": {"delete": true}
        }}
    })
}

/// An aggregate over `$all` by event type.
pub fn by_type() -> Value {
    json!({
        "source": {"all": true},
        "aggregate": {"group_by": ["event_type"],
                      "measures": {"count": {"count": {}},
                                   "amount": {"sum": {"path": "/data/amount", "optional": true}}}}
    })
}

/// A list of deposits per owner over `$all`, filtered by type.
pub fn recent() -> Value {
    json!({
        "source": {"all": true},
        "event_types": ["Deposited"],
        "list": {"key": "/data/owner", "max_items": 5,
                 "fields": {"amount": "/data/amount", "stream": "stream"}}
    })
}

/// What [`balances`], [`by_type`] and [`recent`] must hold after `events`, computed
/// independently of the projector.
pub fn expected(events: &[RecordedEvent]) -> [BTreeMap<String, Value>; 3] {
    let mut balances: BTreeMap<String, Value> = BTreeMap::new();
    let mut by_type: BTreeMap<String, (u64, Option<i64>)> = BTreeMap::new();
    let mut recent: BTreeMap<String, (Vec<Value>, u64)> = BTreeMap::new();
    for event in events {
        let data: Value = serde_json::from_slice(&event.data).unwrap();
        let stream = event.stream.as_str().to_owned();
        let entry = by_type
            .entry(event.event_type.to_string())
            .or_insert((0, None));
        entry.0 += 1;
        if let Some(amount) = data.get("amount").and_then(Value::as_i64) {
            entry.1 = Some(entry.1.unwrap_or(0) + amount);
        }
        if stream.starts_with("acct-") {
            match &*event.event_type {
                "Opened" => {
                    let doc = balances.entry(stream.clone()).or_insert_with(|| json!({}));
                    doc["owner"] = data["owner"].clone();
                    doc["balance"] = json!(0);
                }
                "Deposited" => {
                    let doc = balances.entry(stream.clone()).or_insert_with(|| json!({}));
                    let balance = doc["balance"].as_i64().unwrap_or(0);
                    doc["balance"] = json!(balance + data["amount"].as_i64().unwrap());
                    let mut history = doc["history"].as_array().cloned().unwrap_or_default();
                    history.push(data["amount"].clone());
                    if history.len() > 3 {
                        history.remove(0);
                    }
                    doc["history"] = Value::Array(history);
                }
                "Withdrawn" => {
                    let doc = balances.entry(stream.clone()).or_insert_with(|| json!({}));
                    let balance = doc["balance"].as_i64().unwrap_or(0);
                    doc["balance"] = json!(balance + data["delta"].as_i64().unwrap());
                }
                "Closed" => {
                    balances.remove(&stream);
                }
                _ => {}
            }
        }
        if event.event_type == "Deposited" {
            let owner = data["owner"].as_str().unwrap().to_owned();
            let (items, count) = recent.entry(owner).or_default();
            items.push(json!({"amount": data["amount"], "stream": stream}));
            if items.len() > 5 {
                items.remove(0);
            }
            *count += 1;
        }
    }
    let by_type = by_type
        .into_iter()
        .map(|(event_type, (count, amount))| {
            let doc =
                json!({"event_type": event_type, "count": count, "amount": amount.unwrap_or(0)});
            (event_type, doc)
        })
        .collect();
    let recent = recent
        .into_iter()
        .map(|(owner, (items, count))| (owner, json!({"items": items, "count": count})))
        .collect();
    [balances, by_type, recent]
}

/// Asserts two read models are equal, naming the first differing key.
pub fn assert_same(
    name: &str,
    actual: &BTreeMap<String, Value>,
    expected: &BTreeMap<String, Value>,
) {
    for (key, doc) in expected {
        assert_eq!(actual.get(key), Some(doc), "{name}: document {key}");
    }
    for key in actual.keys() {
        assert!(
            expected.contains_key(key),
            "{name}: unexpected document {key}"
        );
    }
}
