//! Several `proteus serve` processes sharing one PostgreSQL (or NATS JetStream) event store
//! behave as one: what one appends the others read and wait for, expected versions hold across
//! them, and an append acknowledged by one survives its kill -9.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::support::{ServerProcess, delete_streams, drop_schema, nats_url, postgres_url};

/// A schema of its own, dropped when the test ends (even when it fails).
struct Schema(String);

impl Schema {
    fn new() -> Schema {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        Schema(format!("it_shared_{}_{nanos}", std::process::id()))
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        drop_schema(&self.0);
    }
}

fn start(data_dir: &std::path::Path, schema: &Schema) -> ServerProcess {
    ServerProcess::start_with(
        data_dir,
        &[
            "--event-store",
            &postgres_url(),
            "--event-store-schema",
            &schema.0,
        ],
        &[],
    )
}

fn append(
    http: &reqwest::blocking::Client,
    server: &str,
    stream: &str,
    expected: &str,
) -> (u16, Value) {
    let response = http
        .post(format!(
            "{server}/v1/streams/{stream}?expected_version={expected}"
        ))
        .json(&json!([{"type": "Deposited", "data": {"amount": 5}}]))
        .send()
        .unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

fn read_all(http: &reqwest::blocking::Client, server: &str, from: u64, wait_ms: u64) -> Value {
    http.get(format!(
        "{server}/v1/streams/$all?from={from}&wait_ms={wait_ms}"
    ))
    .send()
    .unwrap()
    .json()
    .unwrap()
}

/// What instances sharing one event store must show: `waiting`, waiting at the head of `$all`,
/// is woken by an append through `writer`; then `other` appends at version 0 and the writer's
/// stale expectation of version 0 is refused with the actual version.
fn shared_appends_behave_as_one(
    http: &reqwest::blocking::Client,
    writer: &str,
    waiting: &str,
    other: &str,
) {
    let head = read_all(http, waiting, 0, 0)["head_position"]
        .as_u64()
        .unwrap_or(0);
    let waiter = {
        let (http, url) = (http.clone(), waiting.to_owned());
        std::thread::spawn(move || read_all(&http, &url, head + 1, 20_000))
    };
    std::thread::sleep(Duration::from_millis(300));
    let (status, first) = append(http, writer, "acct-1", "no_stream");
    assert_eq!(status, 201, "{first}");
    let seen = waiter.join().unwrap();
    let events = seen["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{seen}");
    assert_eq!(events[0]["stream"], "acct-1");
    assert_eq!(events[0]["position"], first["first_position"]);

    let (status, body) = append(http, other, "acct-1", "0");
    assert_eq!(status, 201, "{body}");
    let (status, conflict) = append(http, writer, "acct-1", "0");
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["actual_version"], 1);
}

#[test]
fn three_instances_share_one_postgres_event_store() {
    let schema = Schema::new();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut servers: Vec<ServerProcess> = dirs.iter().map(|d| start(d.path(), &schema)).collect();
    let http = http_client();
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();

    shared_appends_behave_as_one(&http, &urls[0], &urls[1], &urls[2]);

    // An append acknowledged by A survives A's kill -9; B and a restarted A read it.
    let (status, acked) = append(&http, &urls[0], "acct-2", "no_stream");
    assert_eq!(status, 201, "{acked}");
    servers[0].kill_9();
    let stream: Value = http
        .get(format!("{}/v1/streams/acct-2", urls[1]))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(stream["events"].as_array().unwrap().len(), 1, "{stream}");
    servers[0] = start(dirs[0].path(), &schema);
    let feed = read_all(&http, &servers[0].url, 0, 0);
    let streams: Vec<&str> = feed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["stream"].as_str().unwrap())
        .collect();
    assert_eq!(streams, ["acct-1", "acct-1", "acct-2"], "{feed}");
}

