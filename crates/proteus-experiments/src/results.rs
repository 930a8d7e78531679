//! Results: per arm and metric estimates, lifts, intervals and p-values, the sample-ratio check,
//! guardrail breaches and a decision hint; what an API returns and a person reads.
//!
//! Every number is finite: an estimate that cannot be computed yet is an explicit
//! `not_enough_data` entry with the reason, never NaN or infinity.

use std::collections::BTreeMap;

use proteus_stats::{
    Alternative, Arm, ArmEstimate, BayesSettings, Conversions, Cuped, Interval, LiftEstimate, Mde,
    NotEnoughData, PowerSettings, SequentialSettings, StatsError, SufficientStats, TestSettings,
    adjust_p_values, bayesian_test, estimated_days, ratio_estimate, running_intersection,
    sample_size, sequential_test, srm_check, welch_test_estimates, z_test,
};
use serde::{Deserialize, Serialize};

use crate::aggregate::{AggregationReport, ArmStats, ExperimentAggregator};
use crate::definition::{
    ExperimentDefinition, GuardrailDirection, MinimumDetectableEffect, Sidedness,
};
use crate::metric::{Goal, MetricDefinition, MetricKind};

const DAY_MS: f64 = 86_400_000.0;
/// Shortest span of exposures the traffic rate is measured over, in ms: one hour, so the first
/// minutes of an experiment do not extrapolate a burst.
const TRAFFIC_SPAN_MS_MIN: f64 = 3_600_000.0;

/// The sample-ratio check, shown first because a mismatch makes every other number suspect.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SrmStatus {
    /// `ok`, `mismatch` or `not_enough_data`.
    pub status: &'static str,
    pub p_value: Option<f64>,
    pub threshold: f64,
    /// Units per arm (exposed to exactly one arm), definition order.
    pub observed: Vec<u64>,
    pub expected: Vec<f64>,
    pub message: String,
}

/// Units per arm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmUnits {
    pub variant: String,
    pub control: bool,
    pub weight: f64,
    /// Units exposed only to this arm (analysed).
    pub units: u64,
    /// Units first exposed to this arm and later to another (excluded).
    pub units_multiple_arms: u64,
}

/// The role of a metric in the experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricRole {
    Primary,
    Secondary,
    Guardrail,
    /// Defined but neither primary, secondary nor a guardrail: shown, not corrected for.
    Other,
}

/// A treatment arm compared with the control on one metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComparisonResult {
    /// `welch` (t-test), `z` (proportions, ratios) or `sequential` (confidence sequence).
    pub method: &'static str,
    /// Two-sided, or one-sided in the metric's goal direction (`greater` or `less`).
    pub alternative: Alternative,
    /// With the sequential method, the intervals are the running intersection over every
    /// look the runtime took, and the p-value the running minimum: still always valid, and
    /// never looser than an earlier look.
    pub lift_absolute: LiftEstimate,
    pub lift_relative: Option<LiftEstimate>,
    pub p_value: f64,
    /// Corrected across treatment arms × primary and secondary metrics; absent for others.
    pub p_value_adjusted: Option<f64>,
    /// `p_value_adjusted` (or `p_value` when absent) below alpha.
    pub significant: bool,
    /// Whether the lift goes the metric's `goal` way (None when not significant).
    pub better: Option<bool>,
    /// Bayesian (the definition's prior on the relative lift): P(treatment better than control
    /// on the raw scale, i.e. the lift is positive); absent when the control mean is 0.
    pub chance_to_beat_control: Option<f64>,
    /// Expected loss (relative) of shipping the treatment, and of keeping the control.
    pub risk_treatment: Option<f64>,
    pub risk_control: Option<f64>,
    /// The posterior's 1 − alpha credible interval of the relative lift.
    pub credible_interval_relative: Option<Interval>,
    /// Share of variance CUPED removed, when CUPED is on.
    pub variance_reduction: Option<f64>,
}

