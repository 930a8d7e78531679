use proteus_groups::{GroupConfig, GroupError};

use crate::{group_with, member, position, pull};

#[test]
fn each_partition_has_one_owner_and_joins_move_few() {
    let mut state = group_with(6, GroupConfig::default());
    let a = state.join(member("a"), 0).unwrap();
    assert_eq!(a.partitions, vec![0, 1, 2, 3, 4, 5]);
    state.join(member("b"), 0).unwrap();
    let c = state.join(member("c"), 0).unwrap();
    let snapshot = state.snapshot();
    let mut owned: Vec<u32> = snapshot
        .members
        .iter()
        .flat_map(|m| m.partitions.clone())
        .collect();
    owned.sort_unstable();
    assert_eq!(
        owned,
        vec![0, 1, 2, 3, 4, 5],
        "exactly one owner per partition"
    );
    assert_eq!(c.partitions.len(), 2);
    assert_eq!(snapshot.generation, 3);
}

#[test]
fn a_member_that_lost_a_partition_cannot_ack_it() {
    let mut state = group_with(2, GroupConfig::default());
    state.join(member("a"), 0).unwrap();
    let delivered = pull(&mut state, &member("a"), 10, 3, 0);
    assert_eq!(delivered.len(), 6);
    let generation_before = state.generation();
    // b joins: one partition moves to it.
    let b = state.join(member("b"), 10).unwrap();
    assert_eq!(b.partitions.len(), 1);
    let moved = b.partitions[0];
    let error = state
        .ack(&member("a"), generation_before, &[position(moved, 0)], 20)
        .unwrap_err();
    assert!(
        matches!(error, GroupError::NotOwner { partition, .. } if partition == moved),
        "{error}"
    );
    // Its events are redelivered to b at once, with their delivery count.
    let redelivered = pull(&mut state, &member("b"), 10, 3, 30);
    assert_eq!(redelivered.len(), 3);
    assert!(redelivered.iter().all(|p| p.partition == moved));
    // b acks with the current generation; an older generation is fenced off.
    let error = state
        .ack(&member("b"), generation_before, &[position(moved, 0)], 40)
        .unwrap_err();
    assert!(
        matches!(error, GroupError::StaleGeneration { .. }),
        "{error}"
    );
    let outcome = state
        .ack(&member("b"), state.generation(), &[position(moved, 0)], 40)
        .unwrap();
    assert_eq!(outcome.acked, 1);
    // a keeps acking its remaining partition with its old generation: it owned it throughout.
    let kept = 1 - moved;
    assert_eq!(
        state
            .ack(&member("a"), generation_before, &[position(kept, 0)], 50)
            .unwrap()
            .acked,
        1
    );
}

#[test]
fn a_silent_member_times_out_and_its_partitions_move() {
    let config = GroupConfig {
        session_timeout_ms: 1_000,
        ..GroupConfig::default()
    };
    let mut state = group_with(4, config);
    state.join(member("a"), 0).unwrap();
    state.join(member("b"), 0).unwrap();
    pull(&mut state, &member("a"), 10, 1, 0);
    // b keeps heartbeating, a goes silent.
    state.heartbeat(&member("b"), 900).unwrap();
    assert!(
        state.expire(1_000).members.is_empty(),
        "not yet: exactly at the timeout"
    );
    state.heartbeat(&member("b"), 1_800).unwrap();
    let expired = state.expire(1_001);
    assert_eq!(expired.members, vec![member("a")]);
    let b = state.heartbeat(&member("b"), 1_900).unwrap();
    assert_eq!(b.partitions, vec![0, 1, 2, 3]);
    assert!(matches!(
        state.heartbeat(&member("a"), 2_000).unwrap_err(),
        GroupError::UnknownMember { .. }
    ));
    // What a had in flight goes to b.
    let redelivered = pull(&mut state, &member("b"), 10, 1, 2_000);
    assert_eq!(
        redelivered.len(),
        4,
        "two from a, two first deliveries of b's own"
    );
}

#[test]
fn leaving_hands_partitions_over_immediately() {
    let mut state = group_with(3, GroupConfig::default());
    state.join(member("a"), 0).unwrap();
    state.join(member("b"), 0).unwrap();
    state.leave(&member("a"), 5).unwrap();
    assert_eq!(
        state.heartbeat(&member("b"), 6).unwrap().partitions,
        vec![0, 1, 2]
    );
    assert!(matches!(
        state.leave(&member("a"), 7).unwrap_err(),
        GroupError::UnknownMember { .. }
    ));
}
