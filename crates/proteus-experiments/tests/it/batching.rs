//! Determinism: checkpoints between batches and interleavings of the two topics within the
//! lateness give the same results.

use crate::{T0, definition, event, exposure, order};
use proptest::prelude::*;
use proteus_experiments::{ArmStats, ExperimentAggregator, ExperimentDefinition, UnitState};
use serde_json::{Value, json};
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
enum Input {
    Exposure {
        unit: String,
        variant: &'static str,
        time_ms: i64,
    },
    Metric {
        topic: &'static str,
        event: Value,
        time_ms: i64,
    },
}

fn apply(agg: &mut ExperimentAggregator, input: &Input) {
    match input {
        Input::Exposure {
            unit,
            variant,
            time_ms,
        } => {
            agg.apply_exposure(&exposure(unit, variant, *time_ms));
        }
        Input::Metric {
            topic,
            event,
            time_ms,
        } => {
            agg.apply_metric_event(topic, event, *time_ms);
        }
    }
}

/// What a runtime keeps outside the aggregator: stored units, and the protocol that moves
/// them in and out (load what an event names, store changes with the checkpoint, evict).
#[derive(Default)]
pub(crate) struct UnitStore {
    units: BTreeMap<String, UnitState>,
}

impl UnitStore {
    /// Loads the units `input` names, then applies it.
    fn apply(&self, agg: &mut ExperimentAggregator, input: &Input) {
        let keys: Vec<String> = match input {
            Input::Exposure {
                unit,
                variant,
                time_ms,
            } => agg
                .exposure_unit(&exposure(unit, variant, *time_ms))
                .map(str::to_owned)
                .into_iter()
                .collect(),
            Input::Metric { topic, event, .. } => agg.metric_event_units(topic, event),
        };
        for key in keys {
            if !agg.is_resident(&key)
                && let Some(unit) = self.units.get(&key)
            {
                agg.load_unit(key, unit.clone());
            }
        }
        apply(agg, input);
    }

    /// Compacts (bounded), stores the changes, evicts settled units and round-trips the rest
    /// through JSON, as a runtime's checkpoint and restart do.
    pub(crate) fn checkpoint_and_restart(
        &mut self,
        agg: &mut ExperimentAggregator,
        compaction_units_max: usize,
    ) -> ExperimentAggregator {
        agg.compact(compaction_units_max);
        for (key, unit) in agg.take_changes() {
            match unit {
                Some(unit) => self.units.insert(key, unit),
                None => self.units.remove(&key),
            };
        }
        agg.evict_settled();
        let text = serde_json::to_string(&*agg).unwrap();
        let mut back: ExperimentAggregator = serde_json::from_str(&text).unwrap();
        for (key, unit) in &self.units {
            if !unit.is_settled() {
                back.load_unit(key.clone(), unit.clone());
            }
        }
        back
    }
}

fn time_of(input: &Input) -> i64 {
    match input {
        Input::Exposure { time_ms, .. } | Input::Metric { time_ms, .. } => *time_ms,
    }
}

