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

/// Polls `check` every 10 ms until it holds, failing after 5 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within 5 s: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn banner(service: &FlagService) -> Option<(u64, Value)> {
    service.get(&set()).map(|live| {
        (
            live.version,
            live.document["flags"]["banner"]["variants"]["v"].clone(),
        )
    })
}

/// Two services on one log, as two `proteus serve` instances sharing NATS: a change made
/// through one reaches the other; two changes made at once from the same version cannot both
/// apply (the first in the log wins everywhere, the other answers Conflict); a scheduled change
/// applies once although both instances hold the schedule; an instance opened later agrees.
#[tokio::test]
async fn instances_sharing_the_log_follow_each_other_and_never_diverge() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    let a = FlagService::open(log.clone()).await.unwrap();
    let b = FlagService::open(log.clone()).await.unwrap();
    let mut b_changes = b.subscribe();

    assert_eq!(put(&a, "one", None).await.unwrap(), Some(1));
    eventually("b sees version 1", || banner(&b) == Some((1, json!("one")))).await;
    let notice = b_changes.recv().await.unwrap();
    assert_eq!((notice.set, notice.version), (set(), 1));

    // Both start from version 1 before either change reaches the log.
    let (from_a, from_b) = tokio::join!(put(&a, "from a", None), put(&b, "from b", None));
    let winner = match (&from_a, &from_b) {
        (Ok(Some(2)), Err(FlagServiceError::Conflict { actual: 2, .. })) => "from a",
        (Err(FlagServiceError::Conflict { actual: 2, .. }), Ok(Some(2))) => "from b",
        other => panic!("one change applies and the other conflicts, got {other:?}"),
    };
    eventually("both instances hold the winner", || {
        banner(&a) == Some((2, json!(winner))) && banner(&b) == Some((2, json!(winner)))
    })
    .await;

    // A change scheduled through A is held by both; it applies once.
    let due = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 300;
    let scheduled = a
        .schedule(
            &set(),
            Change::PutSet {
                document: document("scheduled"),
            },
            due,
            author("ada"),
            ValidationMode::Strict,
        )
        .await
        .unwrap();
    eventually("b holds the schedule", || b.schedules(&set()).len() == 1).await;
    eventually("the schedule applied on both", || {
        banner(&a) == Some((3, json!("scheduled")))
            && banner(&b) == Some((3, json!("scheduled")))
            && a.schedules(&set()).is_empty()
            && b.schedules(&set()).is_empty()
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(banner(&a).unwrap().0, 3, "applied once");
    assert_eq!(banner(&b).unwrap().0, 3, "applied once");

    // An instance opened now replays the same history.
    let c = FlagService::open(log.clone()).await.unwrap();
    assert_eq!(banner(&c), Some((3, json!("scheduled"))));
    let history = c.history(&set(), None, None, 10).await.unwrap();
    let versions: Vec<u64> = history.iter().map(|r| r.version).collect();
    assert_eq!(versions, [3, 2, 1]);
    assert_eq!(
        history[1].document["flags"]["banner"]["variants"]["v"],
        json!(winner)
    );
    assert!(
        history[0]
            .comment
            .as_deref()
            .is_some_and(|c| c.contains(&scheduled.id)),
        "{:?}",
        history[0].comment
    );
}

/// Revisions read back once (history, versions) are served from the revision cache: once the
/// audit topic is gone from the log, what was read is still readable, what was not is an
/// error.
#[tokio::test]
async fn revisions_read_once_are_served_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    let cache =
        proteus_cache::TieredCache::open(proteus_cache::TieredConfig::new("flagsets"), None, None)
            .await
            .unwrap();
    let service = FlagService::open_with(
        log.clone(),
        proteus_flagsets_service::FlagServiceConfig {
            revision_cache: Some(cache),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    for text in ["one", "two", "three"] {
        put(&service, text, None).await.unwrap();
    }
    let history = service.history(&set(), None, Some(3), 10).await.unwrap();
    assert_eq!(
        history.iter().map(|r| r.version).collect::<Vec<_>>(),
        [2, 1]
    );

    log.delete_topic(&proteus_flagsets::audit::topic())
        .await
        .unwrap();
    let again = service.history(&set(), None, Some(3), 10).await.unwrap();
    assert_eq!(again, history, "served from the cache");
    assert_eq!(service.revision(&set(), 1).await.unwrap(), history[1]);
    let never_read = service.revision(&set(), 3).await;
    assert!(
        matches!(never_read, Err(FlagServiceError::Log(_))),
        "version 3 was never read: {never_read:?}"
    );
}

/// Usage recorded through one instance reaches the others' stale-flag reports at their next
/// flush: each merges the snapshots the others wrote.
#[tokio::test]
async fn usage_recorded_through_one_instance_reaches_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    let a = FlagService::open(log.clone()).await.unwrap();
    let b = FlagService::open(log.clone()).await.unwrap();
    put(&a, "one", None).await.unwrap();
    eventually("b sees the set", || b.get(&set()).is_some()).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let live = a.get(&set()).unwrap();
    live.record_evaluation(live.flags.flag("banner").unwrap(), now_ms);

    a.flush_usage().await;
    b.flush_usage().await;
    let criteria = proteus_flagsets::stale::StaleCriteria {
        unused_for_ms: Some(1_000),
        uniform_for_ms: None,
    };
    // An hour later, every flag is unused for more than a second: the report lists them all
    // with when each was last evaluated.
    let report = b.stale_flags(&set(), criteria, now_ms + 3_600_000).unwrap();
    let banner = report.flags.iter().find(|f| f.key == "banner").unwrap();
    assert_eq!(banner.last_evaluated_ms, Some(now_ms / 1_000 * 1_000));
}
