//! The schema registry's runtime over a real embedded log, shared by two services as two
//! `proteus serve` instances share a NATS log: registrations made through one reach the other;
//! two registrations of one type made at once cannot both become its next version; an instance
//! opened later replays the same registry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proteus_log::port::Log;
use proteus_log_embedded::{EmbeddedConfig, EmbeddedLog};
use proteus_schemas_service::SchemaService;
use proteus_schemas_service::SchemaServiceError;
use proteus_schemas_service::proteus_schemas::{
    CompatibilityMode, EventTypeName, RegistryConfig, SchemaPolicy,
};
use serde_json::{Value, json};

async fn open(log: &Arc<dyn Log>) -> SchemaService {
    SchemaService::open(
        log.clone(),
        RegistryConfig::default(),
        SchemaPolicy::Lenient,
    )
    .await
    .unwrap()
}

/// A schema of an object whose optional properties are `fields`.
fn schema(fields: &[&str]) -> Value {
    let properties: serde_json::Map<String, Value> = fields
        .iter()
        .map(|f| (f.to_string(), json!({"type": "string"})))
        .collect();
    json!({"type": "object", "properties": properties, "additionalProperties": false})
}

/// Every version of `event_type` the service holds, as its properties' names.
fn versions(service: &SchemaService, event_type: &EventTypeName) -> Vec<Vec<String>> {
    let registry = service.registry();
    let Ok(versions) = registry.versions(event_type) else {
        return Vec::new();
    };
    versions
        .iter()
        .map(|v| {
            v.schema["properties"]
                .as_object()
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default()
        })
        .collect()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "not within 5 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn instances_sharing_the_log_hold_one_registry() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn Log> = Arc::new(
        EmbeddedLog::open(EmbeddedConfig::new(dir.path()))
            .await
            .unwrap(),
    );
    let a = open(&log).await;
    let b = open(&log).await;
    let placed = EventTypeName::parse("OrderPlaced").unwrap();

    // Registered through A, seen through B.
    assert_eq!(
        a.register(&placed, schema(&["id"]), None).await.unwrap(),
        (1, true)
    );
    eventually("B holds version 1", || versions(&b, &placed).len() == 1).await;
    b.set_mode(&placed, CompatibilityMode::None).await.unwrap();
    eventually("A holds B's mode", || {
        a.registry().mode(&placed) == CompatibilityMode::None
    })
    .await;

    // Both prepare version 2 from version 1 before either reaches the log.
    let (from_a, from_b) = tokio::join!(
        a.register(&placed, schema(&["id", "from_a"]), None),
        b.register(&placed, schema(&["id", "from_b"]), None),
    );
    let winner = match (&from_a, &from_b) {
        (Ok((2, true)), Err(SchemaServiceError::Conflict { .. })) => "from_a",
        (Err(SchemaServiceError::Conflict { .. }), Ok((2, true))) => "from_b",
        other => panic!("one registration applies and the other conflicts, got {other:?}"),
    };
    let refused = from_a.err().or(from_b.err()).unwrap().to_string();
    assert!(refused.contains("another instance"), "{refused}");
    let expected = vec![
        vec!["id".to_owned()],
        vec![winner.to_owned(), "id".to_owned()],
    ];
    let sorted = |service: &SchemaService| {
        versions(service, &placed)
            .into_iter()
            .map(|mut fields| {
                fields.sort();
                fields
            })
            .collect::<Vec<_>>()
    };
    eventually("both hold the winner as version 2", || {
        sorted(&a) == expected && sorted(&b) == expected
    })
    .await;

    // The loser registers again, on top of the winner.
    let loser = if winner == "from_a" { &b } else { &a };
    assert_eq!(
        loser
            .register(&placed, schema(&["id", winner, "again"]), None)
            .await
            .unwrap(),
        (3, true)
    );
    let c = open(&log).await;
    assert_eq!(versions(&c, &placed).len(), 3);
    assert_eq!(c.registry().mode(&placed), CompatibilityMode::None);
    eventually("A and B hold version 3", || {
        versions(&a, &placed).len() == 3 && versions(&b, &placed).len() == 3
    })
    .await;
}
