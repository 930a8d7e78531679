//! Metrics over event topics: which CloudEvents count, which number they carry, which unit
//! (targeting key) they belong to, and how a unit's events become its value.
//!
//! Every metric is computed per unit first (the unit is what was randomised), then averaged over
//! an arm's units, which is what makes the tests' independence assumption hold.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::definition::{ID_BYTES_MAX, NAME_BYTES_MAX, SELECTOR_BYTES_MAX, WINDOW_MS_MAX};

/// How a unit's events become its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// 1 if the unit emitted a matching event in its window, else 0 (a proportion).
    Conversion,
    /// Number of matching events in the unit's window.
    Count,
    /// Σ of the `value` field over the unit's matching events (e.g. revenue per user); units
    /// without events count as 0.
    Sum,
    /// Mean of the `value` field per event (e.g. average order value): Σ value / number of
    /// events over the arm, analysed as a ratio by the delta method because one unit's events
    /// are correlated.
    Mean,
    /// Σ numerator / Σ denominator (e.g. revenue per session); `source` is the numerator and
    /// `denominator` the denominator, each a sum of `value` (or a count without `value`).
    Ratio,
}

impl MetricKind {
    /// Whether the arm estimate is a ratio of two per-unit sums (delta method, no CUPED).
    pub fn is_ratio(self) -> bool {
        matches!(self, MetricKind::Mean | MetricKind::Ratio)
    }
}

/// Which events a metric reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSource {
    /// The topic the events are in.
    pub topic: String,
    /// The CloudEvent `type` that counts.
    pub event_type: String,
    /// JSON pointer into the CloudEvent's `data` to a number; absent: each event counts 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Conditions on the event's data, all of which must hold for the event to count (e.g.
    /// only orders from France). An event that fails one is simply not this source's.
    #[serde(default, rename = "where", skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<EventFilter>,
}

/// Most filters on one event source.
pub const FILTERS_MAX: usize = 8;
/// Most values in one `in` / `not_in` filter.
pub const FILTER_VALUES_MAX: usize = 100;

/// A condition on one field of a metric event's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFilter {
    /// JSON pointer into the CloudEvent's `data`, e.g. `/country`.
    pub path: String,
    pub op: FilterOp,
    /// What the field is compared with: any JSON value for `equals` / `not_equals`, an array
    /// for `in` / `not_in`, a number for the orderings, absent for `exists` / `missing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterOp {
    Equals,
    NotEquals,
    In,
    NotIn,
    Gt,
    Gte,
    Lt,
    Lte,
    Exists,
    Missing,
}

impl EventFilter {
    /// Whether `data` passes. JSON numbers compare by value (1 equals 1.0).
    pub fn holds(&self, data: Option<&Value>) -> bool {
        let field = data.and_then(|d| d.pointer(&self.path));
        let same = |a: &Value, b: &Value| match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) if a.is_number() && b.is_number() => x == y,
            _ => a == b,
        };
        let value = self.value.as_ref();
        let number = || Some((field?.as_f64()?, value?.as_f64()?));
        match self.op {
            FilterOp::Exists => field.is_some_and(|f| !f.is_null()),
            FilterOp::Missing => field.is_none_or(Value::is_null),
            FilterOp::Equals => matches!((field, value), (Some(f), Some(v)) if same(f, v)),
            FilterOp::NotEquals => !matches!((field, value), (Some(f), Some(v)) if same(f, v)),
            FilterOp::In | FilterOp::NotIn => {
                let found = match (field, value.and_then(Value::as_array)) {
                    (Some(f), Some(list)) => list.iter().any(|v| same(f, v)),
                    _ => false,
                };
                found == (self.op == FilterOp::In)
            }
            FilterOp::Gt => number().is_some_and(|(f, v)| f > v),
            FilterOp::Gte => number().is_some_and(|(f, v)| f >= v),
            FilterOp::Lt => number().is_some_and(|(f, v)| f < v),
            FilterOp::Lte => number().is_some_and(|(f, v)| f <= v),
        }
    }

    fn validate(&self, path: &str, push: &mut dyn FnMut(String, String)) {
        check_pointer(&format!("{path}/path"), &self.path, push);
        let value = self.value.as_ref();
        let problem = match self.op {
            FilterOp::Exists | FilterOp::Missing => value
                .is_some()
                .then(|| "takes no value; remove `value`".to_owned()),
            FilterOp::Equals | FilterOp::NotEquals => value
                .is_none()
                .then(|| "needs `value`, the JSON value to compare with".to_owned()),
            FilterOp::In | FilterOp::NotIn => match value.and_then(Value::as_array) {
                Some(list) if !list.is_empty() && list.len() <= FILTER_VALUES_MAX => None,
                _ => Some(format!(
                    "needs `value`, an array of 1 to {FILTER_VALUES_MAX} JSON values"
                )),
            },
            FilterOp::Gt | FilterOp::Gte | FilterOp::Lt | FilterOp::Lte => {
                match value.and_then(Value::as_f64) {
                    Some(v) if v.is_finite() => None,
                    _ => Some("needs `value`, a finite number".to_owned()),
                }
            }
        };
        if let Some(problem) = problem {
            let op = serde_json::to_value(self.op).unwrap_or_default();
            push(
                format!("{path}/value"),
                format!("the filter {} {problem}", op.as_str().unwrap_or("?")),
            );
        }
    }
}

