//! Experiment definitions: what is tested (a flag's variants as arms, with traffic weights),
//! what is measured (metrics over event topics) and how it is analysed.
//!
//! A definition is JSON a person writes and a runtime persists, so every problem is reported
//! with a JSON pointer to the offending value and what would be accepted, and every list and
//! string has a limit (constants below, units last).

use std::collections::HashSet;
use std::fmt;

use proteus_flags::FlagRef;
use proteus_stats::{Correction, Prior};
use serde::{Deserialize, Serialize};

use crate::metric::{MetricDefinition, UnitKey};

/// Largest definition accepted as text, in bytes; a definition is configuration, not data.
pub const DEFINITION_BYTES_MAX: usize = 256 * 1024;
/// Longest experiment or metric id, in bytes. Ids appear in URLs, so `[A-Za-z0-9._-]` only.
pub const ID_BYTES_MAX: usize = 128;
/// Longest flag key, in bytes (what flag-set changes accept).
pub const FLAG_KEY_BYTES_MAX: usize = 256;
/// Longest display name, in bytes.
pub const NAME_BYTES_MAX: usize = 256;
/// Longest free text (hypothesis, eligibility, arm description), in bytes.
pub const TEXT_BYTES_MAX: usize = 4_096;
/// Most arms. Arms are tracked per unit in a bit set, and each extra arm costs power.
pub const ARMS_MAX: usize = 16;
/// Most metrics (primary, secondary and guardrails together).
pub const METRICS_MAX: usize = 32;
/// Longest topic name, CloudEvent type or JSON pointer, in bytes.
pub const SELECTOR_BYTES_MAX: usize = 256;
/// Longest metric window: a year, in milliseconds.
pub const WINDOW_MS_MAX: u64 = 366 * 24 * 3_600_000;
/// Longest CUPED pre-period: 90 days, in milliseconds. Longer pre-periods cost memory (every
/// unit's events are kept that long before exposure) and add little correlation.
pub const PRE_PERIOD_MS_MAX: u64 = 90 * 24 * 3_600_000;
/// Longest accepted lateness between the exposure and metric topics: 7 days, in milliseconds.
pub const LATENESS_MS_MAX: u64 = 7 * 24 * 3_600_000;
/// Default lateness: one hour, in milliseconds.
pub const LATENESS_MS_DEFAULT: u64 = 3_600_000;
/// Default and largest `units_max`: units one aggregator knows. Settled units live in the
/// runtime's key-value store, not in memory; those whose first exposure may still move (the
/// last `lateness_ms` of traffic) stay resident.
pub const UNITS_MAX_DEFAULT: u64 = 10_000_000;
pub const UNITS_MAX_CEILING: u64 = 50_000_000;
/// Default and largest `unit_events_max`: raw events buffered per unit while its first exposure
/// may still move (see `aggregate`).
pub const UNIT_EVENTS_MAX_DEFAULT: u32 = 1_000;
/// The ceiling keeps one stored unit (about 60 bytes per buffered event) under the key-value
/// store's 1 MiB value limit.
pub const UNIT_EVENTS_MAX_CEILING: u32 = 10_000;
/// Planned units at which the confidence sequence is tightest when the definition gives none.
pub const SEQUENTIAL_TARGET_UNITS_DEFAULT: u64 = 10_000;
/// Most errors reported for one definition; the first ones are what a person fixes first.
pub const DEFINITION_ERRORS_MAX: usize = 100;

/// One problem in a definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DefinitionError {
    /// JSON pointer (RFC 6901) to the offending value; empty for the whole definition.
    pub path: String,
    pub message: String,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)
    }
}

/// Every problem found in a definition (at most [`DEFINITION_ERRORS_MAX`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DefinitionErrors(pub Vec<DefinitionError>);

impl DefinitionErrors {
    /// Whether some error is at `path`.
    pub fn has_path(&self, path: &str) -> bool {
        self.0.iter().any(|e| e.path == path)
    }
}

impl fmt::Display for DefinitionErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DefinitionErrors {}

/// An arm: one variant of the flag and its share of traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmDefinition {
    /// The flag variant served to this arm.
    pub variant: String,
    /// Relative traffic weight (need not sum to 1 or 100); what the sample-ratio check expects.
    pub weight: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Which way a guardrail metric must not move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardrailDirection {
    /// E.g. conversion, revenue: harm is a decrease.
    MustNotDecrease,
    /// E.g. latency, errors: harm is an increase.
    MustNotIncrease,
}

