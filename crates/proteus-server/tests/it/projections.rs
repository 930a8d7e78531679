//! `/v1/projections` over `/v1/streams`: read models built from events, queried, controlled.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{TestServer, problem};

fn orders_definition() -> Value {
    json!({
        "source": {"category": "order"},
        "state": {"key": "stream", "handlers": {
            "OrderPlaced": {"set": {"status": {"const": "placed"}, "total": {"path": "/data/total"}}},
            "ItemAdded": {"increment": {"items": {"const": 1}}},
            "OrderShipped": {"set": {"status": {"const": "shipped"}}},
            "OrderCancelled": {"delete": true}
        }}
    })
}

async fn put(server: &TestServer, path: &str, body: &Value) -> reqwest::Response {
    server
        .http
        .put(server.url(path))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn append(server: &TestServer, stream: &str, events: Value) -> Value {
    let response = server
        .http
        .post(server.url(&format!("/v1/streams/{stream}")))
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_projection_builds_a_queryable_read_model_and_reads_its_writes() {
    let server = TestServer::start().await;
    let response = put(&server, "/v1/projections/orders", &orders_definition()).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let response = put(&server, "/v1/projections/orders", &orders_definition()).await;
    assert_eq!(
        response.status(),
        200,
        "the same definition again is not a change"
    );

    for n in 0..5 {
        append(
            &server,
            &format!("order-{n}"),
            json!([
            {"type": "OrderPlaced", "data": {"total": 10 * n}},
            {"type": "ItemAdded", "data": {"sku": "a"}}]),
        )
        .await;
    }
    append(
        &server,
        "order-1",
        json!([{"type": "OrderShipped", "data": {}}]),
    )
    .await;
    let last = append(
        &server,
        "order-4",
        json!([{"type": "OrderCancelled", "data": {}}]),
    )
    .await;
    let position = last["last_position"].as_u64().unwrap();

    // Read your writes: wait until the projection has processed the last append.
    let doc = server
        .get_json(&format!(
            "/v1/projections/orders/docs/order-1?wait_for_position={position}&wait_ms=5000"
        ))
        .await;
    assert_eq!(
        doc["doc"],
        json!({"status": "shipped", "total": 10, "items": 1})
    );
    let response = server
        .http
        .get(server.url("/v1/projections/orders/docs/order-4"))
        .send()
        .await
        .unwrap();
    problem(response, 404, "document-not-found").await;

    let page = server
        .get_json("/v1/projections/orders/docs?filter=status:eq:placed&sort=-total&limit=2")
        .await;
    let keys: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["order-3", "order-2"]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = server
        .get_json(&format!("/v1/projections/orders/docs?filter=status:eq:placed&sort=-total&limit=2&cursor={cursor}"))
        .await;
    let keys: Vec<&str> = rest["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["order-0"]);

    let status = server.get_json("/v1/projections/orders").await;
    assert_eq!(status["state"], "running");
    assert_eq!(
        status["checkpoint"]["position"].as_u64().unwrap(),
        position + 1
    );

    // Reset rebuilds the same read model from zero.
    let response = server
        .http
        .post(server.url("/v1/projections/orders/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let doc = server
        .get_json(&format!(
            "/v1/projections/orders/docs/order-3?wait_for_position={position}&wait_ms=5000"
        ))
        .await;
    assert_eq!(
        doc["doc"],
        json!({"status": "placed", "total": 30, "items": 1})
    );

    // Bad requests are precise.
    let response = put(
        &server,
        "/v1/projections/orders",
        &json!({"source": {"category": "order"},
        "state": {"key": "stream", "handlers": {"OrderPlaced": {"delete": true}}}}),
    )
    .await;
    problem(response, 409, "projection-conflict").await;
    let response = put(
        &server,
        "/v1/projections/bad",
        &json!({"source": {"category": "order"},
        "state": {"key": "stream", "handlers": {"X": {"explode": true}}}}),
    )
    .await;
    let bad = problem(response, 400, "invalid-projection-definition").await;
    assert!(
        bad["errors"][0]["path"]
            .as_str()
            .unwrap()
            .contains("/state/handlers/X"),
        "{bad}"
    );
    let response = server
        .http
        .get(server.url("/v1/projections/orders/docs?filter=status:is:x"))
        .send()
        .await
        .unwrap();
    problem(response, 400, "invalid-projection-query").await;
    server.stop().await;
}

#[tokio::test]
async fn a_projection_stops_visibly_on_an_event_it_cannot_process() {
    let server = TestServer::start().await;
    // A field the definition reads but a registered schema does not have is refused up front.
    let response = server
        .http
        .post(server.url("/v1/schemas/Deposited"))
        .json(&json!({"schema": {"type": "object", "properties": {"amount": {"type": "number"}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let with_typo = json!({"source": {"category": "account"}, "state": {"key": "stream", "handlers": {
        "Deposited": {"increment": {"balance": {"path": "/data/amuont"}}}}}});
    let response = put(&server, "/v1/projections/balances", &with_typo).await;
    let refused = problem(response, 400, "invalid-projection-definition").await;
    assert!(
        refused["detail"].as_str().unwrap().contains("amuont"),
        "{refused}"
    );

    // Without a schema, a missing field stops the projection at that event.
    let definition = json!({"source": {"category": "wallet"}, "state": {"key": "stream", "handlers": {
        "Credited": {"increment": {"balance": {"path": "/data/amount"}}}}}});
    assert_eq!(
        put(&server, "/v1/projections/wallets", &definition)
            .await
            .status(),
        201
    );
    append(
        &server,
        "wallet-1",
        json!([{"type": "Credited", "data": {"amount": 5}}]),
    )
    .await;
    let bad = append(
        &server,
        "wallet-1",
        json!([{"type": "Credited", "data": {"amt": 1}}]),
    )
    .await;
    append(
        &server,
        "wallet-1",
        json!([{"type": "Credited", "data": {"amount": 7}}]),
    )
    .await;
    let started = Instant::now();
    let status = loop {
        let status = server.get_json("/v1/projections/wallets").await;
        if status["state"] == "failed" {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["error"]["position"], bad["first_position"]);
    assert_eq!(status["checkpoint"]["position"], bad["first_position"]);
    let doc = server
        .get_json("/v1/projections/wallets/docs/wallet-1")
        .await;
    assert_eq!(
        doc["doc"]["balance"], 5,
        "events before the bad one are applied, none after"
    );
    server.stop().await;
}
