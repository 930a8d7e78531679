//! Sticky partition assignment.
//!
//! Every partition gets exactly one member; every member gets ⌊P/M⌋ or ⌈P/M⌉ partitions; and
//! among the balanced assignments, the one chosen keeps as many partitions with their current
//! owner as possible, so a rebalance moves only what it must (Kafka's sticky assignor makes
//! the same promise).

use std::collections::BTreeMap;

use proteus_log::PartitionId;

use crate::name::MemberId;

/// The new owner of each partition `0..partitions`, given the members now in the group and the
/// previous owners. With no members, the result is empty.
pub fn sticky_assign(
    partitions: u32,
    members: &[MemberId],
    previous: &BTreeMap<PartitionId, MemberId>,
) -> BTreeMap<PartitionId, MemberId> {
    let mut assignment = BTreeMap::new();
    if members.is_empty() {
        return assignment;
    }
    let member_count = members.len();
    let base = partitions as usize / member_count;
    let extra = partitions as usize % member_count;

    // What each current member holds now, in partition order.
    let mut held: BTreeMap<&MemberId, Vec<PartitionId>> =
        members.iter().map(|member| (member, Vec::new())).collect();
    for (&partition, owner) in previous {
        if partition < partitions
            && let Some(list) = held.get_mut(owner)
        {
            list.push(partition);
        }
    }
    // The members that hold the most get the ⌈P/M⌉ quotas: that keeps the most partitions in
    // place. Ties go to the smaller member id so the result is deterministic.
    let mut by_holding: Vec<&MemberId> = members.iter().collect();
    by_holding.sort_by(|a, b| held[b].len().cmp(&held[a].len()).then(a.cmp(b)));
    let quota: BTreeMap<&MemberId, usize> = by_holding
        .iter()
        .enumerate()
        .map(|(rank, member)| (*member, base + usize::from(rank < extra)))
        .collect();

    for (member, partitions_held) in &held {
        for &partition in partitions_held.iter().take(quota[member]) {
            assignment.insert(partition, (*member).clone());
        }
    }
    // Hand out the rest, each to the member furthest below its quota.
    let mut counts: BTreeMap<&MemberId, usize> = members.iter().map(|m| (m, 0)).collect();
    for owner in assignment.values() {
        if let Some(count) = counts.get_mut(owner) {
            *count += 1;
        }
    }
    for partition in 0..partitions {
        if assignment.contains_key(&partition) {
            continue;
        }
        let member = by_holding
            .iter()
            .filter(|member| counts[*member] < quota[*member])
            .max_by(|a, b| {
                let room_a = quota[*a] - counts[*a];
                let room_b = quota[*b] - counts[*b];
                room_a.cmp(&room_b).then(b.cmp(a))
            })
            .expect("quotas add up to the partition count");
        *counts.get_mut(*member).expect("member is counted") += 1;
        assignment.insert(partition, (*member).clone());
    }
    assignment
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(n: usize) -> MemberId {
        MemberId::parse(&format!("m{n}")).unwrap()
    }

    fn check_balanced(partitions: u32, members: &[MemberId], result: &BTreeMap<u32, MemberId>) {
        assert_eq!(
            result.len(),
            partitions as usize,
            "every partition has an owner"
        );
        let mut counts: BTreeMap<&MemberId, usize> = BTreeMap::new();
        for owner in result.values() {
            assert!(members.contains(owner));
            *counts.entry(owner).or_default() += 1;
        }
        let low = partitions as usize / members.len();
        for member in members {
            let count = counts.get(member).copied().unwrap_or(0);
            assert!(count == low || count == low + 1, "{member} has {count}");
        }
    }

    #[test]
    fn a_joining_member_takes_only_its_share() {
        let two = [member(1), member(2)];
        let first = sticky_assign(6, &two, &BTreeMap::new());
        let three = [member(1), member(2), member(3)];
        let second = sticky_assign(6, &three, &first);
        check_balanced(6, &three, &second);
        let moved = (0..6).filter(|p| first[p] != second[p]).count();
        assert_eq!(
            moved, 2,
            "the new member takes two partitions, nothing else moves"
        );
    }

    #[test]
    fn a_leaving_member_releases_only_its_own() {
        let three = [member(1), member(2), member(3)];
        let first = sticky_assign(7, &three, &BTreeMap::new());
        let two = [member(1), member(3)];
        let second = sticky_assign(7, &two, &first);
        check_balanced(7, &two, &second);
        for (partition, owner) in &first {
            if *owner != member(2) {
                assert_eq!(&second[partition], owner, "partition {partition} stays put");
            }
        }
    }

    proptest! {
        #[test]
        fn balanced_and_minimal(partitions in 0u32..40, before in 1usize..6, after in 1usize..6) {
            let old: Vec<MemberId> = (0..before).map(member).collect();
            let new: Vec<MemberId> = (0..after).map(member).collect();
            let first = sticky_assign(partitions, &old, &BTreeMap::new());
            let second = sticky_assign(partitions, &new, &first);
            check_balanced(partitions, &new, &second);
            // Members present before and after keep at least min(old share, new quota floor).
            let kept = (0..partitions).filter(|p| first.get(p) == second.get(p)).count();
            let survivors = before.min(after);
            let floor_new = partitions as usize / after;
            let floor_old = partitions as usize / before;
            prop_assert!(kept >= survivors * floor_new.min(floor_old));
        }
    }
}
