//! An order service, event-sourced in Proteus.
//!
//! The write side handles commands: it loads an order (its snapshot and the events after it),
//! folds them into the current state, decides which events the command produces, and appends
//! them with the version it loaded as the expected version. If another writer got there first
//! the append is refused (409) and the command is retried on the new state; nothing is lost or
//! applied twice. The read side is a projection, `orders`, that Proteus keeps up to date; the
//! service reads it after its own writes by waiting for the position they reached.
//!
//! Run a server (`cargo run --release -p proteus -- serve`), then `cargo run -p order-service`
//! (`PROTEUS_SERVER` points it elsewhere).

use proteus_client::proteus_eventstore::{ExpectedVersion, ProposedEvent, RecordedEvent};
use proteus_client::{Client, ClientError};
use serde_json::{Value, json};

/// Attempts of one command when other writers keep winning the race.
const COMMAND_ATTEMPTS_MAX: u32 = 10;
/// A snapshot is stored every this many events of an order.
const SNAPSHOT_EVERY_EVENTS: u64 = 50;

/// An order as its events say it is.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Order {
    placed: bool,
    shipped: bool,
    customer: String,
    items: Vec<String>,
    total: f64,
}

impl Order {
    fn apply(&mut self, event_type: &str, data: &Value) {
        match event_type {
            "OrderPlaced" => {
                self.placed = true;
                self.customer = data["customer"].as_str().unwrap_or_default().to_owned();
            }
            "ItemAdded" => {
                self.items
                    .push(data["sku"].as_str().unwrap_or_default().to_owned());
                self.total += data["price"].as_f64().unwrap_or(0.0);
            }
            "OrderShipped" => self.shipped = true,
            _ => {}
        }
    }
}

enum Command {
    Place { customer: String },
    AddItem { sku: String, price: f64 },
    Ship,
}

/// What a command decides, or why it is refused: the domain rules live here.
fn decide(order: &Order, command: &Command) -> Result<Vec<(&'static str, Value)>, String> {
    match command {
        Command::Place { customer } if !order.placed => {
            Ok(vec![("OrderPlaced", json!({ "customer": customer }))])
        }
        Command::Place { .. } => Err("the order is already placed".into()),
        Command::AddItem { .. } if !order.placed => Err("place the order first".into()),
        Command::AddItem { .. } if order.shipped => Err("the order has shipped".into()),
        Command::AddItem { sku, price } => {
            Ok(vec![("ItemAdded", json!({ "sku": sku, "price": price }))])
        }
        Command::Ship if order.items.is_empty() => Err("an empty order cannot ship".into()),
        Command::Ship if order.shipped => Err("the order has already shipped".into()),
        Command::Ship => Ok(vec![("OrderShipped", json!({}))]),
    }
}

/// Loads an order: the latest snapshot, then the events after it. Returns the state and the
/// version it reflects (`None`: no such order yet).
async fn load(client: &Client, stream: &str) -> Result<(Order, Option<u64>), ClientError> {
    match client.read_aggregate(stream).await {
        Ok(aggregate) => {
            let mut order = match &aggregate.snapshot {
                Some(snapshot) => serde_json::from_slice(&snapshot.data).unwrap_or_default(),
                None => Order::default(),
            };
            for event in &aggregate.events {
                fold(&mut order, event);
            }
            Ok((order, Some(aggregate.last_version)))
        }
        Err(ClientError::Problem { status: 404, .. }) => Ok((Order::default(), None)),
        Err(e) => Err(e),
    }
}

fn fold(order: &mut Order, event: &RecordedEvent) {
    let data: Value = serde_json::from_slice(&event.data).unwrap_or(Value::Null);
    order.apply(&event.event_type, &data);
}