/// A metric that must not get worse; what a rollout halt checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guardrail {
    /// Id of a metric in `metrics`.
    pub metric: String,
    pub direction: GuardrailDirection,
    /// Tolerated relative harm (0.02 = 2% worse is acceptable). A breach is declared when the
    /// always-valid interval of the relative lift lies entirely beyond it on the harmful side.
    #[serde(default)]
    pub threshold_relative: f64,
}

/// The smallest effect worth detecting, for the sample size and the "keep running" hint.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MinimumDetectableEffect {
    /// A fraction of the control mean (0.05 = 5%).
    Relative(f64),
    /// In the primary metric's units.
    Absolute(f64),
}

/// CUPED settings: how far before a unit's first exposure its events count as the covariate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CupedOptions {
    pub pre_period_ms: u64,
}

/// Which differences a frequentist test looks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sidedness {
    /// A difference either way.
    #[default]
    TwoSided,
    /// Only a difference in the metric's `goal` direction: more power for the same alpha, and
    /// no claim at all about a change the other way.
    OneSided,
}

/// How results are computed and how much the aggregator may hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisOptions {
    /// Always-valid p-values and intervals (confidence sequences), so results may be watched
    /// continuously. Off: fixed-horizon tests, valid only at one pre-planned look.
    pub sequential: bool,
    /// Units (all arms) at which the confidence sequence is tightest: the planned sample size.
    /// Must be chosen before looking; default [`SEQUENTIAL_TARGET_UNITS_DEFAULT`].
    pub sequential_target_units: Option<u64>,
    /// CUPED variance reduction with the metric's value in the pre-period; absent: off.
    pub cuped: Option<CupedOptions>,
    /// Correction across treatment arms × primary and secondary metrics.
    pub correction: Correction,
    /// Two-sided tests (the default), or one-sided in each metric's `goal` direction. One-sided
    /// tests need `sequential: false`: the confidence sequences are two-sided.
    pub alternative: Sidedness,
    /// The prior of the Bayesian analysis on the relative lift: `{"kind": "flat"}` (the
    /// default) or `{"kind": "gaussian", "mean": 0, "variance": 0.09}`.
    pub prior: Prior,
    /// p-value below which the sample-ratio check reports a mismatch.
    pub srm_threshold: f64,
    /// How far behind the newest event time another event may arrive and still count (see
    /// `aggregate` for the exact rule).
    pub lateness_ms: u64,
    /// Units the aggregator tracks; new units beyond it are refused and reported.
    pub units_max: u64,
    /// Raw events buffered per unit while its first exposure may still move.
    pub unit_events_max: u32,
}

impl Default for AnalysisOptions {
    fn default() -> Self {
        AnalysisOptions {
            sequential: true,
            sequential_target_units: None,
            cuped: None,
            correction: Correction::Holm,
            alternative: Sidedness::TwoSided,
            prior: Prior::Flat,
            srm_threshold: proteus_stats::SRM_P_VALUE_THRESHOLD_DEFAULT,
            lateness_ms: LATENESS_MS_DEFAULT,
            units_max: UNITS_MAX_DEFAULT,
            unit_events_max: UNIT_EVENTS_MAX_DEFAULT,
        }
    }
}

fn alpha_default() -> f64 {
    0.05
}

fn power_default() -> f64 {
    0.8
}

/// An experiment on one flag of one flag set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentDefinition {
    pub id: String,
    pub name: String,
    pub flag_set: String,
    pub flag: String,
    #[serde(default)]
    pub hypothesis: String,
    /// Who is eligible, in words. Eligibility itself is the flag's targeting: only units the
    /// flag serves produce exposures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eligibility: Option<String>,
    pub arms: Vec<ArmDefinition>,
    /// The variant of the arm every other arm is compared with.
    pub control: String,
    pub metrics: Vec<MetricDefinition>,
    pub primary_metric: String,
    #[serde(default)]
    pub secondary_metrics: Vec<String>,
    #[serde(default)]
    pub guardrails: Vec<Guardrail>,
    pub minimum_detectable_effect: MinimumDetectableEffect,
    #[serde(default = "alpha_default")]
    pub alpha: f64,
    #[serde(default = "power_default")]
    pub power: f64,
    #[serde(default)]
    pub analysis: AnalysisOptions,
}

