//! `proteus migrate`: an embedded event store copied to PostgreSQL with positions, versions and
//! tombstones kept and verified; a server on the copy serves the same history and continues it;
//! a second run resumes; `--follow` keeps the copy in sync with a running server. The same store
//! copied to NATS JetStream with versions, ids, order and tombstones kept (positions and times
//! are the server's), a second run resuming by version, and back from JetStream to an embedded
//! directory. A store on PostgreSQL, read from its schema directly, copied down to an embedded
//! directory with positions and times kept.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::support::{
    Follower, ServerProcess, delete_streams, drop_schema, nats_url, postgres_url, run_cli,
};

/// Schemas of their own, dropped when the test ends.
struct Schemas(Vec<String>);

impl Drop for Schemas {
    fn drop(&mut self) {
        for schema in &self.0 {
            drop_schema(schema);
        }
    }
}

fn psql_count(schema: &str) -> u64 {
    let output = Command::new("psql")
        .args([
            &postgres_url(),
            "-Atc",
            &format!("SELECT count(*) FROM {schema}.events"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn feed(http: &reqwest::blocking::Client, url: &str) -> Vec<Value> {
    let page: Value = http
        .get(format!("{url}/v1/streams/$all?from=0&limit=1000"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    page["events"].as_array().unwrap().clone()
}

/// Writes four appends to three streams of an embedded store in `dir`, snapshots one stream
/// and deletes another, then stops its server; returns the `$all` feed it served.
fn fill_source(http: &reqwest::blocking::Client, dir: &std::path::Path) -> Vec<Value> {
    fill_source_with(http, dir, &[])
}

/// [`fill_source`] through a server started with `args` (an event store on another backend).
fn fill_source_with(
    http: &reqwest::blocking::Client,
    dir: &std::path::Path,
    args: &[&str],
) -> Vec<Value> {
    let mut source = ServerProcess::start_with(dir, args, &[]);
    for (stream, events) in [
        (
            "order-1",
            json!([{"type": "Placed", "data": {"n": 1}}, {"type": "Paid", "data": {"n": 2}}]),
        ),
        (
            "order-2",
            json!([{"type": "Placed", "data": {"n": 3}, "metadata": {"by": "me"}}]),
        ),
        ("cart-9", json!([{"type": "Added", "data": {"sku": "a"}}])),
        ("order-1", json!([{"type": "Shipped", "data": {"n": 4}}])),
    ] {
        let status = http
            .post(format!("{}/v1/streams/{stream}", source.url))
            .json(&events)
            .send()
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 201);
    }
    put_snapshot(http, &source.url, "order-1", 1);
    let status = http
        .delete(format!("{}/v1/streams/cart-9", source.url))
        .send()
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    let original = feed(http, &source.url);
    assert_eq!(original.len(), 5);
    assert_eq!(source.terminate(), Some(0));
    original
}

/// The `total` of `stream` in the `totals` projection once it has read up to `position`.
fn total_of(http: &reqwest::blocking::Client, url: &str, stream: &str, position: u64) -> Value {
    let doc: Value = http
        .get(format!(
            "{url}/v1/projections/totals/docs/{stream}?wait_for_position={position}&wait_ms=10000"
        ))
        .send()
        .unwrap()
        .json()
        .unwrap();
    doc["doc"]["total"].clone()
}

/// Stores a snapshot of `stream` at `version` whose data names the version.
fn put_snapshot(http: &reqwest::blocking::Client, url: &str, stream: &str, version: u64) {
    let status = http
        .put(format!("{url}/v1/streams/{stream}/snapshot"))
        .json(&json!({"version": version, "type": "OrderState.v1", "data": {"at": version}}))
        .send()
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
}

/// The snapshot of `stream` a server serves: its version, type and data.
fn snapshot_of(http: &reqwest::blocking::Client, url: &str, stream: &str) -> Value {
    let snapshot: Value = http
        .get(format!("{url}/v1/streams/{stream}/snapshot"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    json!([snapshot["version"], snapshot["type"], snapshot["data"]])
}

/// On a server over a copy of [`fill_source`]'s store: the deleted stream answers 410 and an
/// snapshot of `order-1` is there and an append at its version continues it; returns the
/// append's answer.
fn deleted_stays_deleted_and_versions_continue(
    http: &reqwest::blocking::Client,
    url: &str,
) -> Value {
    let gone = http
        .get(format!("{url}/v1/streams/cart-9"))
        .send()
        .unwrap()
        .status();
    assert_eq!(gone.as_u16(), 410);
    assert_eq!(
        snapshot_of(http, url, "order-1"),
        json!([1, "OrderState.v1", {"at": 1}])
    );
    let appended: Value = http
        .post(format!("{url}/v1/streams/order-1?expected_version=2"))
        .json(&json!({"type": "Delivered", "data": {}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(appended["first_version"], 3, "{appended}");
    appended
}

/// Appends the event `order-3` of the follow tests through the server at `url`.
fn place_order_3(http: &reqwest::blocking::Client, url: &str) {
    let status = http
        .post(format!("{url}/v1/streams/order-3"))
        .json(&json!({"type": "Placed", "data": {}}))
        .send()
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 201);
}

#[test]
fn an_embedded_event_store_moves_to_postgres_and_stays_in_sync() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let (copy, followed) = (
        format!("it_migrate_{}_{nanos}", std::process::id()),
        format!("it_follow_{}_{nanos}", std::process::id()),
    );
    let _schemas = Schemas(vec![copy.clone(), followed.clone()]);
    let http = reqwest::blocking::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let original = fill_source(&http, dir.path());

    let from = format!("embedded:{}", dir.path().display());
    let mistyped = dir.path().join("typo");
    let migrate = |from: &str, schema: &str| {
        run_cli(
            &[
                "migrate",
                "--from",
                from,
                "--to",
                &postgres_url(),
                "--to-schema",
                schema,
            ],
            None,
        )
    };
    // A directory without an event store is refused, not "migrated" as zero events.
    let (code, _, err) = migrate(&format!("embedded:{}", mistyped.display()), &copy);
    assert_eq!(code, 1);
    assert!(
        err.contains("there is no embedded event store in") && err.contains("--data-dir"),
        "{err}"
    );
    assert!(!mistyped.exists());
    // Started on PostgreSQL before the copy, a server on the same data directory says that
    // the embedded events are not served and how to move them; once moved it says nothing.
    let on_postgres = [
        "--event-store",
        &postgres_url(),
        "--event-store-schema",
        &copy,
    ];
    let left_behind =
        "has an embedded event store (events up to position 5) that this server does not serve";
    let mut early = ServerProcess::start_with(dir.path(), &on_postgres, &[]);
    assert_eq!(early.terminate(), Some(0));
    let logs = early.log_text();
    assert!(
        logs.contains(left_behind)
            && logs.contains(&format!("proteus migrate --from {from} --to "))
            && logs.contains(&format!("--to-schema {copy}")),
        "{logs}"
    );
    let (code, out, err) = migrate(&from, &copy);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("copied 5 events of 3 streams (1 deleted, 1 snapshots copied)"),
        "{out}"
    );
    assert!(out.contains("verified: 5 events up to position"), "{out}");
    // A second run resumes after what was copied: nothing twice.
    let (code, out, err) = migrate(&from, &copy);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("copied 0 events of 0 streams (0 deleted, 0 snapshots copied)"),
        "{out}"
    );
    assert_eq!(psql_count(&copy), 5);
    // A stream deleted in the source after a copy is deleted in the copy by the next run,
    // though it copies no event.
    let mut source = ServerProcess::start(dir.path());
    let status = http
        .delete(format!("{}/v1/streams/order-2", source.url))
        .send()
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    assert_eq!(source.terminate(), Some(0));
    let (code, out, err) = migrate(&from, &copy);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("copied 0 events of 0 streams (1 deleted, 0 snapshots copied)"),
        "{out}"
    );

    let mut moved = ServerProcess::start_with(dir.path(), &on_postgres, &[]);
    assert_eq!(moved.terminate(), Some(0));
    assert!(
        !moved.log_text().contains(left_behind),
        "{}",
        moved.log_text()
    );

    // A server on the copy serves the same history and continues it.
    let target_dir = tempfile::tempdir().unwrap();
    let target = ServerProcess::start_with(
        target_dir.path(),
        &[
            "--event-store",
            &postgres_url(),
            "--event-store-schema",
            &copy,
        ],
        &[],
    );
    assert_eq!(feed(&http, &target.url), original);
    let appended = deleted_stays_deleted_and_versions_continue(&http, &target.url);
    let last = original.last().unwrap()["position"].as_u64().unwrap();
    assert!(
        appended["first_position"].as_u64().unwrap() > last,
        "{appended}"
    );
    drop(target);

    // --follow from a running server: a new event reaches the copy while it runs; a stream
    // deleted and a snapshot stored while following reach it when it is stopped.
    let source = ServerProcess::start(dir.path());
    let follower = Follower::start(
        "migrate",
        &[
            "--from",
            &source.url,
            "--to",
            &postgres_url(),
            "--to-schema",
            &followed,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    place_order_3(&http, &source.url);
    while psql_count(&followed) < 6 {
        assert!(Instant::now() < deadline, "the new event was not followed");
        std::thread::sleep(Duration::from_millis(100));
    }
    put_snapshot(&http, &source.url, "order-1", 2);
    let status = http
        .delete(format!("{}/v1/streams/order-3", source.url))
        .send()
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    let out = follower.interrupt();
    assert!(
        out.contains("copied 0 events of 0 streams (1 deleted, 1 snapshots copied)"),
        "{out}"
    );
    // Verified at the start (5 events) and again at the end, order-3's event included.
    assert!(out.contains("verified: 5 events"), "{out}");
    assert!(out.contains("verified: 6 events"), "{out}");
    drop(source);
    let followed_dir = tempfile::tempdir().unwrap();
    let copy = ServerProcess::start_with(
        followed_dir.path(),
        &[
            "--event-store",
            &postgres_url(),
            "--event-store-schema",
            &followed,
        ],
        &[],
    );
    let gone = http
        .get(format!("{}/v1/streams/order-3", copy.url))
        .send()
        .unwrap()
        .status();
    assert_eq!(gone.as_u16(), 410);
    assert_eq!(
        snapshot_of(&http, &copy.url, "order-1"),
        json!([2, "OrderState.v1", {"at": 2}])
    );
}

/// JetStream streams of their own, deleted when the test ends.
struct NatsStreams(String);

impl Drop for NatsStreams {
    fn drop(&mut self) {
        delete_streams(nats_url(), self.0.clone());
    }
}

/// What a copy to NATS keeps of an event: everything but its position and recording time.
fn content(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .map(|e| {
            let mut e = e.clone();
            let object = e.as_object_mut().unwrap();
            object.remove("position");
            object.remove("recorded_ms");
            e
        })
        .collect()
}

#[test]
fn an_embedded_event_store_moves_to_nats_with_versions_and_order_kept() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let streams = NatsStreams(format!("ITMIG{}x{nanos}", std::process::id()));
    let http = reqwest::blocking::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let original = fill_source(&http, dir.path());

    // A projection built on the embedded store, whose positions the NATS copy does not keep.
    let mut source = ServerProcess::start(dir.path());
    let status = http
        .put(format!("{}/v1/projections/totals", source.url))
        .json(&json!({
            "source": {"category": "order"},
            "state": {"key": "stream", "handlers": {
                "Placed": {"increment": {"total": {"path": "/data/n"}}},
                "Paid": {"increment": {"total": {"path": "/data/n"}}},
                "Shipped": {"increment": {"total": {"path": "/data/n"}}}}}
        }))
        .send()
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    let last = original.last().unwrap()["position"].as_u64().unwrap();
    assert_eq!(total_of(&http, &source.url, "order-1", last), json!(7));
    assert_eq!(source.terminate(), Some(0));

    let from = format!("embedded:{}", dir.path().display());
    let migrate = || {
        run_cli(
            &[
                "migrate",
                "--from",
                &from,
                "--to",
                &nats_url(),
                "--to-prefix",
                &streams.0,
                "--batch-events",
                "2",
            ],
            None,
        )
    };
    // A server on NATS with the same data directory warns of the embedded events until they
    // are moved.
    let on_nats = [
        "--event-store",
        &nats_url(),
        "--event-store-prefix",
        &streams.0,
    ];
    let left_behind = "that this server does not serve, since its event store is on NATS";
    let mut early = ServerProcess::start_with(dir.path(), &on_nats, &[]);
    assert_eq!(early.terminate(), Some(0));
    let logs = early.log_text();
    assert!(
        logs.contains(left_behind) && logs.contains(&format!("--to-prefix {}", streams.0)),
        "{logs}"
    );
    let (code, out, err) = migrate();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("copied 5 events of 3 streams (1 deleted, 1 snapshots copied)"),
        "{out}"
    );
    assert!(out.contains("verified: 5 events"), "{out}");
    assert!(out.contains("rebuild projections"), "{out}");
    // Over the copy, the projection sees that its checkpoint counts positions of another store
    // and stops, saying to rebuild it; rebuilt, it serves the same totals.
    let mut moved = ServerProcess::start_with(dir.path(), &on_nats, &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let status: Value = http
            .get(format!("{}/v1/projections/totals", moved.url))
            .send()
            .unwrap()
            .json()
            .unwrap();
        if status
            .to_string()
            .contains("proteus projection rebuild totals")
        {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the projection did not stop: {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(failed["state"], "failed", "{failed}");
    let status = http
        .post(format!("{}/v1/projections/totals/rebuild", moved.url))
        .send()
        .unwrap()
        .status();
    assert!(status.is_success(), "{status}");
    let copied = feed(&http, &moved.url);
    let last = copied.last().unwrap()["position"].as_u64().unwrap();
    assert_eq!(total_of(&http, &moved.url, "order-1", last), json!(7));
    assert_eq!(total_of(&http, &moved.url, "order-2", last), json!(3));
    assert_eq!(moved.terminate(), Some(0));
    assert!(
        !moved.log_text().contains(left_behind),
        "{}",
        moved.log_text()
    );

    // With read models in PostgreSQL, the projection defined in the embedded read-model store
    // is named with the command that creates it there.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let models = format!("it_migrate_models_{}_{nanos}", std::process::id());
    let _schemas = Schemas(vec![models.clone()]);
    let with_models = [
        "--event-store",
        &nats_url(),
        "--event-store-prefix",
        &streams.0,
        "--read-models",
        &postgres_url(),
        "--read-models-schema",
        &models,
    ];
    let mut shared_models = ServerProcess::start_with(dir.path(), &with_models, &[]);
    assert_eq!(shared_models.terminate(), Some(0));
    let logs = shared_models.log_text();
    assert!(
        logs.contains(
            "has 1 projection(s) in its embedded read-model store that this server does not serve"
        ) && logs.contains("proteus projection create totals --definition '{"),
        "{logs}"
    );
    // A second run finds every version there: nothing twice.
    let (code, out, err) = migrate();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("copied 0 events of 0 streams (0 deleted, 0 snapshots copied)"),
        "{out}"
    );
    assert!(out.contains("verified: 5 events"), "{out}");

    // A server on the copy serves the same streams, versions, ids and payloads in the same
    // order, the deleted stream stays deleted, and appends continue the versions.
    let target_dir = tempfile::tempdir().unwrap();
    let target = ServerProcess::start_with(
        target_dir.path(),
        &[
            "--event-store",
            &nats_url(),
            "--event-store-prefix",
            &streams.0,
        ],
        &[],
    );
    assert_eq!(content(&feed(&http, &target.url)), content(&original));
    deleted_stays_deleted_and_versions_continue(&http, &target.url);

    // The copy now holds an event the source lacks: verification says so.
    let (code, _, err) = migrate();
    assert_ne!(code, 0);
    assert!(err.contains("verification failed"), "{err}");
    assert!(
        err.contains("delete the target's JetStream streams"),
        "{err}"
    );
    // A target that is none of PostgreSQL, NATS or embedded is refused, naming each.
    let (code, _, err) = run_cli(
        &["migrate", "--from", &from, "--to", "redis://127.0.0.1:6379"],
        None,
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("--to must be a PostgreSQL URL") && err.contains("embedded:DIR"),
        "{err}"
    );

    // And back: the store on NATS, read from JetStream directly while a server serves it,
    // copied to an embedded directory with the NATS store's positions and times kept.
    let back = tempfile::tempdir().unwrap();
    let to_back = format!("embedded:{}", back.path().display());
    let from_nats = |prefix: &str| {
        run_cli(
            &[
                "migrate",
                "--from",
                &nats_url(),
                "--from-prefix",
                prefix,
                "--to",
                &to_back,
            ],
            None,
        )
    };
    // A mistyped prefix is refused, and no stream is made for it.
    let mistyped = format!("{}TYPO", streams.0);
    let _mistyped_streams = NatsStreams(mistyped.clone());
    let (code, _, err) = from_nats(&mistyped);
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!(
            "JetStream stream {mistyped}_EVENTS does not exist"
        )) && err.contains("check --from-prefix"),
        "{err}"
    );
    let (code, out, err) = from_nats(&streams.0);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("copied 6 events of 3 streams (1 deleted, 1 snapshots copied)"),
        "{out}"
    );
    assert!(out.contains("verified: 6 events up to position"), "{out}");
    let on_nats = feed(&http, &target.url);
    drop(target);
    let returned = ServerProcess::start(back.path());
    assert_eq!(feed(&http, &returned.url), on_nats);
    let gone = http
        .get(format!("{}/v1/streams/cart-9", returned.url))
        .send()
        .unwrap()
        .status();
    assert_eq!(gone.as_u16(), 410);
}

#[test]
fn a_postgres_event_store_moves_to_an_embedded_directory_with_positions_kept() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let schema = format!("it_migrate_down_{}_{nanos}", std::process::id());
    let _schemas = Schemas(vec![schema.clone()]);
    let http = reqwest::blocking::Client::new();
    let on_postgres = [
        "--event-store",
        &postgres_url(),
        "--event-store-schema",
        &schema,
    ];
    let source_dir = tempfile::tempdir().unwrap();
    let original = fill_source_with(&http, source_dir.path(), &on_postgres);

    let target_dir = tempfile::tempdir().unwrap();
    let to = format!("embedded:{}", target_dir.path().join("data").display());
    let migrate = |from_schema: &str| {
        run_cli(
            &[
                "migrate",
                "--from",
                &postgres_url(),
                "--from-schema",
                from_schema,
                "--to",
                &to,
            ],
            None,
        )
    };
    // A mistyped schema is refused (and not created), not copied as an empty store.
    let (code, _, err) = migrate(&format!("{schema}_typo"));
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("schema {schema}_typo at"))
            && err.contains("holds no event streams")
            && err.contains("--from-schema"),
        "{err}"
    );
    // A server that is not running is refused, and the target directory is not made.
    let (code, _, err) = run_cli(
        &["migrate", "--from", "http://127.0.0.1:1", "--to", &to],
        None,
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot reach the Proteus server at http://127.0.0.1:1 named by --from"),
        "{err}"
    );
    assert!(!target_dir.path().join("data").exists());
    let (code, out, err) = migrate(&schema);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("copied 5 events of 3 streams (1 deleted, 1 snapshots copied)"),
        "{out}"
    );
    assert!(out.contains("verified: 5 events up to position"), "{out}");
    // A second run resumes after the copy's head: nothing twice.
    let (code, out, err) = migrate(&schema);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("copied 0 events of 0 streams (0 deleted, 0 snapshots copied)"),
        "{out}"
    );

    // A server on the directory serves the same history, positions and times included, and
    // continues it after the copied positions.
    let target = ServerProcess::start(&target_dir.path().join("data"));
    assert_eq!(feed(&http, &target.url), original);
    let appended = deleted_stays_deleted_and_versions_continue(&http, &target.url);
    let last = original.last().unwrap()["position"].as_u64().unwrap();
    assert_eq!(appended["first_position"], last + 1, "{appended}");
    // While that server holds the directory, a copy into it is refused, saying why.
    let (code, _, err) = migrate(&schema);
    assert_ne!(code, 0);
    assert!(err.contains("stop the server using it"), "{err}");
    drop(target);

    // Following PostgreSQL directly while a server on it takes appends: the new event is
    // copied as it comes, and the cut-over verifies it.
    let source = ServerProcess::start_with(source_dir.path(), &on_postgres, &[]);
    let followed_dir = tempfile::tempdir().unwrap();
    let followed = format!("embedded:{}", followed_dir.path().display());
    let mut follower = Follower::start(
        "migrate",
        &[
            "--from",
            &postgres_url(),
            "--from-schema",
            &schema,
            "--to",
            &followed,
        ],
    );
    place_order_3(&http, &source.url);
    follower.wait_for("copied 1 more events");
    let out = follower.interrupt();
    assert!(out.contains("verified: 5 events"), "{out}");
    assert!(out.contains("verified: 6 events"), "{out}");
}

