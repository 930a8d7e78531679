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
//! - **Bounded**: at most `units_max` units known (events of new units beyond it are refused
//!   and counted); at most `unit_events_max` raw events buffered per unit while its F may move
//!   (more are dropped and counted). Units that never get exposed are forgotten once their
//!   events are too old to fall into any future exposure's pre-period (watermark − lateness −
//!   pre-period).
//!
//! # Running statistics, stored units
//!
//! Per-arm [`SufficientStats`] are **running sums**: whenever an event changes a unit, the
//! unit's old contribution is removed and its new one added, so a look at the results costs
//! O(arms × metrics) whatever the number of units. Removing and adding floating-point values
//! makes the sums depend on the order of events up to rounding (about 1e-15 relative), never
//! on how events were batched.
//!
//! Units need not stay in memory. A settled unit (F final, events folded) only changes when an
//! event names it, so a runtime stores units ([`ExperimentAggregator::take_changes`], written
//! atomically with the serialised aggregator, which leaves units out), evicts settled ones
//! ([`ExperimentAggregator::evict_settled`]) and loads back those the next events name
//! ([`ExperimentAggregator::load_unit`]). Units whose F may still move stay resident: they are
//! the ones compaction ([`ExperimentAggregator::compact`], bounded per call) settles or
//! forgets, which changes how units are kept, never what they count.

use std::collections::{BTreeMap, BTreeSet};

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
pub const COMPACTION_INTERVAL_MS_MIN: u64 = 10_000;

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

/// One unit's state: its exposures, and its metric events (raw while its first exposure may
/// still move, folded into sums once it is final). A runtime stores it between looks; it is
/// opaque apart from [`UnitState::is_settled`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnitState {
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
    /// Units known now (exposed, or with buffered events) and the limit.
    pub units_tracked: u64,
    pub units_max: u64,
    /// Units in memory: those whose first exposure may still move, and settled ones changed or
    /// loaded since the runtime last stored them.
    #[serde(default)]
    pub units_resident: u64,
    pub watermark_ms: Option<i64>,
}

/// The incremental state of one experiment.
///
/// Serialised, it is a checkpoint *without* its units: a runtime stores the units itself
/// ([`take_changes`](Self::take_changes)) and makes them resident again before events touch
/// them ([`load_unit`](Self::load_unit)). Used purely in memory (tests, the simulation), every
/// unit simply stays resident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentAggregator {
    plan: Plan,
    /// Resident units: every unit whose first exposure may still move, and the settled units
    /// loaded or changed since the last eviction.
    #[serde(skip)]
    units: BTreeMap<String, UnitState>,
    /// Units changed since the last [`take_changes`](Self::take_changes).
    #[serde(skip)]
    changed: BTreeSet<String>,
    /// Where an unfinished compaction resumes (a key of `units`).
    #[serde(skip)]
    compaction_resume: Option<String>,
    /// Running per-arm statistics of every unit, resident or stored.
    totals: ArmStats,
    /// Units known, resident or stored (what `units_max` bounds).
    units_known: u64,
    watermark_ms: Option<i64>,
    next_compaction_ms: Option<i64>,
    exposure_time_min_ms: Option<i64>,
    exposure_time_max_ms: Option<i64>,
    report: AggregationReport,
}

/// Per arm and metric sufficient statistics of the units exposed to exactly one arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

impl ArmStats {
    fn empty(arms: usize, metrics: usize) -> ArmStats {
        ArmStats {
            units: vec![0; arms],
            units_multiple_arms: vec![0; arms],
            metrics: vec![vec![SufficientStats::default(); arms]; metrics],
            units_non_finite: 0,
        }
    }

    /// Adds (or removes) what one unit contributes.
    fn apply(&mut self, contribution: &Contribution, add: bool) {
        let count = |c: &mut u64| {
            *c = if add { *c + 1 } else { c.saturating_sub(1) };
        };
        match contribution {
            Contribution::Nothing => {}
            Contribution::NonFinite => count(&mut self.units_non_finite),
            Contribution::MultipleArms(arm) => {
                if let Some(c) = self.units_multiple_arms.get_mut(*arm) {
                    count(c);
                }
            }
            Contribution::Counted(arm, values) => {
                if let Some(c) = self.units.get_mut(*arm) {
                    count(c);
                }
                for (m, one) in values.iter().enumerate() {
                    if let Some(s) = self.metrics.get_mut(m).and_then(|m| m.get_mut(*arm)) {
                        if add {
                            *s += *one;
                        } else {
                            *s -= *one;
                        }
                    }
                }
            }
        }
    }
}