/// Collects errors with their paths, up to [`DEFINITION_ERRORS_MAX`].
#[derive(Default)]
struct Errors(Vec<DefinitionError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        if self.0.len() < DEFINITION_ERRORS_MAX {
            self.0.push(DefinitionError {
                path: path.into(),
                message: message.into(),
            });
        }
    }

    fn text(&mut self, path: &str, value: &str, required: bool, bytes_max: usize) {
        if required && value.is_empty() {
            self.push(path, "must not be empty");
        } else if value.len() > bytes_max {
            self.push(
                path,
                format!("is {} bytes; at most {bytes_max} are accepted", value.len()),
            );
        }
    }

    fn id(&mut self, path: &str, value: &str) {
        self.text(path, value, true, ID_BYTES_MAX);
        if let Some(c) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            self.push(
                path,
                format!("contains {c:?}; ids use only letters, digits, '.', '_' and '-'"),
            );
        }
    }
}

/// Escapes one JSON-pointer reference token.
pub(crate) fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

impl ExperimentDefinition {
    /// Parses and validates a definition (without a flag to check the arms against; use
    /// [`ExperimentDefinition::validate`] with the flag when it is known).
    pub fn from_json(text: &str) -> Result<ExperimentDefinition, DefinitionErrors> {
        if text.len() > DEFINITION_BYTES_MAX {
            return Err(DefinitionErrors(vec![DefinitionError {
                path: String::new(),
                message: format!(
                    "the definition is {} bytes; at most {DEFINITION_BYTES_MAX} are accepted",
                    text.len()
                ),
            }]));
        }
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        let definition: ExperimentDefinition = serde_path_to_error::deserialize(deserializer)
            .map_err(|error| {
                let path = serde_path(error.path());
                DefinitionErrors(vec![DefinitionError {
                    path,
                    message: error.into_inner().to_string(),
                }])
            })?;
        definition.validate(None)?;
        Ok(definition)
    }

    /// Checks every rule; with `flag`, also that the flag has every arm's variant.
    pub fn validate(&self, flag: Option<FlagRef<'_>>) -> Result<(), DefinitionErrors> {
        let mut errors = Errors::default();
        errors.id("/id", &self.id);
        errors.text("/name", &self.name, true, NAME_BYTES_MAX);
        if let Err(e) = proteus_flagsets::FlagSetName::parse(&self.flag_set) {
            errors.push("/flag_set", e.reason);
        }
        errors.text("/flag", &self.flag, true, FLAG_KEY_BYTES_MAX);
        errors.text("/hypothesis", &self.hypothesis, false, TEXT_BYTES_MAX);
        if let Some(eligibility) = &self.eligibility {
            errors.text("/eligibility", eligibility, false, TEXT_BYTES_MAX);
        }
        self.validate_arms(flag, &mut errors);
        self.validate_metrics(&mut errors);
        self.validate_statistics(&mut errors);
        if errors.0.is_empty() {
            Ok(())
        } else {
            Err(DefinitionErrors(errors.0))
        }
    }

    fn validate_arms(&self, flag: Option<FlagRef<'_>>, errors: &mut Errors) {
        if self.arms.len() < 2 || self.arms.len() > ARMS_MAX {
            errors.push(
                "/arms",
                format!(
                    "an experiment has 2 to {ARMS_MAX} arms, found {}",
                    self.arms.len()
                ),
            );
        }
        if let Some(flag) = flag
            && flag.key() != self.flag
        {
            errors.push(
                "/flag",
                format!(
                    "the definition names flag `{}` but was checked against flag `{}`",
                    self.flag,
                    flag.key()
                ),
            );
        }
        let known: Vec<&str> = flag
            .map(|f| f.variants().map(|(name, _)| name).collect())
            .unwrap_or_default();
        let mut seen = HashSet::new();
        let mut total = 0.0;
        for (i, arm) in self.arms.iter().take(ARMS_MAX).enumerate() {
            let path = format!("/arms/{i}");
            errors.text(
                &format!("{path}/variant"),
                &arm.variant,
                true,
                NAME_BYTES_MAX,
            );
            if !seen.insert(arm.variant.as_str()) {
                errors.push(
                    format!("{path}/variant"),
                    format!(
                        "variant `{}` has two arms; each variant is one arm",
                        arm.variant
                    ),
                );
            }
            if flag.is_some() && !known.contains(&arm.variant.as_str()) {
                errors.push(
                    format!("{path}/variant"),
                    format!(
                        "`{}` is not a variant of flag `{}` (variants: {})",
                        arm.variant,
                        self.flag,
                        known.join(", ")
                    ),
                );
            }
            if !(arm.weight.is_finite() && arm.weight > 0.0) {
                errors.push(
                    format!("{path}/weight"),
                    format!(
                        "a weight is a positive, finite number, found {}",
                        arm.weight
                    ),
                );
            } else {
                total += arm.weight;
            }
            if let Some(description) = &arm.description {
                errors.text(
                    &format!("{path}/description"),
                    description,
                    false,
                    TEXT_BYTES_MAX,
                );
            }
        }
        if !total.is_finite() {
            errors.push("/arms", "the weights sum to more than a 64-bit float holds");
        }
        if !self.arms.iter().any(|a| a.variant == self.control) {
            errors.push(
                "/control",
                format!(
                    "`{}` is not the variant of any arm; the control must be one of the arms",
                    self.control
                ),
            );
        }
    }