/// A comparison, or why there is none yet.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ComparisonOutcome {
    Ready {
        #[serde(flatten)]
        result: Box<ComparisonResult>,
    },
    NotEnoughData {
        detail: NotEnoughData,
        message: String,
    },
    /// The data are there but a number would not fit (e.g. overflow); a real problem.
    Failed { message: String },
}

impl ComparisonOutcome {
    pub fn ready(&self) -> Option<&ComparisonResult> {
        match self {
            ComparisonOutcome::Ready { result } => Some(result),
            _ => None,
        }
    }

    fn from_error(error: StatsError) -> ComparisonOutcome {
        match error {
            StatsError::NotEnoughData(detail) => ComparisonOutcome::NotEnoughData {
                message: detail.to_string(),
                detail,
            },
            other => ComparisonOutcome::Failed {
                message: other.to_string(),
            },
        }
    }
}

/// One arm on one metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmMetricResult {
    pub variant: String,
    pub n: u64,
    /// The arm's estimate (mean, rate, ratio, or CUPED-adjusted mean); absent without data.
    pub mean: Option<f64>,
    pub standard_error: Option<f64>,
    /// Against the control; absent for the control itself.
    pub comparison: Option<ComparisonOutcome>,
}

/// All arms on one metric.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricResult {
    pub metric: String,
    pub kind: MetricKind,
    pub roles: Vec<MetricRole>,
    pub arms: Vec<ArmMetricResult>,
}

/// A guardrail significantly worse in a treatment arm, under the sequential test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardrailBreach {
    pub metric: String,
    pub variant: String,
    pub direction: GuardrailDirection,
    pub threshold_relative: f64,
    /// The lift the decision used (relative when the control mean is not 0, else absolute).
    pub scale: &'static str,
    pub lift: f64,
    pub interval: Interval,
    pub p_value: f64,
    pub message: String,
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The assignment looks broken: fix it before trusting anything.
    InvestigateSrm,
    /// A guardrail was harmed: stop and return the flag to the control.
    StopGuardrail,
    Ship,
    KeepControl,
    KeepRunning,
    /// The planned sample size was reached without a significant difference.
    Inconclusive,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionHint {
    pub action: Action,
    pub variant: Option<String>,
    pub message: String,
    /// Units still needed (all arms) to detect the MDE with the planned power.
    pub remaining_units: Option<u64>,
    /// Days until then at the observed traffic.
    pub days: Option<f64>,
}

/// The analysis settings used, echoed so a reader knows what the numbers mean.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodSummary {
    pub alpha: f64,
    pub sequential: bool,
    pub sequential_target_units: u64,
    pub cuped: bool,
    pub correction: proteus_stats::Correction,
    pub alternative: Sidedness,
    pub prior: proteus_stats::Prior,
}

/// Everything about an experiment's results at `computed_ms`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExperimentResults {
    pub experiment_id: String,
    pub computed_ms: i64,
    pub srm: SrmStatus,
    pub decision: DecisionHint,
    pub guardrail_breaches: Vec<GuardrailBreach>,
    pub units_total: u64,
    pub units_multiple_arms: u64,
    pub arms: Vec<ArmUnits>,
    pub metrics: Vec<MetricResult>,
    pub method: MethodSummary,
    pub aggregation: AggregationReport,
}

/// Arm estimates of one metric (CUPED-adjusted when on and applicable), with the variance
/// reduction bought.
struct MetricEstimates {
    arms: Vec<Result<ArmEstimate, StatsError>>,
    cuped: Option<Vec<Option<ArmEstimate>>>,
}

