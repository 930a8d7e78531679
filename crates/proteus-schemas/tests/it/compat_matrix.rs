//! The compatibility matrix: (old schema, new schema, mode) → compatible, or the expected
//! incompatibility kinds. Each row registers the old schema(s), then checks the new one.

use proteus_schemas::{CompatibilityMode, IncompatibilityKind, SchemaRegistry};
use serde_json::{Value, json};

use CompatibilityMode::*;
use IncompatibilityKind::*;

struct Row {
    what: &'static str,
    old: Vec<Value>,
    new: Value,
    mode: CompatibilityMode,
    expect: &'static [IncompatibilityKind],
}

fn closed(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}

fn open(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required})
}

fn described(mut schema: Value) -> Value {
    schema["description"] = json!("same shape, new version");
    schema
}

fn rows() -> Vec<Row> {
    let base = closed(
        json!({"id": {"type": "string"}, "total": {"type": "number"}}),
        &["id"],
    );
    let with_optional = closed(
        json!({"id": {"type": "string"}, "total": {"type": "number"}, "note": {"type": "string"}}),
        &["id"],
    );
    let with_required = closed(
        json!({"id": {"type": "string"}, "total": {"type": "number"}, "currency": {"type": "string"}}),
        &["id", "currency"],
    );
    let with_required_default = closed(
        json!({"id": {"type": "string"}, "total": {"type": "number"}, "currency": {"type": "string", "default": "EUR"}}),
        &["id", "currency"],
    );
    let without_total = closed(json!({"id": {"type": "string"}}), &["id"]);
    let total_integer = closed(
        json!({"id": {"type": "string"}, "total": {"type": "integer"}}),
        &["id"],
    );
    let total_string = closed(
        json!({"id": {"type": "string"}, "total": {"type": "string"}}),
        &["id"],
    );
    let open_base = open(json!({"id": {"type": "string"}}), &["id"]);
    let open_added = open(
        json!({"id": {"type": "string"}, "note": {"type": "string"}}),
        &["id"],
    );
    let status = |values: Value| closed(json!({"status": {"enum": values}}), &["status"]);
    let bounded = |min: i64, max: i64| {
        closed(
            json!({"n": {"type": "integer", "minimum": min, "maximum": max}}),
            &["n"],
        )
    };
    let text = |min: u64, max: u64| {
        closed(
            json!({"s": {"type": "string", "minLength": min, "maxLength": max}}),
            &["s"],
        )
    };
    let nested = |zip: Value| {
        closed(
            json!({"address": closed(json!({"zip": zip}), &["zip"])}),
            &["address"],
        )
    };
    let list = |item: Value| closed(json!({"tags": {"type": "array", "items": item}}), &[]);
    let nullable_any = closed(
        json!({"x": {"anyOf": [{"type": "string"}, {"type": "null"}]}}),
        &[],
    );
    let plain_string = closed(json!({"x": {"type": "string"}}), &[]);
    let types_array = closed(json!({"x": {"type": ["string", "null"]}}), &[]);
    let pattern_props = closed(
        json!({"x": {"type": "object", "patternProperties": {"^a": {"type": "string"}}}}),
        &[],
    );
    let plain_object = closed(json!({"x": {"type": "object"}}), &[]);
    let not_schema = closed(json!({"x": {"not": {"type": "string"}}}), &[]);
    let local_ref = |zip: &str| {
        json!({"type": "object", "additionalProperties": false,
               "properties": {"a": {"$ref": "#/$defs/addr"}},
               "$defs": {"addr": {"type": "object", "properties": {"zip": {"type": zip}}}}})
    };

    vec![
        // Adding an optional property to a closed content model.
        Row {
            what: "optional added, closed",
            old: vec![base.clone()],
            new: with_optional.clone(),
            mode: Backward,
            expect: &[],
        },
        Row {
            what: "optional added, closed, forward",
            old: vec![base.clone()],
            new: with_optional.clone(),
            mode: Forward,
            expect: &[PropertyRemovedFromClosedContentModel],
        },
        Row {
            what: "optional added, closed, full",
            old: vec![base.clone()],
            new: with_optional.clone(),
            mode: Full,
            expect: &[PropertyRemovedFromClosedContentModel],
        },
        Row {
            what: "optional added, closed, none",
            old: vec![base.clone()],
            new: with_optional.clone(),
            mode: None,
            expect: &[],
        },
        // Adding a required property.
        Row {
            what: "required added",
            old: vec![base.clone()],
            new: with_required.clone(),
            mode: Backward,
            expect: &[RequiredPropertyAdded],
        },
        Row {
            what: "required added with default",
            old: vec![base.clone()],
            new: with_required_default.clone(),
            mode: Backward,
            expect: &[],
        },
        Row {
            what: "required added, forward",
            old: vec![base.clone()],
            new: with_required.clone(),
            mode: Forward,
            expect: &[PropertyRemovedFromClosedContentModel],
        },
        // Removing a property.
        Row {
            what: "property removed, closed",
            old: vec![base.clone()],
            new: without_total.clone(),
            mode: Backward,
            expect: &[PropertyRemovedFromClosedContentModel],
        },
        Row {
            what: "property removed, closed, forward",
            old: vec![base.clone()],
            new: without_total.clone(),
            mode: Forward,
            expect: &[],
        },
        // Open content model: adding is forward-compatible only, removing backward only.
        Row {
            what: "added to open model",
            old: vec![open_base.clone()],
            new: open_added.clone(),
            mode: Backward,
            expect: &[PropertyAddedToOpenContentModel],
        },
        Row {
            what: "added to open model, forward",
            old: vec![open_base.clone()],
            new: open_added.clone(),
            mode: Forward,
            expect: &[],
        },
        Row {
            what: "removed from open model",
            old: vec![open_added.clone()],
            new: open_base.clone(),
            mode: Backward,
            expect: &[],
        },
        Row {
            what: "removed from open model, forward",
            old: vec![open_added.clone()],
            new: open_base.clone(),
            mode: Forward,
            expect: &[PropertyAddedToOpenContentModel],
        },
        Row {
            what: "open to closed",
            old: vec![open_base.clone()],
            new: closed(json!({"id": {"type": "string"}}), &["id"]),
            mode: Backward,
            expect: &[AdditionalPropertiesNarrowed],
        },
        Row {
            what: "closed to open",
            old: vec![closed(json!({"id": {"type": "string"}}), &["id"])],
            new: open_base.clone(),
            mode: Backward,
            expect: &[],
        },
        // Types.
        Row {
            what: "number narrowed to integer",
            old: vec![base.clone()],
            new: total_integer.clone(),
            mode: Backward,
            expect: &[TypeNarrowed],
        },
        Row {
            what: "integer widened to number",
            old: vec![total_integer.clone()],
            new: base.clone(),
            mode: Backward,
            expect: &[],
        },
        Row {
            what: "integer widened to number, forward",
            old: vec![total_integer.clone()],
            new: base.clone(),
            mode: Forward,
            expect: &[TypeNarrowed],
        },
        Row {
            what: "integer widened to number, full",
            old: vec![total_integer.clone()],
            new: base.clone(),
            mode: Full,
            expect: &[TypeNarrowed],
        },
        Row {
            what: "number changed to string",
            old: vec![base.clone()],
            new: total_string.clone(),
            mode: Backward,
            expect: &[TypeChanged],
        },
        Row {
            what: "type array widened",
            old: vec![plain_string.clone()],
            new: types_array.clone(),
            mode: Backward,
            expect: &[],
        },
        Row {
            what: "type array narrowed",
            old: vec![types_array.clone()],
            new: plain_string.clone(),
            mode: Backward,
            expect: &[TypeNarrowed],
        },
        // Enums.
        Row {
            what: "enum extended",
            old: vec![status(json!(["new", "paid"]))],
            new: status(json!(["new", "paid", "shipped"])),
            mode: Backward,
            expect: &[],
        },
        Row {
            what: "enum extended, forward",
            old: vec![status(json!(["new", "paid"]))],
            new: status(json!(["new", "paid", "shipped"])),
            mode: Forward,
            expect: &[EnumNarrowed],
        },
        Row {
            what: "enum narrowed",
            old: vec![status(json!(["new", "paid"]))],
            new: status(json!(["new"])),
            mode: Backward,
            expect: &[EnumNarrowed],
        },
        Row {
            what: "enum added",
            old: vec![closed(json!({"status": {"type": "string"}}), &["status"])],
            new: status(json!(["new"])),
            mode: Backward,
            expect: &[EnumAdded],
        },
        // Bounds.
        Row {
            what: "range widened",
            old: vec![bounded(0, 10)],
            new: bounded(-5, 20),
            mode: Backward,
            expect: &[],
        },
        Row {
            what: "range narrowed",
            old: vec![bounded(0, 10)],
            new: bounded(1, 9),
            mode: Backward,
            expect: &[MinimumIncreased, MaximumDecreased],
        },
        Row {
            what: "range widened, full",
            old: vec![bounded(0, 10)],
            new: bounded(-5, 20),
            mode: Full,
            expect: &[MinimumIncreased, MaximumDecreased],
        },
        Row {
            what: "lengths narrowed",
            old: vec![text(0, 100)],
            new: text(1, 50),
            mode: Backward,
            expect: &[MinLengthIncreased, MaxLengthDecreased],
        },
        Row {
            what: "lengths widened",
            old: vec![text(1, 50)],
            new: text(0, 100),
            mode: Backward,
            expect: &[],
        },
        // Nested objects and arrays.
        Row {
            what: "nested type changed",
            old: vec![nested(json!({"type": "string"}))],
            new: nested(json!({"type": "integer"})),
            mode: Backward,
            expect: &[TypeChanged],
        },
        Row {
            what: "items narrowed",
            old: vec![list(json!({"type": "number"}))],
            new: list(json!({"type": "integer"})),
            mode: Backward,
            expect: &[TypeNarrowed],
        },
        Row {
            what: "items widened",
            old: vec![list(json!({"type": "integer"}))],
            new: list(json!({"type": "number"})),
            mode: Backward,
            expect: &[],
        },
        // Combinators and references.
        Row {
            what: "anyOf with null widens",
            old: vec![plain_string.clone()],
            new: nullable_any.clone(),
            mode: Backward,
            expect: &[],
        },
        Row {
            what: "anyOf with null, forward",
            old: vec![plain_string.clone()],
            new: nullable_any.clone(),
            mode: Forward,
            expect: &[TypeChanged],
        },
        Row {
            what: "local $ref compared",
            old: vec![local_ref("string")],
            new: local_ref("integer"),
            mode: Backward,
            expect: &[TypeChanged],
        },
        Row {
            what: "local $ref unchanged",
            old: vec![local_ref("string")],
            new: local_ref("string"),
            mode: Full,
            expect: &[],
        },
        Row {
            what: "patternProperties is unsupported",
            old: vec![plain_object.clone()],
            new: pattern_props.clone(),
            mode: Backward,
            expect: &[UnsupportedConstruct],
        },
        Row {
            what: "unchanged patternProperties pass",
            old: vec![pattern_props.clone()],
            new: pattern_props.clone(),
            mode: Full,
            expect: &[],
        },
        Row {
            what: "not is unsupported",
            old: vec![plain_string.clone()],
            new: not_schema.clone(),
            mode: Backward,
            expect: &[UnsupportedConstruct],
        },
        Row {
            what: "unsupported passes in none",
            old: vec![plain_string.clone()],
            new: not_schema.clone(),
            mode: None,
            expect: &[],
        },
        // Transitive modes: v1 → v2 is fine, v3 breaks v1 only.
        Row {
            what: "backward checks only the latest",
            old: vec![bounded(0, 10), bounded(0, 20)],
            new: bounded(5, 20),
            mode: Backward,
            expect: &[MinimumIncreased],
        },
        Row {
            what: "backward: latest only passes",
            old: vec![bounded(0, 10), bounded(-5, 10)],
            new: bounded(-5, 20),
            mode: Backward,
            expect: &[],
        },
        Row {
            what: "backward transitive catches v1",
            old: vec![with_optional.clone(), base.clone()],
            new: closed(
                json!({"id": {"type": "string"}, "total": {"type": "number"}, "note": {"type": "integer"}}),
                &["id"],
            ),
            mode: BackwardTransitive,
            expect: &[TypeChanged],
        },
        Row {
            what: "backward non-transitive misses v1",
            old: vec![with_optional.clone(), base.clone()],
            new: closed(
                json!({"id": {"type": "string"}, "total": {"type": "number"}, "note": {"type": "integer"}}),
                &["id"],
            ),
            mode: Backward,
            expect: &[],
        },
        Row {
            what: "forward transitive catches v1",
            old: vec![bounded(0, 10), bounded(0, 20)],
            new: bounded(0, 15),
            mode: ForwardTransitive,
            expect: &[MaximumDecreased],
        },
        Row {
            what: "forward non-transitive",
            old: vec![bounded(0, 10), bounded(0, 20)],
            new: bounded(0, 15),
            mode: Forward,
            expect: &[],
        },
        Row {
            what: "full transitive",
            old: vec![bounded(0, 10), described(bounded(0, 10))],
            new: bounded(0, 10),
            mode: FullTransitive,
            expect: &[],
        },
        Row {
            what: "full transitive catches v1",
            old: vec![text(0, 5), text(0, 10)],
            new: described(text(0, 10)),
            mode: FullTransitive,
            expect: &[MaxLengthDecreased],
        },
        Row {
            what: "full checks only the latest",
            old: vec![text(0, 5), text(0, 10)],
            new: described(text(0, 10)),
            mode: Full,
            expect: &[],
        },
    ]
}

