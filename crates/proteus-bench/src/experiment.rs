//! `proteus bench experiment`: the experiments' statistics on synthetic traffic with a known
//! truth. An A/A run (no true difference) measures false positives, which must stay at or under
//! alpha for the sequential test even when results are looked at every hour, and for the
//! fixed-horizon test looked at once; a run with a true lift measures power. The command fails
//! when a false-positive rate exceeds alpha by more than three Monte Carlo standard errors.

use proteus_experiments::simulation::{SimulationConfig, SimulationReport, simulate};

use crate::Output;

#[derive(clap::Args, Debug, Clone)]
pub struct ExperimentArgs {
    /// Simulated experiments per scenario.
    #[arg(long, default_value_t = 1_000)]
    pub experiments: u64,
    /// Units exposed in each experiment.
    #[arg(long, default_value_t = 2_000)]
    pub units: u64,
    /// Units arriving per hour of simulated time.
    #[arg(long, default_value_t = 100)]
    pub units_per_hour: u64,
    /// How often results are looked at, in simulated minutes [default: every hour].
    #[arg(long, default_value_t = 60)]
    pub look_every_minutes: u32,
    /// True conversion rate of the control arm.
    #[arg(long, default_value_t = 0.10)]
    pub control_rate: f64,
    /// True relative lift of the treatment arm in the power scenario (0.2 = +20%).
    #[arg(long, default_value_t = 0.3)]
    pub lift: f64,
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, value_enum, default_value = "table")]
    pub output: Output,
}

pub fn run(args: ExperimentArgs) -> Result<(), String> {
    let config = |treatment_rate: f64| SimulationConfig {
        experiments: args.experiments,
        units: args.units,
        units_per_hour: args.units_per_hour,
        look_every_ms: i64::from(args.look_every_minutes) * 60_000,
        control_rate: args.control_rate,
        treatment_rate,
        alpha: args.alpha,
        seed: args.seed,
    };
    let treatment_rate = args.control_rate * (1.0 + args.lift);
    if !(0.0..=1.0).contains(&treatment_rate) {
        return Err(format!(
            "--control-rate {} with --lift {} gives a treatment rate of {treatment_rate}, outside 0 to 1",
            args.control_rate, args.lift
        ));
    }
    let a_a = simulate(&config(args.control_rate)).map_err(|e| e.to_string())?;
    let effect = simulate(&config(treatment_rate)).map_err(|e| e.to_string())?;
    match args.output {
        Output::Json => println!("{}", serde_json::json!({"a_a": a_a, "effect": effect})),
        Output::Table => print_table(&a_a, &effect),
    }
    // Three standard errors of a rate of alpha over this many experiments: a correct test
    // exceeds that by chance about once in 700 runs.
    let slack = 3.0 * (args.alpha * (1.0 - args.alpha) / args.experiments as f64).sqrt();
    let mut failures = Vec::new();
    if a_a.sequential_at_any_look > args.alpha + slack {
        failures.push(format!(
            "the sequential test's A/A false-positive rate with peeking is {:.4}, above alpha {} (+{slack:.4} slack)",
            a_a.sequential_at_any_look, args.alpha
        ));
    }
    if a_a.fixed_at_the_end > args.alpha + slack {
        failures.push(format!(
            "the fixed test's A/A false-positive rate at one look is {:.4}, above alpha {} (+{slack:.4} slack)",
            a_a.fixed_at_the_end, args.alpha
        ));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

fn print_table(a_a: &SimulationReport, effect: &SimulationReport) {
    let c = &a_a.config;
    println!(
        "simulation      {} experiments x {} units (50/50), {} units/hour, a look every {} min ({} looks), alpha {}, seed {}",
        c.experiments,
        c.units,
        c.units_per_hour,
        c.look_every_ms / 60_000,
        a_a.looks,
        c.alpha,
        c.seed
    );
    println!(
        "A/A             control = treatment = {:.4}: significant in a share of experiments",
        c.control_rate
    );
    println!(
        "  sequential, stopping at the first significant look   {:.4}",
        a_a.sequential_at_any_look
    );
    println!(
        "  fixed horizon, stopping at the first significant look {:.4}  (peeking: not valid)",
        a_a.fixed_at_any_look
    );
    println!(
        "  fixed horizon, one look at the end                     {:.4}",
        a_a.fixed_at_the_end
    );
    println!(
        "power           control {:.4}, treatment {:.4}:",
        effect.config.control_rate, effect.config.treatment_rate
    );
    println!(
        "  sequential, any look                                   {:.4}",
        effect.sequential_at_any_look
    );
    println!(
        "  fixed horizon, one look at the end                     {:.4}",
        effect.fixed_at_the_end
    );
}
