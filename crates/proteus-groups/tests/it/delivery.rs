use proteus_groups::config::RetryPolicy;
use proteus_groups::state::Position;
use proteus_groups::{GroupConfig, GroupError, GroupState};

use crate::{group_with, member, position, pull};

fn retrying(deliveries_max: u32) -> GroupConfig {
    GroupConfig {
        ack_wait_ms: 1_000,
        retry: RetryPolicy {
            backoff_base_ms: 100,
            backoff_max_ms: 800,
            deliveries_max,
        },
        ..GroupConfig::default()
    }
}

fn one_member(config: GroupConfig) -> GroupState {
    let mut state = group_with(1, config);
    state.join(member("a"), 0).unwrap();
    state
}

#[test]
fn acks_commit_in_order_and_are_idempotent() {
    let mut state = one_member(GroupConfig::default());
    let delivered = pull(&mut state, &member("a"), 10, 5, 0);
    assert_eq!(delivered.len(), 5);
    let generation = state.generation();
    state
        .ack(
            &member("a"),
            generation,
            &[position(0, 1), position(0, 2)],
            1,
        )
        .unwrap();
    assert_eq!(state.committed(0), Some(0), "0 is still unacked");
    state
        .ack(&member("a"), generation, &[position(0, 0)], 2)
        .unwrap();
    assert_eq!(state.committed(0), Some(3));
    let again = state
        .ack(&member("a"), generation, &[position(0, 0)], 3)
        .unwrap();
    assert_eq!((again.acked, again.duplicates), (0, 1));
    let error = state
        .ack(&member("a"), generation, &[position(0, 9)], 4)
        .unwrap_err();
    assert!(
        matches!(
            error,
            GroupError::NotDelivered {
                offset: 9,
                fetched: 5,
                ..
            }
        ),
        "{error}"
    );
    // A request with one bad position changes nothing.
    let error = state
        .ack(
            &member("a"),
            generation,
            &[position(0, 3), position(0, 9)],
            5,
        )
        .unwrap_err();
    assert!(matches!(error, GroupError::NotDelivered { .. }));
    assert_eq!(state.committed(0), Some(3));
}

#[test]
fn a_missed_deadline_redelivers_after_backoff() {
    let mut state = one_member(retrying(5));
    pull(&mut state, &member("a"), 1, 1, 0);
    assert!(pull(&mut state, &member("a"), 10, 1, 999).is_empty());
    let expired = state.expire(1_000);
    assert_eq!(expired.events, 1);
    assert!(expired.dead_letters.is_empty());
    // Full jitter over [0, 100] ms for the first retry: due by 1_100 at the latest.
    let again = pull(&mut state, &member("a"), 10, 1, 1_100);
    assert_eq!(again, vec![position(0, 0)]);
    let plan = state
        .plan_pull(&member("a"), 10, None, false, 1_100)
        .unwrap();
    assert!(plan.redeliveries.is_empty());
}

#[test]
fn in_progress_extends_the_deadline() {
    let mut state = one_member(retrying(5));
    pull(&mut state, &member("a"), 1, 1, 0);
    let deadline = state
        .in_progress(&member("a"), state.generation(), &[position(0, 0)], 900)
        .unwrap();
    assert_eq!(deadline, 1_900);
    assert_eq!(state.expire(1_500).events, 0);
    assert_eq!(state.expire(1_900).events, 1);
}

#[test]
fn backoff_doubles_with_full_jitter_up_to_the_max() {
    // Measure when each retry becomes available: always within [0, ceiling] of the nack.
    let mut state = one_member(retrying(100));
    let mut now = 0;
    pull(&mut state, &member("a"), 1, 1, now);
    for (retry, ceiling) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 800), (6, 800)] {
        state
            .nack(
                &member("a"),
                state.generation(),
                &[position(0, 0)],
                None,
                Some("db down"),
                now,
            )
            .unwrap();
        let mut waited = 0;
        loop {
            let got = pull(&mut state, &member("a"), 1, 1, now + waited);
            if !got.is_empty() {
                break;
            }
            waited += 1;
            assert!(
                waited <= ceiling,
                "retry {retry} waited more than {ceiling} ms"
            );
        }
        now += waited;
    }
}

#[test]
fn a_nack_can_ask_for_its_own_delay_but_not_an_absurd_one() {
    let mut state = one_member(retrying(5));
    pull(&mut state, &member("a"), 1, 1, 0);
    let error = state
        .nack(
            &member("a"),
            state.generation(),
            &[position(0, 0)],
            Some(u64::MAX),
            None,
            1,
        )
        .unwrap_err();
    assert!(matches!(error, GroupError::DelayTooLong { .. }), "{error}");
    state
        .nack(
            &member("a"),
            state.generation(),
            &[position(0, 0)],
            Some(5_000),
            None,
            1,
        )
        .unwrap();
    assert!(pull(&mut state, &member("a"), 1, 1, 5_000).is_empty());
    assert_eq!(
        pull(&mut state, &member("a"), 1, 1, 5_001),
        vec![position(0, 0)]
    );
}