/// With every store on a shared backend no embedded store makes the data directory, yet the
/// instance id lives there: the server makes it (it used to stop at start-up, unable to write
/// `instance.id` into a directory that did not exist).
#[test]
fn a_server_with_every_store_shared_makes_its_data_directory() {
    let schema = Schema::new();
    let prefix = format!("ITDIR{}", std::process::id());
    struct Streams(String);
    impl Drop for Streams {
        fn drop(&mut self) {
            delete_streams(nats_url(), self.0.clone());
        }
    }
    let _streams = Streams(prefix.clone());
    let parent = tempfile::tempdir().unwrap();
    let data_dir = parent.path().join("not").join("yet");
    let postgres = postgres_url();
    let nats = nats_url();
    let mut args = vec!["--storage-log", &nats, "--storage-log-prefix", &prefix];
    let flags: Vec<(String, String)> = ["event-store", "read-models", "metadata", "groups"]
        .iter()
        .map(|store| (format!("--{store}"), format!("--{store}-schema")))
        .collect();
    for (store, schema_flag) in &flags {
        args.extend([store.as_str(), &postgres, schema_flag.as_str(), &schema.0]);
    }
    let server = ServerProcess::start_with(&data_dir, &args, &[]);
    let id = std::fs::read_to_string(data_dir.join("instance.id")).unwrap();
    assert_eq!(id.trim().len(), 32, "{id:?}");
    drop(server);

    // A data directory that cannot be made is named, with the flag that picks another.
    let blocker = parent.path().join("a-file");
    std::fs::write(&blocker, "").unwrap();
    let output = Command::new(crate::support::BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(blocker.join("data"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot create the data directory") && stderr.contains("--data-dir"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_postgres_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(crate::support::BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--event-store", "postgres://postgres@127.0.0.1:1/test"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot open the PostgreSQL event store"),
        "{stderr}"
    );
    let output = Command::new(crate::support::BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--event-store", "mysql://x"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("event_store must be 'embedded', a PostgreSQL URL")
            && stderr.contains("or a NATS URL (nats://HOST:PORT)"),
        "{stderr}"
    );
}

/// With `--read-models postgres://…` projections keep their read models (and definitions and
/// checkpoints) in PostgreSQL: a new instance, with an empty data directory, serves them.
#[test]
fn read_models_in_postgres_outlive_the_instance_that_built_them() {
    let events = Schema::new();
    let models = Schema(format!("{}_models", events.0));
    let start = |dir: &std::path::Path| {
        ServerProcess::start_with(
            dir,
            &[
                "--event-store",
                &postgres_url(),
                "--event-store-schema",
                &events.0,
                "--read-models",
                &postgres_url(),
                "--read-models-schema",
                &models.0,
            ],
            &[],
        )
    };
    let http = http_client();
    let first_dir = tempfile::tempdir().unwrap();
    let mut first = start(first_dir.path());
    let status = http
        .put(format!("{}/v1/projections/balances", first.url))
        .json(&json!({
            "source": {"category": "acct"},
            "state": {"key": "stream", "handlers": {
                "Deposited": {"increment": {"balance": {"path": "/data/amount"}}}}}
        }))
        .send()
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    let mut last_position = 0;
    for amount in [5, 7] {
        let response = http
            .post(format!("{}/v1/streams/acct-1", first.url))
            .json(&json!({"type": "Deposited", "data": {"amount": amount}}))
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        let body: Value = response.json().unwrap();
        last_position = body["last_position"].as_u64().unwrap();
    }
    let doc = |url: &str| -> Value {
        http.get(format!(
            "{url}/v1/projections/balances/docs/acct-1?wait_for_position={last_position}&wait_ms=10000"
        ))
        .send()
        .unwrap()
        .json()
        .unwrap()
    };
    let built = doc(&first.url);
    assert_eq!(built["doc"]["balance"], 12, "{built}");
    first.kill_9();

    let second_dir = tempfile::tempdir().unwrap();
    let second = start(second_dir.path());
    let served = doc(&second.url);
    assert_eq!(served["doc"]["balance"], 12, "{served}");
    drop(models);
}

/// With read models and metadata in PostgreSQL, instances share projections live: one created
/// through A is served through B at once (no restart), runs on exactly one of them, and moves
/// to B when A dies.
#[test]
fn projections_are_shared_live_and_run_on_one_instance() {
    let events = Schema::new();
    let models = Schema(format!("{}_models", events.0));
    let metadata = Schema(format!("{}_meta", events.0));
    let start = |dir: &std::path::Path| {
        ServerProcess::start_with(
            dir,
            &[
                "--event-store",
                &postgres_url(),
                "--event-store-schema",
                &events.0,
                "--read-models",
                &postgres_url(),
                "--read-models-schema",
                &models.0,
                "--metadata",
                &postgres_url(),
                "--metadata-schema",
                &metadata.0,
            ],
            &[],
        )
    };
    let http = http_client();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = start(a_dir.path());
    let b = start(b_dir.path());
    let status = http
        .put(format!("{}/v1/projections/balances", a.url))
        .json(&json!({
            "source": {"category": "acct"},
            "state": {"key": "stream", "handlers": {
                "Deposited": {"increment": {"balance": {"path": "/data/amount"}}}}}
        }))
        .send()
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    let deposit = |url: &str, amount: u64| -> u64 {
        let response = http
            .post(format!("{url}/v1/streams/acct-1"))
            .json(&json!({"type": "Deposited", "data": {"amount": amount}}))
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        response.json::<Value>().unwrap()["last_position"]
            .as_u64()
            .unwrap()
    };
    let doc_within = |url: &str, position: u64, wait_ms: u64| -> Value {
        http.get(format!(
            "{url}/v1/projections/balances/docs/acct-1?wait_for_position={position}&wait_ms={wait_ms}"
        ))
        .send()
        .unwrap()
        .json()
        .unwrap()
    };
    let doc = |url: &str, position: u64| doc_within(url, position, 10_000);
    deposit(&a.url, 5);
    let position = deposit(&b.url, 7);
    // B serves the projection A created, without a restart.
    assert_eq!(doc(&b.url, position)["doc"]["balance"], 12);
    let runner = |url: &str| -> Value {
        http.get(format!("{url}/v1/projections/balances"))
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap()["runner"]
            .clone()
    };
    let first_runner = runner(&a.url);
    assert!(first_runner.is_string(), "{first_runner}");
    assert_eq!(runner(&b.url), first_runner);

    // A dies; B keeps the read model up to date (after the lease expires if A ran it: within
    // the lease's 10 s plus a definitions refresh, then the catch-up).
    a.kill_9();
    let position = deposit(&b.url, 30);
    let after_takeover = doc_within(&b.url, position, 25_000);
    assert_eq!(after_takeover["doc"]["balance"], 42, "{after_takeover}");
    drop((models, metadata));
}

/// JetStream streams `<prefix>_EVENTS` and `<prefix>_SNAPSHOTS` of their own, deleted when the
/// test ends (even when it fails).
struct NatsStreams(String);

impl NatsStreams {
    fn new() -> NatsStreams {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        NatsStreams(format!("ITES{}x{nanos}", std::process::id()))
    }
}

impl Drop for NatsStreams {
    fn drop(&mut self) {
        delete_streams(nats_url(), self.0.clone());
    }
}

#[test]
fn two_instances_share_one_nats_event_store() {
    let streams = NatsStreams::new();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let servers: Vec<ServerProcess> = dirs
        .iter()
        .map(|d| serve_on_nats(d.path(), &streams, &[]))
        .collect();
    let http = http_client();
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();

    shared_appends_behave_as_one(&http, &urls[0], &urls[1], &urls[1]);
    let stream: Value = http
        .get(format!("{}/v1/streams/acct-1", urls[0]))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(stream["events"].as_array().unwrap().len(), 2, "{stream}");
}

/// A server whose event store is on NATS under `streams`' prefix, with `more_args`.
fn serve_on_nats(
    dir: &std::path::Path,
    streams: &NatsStreams,
    more_args: &[&str],
) -> ServerProcess {
    let url = nats_url();
    let mut args = vec!["--event-store", &url, "--event-store-prefix", &streams.0];
    args.extend_from_slice(more_args);
    ServerProcess::start_with(dir, &args, &[])
}

fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The value of the `/metrics` line of `name` for the store `prefix`.
fn store_metric(metrics: &str, name: &str, prefix: &str) -> f64 {
    let line_start = format!("{name}{{store=\"{prefix}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&line_start))
        .unwrap_or_else(|| panic!("no {line_start} in /metrics:\n{metrics}"))
        .parse()
        .unwrap()
}

#[test]
fn a_nats_id_cache_too_small_for_its_streams_reads_them_again_and_says_so() {
    let streams = NatsStreams::new();
    let dir = tempfile::tempdir().unwrap();
    let server = serve_on_nats(dir.path(), &streams, &["--nats-id-cache-events-max", "4"]);
    let http = http_client();
    let events = |stream: usize| {
        json!(
            [0, 1, 2].map(|i| json!({"id": format!("s{stream}-e{i}"), "type": "Noted", "data": i}))
        )
    };
    let append = |stream: usize| {
        let response = http
            .post(format!(
                "{}/v1/streams/noted-{stream}?expected_version=no_stream",
                server.url
            ))
            .json(&events(stream))
            .send()
            .unwrap();
        response.status().as_u16()
    };
    // Three ids a stream, four streams: more than the 4 ids the cache holds.
    for stream in 0..4 {
        assert_eq!(append(stream), 201, "stream {stream}");
    }
    // The first stream's ids were dropped; its retry reads them again and is recognised.
    assert_eq!(append(0), 200, "a retry after its ids were evicted");
    let metrics = crate::support::metrics_text(&http, &server.url);
    let metric = |name: &str| store_metric(&metrics, name, &streams.0);
    assert!(
        metric("proteus_eventstore_nats_id_cache_evicted_streams_total") >= 3.0,
        "{metrics}"
    );
    assert!(
        metric("proteus_eventstore_nats_id_history_reads_total") >= 1.0,
        "{metrics}"
    );
    assert!(
        metric("proteus_eventstore_nats_id_cache_events") <= 4.0,
        "{metrics}"
    );
}

/// Appends 5 events with ids `{tag}-{i}` to `stream` over HTTP; returns their ids.
fn append_five(
    http: &reqwest::blocking::Client,
    url: &str,
    stream: &str,
    tag: &str,
) -> Vec<String> {
    let events: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("{tag}-{i}"), "type": "Noted", "data": i}))
        .collect();
    let response = http
        .post(format!("{url}/v1/streams/{stream}"))
        .json(&events)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Reads `stream` (`$all` or one stream) over HTTP in pages of 4 from its start to its end,
/// going on from each page's `next_key`; returns the events' ids and the pages read.
fn read_in_pages_of_four(
    http: &reqwest::blocking::Client,
    url: &str,
    stream: &str,
    next_key: &str,
) -> (Vec<String>, usize) {
    read_in_pages(http, url, stream, next_key, "forward")
}

/// [`read_in_pages_of_four`] in `direction`: backward from the end to the start.
fn read_in_pages(
    http: &reqwest::blocking::Client,
    url: &str,
    stream: &str,
    next_key: &str,
    direction: &str,
) -> (Vec<String>, usize) {
    let mut from = if direction == "forward" {
        "0".to_owned()
    } else {
        "end".to_owned()
    };
    let (mut read, mut pages) = (Vec::new(), 0);
    loop {
        let page: Value = http
            .get(format!(
                "{url}/v1/streams/{stream}?from={from}&limit=4&direction={direction}"
            ))
            .send()
            .unwrap()
            .json()
            .unwrap();
        pages += 1;
        for event in page["events"].as_array().unwrap() {
            read.push(event["id"].as_str().unwrap().to_owned());
        }
        from = page[next_key].as_u64().unwrap().to_string();
        if page["is_end"].as_bool().unwrap() {
            return (read, pages);
        }
    }
}

/// Reading `$all`, then one long stream, page by page over HTTP from a store on NATS creates one
/// consumer for each, which every later page goes on with, and `/metrics` says so; so do
/// backward pages of `$all` and of the stream, which go on from what the previous page read.
#[test]
fn nats_feed_and_stream_pages_go_on_with_one_consumer_and_say_so() {
    let streams = NatsStreams::new();
    let dir = tempfile::tempdir().unwrap();
    let server = serve_on_nats(dir.path(), &streams, &[]);
    let http = http_client();
    let written: Vec<String> = (0..3)
        .flat_map(|s| append_five(&http, &server.url, &format!("noted-{s}"), &format!("s{s}")))
        .collect();
    // Pages of 4 over appends of 5: most pages stop inside an append.
    let (read, pages) = read_in_pages_of_four(&http, &server.url, "$all", "next_position");
    assert_eq!(read, written);
    assert_eq!(pages, 4);
    let metrics = crate::support::metrics_text(&http, &server.url);
    let metric = |name: &str| store_metric(&metrics, name, &streams.0);
    assert_eq!(
        metric("proteus_eventstore_nats_feed_read_consumers_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric("proteus_eventstore_nats_feed_reads_resumed_total"),
        3.0,
        "{metrics}"
    );

    // One stream of four appends of 5 read in pages of 4: the first page creates a consumer,
    // the next three go on with it, the last is within the last append (read with the end).
    let written: Vec<String> = (0..4)
        .flat_map(|a| append_five(&http, &server.url, "long-1", &format!("long-{a}")))
        .collect();
    let (read, pages) = read_in_pages_of_four(&http, &server.url, "long-1", "next_version");
    assert_eq!(read, written);
    assert_eq!(pages, 5);
    let metrics = crate::support::metrics_text(&http, &server.url);
    let metric = |name: &str| store_metric(&metrics, name, &streams.0);
    assert_eq!(
        metric("proteus_eventstore_nats_stream_read_consumers_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric("proteus_eventstore_nats_stream_reads_resumed_total"),
        3.0,
        "{metrics}"
    );

    // `$all` backward, from the end, in pages of 4: every page after the first starts from
    // the window the one before read; a new window (a consumer) only when one runs out.
    let (read, pages) = read_in_pages(&http, &server.url, "$all", "next_position", "backward");
    let (forward, _) = read_in_pages_of_four(&http, &server.url, "$all", "next_position");
    assert_eq!(read, forward.into_iter().rev().collect::<Vec<_>>());
    assert_eq!(pages, 9, "35 events");
    let metrics = crate::support::metrics_text(&http, &server.url);
    let metric = |name: &str| store_metric(&metrics, name, &streams.0);
    assert_eq!(
        metric("proteus_eventstore_nats_backward_feed_reads_resumed_total"),
        8.0,
        "{metrics}"
    );
    let windows = metric("proteus_eventstore_nats_backward_feed_read_consumers_total");
    assert!(
        (1.0..=2.0).contains(&windows),
        "{windows} windows: {metrics}"
    );

    // The long stream backward in pages of 4: the first page is within its last append, the
    // second reads the rest ahead (one consumer), the others go on from what it read.
    let (read, pages) = read_in_pages(&http, &server.url, "long-1", "next_version", "backward");
    assert_eq!(read, written.into_iter().rev().collect::<Vec<_>>());
    assert_eq!(pages, 5);
    let metrics = crate::support::metrics_text(&http, &server.url);
    let metric = |name: &str| store_metric(&metrics, name, &streams.0);
    assert_eq!(
        metric("proteus_eventstore_nats_backward_stream_reads_resumed_total"),
        4.0,
        "{metrics}"
    );
    assert_eq!(
        metric("proteus_eventstore_nats_backward_stream_read_consumers_total"),
        1.0,
        "{metrics}"
    );
}
