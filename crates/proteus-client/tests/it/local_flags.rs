//! `LocalFlags`: in-process evaluation that follows the server's changes.

use std::time::{Duration, Instant};

use proteus_client::{ChangeOptions, Client, LocalFlags};
use serde_json::{Map, Value, json};

use crate::TestServer;

fn banner(text: &str) -> Value {
    json!({"flags": {"banner": {"state": "ENABLED", "variants": {"v": text}, "defaultVariant": "v"}}})
}

fn context() -> Map<String, Value> {
    json!({"targetingKey": "user-1"})
        .as_object()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn local_flags_evaluate_in_process_and_follow_changes() {
    let server = TestServer::start().await;
    let client = Client::new(&server.url).unwrap();
    client
        .put_flag_set("prod", &banner("one"), &ChangeOptions::default())
        .await
        .unwrap();
    let flags = LocalFlags::connect(client.clone(), "prod").await.unwrap();
    assert_eq!(flags.version(), 1);
    let snapshot = flags.snapshot();
    assert_eq!(
        snapshot.flags.evaluate("banner", &context(), 0).value,
        Some(&json!("one"))
    );

    let changed_at = Instant::now();
    client
        .put_flag_set("prod", &banner("two"), &ChangeOptions::default())
        .await
        .unwrap();
    while flags.version() < 2 {
        assert!(
            changed_at.elapsed() < Duration::from_secs(5),
            "the change did not reach the local flags"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        flags
            .snapshot()
            .flags
            .evaluate("banner", &context(), 0)
            .value,
        Some(&json!("two"))
    );
    // A snapshot taken earlier stays consistent.
    assert_eq!(snapshot.version, 1);

    let missing = LocalFlags::connect(client, "nope").await.err().unwrap();
    assert!(missing.to_string().contains("nope"), "{missing}");
}
