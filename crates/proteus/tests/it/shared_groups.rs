//! Three `proteus serve` processes sharing NATS JetStream (the log) and a shared group store
//! serve one consumer group together: members joined through different instances split its
//! partitions, every event is consumed once, and when the group's coordinator is killed -9
//! another instance takes the group over and the survivors keep consuming without an
//! acknowledged event coming back. Run twice: groups and their coordinator leases in
//! PostgreSQL, then both in NATS (a deployment with no other shared backend).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::support::{ServerProcess, delete_streams, drop_schema, nats_url, postgres_url};

/// A NATS stream prefix and two PostgreSQL schemas (metadata, groups) of the test's own,
/// removed when it ends (even when it fails).
struct Namespaces {
    prefix: String,
    metadata_schema: String,
    groups_schema: String,
}

impl Namespaces {
    fn new() -> Namespaces {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let id = format!("{}_{nanos}", std::process::id());
        Namespaces {
            prefix: format!("ITGROUPS{}", id.replace('_', "x")),
            metadata_schema: format!("it_groups_kv_{id}"),
            groups_schema: format!("it_groups_{id}"),
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for schema in [&self.metadata_schema, &self.groups_schema] {
            drop_schema(schema);
        }
        delete_streams(nats_url(), self.prefix.clone());
        // Groups in NATS: the key-value buckets' streams.
        delete_streams(nats_url(), format!("KV_{}", self.prefix));
    }
}

/// Where the instances keep their groups (and the groups' coordinator leases).
#[derive(Clone, Copy, Debug)]
enum GroupBackend {
    /// Groups in PostgreSQL, leases in the PostgreSQL metadata store.
    Postgres,
    /// Groups and leases in NATS key-value buckets.
    Nats,
}

fn start(data_dir: &std::path::Path, ns: &Namespaces, backend: GroupBackend) -> ServerProcess {
    let (nats, postgres) = (nats_url(), postgres_url());
    let mut args = vec!["--storage-log", &nats, "--storage-log-prefix", &ns.prefix];
    match backend {
        GroupBackend::Postgres => args.extend([
            "--metadata",
            &postgres,
            "--metadata-schema",
            &ns.metadata_schema,
            "--groups",
            &postgres,
            "--groups-schema",
            &ns.groups_schema,
        ]),
        GroupBackend::Nats => args.extend(["--groups", &nats, "--groups-prefix", &ns.prefix]),
    }
    ServerProcess::start_with(data_dir, &args, &[])
}

const GROUP: &str = "/v1/topics/orders/groups/billing";

/// One member, talking to the group through one instance.
struct Member {
    id: String,
    server: String,
    generation: u64,
    partitions: Vec<u64>,
}

impl Member {
    fn join(http: &reqwest::blocking::Client, server: &str, id: &str) -> Member {
        let mut member = Member {
            id: id.to_owned(),
            server: server.to_owned(),
            generation: 0,
            partitions: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !member.rejoin(http) {
            assert!(
                Instant::now() < deadline,
                "{id} could not join through {server}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        member
    }

    /// Joins (again) with the same id; false when the instance answered 503 (retry).
    fn rejoin(&mut self, http: &reqwest::blocking::Client) -> bool {
        let response = http
            .post(format!("{}{GROUP}/members", self.server))
            .json(&json!({"member_id": self.id}))
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().unwrap_or_default();
        if status == 503 {
            return false;
        }
        assert_eq!(status, 201, "join of {}: {body}", self.id);
        self.update(&body);
        true
    }

    fn update(&mut self, assignment: &Value) {
        self.generation = assignment["generation"].as_u64().unwrap();
        self.partitions = assignment["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
    }

    fn heartbeat(&mut self, http: &reqwest::blocking::Client) {
        let response = http
            .post(format!(
                "{}{GROUP}/members/{}/heartbeat",
                self.server, self.id
            ))
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        self.update(&response.json().unwrap());
    }

    /// Pulls and acks what it got; returns the (id, acked) pairs delivered. Handles the
    /// coordinator moving: 503 → retry later (a coordinator that lost its lease included),
    /// 404 unknown-member → rejoin, 409 → heartbeat.
    fn consume_once(&mut self, http: &reqwest::blocking::Client) -> Vec<(String, bool)> {
        let response = http
            .post(format!("{}{GROUP}/members/{}/pull", self.server, self.id))
            .json(&json!({"max_events": 20, "wait_ms": 300}))
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().unwrap_or_default();
        match status {
            200 => {}
            404 => {
                self.rejoin(http);
                return Vec::new();
            }
            409 | 503 => {
                std::thread::sleep(Duration::from_millis(200));
                return Vec::new();
            }
            other => panic!("pull by {}: {other} {body}", self.id),
        }
        self.update(&body);
        let events = body["events"].as_array().unwrap();
        if events.is_empty() {
            return Vec::new();
        }
        let positions: Vec<&str> = events
            .iter()
            .map(|e| e["position"].as_str().unwrap())
            .collect();
        let ack = http
            .post(format!("{}{GROUP}/members/{}/ack", self.server, self.id))
            .json(&json!({"generation": self.generation, "positions": positions}))
            .send()
            .unwrap();
        let acked = ack.status().as_u16() == 200;
        events
            .iter()
            .map(|e| (e["event"]["id"].as_str().unwrap().to_owned(), acked))
            .collect()
    }
}

fn publish(http: &reqwest::blocking::Client, server: &str, ids: &[String]) {
    let batch: Vec<Value> = ids
        .iter()
        .map(|id| {
            json!({"specversion": "1.0", "id": id, "source": "/it", "type": "OrderPlaced",
                   "partitionkey": id, "data": {"id": id}})
        })
        .collect();
    let response = http
        .post(format!("{server}/v1/topics/orders/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .json(&batch)
        .send()
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

/// Consumes with every member until `wanted` ids were all delivered, or panics after `within`.
/// Fails on a delivery of an id whose ack had returned 200 (acknowledged: never again).
fn consume_all(
    http: &reqwest::blocking::Client,
    members: &mut [Member],
    wanted: &BTreeSet<String>,
    acked: &mut BTreeSet<String>,
    deliveries: &mut BTreeMap<String, usize>,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    while !wanted.iter().all(|id| acked.contains(id)) {
        assert!(
            Instant::now() < deadline,
            "not consumed in {within:?}: {:?}",
            wanted.difference(acked).collect::<Vec<_>>()
        );
        for member in members.iter_mut() {
            for (id, ack_ok) in member.consume_once(http) {
                assert!(
                    !acked.contains(&id),
                    "{id} was delivered again to {} after its ack returned",
                    member.id
                );
                *deliveries.entry(id.clone()).or_default() += 1;
                if ack_ok {
                    acked.insert(id);
                }
            }
        }
    }
}

#[test]
fn three_instances_share_one_consumer_group_in_postgres() {
    three_instances_share_one_consumer_group(GroupBackend::Postgres);
}

#[test]
fn three_instances_share_one_consumer_group_in_nats() {
    three_instances_share_one_consumer_group(GroupBackend::Nats);
}

fn three_instances_share_one_consumer_group(backend: GroupBackend) {
    let ns = Namespaces::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut servers: Vec<ServerProcess> =
        dirs.iter().map(|d| start(d.path(), &ns, backend)).collect();
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(40))
        .build()
        .unwrap();

    let status = http
        .put(format!("{}/v1/topics/orders", urls[0]))
        .json(&json!({"partitions": 6}))
        .send()
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 201);
    // Created through A: A takes the group's lease and coordinates it.
    let response = http
        .put(format!("{}{GROUP}", urls[0]))
        .json(&json!({"session_timeout_ms": 6000}))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);

    // Any instance lists it, from the shared store.
    let listed: Value = http
        .get(format!("{}/v1/topics/orders/groups", urls[2]))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(listed["groups"][0]["group"], "billing", "{listed}");

    // A request that was already forwarded once is not forwarded again.
    let response = http
        .get(format!("{}{GROUP}", urls[1]))
        .header("proteus-forwarded-by", "test")
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let problem: Value = response.json().unwrap();
    assert_eq!(
        problem["type"], "/problems/coordinator-unavailable",
        "{problem}"
    );

    // Three members, one through each instance, split the six partitions.
    let mut members: Vec<Member> = ["member-a", "member-b", "member-c"]
        .iter()
        .zip(&urls)
        .map(|(id, url)| Member::join(&http, url, id))
        .collect();
    for member in &mut members {
        member.heartbeat(&http);
    }
    let mut owned = BTreeSet::new();
    for member in &members {
        assert!(
            !member.partitions.is_empty(),
            "{} got no partition",
            member.id
        );
        assert_eq!(
            member.partitions.len(),
            2,
            "{}: {:?}",
            member.id,
            member.partitions
        );
        for partition in &member.partitions {
            assert!(
                owned.insert(*partition),
                "partition {partition} owned twice"
            );
        }
    }
    assert_eq!(owned, (0..6).collect::<BTreeSet<u64>>());
    // Every instance describes the same group: the coordinator's.
    let described: Value = http
        .get(format!("{}{GROUP}", urls[2]))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        described["members"].as_array().unwrap().len(),
        3,
        "{described}"
    );

    // Events published through B are consumed once across the members.
    let first: Vec<String> = (0..60).map(|i| format!("order-{i}")).collect();
    publish(&http, &urls[1], &first);
    let mut acked = BTreeSet::new();
    let mut deliveries = BTreeMap::new();
    consume_all(
        &http,
        &mut members,
        &first.iter().cloned().collect(),
        &mut acked,
        &mut deliveries,
        Duration::from_secs(30),
    );
    assert!(
        deliveries.values().all(|&count| count == 1),
        "some events were delivered twice: {deliveries:?}"
    );
    assert_eq!(deliveries.len(), 60);

    // The coordinator dies; its member with it. Another instance takes the group over once the
    // lease expires, and the survivors rejoin there and consume what follows.
    assert!(
        servers[0]
            .log_text()
            .contains("coordinating the group here")
    );
    servers[0].kill_9();
    members.remove(0);
    let killed = Instant::now();
    let second: Vec<String> = (60..90).map(|i| format!("order-{i}")).collect();
    publish(&http, &urls[1], &second);
    consume_all(
        &http,
        &mut members,
        &second.iter().cloned().collect(),
        &mut acked,
        &mut deliveries,
        Duration::from_secs(45),
    );
    let took_over = killed.elapsed();
    assert!(
        servers[1]
            .log_text()
            .contains("coordinating the group here")
            || servers[2]
                .log_text()
                .contains("coordinating the group here"),
        "no instance took the group over"
    );
    for member in &mut members {
        member.heartbeat(&http);
    }
    let owned: BTreeSet<u64> = members
        .iter()
        .flat_map(|m| m.partitions.iter().copied())
        .collect();
    assert_eq!(owned, (0..6).collect::<BTreeSet<u64>>());
    assert!(
        members.iter().all(|m| m.partitions.len() == 3),
        "{:?}",
        members.iter().map(|m| &m.partitions).collect::<Vec<_>>()
    );
    eprintln!("takeover and catch-up took {took_over:?}");
    assert!(took_over < Duration::from_secs(45));
    drop(servers);
}
