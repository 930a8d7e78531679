//! Stale flags: the clean-up list every flag system grows.
//!
//! A flag is stale when its code path can probably be deleted:
//!
//! - **not evaluated** for a while: nothing asked the server for it (single or bulk OFREP
//!   evaluation) within the window, or never since it was created or since usage is tracked;
//! - **uniform** for a while: it has served the same thing to everyone within the window:
//!   disabled, without targeting (static), or a fractional split with one bucket holding all
//!   the weight (a rollout at 100 %).
//!
//! This module is pure: the runtime tells it what each version of a set looked like
//! ([`SetLifecycle::observe`]) and when flags were last evaluated, and it decides.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

/// Why a flag serves the same thing to everyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UniformKind {
    /// `state: DISABLED`: every evaluation gets the caller's default.
    Disabled,
    /// No targeting: every evaluation gets `defaultVariant`.
    Static,
    /// Targeting is a fractional split with every unit of weight on one variant.
    FullyRolledOut,
}

/// What a flag serves to everyone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Uniform {
    pub kind: UniformKind,
    /// The variant served; `None` when the caller's default is (disabled, or a `null`
    /// `defaultVariant`).
    pub variant: Option<String>,
}

/// Whether a flagd flag definition serves one outcome to every evaluation, and which.
///
/// Only shapes that are uniform by construction are recognised; a targeting rule that happens
/// to return the same variant for every context is not (that would need to evaluate it for all
/// contexts).
pub fn uniform_serving(flag: &Value) -> Option<Uniform> {
    let default_variant = || {
        flag.get("defaultVariant")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if flag.get("state").and_then(Value::as_str) == Some("DISABLED") {
        return Some(Uniform {
            kind: UniformKind::Disabled,
            variant: None,
        });
    }
    let targeting = flag.get("targeting");
    let no_targeting = match targeting {
        None | Some(Value::Null) => true,
        Some(Value::Object(rule)) => rule.is_empty(),
        Some(_) => false,
    };
    if no_targeting {
        return Some(Uniform {
            kind: UniformKind::Static,
            variant: default_variant(),
        });
    }
    let buckets = targeting?.as_object()?.get("fractional")?.as_array()?;
    if targeting?.as_object()?.len() != 1 {
        return None;
    }
    // An optional bucketing expression comes first; the rest are [variant, weight] pairs (a
    // pair without a weight weighs 1).
    let mut weighted = Vec::new();
    for bucket in buckets {
        let Some(pair) = bucket.as_array() else {
            if weighted.is_empty() {
                continue;
            }
            return None;
        };
        let variant = pair.first()?.as_str()?;
        let weight = match pair.get(1) {
            None => 1.0,
            Some(weight) => weight.as_f64()?,
        };
        weighted.push((variant, weight));
    }
    let mut carrying = weighted.iter().filter(|(_, weight)| *weight > 0.0);
    let (variant, _) = carrying.next()?;
    if carrying.next().is_some() {
        return None;
    }
    Some(Uniform {
        kind: UniformKind::FullyRolledOut,
        variant: Some((*variant).to_owned()),
    })
}

/// What is known of one flag across the versions of its set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagLifecycle {
    /// When the flag (last) appeared in its set.
    pub created_ms: i64,
    pub uniform: Option<Uniform>,
    /// Since when `uniform` has held without interruption (meaningful when it is `Some`).
    pub uniform_since_ms: i64,
}

/// Every flag of one set, tracked version after version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetLifecycle {
    flags: HashMap<String, FlagLifecycle>,
}