    fn validate_metrics(&self, errors: &mut Errors) {
        if self.metrics.is_empty() || self.metrics.len() > METRICS_MAX {
            errors.push(
                "/metrics",
                format!(
                    "an experiment has 1 to {METRICS_MAX} metrics, found {}",
                    self.metrics.len()
                ),
            );
        }
        let mut ids = HashSet::new();
        for (i, metric) in self.metrics.iter().take(METRICS_MAX).enumerate() {
            let path = format!("/metrics/{i}");
            if !ids.insert(metric.id.as_str()) {
                errors.push(
                    format!("{path}/id"),
                    format!("metric `{}` is defined twice", metric.id),
                );
            }
            metric.validate(&path, &mut |p, m| errors.push(p, m));
        }
        let exists = |id: &str| self.metrics.iter().any(|m| m.id == id);
        if !exists(&self.primary_metric) {
            errors.push(
                "/primary_metric",
                format!(
                    "`{}` is not the id of a metric in `metrics`",
                    self.primary_metric
                ),
            );
        }
        let mut used = HashSet::from([self.primary_metric.as_str()]);
        for (i, id) in self.secondary_metrics.iter().enumerate() {
            let path = format!("/secondary_metrics/{i}");
            if !exists(id) {
                errors.push(
                    &path,
                    format!("`{id}` is not the id of a metric in `metrics`"),
                );
            } else if !used.insert(id.as_str()) {
                errors.push(
                    &path,
                    format!("`{id}` is already the primary or another secondary metric"),
                );
            }
        }
        if self.guardrails.len() > METRICS_MAX {
            errors.push(
                "/guardrails",
                format!(
                    "at most {METRICS_MAX} guardrails, found {}",
                    self.guardrails.len()
                ),
            );
        }
        let mut guarded = HashSet::new();
        for (i, guardrail) in self.guardrails.iter().take(METRICS_MAX).enumerate() {
            let path = format!("/guardrails/{i}");
            if !exists(&guardrail.metric) {
                errors.push(
                    format!("{path}/metric"),
                    format!(
                        "`{}` is not the id of a metric in `metrics`",
                        guardrail.metric
                    ),
                );
            } else if !guarded.insert(guardrail.metric.as_str()) {
                errors.push(
                    format!("{path}/metric"),
                    format!("metric `{}` has two guardrails", guardrail.metric),
                );
            }
            let t = guardrail.threshold_relative;
            if !(t.is_finite() && (0.0..1.0).contains(&t)) {
                errors.push(
                    format!("{path}/threshold_relative"),
                    format!(
                        "a tolerated relative harm is at least 0 and below 1 (0.02 = 2%), found {t}"
                    ),
                );
            }
        }
    }