/// `migrate --follow` rides out a source it cannot reach for a while (a proxy in front of the
/// server stopped for 1.5 s, its long poll cut): it says so, tries again, and copies what was
/// appended meanwhile; and so does its last pass, at a cut-over made while the source is out
/// of reach.
#[test]
fn following_rides_out_a_source_out_of_reach_for_a_while() {
    let dir = tempfile::tempdir().unwrap();
    let source = ServerProcess::start(dir.path());
    let http = reqwest::blocking::Client::new();
    let status = http
        .post(format!("{}/v1/streams/order-1", source.url))
        .json(&json!({"type": "Placed", "data": {}}))
        .send()
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 201);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream = source.url.trim_start_matches("http://").to_owned();
    let proxy = runtime.block_on(proteus_nats::test_support::Proxy::start(upstream));
    let proxied = format!("http://127.0.0.1:{}", proxy.port);
    let copy_dir = tempfile::tempdir().unwrap();
    let copy = format!("embedded:{}", copy_dir.path().display());
    let mut follower = Follower::start("migrate", &["--from", &proxied, "--to", &copy]);
    proxy.stop();
    std::thread::sleep(Duration::from_millis(1_500));
    place_order_3(&http, &source.url);
    runtime.block_on(proxy.restart());
    follower.wait_for("copied 1 more events");
    // The cut-over while the source is out of reach: the last pass is tried again too.
    proxy.stop();
    let interrupted = std::thread::spawn(move || follower.interrupt());
    std::thread::sleep(Duration::from_millis(1_500));
    runtime.block_on(proxy.restart());
    let out = interrupted.join().unwrap();
    assert!(
        out.contains("following: ") && out.contains("trying again"),
        "{out}"
    );
    assert!(
        out.contains("last pass: ") && out.contains("verified: 2 events"),
        "{out}"
    );
}
