//! Attribution: first exposure decides the arm, several arms exclude, windows, out-of-order
//! events within the lateness, late events, bad events and limits.

use crate::{DAY_MS, HOUR_MS, T0, definition, definition_json, event, exposure, order, parse};
use proteus_experiments::{Applied, ExperimentAggregator, Exposure};
use serde_json::json;

#[test]
fn first_exposure_decides_the_arm_and_several_arms_exclude() {
    let d = definition();
    let mut agg = ExperimentAggregator::new(&d);
    assert_eq!(
        agg.apply_exposure(&exposure("u1", "green", T0)),
        Applied::Counted
    );
    agg.apply_exposure(&exposure("u1", "green", T0 + 5));
    agg.apply_exposure(&exposure("u2", "control", T0));
    agg.apply_exposure(&exposure("u3", "control", T0 + 1));
    agg.apply_exposure(&exposure("u3", "green", T0 + 2));
    assert_eq!(agg.unit_arm("u1"), Some(("green".into(), false)));
    assert_eq!(agg.unit_arm("u3"), Some(("control".into(), true)));
    let stats = agg.arm_stats();
    assert_eq!(stats.units, vec![1, 1]);
    assert_eq!(stats.units_multiple_arms, vec![1, 0]);
    let r = proteus_experiments::results(&d, &agg, T0 + HOUR_MS);
    assert_eq!(r.units_multiple_arms, 1);
    assert_eq!(r.arms[0].units_multiple_arms, 1);
}

#[test]
fn exposures_of_other_flags_and_unknown_variants_are_counted_not_used() {
    let d = definition();
    let mut agg = ExperimentAggregator::new(&d);
    let mut other = exposure("u1", "green", T0);
    other.flag = "other".into();
    assert_eq!(agg.apply_exposure(&other), Applied::OtherFlag);
    assert_eq!(
        agg.apply_exposure(&exposure("u1", "purple", T0)),
        Applied::UnknownVariant
    );
    let report = agg.report();
    assert_eq!(
        (
            report.exposures_other_flag,
            report.exposures_unknown_variant
        ),
        (1, 1)
    );
    assert_eq!(report.units_tracked, 0);
}

#[test]
fn exposure_cloud_events_are_read_as_the_flag_service_writes_them() {
    let ce = json!({
        "specversion": "1.0", "id": "x", "source": "/proteus/flagsets/prod",
        "type": "dev.proteus.flag.exposure", "subject": "checkout", "partitionkey": "u9",
        "data": {"flagSet": "prod", "flag": "checkout", "variant": "green",
                 "targetingKey": "u9", "reason": "TARGETING_MATCH", "time_ms": T0}
    });
    let x = Exposure::from_cloud_event(&ce).unwrap();
    assert_eq!(x, exposure("u9", "green", T0));
    let mut agg = ExperimentAggregator::new(&definition());
    assert_eq!(agg.apply_exposure_event(&ce).unwrap(), Applied::Counted);
    let mut bad = ce.clone();
    bad["data"]["time_ms"] = json!("yesterday");
    assert_eq!(
        agg.apply_exposure_event(&bad).unwrap_err().path,
        "/data/time_ms"
    );
    bad["type"] = json!("other");
    assert_eq!(agg.apply_exposure_event(&bad).unwrap_err().path, "/type");
}

#[test]
fn conversion_window_counts_from_the_first_exposure() {
    let d = definition();
    let mut agg = ExperimentAggregator::new(&d);
    agg.apply_exposure(&exposure("in", "green", T0));
    agg.apply_exposure(&exposure("late", "green", T0));
    agg.apply_exposure(&exposure("before", "green", T0 + 2 * HOUR_MS));
    agg.apply_metric_event("shop", &order("in", 10.0), T0 + DAY_MS);
    agg.apply_metric_event("shop", &order("before", 10.0), T0 + HOUR_MS);
    // Outside the 7-day conversion window, but revenue has no window.
    agg.apply_metric_event("shop", &order("late", 7.0), T0 + 8 * DAY_MS);
    let stats = agg.arm_stats();
    let purchase = &stats.metrics[0][1];
    assert_eq!((purchase.n, purchase.sum), (3, 1.0));
    let revenue = &stats.metrics[1][1];
    assert_eq!(
        revenue.sum, 17.0,
        "the order before exposure does not count"
    );
}

