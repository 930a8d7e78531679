//! The group state machine under a clock the tests control: rebalances and fencing, deadlines,
//! retries with backoff, dead letters, replays, and restart from stored progress; the GroupStore
//! conformance suite on the in-memory store.

mod delivery;
mod membership;
mod memory_store;

use proteus_groups::state::{Position, PullPlan};
use proteus_groups::store::{GroupRecord, PartitionProgress};
use proteus_groups::{GroupConfig, GroupName, GroupState, MemberId};
use proteus_log::TopicName;

pub fn member(name: &str) -> MemberId {
    MemberId::parse(name).unwrap()
}

pub fn position(partition: u32, offset: u64) -> Position {
    Position { partition, offset }
}

pub fn group_with(partitions: u32, config: GroupConfig) -> GroupState {
    let record = GroupRecord {
        topic: TopicName::parse("orders").unwrap(),
        group: GroupName::parse("billing").unwrap(),
        config,
        created_ms: 0,
        partitions: (0..partitions)
            .map(|partition| PartitionProgress {
                partition,
                ..PartitionProgress::default()
            })
            .collect(),
        fence: 0,
    };
    GroupState::from_record(record, 42)
}

/// Plans a pull and records first deliveries as if the log held offsets `0..log_end` in
/// every partition; returns every position handed out.
pub fn pull(
    state: &mut GroupState,
    who: &MemberId,
    events_max: u32,
    log_end: u64,
    now_ms: i64,
) -> Vec<Position> {
    let plan: PullPlan = state
        .plan_pull(who, events_max, None, false, now_ms)
        .unwrap();
    let mut out: Vec<Position> = plan.redeliveries.iter().map(|r| r.position).collect();
    let mut budget = plan.new_events_max as u64;
    for (partition, from) in plan.reads {
        let until = log_end.min(from + budget);
        let offsets: Vec<u64> = (from..until).collect();
        let delivered = state.record_first_deliveries(who, partition, from, &offsets, now_ms);
        budget -= delivered.len() as u64;
        out.extend(delivered.iter().map(|d| position(partition, d.offset)));
    }
    out
}