#[test]
fn compatibility_matrix() {
    let mut failures = Vec::new();
    let mut modes_seen = std::collections::BTreeSet::new();
    for row in rows() {
        modes_seen.insert(row.mode.as_str());
        let mut registry = SchemaRegistry::default();
        let t = super::name("Matrix");
        registry.set_mode(&t, CompatibilityMode::None).unwrap();
        for old in &row.old {
            registry
                .register(&t, old.clone(), Some_upcaster(&registry, &t))
                .unwrap_or_else(|e| panic!("{}: registering an old version: {e}", row.what));
        }
        registry.set_mode(&t, row.mode).unwrap();
        let report = registry.check(&t, &row.new, Option::None).unwrap();
        let mut kinds: Vec<IncompatibilityKind> =
            report.incompatibilities.iter().map(|i| i.kind).collect();
        kinds.sort();
        kinds.dedup();
        let mut expect = row.expect.to_vec();
        expect.sort();
        if kinds != expect || report.compatible != row.expect.is_empty() {
            failures.push(format!(
                "{} ({}): expected {expect:?}, got {:#?}",
                row.what, row.mode, report.incompatibilities
            ));
        }
        for incompatibility in &report.incompatibilities {
            assert!(!incompatibility.message.is_empty());
            assert!(incompatibility.path.is_empty() || incompatibility.path.starts_with('/'));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(modes_seen.len(), 7, "every mode has rows: {modes_seen:?}");
}

/// Old versions are registered under mode NONE; an empty upcaster accepts any shape change.
#[allow(non_snake_case)]
fn Some_upcaster(
    registry: &SchemaRegistry,
    t: &proteus_schemas::EventTypeName,
) -> Option<proteus_schemas::Upcaster> {
    let latest = registry.latest(t).ok()?.version;
    Some(proteus_schemas::Upcaster {
        from_version: latest,
        to_version: latest + 1,
        steps: vec![],
    })
}

#[test]
fn an_incompatible_registration_is_refused_with_each_cause() {
    let mut registry = SchemaRegistry::default();
    let t = super::name("OrderPlaced");
    let v1 = closed(
        json!({"id": {"type": "string"}, "total": {"type": "number"}}),
        &["id"],
    );
    registry.register(&t, v1, Option::None).unwrap();
    let v2 = closed(
        json!({"id": {"type": "string"}, "total": {"type": "number"}, "currency": {"type": "string"}}),
        &["id", "currency"],
    );
    let error = registry.register(&t, v2, Option::None).unwrap_err();
    assert_eq!(error.status(), 409);
    let text = error.to_string();
    assert!(text.contains("BACKWARD"), "{text}");
    assert!(
        text.contains("required_property_added at /properties/currency"),
        "{text}"
    );
    assert!(
        text.contains("give the new required property 'currency' a default or make it optional"),
        "{text}"
    );
    assert_eq!(registry.latest(&t).unwrap().version, 1, "nothing changed");
}

#[test]
fn modes_parse_in_both_spellings() {
    for mode in proteus_schemas::COMPATIBILITY_MODES {
        assert_eq!(mode.as_str().parse::<CompatibilityMode>().unwrap(), mode);
        assert_eq!(
            mode.as_str()
                .to_lowercase()
                .parse::<CompatibilityMode>()
                .unwrap(),
            mode
        );
        let json = serde_json::to_value(mode).unwrap();
        assert_eq!(json, json!(mode.as_str()));
        let lower: CompatibilityMode =
            serde_json::from_value(json!(mode.as_str().to_lowercase())).unwrap();
        assert_eq!(lower, mode);
    }
    assert_eq!(CompatibilityMode::default(), Backward);
    let error = "sideways"
        .parse::<CompatibilityMode>()
        .unwrap_err()
        .to_string();
    assert!(error.contains("BACKWARD_TRANSITIVE"), "{error}");
}
