//! The state machine of one consumer group.
//!
//! It decides who owns which partition, which events to hand out next, and what happens to
//! each delivered event: acked, extended, nacked, expired, redelivered or dead-lettered. It
//! never reads the log or the clock itself: the runtime passes `now_ms` and the events it read,
//! so every rule here is tested with a clock the test controls.
//!
//! Invariants (checked by the tests in `tests/it`):
//! - each partition has at most one owner, and only the owner can ack, nack or extend its events,
//!   with a generation at least the one at which it got the partition (fencing);
//! - an offset is in at most one of: in flight, waiting for a retry, being dead-lettered,
//!   acknowledged;
//! - `committed` only moves forward, and every offset below it is acknowledged or dead-lettered;
//! - unacknowledged events (in flight, waiting, being dead-lettered) never exceed
//!   `unacked_events_max` through new deliveries.

use std::collections::{BTreeMap, BTreeSet};

use proteus_log::{Offset, PartitionId, TopicName};
use serde::Serialize;

use crate::assign::sticky_assign;
use crate::backoff::{Jitter, retry_delay_ms};
use crate::config::{GroupConfig, limits};
use crate::error::GroupError;
use crate::name::{GroupName, MemberId};
use crate::ranges::OffsetRanges;
use crate::store::{FailureRecord, GroupRecord, PartitionProgress, ReplayRecord};

/// Most members one group takes.
pub const MEMBERS_MAX: usize = 1_024;
/// Most positions one ack, nack or in-progress request may name.
pub const POSITIONS_PER_REQUEST_MAX: usize = 10_000;
/// Longest error message kept from a nack, in bytes; longer ones are cut.
pub const NACK_ERROR_BYTES_MAX: usize = 1_024;

/// A position inside the group's topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub partition: PartitionId,
    pub offset: Offset,
}

impl std::str::FromStr for Position {
    type Err = GroupError;
    fn from_str(text: &str) -> Result<Self, GroupError> {
        let invalid = || GroupError::InvalidPosition {
            text: text.chars().take(64).collect(),
        };
        let (partition, offset) = text.split_once(':').ok_or_else(invalid)?;
        Ok(Position {
            partition: partition.parse().map_err(|_| invalid())?,
            offset: offset.parse().map_err(|_| invalid())?,
        })
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

#[derive(Clone, Debug)]
struct Session {
    last_seen_ms: i64,
}

#[derive(Clone, Debug)]
struct InFlight {
    deliveries: u32,
    delivered_ms: i64,
    deadline_ms: i64,
    last_error: Option<String>,
    /// Set when this is a replayed dead letter: its offset in the dead-letter topic.
    replay_of: Option<Offset>,
}

#[derive(Clone, Debug)]
struct Waiting {
    ready_ms: i64,
    deliveries: u32,
    last_error: Option<String>,
    replay_of: Option<Offset>,
}

#[derive(Clone, Debug, Default)]
struct PartitionState {
    owner: Option<MemberId>,
    /// The generation at which `owner` got this partition. Requests with an older generation
    /// come from before the hand-over and are fenced off.
    owner_generation: u64,
    /// The next offset to read from the log for a first delivery.
    fetch_offset: Offset,
    committed: Offset,
    acked: OffsetRanges,
    in_flight: BTreeMap<Offset, InFlight>,
    waiting: BTreeMap<Offset, Waiting>,
    dead_lettering: BTreeMap<Offset, Waiting>,
    /// Failures restored from the store for offsets not yet fetched again since a restart.
    prior_failures: BTreeMap<Offset, (u32, Option<String>)>,
}

impl PartitionState {
    fn unacked(&self) -> usize {
        self.in_flight.len() + self.waiting.len() + self.dead_lettering.len()
    }

    fn is_acknowledged(&self, offset: Offset) -> bool {
        offset < self.committed || self.acked.contains(offset)
    }

    fn acknowledge(&mut self, offset: Offset) {
        if offset >= self.committed {
            self.acked.insert(offset);
            self.committed = self.acked.advance_from(self.committed);
        }
    }
}

/// Counters of what the group did since the process started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GroupCounters {
    pub delivered: u64,
    pub redelivered: u64,
    pub acked: u64,
    pub nacked: u64,
    pub expired: u64,
    pub dead_lettered: u64,
    /// Offsets removed by retention before the group read them.
    pub skipped_by_retention: u64,
}

/// What a member learns when it joins or heartbeats.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Assignment {
    pub member_id: MemberId,
    pub generation: u64,
    pub partitions: Vec<PartitionId>,
}

