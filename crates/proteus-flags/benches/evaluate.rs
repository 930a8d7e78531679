//! Evaluation cost of a flag with three targeting rules and a fractional rollout, against two
//! peers given the same decision:
//!
//! - `datalogic-rs` (5.4, its flagd feature: `fractional`, `sem_ver`, `starts_with`/`ends_with`)
//!   evaluating the same JSON Logic. Measured twice:
//!   - `datalogic_serde_json`: from a `serde_json::Value` context, as Proteus gets it and as an
//!     OFREP server receives it. This is the fair comparison point.
//!   - `datalogic_parsed_data (...)`: with the context pre-parsed into datalogic's arena
//!     (`ParsedData`, its fastest path) once, outside the loop. That parsing is work a server
//!     pays on every request, so this number leaves part of the per-request cost out; it is
//!     kept for reference, labelled as such.
//!
//!   Its `fractional` reads `$flagd.flagKey` from the data, so the context carries it.
//! - `unleash-yggdrasil` (0.21) evaluating the equivalent Unleash toggle: four
//!   `flexibleRollout` strategies (100% with `STR_ENDS_WITH` email, 100% with `IN` country,
//!   100% with `SEMVER_GTE` app_version, and 10% by userId). Unleash answers enabled/disabled,
//!   Proteus and datalogic a variant.
//!
//! Two contexts: one matching the first rule, one falling through all three rules to the
//! fractional split (the worst case, and the one the 150 ns target is about).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use datalogic_rs::bumpalo::Bump;
use datalogic_rs::{Engine, ParsedData};
use proteus_flags::FlagSet;
use serde_json::{Map, Value, json};
use unleash_yggdrasil::{ClientFeatures, Context, EngineState};

const NOW_S: i64 = 1_800_000_000;

/// The id of the datalogic measurement that leaves the context's parsing out.
const DATALOGIC_PREPARSED: &str = "datalogic_parsed_data (context pre-parsed into datalogic's arena, \
     excluded from the per-request cost a server pays)";

fn targeting() -> Value {
    json!({"if": [
        {"ends_with": [{"var": "email"}, "@example.com"]}, "on",
        {"in": [{"var": "country"}, ["FR", "DE"]]}, "on",
        {"sem_ver": [{"var": "app_version"}, ">=", "2.0.0"]}, "on",
        {"fractional": [["on", 10], ["off", 90]]}
    ]})
}

fn contexts() -> [(&'static str, Map<String, Value>); 2] {
    let object = |v: Value| v.as_object().cloned().unwrap();
    [
        (
            "first_rule",
            object(
                json!({"targetingKey": "user-42", "email": "ada@example.com", "country": "US", "app_version": "1.4.0"}),
            ),
        ),
        (
            "fall_through",
            object(
                json!({"targetingKey": "user-42", "email": "bob@corp.com", "country": "US", "app_version": "1.4.0"}),
            ),
        ),
    ]
}

fn proteus_set() -> FlagSet {
    FlagSet::from_json(
        &json!({"flags": {"checkout": {
            "state": "ENABLED",
            "variants": {"on": true, "off": false},
            "defaultVariant": "off",
            "targeting": targeting()
        }}})
        .to_string(),
    )
    .expect("valid flag")
}

fn unleash_engine() -> EngineState {
    let rollout = |percent: &str, constraint: Value| {
        json!({"name": "flexibleRollout", "constraints": constraint,
               "parameters": {"rollout": percent, "stickiness": "userId", "groupId": "checkout"}})
    };
    let features: ClientFeatures = serde_json::from_value(json!({
        "version": 2,
        "features": [{"name": "checkout", "enabled": true, "strategies": [
            rollout("100", json!([{"contextName": "email", "operator": "STR_ENDS_WITH", "values": ["@example.com"]}])),
            rollout("100", json!([{"contextName": "country", "operator": "IN", "values": ["FR", "DE"]}])),
            rollout("100", json!([{"contextName": "app_version", "operator": "SEMVER_GTE", "value": "2.0.0"}])),
            rollout("10", json!([]))
        ]}]
    }))
    .expect("valid Unleash features");
    let engine = EngineState::default();
    let _warnings = engine.apply_client_features(features);
    engine
}

fn unleash_context(context: &Map<String, Value>) -> Context {
    let properties: Map<String, Value> = context
        .iter()
        .filter(|(k, _)| *k != "targetingKey")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    serde_json::from_value(json!({"userId": context["targetingKey"], "properties": properties}))
        .expect("valid Unleash context")
}

fn bench(c: &mut Criterion) {
    let set = proteus_set();
    let flag = set.flag("checkout").unwrap();
    let engine = Engine::new();
    let logic = engine
        .compile(&targeting())
        .expect("datalogic compiles the rule");
    let unleash = unleash_engine();

    for (name, context) in contexts() {
        // The three engines agree on the decision.
        let proteus = set.evaluate("checkout", &context, NOW_S);
        let mut with_flagd = context.clone();
        with_flagd.insert(
            "$flagd".into(),
            json!({"flagKey": "checkout", "timestamp": NOW_S}),
        );
        let data_json = Value::Object(with_flagd);
        let parsed = ParsedData::from_json(&data_json.to_string()).expect("parses");
        let arena = Bump::new();
        let datalogic = engine
            .evaluate(&logic, &parsed, &arena)
            .expect("evaluates")
            .as_str()
            .map(str::to_owned);
        assert_eq!(
            proteus.variant,
            datalogic.as_deref(),
            "{name}: datalogic disagrees"
        );
        let unleash_context = unleash_context(&context);
        assert_eq!(
            proteus.variant == Some("on"),
            unleash.is_enabled("checkout", &unleash_context, &None),
            "{name}: unleash disagrees"
        );

        let mut group = c.benchmark_group(name);
        group.bench_function("proteus_by_key", |b| {
            b.iter(|| {
                black_box(
                    set.evaluate(black_box("checkout"), black_box(&context), NOW_S)
                        .variant,
                )
            })
        });
        group.bench_function("proteus_flag_ref", |b| {
            b.iter(|| black_box(flag.evaluate(black_box(&context), NOW_S).variant))
        });
        let mut arena = Bump::new();
        // Not a per-request cost: the context's parsing into `ParsedData` is excluded.
        group.bench_function(DATALOGIC_PREPARSED, |b| {
            b.iter(|| {
                let on = engine
                    .evaluate(&logic, black_box(&parsed), &arena)
                    .ok()
                    .and_then(|v| v.as_str())
                    == Some("on");
                black_box(on);
                arena.reset();
            })
        });
        group.bench_function("datalogic_serde_json", |b| {
            b.iter(|| {
                let on = engine
                    .evaluate(&logic, black_box(&data_json), &arena)
                    .ok()
                    .and_then(|v| v.as_str())
                    == Some("on");
                black_box(on);
                arena.reset();
            })
        });
        group.bench_function("unleash_yggdrasil", |b| {
            b.iter(|| {
                black_box(unleash.is_enabled(
                    black_box("checkout"),
                    black_box(&unleash_context),
                    &None,
                ))
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
