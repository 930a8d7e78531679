//! Integration tests of proteus-experiments: one binary, one module per concern.

mod attribution;
mod batching;
mod definitions;
mod guardrails;
mod lifecycle;
mod results;
mod simulation;

use proteus_experiments::{ExperimentDefinition, Exposure};
use serde_json::{Value, json};

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 24 * HOUR_MS;
/// A fixed start time (2024-01-01T00:00:00Z) so tests never read a clock.
pub const T0: i64 = 1_704_067_200_000;

/// A two-arm experiment with one metric of each kind and two guardrails.
pub fn definition_json() -> Value {
    json!({
        "id": "checkout-green",
        "name": "Green checkout button",
        "flag_set": "prod",
        "flag": "checkout",
        "hypothesis": "A green button makes more people buy.",
        "eligibility": "everyone the flag serves",
        "arms": [
            {"variant": "control", "weight": 1},
            {"variant": "green", "weight": 1}
        ],
        "control": "control",
        "metrics": [
            {"id": "purchase", "kind": "conversion",
             "source": {"topic": "shop", "event_type": "order.placed"}, "window_ms": 7 * DAY_MS},
            {"id": "revenue", "kind": "sum",
             "source": {"topic": "shop", "event_type": "order.placed", "value": "/amount"}},
            {"id": "aov", "kind": "mean",
             "source": {"topic": "shop", "event_type": "order.placed", "value": "/amount"}},
            {"id": "revenue-per-session", "kind": "ratio",
             "source": {"topic": "shop", "event_type": "order.placed", "value": "/amount"},
             "denominator": {"topic": "web", "event_type": "session.started"}},
            {"id": "latency", "kind": "mean", "goal": "decrease",
             "source": {"topic": "web", "event_type": "page.loaded", "value": "/ms"}},
            {"id": "errors", "kind": "count", "goal": "decrease",
             "source": {"topic": "web", "event_type": "error"}}
        ],
        "primary_metric": "purchase",
        "secondary_metrics": ["revenue", "aov", "revenue-per-session"],
        "guardrails": [
            {"metric": "latency", "direction": "must_not_increase"},
            {"metric": "errors", "direction": "must_not_increase", "threshold_relative": 0.01}
        ],
        "minimum_detectable_effect": {"relative": 0.1}
    })
}

pub fn definition() -> ExperimentDefinition {
    ExperimentDefinition::from_json(&definition_json().to_string()).expect("valid definition")
}

pub fn parse(value: &Value) -> ExperimentDefinition {
    ExperimentDefinition::from_json(&value.to_string()).expect("valid definition")
}

pub fn exposure(unit: &str, variant: &str, time_ms: i64) -> Exposure {
    Exposure {
        flag_set: "prod".into(),
        flag: "checkout".into(),
        variant: variant.into(),
        targeting_key: unit.into(),
        time_ms,
    }
}

/// A structured CloudEvent partitioned by `unit`.
pub fn event(event_type: &str, unit: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0",
        "id": format!("{unit}-{event_type}"),
        "source": "/tests",
        "type": event_type,
        "partitionkey": unit,
        "data": data
    })
}

pub fn order(unit: &str, amount: f64) -> Value {
    event("order.placed", unit, json!({"amount": amount}))
}

/// A deterministic PRNG (SplitMix64) so simulations are reproducible.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Fails if the Debug rendering holds a NaN or an infinity anywhere (serde_json would silently
/// write them as null).
pub fn assert_all_finite<T: std::fmt::Debug + serde::Serialize>(value: &T) {
    let debug = format!("{value:?}");
    for bad in ["NaN", ": inf", "-inf", "(inf", "[inf", " inf,", " inf }"] {
        assert!(!debug.contains(bad), "found {bad:?} in {debug}");
    }
    serde_json::to_string(value).expect("serialises");
}