fn estimates(kind: MetricKind, stats: &[SufficientStats], cuped_on: bool) -> MetricEstimates {
    let plain = |s: &SufficientStats, arm: Arm| -> Result<ArmEstimate, StatsError> {
        match kind {
            MetricKind::Mean | MetricKind::Ratio => ratio_estimate(s, arm),
            MetricKind::Conversion => Conversions {
                conversions: s.sum.round().max(0.0) as u64,
                n: s.n,
            }
            .estimate(),
            MetricKind::Count | MetricKind::Sum => Ok(s.summary()?.estimate()),
        }
    };
    let arms: Vec<_> = stats.iter().map(|s| plain(s, Arm::Treatment)).collect();
    if !cuped_on || kind.is_ratio() {
        return MetricEstimates { arms, cuped: None };
    }
    let raw: Vec<Option<ArmEstimate>> = stats
        .iter()
        .map(|s| s.summary().ok().map(|x| x.estimate()))
        .collect();
    match Cuped::fit(stats) {
        Ok(cuped) => MetricEstimates {
            arms: stats.iter().map(|s| cuped.adjust(s)).collect(),
            cuped: Some(raw),
        },
        Err(_) => MetricEstimates { arms, cuped: None },
    }
}

/// Compares treatment with control by the configured method.
fn compare(
    definition: &ExperimentDefinition,
    metric: &MetricDefinition,
    control: &ArmEstimate,
    treatment: &ArmEstimate,
    cuped: bool,
    sequential: bool,
) -> Result<(ComparisonResult, f64), StatsError> {
    let alpha = definition.alpha;
    let alternative = match (definition.analysis.alternative, metric.goal) {
        (Sidedness::TwoSided, _) => Alternative::TwoSided,
        (Sidedness::OneSided, Goal::Increase) => Alternative::Greater,
        (Sidedness::OneSided, Goal::Decrease) => Alternative::Less,
    };
    let (method, absolute, relative, p_value) = if sequential {
        let s = sequential_test(
            control,
            treatment,
            &SequentialSettings {
                alpha,
                target_units: definition.sequential_target_units(),
            },
        )?;
        ("sequential", s.absolute, s.relative, s.p_value)
    } else {
        let settings = TestSettings { alpha, alternative };
        let kind = metric.kind;
        let normal = kind.is_ratio() || (kind == MetricKind::Conversion && !cuped);
        let c = if normal {
            z_test(control, treatment, &settings)?
        } else {
            welch_test_estimates(control, treatment, &settings)?
        };
        (
            if normal { "z" } else { "welch" },
            c.absolute,
            c.relative,
            c.p_value,
        )
    };
    let bayes = bayesian_test(
        control,
        treatment,
        &BayesSettings {
            alpha,
            prior: definition.analysis.prior,
            ..BayesSettings::default()
        },
    )
    .ok();
    Ok((
        ComparisonResult {
            method,
            alternative,
            lift_absolute: absolute,
            lift_relative: relative,
            p_value,
            p_value_adjusted: None,
            significant: p_value < alpha,
            better: None,
            chance_to_beat_control: bayes.map(|b| b.chance_to_beat_control),
            risk_treatment: bayes.map(|b| b.risk_treatment),
            risk_control: bayes.map(|b| b.risk_control),
            credible_interval_relative: bayes.map(|b| b.credible_interval),
            variance_reduction: None,
        },
        p_value,
    ))
}

/// What earlier looks of a sequential analysis leave for the next: per metric and treatment
/// arm, the running minimum of the p-value and the running intersection of the intervals. A
/// runtime keeps it between looks ([`SequentialLooks::observe`] after each) and passes it to
/// [`results_with_looks`]. Confidence sequences hold at every time at once, so intersecting
/// them over looks (and taking the smallest always-valid p-value) keeps the guarantee.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SequentialLooks {
    /// metric id → variant → the combined values so far.
    looks: BTreeMap<String, BTreeMap<String, Look>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Look {
    p_value_min: f64,
    absolute: Interval,
    relative: Option<Interval>,
}

impl SequentialLooks {
    /// Records the sequential comparisons of `results` (computed with these looks).
    pub fn observe(&mut self, results: &ExperimentResults) {
        for metric in &results.metrics {
            for arm in &metric.arms {
                let Some(ComparisonOutcome::Ready { result }) = &arm.comparison else {
                    continue;
                };
                if result.method != "sequential" {
                    continue;
                }
                self.looks.entry(metric.metric.clone()).or_default().insert(
                    arm.variant.clone(),
                    Look {
                        p_value_min: result.p_value,
                        absolute: result.lift_absolute.interval,
                        relative: result.lift_relative.map(|r| r.interval),
                    },
                );
            }
        }
    }

