//! `/v1/streams`: appends with expected versions, reads, feeds, snapshots, subscriptions.

use std::time::Duration;

use serde_json::{Value, json};

use crate::stream::SseReader;
use crate::support::{TestServer, problem};

async fn append(
    server: &TestServer,
    stream: &str,
    expected: &str,
    events: Value,
) -> reqwest::Response {
    server
        .http
        .post(server.url(&format!("/v1/streams/{stream}?expected_version={expected}")))
        .json(&events)
        .send()
        .await
        .unwrap()
}

/// POSTs `body` as sent (not re-encoded), as JSON.
async fn post_json_text(
    server: &TestServer,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    server
        .http
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

fn placed(id: &str, total: u32) -> Value {
    json!({"id": id, "type": "OrderPlaced", "data": {"total": total}})
}

/// Every body form an append takes, and what each kind of bad body gets.
#[tokio::test]
async fn append_bodies_in_every_form_keep_payloads_as_sent() {
    let server = TestServer::start().await;
    // One event without an id: it gets one; its data comes back as sent.
    let raw = r#"{"type":"Noted","data":{"z":1, "a":[true,null],"s":"\u00e9"}}"#;
    let response = post_json_text(&server, "/v1/streams/note-1", raw).await;
    assert_eq!(response.status(), 201);
    let page = server.get_json("/v1/streams/note-1").await;
    let event = &page["events"][0];
    assert!(!event["id"].as_str().unwrap().is_empty(), "{page}");
    assert_eq!(event["data"], json!({"z": 1, "a": [true, null], "s": "é"}));
    // The envelope, with a number or a word as expected version.
    for (expected, id) in [(json!(0), "n2"), (json!("exists"), "n3")] {
        let body = json!({"expected_version": expected, "events": [
            {"id": id, "type": "Noted", "data": {}}]});
        let response = server
            .http
            .post(server.url("/v1/streams/note-1"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{body}");
    }
    // Ids and types are taken as written, escapes and all: in the one-pass parse an escaped
    // one is the string serde_json unescaped, the others slices of the body.
    let raw = r#"[{"id":"q\"uoted\u00e9","type":"Caf\u00e9Ordered","data":1},
                  {"id":"plain-é","type":"Noted","data":2}]"#;
    let response = post_json_text(&server, "/v1/streams/note-3", raw).await;
    assert_eq!(response.status(), 201);
    let page = server.get_json("/v1/streams/note-3").await;
    let written: Vec<(&str, &str)> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        written,
        [("q\"uotedé", "CaféOrdered"), ("plain-é", "Noted")],
        "{page}"
    );
    let bodies: [(&[u8], &str); 7] = [
        (b"42", "expected an event object or an array of them"),
        (b"{\"events\": 1}", "\"events\" must be an array of events"),
        (
            b"{\"expected_version\": true, \"events\": []}",
            "\"expected_version\" is",
        ),
        (
            b"[{\"id\": \"a\", \"type\": \"T\", \"data\": {}, \"extra\": 1}]",
            "event 0:",
        ),
        (b"[1]", "event 0:"),
        (b"[{\"id\": \"a\"", "the body is not JSON"),
        // Not UTF-8 (checked once, as a whole, before the one-pass parse).
        (
            b"[{\"id\":\"a\",\"type\":\"T\",\"data\":\"\xff\"}]",
            "the body is not JSON",
        ),
    ];
    for (body, says) in bodies {
        let response = post_json_text(&server, "/v1/streams/note-2", body.to_vec()).await;
        let bad = problem(response, 400, "invalid-events").await;
        assert!(
            bad["detail"].as_str().unwrap().contains(says),
            "{}: {bad}",
            String::from_utf8_lossy(body)
        );
    }
}

#[tokio::test]
async fn appends_check_expected_versions_and_retries_are_recognised() {
    let server = TestServer::start().await;
    let response = append(&server, "order-1", "no_stream", json!([placed("e1", 10)])).await;
    assert_eq!(response.status(), 201);
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(
        (
            &outcome["first_version"],
            &outcome["last_version"],
            &outcome["duplicate"]
        ),
        (&json!(0), &json!(0), &json!(false))
    );

    // The same ids again are a retry: 200 with the original positions, nothing written.
    let response = append(&server, "order-1", "no_stream", json!([placed("e1", 10)])).await;
    assert_eq!(response.status(), 200);
    let retry: Value = response.json().await.unwrap();
    assert_eq!(retry["duplicate"], true);
    assert_eq!(retry["first_position"], outcome["first_position"]);

    // A stale expected version is 409 with the actual version.
    let response = append(&server, "order-1", "no_stream", json!([placed("e2", 11)])).await;
    let conflict = problem(response, 409, "wrong-expected-version").await;
    assert_eq!(conflict["actual_version"], 0);
    assert_eq!(conflict["expected_version"], "no_stream");
    assert_eq!(conflict["stream"], "order-1");
    assert!(
        conflict["detail"]
            .as_str()
            .unwrap()
            .contains("its last version is 0"),
        "{conflict}"
    );

    // Two events at once, atomically, at the exact version.
    let body = json!({"expected_version": 0, "events": [
        {"id": "e2", "type": "ItemAdded", "data": {"sku": "a"}},
        {"id": "e3", "type": "ItemAdded", "data": {"sku": "b"}, "metadata": {"user": "u1"}}]});
    let response = server
        .http
        .post(server.url("/v1/streams/order-1"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let page = server.get_json("/v1/streams/order-1").await;
    let versions: Vec<&Value> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["version"])
        .collect();
    assert_eq!(versions, [&json!(0), &json!(1), &json!(2)]);
    assert_eq!(page["events"][2]["metadata"], json!({"user": "u1"}));
    let newest = server
        .get_json("/v1/streams/order-1?direction=backward&limit=1")
        .await;
    assert_eq!(newest["events"][0]["id"], "e3");

    // A conflict echoes an exact expected version as the number it was sent as.
    let response = append(&server, "order-1", "1", json!([placed("e9", 1)])).await;
    let conflict = problem(response, 409, "wrong-expected-version").await;
    assert_eq!(
        (&conflict["expected_version"], &conflict["actual_version"]),
        (&json!(1), &json!(2))
    );

    // Bad input: precise problems.
    let response = append(&server, "order-1", "soon", json!([placed("e4", 1)])).await;
    problem(response, 400, "invalid-query").await;
    let response = append(&server, "order-1", "any", json!([{"id": "x", "data": {}}])).await;
    let bad = problem(response, 400, "invalid-events").await;
    assert!(bad["detail"].as_str().unwrap().contains("type"), "{bad}");
    let response = append(&server, "$all", "any", json!([placed("e5", 1)])).await;
    problem(response, 400, "invalid-stream-name").await;
    let response = append(
        &server,
        "order-1",
        "any",
        json!([placed("d", 1), placed("d", 2)]),
    )
    .await;
    problem(response, 400, "invalid-event-store-request").await;
    let response = server
        .http
        .get(server.url("/v1/streams/nope-1"))
        .send()
        .await
        .unwrap();
    problem(response, 404, "stream-not-found").await;

    // A tombstoned stream is gone for good.
    let response = server
        .http
        .delete(server.url("/v1/streams/order-1?expected_version=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = append(&server, "order-1", "any", json!([placed("e9", 1)])).await;
    problem(response, 410, "stream-deleted").await;
    server.stop().await;
}

#[tokio::test]
async fn feeds_filter_by_category_type_and_prefix_and_long_poll() {
    let server = TestServer::start().await;
    for (stream, id) in [("order-1", "a"), ("cart-1", "b"), ("order-2", "c")] {
        let response = append(&server, stream, "any", json!([placed(id, 1)])).await;
        assert_eq!(response.status(), 201);
    }
    append(
        &server,
        "order-1",
        "0",
        json!([{"id": "d", "type": "Shipped", "data": {}}]),
    )
    .await;
    let ids = |page: &Value| -> Vec<String> {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = server.get_json("/v1/streams/$all").await;
    assert_eq!(ids(&all), ["a", "b", "c", "d"]);
    let orders = server.get_json("/v1/streams/$ce-order").await;
    assert_eq!(ids(&orders), ["a", "c", "d"]);
    let shipped = server.get_json("/v1/streams/$ce-order?types=Shipped").await;
    assert_eq!(ids(&shipped), ["d"]);
    let response = server
        .http
        .get(server.url("/v1/streams/$ce-order?direction=backward"))
        .send()
        .await
        .unwrap();
    problem(response, 400, "invalid-query").await;
    let prefixed = server
        .get_json("/v1/streams/$all?stream_prefix=cart-")
        .await;
    assert_eq!(ids(&prefixed), ["b"]);

    // At the end, a read with wait_ms returns as soon as an event is appended.
    let next = all["next_position"].as_u64().unwrap();
    let url = server.url(&format!("/v1/streams/$all?from={next}&wait_ms=5000"));
    let http = server.http.clone();
    let waiting = tokio::spawn(async move {
        http.get(url)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    append(&server, "order-3", "no_stream", json!([placed("e", 1)])).await;
    let page = waiting.await.unwrap();
    assert_eq!(ids(&page), ["e"]);
    assert!(started.elapsed() < Duration::from_secs(2));
    server.stop().await;
}

#[tokio::test]
async fn snapshots_shorten_aggregate_loading() {
    let server = TestServer::start().await;
    let events: Vec<Value> = (0..5).map(|n| placed(&format!("e{n}"), n)).collect();
    append(&server, "order-9", "no_stream", json!(events)).await;
    let response = server
        .http
        .put(server.url("/v1/streams/order-9/snapshot"))
        .json(&json!({"version": 2, "type": "Order.v1", "data": {"total": 3}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let aggregate = server.get_json("/v1/streams/order-9/aggregate").await;
    assert_eq!(aggregate["snapshot"]["version"], 2);
    assert_eq!(aggregate["snapshot"]["data"], json!({"total": 3}));
    let versions: Vec<u64> = aggregate["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [3, 4]);
    let response = server
        .http
        .put(server.url("/v1/streams/order-9/snapshot"))
        .json(&json!({"version": 7, "type": "Order.v1", "data": {}}))
        .send()
        .await
        .unwrap();
    problem(response, 409, "stream-conflict").await;
    let info = server.get_json("/v1/streams/order-9/info").await;
    assert_eq!(
        (&info["last_version"], &info["snapshot_version"]),
        (&json!(4), &json!(2))
    );
    server.stop().await;
}

/// Catch-up then live over SSE while writers append: every event once, in order.
#[tokio::test]
async fn subscriptions_catch_up_then_go_live_without_gap_or_repeat() {
    let server = TestServer::start().await;
    for n in 0..50 {
        append(
            &server,
            &format!("order-{}", n % 5),
            "any",
            json!([placed(&format!("old-{n}"), n)]),
        )
        .await;
    }
    let mut all = SseReader::open(&server, "/v1/streams/$all/subscribe?from=0", None).await;
    let mut one = SseReader::open(&server, "/v1/streams/order-3/subscribe", None).await;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let http = server.http.clone();
            let base = server.url.clone();
            tokio::spawn(async move {
                for n in 0..25 {
                    let stream = format!("order-{}", (w + n) % 5);
                    let response = http
                        .post(format!("{base}/v1/streams/{stream}"))
                        .json(&json!([placed(&format!("new-{w}-{n}"), n)]))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 201);
                }
            })
        })
        .collect();
    let mut positions = Vec::new();
    let mut last_id = String::new();
    while positions.len() < 150 {
        let (id, event) = all.next().await;
        assert_eq!(id, event["position"].to_string());
        positions.push(event["position"].as_u64().unwrap());
        last_id = id;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let mut sorted = positions.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, positions, "in order, no repeat");
    assert_eq!(positions.len(), 150);
    let head = server
        .get_json("/v1/streams/$all?direction=backward&limit=1")
        .await;
    assert_eq!(
        head["events"][0]["position"].as_u64(),
        positions.last().copied()
    );

    // One stream's subscription sees its own versions 0, 1, 2, … without gap.
    let stream_total = server.get_json("/v1/streams/order-3/info").await["last_version"]
        .as_u64()
        .unwrap()
        + 1;
    for version in 0..stream_total {
        let (id, event) = one.next().await;
        assert_eq!(event["version"], version);
        assert_eq!(id, version.to_string());
    }

    // Resuming with Last-Event-ID continues right after it.
    append(&server, "order-0", "any", json!([placed("after", 1)])).await;
    let mut resumed = SseReader::open(&server, "/v1/streams/$all/subscribe", Some(&last_id)).await;
    let (_, event) = resumed.next().await;
    assert_eq!(event["id"], "after");
    server.stop().await;
}
