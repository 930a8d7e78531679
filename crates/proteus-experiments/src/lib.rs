//! Experiments on feature flags: the pure domain between the statistics engine
//! (`proteus-stats`) and a runtime that reads the event log and an HTTP API that shows results.
//!
//! - [`ExperimentDefinition`]: a flag's variants as arms with traffic weights, metrics over
//!   event topics, the primary/secondary/guardrail roles, the MDE and the analysis options;
//!   JSON in, validated with JSON-pointer errors (and against the flag when it is known).
//! - [`Experiment`]: the lifecycle draft → running → stopped → decided, and
//!   [`rollout_change`], the flag-set change that serves the chosen variant to everyone.
//! - [`ExperimentAggregator`]: the incremental, serialisable per-unit state a log consumer
//!   drives with exposures and metric events (attribution rules in [`aggregate`]).
//! - [`results`] and [`guardrail_breaches`]: what an API returns and what halts a rollout.
//!
//! Pure: no I/O, no clock (callers pass `now_ms` and event times), no randomness. Nothing
//! panics on input. The user-facing description is `docs/experiments.md`.

pub mod aggregate;
pub mod definition;
pub mod lifecycle;
pub mod metric;
pub mod results;
pub mod simulation;

pub use aggregate::{
    AggregationReport, Applied, ArmStats, EXPOSURE_EVENT_TYPE, EXPOSURE_TOPIC,
    ExperimentAggregator, Exposure, ExposureError, MetricRejections, SlotSums, UnitState,
};
pub use definition::{
    AnalysisOptions, ArmDefinition, CupedOptions, DefinitionError, DefinitionErrors,
    ExperimentDefinition, Guardrail, GuardrailDirection, MinimumDetectableEffect, Sidedness,
};
pub use lifecycle::{Decision, Experiment, LifecycleError, RolloutError, Status, rollout_change};
pub use metric::{EventFilter, EventSource, FilterOp, Goal, MetricDefinition, MetricKind, UnitKey};
pub use results::{
    Action, ArmMetricResult, ArmUnits, ComparisonOutcome, ComparisonResult, DecisionHint,
    ExperimentResults, GuardrailBreach, MethodSummary, MetricResult, MetricRole, SequentialLooks,
    SrmStatus, guardrail_breaches, results, results_with_looks,
};