/// (unit, what, minute, amount, delay_minutes)
fn inputs(raw: &[(u8, u8, u16, u16, u8)]) -> Vec<(Input, i64)> {
    raw.iter()
        .map(|&(unit, what, minute, amount, delay)| {
            // Odd units get green, except every fifth minute, so some units see both arms.
            let odd = unit % 2 == 1 && !minute.is_multiple_of(5);
            let unit = format!("u{unit}");
            let time_ms = T0 + i64::from(minute) * 60_000;
            let amount = f64::from(amount) / 7.0;
            let input = match what % 6 {
                0 => Input::Exposure {
                    variant: if odd { "green" } else { "control" },
                    unit,
                    time_ms,
                },
                1 | 2 => Input::Metric {
                    topic: "shop",
                    event: order(&unit, amount),
                    time_ms,
                },
                3 => Input::Metric {
                    topic: "web",
                    event: event("session.started", &unit, json!({})),
                    time_ms,
                },
                4 => Input::Metric {
                    topic: "web",
                    event: event("page.loaded", &unit, json!({"ms": amount})),
                    time_ms,
                },
                _ => Input::Metric {
                    topic: "web",
                    event: event("error", &unit, json!({})),
                    time_ms,
                },
            };
            (input, i64::from(delay) * 60_000)
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn assert_same_stats(a: &ArmStats, b: &ArmStats) {
    assert_eq!(a.units, b.units);
    assert_eq!(a.units_multiple_arms, b.units_multiple_arms);
    for (ma, mb) in a.metrics.iter().zip(&b.metrics) {
        for (x, y) in ma.iter().zip(mb) {
            assert_eq!(x.n, y.n);
            for (p, q) in [
                (x.sum, y.sum),
                (x.sum_squares, y.sum_squares),
                (x.denominator_sum, y.denominator_sum),
                (x.sum_products_denominator, y.sum_products_denominator),
                (x.covariate_sum, y.covariate_sum),
            ] {
                assert!(close(p, q), "{x:?} != {y:?}");
            }
        }
    }
}

fn in_time_order(
    definition: &ExperimentDefinition,
    events: &[(Input, i64)],
) -> ExperimentAggregator {
    let mut sorted: Vec<&(Input, i64)> = events.iter().collect();
    sorted.sort_by_key(|(i, _)| time_of(i));
    let mut agg = ExperimentAggregator::new(definition);
    for (input, _) in sorted {
        apply(&mut agg, input);
    }
    agg
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Batches separated by checkpoints (units stored, settled ones evicted and loaded back
    /// when named, bounded compactions, the rest through JSON) give the same statistics and
    /// counters as one pass in memory.
    #[test]
    fn checkpoints_between_batches_do_not_change_the_state(
        raw in prop::collection::vec((0u8..12, 0u8..6, 0u16..400, 0u16..1000, 0u8..30), 0..150),
        cuts in prop::collection::vec(0usize..150, 0..6),
        compaction_units_max in 1usize..20,
    ) {
        let d = definition();
        let events = inputs(&raw);
        let whole = in_time_order(&d, &events);
        let mut sorted: Vec<&(Input, i64)> = events.iter().collect();
        sorted.sort_by_key(|(i, _)| time_of(i));
        let mut agg = ExperimentAggregator::new(&d);
        let mut store = UnitStore::default();
        for (i, (input, _)) in sorted.iter().enumerate() {
            if cuts.contains(&i) {
                agg = store.checkpoint_and_restart(&mut agg, compaction_units_max);
            }
            store.apply(&mut agg, input);
        }
        // Compaction forgets unexposed units with nothing left: only the count of units
        // known may differ.
        let mut report = agg.report();
        report.units_tracked = whole.report().units_tracked;
        report.units_resident = whole.report().units_resident;
        prop_assert_eq!(report, whole.report());
        assert_same_stats(&agg.arm_stats(), &whole.arm_stats());
        // Without checkpoints the same sequence is the same state, bit for bit.
        prop_assert_eq!(in_time_order(&d, &events), whole);
    }

    /// Reading the topics in another interleaving, every event at most 30 minutes after its
    /// time (the lateness is an hour), gives the same statistics.
    #[test]
    fn interleavings_within_the_lateness_give_the_same_statistics(
        raw in prop::collection::vec((0u8..12, 0u8..6, 0u16..400, 0u16..1000, 0u8..30), 0..150),
    ) {
        let d = definition();
        let events = inputs(&raw);
        let ordered = in_time_order(&d, &events);
        let mut shuffled: Vec<&(Input, i64)> = events.iter().collect();
        shuffled.sort_by_key(|(i, delay)| time_of(i) + delay);
        let mut agg = ExperimentAggregator::new(&d);
        for (input, _) in shuffled {
            apply(&mut agg, input);
        }
        prop_assert_eq!(agg.report().late_events, 0);
        assert_same_stats(&agg.arm_stats(), &ordered.arm_stats());
    }
}
