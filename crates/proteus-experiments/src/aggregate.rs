//! Incremental aggregation: the pure state machine an event-log consumer drives with exposures
//! and metric events, and checkpoints as JSON.
//!
//! # Rules
//!
//! - **The unit** is the exposure's `targetingKey`; a metric event's unit comes from the
//!   metric's [`UnitKey`](crate::UnitKey) (default: the `partitionkey` attribute).
//! - **First exposure decides the arm**: the earliest exposure time (ties: the arm listed first).
//!   A unit exposed to several arms is excluded from every metric and counted
//!   (`units_multiple_arms`), because its outcome cannot be attributed to one arm.
//! - **Windows are relative to the first exposure F**: a metric event at time t counts for the
//!   post-exposure value when F ≤ t < F + window_ms (no window: any t ≥ F), and for CUPED's
//!   pre-period covariate when F − pre_period_ms ≤ t < F. Events before F − pre_period_ms are
//!   ignored. So a metric event that arrives before the unit's exposure is not lost: it is
//!   buffered and classified once the exposure is known.
//! - **Bounded lateness**: the watermark is the largest event time applied so far (exposures and
//!   matching metric events). An event whose time is more than `lateness_ms` behind the
//!   watermark is *late*: it is dropped and counted. As long as no event is late, the results do
//!   not depend on the order in which the exposure and metric topics are interleaved (up to the
//!   rounding of floating-point sums), because a unit's first exposure is then final once the
//!   watermark passes F + lateness_ms: until then its metric events are kept raw and classified
//!   against the current F; afterwards they are folded into per-unit sums.
//! - **Batching does not matter**: every decision (lateness, folding, pruning) is a function of
//!   the sequence of events, never of how they were grouped into calls; the same sequence gives
//!   the same state, bit for bit.
//! - **Bounded memory**: at most `units_max` units (events of new units beyond it are refused and
//!   counted); at most `unit_events_max` raw events buffered per unit while its F may move (more
//!   are dropped and counted). Units that never get exposed are forgotten once their events are
//!   too old to fall into any future exposure's pre-period (watermark − lateness − pre-period).
//!
//! Per-arm [`SufficientStats`] are a fold over the units in key order ([`ArmStats`]): O(units ×
//! metrics) per look, a few milliseconds per million units. They are not kept as running sums
//! because a unit's value changes while its window is open, and subtracting floating-point sums
//! would make the state depend on the order of events.

use std::collections::BTreeMap;

use proteus_stats::SufficientStats;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::definition::ExperimentDefinition;
use crate::metric::{EventSource, MetricKind, UnitKey, ValueProblem};

/// The topic the flag-set service appends exposures to.
pub const EXPOSURE_TOPIC: &str = "proteus.flags.exposures";
/// The CloudEvent type of an exposure.
pub const EXPOSURE_EVENT_TYPE: &str = "dev.proteus.flag.exposure";
/// Shortest interval of event time between two full compactions of the unit table, in ms.
pub const COMPACTION_INTERVAL_MS_MIN: u64 = 60_000;

/// One exposure: a unit was served a variant of a flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exposure {
    pub flag_set: String,
    pub flag: String,
    pub variant: String,
    pub targeting_key: String,
    pub time_ms: i64,
}

/// Why a CloudEvent is not a valid exposure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposureError {
    /// JSON pointer into the event.
    pub path: &'static str,
    pub message: &'static str,
}

impl std::fmt::Display for ExposureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for ExposureError {}