    /// Combines a new sequential comparison with the earlier looks; returns the new p-value.
    fn combine(
        &self,
        metric: &str,
        variant: &str,
        alpha: f64,
        result: &mut ComparisonResult,
    ) -> f64 {
        let Some(look) = self.looks.get(metric).and_then(|m| m.get(variant)) else {
            return result.p_value;
        };
        result.p_value = result.p_value.min(look.p_value_min);
        result.lift_absolute.interval =
            running_intersection(&look.absolute, &result.lift_absolute.interval);
        if let (Some(previous), Some(relative)) = (look.relative, result.lift_relative.as_mut()) {
            relative.interval = running_intersection(&previous, &relative.interval);
        }
        result.significant = result.p_value < alpha;
        result.p_value
    }
}

fn roles(definition: &ExperimentDefinition, id: &str) -> Vec<MetricRole> {
    let mut roles = Vec::new();
    if definition.primary_metric == id {
        roles.push(MetricRole::Primary);
    }
    if definition.secondary_metrics.iter().any(|m| m == id) {
        roles.push(MetricRole::Secondary);
    }
    if definition.guardrails.iter().any(|g| g.metric == id) {
        roles.push(MetricRole::Guardrail);
    }
    if roles.is_empty() {
        roles.push(MetricRole::Other);
    }
    roles
}

fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}

/// The results of `definition` from `aggregator`'s state at `now_ms`, as one look.
pub fn results(
    definition: &ExperimentDefinition,
    aggregator: &ExperimentAggregator,
    now_ms: i64,
) -> ExperimentResults {
    results_with_looks(definition, aggregator, now_ms, &SequentialLooks::default())
}