#[test]
fn metric_events_before_the_exposure_arrives_are_kept_and_attributed() {
    let d = definition();
    let mut agg = ExperimentAggregator::new(&d);
    // The metric topic is read ahead of the exposure topic: the order comes first.
    assert_eq!(
        agg.apply_metric_event("shop", &order("u1", 30.0), T0 + 10),
        Applied::Counted
    );
    agg.apply_exposure(&exposure("u1", "control", T0));
    let sums = agg.unit_sums("u1").unwrap();
    assert_eq!(sums[0].post_count, 1);
    assert_eq!(agg.arm_stats().metrics[1][0].sum, 30.0);
}

#[test]
fn an_earlier_exposure_arriving_later_moves_the_first_exposure() {
    let d = definition();
    let mut agg = ExperimentAggregator::new(&d);
    agg.apply_exposure(&exposure("u1", "green", T0 + 20 * 60_000));
    agg.apply_metric_event("shop", &order("u1", 5.0), T0 + 10 * 60_000);
    assert_eq!(agg.unit_sums("u1").unwrap()[1].post_count, 0);
    // Within the hour of lateness: the exposure at T0 is the real first one.
    agg.apply_exposure(&exposure("u1", "green", T0));
    assert_eq!(agg.unit_sums("u1").unwrap()[1].post_sum, 5.0);
}

#[test]
fn events_later_than_the_lateness_are_dropped_and_counted() {
    let d = definition();
    let mut agg = ExperimentAggregator::new(&d);
    agg.apply_exposure(&exposure("u1", "green", T0 + 3 * HOUR_MS));
    assert_eq!(
        agg.apply_exposure(&exposure("u2", "green", T0)),
        Applied::Late
    );
    assert_eq!(
        agg.apply_metric_event("shop", &order("u1", 1.0), T0),
        Applied::Late
    );
    assert_eq!(agg.report().late_events, 2);
}

#[test]
fn bad_metric_events_are_rejected_per_metric() {
    let d = definition();
    let mut agg = ExperimentAggregator::new(&d);
    agg.apply_exposure(&exposure("u1", "green", T0));
    let no_amount = event("order.placed", "u1", json!({"total": 3}));
    // Conversion counts it; revenue, aov and revenue-per-session cannot.
    assert_eq!(
        agg.apply_metric_event("shop", &no_amount, T0 + 1),
        Applied::Counted
    );
    let text_amount = event("order.placed", "u1", json!({"amount": "3.50"}));
    agg.apply_metric_event("shop", &text_amount, T0 + 2);
    let mut no_unit = order("x", 1.0);
    no_unit.as_object_mut().unwrap().remove("partitionkey");
    assert_eq!(
        agg.apply_metric_event("shop", &no_unit, T0 + 3),
        Applied::Rejected
    );
    assert_eq!(
        agg.apply_metric_event("elsewhere", &order("u1", 1.0), T0 + 4),
        Applied::NoMatchingMetric
    );
    let report = agg.report();
    let revenue = &report.rejected[1];
    assert_eq!(
        (revenue.missing_field, revenue.not_a_number, revenue.no_unit),
        (1, 1, 1)
    );
    assert_eq!(report.rejected[0].no_unit, 1);
    assert_eq!(agg.unit_sums("u1").unwrap()[0].post_count, 2);
}

#[test]
fn the_unit_can_come_from_a_data_pointer() {
    let mut v = definition_json();
    v["metrics"][0]["unit"] = json!({"data": "/user/id"});
    let d = parse(&v);
    let mut agg = ExperimentAggregator::new(&d);
    agg.apply_exposure(&exposure("42", "control", T0));
    let e =
        json!({"type": "order.placed", "partitionkey": "ignored", "data": {"user": {"id": 42}}});
    agg.apply_metric_event("shop", &e, T0 + 1);
    assert_eq!(agg.arm_stats().metrics[0][0].sum, 1.0);
}