/// An event handed out again (after a nack, an expired deadline, a hand-over, or a replay),
/// already claimed for the member: the runtime reads it and returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redelivery {
    pub position: Position,
    pub deliveries: u32,
    pub deadline_ms: i64,
    /// For a replayed dead letter: where to read it in the dead-letter topic.
    pub replay_of: Option<Offset>,
}

/// What a pull should hand out: claimed redeliveries, then up to `new_events_max` first
/// deliveries read from the partitions in `reads`, each from its offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullPlan {
    pub generation: u64,
    pub redeliveries: Vec<Redelivery>,
    pub reads: Vec<(PartitionId, Offset)>,
    pub new_events_max: u32,
}

/// A first delivery recorded from what the runtime read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstDelivery {
    pub offset: Offset,
    pub deliveries: u32,
    pub deadline_ms: i64,
}

/// An event that used up its deliveries and must be written to the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterDue {
    pub position: Position,
    pub deliveries: u32,
    pub last_error: Option<String>,
    /// `Some` when the event being dead-lettered is itself a replayed dead letter.
    pub replay_of: Option<Offset>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AckOutcome {
    pub acked: u32,
    /// Positions already acknowledged before: accepted, nothing changed.
    pub duplicates: u32,
    /// Milliseconds from delivery to ack of each newly acked event.
    pub latencies_ms: Vec<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NackOutcome {
    pub nacked: u32,
    pub dead_letters: Vec<DeadLetterDue>,
}

/// What `expire` found: events whose ack deadline passed and members whose session ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    pub events: u32,
    pub dead_letters: Vec<DeadLetterDue>,
    pub members: Vec<MemberId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberSnapshot {
    pub member_id: MemberId,
    pub partitions: Vec<PartitionId>,
    pub last_seen_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartitionSnapshot {
    pub partition: PartitionId,
    pub owner: Option<MemberId>,
    pub committed: Offset,
    pub fetched: Offset,
    pub in_flight: usize,
    pub waiting_retry: usize,
    pub pending_replays: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupSnapshot {
    pub generation: u64,
    pub members: Vec<MemberSnapshot>,
    pub partitions: Vec<PartitionSnapshot>,
    pub unacked_events: usize,
    pub counters: GroupCounters,
}

pub struct GroupState {
    topic: TopicName,
    group: GroupName,
    config: GroupConfig,
    created_ms: i64,
    generation: u64,
    members: BTreeMap<MemberId, Session>,
    partitions: Vec<PartitionState>,
    jitter: Jitter,
    /// Partitions whose durable progress changed since the last [`GroupState::take_dirty`].
    dirty: BTreeSet<PartitionId>,
    counters: GroupCounters,
}

impl GroupState {
    /// Rebuilds a group from its stored record. Events that were in flight when the process
    /// stopped are delivered again from `committed`; acknowledged offsets above it are skipped.
    pub fn from_record(record: GroupRecord, jitter_seed: u64) -> Self {
        let partitions = record
            .partitions
            .iter()
            .map(|progress| {
                let mut state = PartitionState {
                    fetch_offset: progress.committed,
                    committed: progress.committed,
                    acked: OffsetRanges::from_range_list(&progress.acked),
                    ..PartitionState::default()
                };
                for failure in &progress.failures {
                    state.prior_failures.insert(
                        failure.offset,
                        (failure.deliveries, failure.last_error.clone()),
                    );
                }
                for replay in &progress.replays {
                    state.waiting.insert(
                        replay.offset,
                        Waiting {
                            ready_ms: i64::MIN,
                            deliveries: 0,
                            last_error: None,
                            replay_of: Some(replay.dead_letter_offset),
                        },
                    );
                }
                state
            })
            .collect();
        GroupState {
            topic: record.topic,
            group: record.group,
            config: record.config,
            created_ms: record.created_ms,
            generation: 0,
            members: BTreeMap::new(),
            partitions,
            jitter: Jitter::new(jitter_seed),
            dirty: BTreeSet::new(),
            counters: GroupCounters::default(),
        }
    }

    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    pub fn group(&self) -> &GroupName {
        &self.group
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    pub fn created_ms(&self) -> i64 {
        self.created_ms
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn partition_count(&self) -> u32 {
        self.partitions.len() as u32
    }

    pub fn counters(&self) -> GroupCounters {
        self.counters
    }

    /// Settings changed through the API. Deadlines already given keep their value.
    pub fn set_config(&mut self, config: GroupConfig) {
        self.config = config;
    }

    pub fn committed(&self, partition: PartitionId) -> Option<Offset> {
        self.partitions.get(partition as usize).map(|p| p.committed)
    }

    pub fn unacked_events(&self) -> usize {
        self.partitions.iter().map(PartitionState::unacked).sum()
    }

    // ----- membership -------------------------------------------------------------------

    /// Adds a member (or refreshes one that rejoins with its id) and rebalances.
    pub fn join(&mut self, member: MemberId, now_ms: i64) -> Result<Assignment, GroupError> {
        if !self.members.contains_key(&member) && self.members.len() >= MEMBERS_MAX {
            return Err(GroupError::TooManyMembers {
                topic: self.topic.clone(),
                group: self.group.clone(),
                members: self.members.len(),
                max: MEMBERS_MAX,
            });
        }
        let new = self
            .members
            .insert(
                member.clone(),
                Session {
                    last_seen_ms: now_ms,
                },
            )
            .is_none();
        if new {
            self.rebalance(now_ms);
        }
        Ok(self.assignment_of(&member))
    }

    /// Refreshes the member's session and tells it its current assignment.
    pub fn heartbeat(&mut self, member: &MemberId, now_ms: i64) -> Result<Assignment, GroupError> {
        self.touch(member, now_ms)?;
        Ok(self.assignment_of(member))
    }

    /// Removes a member; its partitions move to the others and its in-flight events become
    /// available to their new owners at once.
    pub fn leave(&mut self, member: &MemberId, now_ms: i64) -> Result<(), GroupError> {
        if self.members.remove(member).is_none() {
            return Err(self.unknown_member(member));
        }
        self.rebalance(now_ms);
        Ok(())
    }

    fn touch(&mut self, member: &MemberId, now_ms: i64) -> Result<(), GroupError> {
        match self.members.get_mut(member) {
            Some(session) => {
                session.last_seen_ms = session.last_seen_ms.max(now_ms);
                Ok(())
            }
            None => Err(self.unknown_member(member)),
        }
    }

    fn unknown_member(&self, member: &MemberId) -> GroupError {
        GroupError::UnknownMember {
            group: self.group.clone(),
            member: member.clone(),
            session_timeout_ms: self.config.session_timeout_ms,
        }
    }

    fn assignment_of(&self, member: &MemberId) -> Assignment {
        Assignment {
            member_id: member.clone(),
            generation: self.generation,
            partitions: self
                .partitions
                .iter()
                .enumerate()
                .filter(|(_, p)| p.owner.as_ref() == Some(member))
                .map(|(i, _)| i as PartitionId)
                .collect(),
        }
    }

    fn rebalance(&mut self, now_ms: i64) {
        self.generation += 1;
        let members: Vec<MemberId> = self.members.keys().cloned().collect();
        let previous: BTreeMap<PartitionId, MemberId> = self
            .partitions
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.owner.clone().map(|owner| (i as PartitionId, owner)))
            .collect();
        let next = sticky_assign(self.partition_count(), &members, &previous);
        for (index, partition) in self.partitions.iter_mut().enumerate() {
            let new_owner = next.get(&(index as PartitionId)).cloned();
            if new_owner == partition.owner {
                continue;
            }
            partition.owner = new_owner;
            partition.owner_generation = self.generation;
            // What the old owner had in flight goes to the new owner now; a hand-over is not
            // the event's fault, so it is not a failed delivery.
            for (offset, flight) in std::mem::take(&mut partition.in_flight) {
                partition.waiting.insert(
                    offset,
                    Waiting {
                        ready_ms: now_ms,
                        deliveries: flight.deliveries,
                        last_error: flight.last_error,
                        replay_of: flight.replay_of,
                    },
                );
            }
        }
    }

    // ----- delivery ---------------------------------------------------------------------

    /// Plans what `member` receives now: ready redeliveries of its partitions (claimed at
    /// once), then first deliveries within the unacked bound. With `only` and `ordered` (push
    /// delivery), it plans for one partition and keeps its order: nothing new while one of its
    /// events is in flight or waiting for a retry.
    pub fn plan_pull(
        &mut self,
        member: &MemberId,
        events_max: u32,
        only: Option<PartitionId>,
        ordered: bool,
        now_ms: i64,
    ) -> Result<PullPlan, GroupError> {
        self.touch(member, now_ms)?;
        let unacked = self.unacked_events();
        let deadline_ms = now_ms.saturating_add(self.config.ack_wait_ms as i64);
        let mut plan = PullPlan {
            generation: self.generation,
            ..PullPlan::default()
        };
        let mut budget = events_max as usize;
        for (index, partition) in self.partitions.iter_mut().enumerate() {
            let index = index as PartitionId;
            if partition.owner.as_ref() != Some(member) || only.is_some_and(|p| p != index) {
                continue;
            }
            if ordered && !partition.in_flight.is_empty() {
                continue;
            }
            let ready: Vec<Offset> = partition
                .waiting
                .iter()
                .filter(|(_, w)| w.ready_ms <= now_ms)
                .map(|(&offset, _)| offset)
                .take(budget)
                .collect();
            for offset in ready {
                let waiting = partition.waiting.remove(&offset).expect("listed above");
                let deliveries = waiting.deliveries.saturating_add(1);
                partition.in_flight.insert(
                    offset,
                    InFlight {
                        deliveries,
                        delivered_ms: now_ms,
                        deadline_ms,
                        last_error: waiting.last_error,
                        replay_of: waiting.replay_of,
                    },
                );
                plan.redeliveries.push(Redelivery {
                    position: Position {
                        partition: index,
                        offset,
                    },
                    deliveries,
                    deadline_ms,
                    replay_of: waiting.replay_of,
                });
                budget -= 1;
            }
            if ordered && (!partition.waiting.is_empty() || !partition.in_flight.is_empty()) {
                continue;
            }
            plan.reads.push((index, partition.fetch_offset));
        }
        self.counters.redelivered += plan.redeliveries.len() as u64;
        let room = (self.config.unacked_events_max as usize).saturating_sub(unacked);
        plan.new_events_max = budget.min(room) as u32;
        if plan.new_events_max == 0 {
            plan.reads.clear();
        }
        Ok(plan)
    }

    /// Records first deliveries of events the runtime read from `partition` starting at
    /// `from` (the offset the plan gave). Offsets the log no longer had (retention) are
    /// skipped and counted; offsets acknowledged before a restart are skipped silently. Returns
    /// what to hand out, or nothing if the partition changed hands or was fetched meanwhile.
    pub fn record_first_deliveries(
        &mut self,
        member: &MemberId,
        partition: PartitionId,
        from: Offset,
        offsets: &[Offset],
        now_ms: i64,
    ) -> Vec<FirstDelivery> {
        let deadline_ms = now_ms.saturating_add(self.config.ack_wait_ms as i64);
        let Some(state) = self.partitions.get_mut(partition as usize) else {
            return Vec::new();
        };
        if state.owner.as_ref() != Some(member) || state.fetch_offset != from {
            return Vec::new();
        }
        let mut delivered = Vec::with_capacity(offsets.len());
        let mut skipped_by_retention = 0;
        for &offset in offsets {
            if offset < state.fetch_offset {
                continue;
            }
            if offset > state.fetch_offset {
                // Retention removed [fetch_offset, offset) before the group read it.
                skipped_by_retention += offset - state.fetch_offset;
                let removed_from = state.fetch_offset.max(state.committed);
                state.acked.insert_range(removed_from, offset);
                state.committed = state.acked.advance_from(state.committed);
                self.dirty.insert(partition);
            }
            state.fetch_offset = offset + 1;
            if state.is_acknowledged(offset)
                || state.in_flight.contains_key(&offset)
                || state.waiting.contains_key(&offset)
            {
                continue;
            }
            let (failures, last_error) = state.prior_failures.remove(&offset).unwrap_or_default();
            let deliveries = failures.saturating_add(1);
            state.in_flight.insert(
                offset,
                InFlight {
                    deliveries,
                    delivered_ms: now_ms,
                    deadline_ms,
                    last_error,
                    replay_of: None,
                },
            );
            delivered.push(FirstDelivery {
                offset,
                deliveries,
                deadline_ms,
            });
        }
        self.counters.delivered += delivered.len() as u64;
        self.counters.skipped_by_retention += skipped_by_retention;
        delivered
    }

    /// A claimed redelivery whose event is gone from the log (retention) or from the
    /// dead-letter topic: nothing can be delivered, so it counts as done.
    pub fn drop_vanished(&mut self, position: Position) {
        if let Some(state) = self.partitions.get_mut(position.partition as usize)
            && let Some(flight) = state.in_flight.remove(&position.offset)
        {
            if flight.replay_of.is_none() {
                state.acknowledge(position.offset);
            }
            self.counters.skipped_by_retention += 1;
            self.dirty.insert(position.partition);
        }
    }

    // ----- acks -------------------------------------------------------------------------

    /// Checks that `member` may act on `position` with `generation`.
    fn check_owner(
        &self,
        member: &MemberId,
        generation: u64,
        position: Position,
    ) -> Result<&PartitionState, GroupError> {
        if generation > self.generation {
            return Err(GroupError::FutureGeneration {
                generation,
                current: self.generation,
            });
        }
        let state = self.partitions.get(position.partition as usize).ok_or(
            GroupError::PartitionNotFound {
                topic: self.topic.clone(),
                partition: position.partition,
                partitions: self.partition_count(),
            },
        )?;
        if state.owner.as_ref() != Some(member) {
            return Err(GroupError::NotOwner {
                member: member.clone(),
                partition: position.partition,
                owner: state.owner.clone(),
            });
        }
        if generation < state.owner_generation {
            return Err(GroupError::StaleGeneration {
                partition: position.partition,
                generation,
                assigned_at: state.owner_generation,
                current: self.generation,
            });
        }
        Ok(state)
    }

    fn check_positions(
        &mut self,
        member: &MemberId,
        generation: u64,
        positions: &[Position],
        now_ms: i64,
    ) -> Result<(), GroupError> {
        if positions.len() > POSITIONS_PER_REQUEST_MAX {
            return Err(GroupError::TooManyPositions {
                count: positions.len(),
                max: POSITIONS_PER_REQUEST_MAX,
            });
        }
        self.touch(member, now_ms)?;
        for &position in positions {
            let state = self.check_owner(member, generation, position)?;
            let known = state.in_flight.contains_key(&position.offset)
                || state.waiting.contains_key(&position.offset)
                || state.dead_lettering.contains_key(&position.offset)
                || state.is_acknowledged(position.offset);
            if !known {
                return Err(GroupError::NotDelivered {
                    partition: position.partition,
                    offset: position.offset,
                    fetched: state.fetch_offset,
                });
            }
        }
        Ok(())
    }

    /// Acknowledges events. The whole request is checked first (member, ownership,
    /// generation, positions); then every position is applied. Acking an already acknowledged
    /// position is accepted and counted as a duplicate.
    pub fn ack(
        &mut self,
        member: &MemberId,
        generation: u64,
        positions: &[Position],
        now_ms: i64,
    ) -> Result<AckOutcome, GroupError> {
        self.check_positions(member, generation, positions, now_ms)?;
        let mut outcome = AckOutcome::default();
        for &position in positions {
            let state = &mut self.partitions[position.partition as usize];
            if let Some(flight) = state.in_flight.remove(&position.offset) {
                outcome
                    .latencies_ms
                    .push(now_ms.saturating_sub(flight.delivered_ms).max(0) as u64);
                if flight.replay_of.is_none() {
                    state.acknowledge(position.offset);
                }
            } else if let Some(waiting) = state.waiting.remove(&position.offset) {
                // Acked after a nack or a missed deadline: the consumer did finish it.
                if waiting.replay_of.is_none() {
                    state.acknowledge(position.offset);
                }
            } else {
                outcome.duplicates += 1;
                continue;
            }
            outcome.acked += 1;
            self.dirty.insert(position.partition);
        }
        self.counters.acked += u64::from(outcome.acked);
        Ok(outcome)
    }

    /// Gives events back for a retry after `delay_ms` (or the policy's backoff when absent),
    /// or dead-letters those that used up their deliveries.
    pub fn nack(
        &mut self,
        member: &MemberId,
        generation: u64,
        positions: &[Position],
        delay_ms: Option<u64>,
        error: Option<&str>,
        now_ms: i64,
    ) -> Result<NackOutcome, GroupError> {
        if let Some(delay_ms) = delay_ms
            && delay_ms > limits::RETRY_DELAY_MS_MAX
        {
            return Err(GroupError::DelayTooLong {
                delay_ms,
                max_ms: limits::RETRY_DELAY_MS_MAX,
            });
        }
        self.check_positions(member, generation, positions, now_ms)?;
        for &position in positions {
            let state = &self.partitions[position.partition as usize];
            if !state.in_flight.contains_key(&position.offset) {
                return Err(GroupError::NotInFlight {
                    partition: position.partition,
                    offset: position.offset,
                });
            }
        }
        let error = error.map(truncate_error);
        let mut outcome = NackOutcome::default();
        for &position in positions {
            let flight = self.partitions[position.partition as usize]
                .in_flight
                .remove(&position.offset)
                .expect("checked above");
            let last_error = error.clone().or(flight.last_error);
            outcome.nacked += 1;
            if let Some(due) = self.fail(
                position,
                flight.deliveries,
                last_error,
                flight.replay_of,
                delay_ms,
                now_ms,
            ) {
                outcome.dead_letters.push(due);
            }
        }
        self.counters.nacked += u64::from(outcome.nacked);
        Ok(outcome)
    }

    /// A failed delivery: schedule the retry, or queue the dead letter when deliveries are
    /// used up.
    fn fail(
        &mut self,
        position: Position,
        deliveries: u32,
        last_error: Option<String>,
        replay_of: Option<Offset>,
        delay_ms: Option<u64>,
        now_ms: i64,
    ) -> Option<DeadLetterDue> {
        self.dirty.insert(position.partition);
        let waiting = Waiting {
            ready_ms: now_ms,
            deliveries,
            last_error: last_error.clone(),
            replay_of,
        };
        let state = &mut self.partitions[position.partition as usize];
        if deliveries >= self.config.retry.deliveries_max {
            state.dead_lettering.insert(position.offset, waiting);
            return Some(DeadLetterDue {
                position,
                deliveries,
                last_error,
                replay_of,
            });
        }
        let delay_ms = delay_ms.unwrap_or_else(|| {
            retry_delay_ms(&self.config.retry, deliveries, self.jitter.next_u64())
        });
        state.waiting.insert(
            position.offset,
            Waiting {
                ready_ms: now_ms.saturating_add(delay_ms as i64),
                ..waiting
            },
        );
        None
    }

    /// Extends the ack deadline of events still being worked on. Returns the new deadline.
    pub fn in_progress(
        &mut self,
        member: &MemberId,
        generation: u64,
        positions: &[Position],
        now_ms: i64,
    ) -> Result<i64, GroupError> {
        self.check_positions(member, generation, positions, now_ms)?;
        for &position in positions {
            if !self.partitions[position.partition as usize]
                .in_flight
                .contains_key(&position.offset)
            {
                return Err(GroupError::NotInFlight {
                    partition: position.partition,
                    offset: position.offset,
                });
            }
        }
        let deadline_ms = now_ms.saturating_add(self.config.ack_wait_ms as i64);
        for &position in positions {
            if let Some(flight) = self.partitions[position.partition as usize]
                .in_flight
                .get_mut(&position.offset)
            {
                flight.deadline_ms = deadline_ms;
            }
        }
        Ok(deadline_ms)
    }

    /// Ends sessions that went silent and redelivers events whose ack deadline passed.
    pub fn expire(&mut self, now_ms: i64) -> Expired {
        let mut expired = Expired::default();
        let timeout_ms = self.config.session_timeout_ms as i64;
        let silent: Vec<MemberId> = self
            .members
            .iter()
            .filter(|(_, s)| now_ms.saturating_sub(s.last_seen_ms) > timeout_ms)
            .map(|(m, _)| m.clone())
            .collect();
        if !silent.is_empty() {
            for member in &silent {
                self.members.remove(member);
            }
            self.rebalance(now_ms);
            expired.members = silent;
        }
        let ack_wait_ms = self.config.ack_wait_ms;
        for index in 0..self.partitions.len() {
            let late: Vec<(Offset, InFlight)> = {
                let state = &mut self.partitions[index];
                let offsets: Vec<Offset> = state
                    .in_flight
                    .iter()
                    .filter(|(_, f)| f.deadline_ms <= now_ms)
                    .map(|(&o, _)| o)
                    .collect();
                offsets
                    .into_iter()
                    .filter_map(|o| state.in_flight.remove(&o).map(|f| (o, f)))
                    .collect()
            };
            for (offset, flight) in late {
                expired.events += 1;
                let last_error = flight.last_error.or_else(|| {
                    Some(format!(
                        "not acknowledged within ack_wait_ms = {ack_wait_ms}"
                    ))
                });
                let position = Position {
                    partition: index as PartitionId,
                    offset,
                };
                if let Some(due) = self.fail(
                    position,
                    flight.deliveries,
                    last_error,
                    flight.replay_of,
                    None,
                    now_ms,
                ) {
                    expired.dead_letters.push(due);
                }
            }
        }
        self.counters.expired += u64::from(expired.events);
        expired
    }

    /// The dead letter of `position` is durable in the dead-letter topic: the event is done.
    pub fn dead_lettered(&mut self, position: Position) {
        if let Some(state) = self.partitions.get_mut(position.partition as usize)
            && let Some(entry) = state.dead_lettering.remove(&position.offset)
        {
            if entry.replay_of.is_none() {
                state.acknowledge(position.offset);
            }
            self.counters.dead_lettered += 1;
            self.dirty.insert(position.partition);
        }
    }

    /// Writing the dead letter failed: retry it like a failed delivery, soon.
    pub fn dead_letter_failed(&mut self, position: Position, now_ms: i64) {
        if let Some(state) = self.partitions.get_mut(position.partition as usize)
            && let Some(mut entry) = state.dead_lettering.remove(&position.offset)
        {
            entry.ready_ms =
                now_ms.saturating_add(self.config.retry.backoff_base_ms.max(100) as i64);
            entry.deliveries = entry.deliveries.saturating_sub(1);
            state.waiting.insert(position.offset, entry);
        }
    }

    /// Queues dead letters for redelivery to the group: `(original position, dead-letter
    /// offset)` pairs. Returns how many were queued (a position already pending is skipped).
    pub fn replay(&mut self, dead_letters: &[(Position, Offset)], now_ms: i64) -> u32 {
        let mut queued = 0;
        for &(position, dead_letter_offset) in dead_letters {
            let Some(state) = self.partitions.get_mut(position.partition as usize) else {
                continue;
            };
            let offset = position.offset;
            if state.in_flight.contains_key(&offset)
                || state.waiting.contains_key(&offset)
                || state.dead_lettering.contains_key(&offset)
            {
                continue;
            }
            state.waiting.insert(
                offset,
                Waiting {
                    ready_ms: now_ms,
                    deliveries: 0,
                    last_error: None,
                    replay_of: Some(dead_letter_offset),
                },
            );
            self.dirty.insert(position.partition);
            queued += 1;
        }
        queued
    }

    /// Moves partitions to new positions (`partition → offset`), forgetting what was in
    /// flight or waiting there. Members learn of it by their acks failing for those events.
    pub fn reset(&mut self, positions: &BTreeMap<PartitionId, Offset>) {
        for (&partition, &offset) in positions {
            if let Some(state) = self.partitions.get_mut(partition as usize) {
                state.committed = offset;
                state.fetch_offset = offset;
                state.acked.clear();
                state.in_flight.clear();
                state.waiting.clear();
                state.dead_lettering.clear();
                state.prior_failures.clear();
                self.dirty.insert(partition);
            }
        }
    }

    // ----- persistence and reporting ----------------------------------------------------

    pub fn progress(&self, partition: PartitionId) -> Option<PartitionProgress> {
        let state = self.partitions.get(partition as usize)?;
        let mut failures: Vec<FailureRecord> = Vec::new();
        let mut replays: Vec<ReplayRecord> = Vec::new();
        let mut note =
            |offset: Offset, deliveries: u32, error: &Option<String>, replay_of: Option<Offset>| {
                if let Some(dead_letter_offset) = replay_of {
                    replays.push(ReplayRecord {
                        offset,
                        dead_letter_offset,
                    });
                } else if deliveries > 0 {
                    failures.push(FailureRecord {
                        offset,
                        deliveries,
                        last_error: error.clone(),
                    });
                }
            };
        for (&offset, w) in state.waiting.iter().chain(state.dead_lettering.iter()) {
            note(offset, w.deliveries, &w.last_error, w.replay_of);
        }
        for (&offset, f) in &state.in_flight {
            // A first delivery in flight has not failed yet; a later one has.
            let failed = if f.last_error.is_some() || f.deliveries > 1 {
                f.deliveries - 1
            } else {
                0
            };
            note(offset, failed, &f.last_error, f.replay_of);
        }
        for (&offset, (deliveries, error)) in &state.prior_failures {
            note(offset, *deliveries, error, None);
        }
        failures.sort_by_key(|f| f.offset);
        replays.sort_by_key(|r| r.offset);
        Some(PartitionProgress {
            partition,
            committed: state.committed,
            acked: state.acked.ranges().collect(),
            failures,
            replays,
        })
    }

    /// The progress of every partition changed since the last call, to be saved.
    pub fn take_dirty(&mut self) -> Vec<PartitionProgress> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty.into_iter().filter_map(|p| self.progress(p)).collect()
    }

    /// Marks partitions to be saved again (after a failed save).
    pub fn mark_dirty(&mut self, partitions: impl IntoIterator<Item = PartitionId>) {
        self.dirty.extend(partitions);
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    pub fn snapshot(&self) -> GroupSnapshot {
        let members = self
            .members
            .iter()
            .map(|(member, session)| MemberSnapshot {
                member_id: member.clone(),
                partitions: self.assignment_of(member).partitions,
                last_seen_ms: session.last_seen_ms,
            })
            .collect();
        let partitions = self
            .partitions
            .iter()
            .enumerate()
            .map(|(index, state)| PartitionSnapshot {
                partition: index as PartitionId,
                owner: state.owner.clone(),
                committed: state.committed,
                fetched: state.fetch_offset,
                in_flight: state.in_flight.len(),
                waiting_retry: state.waiting.len(),
                pending_replays: state
                    .waiting
                    .values()
                    .filter(|w| w.replay_of.is_some())
                    .count()
                    + state
                        .in_flight
                        .values()
                        .filter(|f| f.replay_of.is_some())
                        .count(),
            })
            .collect();
        GroupSnapshot {
            generation: self.generation,
            members,
            partitions,
            unacked_events: self.unacked_events(),
            counters: self.counters,
        }
    }

    /// The earliest time something may become due: a deadline, a retry or a session end.
    pub fn next_due_ms(&self) -> Option<i64> {
        let sessions = self.members.values().map(|s| {
            s.last_seen_ms
                .saturating_add(self.config.session_timeout_ms as i64 + 1)
        });
        let partitions = self.partitions.iter().flat_map(|p| {
            p.in_flight
                .values()
                .map(|f| f.deadline_ms)
                .chain(p.waiting.values().map(|w| w.ready_ms))
        });
        sessions.chain(partitions).min()
    }

    /// Whether `member` currently owns a partition with a retry ready at `now_ms`.
    pub fn has_ready_retry(&self, member: &MemberId, now_ms: i64) -> bool {
        self.partitions.iter().any(|p| {
            p.owner.as_ref() == Some(member) && p.waiting.values().any(|w| w.ready_ms <= now_ms)
        })
    }

    /// Where each partition the member owns should be read from next (for long polling).
    pub fn fetch_positions(&self, member: &MemberId) -> Vec<(PartitionId, Offset)> {
        self.partitions
            .iter()
            .enumerate()
            .filter(|(_, p)| p.owner.as_ref() == Some(member))
            .map(|(i, p)| (i as PartitionId, p.fetch_offset))
            .collect()
    }

    pub fn is_member(&self, member: &MemberId) -> bool {
        self.members.contains_key(member)
    }
}

fn truncate_error(error: &str) -> String {
    if error.len() <= NACK_ERROR_BYTES_MAX {
        return error.to_owned();
    }
    let mut end = NACK_ERROR_BYTES_MAX;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &error[..end])
}