/// The results at `now_ms`, with sequential comparisons combined with earlier `looks`.
pub fn results_with_looks(
    definition: &ExperimentDefinition,
    aggregator: &ExperimentAggregator,
    now_ms: i64,
    looks: &SequentialLooks,
) -> ExperimentResults {
    let stats = aggregator.arm_stats();
    let control = definition.control_index();
    let cuped_on = definition.analysis.cuped.is_some();
    let sequential = definition.analysis.sequential;
    let srm = srm_status(definition, &stats);

    let mut metrics = Vec::with_capacity(definition.metrics.len());
    // (metric, arm, raw p) of the corrected family: primary and secondary metrics.
    let mut family: Vec<(usize, usize, f64)> = Vec::new();
    for (m, metric) in definition.metrics.iter().enumerate() {
        let arm_stats = stats.metrics.get(m).map(Vec::as_slice).unwrap_or(&[]);
        let est = estimates(metric.kind, arm_stats, cuped_on);
        let roles = roles(definition, &metric.id);
        let in_family = roles
            .iter()
            .any(|r| matches!(r, MetricRole::Primary | MetricRole::Secondary));
        let mut arms = Vec::with_capacity(definition.arms.len());
        for (a, arm) in definition.arms.iter().enumerate() {
            let n = arm_stats.get(a).map_or(0, |s| s.n);
            let estimate = est.arms.get(a).and_then(|e| e.as_ref().ok()).copied();
            let usable = estimate.filter(|e| e.n > 0);
            let comparison = if a == control {
                None
            } else {
                let outcome = match (est.arms.get(control), est.arms.get(a)) {
                    (Some(Ok(c)), Some(Ok(t))) => {
                        match compare(definition, metric, c, t, est.cuped.is_some(), sequential) {
                            Ok((mut result, mut p)) => {
                                if sequential {
                                    p = looks.combine(
                                        &metric.id,
                                        &arm.variant,
                                        definition.alpha,
                                        &mut result,
                                    );
                                }
                                if let Some(raw) = &est.cuped {
                                    result.variance_reduction =
                                        variance_reduction(raw, control, a, c, t);
                                }
                                if in_family {
                                    family.push((m, a, p));
                                }
                                ComparisonOutcome::Ready {
                                    result: Box::new(result),
                                }
                            }
                            Err(e) => ComparisonOutcome::from_error(e),
                        }
                    }
                    (Some(Err(e)), _) => ComparisonOutcome::from_error(relabel(e, Arm::Control)),
                    (_, Some(Err(e))) => ComparisonOutcome::from_error(e.clone()),
                    _ => ComparisonOutcome::from_error(NotEnoughData::NoUnitsTotal.into()),
                };
                Some(outcome)
            };
            arms.push(ArmMetricResult {
                variant: arm.variant.clone(),
                n,
                mean: usable.and_then(|e| finite(e.mean)),
                standard_error: usable.and_then(|e| finite(e.standard_error)),
                comparison,
            });
        }
        metrics.push(MetricResult {
            metric: metric.id.clone(),
            kind: metric.kind,
            roles,
            arms,
        });
    }

    // Multiple-testing correction across the family.
    let p_values: Vec<f64> = family.iter().map(|&(_, _, p)| p).collect();
    let adjusted = adjust_p_values(&p_values, definition.analysis.correction)
        .unwrap_or_else(|_| p_values.clone());
    for (&(m, a, _), &p_adj) in family.iter().zip(&adjusted) {
        if let Some(Some(ComparisonOutcome::Ready { result })) = metrics
            .get_mut(m)
            .and_then(|r| r.arms.get_mut(a))
            .map(|x| &mut x.comparison)
        {
            result.p_value_adjusted = Some(p_adj);
            result.significant = p_adj < definition.alpha;
        }
    }
    for (m, metric) in definition.metrics.iter().enumerate() {
        for arm in &mut metrics[m].arms {
            if let Some(ComparisonOutcome::Ready { result }) = &mut arm.comparison
                && result.significant
            {
                let up = result.lift_absolute.estimate > 0.0;
                result.better = Some(up == (metric.goal == Goal::Increase));
            }
        }
    }

    let breaches = breaches_from(definition, &stats);
    let decision = decision_hint(
        definition, aggregator, &stats, &srm, &breaches, &metrics, now_ms,
    );
    let units_total = stats.units.iter().sum();
    ExperimentResults {
        experiment_id: definition.id.clone(),
        computed_ms: now_ms,
        decision,
        guardrail_breaches: breaches,
        units_total,
        units_multiple_arms: stats.units_multiple_arms.iter().sum(),
        arms: definition
            .arms
            .iter()
            .enumerate()
            .map(|(a, arm)| ArmUnits {
                variant: arm.variant.clone(),
                control: a == control,
                weight: arm.weight,
                units: stats.units.get(a).copied().unwrap_or(0),
                units_multiple_arms: stats.units_multiple_arms.get(a).copied().unwrap_or(0),
            })
            .collect(),
        srm,
        metrics,
        method: MethodSummary {
            alpha: definition.alpha,
            sequential,
            sequential_target_units: definition.sequential_target_units(),
            cuped: cuped_on,
            correction: definition.analysis.correction,
            alternative: definition.analysis.alternative,
            prior: definition.analysis.prior,
        },
        aggregation: aggregator.report(),
    }
}

/// The stats crate labels the first failing arm; ours may be the control.
fn relabel(error: &StatsError, arm: Arm) -> StatsError {
    match error {
        StatsError::NotEnoughData(NotEnoughData::NoUnits { .. }) => {
            NotEnoughData::NoUnits { arm }.into()
        }
        StatsError::NotEnoughData(NotEnoughData::TooFewUnits {
            units, units_min, ..
        }) => NotEnoughData::TooFewUnits {
            arm,
            units: *units,
            units_min: *units_min,
        }
        .into(),
        StatsError::NotEnoughData(NotEnoughData::ZeroDenominator { .. }) => {
            NotEnoughData::ZeroDenominator { arm }.into()
        }
        other => other.clone(),
    }
}