impl Exposure {
    /// Reads an exposure CloudEvent (structured JSON) as `proteus-flagsets-service` writes it.
    pub fn from_cloud_event(event: &Value) -> Result<Exposure, ExposureError> {
        if event.get("type").and_then(Value::as_str) != Some(EXPOSURE_EVENT_TYPE) {
            return Err(ExposureError {
                path: "/type",
                message: "not an exposure (type dev.proteus.flag.exposure)",
            });
        }
        let text = |path: &'static str, key: &str| {
            event
                .get("data")
                .and_then(|d| d.get(key))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or(ExposureError {
                    path,
                    message: "missing or not a non-empty string",
                })
        };
        Ok(Exposure {
            flag_set: text("/data/flagSet", "flagSet")?,
            flag: text("/data/flag", "flag")?,
            variant: text("/data/variant", "variant")?,
            targeting_key: text("/data/targetingKey", "targetingKey")?,
            time_ms: event
                .get("data")
                .and_then(|d| d.get("time_ms"))
                .and_then(Value::as_i64)
                .ok_or(ExposureError {
                    path: "/data/time_ms",
                    message: "missing or not an integer (milliseconds since the epoch)",
                })?,
        })
    }
}

/// What happened to one applied event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Applied {
    Counted,
    /// An exposure of another flag or flag set.
    OtherFlag,
    /// An exposure to a variant that is not an arm.
    UnknownVariant,
    /// More than `lateness_ms` behind the watermark.
    Late,
    /// A new unit while `units_max` units are tracked.
    UnitsFull,
    /// A metric event no metric reads.
    NoMatchingMetric,
    /// A matching metric event without a unit or a usable value (counted per metric).
    Rejected,
    /// The unit already buffers `unit_events_max` raw events.
    UnitEventsFull,
}

/// One slot: a stream of numbers per unit (a metric's numerator, or a ratio's denominator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Slot {
    metric: usize,
    source: EventSource,
    unit: UnitKey,
    window_ms: Option<u64>,
}

/// What the aggregator needs from the definition, copied so a checkpoint is self-contained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Plan {
    flag_set: String,
    flag: String,
    variants: Vec<String>,
    metric_ids: Vec<String>,
    metric_kinds: Vec<MetricKind>,
    /// Per metric: numerator slot and, for ratios, denominator slot.
    metric_slots: Vec<(usize, Option<usize>)>,
    slots: Vec<Slot>,
    /// 0 without CUPED.
    pre_period_ms: u64,
    lateness_ms: u64,
    units_max: u64,
    unit_events_max: u32,
}

/// Sums of one slot for one unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SlotSums {
    pub post_sum: f64,
    pub post_count: u64,
    pub pre_sum: f64,
    pub pre_count: u64,
}

/// A raw metric event kept while the unit's first exposure may still move.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Pending {
    time_ms: i64,
    slot: u16,
    value: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct UnitState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    first_exposure_ms: Option<i64>,
    #[serde(default)]
    arm: u8,
    /// Bit i: exposed to arm i.
    #[serde(default)]
    arms_seen: u32,
    /// F is final and `sums` hold the folded events.
    #[serde(default)]
    settled: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending: Vec<Pending>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sums: Vec<SlotSums>,
}

/// Matching events that could not be used, per metric.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricRejections {
    pub metric: String,
    /// No unit at the metric's `unit` attribute or pointer.
    pub no_unit: u64,
    /// No value at the source's `value` pointer.
    pub missing_field: u64,
    /// The value is not a finite JSON number.
    pub not_a_number: u64,
}

/// Counters of everything the aggregator did not count, for the results page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregationReport {
    pub exposures_applied: u64,
    pub exposures_other_flag: u64,
    pub exposures_unknown_variant: u64,
    pub metric_events_applied: u64,
    /// Events more than `lateness_ms` behind the watermark, dropped.
    pub late_events: u64,
    /// Events of new units refused because `units_max` units were tracked.
    pub units_refused_events: u64,
    /// Events dropped because a unit buffered `unit_events_max` raw events.
    pub unit_events_dropped: u64,
    pub rejected: Vec<MetricRejections>,
    /// Units tracked now (exposed or with buffered events) and the limit.
    pub units_tracked: u64,
    pub units_max: u64,
    pub watermark_ms: Option<i64>,
}

/// The incremental state of one experiment: serialisable so a runtime can checkpoint it with
/// the log offsets it has consumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentAggregator {
    plan: Plan,
    units: BTreeMap<String, UnitState>,
    watermark_ms: Option<i64>,
    next_compaction_ms: Option<i64>,
    exposure_time_min_ms: Option<i64>,
    exposure_time_max_ms: Option<i64>,
    report: AggregationReport,
}

