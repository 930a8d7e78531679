//! `proteus migrate-topics`: a running server's topics copied to NATS JetStream through its
//! API, then, once it is stopped, the rest from its data directory, every event at its
//! partition and offset, verified, resumed by a further run; a server on the
//! same data directory with its log on NATS serves the same partitions with its group's
//! committed offsets; the group copied to NATS key-value buckets goes on, through a server
//! sharing nothing else with the first, from the offsets it committed, neither losing nor
//! repeating an event. Then back down: the topics on NATS and the group in its buckets copied
//! to a new data directory, where an embedded server serves the same partitions with the same
//! append times and the group goes on.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::support::{BINARY, Follower, ServerProcess, delete_streams, nats_url, run_cli};

/// JetStream streams of their own, deleted when the test ends.
struct NatsStreams(String);

impl Drop for NatsStreams {
    fn drop(&mut self) {
        delete_streams(nats_url(), self.0.clone());
    }
}

/// `proteus migrate-topics --from FROM --to <the test NATS> ARGS…`.
fn to_nats(from: &str, args: &[&str]) -> (i32, String, String) {
    let nats = nats_url();
    let all: Vec<&str> = ["migrate-topics", "--from", from, "--to", &nats]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    run_cli(&all, None)
}

/// Each partition's events as the server reads them (offset, append time, event).
fn entries(http: &reqwest::blocking::Client, url: &str, count: u32) -> Vec<Vec<Value>> {
    (0..count)
        .map(|partition| {
            let page: Value = http
                .get(format!(
                    "{url}/v1/topics/orders/partitions/{partition}/events?from=0&limit=1000"
                ))
                .send()
                .unwrap()
                .json()
                .unwrap();
            page["events"].as_array().unwrap().clone()
        })
        .collect()
}

/// Each partition's (offset, event) pairs, without append times (JetStream stamps its own).
fn partitions(http: &reqwest::blocking::Client, url: &str, count: u32) -> Vec<Vec<(u64, Value)>> {
    entries(http, url, count)
        .into_iter()
        .map(|events| {
            events
                .iter()
                .map(|e| (e["offset"].as_u64().unwrap(), e["event"].clone()))
                .collect()
        })
        .collect()
}