    fn validate_statistics(&self, errors: &mut Errors) {
        match self.minimum_detectable_effect {
            MinimumDetectableEffect::Relative(v) if !(v.is_finite() && v > 0.0 && v <= 10.0) => {
                errors.push(
                    "/minimum_detectable_effect/relative",
                    format!("a relative effect is above 0 and at most 10 (0.05 = 5%), found {v}"),
                )
            }
            MinimumDetectableEffect::Absolute(v) if !(v.is_finite() && v > 0.0) => errors.push(
                "/minimum_detectable_effect/absolute",
                format!("an absolute effect is a positive, finite number, found {v}"),
            ),
            _ => {}
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0 && self.alpha <= 0.5) {
            errors.push(
                "/alpha",
                format!("alpha is above 0 and at most 0.5, found {}", self.alpha),
            );
        }
        if !(self.power.is_finite() && self.power > self.alpha && self.power < 1.0) {
            errors.push(
                "/power",
                format!(
                    "power is above alpha and below 1 (typically 0.8), found {}",
                    self.power
                ),
            );
        }
        let a = &self.analysis;
        if let Some(target) = a.sequential_target_units
            && !(2..=1_000_000_000_000).contains(&target)
        {
            errors.push(
                "/analysis/sequential_target_units",
                format!("the planned units are 2 to 10^12, found {target}"),
            );
        }
        if a.alternative == Sidedness::OneSided && a.sequential {
            errors.push(
                "/analysis/alternative",
                "one-sided tests need fixed-horizon analysis (\"sequential\": false): the confidence sequences are two-sided".to_owned(),
            );
        }
        if let Prior::Gaussian { mean, variance } = a.prior
            && !(mean.is_finite() && variance.is_finite() && variance > 0.0)
        {
            errors.push(
                "/analysis/prior",
                format!(
                    "a Gaussian prior has a finite mean and a finite variance above 0 (e.g. mean 0, variance 0.09 for ±60% relative lifts), found mean {mean}, variance {variance}"
                ),
            );
        }
        if let Some(cuped) = a.cuped
            && !(1..=PRE_PERIOD_MS_MAX).contains(&cuped.pre_period_ms)
        {
            errors.push(
                "/analysis/cuped/pre_period_ms",
                format!(
                    "the pre-period is 1 to {PRE_PERIOD_MS_MAX} ms (90 days), found {}",
                    cuped.pre_period_ms
                ),
            );
        }
        if !(a.srm_threshold.is_finite() && a.srm_threshold > 0.0 && a.srm_threshold < 0.5) {
            errors.push(
                "/analysis/srm_threshold",
                format!(
                    "the threshold is above 0 and below 0.5 (default 0.001), found {}",
                    a.srm_threshold
                ),
            );
        }
        if a.lateness_ms > LATENESS_MS_MAX {
            errors.push(
                "/analysis/lateness_ms",
                format!(
                    "at most {LATENESS_MS_MAX} ms (7 days), found {}",
                    a.lateness_ms
                ),
            );
        }
        if !(1..=UNITS_MAX_CEILING).contains(&a.units_max) {
            errors.push(
                "/analysis/units_max",
                format!("1 to {UNITS_MAX_CEILING} units, found {}", a.units_max),
            );
        }
        if !(1..=UNIT_EVENTS_MAX_CEILING).contains(&a.unit_events_max) {
            errors.push(
                "/analysis/unit_events_max",
                format!(
                    "1 to {UNIT_EVENTS_MAX_CEILING} events, found {}",
                    a.unit_events_max
                ),
            );
        }
    }

    /// Index of the control arm (0 if the definition is invalid; validated definitions have one).
    pub fn control_index(&self) -> usize {
        self.arms
            .iter()
            .position(|a| a.variant == self.control)
            .unwrap_or(0)
    }

    /// Index of the metric with this id.
    pub fn metric_index(&self, id: &str) -> Option<usize> {
        self.metrics.iter().position(|m| m.id == id)
    }

    /// The planned units of the confidence sequence.
    pub fn sequential_target_units(&self) -> u64 {
        self.analysis
            .sequential_target_units
            .unwrap_or(SEQUENTIAL_TARGET_UNITS_DEFAULT)
    }

    /// The unit-key rule of each metric, for callers that route events.
    pub fn unit_keys(&self) -> impl Iterator<Item = &UnitKey> {
        self.metrics.iter().map(|m| &m.unit)
    }
}

/// Renders a serde path as a JSON pointer.
fn serde_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("/{index}")),
            Segment::Map { key } => {
                out.push('/');
                out.push_str(&pointer_token(key));
            }
            Segment::Enum { variant } => {
                out.push('/');
                out.push_str(&pointer_token(variant));
            }
            Segment::Unknown => {}
        }
    }
    out
}