/// Per arm and metric sufficient statistics of the units exposed to exactly one arm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmStats {
    /// Units exposed to exactly one arm, per arm (definition order).
    pub units: Vec<u64>,
    /// Units exposed to several arms (excluded everywhere), by the arm of their first exposure.
    pub units_multiple_arms: Vec<u64>,
    /// `metrics[m][a]`: metric m (definition order), arm a. CUPED covariates are filled when
    /// CUPED is on and the metric is not a ratio.
    pub metrics: Vec<Vec<SufficientStats>>,
    /// Units skipped because a sum overflowed a 64-bit float.
    pub units_non_finite: u64,
}

impl ExperimentAggregator {
    /// An empty aggregator for `definition` (which should be valid).
    pub fn new(definition: &ExperimentDefinition) -> ExperimentAggregator {
        let mut slots = Vec::new();
        let mut metric_slots = Vec::new();
        for (i, metric) in definition.metrics.iter().enumerate() {
            let slot = |source: &EventSource| Slot {
                metric: i,
                source: source.clone(),
                unit: metric.unit.clone(),
                window_ms: metric.window_ms,
            };
            let numerator = slots.len();
            slots.push(slot(&metric.source));
            let denominator = match (&metric.kind, &metric.denominator) {
                (MetricKind::Ratio, Some(d)) => {
                    slots.push(slot(d));
                    Some(slots.len() - 1)
                }
                _ => None,
            };
            metric_slots.push((numerator, denominator));
        }
        let a = &definition.analysis;
        ExperimentAggregator {
            plan: Plan {
                flag_set: definition.flag_set.clone(),
                flag: definition.flag.clone(),
                variants: definition.arms.iter().map(|a| a.variant.clone()).collect(),
                metric_ids: definition.metrics.iter().map(|m| m.id.clone()).collect(),
                metric_kinds: definition.metrics.iter().map(|m| m.kind).collect(),
                metric_slots,
                slots,
                pre_period_ms: a.cuped.map_or(0, |c| c.pre_period_ms),
                lateness_ms: a.lateness_ms,
                units_max: a.units_max,
                unit_events_max: a.unit_events_max,
            },
            units: BTreeMap::new(),
            watermark_ms: None,
            next_compaction_ms: None,
            exposure_time_min_ms: None,
            exposure_time_max_ms: None,
            report: AggregationReport {
                rejected: definition
                    .metrics
                    .iter()
                    .map(|m| MetricRejections {
                        metric: m.id.clone(),
                        ..MetricRejections::default()
                    })
                    .collect(),
                units_max: a.units_max,
                ..AggregationReport::default()
            },
        }
    }

    /// The earliest time an event may have and not be late.
    fn horizon_ms(&self) -> Option<i64> {
        self.watermark_ms
            .map(|w| w.saturating_sub(clamp_i64(self.plan.lateness_ms)))
    }

    fn is_late(&self, time_ms: i64) -> bool {
        self.horizon_ms().is_some_and(|h| time_ms < h)
    }