#[test]
fn used_up_deliveries_become_a_dead_letter_with_the_last_error() {
    let mut state = one_member(retrying(3));
    let at = position(0, 0);
    let mut now = 0;
    let mut dead = Vec::new();
    for attempt in 1..=3 {
        let got = loop {
            let got = pull(&mut state, &member("a"), 1, 1, now);
            if !got.is_empty() {
                break got;
            }
            now += 10;
        };
        assert_eq!(got, vec![at]);
        let outcome = state
            .nack(
                &member("a"),
                state.generation(),
                &[at],
                None,
                Some(&format!("failure {attempt}")),
                now,
            )
            .unwrap();
        dead = outcome.dead_letters;
    }
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].deliveries, 3);
    assert_eq!(dead[0].last_error.as_deref(), Some("failure 3"));
    assert_eq!(
        state.committed(0),
        Some(0),
        "not committed until the dead letter is written"
    );
    assert!(
        pull(&mut state, &member("a"), 1, 1, now + 10_000).is_empty(),
        "never redelivered"
    );
    state.dead_lettered(at);
    assert_eq!(state.committed(0), Some(1));
    // Replay: delivered again with a fresh count, acked without touching the committed position.
    assert_eq!(state.replay(&[(at, 0)], now), 1);
    let plan = state.plan_pull(&member("a"), 1, None, false, now).unwrap();
    assert_eq!(plan.redeliveries.len(), 1);
    assert_eq!(plan.redeliveries[0].deliveries, 1);
    assert_eq!(plan.redeliveries[0].replay_of, Some(0));
    state
        .ack(&member("a"), state.generation(), &[at], now)
        .unwrap();
    assert_eq!(state.committed(0), Some(1));
    assert_eq!(state.snapshot().unacked_events, 0);
}

#[test]
fn the_unacked_bound_holds_back_new_deliveries() {
    let mut state = one_member(GroupConfig {
        unacked_events_max: 3,
        ..GroupConfig::default()
    });
    assert_eq!(pull(&mut state, &member("a"), 10, 100, 0).len(), 3);
    assert!(pull(&mut state, &member("a"), 10, 100, 1).is_empty());
    state
        .ack(&member("a"), state.generation(), &[position(0, 0)], 2)
        .unwrap();
    assert_eq!(
        pull(&mut state, &member("a"), 10, 100, 3),
        vec![position(0, 3)]
    );
}

#[test]
fn ordered_pulls_hold_a_partition_behind_its_retry() {
    let mut state = one_member(retrying(5));
    let plan = state.plan_pull(&member("a"), 1, Some(0), true, 0).unwrap();
    assert_eq!(plan.reads, vec![(0, 0)]);
    state.record_first_deliveries(&member("a"), 0, 0, &[0], 0);
    // While 0:0 is in flight, nothing newer is planned for an ordered pull.
    assert!(
        state
            .plan_pull(&member("a"), 1, Some(0), true, 1)
            .unwrap()
            .reads
            .is_empty()
    );
    state
        .nack(
            &member("a"),
            state.generation(),
            &[position(0, 0)],
            Some(500),
            None,
            2,
        )
        .unwrap();
    let plan = state
        .plan_pull(&member("a"), 1, Some(0), true, 100)
        .unwrap();
    assert!(
        plan.reads.is_empty() && plan.redeliveries.is_empty(),
        "waits for the retry"
    );
    let plan = state
        .plan_pull(&member("a"), 1, Some(0), true, 502)
        .unwrap();
    assert_eq!(plan.redeliveries.len(), 1);
}

#[test]
fn progress_survives_a_restart_with_failures_and_acks() {
    let mut state = one_member(retrying(3));
    pull(&mut state, &member("a"), 10, 4, 0);
    let generation = state.generation();
    state
        .ack(
            &member("a"),
            generation,
            &[position(0, 0), position(0, 2)],
            1,
        )
        .unwrap();
    state
        .nack(
            &member("a"),
            generation,
            &[position(0, 1)],
            Some(0),
            Some("flaky"),
            1,
        )
        .unwrap();
    let progress = state.take_dirty();
    assert_eq!(progress.len(), 1);
    let record = proteus_groups::GroupRecord {
        topic: state.topic().clone(),
        group: state.group().clone(),
        config: state.config().clone(),
        created_ms: 0,
        partitions: progress,
        fence: 0,
    };
    let mut restarted = GroupState::from_record(record, 7);
    restarted.join(member("b"), 10).unwrap();
    let delivered = {
        let plan = restarted
            .plan_pull(&member("b"), 10, None, false, 10)
            .unwrap();
        restarted.record_first_deliveries(&member("b"), 0, plan.reads[0].1, &[1, 2, 3], 10)
    };
    let offsets: Vec<(u64, u32)> = delivered.iter().map(|d| (d.offset, d.deliveries)).collect();
    assert_eq!(
        offsets,
        vec![(1, 2), (3, 1)],
        "2 was acked; 1 keeps its failed delivery"
    );
    let _ = Position {
        partition: 0,
        offset: 0,
    };
}

#[test]
fn retention_gaps_are_skipped_and_counted() {
    let mut state = one_member(GroupConfig::default());
    let plan = state.plan_pull(&member("a"), 10, None, false, 0).unwrap();
    let delivered = state.record_first_deliveries(&member("a"), 0, plan.reads[0].1, &[500, 501], 0);
    assert_eq!(delivered.len(), 2);
    assert_eq!(state.committed(0), Some(500));
    assert_eq!(state.counters().skipped_by_retention, 500);
}