fn variance_reduction(
    raw: &[Option<ArmEstimate>],
    control: usize,
    treatment: usize,
    c: &ArmEstimate,
    t: &ArmEstimate,
) -> Option<f64> {
    let (rc, rt) = (raw.get(control)?.as_ref()?, raw.get(treatment)?.as_ref()?);
    let raw_variance = rc.standard_error.powi(2) + rt.standard_error.powi(2);
    let adjusted = c.standard_error.powi(2) + t.standard_error.powi(2);
    (raw_variance > 0.0)
        .then(|| 1.0 - adjusted / raw_variance)
        .and_then(finite)
}

fn srm_status(definition: &ExperimentDefinition, stats: &ArmStats) -> SrmStatus {
    let weights: Vec<f64> = definition.arms.iter().map(|a| a.weight).collect();
    let threshold = definition.analysis.srm_threshold;
    match srm_check(&stats.units, &weights, threshold) {
        Ok(r) => SrmStatus {
            status: if r.mismatch { "mismatch" } else { "ok" },
            p_value: finite(r.p_value),
            threshold,
            observed: stats.units.clone(),
            expected: r
                .expected
                .iter()
                .copied()
                .map(|e| finite(e).unwrap_or(0.0))
                .collect(),
            message: if r.mismatch {
                format!(
                    "sample-ratio mismatch: the arms received {:?} units where the weights expect {:?} (p = {:.2e} < {threshold}); assignment or exposure logging is broken, so no other result can be trusted",
                    stats.units,
                    r.expected
                        .iter()
                        .map(|e| e.round() as u64)
                        .collect::<Vec<_>>(),
                    r.p_value
                )
            } else {
                "the traffic split matches the weights".to_owned()
            },
        },
        Err(e) => SrmStatus {
            status: "not_enough_data",
            p_value: None,
            threshold,
            observed: stats.units.clone(),
            expected: Vec::new(),
            message: match e {
                StatsError::NotEnoughData(d) => d.to_string(),
                other => other.to_string(),
            },
        },
    }
}

/// Guardrails significantly worse (beyond their tolerated harm) in a treatment arm, by the
/// always-valid test whatever the analysis options, since a rollout watches them continuously.
/// The level is alpha divided by the number of guardrail × treatment tests (Bonferroni), so the
/// chance of a false halt over the whole rollout stays below alpha.
pub fn guardrail_breaches(
    definition: &ExperimentDefinition,
    aggregator: &ExperimentAggregator,
) -> Vec<GuardrailBreach> {
    breaches_from(definition, &aggregator.arm_stats())
}