/// What one unit adds to [`ArmStats`].
#[derive(Debug, Clone, PartialEq)]
enum Contribution {
    /// Not exposed (yet), or exposed to an arm outside the plan.
    Nothing,
    MultipleArms(usize),
    NonFinite,
    /// Its arm and, per metric, its one-unit statistics.
    Counted(usize, Vec<SufficientStats>),
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
            changed: BTreeSet::new(),
            compaction_resume: None,
            totals: ArmStats::empty(definition.arms.len(), definition.metrics.len()),
            units_known: 0,
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

    /// The unit an exposure is about, when it is an exposure of this experiment's flag.
    pub fn exposure_unit<'e>(&self, exposure: &'e Exposure) -> Option<&'e str> {
        (exposure.flag_set == self.plan.flag_set && exposure.flag == self.plan.flag)
            .then_some(exposure.targeting_key.as_str())
    }

    /// The units a metric event read from `topic` is about (one per matching metric source).
    pub fn metric_event_units(&self, topic: &str, event: &Value) -> Vec<String> {
        let mut keys: Vec<String> = self
            .plan
            .slots
            .iter()
            .filter(|slot| slot.source.matches(topic, event))
            .filter_map(|slot| slot.unit.extract(event))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Whether `key`'s unit is in memory. A runtime that stores units loads every unit an
    /// event is about ([`load_unit`](Self::load_unit)) before applying it: a unit that is
    /// neither resident nor loaded is taken for a new one.
    pub fn is_resident(&self, key: &str) -> bool {
        self.units.contains_key(key)
    }

    /// Makes a stored unit resident again (nothing when it already is).
    pub fn load_unit(&mut self, key: String, unit: UnitState) {
        self.units.entry(key).or_insert(unit);
    }

    /// How many units changed since the last [`take_changes`](Self::take_changes).
    pub fn changed_units(&self) -> usize {
        self.changed.len()
    }

    /// How many units are in memory.
    pub fn resident_units(&self) -> usize {
        self.units.len()
    }

    /// The units changed since the last call, to store with the checkpoint in one atomic
    /// write: each unit's state, or `None` when it was forgotten.
    pub fn take_changes(&mut self) -> Vec<(String, Option<UnitState>)> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .map(|key| {
                let unit = self.units.get(&key).cloned();
                (key, unit)
            })
            .collect()
    }

    /// Drops from memory the settled units that did not change since the last
    /// [`take_changes`](Self::take_changes) (a runtime has stored them); returns how many.
    pub fn evict_settled(&mut self) -> usize {
        let before = self.units.len();
        let changed = &self.changed;
        self.units
            .retain(|key, unit| !unit.settled || changed.contains(key));
        before - self.units.len()
    }

    /// Applies `change` to `key`'s unit (created when absent and there is room) and keeps the
    /// running totals equal to the sum of every unit's contribution.
    fn change_unit(&mut self, key: &str, change: impl FnOnce(&mut UnitState, &Plan)) -> bool {
        let before = match self.units.get(key) {
            Some(unit) => contribution(unit, &self.plan),
            None if self.has_room() => {
                self.units.insert(key.to_owned(), UnitState::default());
                self.units_known += 1;
                Contribution::Nothing
            }
            None => return false,
        };
        let Some(unit) = self.units.get_mut(key) else {
            return false;
        };
        change(unit, &self.plan);
        let after = contribution(unit, &self.plan);
        if after != before {
            self.totals.apply(&before, false);
            self.totals.apply(&after, true);
        }
        if !self.changed.contains(key) {
            self.changed.insert(key.to_owned());
        }
        true
    }

    /// Applies one exposure.
    pub fn apply_exposure(&mut self, exposure: &Exposure) -> Applied {
        if self.exposure_unit(exposure).is_none() {
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
        let applied = self.change_unit(&exposure.targeting_key, |unit, _| {
            unit.arms_seen |= 1 << arm;
            let arm = arm as u8;
            match unit.first_exposure_ms {
                Some(f) if f < t || (f == t && unit.arm <= arm) => {}
                _ => {
                    unit.first_exposure_ms = Some(t);
                    unit.arm = arm;
                }
            }
        });
        if !applied {
            self.report.units_refused_events += 1;
            return Applied::UnitsFull;
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
        let events_max = self.plan.unit_events_max as usize;
        for (key, slot, value) in matched {
            let full = self
                .units
                .get(&key)
                .is_some_and(|u| !u.settled && u.pending.len() >= events_max);
            if full {
                self.report.unit_events_dropped += 1;
                outcome = Applied::UnitEventsFull;
                continue;
            }
            let applied = self.change_unit(&key, |unit, plan| {
                if unit.settled {
                    let f = unit.first_exposure_ms.unwrap_or(time_ms);
                    fold(&mut unit.sums, plan, f, time_ms, slot, value);
                } else {
                    unit.pending.push(Pending {
                        time_ms,
                        slot: slot as u16,
                        value,
                    });
                }
            });
            if !applied {
                self.report.units_refused_events += 1;
                outcome = Applied::UnitsFull;
                continue;
            }
            touched.push(key);
        }
        if outcome == Applied::Counted {
            self.report.metric_events_applied += 1;
        }
        // Settling the unit of the first key is enough to keep the rule a function of the
        // sequence; compaction settles the rest.
        let first = touched.first().cloned();
        self.advance(time_ms, first.as_deref());
        outcome
    }

    fn has_room(&self) -> bool {
        self.units_known < self.plan.units_max
    }

    /// Moves the watermark to `time_ms` and settles `key`'s unit when its F is final (which
    /// changes how it is stored, never what it contributes).
    fn advance(&mut self, time_ms: i64, key: Option<&str>) {
        self.watermark_ms = Some(self.watermark_ms.map_or(time_ms, |w| w.max(time_ms)));
        let horizon = self.horizon_ms().unwrap_or(time_ms);
        if let Some(key) = key
            && let Some(unit) = self.units.get_mut(key)
            && settle(unit, &self.plan, horizon)
            && !self.changed.contains(key)
        {
            self.changed.insert(key.to_owned());
        }
        if self.next_compaction_ms.is_none() {
            let watermark = self.watermark_ms.unwrap_or(time_ms);
            self.next_compaction_ms = Some(watermark.saturating_add(self.compaction_ms()));
        }
    }

    fn compaction_ms(&self) -> i64 {
        clamp_i64((self.plan.lateness_ms / 2).max(COMPACTION_INTERVAL_MS_MIN))
    }

    /// Whether [`compact`](Self::compact) has work: the watermark passed the next compaction
    /// time, or the last one stopped at its bound.
    pub fn compaction_due(&self) -> bool {
        self.compaction_resume.is_some()
            || matches!((self.watermark_ms, self.next_compaction_ms), (Some(w), Some(n)) if w >= n)
    }

    /// Settles every resident unit whose first exposure is final, drops buffered events that
    /// can no longer count, and forgets unexposed units with nothing left, when due
    /// ([`compaction_due`](Self::compaction_due)). It stops once `changed_units_max` units are
    /// changed (and resumes there next time), so a runtime's write stays bounded. None of this
    /// changes the statistics: it is how units are kept, not what they count.
    pub fn compact(&mut self, changed_units_max: usize) {
        if !self.compaction_due() {
            return;
        }
        let Some(horizon) = self.horizon_ms() else {
            return;
        };
        let pre = clamp_i64(self.plan.pre_period_ms);
        let start = match self.compaction_resume.take() {
            Some(key) => std::ops::Bound::Included(key),
            None => std::ops::Bound::Unbounded,
        };
        let mut forgotten: Vec<String> = Vec::new();
        let mut resume = None;
        for (key, unit) in self.units.range_mut((start, std::ops::Bound::Unbounded)) {
            if self.changed.len() >= changed_units_max {
                resume = Some(key.clone());
                break;
            }
            if unit.settled {
                continue;
            }
            let mut changed = settle(unit, &self.plan, horizon);
            if !unit.settled {
                // F can only move down to the horizon: events before min(F, horizon) − pre are
                // outside every possible pre-period.
                let floor = unit
                    .first_exposure_ms
                    .map_or(horizon, |f| f.min(horizon))
                    .saturating_sub(pre);
                let before = unit.pending.len();
                unit.pending.retain(|p| p.time_ms >= floor);
                changed |= unit.pending.len() != before;
                if unit.first_exposure_ms.is_none() && unit.pending.is_empty() {
                    forgotten.push(key.clone());
                }
            }
            if changed && !self.changed.contains(key) {
                self.changed.insert(key.clone());
            }
        }
        for key in forgotten {
            self.units.remove(&key);
            self.units_known = self.units_known.saturating_sub(1);
            self.changed.insert(key);
        }
        // `resume` is the first key not visited: the next pass starts there.
        self.compaction_resume = resume;
        if self.compaction_resume.is_none() {
            let watermark = self.watermark_ms.unwrap_or(horizon);
            self.next_compaction_ms = Some(watermark.saturating_add(self.compaction_ms()));
        }
    }

    /// The counters of events not counted, and the number of units.
    pub fn report(&self) -> AggregationReport {
        let mut report = self.report.clone();
        report.units_tracked = self.units_known;
        report.units_resident = self.units.len() as u64;
        report.watermark_ms = self.watermark_ms;
        report
    }

    /// Earliest and latest exposure times applied (for the traffic rate).
    pub fn exposure_span_ms(&self) -> Option<(i64, i64)> {
        Some((self.exposure_time_min_ms?, self.exposure_time_max_ms?))
    }

    /// The sums of one resident unit (settled or not), per slot; for tests and debugging.
    pub fn unit_sums(&self, key: &str) -> Option<Vec<SlotSums>> {
        let unit = self.units.get(key)?;
        Some(current_sums(unit, &self.plan))
    }

    /// The arm of a resident unit's first exposure, and whether it saw several arms.
    pub fn unit_arm(&self, key: &str) -> Option<(String, bool)> {
        let unit = self.units.get(key)?;
        unit.first_exposure_ms?;
        Some((
            self.plan.variants.get(unit.arm as usize)?.clone(),
            unit.arms_seen.count_ones() > 1,
        ))
    }

    /// Per arm and metric sufficient statistics of every unit: running sums, kept by adding a
    /// unit's new contribution and removing its old one whenever an event changes it.
    pub fn arm_stats(&self) -> ArmStats {
        self.totals.clone()
    }
}

impl UnitState {
    /// Whether the unit's first exposure is final and its events folded: it can no longer
    /// leave its arm's statistics except by a second arm's exposure.
    pub fn is_settled(&self) -> bool {
        self.settled
    }
}

/// What one unit adds to the per-arm statistics.
fn contribution(unit: &UnitState, plan: &Plan) -> Contribution {
    if unit.first_exposure_ms.is_none() {
        return Contribution::Nothing;
    }
    let arm = unit.arm as usize;
    if arm >= plan.variants.len() {
        return Contribution::Nothing;
    }
    if unit.arms_seen.count_ones() > 1 {
        return Contribution::MultipleArms(arm);
    }
    let cuped = plan.pre_period_ms > 0;
    let sums = current_sums(unit, plan);
    let mut values = Vec::with_capacity(plan.metric_slots.len());
    for (m, &(numerator, denominator)) in plan.metric_slots.iter().enumerate() {
        let num = sums.get(numerator).copied().unwrap_or_default();
        let (y, d, x) = match plan.metric_kinds[m] {
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
        if one.push_unit(y, d, if cuped { x } else { None }).is_err() {
            return Contribution::NonFinite;
        }
        values.push(one);
    }
    Contribution::Counted(arm, values)
}

fn clamp_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Adds one event to a unit's sums, classified against its first exposure `f`.
fn fold(sums: &mut Vec<SlotSums>, plan: &Plan, f: i64, t: i64, slot: usize, value: f64) {
    if sums.len() < plan.slots.len() {
        sums.resize(plan.slots.len(), SlotSums::default());
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
        fold(sums, plan, f, p.time_ms, p.slot as usize, p.value);
    }
}

/// Folds the buffer when F is final (F ≤ horizon: no exposure earlier than F can still come);
/// returns whether the unit settled now.
fn settle(unit: &mut UnitState, plan: &Plan, horizon: i64) -> bool {
    if unit.settled {
        return false;
    }
    let Some(f) = unit.first_exposure_ms else {
        return false;
    };
    if f > horizon {
        return false;
    }
    let mut sums = vec![SlotSums::default(); plan.slots.len()];
    fold_pending(unit, plan, f, &mut sums);
    unit.sums = sums;
    unit.pending = Vec::new();
    unit.settled = true;
    true
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
