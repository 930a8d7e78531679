//! The experiments runtime over a real embedded log: replay, lifecycle refusals, aggregation,
//! checkpoints and resume, decisions rolled out to the flag.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proteus_experiments_service::proteus_experiments::ExperimentDefinition;
use proteus_experiments_service::{
    ExperimentService, ExperimentServiceConfig, ExperimentServiceError, namespace_of,
};
use proteus_flagsets::{Change, FlagSetName, ValidationMode};
use proteus_flagsets_service::exposures::{self, Exposure};
use proteus_flagsets_service::{Author, FlagService};
use proteus_kv::KvStore;
use proteus_kv_embedded::EmbeddedKvStore;
use proteus_log::port::Log;
use proteus_log::{Event, ReadFrom, ReadLimits, TopicConfig, TopicName};
use proteus_log_embedded::{EmbeddedConfig, EmbeddedLog};
use serde_json::{Value, json};

async fn open_log(dir: &std::path::Path) -> Arc<dyn Log> {
    Arc::new(EmbeddedLog::open(EmbeddedConfig::new(dir)).await.unwrap())
}

/// The embedded key-value store in `dir` (opened again after a restart, like the log).
fn open_kv(dir: &std::path::Path) -> Arc<dyn KvStore> {
    Arc::new(EmbeddedKvStore::open(&dir.join("kv.redb")).unwrap())
}

fn config() -> ExperimentServiceConfig {
    ExperimentServiceConfig {
        poll_ms: 20,
        checkpoint_interval_ms: 0,
        ..ExperimentServiceConfig::default()
    }
}

async fn flags(log: &Arc<dyn Log>) -> FlagService {
    let flags = FlagService::open(log.clone()).await.unwrap();
    let document = json!({"flags": {"checkout": {
        "state": "ENABLED",
        "variants": {"control": "grey", "green": "green"},
        "defaultVariant": "control",
        "targeting": {"fractional": [["control", 50], ["green", 50]]}
    }}});
    flags
        .apply(
            &FlagSetName::parse("prod").unwrap(),
            Change::PutSet { document },
            Author::default(),
            ValidationMode::Strict,
            None,
        )
        .await
        .unwrap();
    flags
}

fn definition(id: &str, flag: &str, treatment: &str) -> ExperimentDefinition {
    parse(
        &json!({
            "id": id,
            "name": "Green checkout",
            "flag_set": "prod",
            "flag": flag,
            "arms": [{"variant": "control", "weight": 1}, {"variant": treatment, "weight": 1}],
            "control": "control",
            "metrics": [{"id": "purchase", "kind": "conversion",
                         "source": {"topic": "shop", "event_type": "order.placed"}}],
            "primary_metric": "purchase",
            "minimum_detectable_effect": {"relative": 0.1}
        })
        .to_string(),
    )
}