fn consume(url: &str, count: usize) -> Vec<String> {
    let (code, out, err) = run_cli(
        &[
            "consume",
            "orders",
            "--group",
            "billing",
            "--count",
            &count.to_string(),
            "--output",
            "json",
            "--server",
            url,
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|line| {
            let line: Value = serde_json::from_str(line).unwrap();
            line["event"]["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn embedded_topics_move_to_nats_and_back_with_offsets_and_group_positions_kept() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let streams = NatsStreams(format!("ITTOP{}x{nanos}", std::process::id()));
    let groups_prefix = format!("ITTOPG{}x{nanos}", std::process::id());
    let _buckets = NatsStreams(format!("KV_{groups_prefix}"));
    let http = reqwest::blocking::Client::new();
    let dir = tempfile::tempdir().unwrap();

    let mut source = ServerProcess::start(dir.path());
    let cli = |args: &[&str], stdin: Option<&str>, url: &str| {
        let all: Vec<&str> = args.iter().copied().chain(["--server", url]).collect();
        run_cli(&all, stdin)
    };
    let (code, _, err) = cli(
        &["topic", "create", "orders", "--partitions", "3"],
        None,
        &source.url,
    );
    assert_eq!(code, 0, "{err}");
    // Keyed events spread by subject, and a keyless batch that lands on one partition.
    let keyed: String = (0..30)
        .map(|i| {
            format!(
                "{{\"type\":\"t\",\"subject\":\"order-{}\",\"id\":\"e{i}\"}}\n",
                i % 7
            )
        })
        .collect();
    let keyless: String = (0..6)
        .map(|i| format!("{{\"type\":\"t\",\"id\":\"k{i}\"}}\n"))
        .collect();
    let (code, _, err) = cli(&["publish", "orders"], Some(&keyed), &source.url);
    assert_eq!(code, 0, "{err}");
    // A topic the first copy leaves out.
    let (code, _, err) = cli(&["topic", "create", "audit"], None, &source.url);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(
        &["publish", "audit"],
        Some("{\"type\":\"t\",\"id\":\"a1\"}\n"),
        &source.url,
    );
    assert_eq!(code, 0, "{err}");
    // The bulk of the copy runs while the server serves, read through its API.
    let (code, out, err) = to_nats(
        &source.url,
        &["--to-prefix", &streams.0, "--topic", "orders"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("orders: 3 partitions, copied 30 events; verified: 30 events")
            && out.contains("keeps serving: stop it"),
        "{out}"
    );
    let (code, _, err) = to_nats(&source.url, &["--groups-to", &nats_url()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot be copied from a running server"),
        "{err}"
    );
    let (code, _, err) = cli(&["publish", "orders"], Some(&keyless), &source.url);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&["group", "create", "orders", "billing"], None, &source.url);
    assert_eq!(code, 0, "{err}");
    let consumed_before = consume(&source.url, 10);
    let original = partitions(&http, &source.url, 3);
    assert_eq!(original.iter().map(Vec::len).sum::<usize>(), 36);
    assert_eq!(source.terminate(), Some(0));

    // Started on NATS before the copy, a server says which topics it leaves behind and how to
    // move them; once they are moved it says nothing.
    let left_behind = "topic(s) in its embedded log that this server does not serve";
    let nats_log = [
        "--storage-log",
        &nats_url(),
        "--storage-log-prefix",
        &streams.0,
    ];
    // Topics NATS lacks are named, and so are events the first copy missed.
    let events_behind = "events in its embedded log after the end of the same topic on NATS";
    let mut early = ServerProcess::start_with(dir.path(), &nats_log, &[]);
    assert_eq!(early.terminate(), Some(0));
    let logs = early.log_text();
    assert!(
        logs.contains(left_behind)
            && logs.contains(": audit;")
            && logs.contains(events_behind)
            && logs.contains("orders (6 events)")
            && logs.contains("proteus migrate-topics"),
        "{logs}"
    );

    let from = format!("embedded:{}", dir.path().display());
    let migrate = |from: &str| {
        to_nats(
            from,
            &[
                "--to-prefix",
                &streams.0,
                "--batch-events",
                "4",
                "--groups-to",
                &nats_url(),
                "--groups-prefix",
                &groups_prefix,
            ],
        )
    };
    let (code, out, err) = migrate(&from);
    assert_eq!(code, 0, "{err}");
    // Once the server is stopped, its data directory gives what came after the first copy.
    assert!(
        out.contains(
            "orders: 3 partitions, copied 6 events; verified: 36 events with the same offsets"
        ),
        "{out}"
    );
    // The server's own topics come along.
    assert!(out.contains("proteus.schemas: 1 partitions"), "{out}");
    // A second run finds everything there.
    let (code, out, err) = migrate(&from);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("orders: 3 partitions, copied 0 events"),
        "{out}"
    );
    // A directory without a log is refused, not copied as nothing.
    let typo = dir.path().join("typo");
    let (code, _, err) = migrate(&format!("embedded:{}", typo.display()));
    assert_eq!(code, 1);
    assert!(err.contains("there is no embedded log in"), "{err}");
    assert!(!typo.exists());

    // The same data directory (its embedded consumer group) with the log on NATS: the same
    // partitions, and the group's committed offsets still mean the same events.
    let group_lag = |url: &str| {
        let described: Value = http
            .get(format!("{url}/v1/topics/orders/groups/billing"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        described["lag_events"].clone()
    };
    let mut same_dir = ServerProcess::start_with(dir.path(), &nats_log, &[]);
    assert_eq!(partitions(&http, &same_dir.url, 3), original);
    assert_eq!(group_lag(&same_dir.url), 26);
    assert_eq!(same_dir.terminate(), Some(0));
    let logs = same_dir.log_text();
    assert!(
        !logs.contains(left_behind) && !logs.contains(events_behind),
        "{logs}"
    );

    // A server sharing only NATS: topics and the copied group there.
    let fresh = tempfile::tempdir().unwrap();
    let mut shared = ServerProcess::start_with(
        fresh.path(),
        &[
            "--storage-log",
            &nats_url(),
            "--storage-log-prefix",
            &streams.0,
            "--groups",
            &nats_url(),
            "--groups-prefix",
            &groups_prefix,
        ],
        &[],
    );
    let consumed_after = consume(&shared.url, 26);
    let before: BTreeSet<&String> = consumed_before.iter().collect();
    let after: BTreeSet<&String> = consumed_after.iter().collect();
    assert!(before.is_disjoint(&after), "{before:?} {after:?}");
    assert_eq!(before.len() + after.len(), 36);
    assert_eq!(group_lag(&shared.url), 0);
    // Events appended on NATS (stamped by JetStream), not yet consumed by the group.
    let more: String = (0..4)
        .map(|i| format!("{{\"type\":\"t\",\"subject\":\"order-{i}\",\"id\":\"m{i}\"}}\n"))
        .collect();
    let (code, _, err) = cli(&["publish", "orders"], Some(&more), &shared.url);
    assert_eq!(code, 0, "{err}");
    let on_nats = entries(&http, &shared.url, 3);
    assert_eq!(on_nats.iter().map(Vec::len).sum::<usize>(), 40);
    assert_eq!(shared.terminate(), Some(0));

    // The same data directory with its groups in NATS: the copied group is there, so nothing
    // is said; in buckets the copy did not fill, the group is named with the command.
    let groups_left =
        "consumer group(s) in its embedded group store that this server does not serve";
    let uncopied_prefix = format!("{groups_prefix}U");
    let _uncopied_buckets = NatsStreams(format!("KV_{uncopied_prefix}"));
    let on_groups = |prefix: &str| {
        let mut server = ServerProcess::start_with(
            dir.path(),
            &[
                "--storage-log",
                &nats_url(),
                "--storage-log-prefix",
                &streams.0,
                "--groups",
                &nats_url(),
                "--groups-prefix",
                prefix,
            ],
            &[],
        );
        assert_eq!(server.terminate(), Some(0));
        server.log_text()
    };
    let logs = on_groups(&groups_prefix);
    assert!(!logs.contains(groups_left), "{logs}");
    let logs = on_groups(&uncopied_prefix);
    assert!(
        logs.contains(groups_left)
            && logs.contains("billing (topic orders)")
            && logs.contains(&format!("--groups-prefix {uncopied_prefix}")),
        "{logs}"
    );

    // Back down: the topics on NATS and the group in its buckets to a new data directory.
    let down = tempfile::tempdir().unwrap();
    let down_dir = down.path().join("data");
    let migrate_down = |prefix: &str, dir: &std::path::Path, groups_prefix: &str| {
        run_cli(
            &[
                "migrate-topics",
                "--from",
                &nats_url(),
                "--from-prefix",
                prefix,
                "--to",
                &format!("embedded:{}", dir.display()),
                "--batch-events",
                "3",
                "--groups-from",
                &nats_url(),
                "--groups-prefix",
                groups_prefix,
            ],
            None,
        )
    };
    // A mistyped prefix is refused, and no directory is made; a mistyped group prefix is
    // refused before anything is copied, and no bucket is made.
    let unused = down.path().join("unused");
    let (code, _, err) = migrate_down(&format!("{}TYPO", streams.0), &unused, &groups_prefix);
    assert_eq!(code, 1);
    assert!(
        err.contains("no topic under the prefix") && err.contains("--from-prefix"),
        "{err}"
    );
    assert!(!unused.exists());
    let typo_groups = format!("{groups_prefix}TYPO");
    let _typo_buckets = NatsStreams(format!("KV_{typo_groups}"));
    for _ in 0..2 {
        let (code, out, err) = migrate_down(&streams.0, &unused, &typo_groups);
        assert_eq!(code, 1);
        assert!(
            err.contains(&format!("{typo_groups}_GROUPS")) && err.contains("--groups-prefix"),
            "{err}"
        );
        assert!(!out.contains("copied"), "{out}");
        assert!(!unused.exists());
    }
    let (code, out, err) = migrate_down(&streams.0, &down_dir, &groups_prefix);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "orders: 3 partitions, copied 40 events; verified: 40 events with the same offsets"
        ) && out.contains("append times kept")
            && out.contains("consumer groups: copied 1"),
        "{out}"
    );
    let (code, out, err) = migrate_down(&streams.0, &down_dir, &groups_prefix);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("orders: 3 partitions, copied 0 events") && out.contains("1 already there"),
        "{out}"
    );
    // An embedded server on the copy: the same partitions, offsets and append times; the group
    // goes on with the four events it had not consumed on NATS; appends continue the offsets.
    let below = ServerProcess::start(&down_dir);
    assert_eq!(entries(&http, &below.url, 3), on_nats);
    assert_eq!(group_lag(&below.url), 4);
    let rest: BTreeSet<String> = consume(&below.url, 4).into_iter().collect();
    assert_eq!(rest, (0..4).map(|i| format!("m{i}")).collect());
    assert_eq!(group_lag(&below.url), 0);
    let (code, _, err) = cli(
        &["publish", "orders"],
        Some("{\"type\":\"t\",\"id\":\"after\"}\n"),
        &below.url,
    );
    assert_eq!(code, 0, "{err}");
    let now = entries(&http, &below.url, 3);
    let grown: Vec<usize> = (0..3)
        .filter(|&p| now[p].len() == on_nats[p].len() + 1)
        .collect();
    assert_eq!(grown.len(), 1, "the new event lands in one partition");
    let p = grown[0];
    let last_offset = |events: &[Value]| events.last().map(|e| e["offset"].as_u64().unwrap());
    assert_eq!(
        last_offset(&now[p]),
        last_offset(&on_nats[p]).map(|o| o + 1)
    );
}

/// A copy down from NATS killed with SIGKILL in the middle (small batches, so the kill lands
/// between imports, or inside one) is finished by the next run: the embedded copy then holds
/// every event once, at its offset, verified.
#[test]
fn a_copy_down_killed_midway_is_finished_by_the_next_run() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let streams = NatsStreams(format!("ITKILL{}x{nanos}", std::process::id()));
    let dir = tempfile::tempdir().unwrap();
    let nats_log = [
        "--storage-log",
        &nats_url(),
        "--storage-log-prefix",
        &streams.0,
    ];
    let mut server = ServerProcess::start_with(&dir.path().join("up"), &nats_log, &[]);
    let http = reqwest::blocking::Client::new();
    let created = http
        .put(format!("{}/v1/topics/big", server.url))
        .json(&serde_json::json!({"partitions": 2}))
        .send()
        .unwrap();
    assert!(created.status().is_success(), "{}", created.status());
    for batch in 0..20 {
        let events: Vec<Value> = (0..500)
            .map(|i| {
                serde_json::json!({
                    "specversion": "1.0", "id": format!("{batch}-{i}"), "source": "/kill",
                    "type": "t", "subject": format!("k{}", i % 11), "data": {"n": i}
                })
            })
            .collect();
        let appended = http
            .post(format!("{}/v1/topics/big/events", server.url))
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_vec(&events).unwrap())
            .send()
            .unwrap();
        assert!(appended.status().is_success(), "{}", appended.status());
    }
    assert_eq!(server.terminate(), Some(0));

    let down = dir.path().join("down");
    let target = format!("embedded:{}", down.display());
    let args = [
        "migrate-topics",
        "--from",
        &nats_url(),
        "--from-prefix",
        &streams.0,
        "--to",
        &target,
        "--topic",
        "big",
        "--batch-events",
        "7",
    ];
    let mut copy = std::process::Command::new(BINARY)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once part of the first partition is on disk.
    let first_segment = down.join("log/topics/big/0/00000000000000000000.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(&first_segment).map_or(0, |m| m.len()) < 20_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the copy never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    copy.kill().unwrap();
    copy.wait().unwrap();

    let (code, out, err) = run_cli(&args, None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("verified: 10000 events with the same offsets and append times"),
        "{out}"
    );
    // The kill landed midway: this run copied what the first had not.
    let copied: u64 = out
        .split("copied ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!((1..10_000).contains(&copied), "{out}");
    let below = ServerProcess::start(&down);
    let described: Value = http
        .get(format!("{}/v1/topics/big", below.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let ends: Vec<u64> = described["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["next_offset"].as_u64().unwrap())
        .collect();
    assert_eq!(ends.iter().sum::<u64>(), 10_000, "{described}");
}

/// Sums the "copied N more events" lines of a follower's output.
fn copied_while_following(out: &str) -> u64 {
    out.lines()
        .filter_map(|line| line.strip_prefix("copied "))
        .filter_map(|rest| rest.split_once(" more events"))
        .filter_map(|(count, _)| count.parse::<u64>().ok())
        .sum()
}

/// `--follow` from a running server: what is appended after the first pass (to a topic there
/// and to a topic created meanwhile) is copied while the server serves; Ctrl-C copies what is
/// left and verifies every partition; the cut-over run from the stopped server's directory
/// copies and reads back only what came after; a server on NATS serves the same partitions.
#[test]
fn a_running_server_is_followed_until_the_cut_over() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let streams = NatsStreams(format!("ITFOL{}x{nanos}", std::process::id()));
    let http = reqwest::blocking::Client::new();
    let dir = tempfile::tempdir().unwrap();

    // Nothing appends to a stopped server's directory: following it is refused.
    let from_dir = format!("embedded:{}", dir.path().display());
    let (code, _, err) = to_nats(&from_dir, &["--follow"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("nothing appends to --from embedded:DIR"),
        "{err}"
    );
    let (code, _, err) = to_nats(&from_dir, &["--partitions-in-flight", "0"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--partitions-in-flight must be 1 to 64, got 0"),
        "{err}"
    );

    let mut source = ServerProcess::start(dir.path());
    let publish = |topic: &str, ids: std::ops::Range<u32>| {
        let lines: String = ids
            .map(|i| {
                format!(
                    "{{\"type\":\"t\",\"subject\":\"k{}\",\"id\":\"{topic}{i}\"}}\n",
                    i % 5
                )
            })
            .collect();
        let (code, _, err) = run_cli(&["publish", topic, "--server", &source.url], Some(&lines));
        assert_eq!(code, 0, "{err}");
    };
    let (code, _, err) = run_cli(
        &[
            "topic",
            "create",
            "orders",
            "--partitions",
            "2",
            "--server",
            &source.url,
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    publish("orders", 0..10);

    let mut follower = Follower::start(
        "migrate-topics",
        &[
            "--from",
            &source.url,
            "--to",
            &nats_url(),
            "--to-prefix",
            &streams.0,
        ],
    );
    assert!(
        follower
            .out_so_far()
            .contains("orders: 2 partitions, copied 10 events; verified: 10 events"),
        "{}",
        follower.out_so_far()
    );
    // Appended while it follows, to the topic and to one created since.
    publish("orders", 10..16);
    let (code, _, err) = run_cli(&["topic", "create", "late", "--server", &source.url], None);
    assert_eq!(code, 0, "{err}");
    publish("late", 0..3);
    follower.wait_until("9 events copied while following", |out| {
        copied_while_following(out) >= 9
    });
    // One more just before the cut-over: copied by the follower or by its last pass.
    publish("orders", 16..17);
    let out = follower.interrupt();
    assert_eq!(
        copied_while_following(&out) + last_pass_copied(&out),
        10,
        "{out}"
    );
    assert!(
        out.contains("stopping: copying what is left")
            && out.contains("orders: 2 partitions, copied")
            && out.contains("verified: 17 events with the same offsets")
            && out.contains("late: 1 partitions, copied")
            && out.contains("verified: 3 events with the same offsets")
            && out.contains("keeps serving: stop it"),
        "{out}"
    );
    // Appended between the Ctrl-C and the stop: the cut-over run from the data directory
    // copies them and, with --verify copied, reads back only them.
    publish("orders", 17..19);
    let original = partitions(&http, &source.url, 2);
    assert_eq!(source.terminate(), Some(0));
    let (code, out, err) = to_nats(
        &from_dir,
        &["--to-prefix", &streams.0, "--verify", "copied"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "orders: 2 partitions, copied 2 events; verified: 2 of 19 events (--verify copied)"
        ) && out.contains("late: 1 partitions, copied 0 events; verified: 0 of 3 events"),
        "{out}"
    );

    let on_nats = ServerProcess::start_with(
        &dir.path().join("on-nats"),
        &[
            "--storage-log",
            &nats_url(),
            "--storage-log-prefix",
            &streams.0,
        ],
        &[],
    );
    assert_eq!(partitions(&http, &on_nats.url, 2), original);
    let late: Value = http
        .get(format!("{}/v1/topics/late", on_nats.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(late["partitions"][0]["next_offset"], 3, "{late}");
}

/// The events the last pass of a follower copied: its per-topic lines after "stopping".
fn last_pass_copied(out: &str) -> u64 {
    let last_pass = out.split("stopping:").nth(1).unwrap_or("");
    last_pass
        .lines()
        .filter_map(|line| line.split_once(" partitions, copied "))
        .filter_map(|(_, rest)| rest.split(' ').next()?.parse::<u64>().ok())
        .sum()
}
