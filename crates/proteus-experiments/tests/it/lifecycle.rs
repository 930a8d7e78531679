//! The lifecycle state machine and the rollout change.

use crate::{T0, definition};
use proteus_experiments::{Decision, Experiment, LifecycleError, Status, rollout_change};
use proteus_flagsets::Change;
use serde_json::json;

fn decision(variant: &str, roll_out: bool) -> Decision {
    Decision {
        variant: variant.into(),
        roll_out,
        reason: Some("green won".into()),
    }
}

#[test]
fn the_happy_path_draft_running_stopped_decided() {
    let mut e = Experiment::draft(definition()).unwrap();
    assert_eq!(e.status, Status::Draft);
    e.start(T0).unwrap();
    e.stop(T0 + 10).unwrap();
    e.decide(decision("green", true), T0 + 20).unwrap();
    match &e.status {
        Status::Decided {
            started_ms,
            stopped_ms,
            decided_ms,
            decision,
        } => {
            assert_eq!(
                (*started_ms, *stopped_ms, *decided_ms),
                (T0, T0 + 10, T0 + 20)
            );
            assert_eq!(decision.variant, "green");
        }
        other => panic!("{other:?}"),
    }
    // Persisted as JSON and read back.
    let text = serde_json::to_string(&e).unwrap();
    assert!(text.contains(r#""state":"decided""#), "{text}");
    let back: Experiment = serde_json::from_str(&text).unwrap();
    assert_eq!(back, e);
}

#[test]
fn forbidden_transitions_are_errors() {
    let mut e = Experiment::draft(definition()).unwrap();
    assert!(matches!(
        e.stop(T0),
        Err(LifecycleError::NotAllowed {
            action: "stop",
            from: "draft",
            ..
        })
    ));
    assert!(matches!(
        e.decide(decision("green", false), T0),
        Err(LifecycleError::NotAllowed { .. })
    ));
    e.start(T0).unwrap();
    assert!(matches!(
        e.start(T0),
        Err(LifecycleError::NotAllowed {
            action: "start",
            from: "running",
            ..
        })
    ));
    assert!(matches!(
        e.decide(decision("green", false), T0),
        Err(LifecycleError::NotAllowed { .. })
    ));
    assert!(matches!(
        e.redefine(definition()),
        Err(LifecycleError::NotAllowed { .. })
    ));
    assert!(matches!(
        e.stop(T0 - 1),
        Err(LifecycleError::TimeBeforePrevious { .. })
    ));
    e.stop(T0 + 1).unwrap();
    assert!(matches!(
        e.start(T0 + 2),
        Err(LifecycleError::NotAllowed { .. })
    ));
    assert!(matches!(
        e.stop(T0 + 2),
        Err(LifecycleError::NotAllowed { .. })
    ));
    let err = e.decide(decision("purple", true), T0 + 3).unwrap_err();
    assert!(err.to_string().contains("not an arm"), "{err}");
    e.decide(decision("control", false), T0 + 3).unwrap();
    assert!(matches!(
        e.decide(decision("green", true), T0 + 4),
        Err(LifecycleError::NotAllowed {
            from: "decided",
            ..
        })
    ));
    assert!(matches!(
        e.start(T0 + 4),
        Err(LifecycleError::NotAllowed { .. })
    ));
}

#[test]
fn drafts_can_be_redefined_but_keep_their_id() {
    let mut e = Experiment::draft(definition()).unwrap();
    let mut d = definition();
    d.hypothesis = "Changed".into();
    e.redefine(d.clone()).unwrap();
    assert_eq!(e.definition.hypothesis, "Changed");
    d.id = "other".into();
    assert!(matches!(
        e.redefine(d),
        Err(LifecycleError::IdChanged { .. })
    ));
    let mut bad = definition();
    bad.alpha = 2.0;
    assert!(matches!(
        e.redefine(bad),
        Err(LifecycleError::Definition(_))
    ));
}

#[test]
fn deciding_to_roll_out_makes_a_put_flag_change_that_applies() {
    let flag = json!({
        "state": "ENABLED",
        "variants": {"control": "grey", "green": "green"},
        "defaultVariant": "control",
        "targeting": {"fractional": [["control", 50], ["green", 50]]}
    });
    let mut e = Experiment::draft(definition()).unwrap();
    e.start(T0).unwrap();
    assert_eq!(e.decided_change(&flag).unwrap(), None);
    e.stop(T0 + 1).unwrap();
    e.decide(decision("green", true), T0 + 2).unwrap();
    let change = e.decided_change(&flag).unwrap().expect("a change");
    let Change::PutFlag {
        key,
        flag: new_flag,
    } = &change
    else {
        panic!("{change:?}")
    };
    assert_eq!(key, "checkout");
    assert_eq!(new_flag["defaultVariant"], "green");
    assert!(new_flag.get("targeting").is_none());
    // The change applies to the flag set and compiles; every key now gets green.
    let document = json!({"flags": {"checkout": flag}});
    let next = proteus_flagsets::apply("prod", Some(&document), &change).unwrap();
    let set = proteus_flags::FlagSet::from_json(&next.to_string()).unwrap();
    let mut context = serde_json::Map::new();
    context.insert("targetingKey".into(), json!("anyone"));
    assert_eq!(set.evaluate("checkout", &context, 0).variant, Some("green"));

    assert!(rollout_change("checkout", &json!({"variants": {"a": 1}}), "green").is_err());
    assert!(rollout_change("checkout", &json!([1]), "green").is_err());
}

#[test]
fn deciding_without_roll_out_makes_no_change() {
    let mut e = Experiment::draft(definition()).unwrap();
    e.start(T0).unwrap();
    e.stop(T0).unwrap();
    e.decide(decision("control", false), T0).unwrap();
    assert_eq!(e.decided_change(&json!({})).unwrap(), None);
}