/// Handles one command with optimistic concurrency; returns the global position of the last
/// event it appended.
async fn handle(client: &Client, order_id: &str, command: &Command) -> Result<u64, String> {
    let stream = format!("order-{order_id}");
    for _ in 0..COMMAND_ATTEMPTS_MAX {
        let (order, version) = load(client, &stream).await.map_err(|e| e.to_string())?;
        let decided = decide(&order, command)?;
        let events: Vec<ProposedEvent> = decided
            .into_iter()
            .map(|(event_type, data)| {
                ProposedEvent::new(
                    uuid::Uuid::now_v7().to_string(),
                    event_type,
                    data.to_string().into_bytes(),
                )
            })
            .collect();
        let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        match client.append_events(&stream, expected, &events).await {
            Ok(outcome) => {
                if outcome.last_version / SNAPSHOT_EVERY_EVENTS
                    != version.map_or(0, |v| v / SNAPSHOT_EVERY_EVENTS)
                {
                    let (state, at) = load(client, &stream).await.map_err(|e| e.to_string())?;
                    let state = serde_json::to_value(state).unwrap_or_default();
                    client
                        .put_snapshot(&stream, at.unwrap_or(0), "Order.v1", &state)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                return Ok(outcome.last_position);
            }
            // Another writer appended first: decide again on the new state.
            Err(ClientError::Problem {
                status: 409, body, ..
            }) if body["type"] == "/problems/wrong-expected-version" => {
                println!(
                    "  conflict on {stream} (now at version {}), retrying",
                    body["actual_version"]
                );
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!(
        "gave up after {COMMAND_ATTEMPTS_MAX} conflicts on {stream}"
    ))
}

async fn setup(client: &Client) -> Result<(), ClientError> {
    let schemas = [
        (
            "OrderPlaced",
            json!({"type": "object", "properties": {"customer": {"type": "string"}}, "required": ["customer"]}),
        ),
        (
            "ItemAdded",
            json!({"type": "object", "properties": {"sku": {"type": "string"}, "price": {"type": "number", "minimum": 0}}, "required": ["sku", "price"]}),
        ),
        ("OrderShipped", json!({"type": "object"})),
    ];
    for (event_type, schema) in &schemas {
        client.register_schema(event_type, schema, None).await?;
    }
    let definition = json!({
        "source": {"category": "order"},
        "state": {"key": "stream", "handlers": {
            "OrderPlaced": {"set": {"status": {"const": "placed"}, "customer": {"path": "/data/customer"},
                                     "total": {"const": 0}, "items": {"const": 0}}},
            "ItemAdded": {"increment": {"total": {"path": "/data/price"}, "items": {"const": 1}}},
            "OrderShipped": {"set": {"status": {"const": "shipped"}}}
        }}
    });
    client.create_projection("orders", &definition).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let server = std::env::var("PROTEUS_SERVER").unwrap_or_else(|_| "http://127.0.0.1:7070".into());
    let client = Client::new(&server).map_err(|e| e.to_string())?;
    setup(&client).await.map_err(|e| e.to_string())?;
    // Order ids unique to this run, so the example can run again against the same server.
    let run = &uuid::Uuid::now_v7().simple().to_string()[24..];
    let alice = format!("{run}-1");
    let bob = format!("{run}-2");

    let mut last = 0;
    for (order, command) in [
        (
            &alice,
            Command::Place {
                customer: "alice".into(),
            },
        ),
        (
            &alice,
            Command::AddItem {
                sku: "book".into(),
                price: 12.5,
            },
        ),
        (
            &bob,
            Command::Place {
                customer: "bob".into(),
            },
        ),
        (
            &bob,
            Command::AddItem {
                sku: "lamp".into(),
                price: 30.0,
            },
        ),
        (&alice, Command::Ship),
    ] {
        last = last.max(handle(&client, order, &command).await?);
    }
    // A refused command: the domain says no, nothing is appended.
    match handle(
        &client,
        &alice,
        &Command::AddItem {
            sku: "pen".into(),
            price: 1.0,
        },
    )
    .await
    {
        Err(reason) => println!("refused: add a pen to order {alice}: {reason}"),
        Ok(_) => return Err("a shipped order accepted an item".into()),
    }
    // Two writers race on Bob's order: both items land, one after a retry.
    let bulb = Command::AddItem {
        sku: "bulb".into(),
        price: 4.0,
    };
    let shade = Command::AddItem {
        sku: "shade".into(),
        price: 9.0,
    };
    let (a, b) = tokio::join!(handle(&client, &bob, &bulb), handle(&client, &bob, &shade));
    last = last.max(a?).max(b?);

    // Read your writes: wait until the projection has processed the last position appended.
    let after = last.to_string();
    let page = client
        .query_projection(
            "orders",
            &[
                ("filter", "customer:in:alice,bob"),
                ("sort", "-total"),
                ("wait_for_position", &after),
                ("limit", "1000"),
            ],
        )
        .await
        .map_err(|e| e.to_string())?;
    println!("orders of this run (from the projection):");
    for item in page["items"].as_array().into_iter().flatten() {
        let key = item["key"].as_str().unwrap_or_default();
        if key.contains(run) {
            let doc = &item["doc"];
            println!(
                "  {key}: {} for {}, {} items, total {}",
                doc["status"], doc["customer"], doc["items"], doc["total"]
            );
        }
    }
    let (bob_order, version) = load(&client, &format!("order-{bob}"))
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "order-{bob} folded from its events at version {:?}: {:?}",
        version, bob_order.items
    );
    Ok(())
}