/// Where a metric event's unit (targeting key) is. The exposure's unit is its `targetingKey`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum UnitKey {
    /// A CloudEvent attribute, e.g. `partitionkey` (Proteus' convention) or `subject`.
    Attribute(String),
    /// A JSON pointer into `data`, e.g. `/userId`; a string or an integer.
    Data(String),
}

impl Default for UnitKey {
    /// `partitionkey`: Proteus partitions events by targeting key, as the exposures do.
    fn default() -> Self {
        UnitKey::Attribute("partitionkey".to_owned())
    }
}

impl UnitKey {
    /// The unit of `event`, if it has one.
    pub fn extract(&self, event: &Value) -> Option<String> {
        let value = match self {
            UnitKey::Attribute(name) => event.get(name)?,
            UnitKey::Data(pointer) => event.get("data")?.pointer(pointer)?,
        };
        match value {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            _ => None,
        }
    }
}

/// The direction that counts as better, for the decision hint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    #[default]
    Increase,
    Decrease,
}

/// One metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricDefinition {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub kind: MetricKind,
    pub source: EventSource,
    /// The denominator of a `ratio` metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<EventSource>,
    /// Events count from the unit's first exposure until this long after it; absent: until
    /// the analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    #[serde(default)]
    pub unit: UnitKey,
    #[serde(default)]
    pub goal: Goal,
}

/// Why a matching event could not be used; counted per metric in the aggregation report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueProblem {
    NoUnit,
    MissingField,
    NotANumber,
}

impl EventSource {
    /// Whether `event` (in `topic`) is one of this source's events.
    pub fn matches(&self, topic: &str, event: &Value) -> bool {
        self.topic == topic
            && event.get("type").and_then(Value::as_str) == Some(&self.event_type)
            && self.filters.iter().all(|f| f.holds(event.get("data")))
    }

    /// The number this event contributes: its `value` field, or 1.
    pub fn value_of(&self, event: &Value) -> Result<f64, ValueProblem> {
        let Some(pointer) = &self.value else {
            return Ok(1.0);
        };
        let field = event
            .get("data")
            .and_then(|d| d.pointer(pointer))
            .ok_or(ValueProblem::MissingField)?;
        match field.as_f64() {
            Some(v) if v.is_finite() => Ok(v),
            _ => Err(ValueProblem::NotANumber),
        }
    }