    /// Applies one exposure.
    pub fn apply_exposure(&mut self, exposure: &Exposure) -> Applied {
        if exposure.flag_set != self.plan.flag_set || exposure.flag != self.plan.flag {
            self.report.exposures_other_flag += 1;
            return Applied::OtherFlag;
        }
        // Arms beyond the bit set (only in an unvalidated definition) are treated as unknown.
        let Some(arm) = self
            .plan
            .variants
            .iter()
            .position(|v| *v == exposure.variant)
            .filter(|&a| a < 32)
        else {
            self.report.exposures_unknown_variant += 1;
            return Applied::UnknownVariant;
        };
        let t = exposure.time_ms;
        if self.is_late(t) {
            self.report.late_events += 1;
            return Applied::Late;
        }
        if !self.units.contains_key(&exposure.targeting_key) && !self.has_room() {
            self.report.units_refused_events += 1;
            return Applied::UnitsFull;
        }
        let unit = self
            .units
            .entry(exposure.targeting_key.clone())
            .or_default();
        unit.arms_seen |= 1 << arm;
        let arm = arm as u8;
        match unit.first_exposure_ms {
            Some(f) if f < t || (f == t && unit.arm <= arm) => {}
            _ => {
                unit.first_exposure_ms = Some(t);
                unit.arm = arm;
            }
        }
        self.exposure_time_min_ms = Some(self.exposure_time_min_ms.map_or(t, |m| m.min(t)));
        self.exposure_time_max_ms = Some(self.exposure_time_max_ms.map_or(t, |m| m.max(t)));
        self.report.exposures_applied += 1;
        self.advance(t, Some(&exposure.targeting_key));
        Applied::Counted
    }

    /// Applies one exposure CloudEvent (structured JSON).
    pub fn apply_exposure_event(&mut self, event: &Value) -> Result<Applied, ExposureError> {
        Ok(self.apply_exposure(&Exposure::from_cloud_event(event)?))
    }

    /// Applies one metric CloudEvent (structured JSON) read from `topic`. `time_ms` is the
    /// event's time (its `time` attribute, or the log's append time): the caller decides, the
    /// same way for every event.
    pub fn apply_metric_event(&mut self, topic: &str, event: &Value, time_ms: i64) -> Applied {
        let mut matched: Vec<(String, usize, f64)> = Vec::new();
        let mut any_match = false;
        for (i, slot) in self.plan.slots.iter().enumerate() {
            if !slot.source.matches(topic, event) {
                continue;
            }
            any_match = true;
            let Some(rejections) = self.report.rejected.get_mut(slot.metric) else {
                continue;
            };
            let Some(unit) = slot.unit.extract(event) else {
                rejections.no_unit += 1;
                continue;
            };
            match slot.source.value_of(event) {
                Ok(value) => matched.push((unit, i, value)),
                Err(ValueProblem::MissingField) => rejections.missing_field += 1,
                Err(ValueProblem::NotANumber) => rejections.not_a_number += 1,
                Err(ValueProblem::NoUnit) => rejections.no_unit += 1,
            }
        }
        if !any_match {
            return Applied::NoMatchingMetric;
        }
        if matched.is_empty() {
            return Applied::Rejected;
        }
        if self.is_late(time_ms) {
            self.report.late_events += 1;
            return Applied::Late;
        }
        let mut outcome = Applied::Counted;
        let mut touched: Vec<String> = Vec::new();
        for (key, slot, value) in matched {
            if !self.units.contains_key(&key) && !self.has_room() {
                self.report.units_refused_events += 1;
                outcome = Applied::UnitsFull;
                continue;
            }
            let slots = self.plan.slots.len();
            let unit = self.units.entry(key.clone()).or_default();
            if unit.settled {
                let f = unit.first_exposure_ms.unwrap_or(time_ms);
                fold(&mut unit.sums, slots, &self.plan, f, time_ms, slot, value);
            } else if unit.pending.len() >= self.plan.unit_events_max as usize {
                self.report.unit_events_dropped += 1;
                outcome = Applied::UnitEventsFull;
                continue;
            } else {
                unit.pending.push(Pending {
                    time_ms,
                    slot: slot as u16,
                    value,
                });
            }
            touched.push(key);
        }
        if outcome == Applied::Counted {
            self.report.metric_events_applied += 1;
        }
        // Settling the unit of the first key is enough to keep the rule a function of the
        // sequence; full compaction settles the rest.
        let first = touched.first().cloned();
        self.advance(time_ms, first.as_deref());
        outcome
    }

    fn has_room(&self) -> bool {
        (self.units.len() as u64) < self.plan.units_max
    }

