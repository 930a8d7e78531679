//! A/A simulations: why the sequential test exists.
//!
//! Thousands of experiments where both arms draw from the same distribution, analysed at many
//! looks as a team watching a dashboard would, stopping at the first "significant" result. The
//! fixed-horizon Welch test, valid at one pre-planned look, then declares far more than α of them
//! significant; the confidence sequence stays at or below α. The seed is fixed, so the rates are
//! deterministic; the slack allows for the Monte Carlo error of the chosen number of experiments.

use proteus_stats::*;

/// SplitMix64 (Steele, Lea and Flood 2014): tiny, fast, and good enough for simulation.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Two independent standard normals (Box–Muller).
    fn normals(&mut self) -> (f64, f64) {
        let r = (-2.0 * self.uniform().ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * self.uniform();
        (r * angle.cos(), r * angle.sin())
    }
}

const EXPERIMENTS: usize = 2_000;
const UNITS: usize = 2_000;
const LOOK_EVERY_UNITS: usize = 100;
const ALPHA: f64 = 0.05;

struct Rates {
    fixed_single_look: f64,
    fixed_peeking: f64,
    sequential_peeking: f64,
}

/// Runs `experiments` experiments whose treatment adds `effect` to every value.
fn simulate(seed: u64, experiments: usize, effect: f64) -> Rates {
    let mut rng = SplitMix64(seed);
    let settings = TestSettings {
        alpha: ALPHA,
        alternative: Alternative::TwoSided,
    };
    let sequential = SequentialSettings {
        alpha: ALPHA,
        target_units: UNITS as u64,
    };
    let (mut single, mut fixed, mut seq) = (0usize, 0usize, 0usize);
    for _ in 0..experiments {
        let mut arms = [SufficientStats::default(); 2];
        let (mut fixed_hit, mut seq_hit) = (false, false);
        for unit in 1..=UNITS {
            // A revenue-like metric: log-normal, identical in both arms (an A/A test).
            let (z, coin) = rng.normals();
            let treated = coin > 0.0;
            let value = (1.0 + 0.5 * z).exp() + if treated { effect } else { 0.0 };
            arms[usize::from(treated)].push(value).unwrap();
            if unit % LOOK_EVERY_UNITS != 0 {
                continue;
            }
            let (c, t) = (arms[0].summary().unwrap(), arms[1].summary().unwrap());
            if let Ok(r) = welch_test(&c, &t, &settings) {
                fixed_hit |= r.p_value < ALPHA;
                if unit == UNITS && r.p_value < ALPHA {
                    single += 1;
                }
            }
            if let Ok(r) = sequential_test(&c.estimate(), &t.estimate(), &sequential) {
                seq_hit |= r.p_value < ALPHA;
                // The interval and the p-value are the same decision.
                assert_eq!(r.p_value < ALPHA, !r.absolute.interval.contains(0.0));
            }
        }
        fixed += usize::from(fixed_hit);
        seq += usize::from(seq_hit);
    }
    let n = experiments as f64;
    Rates {
        fixed_single_look: single as f64 / n,
        fixed_peeking: fixed as f64 / n,
        sequential_peeking: seq as f64 / n,
    }
}

#[test]
fn peeking_inflates_the_fixed_horizon_test_but_not_the_sequential_one() {
    let rates = simulate(0x5EED_A11A, EXPERIMENTS, 0.0);
    // Three Monte Carlo standard errors of a rate α over this many experiments.
    let slack = 3.0 * (ALPHA * (1.0 - ALPHA) / EXPERIMENTS as f64).sqrt();
    println!(
        "A/A, {EXPERIMENTS} experiments of {UNITS} units, a look every {LOOK_EVERY_UNITS} units, \
         alpha {ALPHA}: fixed-horizon at the last look {:.4}, fixed-horizon peeking {:.4}, \
         sequential peeking {:.4}",
        rates.fixed_single_look, rates.fixed_peeking, rates.sequential_peeking
    );
    assert!(
        (rates.fixed_single_look - ALPHA).abs() <= slack,
        "one look at the planned horizon is a valid test: {}",
        rates.fixed_single_look
    );
    assert!(
        rates.fixed_peeking > 2.0 * ALPHA,
        "peeking should inflate the fixed-horizon test: {}",
        rates.fixed_peeking
    );
    assert!(
        rates.sequential_peeking <= ALPHA + slack,
        "the confidence sequence must keep false positives at alpha: {}",
        rates.sequential_peeking
    );
}

#[test]
fn the_sequential_test_still_finds_a_real_effect() {
    // The metric's variance is (e^0.25 − 1)·e^2.25 ≈ 2.70, so with 1000 units per arm the
    // difference has a standard error of ≈ 0.0735; 0.206 is 2.8 of them: 80% power for one
    // fixed-horizon look at the end.
    let rates = simulate(0xEFFEC7, 500, 0.206);
    println!(
        "true effect (80% fixed-horizon power), 500 experiments: fixed-horizon at the last look \
         {:.4}, sequential peeking {:.4}",
        rates.fixed_single_look, rates.sequential_peeking
    );
    assert!(
        (rates.fixed_single_look - 0.8).abs() < 0.07,
        "{}",
        rates.fixed_single_look
    );
    // Always-valid inference costs power at the planned horizon (about 0.5 here instead of 0.8);
    // it buys the right to stop early and to look at any time.
    assert!(
        rates.sequential_peeking > 0.4,
        "{}",
        rates.sequential_peeking
    );
}