fn breaches_from(definition: &ExperimentDefinition, stats: &ArmStats) -> Vec<GuardrailBreach> {
    let control = definition.control_index();
    let treatments = definition.arms.len().saturating_sub(1).max(1);
    let tests = (definition.guardrails.len() * treatments).max(1);
    let alpha = definition.alpha / tests as f64;
    let cuped_on = definition.analysis.cuped.is_some();
    let mut breaches = Vec::new();
    for guardrail in &definition.guardrails {
        let Some(m) = definition.metric_index(&guardrail.metric) else {
            continue;
        };
        let Some(arm_stats) = stats.metrics.get(m) else {
            continue;
        };
        let est = estimates(definition.metrics[m].kind, arm_stats, cuped_on);
        let Some(Ok(c)) = est.arms.get(control) else {
            continue;
        };
        for (a, arm) in definition.arms.iter().enumerate() {
            if a == control {
                continue;
            }
            let Some(Ok(t)) = est.arms.get(a) else {
                continue;
            };
            let Ok(s) = sequential_test(
                c,
                t,
                &SequentialSettings {
                    alpha,
                    target_units: definition.sequential_target_units(),
                },
            ) else {
                continue;
            };
            let threshold = guardrail.threshold_relative;
            let (scale, lift, interval) = match s.relative {
                Some(r) => ("relative", r.estimate, r.interval),
                None => ("absolute", s.absolute.estimate, s.absolute.interval),
            };
            // An absolute lift cannot be compared with a relative tolerance; then only a
            // harm with no tolerance (threshold 0) is judged.
            if scale == "absolute" && threshold > 0.0 {
                continue;
            }
            let breached = match guardrail.direction {
                GuardrailDirection::MustNotDecrease => {
                    interval.upper.is_some_and(|u| u < -threshold)
                }
                GuardrailDirection::MustNotIncrease => {
                    interval.lower.is_some_and(|l| l > threshold)
                }
            };
            if breached {
                breaches.push(GuardrailBreach {
                    metric: guardrail.metric.clone(),
                    variant: arm.variant.clone(),
                    direction: guardrail.direction,
                    threshold_relative: threshold,
                    scale,
                    lift,
                    interval,
                    p_value: s.p_value,
                    message: format!(
                        "guardrail `{}` harmed by `{}`: {} lift {:+.4} (always-valid interval {:?}..{:?}) is beyond the tolerated {}; stop and return the flag to `{}`",
                        guardrail.metric,
                        arm.variant,
                        scale,
                        lift,
                        interval.lower,
                        interval.upper,
                        threshold,
                        definition.control
                    ),
                });
            }
        }
    }
    breaches
}

fn decision_hint(
    definition: &ExperimentDefinition,
    aggregator: &ExperimentAggregator,
    stats: &ArmStats,
    srm: &SrmStatus,
    breaches: &[GuardrailBreach],
    metrics: &[MetricResult],
    now_ms: i64,
) -> DecisionHint {
    let hint = |action, variant: Option<String>, message: String| DecisionHint {
        action,
        variant,
        message,
        remaining_units: None,
        days: None,
    };
    if srm.status == "mismatch" {
        return hint(Action::InvestigateSrm, None, srm.message.clone());
    }
    if let Some(b) = breaches.first() {
        return hint(
            Action::StopGuardrail,
            Some(b.variant.clone()),
            b.message.clone(),
        );
    }
    let Some(m) = definition.metric_index(&definition.primary_metric) else {
        return hint(
            Action::KeepRunning,
            None,
            "the primary metric is not defined".into(),
        );
    };
    let primary = &metrics[m];
    let ready: Vec<(&str, &ComparisonResult)> = primary
        .arms
        .iter()
        .filter_map(|a| Some((a.variant.as_str(), a.comparison.as_ref()?.ready()?)))
        .collect();
    let goal_sign = if definition.metrics[m].goal == Goal::Increase {
        1.0
    } else {
        -1.0
    };
    let best = ready
        .iter()
        .filter(|(_, r)| r.better == Some(true))
        .max_by(|x, y| {
            (goal_sign * x.1.lift_absolute.estimate)
                .total_cmp(&(goal_sign * y.1.lift_absolute.estimate))
        });
    if let Some((variant, r)) = best {
        let lift = r
            .lift_relative
            .map(|l| format!("{:+.2}%", l.estimate * 100.0))
            .unwrap_or_else(|| format!("{:+.4}", r.lift_absolute.estimate));
        return hint(
            Action::Ship,
            Some((*variant).to_owned()),
            format!(
                "ship `{variant}`: primary metric `{}` {lift} (adjusted p = {:.3e})",
                primary.metric,
                r.p_value_adjusted.unwrap_or(r.p_value)
            ),
        );
    }
    let treatments = definition.arms.len().saturating_sub(1);
    if treatments > 0
        && ready.len() == treatments
        && ready.iter().all(|(_, r)| r.better == Some(false))
    {
        return hint(
            Action::KeepControl,
            Some(definition.control.clone()),
            format!(
                "keep `{}`: every treatment is significantly worse on `{}`",
                definition.control, primary.metric
            ),
        );
    }
    let waiting = primary.arms.iter().find_map(|a| match &a.comparison {
        Some(ComparisonOutcome::NotEnoughData { message, .. }) => Some(message.clone()),
        _ => None,
    });
    let units_total: u64 = stats.units.iter().sum();
    let plan = planned_units(definition, stats, m);
    let units_per_day = aggregator.exposure_span_ms().and_then(|(first, last)| {
        let span = (now_ms.max(last) as f64 - first as f64).max(TRAFFIC_SPAN_MS_MIN);
        finite(units_total as f64 / span * DAY_MS)
    });
    let (remaining_units, days) = match plan {
        Some(required) => match estimated_days(required, units_total, units_per_day.unwrap_or(0.0))
        {
            Ok(d) => (Some(d.remaining_units), d.days.and_then(finite)),
            Err(_) => (None, None),
        },
        None => (None, None),
    };
    if let Some(reason) = waiting {
        return DecisionHint {
            action: Action::KeepRunning,
            variant: None,
            message: format!("keep running: not enough data yet ({reason})"),
            remaining_units,
            days,
        };
    }
    match (remaining_units, days) {
        (Some(0), _) => DecisionHint {
            action: Action::Inconclusive,
            variant: None,
            message: format!(
                "the planned sample size for the minimum detectable effect is reached without a significant difference on `{}`: the effect is probably smaller than the MDE; stop and keep `{}` unless a secondary metric decides",
                primary.metric, definition.control
            ),
            remaining_units,
            days,
        },
        (Some(n), Some(d)) => DecisionHint {
            action: Action::KeepRunning,
            variant: None,
            message: format!(
                "keep running: about {n} more units (≈{d:.1} days at the current traffic) to detect the minimum detectable effect on `{}`",
                primary.metric
            ),
            remaining_units,
            days,
        },
        (Some(n), None) => DecisionHint {
            action: Action::KeepRunning,
            variant: None,
            message: format!(
                "keep running: about {n} more units to detect the minimum detectable effect on `{}` (no traffic rate yet)",
                primary.metric
            ),
            remaining_units,
            days,
        },
        _ => hint(
            Action::KeepRunning,
            None,
            format!(
                "keep running: no significant difference on `{}` yet",
                primary.metric
            ),
        ),
    }
}

