//! `proteus serve` on a JetStream cluster of three servers of the test's own, as a team runs
//! it once one NATS server is not enough: `--nats-replicas 3` creates every stream and bucket
//! with three replicas, and with the server leading a topic's partition killed (`SIGKILL`),
//! the instance goes on taking and serving that partition's events through the two left;
//! `migrate-topics` and `migrate` create their copies with the same flag, and
//! `migrate-topics --follow` copies every event onto a cluster being restarted; through a rolling
//! restart of the cluster, a consumer group's members process every event, a push group
//! delivers every event to its webhook, and appends with expected versions and a projection
//! over them lose nothing.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proteus_nats::test_support::PrivateNatsCluster;
use serde_json::{Value, json};

use crate::group_chaos::{Consumer, assert_every_event_processed};
use crate::support::{BINARY, Follower, ServerProcess, nats_url, run_cli};

/// How long the instance may take to serve a partition again once its leader is killed: the
/// stream elects a new leader seconds after the old one stops answering (4.2 to 8.4 s measured
/// on nats-server 2.12).
const FAILOVER_WAIT_S: u64 = 30;

/// `proteus serve` with `args`, which must refuse to start; its standard error.
fn refused_start(data_dir: &Path, args: &[&str]) -> String {
    let output = Command::new(BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .output()
        .unwrap();
    assert!(!output.status.success(), "proteus serve started");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Replicas JetStream cannot keep, or given without a store on NATS, stop the start with a
/// message saying so: 2, 4 (from the config file), 3 without NATS, and 3 on the shared single
/// server (older than 2.11 on the test machine: refused by Proteus; a newer one refuses
/// replicated streams without a cluster itself). `migrate` and `migrate-topics` refuse the
/// flag without a NATS target.
#[test]
fn replicas_that_cannot_be_kept_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = refused_start(
        dir.path(),
        &[
            "--storage-log",
            "nats://127.0.0.1:4222",
            "--nats-replicas",
            "2",
        ],
    );
    assert!(stderr.contains("must be 1, 3 or 5"), "{stderr}");
    let stderr = refused_start(dir.path(), &["--nats-replicas", "3"]);
    assert!(
        stderr.contains("--nats-replicas 3 is for NATS") && stderr.contains("--storage-log"),
        "{stderr}"
    );
    let stderr = refused_start(
        dir.path(),
        &["--storage-log", &nats_url(), "--nats-replicas", "3"],
    );
    assert!(stderr.contains("replicas"), "{stderr}");
    for command in ["migrate", "migrate-topics"] {
        let target = dir.path().join(format!("{command}-copy"));
        let (code, _, err) = run_cli(
            &[
                command,
                "--from",
                &format!("embedded:{}", dir.path().display()),
                "--to",
                &format!("embedded:{}", target.display()),
                "--nats-replicas",
                "3",
            ],
            None,
        );
        assert!(
            code != 0 && err.contains("--nats-replicas is for a NATS target"),
            "{command}: {err}"
        );
    }
    let config = dir.path().join("proteus.toml");
    std::fs::write(&config, "[storage]\nnats_replicas = 4\n").unwrap();
    let stderr = refused_start(dir.path(), &["--config", config.to_str().unwrap()]);
    assert!(stderr.contains("must be 1, 3 or 5"), "{stderr}");
}

/// Sends `request` until it succeeds, at most `FAILOVER_WAIT_S` (the instance answers 503
/// while the partition's stream has no leader); its JSON body.
fn until_served(what: &str, request: impl Fn() -> reqwest::blocking::RequestBuilder) -> Value {
    let deadline = Instant::now() + Duration::from_secs(FAILOVER_WAIT_S);
    loop {
        let answer = request().send();
        match answer {
            Ok(response) if response.status().is_success() => return response.json().unwrap(),
            Ok(response) => {
                let status = response.status();
                let body = response.text().unwrap_or_default();
                assert!(
                    status.as_u16() == 503 && Instant::now() < deadline,
                    "{what}: {status} {body}"
                );
            }
            Err(error) => assert!(Instant::now() < deadline, "{what}: {error}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A private cluster of three nats-servers and `proteus serve` with its log, event store and
/// groups on it, with 3 replicas of everything it creates. Dropped server first, cluster last.
struct ServedCluster {
    server: ServerProcess,
    _data_dir: tempfile::TempDir,
    cluster: PrivateNatsCluster,
    runtime: tokio::runtime::Runtime,
}

impl ServedCluster {
    fn start() -> ServedCluster {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let cluster = runtime.block_on(PrivateNatsCluster::start());
        let url = cluster.url();
        let data_dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start_with(
            data_dir.path(),
            &[
                "--storage-log",
                &url,
                "--event-store",
                &url,
                "--groups",
                &url,
                "--nats-replicas",
                "3",
            ],
            &[],
        );
        ServedCluster {
            server,
            _data_dir: data_dir,
            cluster,
            runtime,
        }
    }
}

/// An HTTP client whose calls give up after 10 s (a call during a failover may hang).
fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A rolling restart, as an upgrade of NATS does it: each server of `cluster` in turn is
/// killed a second after the previous one is back, stays down 3 s, starts again, and is waited
/// for until it holds `streams` again.
fn rolling_restart(
    runtime: &tokio::runtime::Runtime,
    cluster: &PrivateNatsCluster,
    streams: &[&str],
) {
    for node in 0..3 {
        std::thread::sleep(Duration::from_secs(1));
        cluster.kill(node);
        std::thread::sleep(Duration::from_secs(3));
        runtime.block_on(async {
            cluster.restart(node).await;
            for stream in streams {
                cluster.wait_until_current(stream).await;
            }
        });
    }
}

/// Events per batch `produce_while` writes.
const PRODUCER_BATCH: usize = 50;

/// Writes batches of `PRODUCER_BATCH` events `e0`, `e1`, … (seven partition keys) to topic
/// `orders` at `url`, a batch answered 503 sent again, until `running` is cleared; how many
/// events it wrote.
fn produce_while(url: &str, running: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let http = http_client();
        let mut batch = 0;
        while running.load(Ordering::SeqCst) {
            let events: Vec<Value> = (batch * PRODUCER_BATCH..(batch + 1) * PRODUCER_BATCH)
                .map(|i| json!({"specversion": "1.0", "id": format!("e{i}"), "source": "/it", "type": "t", "partitionkey": format!("k{}", i % 7), "data": {"i": i}}))
                .collect();
            let body = serde_json::to_vec(&events).unwrap();
            until_served(&format!("batch {batch}"), || {
                http.post(format!("{url}/v1/topics/orders/events"))
                    .header("content-type", "application/cloudevents-batch+json")
                    .body(body.clone())
            });
            batch += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        batch * PRODUCER_BATCH
    })
}

/// Creates topic `orders` of 2 partitions at `url` and its group `workers` with `group`.
fn put_topic_and_group(url: &str, group: Value) {
    let http = http_client();
    for (path, body) in [
        ("/v1/topics/orders", json!({"partitions": 2})),
        ("/v1/topics/orders/groups/workers", group),
    ] {
        let response = http.put(format!("{url}{path}")).json(&body).send().unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
    }
}

/// Writes with `produce_while` to topic `orders` of `served` through a rolling restart of its
/// cluster, then checks that group `workers` processed every event (`seen` holds the ids it
/// processed), printing the server's warnings if not.
fn produce_through_a_rolling_restart(served: &ServedCluster, seen: &Mutex<BTreeSet<String>>) {
    let producing = Arc::new(AtomicBool::new(true));
    let producer = produce_while(&served.server.url, producing.clone());
    rolling_restart(
        &served.runtime,
        &served.cluster,
        &["PROTEUS_orders_0", "PROTEUS_orders_1", "KV_PROTEUS_GROUPS"],
    );
    producing.store(false, Ordering::SeqCst);
    let events = producer.join().unwrap();
    assert!(
        events >= 10 * PRODUCER_BATCH,
        "only {events} events written"
    );
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_every_event_processed(&served.server.url, seen, events, Duration::from_secs(120))
    }));
    if let Err(panic) = checked {
        resume_with_server_warnings(&served.server, panic);
    }
}

/// Prints what the server warned about (it says why a group stalled), then goes on
/// panicking with `panic`.
fn resume_with_server_warnings(server: &ServerProcess, panic: Box<dyn std::any::Any + Send>) -> ! {
    for line in server.logs.lock().unwrap().iter() {
        if line.contains("WARN") || line.contains("ERROR") {
            eprintln!("server: {line}");
        }
    }
    std::panic::resume_unwind(panic);
}

/// `proteus serve --nats-replicas 3` with its log, event store and groups on a private
/// cluster: every stream and bucket it creates has 3 replicas; with the leader of a topic's
/// partition killed, an event of the same key is taken (after 503s while the stream elects a
/// leader) and both read back; the copy commands replicate what they create too.
#[test]
fn a_server_on_a_nats_cluster_replicates_and_survives_a_killed_leader() {
    let served = ServedCluster::start();
    let (runtime, cluster, server) = (&served.runtime, &served.cluster, &served.server);
    let url = cluster.url();
    let http = http_client();
    let created = http
        .put(format!("{}/v1/topics/orders", server.url))
        .json(&json!({"partitions": 2}))
        .send()
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let appended = http
        .post(format!(
            "{}/v1/streams/cart-1?expected_version=no_stream",
            server.url
        ))
        .json(&json!([{"type": "Added", "data": {"sku": "a"}}]))
        .send()
        .unwrap();
    assert!(appended.status().is_success(), "{}", appended.status());
    let group = http
        .put(format!("{}/v1/topics/orders/groups/billing", server.url))
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(group.status().as_u16(), 201);
    for stream in [
        "PROTEUS_orders_0",
        "PROTEUS_orders_1",
        "PROTEUS_ES_EVENTS",
        "PROTEUS_ES_SNAPSHOTS",
        "KV_PROTEUS_GROUPS",
        "KV_PROTEUS_LEASES",
    ] {
        assert_eq!(
            runtime.block_on(cluster.replicas_of(stream)),
            3,
            "stream {stream}"
        );
    }

    let publish = |id: &str| {
        let id = id.to_owned();
        let (http, server) = (&http, &server);
        move || {
            http.post(format!("{}/v1/topics/orders/events", server.url))
                .header("content-type", "application/cloudevents+json")
                .json(&json!({
                    "specversion": "1.0", "id": id, "source": "/it", "type": "OrderPlaced",
                    "partitionkey": "k", "data": {"n": 1}
                }))
        }
    };
    let before = until_served("the first event", publish("before"));
    let partition = before["results"][0]["partition"].as_u64().unwrap();
    let leader = runtime.block_on(cluster.leader_of(&format!("PROTEUS_orders_{partition}")));
    cluster.kill(leader);
    let after = until_served("an event with the leader down", publish("after"));
    assert_eq!(
        after["results"][0]["partition"], before["results"][0]["partition"],
        "the same key"
    );
    let read = until_served("reading the partition with the leader down", || {
        http.get(format!(
            "{}/v1/topics/orders/partitions/{partition}/events?from=0&limit=10",
            server.url
        ))
    });
    let ids: Vec<&str> = read["events"]
        .as_array()
        .unwrap_or_else(|| panic!("events in {read}"))
        .iter()
        .map(|record| record["event"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["before", "after"], "{read}");

    // The copy commands create what they copy with the same replicas. They run as soon as the
    // killed server is back, while it may still be catching up: a read consumer placed on it
    // waits for it rather than see fewer events, and a new consumer's first fetch answered
    // 503 is asked again inside the adapters.
    runtime.block_on(cluster.restart(leader));
    let (code, out, err) = run_cli(
        &[
            "migrate-topics",
            "--from",
            &url,
            "--to",
            &url,
            "--to-prefix",
            "COPY",
            "--topic",
            "orders",
            "--nats-replicas",
            "3",
        ],
        None,
    );
    assert_eq!(code, 0, "migrate-topics: {out}{err}");
    let (code, out, err) = run_cli(
        &[
            "migrate",
            "--from",
            &url,
            "--to",
            &url,
            "--to-prefix",
            "COPY_ES",
            "--nats-replicas",
            "3",
        ],
        None,
    );
    assert_eq!(code, 0, "migrate: {out}{err}");
    for stream in ["COPY_orders_0", "COPY_orders_1", "COPY_ES_EVENTS"] {
        assert_eq!(
            runtime.block_on(cluster.replicas_of(stream)),
            3,
            "stream {stream}"
        );
    }
}

/// A consumer group through a rolling restart of the cluster, as a team upgrading NATS does
/// one: two `proteus consume` members of a group of a 2-partition topic while a producer
/// writes and each of the three servers is killed in turn, started again and caught up, so
/// every stream and bucket loses its leader at some point. The members ride out the 503s
/// (`--unavailable-wait-max-ms`), the producer retries its batches, and in the end every event
/// was processed and the group's committed positions cover both partitions: nothing skipped
/// while a restarted server catches up.
#[test]
fn a_group_on_a_nats_cluster_processes_every_event_through_a_rolling_restart() {
    let served = ServedCluster::start();
    let url = &served.server.url;
    put_topic_and_group(
        url,
        json!({"session_timeout_ms": 3_000, "ack_wait_ms": 5_000}),
    );
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let _consumers: Vec<Consumer> = (0..2).map(|_| Consumer::start(url, seen.clone())).collect();
    produce_through_a_rolling_restart(&served, &seen);
}

/// A push group through a rolling restart: the server itself consumes group `workers` and POSTs
/// each event to a webhook of the test's own while the producer writes and each server is
/// killed, restarted and caught up in turn. Every event reaches the webhook (at least once)
/// and the committed positions cover both partitions.
#[test]
fn a_push_group_on_a_nats_cluster_delivers_every_event_through_a_rolling_restart() {
    let served = ServedCluster::start();
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let webhook = served.runtime.block_on(start_webhook(seen.clone()));
    put_topic_and_group(
        &served.server.url,
        json!({"session_timeout_ms": 3_000, "ack_wait_ms": 5_000, "push": {"url": webhook}}),
    );
    produce_through_a_rolling_restart(&served, &seen);
}

/// Moving topics onto a cluster while it is upgraded: `migrate-topics --follow` copies a
/// running embedded server's topic to the cluster (`--nats-replicas 3`) while a producer
/// writes to the server and each nats-server is killed, restarted and caught up in turn. The
/// follower rides out the elections, and its last pass at the cut-over (Ctrl-C) verifies every
/// event at its offset.
#[test]
fn following_a_server_into_a_nats_cluster_copies_every_event_through_a_rolling_restart() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cluster = runtime.block_on(PrivateNatsCluster::start());
    let dir = tempfile::tempdir().unwrap();
    let source = ServerProcess::start(dir.path());
    let response = http_client()
        .put(format!("{}/v1/topics/orders", source.url))
        .json(&json!({"partitions": 2}))
        .send()
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let producing = Arc::new(AtomicBool::new(true));
    let producer = produce_while(&source.url, producing.clone());
    let follower = Follower::start(
        "migrate-topics",
        &[
            "--from",
            &source.url,
            "--to",
            &cluster.url(),
            "--nats-replicas",
            "3",
        ],
    );
    rolling_restart(
        &runtime,
        &cluster,
        &["PROTEUS_orders_0", "PROTEUS_orders_1"],
    );
    producing.store(false, Ordering::SeqCst);
    let events = producer.join().unwrap();
    assert!(
        events >= 10 * PRODUCER_BATCH,
        "only {events} events written"
    );
    let out = follower.interrupt();
    assert!(
        out.contains(&format!("verified: {events} events with the same offsets")),
        "{events} events written; {out}"
    );
}

/// A webhook on a port of its own that puts the `ce-id` of every event POSTed to it in `seen`
/// and answers 204; its URL. It runs until the runtime is dropped.
async fn start_webhook(seen: Arc<Mutex<BTreeSet<String>>>) -> String {
    let receive = move |headers: axum::http::HeaderMap| async move {
        if let Some(id) = headers.get("ce-id").and_then(|id| id.to_str().ok()) {
            seen.lock().unwrap().insert(id.to_owned());
        }
        axum::http::StatusCode::NO_CONTENT
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/hook", axum::routing::post(receive));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Event sourcing through a rolling restart of the cluster: a writer appends to 20 `order-*`
/// streams with exact expected versions (a 503 retried with the same event id, which the store
/// recognises), a projection sums them, and each server is killed, restarted and caught up in
/// turn. In the end every stream holds each of its events once at consecutive versions, in the
/// order written, and the projection's totals match.
#[test]
fn event_sourcing_on_a_nats_cluster_keeps_every_event_through_a_rolling_restart() {
    const STREAMS: usize = 20;
    let served = ServedCluster::start();
    let (runtime, cluster, server) = (&served.runtime, &served.cluster, &served.server);
    let http = http_client();
    let status = http
        .put(format!("{}/v1/projections/totals", server.url))
        .json(&json!({
            "source": {"category": "order"},
            "state": {"key": "stream", "handlers": {
                "Placed": {"increment": {"total": {"path": "/data/n"}}}}}
        }))
        .send()
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    let restarting = Arc::new(AtomicBool::new(true));
    // Appends until the rolling restart is over; the ids appended to each stream, in order,
    // and the last position.
    let writer = {
        let (url, restarting) = (server.url.clone(), restarting.clone());
        std::thread::spawn(move || {
            let http = http_client();
            let mut appended: Vec<Vec<String>> = vec![Vec::new(); STREAMS];
            let mut last_position = 0;
            let mut n = 0;
            while restarting.load(Ordering::SeqCst) {
                let stream = n % STREAMS;
                let (id, expected) = (format!("e{n}"), appended[stream].len() as i64 - 1);
                let expected = if expected < 0 {
                    "no_stream".to_owned()
                } else {
                    expected.to_string()
                };
                let answer = until_served(&format!("append {id}"), || {
                    http.post(format!(
                        "{url}/v1/streams/order-{stream}?expected_version={expected}"
                    ))
                    .json(&json!([{"id": id, "type": "Placed", "data": {"n": 1}}]))
                });
                last_position = answer["last_position"].as_u64().unwrap();
                appended[stream].push(id);
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (appended, last_position)
        })
    };
    rolling_restart(
        runtime,
        cluster,
        &["PROTEUS_ES_EVENTS", "KV_PROTEUS_GROUPS"],
    );
    restarting.store(false, Ordering::SeqCst);
    let (appended, last_position) = writer.join().unwrap();
    assert!(appended.iter().all(|ids| ids.len() >= 5), "{appended:?}");
    for (stream, ids) in appended.iter().enumerate() {
        let page = until_served(&format!("reading order-{stream}"), || {
            http.get(format!(
                "{}/v1/streams/order-{stream}?limit=10000",
                server.url
            ))
        });
        let stored: Vec<(u64, &str)> = page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["version"].as_u64().unwrap(), e["id"].as_str().unwrap()))
            .collect();
        let written: Vec<(u64, &str)> = ids
            .iter()
            .enumerate()
            .map(|(version, id)| (version as u64, id.as_str()))
            .collect();
        assert_eq!(stored, written, "order-{stream}");
        let doc = until_served(&format!("the total of order-{stream}"), || {
            http.get(format!(
                "{}/v1/projections/totals/docs/order-{stream}?wait_for_position={last_position}&wait_ms=10000",
                server.url
            ))
        });
        assert_eq!(doc["doc"]["total"], ids.len(), "order-{stream}: {doc}");
    }
}