#[test]
fn units_beyond_units_max_are_refused_and_reported() {
    let mut v = definition_json();
    v["analysis"] = json!({"units_max": 2});
    let d = parse(&v);
    let mut agg = ExperimentAggregator::new(&d);
    agg.apply_exposure(&exposure("a", "control", T0));
    agg.apply_exposure(&exposure("b", "green", T0));
    assert_eq!(
        agg.apply_exposure(&exposure("c", "green", T0)),
        Applied::UnitsFull
    );
    // Known units keep counting.
    assert_eq!(
        agg.apply_metric_event("shop", &order("a", 1.0), T0 + 1),
        Applied::Counted
    );
    let report = agg.report();
    assert_eq!(
        (
            report.units_refused_events,
            report.units_tracked,
            report.units_max
        ),
        (1, 2, 2)
    );
}

#[test]
fn unit_event_buffers_are_bounded() {
    let mut v = definition_json();
    v["analysis"] = json!({"unit_events_max": 3});
    let d = parse(&v);
    let mut agg = ExperimentAggregator::new(&d);
    // Before any exposure, events are buffered: conversion + 3 value slots each.
    assert_eq!(
        agg.apply_metric_event("web", &event("error", "u", json!({})), T0),
        Applied::Counted
    );
    agg.apply_metric_event("web", &event("error", "u", json!({})), T0 + 1);
    agg.apply_metric_event("web", &event("error", "u", json!({})), T0 + 2);
    assert_eq!(
        agg.apply_metric_event("web", &event("error", "u", json!({})), T0 + 3),
        Applied::UnitEventsFull
    );
    assert_eq!(agg.report().unit_events_dropped, 1);
}

#[test]
fn unexposed_units_are_forgotten_once_they_cannot_matter() {
    let d = definition();
    let mut agg = ExperimentAggregator::new(&d);
    for i in 0..100 {
        agg.apply_metric_event("shop", &order(&format!("visitor-{i}"), 1.0), T0 + i);
    }
    assert_eq!(agg.report().units_tracked, 100);
    // Two hours later (lateness one hour, no CUPED pre-period) they are gone.
    agg.apply_exposure(&exposure("u", "green", T0 + 2 * HOUR_MS));
    agg.apply_exposure(&exposure("v", "green", T0 + 3 * HOUR_MS));
    assert!(agg.compaction_due());
    agg.compact(usize::MAX);
    assert_eq!(agg.report().units_tracked, 2);
    // Forgetting is a change a runtime stores (a deletion).
    let forgotten = agg
        .take_changes()
        .into_iter()
        .filter(|(_, u)| u.is_none())
        .count();
    assert_eq!(forgotten, 100);
}

#[test]
fn cuped_pre_period_collects_events_before_the_exposure() {
    let mut v = definition_json();
    v["analysis"] = json!({"cuped": {"pre_period_ms": 7 * DAY_MS}});
    let d = parse(&v);
    let mut agg = ExperimentAggregator::new(&d);
    agg.apply_metric_event("shop", &order("u1", 4.0), T0 - 8 * DAY_MS); // too early
    agg.apply_metric_event("shop", &order("u1", 6.0), T0 - DAY_MS); // pre-period
    agg.apply_exposure(&exposure("u1", "green", T0));
    agg.apply_metric_event("shop", &order("u1", 10.0), T0 + DAY_MS); // post
    let sums = agg.unit_sums("u1").unwrap();
    assert_eq!((sums[1].pre_sum, sums[1].post_sum), (6.0, 10.0));
    let revenue = agg.arm_stats().metrics[1][1];
    assert_eq!((revenue.sum, revenue.covariate_sum), (10.0, 6.0));
}

#[test]
fn the_state_round_trips_through_json() {
    let d = definition();
    let mut agg = ExperimentAggregator::new(&d);
    agg.apply_exposure(&exposure("u1", "green", T0));
    agg.apply_metric_event("shop", &order("u1", 2.5), T0 + 1);
    agg.apply_metric_event("shop", &order("u2", 2.5), T0 + 2);
    // The JSON leaves units out (a runtime stores them); loaded back, the state is the same.
    let text = serde_json::to_string(&agg).unwrap();
    assert!(!text.contains("\"u1\""), "{text}");
    let mut back: ExperimentAggregator = serde_json::from_str(&text).unwrap();
    assert_eq!(back.arm_stats(), agg.arm_stats());
    let changes = agg.clone().take_changes();
    assert_eq!(changes.len(), 2);
    for (key, unit) in changes {
        back.load_unit(key, unit.unwrap());
    }
    back.apply_exposure(&exposure("u2", "control", T0 + 3));
    agg.apply_exposure(&exposure("u2", "control", T0 + 3));
    assert_eq!(back.arm_stats(), agg.arm_stats());
    assert_eq!(back.unit_sums("u2"), agg.unit_sums("u2"));
}