/// Units (all arms) a fixed-horizon test needs to detect the MDE on metric `m` with the planned
/// power, from the control arm's observed variance.
fn planned_units(definition: &ExperimentDefinition, stats: &ArmStats, m: usize) -> Option<u64> {
    let control = definition.control_index();
    let kind = definition.metrics.get(m)?.kind;
    let est = estimates(
        kind,
        stats.metrics.get(m)?,
        definition.analysis.cuped.is_some(),
    );
    let c = est.arms.get(control)?.as_ref().ok()?;
    if c.n < 2 {
        return None;
    }
    let variance = c.standard_error.powi(2) * c.n as f64;
    let mde = match definition.minimum_detectable_effect {
        MinimumDetectableEffect::Relative(lift) => Mde::Relative {
            lift,
            baseline_mean: c.mean,
        },
        MinimumDetectableEffect::Absolute(effect) => Mde::Absolute { effect },
    };
    let weights: Vec<f64> = definition.arms.iter().map(|a| a.weight).collect();
    let control_weight = *weights.get(control)?;
    let smallest_treatment = weights
        .iter()
        .enumerate()
        .filter(|(a, _)| *a != control)
        .map(|(_, w)| *w)
        .fold(f64::INFINITY, f64::min);
    let size = sample_size(
        &mde,
        variance,
        &PowerSettings {
            alpha: definition.alpha,
            power: definition.power,
            treatment_to_control_ratio: smallest_treatment / control_weight,
        },
    )
    .ok()?;
    let total_weight: f64 = weights.iter().sum();
    let total = size.control_units as f64 * total_weight / control_weight;
    (total.is_finite() && total < 1e18).then(|| total.ceil() as u64)
}