    fn validate(&self, path: &str, push: &mut dyn FnMut(String, String)) {
        for (field, value) in [("topic", &self.topic), ("event_type", &self.event_type)] {
            if value.is_empty() || value.len() > SELECTOR_BYTES_MAX {
                push(
                    format!("{path}/{field}"),
                    format!("is 1 to {SELECTOR_BYTES_MAX} bytes, found {}", value.len()),
                );
            }
        }
        if let Some(pointer) = &self.value {
            check_pointer(&format!("{path}/value"), pointer, push);
        }
        if self.filters.len() > FILTERS_MAX {
            push(
                format!("{path}/where"),
                format!(
                    "at most {FILTERS_MAX} filters, found {}",
                    self.filters.len()
                ),
            );
        }
        for (i, filter) in self.filters.iter().enumerate() {
            filter.validate(&format!("{path}/where/{i}"), push);
        }
    }
}

fn check_pointer(path: &str, pointer: &str, push: &mut dyn FnMut(String, String)) {
    if !pointer.starts_with('/') || pointer.len() > SELECTOR_BYTES_MAX {
        push(
            path.to_owned(),
            format!(
                "a JSON pointer into the event's data starts with '/' and is at most {SELECTOR_BYTES_MAX} bytes (e.g. \"/amount\"), found {pointer:?}"
            ),
        );
    }
}

impl MetricDefinition {
    /// Checks the metric; problems go to `push(path, message)`.
    pub(crate) fn validate(&self, path: &str, push: &mut dyn FnMut(String, String)) {
        if self.id.is_empty()
            || self.id.len() > ID_BYTES_MAX
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            push(
                format!("{path}/id"),
                format!(
                    "an id is 1 to {ID_BYTES_MAX} bytes of letters, digits, '.', '_' and '-', found {:?}",
                    self.id
                ),
            );
        }
        if let Some(name) = &self.name
            && name.len() > NAME_BYTES_MAX
        {
            push(
                format!("{path}/name"),
                format!("at most {NAME_BYTES_MAX} bytes, found {}", name.len()),
            );
        }
        self.source.validate(&format!("{path}/source"), push);
        let kind = self.kind;
        match (kind, &self.source.value) {
            (MetricKind::Sum | MetricKind::Mean, None) => push(
                format!("{path}/source/value"),
                format!(
                    "a {} metric needs `value`, a JSON pointer to the number in the event's data",
                    kind_name(kind)
                ),
            ),
            (MetricKind::Conversion | MetricKind::Count, Some(_)) => push(
                format!("{path}/source/value"),
                format!(
                    "a {} metric counts events and reads no value; remove `value` or use `sum`",
                    kind_name(kind)
                ),
            ),
            _ => {}
        }
        match (kind, &self.denominator) {
            (MetricKind::Ratio, None) => push(
                format!("{path}/denominator"),
                "a ratio metric needs `denominator`, the events (and value) it divides by".into(),
            ),
            (MetricKind::Ratio, Some(d)) => d.validate(&format!("{path}/denominator"), push),
            (_, Some(_)) => push(
                format!("{path}/denominator"),
                format!(
                    "only ratio metrics have a denominator, this one is {}",
                    kind_name(kind)
                ),
            ),
            (_, None) => {}
        }
        if let Some(window) = self.window_ms
            && !(1..=WINDOW_MS_MAX).contains(&window)
        {
            push(
                format!("{path}/window_ms"),
                format!("a window is 1 to {WINDOW_MS_MAX} ms (a year), found {window}"),
            );
        }
        match &self.unit {
            UnitKey::Attribute(name) => {
                // CloudEvents attribute names: lower-case letters and digits (spec v1.0).
                if name.is_empty()
                    || name.len() > 20
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                {
                    push(
                        format!("{path}/unit/attribute"),
                        format!(
                            "a CloudEvent attribute name is 1 to 20 lower-case letters or digits, found {name:?}"
                        ),
                    );
                }
            }
            UnitKey::Data(pointer) => check_pointer(&format!("{path}/unit/data"), pointer, push),
        }
    }
}

fn kind_name(kind: MetricKind) -> &'static str {
    match kind {
        MetricKind::Conversion => "conversion",
        MetricKind::Count => "count",
        MetricKind::Sum => "sum",
        MetricKind::Mean => "mean",
        MetricKind::Ratio => "ratio",
    }
}