    /// Moves the watermark to `time_ms`, settles `key`'s unit when its F is final, and compacts
    /// the table when the watermark passed the next compaction time.
    fn advance(&mut self, time_ms: i64, key: Option<&str>) {
        self.watermark_ms = Some(self.watermark_ms.map_or(time_ms, |w| w.max(time_ms)));
        let horizon = self.horizon_ms().unwrap_or(time_ms);
        if let Some(key) = key
            && let Some(unit) = self.units.get_mut(key)
        {
            settle(unit, &self.plan, horizon);
        }
        let watermark = self.watermark_ms.unwrap_or(time_ms);
        match self.next_compaction_ms {
            None => {
                self.next_compaction_ms = Some(watermark.saturating_add(self.compaction_ms()));
            }
            Some(next) if watermark >= next => {
                self.compact();
                self.next_compaction_ms = Some(watermark.saturating_add(self.compaction_ms()));
            }
            Some(_) => {}
        }
    }

    fn compaction_ms(&self) -> i64 {
        clamp_i64((self.plan.lateness_ms / 2).max(COMPACTION_INTERVAL_MS_MIN))
    }

    /// Settles every unit whose first exposure is final, drops buffered events that can no
    /// longer count, and forgets unexposed units with nothing left. Runs by itself as the
    /// watermark advances; public so a runtime may run it before a checkpoint.
    pub fn compact(&mut self) {
        let Some(horizon) = self.horizon_ms() else {
            return;
        };
        let pre = clamp_i64(self.plan.pre_period_ms);
        let plan = &self.plan;
        self.units.retain(|_, unit| {
            settle(unit, plan, horizon);
            if !unit.settled {
                // F can only move down to the horizon: events before min(F, horizon) − pre are
                // outside every possible pre-period.
                let floor = unit
                    .first_exposure_ms
                    .map_or(horizon, |f| f.min(horizon))
                    .saturating_sub(pre);
                unit.pending.retain(|p| p.time_ms >= floor);
            }
            unit.first_exposure_ms.is_some() || !unit.pending.is_empty()
        });
    }

    /// The counters of events not counted, and the table's size.
    pub fn report(&self) -> AggregationReport {
        let mut report = self.report.clone();
        report.units_tracked = self.units.len() as u64;
        report.watermark_ms = self.watermark_ms;
        report
    }

    /// Earliest and latest exposure times applied (for the traffic rate).
    pub fn exposure_span_ms(&self) -> Option<(i64, i64)> {
        Some((self.exposure_time_min_ms?, self.exposure_time_max_ms?))
    }

    /// The sums of one unit (settled or not), per slot; for tests and debugging.
    pub fn unit_sums(&self, key: &str) -> Option<Vec<SlotSums>> {
        let unit = self.units.get(key)?;
        Some(current_sums(unit, &self.plan))
    }

    /// The arm of a unit's first exposure, and whether it saw several arms.
    pub fn unit_arm(&self, key: &str) -> Option<(String, bool)> {
        let unit = self.units.get(key)?;
        unit.first_exposure_ms?;
        Some((
            self.plan.variants.get(unit.arm as usize)?.clone(),
            unit.arms_seen.count_ones() > 1,
        ))
    }

