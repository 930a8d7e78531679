//! `/v1/schemas` and how it shapes `/v1/streams`: validated appends, upcast reads.

use serde_json::{Value, json};

use crate::support::{TestServer, problem};

async fn post(server: &TestServer, path: &str, body: Value) -> reqwest::Response {
    server
        .http
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn order_placed_v1() -> Value {
    json!({"type": "object", "properties": {"customer": {"type": "string"}, "total": {"type": "string"}},
           "required": ["customer", "total"], "additionalProperties": false})
}

fn order_placed_v2() -> Value {
    json!({"type": "object", "properties": {"customerId": {"type": "string"}, "total": {"type": "number"},
           "currency": {"type": "string"}}, "required": ["customerId", "total", "currency"]})
}

#[tokio::test]
async fn schemas_validate_appends_and_upcast_old_events_on_read() {
    let server = TestServer::start().await;
    let response = post(
        &server,
        "/v1/schemas/OrderPlaced",
        json!({"schema": order_placed_v1()}),
    )
    .await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.json::<Value>().await.unwrap()["version"], 1);
    // Registering the same schema again is not a change.
    let response = post(
        &server,
        "/v1/schemas/OrderPlaced",
        json!({"schema": order_placed_v1()}),
    )
    .await;
    assert_eq!(response.status(), 200);

    // A v1 event is validated, and stamped with the version it was validated against.
    let response = post(
        &server,
        "/v1/streams/order-1",
        json!([{"id": "a", "type": "OrderPlaced",
        "data": {"customer": "c1", "total": "12.5"}}]),
    )
    .await;
    assert_eq!(response.status(), 201);
    let response = post(
        &server,
        "/v1/streams/order-1",
        json!([{"id": "b", "type": "OrderPlaced",
        "data": {"customer": "c1"}}]),
    )
    .await;
    let violation = problem(response, 422, "schema-violation").await;
    assert!(
        violation["detail"]
            .as_str()
            .unwrap()
            .contains("event 0 (id 'b'"),
        "{violation}"
    );
    assert!(
        !violation["violations"].as_array().unwrap().is_empty(),
        "{violation}"
    );

    // v2 renames and retypes fields: without an upcaster it breaks BACKWARD...
    let check = post(
        &server,
        "/v1/schemas/OrderPlaced/check",
        json!({"schema": order_placed_v2()}),
    )
    .await;
    let report: Value = check.json().await.unwrap();
    assert_eq!(report["compatible"], false, "{report}");
    let response = post(
        &server,
        "/v1/schemas/OrderPlaced",
        json!({"schema": order_placed_v2()}),
    )
    .await;
    let refused = response.status();
    assert!(refused == 409 || refused == 422, "{refused}");
    // ...and with one it is accepted.
    let upcaster = json!({"from_version": 1, "to_version": 2, "steps": [
        {"op": "rename", "from": "/customer", "to": "/customerId"},
        {"op": "convert", "path": "/total", "to": "number"},
        {"op": "add", "path": "/currency", "default": "EUR"}]});
    let response = post(
        &server,
        "/v1/schemas/OrderPlaced",
        json!({"schema": order_placed_v2(), "upcaster": upcaster}),
    )
    .await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let response = post(
        &server,
        "/v1/streams/order-1?expected_version=0",
        json!([{"id": "c",
        "type": "OrderPlaced", "data": {"customerId": "c2", "total": 7, "currency": "USD"}}]),
    )
    .await;
    assert_eq!(response.status(), 201);

    // A consumer written for v2 reads the v1 event as v2.
    let page = server.get_json("/v1/streams/order-1").await;
    assert_eq!(page["events"][0]["schema_version"], 2);
    assert_eq!(
        page["events"][0]["data"],
        json!({"customerId": "c1", "total": 12.5, "currency": "EUR"})
    );
    assert_eq!(page["events"][1]["data"]["currency"], "USD");
    let raw = server.get_json("/v1/streams/order-1?upcast=false").await;
    assert_eq!(raw["events"][0]["schema_version"], 1);
    assert_eq!(
        raw["events"][0]["data"],
        json!({"customer": "c1", "total": "12.5"})
    );
    let all = server.get_json("/v1/streams/$all").await;
    assert_eq!(all["events"][0]["data"]["total"], 12.5);

    let listed = server.get_json("/v1/schemas").await;
    assert_eq!(listed["event_types"][0]["latest_version"], 2);
    let latest = server
        .get_json("/v1/schemas/OrderPlaced/versions/latest")
        .await;
    assert_eq!(latest["upcaster"]["from_version"], 1);
    let response = server
        .http
        .put(server.url("/v1/schemas/OrderPlaced/mode"))
        .json(&json!({"mode": "sometimes"}))
        .send()
        .await
        .unwrap();
    problem(response, 400, "invalid-schema-request").await;
    let response = server
        .http
        .put(server.url("/v1/schemas/OrderPlaced/mode"))
        .json(&json!({"mode": "FULL_TRANSITIVE"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = server
        .http
        .get(server.url("/v1/schemas/Nope/versions/1"))
        .send()
        .await
        .unwrap();
    problem(response, 404, "unknown-event-type").await;

    server.stop().await;
}

#[tokio::test]
async fn the_registry_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::in_dir(dir.path()).await;
    let response = post(
        &server,
        "/v1/schemas/ItemAdded",
        json!({"schema": {"type": "object",
        "properties": {"sku": {"type": "string"}}, "required": ["sku"]}}),
    )
    .await;
    assert_eq!(response.status(), 201);
    server.stop().await;
    let server = TestServer::in_dir(dir.path()).await;
    let response = post(
        &server,
        "/v1/streams/cart-1",
        json!([{"type": "ItemAdded", "data": {"sku": 5}}]),
    )
    .await;
    problem(response, 422, "schema-violation").await;
    server.stop().await;
}
