//! Changes, revisions and audit events of flag sets.

use proteus_flagsets::audit;
use proteus_flagsets::{
    Change, ChangeError, ChangeKind, FlagSetName, FlagStateChange, Revision, ValidationMode, apply,
    compile,
};
use serde_json::{Value, json};

fn flag(value: &str) -> Value {
    json!({"state": "ENABLED", "variants": {"v": value}, "defaultVariant": "v"})
}

#[test]
fn each_change_turns_the_document_into_the_next() {
    let created = apply(
        "s",
        None,
        &Change::PutFlag {
            key: "a".into(),
            flag: flag("1"),
        },
    )
    .unwrap();
    assert_eq!(
        created,
        json!({"flags": {"a": flag("1")}}),
        "a flag creates its set"
    );
    let two = apply(
        "s",
        Some(&created),
        &Change::PutFlag {
            key: "b".into(),
            flag: flag("2"),
        },
    )
    .unwrap();
    assert_eq!(two["flags"].as_object().unwrap().len(), 2);
    let killed = apply(
        "s",
        Some(&two),
        &Change::SetState {
            key: "a".into(),
            state: FlagStateChange::Disabled,
        },
    )
    .unwrap();
    assert_eq!(killed["flags"]["a"]["state"], "DISABLED");
    let deleted = apply("s", Some(&killed), &Change::DeleteFlag { key: "b".into() }).unwrap();
    assert!(deleted["flags"].get("b").is_none());
    assert_eq!(
        apply("s", Some(&deleted), &Change::DeleteSet).unwrap(),
        Value::Null
    );
}

#[test]
fn impossible_changes_say_why() {
    let document = json!({"flags": {"a": flag("1")}});
    assert_eq!(
        apply(
            "s",
            Some(&document),
            &Change::DeleteFlag { key: "zz".into() }
        ),
        Err(ChangeError::FlagNotFound {
            set: "s".into(),
            key: "zz".into()
        })
    );
    assert_eq!(
        apply("s", None, &Change::DeleteSet),
        Err(ChangeError::SetNotFound { set: "s".into() })
    );
    let Err(ChangeError::Invalid(reason)) = apply(
        "s",
        Some(&document),
        &Change::PutFlag {
            key: "a".into(),
            flag: json!(3),
        },
    ) else {
        panic!("a non-object flag is refused");
    };
    assert!(reason.contains("must be a JSON object"), "{reason}");
    let array_flags = json!({"flags": [{"key": "a"}]});
    let Err(ChangeError::Invalid(reason)) = apply(
        "s",
        Some(&array_flags),
        &Change::DeleteFlag { key: "a".into() },
    ) else {
        panic!("array-form flags cannot be edited one by one");
    };
    assert!(reason.contains("push the whole document"), "{reason}");
    let Err(ChangeError::Invalid(reason)) = apply(
        "s",
        None,
        &Change::PutFlag {
            key: String::new(),
            flag: flag("1"),
        },
    ) else {
        panic!("an empty key is refused");
    };
    assert!(reason.contains("1 to 256 bytes"), "{reason}");
}

#[test]
fn a_revision_records_the_patch_and_which_flags_it_touched() {
    let before = json!({"flags": {"a": flag("1"), "b/c": flag("2")}});
    let after = json!({"flags": {"a": flag("1"), "b/c": flag("3")}});
    let revision = Revision::new(
        FlagSetName::parse("prod").unwrap(),
        2,
        1_000,
        "ci".into(),
        Some("why".into()),
        &Change::PutSet {
            document: after.clone(),
        },
        ValidationMode::Strict,
        Some(&before),
        after,
    );
    assert_eq!(revision.kind, ChangeKind::PutSet);
    assert_eq!(
        serde_json::to_value(&revision.patch).unwrap(),
        json!([{"op": "replace", "path": "/flags/b~1c/variants/v", "value": "3"}])
    );
    assert!(revision.touches("b/c"));
    assert!(!revision.touches("a"));

    let event = audit::to_event(&revision).unwrap();
    let back = audit::from_event_json(event.json()).unwrap().unwrap();
    assert_eq!(back, revision);
    let other = br#"{"specversion":"1.0","id":"1","source":"/x","type":"something.else"}"#;
    assert_eq!(audit::from_event_json(other).unwrap(), None);
}

#[test]
fn names_and_validation_modes_are_checked() {
    assert!(FlagSetName::parse("prod-eu.1").is_ok());
    for bad in ["", "-x", "a b", &"x".repeat(65)] {
        assert!(FlagSetName::parse(bad).is_err(), "{bad:?}");
    }
    let lenient = json!({"flags": {"x": {"state": "ENABLED", "variants": {"a": true, "b": false},
        "defaultVariant": "a", "targeting": {"frobnicate": []}}}});
    assert!(compile(&lenient, ValidationMode::Strict).is_err());
    let compiled = compile(&lenient, ValidationMode::Flagd).unwrap();
    assert_eq!(compiled.warnings.len(), 1);
}

#[test]
fn a_rollout_step_rewrites_the_targeting_as_a_stable_split() {
    let document = json!({"flags": {"x": {"state": "ENABLED", "variants": {"on": true, "off": false},
        "defaultVariant": "off", "targeting": {"if": [true, "on"]}}}});
    let step = |percent| Change::SetRollout {
        key: "x".into(),
        variant: "on".into(),
        percent,
    };
    let five = apply("s", Some(&document), &step(5)).unwrap();
    assert_eq!(
        five["flags"]["x"]["targeting"],
        json!({"fractional": [["on", 5], ["off", 95]]})
    );
    assert!(compile(&five, ValidationMode::Strict).is_ok());
    let Err(ChangeError::Invalid(reason)) = apply("s", Some(&document), &step(101)) else {
        panic!("over 100% is refused");
    };
    assert!(reason.contains("0 to 100"), "{reason}");
    let same_default = Change::SetRollout {
        key: "x".into(),
        variant: "off".into(),
        percent: 5,
    };
    let Err(ChangeError::Invalid(reason)) = apply("s", Some(&document), &same_default) else {
        panic!("rolling out the default variant is refused");
    };
    assert!(
        reason.contains("defaultVariant other than 'off'"),
        "{reason}"
    );
}