impl SetLifecycle {
    /// Takes in the version of the set written at `time_ms` (`document` is `null` when the set
    /// was deleted). Flags that disappear are forgotten; a flag whose uniform outcome changes
    /// starts a new period.
    pub fn observe(&mut self, document: &Value, time_ms: i64) {
        let Some(flags) = document.get("flags").and_then(Value::as_object) else {
            self.flags.clear();
            return;
        };
        self.flags.retain(|key, _| flags.contains_key(key));
        for (key, definition) in flags {
            let uniform = uniform_serving(definition);
            match self.flags.get_mut(key) {
                Some(known) if known.uniform == uniform => {}
                Some(known) => {
                    known.uniform = uniform;
                    known.uniform_since_ms = time_ms;
                }
                None => {
                    self.flags.insert(
                        key.clone(),
                        FlagLifecycle {
                            created_ms: time_ms,
                            uniform,
                            uniform_since_ms: time_ms,
                        },
                    );
                }
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&FlagLifecycle> {
        self.flags.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &FlagLifecycle)> {
        self.flags.iter().map(|(key, flag)| (key.as_str(), flag))
    }
}

/// The windows after which a flag counts as stale; `None` leaves that test out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct StaleCriteria {
    /// Not evaluated for this long.
    pub unused_for_ms: Option<i64>,
    /// Serving one outcome to everyone for this long.
    pub uniform_for_ms: Option<i64>,
}

/// Thirty days: the window Unleash and LaunchDarkly use by default.
pub const STALE_WINDOW_MS_DEFAULT: i64 = 30 * 24 * 3_600_000;

impl Default for StaleCriteria {
    fn default() -> Self {
        StaleCriteria {
            unused_for_ms: Some(STALE_WINDOW_MS_DEFAULT),
            uniform_for_ms: Some(STALE_WINDOW_MS_DEFAULT),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StaleReason {
    NotEvaluated,
    Uniform,
}

/// One flag of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StaleFlag {
    pub key: String,
    pub reasons: Vec<StaleReason>,
    pub created_ms: i64,
    /// `None`: never evaluated since usage has been tracked.
    pub last_evaluated_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uniform: Option<Uniform>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uniform_since_ms: Option<i64>,
}

/// The stale flags of a set, sorted by key.
///
/// `last_evaluated_ms` says when a flag was last evaluated, if it has been since
/// `tracked_since_ms` (when the server started recording evaluations): a flag never evaluated
/// counts as unused since the later of its creation and that moment, so turning tracking on does
/// not make every old flag stale at once.
pub fn stale_flags(
    set: &SetLifecycle,
    last_evaluated_ms: impl Fn(&str) -> Option<i64>,
    tracked_since_ms: i64,
    criteria: StaleCriteria,
    now_ms: i64,
) -> Vec<StaleFlag> {
    let mut report: Vec<StaleFlag> = set
        .iter()
        .filter_map(|(key, flag)| {
            let last_evaluated = last_evaluated_ms(key);
            let mut reasons = Vec::new();
            if let Some(window) = criteria.unused_for_ms {
                let unused_since =
                    last_evaluated.unwrap_or_else(|| flag.created_ms.max(tracked_since_ms));
                if now_ms.saturating_sub(unused_since) >= window {
                    reasons.push(StaleReason::NotEvaluated);
                }
            }
            if let Some(window) = criteria.uniform_for_ms
                && flag.uniform.is_some()
                && now_ms.saturating_sub(flag.uniform_since_ms) >= window
            {
                reasons.push(StaleReason::Uniform);
            }
            if reasons.is_empty() {
                return None;
            }
            Some(StaleFlag {
                key: key.to_owned(),
                reasons,
                created_ms: flag.created_ms,
                last_evaluated_ms: last_evaluated,
                uniform: flag.uniform.clone(),
                uniform_since_ms: flag.uniform.as_ref().map(|_| flag.uniform_since_ms),
            })
        })
        .collect();
    report.sort_by(|a, b| a.key.cmp(&b.key));
    report
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const DAY_MS: i64 = 24 * 3_600_000;

    fn uniform(flag: Value) -> Option<(UniformKind, Option<String>)> {
        uniform_serving(&flag).map(|u| (u.kind, u.variant))
    }

    #[test]
    fn recognises_flags_that_serve_one_outcome() {
        let on = || Some("on".to_owned());
        assert_eq!(
            uniform(json!({"state": "DISABLED", "defaultVariant": "on"})),
            Some((UniformKind::Disabled, None))
        );
        assert_eq!(
            uniform(json!({"state": "ENABLED", "defaultVariant": "on"})),
            Some((UniformKind::Static, on()))
        );
        assert_eq!(
            uniform(json!({"state": "ENABLED", "defaultVariant": "on", "targeting": {}})),
            Some((UniformKind::Static, on()))
        );
        assert_eq!(
            uniform(json!({"state": "ENABLED", "defaultVariant": null})),
            Some((UniformKind::Static, None))
        );
        let rollout = |on: u32, off: u32| {
            json!({"state": "ENABLED", "defaultVariant": "off",
                   "targeting": {"fractional": [["on", on], ["off", off]]}})
        };
        assert_eq!(
            uniform(rollout(100, 0)),
            Some((UniformKind::FullyRolledOut, on()))
        );
        assert_eq!(uniform(rollout(99, 1)), None);
        assert_eq!(
            uniform(
                json!({"state": "ENABLED", "defaultVariant": "off", "targeting":
                {"fractional": [{"var": "email"}, ["on", 0], ["off", 50]]}})
            ),
            Some((UniformKind::FullyRolledOut, Some("off".to_owned())))
        );
        // A pair without weight weighs 1, so two of them split.
        assert_eq!(
            uniform(json!({"state": "ENABLED", "defaultVariant": "off",
                "targeting": {"fractional": [["on"], ["off"]]}})),
            None
        );
        assert_eq!(
            uniform(json!({"state": "ENABLED", "defaultVariant": "off",
                "targeting": {"if": [{"==": [{"var": "a"}, 1]}, "on", "off"]}})),
            None
        );
    }

    #[test]
    fn uniform_periods_restart_when_the_outcome_changes() {
        let mut set = SetLifecycle::default();
        let flag = |targeting: Value| {
            json!({"flags": {"f": {"state": "ENABLED",
            "variants": {"on": true, "off": false}, "defaultVariant": "off",
            "targeting": targeting}}})
        };
        set.observe(&flag(json!({"fractional": [["on", 5], ["off", 95]]})), 10);
        assert_eq!(set.get("f").unwrap().uniform, None);
        set.observe(&flag(json!({"fractional": [["on", 100], ["off", 0]]})), 20);
        assert_eq!(set.get("f").unwrap().uniform_since_ms, 20);
        // Another version that keeps the flag at 100 % does not restart the period.
        set.observe(&flag(json!({"fractional": [["on", 1], ["off", 0]]})), 30);
        assert_eq!(set.get("f").unwrap().uniform_since_ms, 20);
        assert_eq!(set.get("f").unwrap().created_ms, 10);
        set.observe(&json!({"flags": {}}), 40);
        assert!(set.get("f").is_none());
        set.observe(&flag(json!({})), 50);
        assert_eq!(set.get("f").unwrap().created_ms, 50);
        set.observe(&Value::Null, 60);
        assert_eq!(set.iter().count(), 0);
    }

    #[test]
    fn reports_unused_and_uniform_flags_past_their_windows() {
        let mut set = SetLifecycle::default();
        set.observe(
            &json!({"flags": {
                "old-static": {"state": "ENABLED", "variants": {"on": true}, "defaultVariant": "on"},
                "used-split": {"state": "ENABLED", "variants": {"on": true, "off": false},
                    "defaultVariant": "off", "targeting": {"fractional": [["on", 50], ["off", 50]]}},
                "unused-split": {"state": "ENABLED", "variants": {"on": true, "off": false},
                    "defaultVariant": "off", "targeting": {"fractional": [["on", 50], ["off", 50]]}},
            }}),
            0,
        );
        let now = 40 * DAY_MS;
        let last = |key: &str| match key {
            "old-static" => Some(now - DAY_MS),
            "used-split" => Some(now - 2 * DAY_MS),
            _ => None,
        };
        let report = stale_flags(&set, last, 0, StaleCriteria::default(), now);
        let summary: Vec<(&str, &[StaleReason])> = report
            .iter()
            .map(|f| (f.key.as_str(), f.reasons.as_slice()))
            .collect();
        assert_eq!(
            summary,
            [
                ("old-static", &[StaleReason::Uniform][..]),
                ("unused-split", &[StaleReason::NotEvaluated][..]),
            ]
        );
        // Tracking that started 10 days ago does not count the 30 days before it as unused.
        let report = stale_flags(&set, last, now - 10 * DAY_MS, StaleCriteria::default(), now);
        assert_eq!(report.len(), 1, "{report:?}");
        // Each test can be left out.
        let criteria = StaleCriteria {
            unused_for_ms: None,
            uniform_for_ms: Some(DAY_MS),
        };
        assert_eq!(stale_flags(&set, last, 0, criteria, now).len(), 1);
    }
}
