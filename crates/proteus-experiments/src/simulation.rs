//! Synthetic experiments with a known true effect, run through the aggregator and the results
//! exactly as live traffic would be: how often a test declares a difference that is not there
//! (A/A) and how often it finds one that is (power), when results are looked at repeatedly.
//!
//! Deterministic for a seed (SplitMix64), so a run can be repeated and compared.

use serde::Serialize;
use serde_json::{Value, json};

use crate::aggregate::{ExperimentAggregator, Exposure};
use crate::definition::ExperimentDefinition;
use crate::results::results;

/// Most simulated experiments in one run.
pub const EXPERIMENTS_MAX: u64 = 100_000;
/// Most units in one simulated experiment.
pub const UNITS_MAX: u64 = 1_000_000;

/// What to simulate: a two-arm conversion experiment, 50/50.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimulationConfig {
    /// Independent experiments simulated.
    pub experiments: u64,
    /// Units exposed in each experiment.
    pub units: u64,
    /// Units arriving per hour: with `look_every_ms` it sets how many looks there are.
    pub units_per_hour: u64,
    /// How often results are looked at (and a decision could be taken), in simulated time.
    pub look_every_ms: i64,
    /// True conversion rate of the control arm.
    pub control_rate: f64,
    /// True conversion rate of the treatment arm (equal to `control_rate` for an A/A test).
    pub treatment_rate: f64,
    /// Significance level.
    pub alpha: f64,
    pub seed: u64,
}

/// How often each test declared a significant difference.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimulationReport {
    pub config: SimulationConfig,
    pub looks: u64,
    /// Always-valid (sequential) test, stopping at the first significant look.
    pub sequential_at_any_look: f64,
    /// Fixed-horizon test, stopping at the first significant look (what peeking does).
    pub fixed_at_any_look: f64,
    /// Fixed-horizon test, looked at once, at the end.
    pub fixed_at_the_end: f64,
}

/// Why a simulation cannot run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimulationError(pub String);

impl std::fmt::Display for SimulationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl SimulationConfig {
    fn validate(&self) -> Result<(), SimulationError> {
        let fail = |message: String| Err(SimulationError(message));
        if !(1..=EXPERIMENTS_MAX).contains(&self.experiments) {
            return fail(format!(
                "experiments must be 1 to {EXPERIMENTS_MAX}, got {}",
                self.experiments
            ));
        }
        if !(10..=UNITS_MAX).contains(&self.units) {
            return fail(format!(
                "units must be 10 to {UNITS_MAX}, got {}",
                self.units
            ));
        }
        if self.units_per_hour == 0 || self.look_every_ms <= 0 {
            return fail("units_per_hour and look_every_ms must be positive".into());
        }
        for (name, rate) in [
            ("control_rate", self.control_rate),
            ("treatment_rate", self.treatment_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return fail(format!("{name} must be from 0 to 1, got {rate}"));
            }
        }
        if !(self.alpha > 0.0 && self.alpha < 0.5) {
            return fail(format!(
                "alpha must be above 0 and below 0.5, got {}",
                self.alpha
            ));
        }
        Ok(())
    }

    fn definition(&self, sequential: bool) -> Result<ExperimentDefinition, SimulationError> {
        let json = json!({
            "id": "simulation", "name": "simulation", "flag_set": "sim", "flag": "sim",
            "arms": [{"variant": "control", "weight": 1}, {"variant": "treatment", "weight": 1}],
            "control": "control",
            "metrics": [{"id": "conversion", "kind": "conversion",
                         "source": {"topic": "sim", "event_type": "converted"}}],
            "primary_metric": "conversion",
            "minimum_detectable_effect": {"relative": 0.1},
            "alpha": self.alpha,
            "analysis": {"sequential": sequential, "sequential_target_units": self.units}
        });
        ExperimentDefinition::from_json(&json.to_string())
            .map_err(|e| SimulationError(format!("the simulated definition is invalid: {e:?}")))
    }
}