#[test]
fn running_totals_follow_a_settled_unit_into_a_second_arm() {
    let d = definition();
    let mut agg = ExperimentAggregator::new(&d);
    agg.apply_exposure(&exposure("u1", "green", T0));
    agg.apply_metric_event("shop", &order("u1", 4.0), T0 + 1);
    agg.apply_exposure(&exposure("u2", "green", T0 + 2));
    agg.apply_metric_event("shop", &order("u2", 6.0), T0 + 3);
    // Two hours later both are settled; the totals count both units.
    agg.apply_metric_event("shop", &order("u1", 1.0), T0 + 2 * HOUR_MS);
    agg.compact(usize::MAX);
    let revenue = agg.arm_stats().metrics[1][1];
    assert_eq!(
        (revenue.n, revenue.sum, revenue.sum_squares),
        (2, 11.0, 61.0)
    );
    // u1 then sees control: it leaves green's statistics and is reported, exactly.
    agg.apply_exposure(&exposure("u1", "control", T0 + 2 * HOUR_MS + 1));
    let stats = agg.arm_stats();
    assert_eq!(stats.units, vec![0, 1]);
    assert_eq!(stats.units_multiple_arms, vec![0, 1]);
    let revenue = stats.metrics[1][1];
    assert_eq!(
        (revenue.n, revenue.sum, revenue.sum_squares),
        (1, 6.0, 36.0)
    );
    assert_eq!(stats.metrics[1][0].n, 0);
}

#[test]
fn metric_filters_count_only_the_events_they_select() {
    let mut v = definition_json();
    v["metrics"][0]["source"]["where"] = json!([
        {"path": "/country", "op": "in", "value": ["FR", "BE"]},
        {"path": "/amount", "op": "gte", "value": 10}
    ]);
    let d = parse(&v);
    let mut agg = ExperimentAggregator::new(&d);
    let order_from = |unit: &str, country: &str, amount: f64| {
        event(
            "order.placed",
            unit,
            json!({"amount": amount, "country": country}),
        )
    };
    for (unit, country, amount) in [
        ("u1", "FR", 12.0),
        ("u2", "DE", 50.0),
        ("u3", "BE", 9.0),
        ("u4", "BE", 10.0),
    ] {
        agg.apply_exposure(&exposure(unit, "green", T0));
        agg.apply_metric_event("shop", &order_from(unit, country, amount), T0 + 1);
    }
    agg.apply_exposure(&exposure("u5", "green", T0));
    agg.apply_metric_event("shop", &order("u5", 30.0), T0 + 1); // no country: filtered out
    let stats = agg.arm_stats();
    // purchase (filtered): u1 and u4 convert; revenue (unfiltered) counts every order.
    assert_eq!((stats.metrics[0][1].n, stats.metrics[0][1].sum), (5, 2.0));
    assert_eq!(stats.metrics[1][1].sum, 12.0 + 50.0 + 9.0 + 10.0 + 30.0);
}

#[test]
fn bad_metric_filters_are_refused_with_paths() {
    let mut v = definition_json();
    v["metrics"][0]["source"]["where"] = json!([
        {"path": "country", "op": "equals", "value": "FR"},
        {"path": "/amount", "op": "gt", "value": "ten"},
        {"path": "/tags", "op": "in", "value": []},
        {"path": "/x", "op": "exists", "value": 1}
    ]);
    let e = proteus_experiments::ExperimentDefinition::from_json(&v.to_string())
        .unwrap_err()
        .to_string();
    for path in [
        "/metrics/0/source/where/0/path",
        "/metrics/0/source/where/1/value",
        "/metrics/0/source/where/2/value",
        "/metrics/0/source/where/3/value",
    ] {
        assert!(e.contains(path), "{path} missing in {e}");
    }
    v["metrics"][0]["source"]["where"] = json!([{"path": "/a", "op": "like", "value": 1}]);
    let e = proteus_experiments::ExperimentDefinition::from_json(&v.to_string())
        .unwrap_err()
        .to_string();
    assert!(e.contains("/metrics/0/source/where/0/op"), "{e}");
}