fn parse(text: &str) -> ExperimentDefinition {
    ExperimentDefinition::from_json(text).unwrap()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn expose(log: &Arc<dyn Log>, users: std::ops::Range<u32>) {
    let topic = TopicName::parse(exposures::TOPIC).unwrap();
    if log.describe_topic(&topic).await.is_err() {
        log.put_topic(&topic, TopicConfig::default()).await.unwrap();
    }
    let events: Vec<Event> = users
        .map(|n| {
            exposures::to_event(&Exposure {
                flag_set: "prod".into(),
                flag: "checkout".into(),
                variant: if n % 2 == 0 { "control" } else { "green" }.into(),
                targeting_key: format!("user-{n}"),
                reason: "SPLIT",
                time_ms: now_ms(),
            })
            .unwrap()
        })
        .collect();
    log.append(&topic, events).await.unwrap();
}

async fn buy(log: &Arc<dyn Log>, users: &[u32]) {
    let topic = TopicName::parse("shop").unwrap();
    if log.describe_topic(&topic).await.is_err() {
        log.put_topic(&topic, TopicConfig::default()).await.unwrap();
    }
    let events: Vec<Event> = users
        .iter()
        .map(|n| {
            // Unique ids: the log drops a repeated (source, id) as a retry.
            static ORDERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let order = ORDERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let event = json!({"specversion": "1.0", "id": format!("order-{n}-{order}"), "source": "/shop",
                "type": "order.placed", "partitionkey": format!("user-{n}"), "data": {"amount": 10}});
            Event::from_json(&serde_json::to_vec(&event).unwrap()).unwrap()
        })
        .collect();
    log.append(&topic, events).await.unwrap();
}

/// Creates `definition` as a draft and starts it.
async fn create_and_start(service: &ExperimentService, definition: ExperimentDefinition) {
    let id = definition.id.clone();
    service.create(definition, "me").await.unwrap();
    service.start(&id, "me").await.unwrap();
}

/// The results once `done` holds, within 10 s.
async fn results_when(
    service: &ExperimentService,
    id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, results) = service.results(id).unwrap();
        let results = serde_json::to_value(results).unwrap();
        if done(&results) {
            return results;
        }
        assert!(
            Instant::now() < deadline,
            "results never got there: {results:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn definitions_are_checked_against_the_flag_and_the_lifecycle_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    let flags = flags(&log).await;
    let service = ExperimentService::open(log.clone(), open_kv(dir.path()), flags, config())
        .await
        .unwrap();

    match service.create(definition("x", "nope", "green"), "me").await {
        Err(ExperimentServiceError::Definition(errors)) => {
            assert!(errors.has_path("/flag"), "{errors}");
            assert!(errors.to_string().contains("checkout"), "{errors}");
        }
        other => panic!("{other:?}"),
    }
    match service
        .create(definition("x", "checkout", "blue"), "me")
        .await
    {
        Err(ExperimentServiceError::Definition(errors)) => {
            assert!(errors.to_string().contains("blue"), "{errors}")
        }
        other => panic!("{other:?}"),
    }
    let errors = ExperimentDefinition::from_json("{\"id\": 3}").unwrap_err();
    assert!(errors.has_path("/id"), "{errors}");

    let info = service
        .create(definition("green", "checkout", "green"), "me")
        .await
        .unwrap();
    assert_eq!(
        (info.state, info.allowed_actions.clone()),
        ("draft", vec!["redefine", "start", "delete"])
    );
    assert!(matches!(
        service
            .create(definition("green", "checkout", "green"), "me")
            .await,
        Err(ExperimentServiceError::AlreadyExists { .. })
    ));
    match service.stop("green", "me").await {
        Err(ExperimentServiceError::Lifecycle {
            allowed_actions,
            error,
        }) => {
            assert_eq!(
                allowed_actions,
                vec!["redefine", "start", "delete"],
                "{error}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        service.start("missing", "me").await,
        Err(ExperimentServiceError::NotFound { .. })
    ));
    service
        .redefine("green", definition("green", "checkout", "green"), "me")
        .await
        .unwrap();
    service.start("green", "me").await.unwrap();
    assert!(matches!(
        service
            .redefine("green", definition("green", "checkout", "green"), "me")
            .await,
        Err(ExperimentServiceError::Lifecycle { .. })
    ));
    service.close().await;
    drop(service);

    // Replayed from the log.
    let flags = FlagService::open(log.clone()).await.unwrap();
    let service = ExperimentService::open(log.clone(), open_kv(dir.path()), flags, config())
        .await
        .unwrap();
    let all = service.list();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, "running");
    assert_eq!(all[0].definition.flag, "checkout");
    service.close().await;
}

#[tokio::test]
async fn aggregation_checkpoints_and_resumes_without_counting_twice() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    let flags = flags(&log).await;
    let service = ExperimentService::open(log.clone(), open_kv(dir.path()), flags, config())
        .await
        .unwrap();
    create_and_start(&service, definition("green", "checkout", "green")).await;
    expose(&log, 0..20).await;
    // Three control users (even) and one green user (odd) buy; a unit never exposed does not count.
    buy(&log, &[0, 2, 4, 1, 999]).await;
    let results = results_when(&service, "green", |r| {
        r["aggregation"]["exposures_applied"] == 20
            && r["aggregation"]["metric_events_applied"] == 5
    })
    .await;
    let arms = &results["metrics"][0]["arms"];
    assert_eq!((&arms[0]["n"], &arms[1]["n"]), (&json!(10), &json!(10)));
    assert_eq!(arms[0]["mean"], 0.3);
    assert_eq!(arms[1]["mean"], 0.1);
    assert_eq!(results["srm"]["status"], "ok");
    service.close().await;
    let positions = service.positions("green").unwrap();
    assert_eq!(positions[exposures::TOPIC][&0], 20);
    assert_eq!(positions["shop"][&0], 5);
    drop(service);

    // A checkpoint was written...
    let kv = open_kv(dir.path());
    let namespace = namespace_of("green").unwrap();
    let stored = kv
        .get_many(&namespace, &[b"checkpoint".to_vec()])
        .await
        .unwrap();
    assert!(stored[0].is_some());
    drop(kv);

    // ...and a restart resumes from it: the positions are there before anything is read, and
    // nothing is counted twice.
    let flags = FlagService::open(log.clone()).await.unwrap();
    let service = ExperimentService::open(log.clone(), open_kv(dir.path()), flags, config())
        .await
        .unwrap();
    assert_eq!(service.positions("green").unwrap(), positions);
    expose(&log, 20..22).await;
    buy(&log, &[20]).await;
    let results = results_when(&service, "green", |r| {
        r["aggregation"]["exposures_applied"] == 22
            && r["aggregation"]["metric_events_applied"] == 6
    })
    .await;
    let arms = &results["metrics"][0]["arms"];
    assert_eq!((&arms[0]["n"], &arms[1]["n"]), (&json!(11), &json!(11)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, again) = service.results("green").unwrap();
    assert_eq!(again.aggregation.exposures_applied, 22);

    // Stop, then decide with a rollout: the flag now serves green to everyone.
    service.stop("green", "me").await.unwrap();
    match service.decide("green", "blue", true, None, "me").await {
        Err(ExperimentServiceError::Lifecycle { error, .. }) => {
            assert!(error.to_string().contains("blue"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    let decided = service
        .decide("green", "green", true, Some("it sells".into()), "me")
        .await
        .unwrap();
    assert_eq!(decided.experiment.state, "decided");
    assert_eq!(decided.flag_set_version, Some(2));
    let flags = FlagService::open(log.clone()).await.unwrap();
    let live = flags.get(&FlagSetName::parse("prod").unwrap()).unwrap();
    let flag = &live.document["flags"]["checkout"];
    assert_eq!(flag["defaultVariant"], "green");
    assert!(flag.get("targeting").is_none(), "{flag}");
    service.close().await;
}

/// A guardrail significantly worse in the treatment arm halts the rollout: its pending steps
/// are cancelled, the flag serves control to everyone, and the experiment is decided for
/// control with the breach as the reason, recorded in `proteus.experiments`.
#[tokio::test]
async fn a_breached_guardrail_halts_the_rollout_and_returns_the_flag_to_control() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    let flags = flags(&log).await;
    let set = FlagSetName::parse("prod").unwrap();
    // The next step of a progressive rollout, scheduled for later.
    let step = flags
        .schedule(
            &set,
            Change::SetRollout {
                key: "checkout".into(),
                variant: "green".into(),
                percent: 100,
            },
            now_ms() + 3_600_000,
            Author::default(),
            ValidationMode::Strict,
        )
        .await
        .unwrap();
    let service =
        ExperimentService::open(log.clone(), open_kv(dir.path()), flags.clone(), config())
            .await
            .unwrap();
    let mut definition = serde_json::to_value(definition("green", "checkout", "green")).unwrap();
    definition["metrics"]
        .as_array_mut()
        .unwrap()
        .push(json!({"id": "errors", "kind": "conversion",
                     "source": {"topic": "shop", "event_type": "checkout.failed"}}));
    definition["guardrails"] = json!([{"metric": "errors", "direction": "must_not_increase"}]);
    service
        .create(parse(&definition.to_string()), "me")
        .await
        .unwrap();
    service.start("green", "me").await.unwrap();

    // 1,000 users: 80% of green users (odd) hit an error, 20% of control users (even) do.
    expose(&log, 0..1_000).await;
    let topic = TopicName::parse("shop").unwrap();
    log.put_topic(&topic, TopicConfig::default()).await.unwrap();
    let failures: Vec<Event> = (0..1_000u32)
        .filter(|n| [0, 1, 3, 5, 7].contains(&(n % 10)))
        .map(|n| {
            let event = json!({"specversion": "1.0", "id": format!("failure-{n}"),
                "source": "/shop", "type": "checkout.failed",
                "partitionkey": format!("user-{n}"), "data": {}});
            Event::from_json(&serde_json::to_vec(&event).unwrap()).unwrap()
        })
        .collect();
    log.append(&topic, failures).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let info = loop {
        let info = service.get("green").unwrap();
        if info.state == "decided" {
            break info;
        }
        if Instant::now() >= deadline {
            let (_, results) = service.results("green").unwrap();
            panic!(
                "never halted: {}; results: {:#}",
                info.state,
                serde_json::to_value(results).unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let status = serde_json::to_value(&info.status).unwrap();
    assert_eq!(status["decision"]["variant"], "control", "{status}");
    let reason = status["decision"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("halted by guardrail"), "{reason}");
    assert!(reason.contains("errors"), "{reason}");
    // The rollout's pending step is cancelled, and everyone gets control.
    assert!(
        flags.schedules(&set).iter().all(|s| s.id != step.id),
        "the rollout step is still pending"
    );
    let live = flags.get(&set).unwrap();
    let flag = &live.document["flags"]["checkout"];
    assert_eq!(flag["defaultVariant"], "control", "{flag}");
    assert!(
        flag.get("targeting")
            .is_none_or(|t| t.is_null() || t == &json!({})),
        "{flag}"
    );
    // The halt is recorded with its reason in proteus.experiments.
    let changes = log
        .read(
            &TopicName::parse("proteus.experiments").unwrap(),
            0,
            ReadFrom::Offset(0),
            ReadLimits::default(),
        )
        .await
        .unwrap();
    let halt = changes
        .events
        .iter()
        .map(|stored| {
            let event: Value = serde_json::from_slice(&stored.json).unwrap();
            event
        })
        .find(|event| event.to_string().contains("\"halt\""))
        .expect("a halt change");
    assert!(halt.to_string().contains("halted by guardrail"), "{halt}");
    service.close().await;
}

/// Settled units leave memory after each commit and come back from the key-value store when
/// an event names them: the counts are the same as if they had stayed, also after a restart.
#[tokio::test]
async fn settled_units_are_stored_evicted_and_loaded_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    let flags = flags(&log).await;
    let service = ExperimentService::open(log.clone(), open_kv(dir.path()), flags, config())
        .await
        .unwrap();
    let mut v: Value = serde_json::to_value(definition("green", "checkout", "green")).unwrap();
    // No lateness: a unit settles as soon as it is exposed.
    v["analysis"]["lateness_ms"] = json!(0);
    service.create(parse(&v.to_string()), "me").await.unwrap();
    service.start("green", "me").await.unwrap();
    expose(&log, 0..300).await;
    let results = results_when(&service, "green", |r| {
        r["aggregation"]["exposures_applied"] == 300 && r["aggregation"]["units_resident"] == 0
    })
    .await;
    assert_eq!(results["aggregation"]["units_tracked"], 300);

    // Buyers are loaded back from the store, counted once, and leave memory again.
    let buyers: Vec<u32> = (0..300).step_by(3).collect();
    buy(&log, &buyers).await;
    let results = results_when(&service, "green", |r| {
        r["aggregation"]["metric_events_applied"] == 100 && r["aggregation"]["units_resident"] == 0
    })
    .await;
    let arms = &results["metrics"][0]["arms"];
    // Multiples of 3 below 300: 50 even (control), 50 odd (green); 150 units per arm.
    assert_eq!((&arms[0]["n"], &arms[1]["n"]), (&json!(150), &json!(150)));
    assert_eq!(arms[0]["mean"], json!(50.0 / 150.0));
    assert_eq!(arms[1]["mean"], json!(50.0 / 150.0));
    service.close().await;
    drop(service);

    // After a restart the same units are found in the store: a second order converts no one
    // twice and a new buyer (user 1, green) is counted.
    let flags = FlagService::open(log.clone()).await.unwrap();
    let service = ExperimentService::open(log.clone(), open_kv(dir.path()), flags, config())
        .await
        .unwrap();
    buy(&log, &[0, 3, 1]).await;
    let results = results_when(&service, "green", |r| {
        r["aggregation"]["metric_events_applied"] == 103
    })
    .await;
    let arms = &results["metrics"][0]["arms"];
    assert_eq!((&arms[0]["n"], &arms[1]["n"]), (&json!(150), &json!(150)));
    assert_eq!(arms[0]["mean"], json!(50.0 / 150.0));
    assert_eq!(arms[1]["mean"], json!(51.0 / 150.0));
    assert_eq!(results["aggregation"]["units_tracked"], 300);
    service.close().await;
}

/// Only drafts and decided experiments can be deleted; a deletion survives a restart, removes
/// the stored units and checkpoint, and frees the id.
#[tokio::test]
async fn deleting_an_experiment_forgets_it_and_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path()).await;
    let flags = flags(&log).await;
    let service = ExperimentService::open(log.clone(), open_kv(dir.path()), flags, config())
        .await
        .unwrap();
    create_and_start(&service, definition("green", "checkout", "green")).await;
    expose(&log, 0..10).await;
    results_when(&service, "green", |r| {
        r["aggregation"]["exposures_applied"] == 10
    })
    .await;
    match service.delete("green", "me").await {
        Err(ExperimentServiceError::Lifecycle {
            error,
            allowed_actions,
        }) => {
            assert!(
                error.to_string().contains("stop and decide it first"),
                "{error}"
            );
            assert_eq!(allowed_actions, vec!["stop"]);
        }
        other => panic!("{other:?}"),
    }
    service.stop("green", "me").await.unwrap();
    service
        .decide("green", "control", false, None, "me")
        .await
        .unwrap();
    service.delete("green", "me").await.unwrap();
    assert!(matches!(
        service.get("green"),
        Err(ExperimentServiceError::NotFound { .. })
    ));
    service.close().await;
    drop(service);

    let kv = open_kv(dir.path());
    let namespace = namespace_of("green").unwrap();
    assert!(kv.scan(&namespace, b"", None, 10).await.unwrap().is_empty());
    drop(kv);
    let flags = FlagService::open(log.clone()).await.unwrap();
    let service = ExperimentService::open(log.clone(), open_kv(dir.path()), flags, config())
        .await
        .unwrap();
    assert!(service.list().is_empty());
    service.close().await;
    drop(service);
    // The id is free again. A deletion cut short between its record and its clear leaves an
    // earlier life's checkpoint and units behind: the next start clears them once recorded.
    let kv = open_kv(dir.path());
    let earlier_life = proteus_kv::KvCommit {
        checks: vec![],
        writes: [&b"checkpoint"[..], b"p/user-1", b"s/user-2"]
            .map(|key| proteus_kv::KvWrite::Put {
                key: key.to_vec(),
                value: br#"{"started_ms": 1}"#.to_vec(),
            })
            .to_vec(),
    };
    kv.commit(&namespace, earlier_life).await.unwrap();
    let flags = FlagService::open(log.clone()).await.unwrap();
    let service = ExperimentService::open(log.clone(), kv.clone(), flags, config())
        .await
        .unwrap();
    create_and_start(&service, definition("green", "checkout", "green")).await;
    let left: Vec<Vec<u8>> = kv
        .scan(&namespace, b"", None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| key.as_slice() != b"checkpoint")
        .collect();
    assert!(
        left.is_empty(),
        "an earlier life's units were kept: {left:?}"
    );
    service.close().await;
}

/// A log (with the flag set `prod`) and a key-value store, shared by the instances a test opens
/// on them, as `proteus serve` processes share NATS and PostgreSQL.
struct SharedBackends {
    _dir: tempfile::TempDir,
    log: Arc<dyn Log>,
    flags: FlagService,
    kv: Arc<dyn KvStore>,
}

impl SharedBackends {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path()).await;
        let flags = flags(&log).await;
        SharedBackends {
            _dir: dir,
            log,
            flags,
            kv: Arc::new(proteus_kv::MemoryKvStore::new()),
        }
    }

    /// An instance's settings: its id, and runner leases of a second.
    fn config(&self, name: &str) -> ExperimentServiceConfig {
        ExperimentServiceConfig {
            instance_id: name.into(),
            lease_ttl_ms: 1_000,
            ..config()
        }
    }

    async fn instance(&self, name: &str) -> ExperimentService {
        ExperimentService::open(
            self.log.clone(),
            self.kv.clone(),
            self.flags.clone(),
            self.config(name),
        )
        .await
        .unwrap()
    }
}

/// Two instances sharing the log and the key-value store: changes made through one reach the
/// other through the log; one aggregates the experiment (it holds the runner lease), the other
/// serves the same results from the committed checkpoint, and takes over when the first closes.
#[tokio::test]
async fn one_instance_aggregates_and_the_other_follows_then_takes_over() {
    let shared = SharedBackends::new().await;
    let (log, kv) = (shared.log.clone(), shared.kv.clone());
    let a = shared.instance("a").await;
    let b = shared.instance("b").await;
    // Created and started through A, the experiment reaches B through the log.
    a.create(definition("green", "checkout", "green"), "me")
        .await
        .unwrap();
    a.start("green", "me").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.get("green").map(|e| e.state).ok() != Some("running") {
        assert!(
            Instant::now() < deadline,
            "B never saw the experiment start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    expose(&log, 0..40).await;
    buy(&log, &[0, 1, 2]).await;
    let done = |r: &Value| {
        r["aggregation"]["exposures_applied"] == 40
            && r["aggregation"]["metric_events_applied"] == 3
    };
    let from_a = results_when(&a, "green", done).await;
    let from_b = results_when(&b, "green", done).await;
    assert_eq!(from_a["metrics"], from_b["metrics"]);
    // Either may hold the lease: the other serves what the holder committed.
    let holder = proteus_kv::lease::current(
        kv.as_ref(),
        &proteus_kv::Namespace::parse(proteus_experiments_service::RUNNERS_NAMESPACE).unwrap(),
        b"green",
    )
    .await
    .unwrap()
    .unwrap();
    let (runner, follower) = match holder.holder.as_str() {
        "a" => (a, b),
        "b" => (b, a),
        other => panic!("unknown holder {other}"),
    };

    // The runner closes (releasing its lease); the follower takes over and counts what comes
    // next, once.
    runner.close().await;
    drop(runner);
    expose(&log, 40..42).await;
    buy(&log, &[40]).await;
    let after = results_when(&follower, "green", |r| {
        r["aggregation"]["exposures_applied"] == 42
            && r["aggregation"]["metric_events_applied"] == 4
    })
    .await;
    let arms = &after["metrics"][0]["arms"];
    assert_eq!((&arms[0]["n"], &arms[1]["n"]), (&json!(21), &json!(21)));
    follower.close().await;
}

/// Two instances changing one experiment at the same moment, each from the same state: the
/// change first in the log applies, the other is refused with `Conflict` (and by every
/// instance reading it), so the instances, and one opened later from the log, agree on which
/// change won instead of each keeping its own.
#[tokio::test]
async fn changes_made_at_once_through_two_instances_never_diverge() {
    let shared = SharedBackends::new().await;
    let a = shared.instance("a").await;
    let b = shared.instance("b").await;
    let named = |id: &str, name: &str| {
        let mut definition = definition(id, "checkout", "green");
        definition.name = name.to_owned();
        definition
    };
    let name_on = |service: &ExperimentService, id: &str| {
        service
            .get(id)
            .map(|e| e.definition.name)
            .unwrap_or_default()
    };
    let mut winners = Vec::new();
    for round in 0..4 {
        let id = format!("race-{round}");
        a.create(named(&id, "created"), "me").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while name_on(&b, &id) != "created" {
            assert!(Instant::now() < deadline, "B never saw {id}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Both read the draft before either change reaches the log.
        let (from_a, from_b) = tokio::join!(
            a.redefine(&id, named(&id, "from a"), "alice"),
            b.redefine(&id, named(&id, "from b"), "bob"),
        );
        let winner = match (&from_a, &from_b) {
            (Ok(_), Err(ExperimentServiceError::Conflict { id: refused })) => {
                assert_eq!(refused, &id);
                "from a"
            }
            (Err(ExperimentServiceError::Conflict { .. }), Ok(_)) => "from b",
            other => panic!("one change applies and the other conflicts, got {other:?}"),
        };
        let refused = from_a.err().or(from_b.err()).unwrap().to_string();
        assert!(refused.contains("another instance"), "{refused}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while name_on(&a, &id) != winner || name_on(&b, &id) != winner {
            assert!(
                Instant::now() < deadline,
                "instances disagree on {id}: a has {:?}, b has {:?}, {winner:?} won",
                name_on(&a, &id),
                name_on(&b, &id)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        winners.push((id, winner));
    }
    // A later change through the loser builds on the winner's state and applies.
    let id = &winners[0].0.clone();
    b.redefine(id, named(id, "after the race"), "bob")
        .await
        .unwrap();
    winners[0].1 = "after the race";
    // An instance opened now replays the log to the same states.
    let deadline = Instant::now() + Duration::from_secs(5);
    while name_on(&a, id) != "after the race" {
        assert!(Instant::now() < deadline, "A never saw B's later change");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = shared.instance("c").await;
    for (id, winner) in &winners {
        assert_eq!(name_on(&c, id), *winner, "{id} replayed");
        assert_eq!(name_on(&a, id), *winner, "{id} on a");
    }
}