/// Runs the simulation: each experiment once with the sequential analysis and once with the
/// fixed-horizon one, over the same simulated traffic.
pub fn simulate(config: &SimulationConfig) -> Result<SimulationReport, SimulationError> {
    config.validate()?;
    let sequential = config.definition(true)?;
    let fixed = config.definition(false)?;
    let unit_gap_ms = (3_600_000 / config.units_per_hour).max(1) as i64;
    let (mut sequential_any, mut fixed_any, mut fixed_end) = (0u64, 0u64, 0u64);
    let mut looks = 0;
    for experiment in 0..config.experiments {
        let seed = config
            .seed
            .wrapping_add(experiment.wrapping_mul(0x9E37_79B9));
        let traffic = Traffic::new(config, seed, unit_gap_ms);
        let seq = run(&sequential, &traffic, config.look_every_ms);
        let fix = run(&fixed, &traffic, config.look_every_ms);
        looks = seq.looks;
        sequential_any += u64::from(seq.at_any_look);
        fixed_any += u64::from(fix.at_any_look);
        fixed_end += u64::from(fix.at_the_end);
    }
    let share = |count: u64| count as f64 / config.experiments as f64;
    Ok(SimulationReport {
        config: config.clone(),
        looks,
        sequential_at_any_look: share(sequential_any),
        fixed_at_any_look: share(fixed_any),
        fixed_at_the_end: share(fixed_end),
    })
}

/// One experiment's units: arm, conversion and arrival time of each.
struct Traffic {
    units: Vec<(usize, bool, i64)>,
}

impl Traffic {
    fn new(config: &SimulationConfig, seed: u64, unit_gap_ms: i64) -> Traffic {
        let mut rng = SplitMix64(seed);
        let units = (0..config.units)
            .map(|i| {
                let arm = usize::from(rng.uniform() < 0.5);
                let rate = [config.control_rate, config.treatment_rate][arm];
                (arm, rng.uniform() < rate, i as i64 * unit_gap_ms)
            })
            .collect();
        Traffic { units }
    }
}

struct Outcome {
    looks: u64,
    at_any_look: bool,
    at_the_end: bool,
}

const START_MS: i64 = 1_704_067_200_000;

fn run(definition: &ExperimentDefinition, traffic: &Traffic, look_every_ms: i64) -> Outcome {
    let mut aggregator = ExperimentAggregator::new(definition);
    let mut outcome = Outcome {
        looks: 0,
        at_any_look: false,
        at_the_end: false,
    };
    let mut next_look_ms = START_MS + look_every_ms;
    let variants = ["control", "treatment"];
    let total = traffic.units.len();
    for (i, &(arm, converted, offset_ms)) in traffic.units.iter().enumerate() {
        let time_ms = START_MS + offset_ms;
        let unit = format!("u{i}");
        aggregator.apply_exposure(&Exposure {
            flag_set: "sim".into(),
            flag: "sim".into(),
            variant: variants[arm].into(),
            targeting_key: unit.clone(),
            time_ms,
        });
        if converted {
            aggregator.apply_metric_event("sim", &conversion(&unit), time_ms + 1);
        }
        let last = i + 1 == total;
        if time_ms + 1 >= next_look_ms || last {
            next_look_ms += look_every_ms;
            outcome.looks += 1;
            let significant = significant(definition, &aggregator, time_ms + 1);
            outcome.at_any_look |= significant;
            if last {
                outcome.at_the_end = significant;
            }
        }
    }
    outcome
}

fn significant(
    definition: &ExperimentDefinition,
    aggregator: &ExperimentAggregator,
    now_ms: i64,
) -> bool {
    let results = results(definition, aggregator, now_ms);
    results
        .metrics
        .first()
        .and_then(|metric| metric.arms.get(1))
        .and_then(|arm| arm.comparison.as_ref())
        .and_then(|comparison| comparison.ready())
        .is_some_and(|comparison| comparison.significant)
}

fn conversion(unit: &str) -> Value {
    json!({
        "specversion": "1.0", "id": format!("{unit}-converted"), "source": "/simulation",
        "type": "converted", "partitionkey": unit, "data": {}
    })
}

/// SplitMix64: small, fast, and the same stream on every platform.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
