//! The flag-set runtime over a real embedded log: versions, conflicts, refusals, restarts,
//! history and files.

use std::sync::Arc;

use proteus_flagsets::{Change, FlagSetName, ValidationMode};
use proteus_flagsets_service::{Author, FlagService, FlagServiceError, files};
use proteus_log::port::Log;
use proteus_log_embedded::{EmbeddedConfig, EmbeddedLog};
use serde_json::{Value, json};

async fn open_log(dir: &std::path::Path) -> Arc<dyn Log> {
    Arc::new(EmbeddedLog::open(EmbeddedConfig::new(dir)).await.unwrap())
}

fn set() -> FlagSetName {
    FlagSetName::parse("prod").unwrap()
}

fn author(who: &str) -> Author {
    Author {
        actor: who.into(),
        comment: Some(format!("by {who}")),
    }
}

fn document(text: &str) -> Value {
    json!({"flags": {"banner": {"state": "ENABLED", "variants": {"v": text}, "defaultVariant": "v"}}})
}

async fn put(
    service: &FlagService,
    text: &str,
    expected: Option<u64>,
) -> Result<Option<u64>, FlagServiceError> {
    service
        .apply(
            &set(),
            Change::PutSet {
                document: document(text),
            },
            author("ada"),
            ValidationMode::Strict,
            expected,
        )
        .await
        .map(|r| r.map(|r| r.version))
}

#[tokio::test]
async fn versions_conflicts_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let service = FlagService::open(open_log(dir.path()).await).await.unwrap();
    let mut changes = service.subscribe();
    assert_eq!(put(&service, "one", Some(0)).await.unwrap(), Some(1));
    assert_eq!(changes.recv().await.unwrap().version, 1);
    assert_eq!(
        put(&service, "one", None).await.unwrap(),
        None,
        "no change, no version"
    );
    assert!(matches!(
        put(&service, "two", Some(0)).await,
        Err(FlagServiceError::Conflict {
            actual: 1,
            expected: 0,
            ..
        })
    ));
    let invalid =
        json!({"flags": {"x": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "b"}}});
    let refused = service
        .apply(
            &set(),
            Change::PutSet { document: invalid },
            author("ada"),
            ValidationMode::Strict,
            None,
        )
        .await;
    assert!(matches!(
        refused,
        Err(FlagServiceError::InvalidDefinitions(_))
    ));
    assert_eq!(
        service.get(&set()).unwrap().version,
        1,
        "a refused change makes no version"
    );
    assert_eq!(put(&service, "two", Some(1)).await.unwrap(), Some(2));
    let live = service.get(&set()).unwrap();
    let context = serde_json::Map::new();
    assert_eq!(
        live.flags.evaluate("banner", &context, 0).value,
        Some(&json!("two"))
    );
}

#[tokio::test]
async fn a_restart_rebuilds_every_set_and_its_history_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open_log(dir.path()).await;
        let service = FlagService::open(log.clone()).await.unwrap();
        put(&service, "one", None).await.unwrap();
        put(&service, "two", None).await.unwrap();
        service
            .apply(
                &FlagSetName::parse("dev").unwrap(),
                Change::PutSet {
                    document: document("dev"),
                },
                author("bob"),
                ValidationMode::Strict,
                None,
            )
            .await
            .unwrap();
        service
            .apply(
                &FlagSetName::parse("dev").unwrap(),
                Change::DeleteSet,
                author("bob"),
                ValidationMode::Strict,
                None,
            )
            .await
            .unwrap();
        log.shutdown().await.unwrap();
    }
    let service = FlagService::open(open_log(dir.path()).await).await.unwrap();
    let names: Vec<String> = service.list().iter().map(|s| s.name.to_string()).collect();
    assert_eq!(names, ["prod"], "the deleted set stays deleted");
    assert_eq!(service.get(&set()).unwrap().version, 2);
    let history = service
        .history(&set(), Some("banner"), None, 10)
        .await
        .unwrap();
    let versions: Vec<u64> = history.iter().map(|r| r.version).collect();
    assert_eq!(versions, [2, 1]);
    assert_eq!(history[0].comment.as_deref(), Some("by ada"));
    let rolled = service
        .rollback(&set(), 1, author("carol"), Some(2))
        .await
        .unwrap();
    assert_eq!((rolled.version, rolled.restored_version), (3, Some(1)));
    assert_eq!(service.get(&set()).unwrap().document, document("one"));
    assert!(matches!(
        service.revision(&set(), 9).await,
        Err(FlagServiceError::VersionNotFound { latest: 3, .. })
    ));
}

#[tokio::test]
async fn flag_files_merge_and_refuse_clashes() {
    let dir = tempfile::tempdir().unwrap();
    let flags = dir.path().join("flags");
    std::fs::create_dir(&flags).unwrap();
    std::fs::write(flags.join("a.json"), document("a").to_string()).unwrap();
    std::fs::write(
        flags.join("b.json"),
        json!({"flags": {"other": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"}}}).to_string(),
    )
    .unwrap();
    let merged = files::load(&flags).unwrap();
    assert_eq!(merged["flags"].as_object().unwrap().len(), 2);
    std::fs::write(flags.join("c.json"), document("clash").to_string()).unwrap();
    let error = files::load(&flags).unwrap_err();
    assert!(
        error.contains("'banner'") && error.contains("a.json") && error.contains("c.json"),
        "{error}"
    );
    std::fs::remove_file(flags.join("c.json")).unwrap();

    let service = FlagService::open(open_log(&dir.path().join("data")).await)
        .await
        .unwrap();
    let default = FlagSetName::default_set();
    assert_eq!(
        files::apply(&service, &default, &flags).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        files::apply(&service, &default, &flags).await.unwrap(),
        None
    );
    let revision = service.revision(&default, 1).await.unwrap();
    assert!(revision.actor.starts_with("file:"), "{}", revision.actor);
    assert!(
        files::load(&dir.path().join("missing"))
            .unwrap_err()
            .contains("cannot read flag path")
    );
}

#[tokio::test]
async fn pending_schedules_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let far = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 3_600_000;
    let id = {
        let log = open_log(dir.path()).await;
        let service = FlagService::open(log.clone()).await.unwrap();
        put(&service, "one", None).await.unwrap();
        let kept = service
            .schedule(
                &set(),
                Change::PutSet {
                    document: document("later"),
                },
                far,
                author("ada"),
                ValidationMode::Strict,
            )
            .await
            .unwrap();
        let cancelled = service
            .schedule(
                &set(),
                Change::DeleteSet,
                far,
                author("ada"),
                ValidationMode::Strict,
            )
            .await
            .unwrap();
        service
            .cancel_schedule(&set(), &cancelled.id, author("bob"))
            .await
            .unwrap();
        log.shutdown().await.unwrap();
        kept.id
    };
    let service = FlagService::open(open_log(dir.path()).await).await.unwrap();
    let pending = service.schedules(&set());
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, id);
    assert_eq!(
        pending[0].change,
        Change::PutSet {
            document: document("later")
        }
    );
    assert_eq!(
        service.get(&set()).unwrap().version,
        1,
        "schedules are not versions"
    );
}