    /// Per arm and metric sufficient statistics (see the module docs for why this is a fold).
    pub fn arm_stats(&self) -> ArmStats {
        let arms = self.plan.variants.len();
        let metrics = self.plan.metric_slots.len();
        let cuped = self.plan.pre_period_ms > 0;
        let mut stats = ArmStats {
            units: vec![0; arms],
            units_multiple_arms: vec![0; arms],
            metrics: vec![vec![SufficientStats::default(); arms]; metrics],
            units_non_finite: 0,
        };
        for unit in self.units.values() {
            if unit.first_exposure_ms.is_none() {
                continue;
            }
            let arm = unit.arm as usize;
            if arm >= arms {
                continue;
            }
            if unit.arms_seen.count_ones() > 1 {
                stats.units_multiple_arms[arm] += 1;
                continue;
            }
            let sums = current_sums(unit, &self.plan);
            let mut pushes = Vec::with_capacity(metrics);
            for (m, &(numerator, denominator)) in self.plan.metric_slots.iter().enumerate() {
                let (Some(num), kind) = (sums.get(numerator), self.plan.metric_kinds[m]) else {
                    continue;
                };
                let (y, d, x) = match kind {
                    MetricKind::Conversion => (
                        f64::from(u8::from(num.post_count > 0)),
                        None,
                        Some(f64::from(u8::from(num.pre_count > 0))),
                    ),
                    MetricKind::Count => (num.post_count as f64, None, Some(num.pre_count as f64)),
                    MetricKind::Sum => (num.post_sum, None, Some(num.pre_sum)),
                    MetricKind::Mean => (num.post_sum, Some(num.post_count as f64), None),
                    MetricKind::Ratio => (
                        num.post_sum,
                        Some(
                            denominator
                                .and_then(|d| sums.get(d))
                                .map_or(0.0, |d| d.post_sum),
                        ),
                        None,
                    ),
                };
                let mut one = SufficientStats::default();
                match one.push_unit(y, d, if cuped { x } else { None }) {
                    Ok(()) => pushes.push((m, one)),
                    Err(_) => {
                        pushes.clear();
                        stats.units_non_finite += 1;
                        break;
                    }
                }
            }
            if pushes.len() == metrics {
                stats.units[arm] += 1;
                for (m, one) in pushes {
                    stats.metrics[m][arm] += one;
                }
            }
        }
        stats
    }
}

fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Adds one event to a unit's sums, classified against its first exposure `f`.
fn fold(
    sums: &mut Vec<SlotSums>,
    slots: usize,
    plan: &Plan,
    f: i64,
    t: i64,
    slot: usize,
    value: f64,
) {
    if sums.len() < slots {
        sums.resize(slots, SlotSums::default());
    }
    let Some(window) = plan.slots.get(slot).map(|s| s.window_ms) else {
        return;
    };
    let after = i128::from(t) - i128::from(f);
    let s = &mut sums[slot];
    if after >= 0 {
        if window.is_none_or(|w| after < i128::from(w)) {
            s.post_sum += value;
            s.post_count += 1;
        }
    } else if -after <= i128::from(plan.pre_period_ms) {
        s.pre_sum += value;
        s.pre_count += 1;
    }
}

/// Folds a unit's buffered events in a canonical order (time, slot, value) so the sums do not
/// depend on the order the events arrived in.
fn fold_pending(unit: &UnitState, plan: &Plan, f: i64, sums: &mut Vec<SlotSums>) {
    let mut pending = unit.pending.clone();
    pending.sort_by(|a, b| {
        (a.time_ms, a.slot)
            .cmp(&(b.time_ms, b.slot))
            .then(a.value.total_cmp(&b.value))
    });
    for p in pending {
        fold(
            sums,
            plan.slots.len(),
            plan,
            f,
            p.time_ms,
            p.slot as usize,
            p.value,
        );
    }
}

/// Folds the buffer when F is final (F ≤ horizon: no exposure earlier than F can still come).
fn settle(unit: &mut UnitState, plan: &Plan, horizon: i64) {
    if unit.settled {
        return;
    }
    let Some(f) = unit.first_exposure_ms else {
        return;
    };
    if f > horizon {
        return;
    }
    let mut sums = vec![SlotSums::default(); plan.slots.len()];
    fold_pending(unit, plan, f, &mut sums);
    unit.sums = sums;
    unit.pending = Vec::new();
    unit.settled = true;
}

/// A unit's sums as they stand: folded ones, or its buffer classified against the current F.
fn current_sums(unit: &UnitState, plan: &Plan) -> Vec<SlotSums> {
    if unit.settled {
        let mut sums = unit.sums.clone();
        sums.resize(plan.slots.len(), SlotSums::default());
        return sums;
    }
    let mut sums = vec![SlotSums::default(); plan.slots.len()];
    if let Some(f) = unit.first_exposure_ms {
        fold_pending(unit, plan, f, &mut sums);
    }
    sums
}
