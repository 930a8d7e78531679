//! The embedded read-model store runs the ReadModelStore conformance suite.

use std::sync::Arc;

use async_trait::async_trait;
use proteus_projections::ReadModelStore;
use proteus_projections::conformance::StoreHarness;
use proteus_projections_embedded::EmbeddedReadModelStore;

struct Harness {
    dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        Harness {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

#[async_trait]
impl StoreHarness for Harness {
    async fn open(&self) -> Arc<dyn ReadModelStore> {
        Arc::new(EmbeddedReadModelStore::open(self.dir.path()).unwrap())
    }
}

proteus_projections::read_model_store_conformance_tests!(Harness::new());

/// Files written before lists had rows kept each list as one document; opening moves them to
/// rows, and appends then continue them.
#[tokio::test]
async fn list_documents_of_older_files_move_to_rows_at_open() {
    use proteus_projections::{
        Checkpoint, ListItem, ProjectionDefinition, ProjectionName, ProjectionRecord, RunState,
        Write,
    };
    use serde_json::json;

    let dir = tempfile::tempdir().unwrap();
    let name = ProjectionName::parse("recent").unwrap();
    let item = |i: u64| json!({"i": i});
    let checkpoint = |position| Checkpoint {
        position,
        events_processed: position,
        updated_ms: 1,
        last_event: None,
    };
    {
        let store = EmbeddedReadModelStore::open(dir.path()).unwrap();
        let definition = ProjectionDefinition::parse(&json!({
            "source": {"category": "order"}, "list": {"key": "stream", "max_items": 3}
        }))
        .unwrap();
        store
            .save_projection(&ProjectionRecord {
                name: name.clone(),
                definition,
                state: RunState::Running,
                created_ms: 1,
                updated_ms: 1,
            })
            .await
            .unwrap();
        // What the older projector wrote: whole documents.
        let old = json!({"items": [item(4), item(5), item(6)], "count": 7});
        store
            .commit(
                &name,
                vec![Write::Doc {
                    key: "order-1".into(),
                    doc: Some(old),
                }],
                checkpoint(7),
            )
            .await
            .unwrap();
    }
    let store = EmbeddedReadModelStore::open(dir.path()).unwrap();
    assert_eq!(
        store.get(&name, "order-1").await.unwrap(),
        Some(json!({"items": [item(4), item(5), item(6)], "count": 7}))
    );
    store
        .commit(
            &name,
            vec![Write::Append {
                key: "order-1".into(),
                items: vec![ListItem::new(&item(7)), ListItem::new(&item(8))],
                max_items: 3,
            }],
            checkpoint(9),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get(&name, "order-1").await.unwrap(),
        Some(json!({"items": [item(6), item(7), item(8)], "count": 9}))
    );
}
