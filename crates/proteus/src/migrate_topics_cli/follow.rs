//! `migrate-topics --follow`: after the first pass, rounds that copy what the source appended
//! (topics created meanwhile included) until Ctrl-C or SIGTERM; `run` then makes the last pass.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proteus_log::port::TopicDescription;
use proteus_log::{Offset, PartitionId, TopicConfig, TopicName};

use super::{ImportTarget, Source, chosen, copy_missing, put_topic};
use crate::migrate_cli::{FOLLOW_IDLE_WAIT, FOLLOW_ROUND_FAILURES_MAX, StopSignals};

/// How often a follower says what it copied, at most.
const FOLLOW_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// What a follower has copied: each topic's settings as put in the target, and each
/// partition's end up to which the target holds the source's events.
#[derive(Default)]
struct Followed {
    configs: HashMap<TopicName, TopicConfig>,
    copied_to: HashMap<(TopicName, PartitionId), Offset>,
    /// Events copied since the last report, by topic.
    unreported: BTreeMap<TopicName, u64>,
}

impl Followed {
    fn after(topics: &[TopicDescription]) -> Followed {
        let mut followed = Followed::default();
        for topic in topics {
            followed
                .configs
                .insert(topic.name.clone(), topic.config.clone());
            for bounds in &topic.partitions {
                followed
                    .copied_to
                    .insert((topic.name.clone(), bounds.partition), bounds.next_offset);
            }
        }
        followed
    }

    /// One look at the source: topics new or changed are put in the target, and what each
    /// partition gained since the last look is copied. Returns the number of events copied.
    async fn round(
        &mut self,
        source: &Source,
        target: &Arc<dyn ImportTarget>,
        wanted: &[TopicName],
        batch: u32,
    ) -> Result<u64, String> {
        let topics = source.list_topics().await?;
        let mut copied = 0;
        for topic in chosen(&topics, wanted) {
            if self.configs.get(&topic.name) != Some(&topic.config) {
                put_topic(target, topic).await?;
                self.configs
                    .insert(topic.name.clone(), topic.config.clone());
            }
            for bounds in &topic.partitions {
                let key = (topic.name.clone(), bounds.partition);
                if self.copied_to.get(&key) == Some(&bounds.next_offset) {
                    continue;
                }
                let from = copy_missing(source, target, &topic.name, bounds, batch).await?;
                let events = bounds.next_offset - from;
                self.copied_to.insert(key, bounds.next_offset);
                if events > 0 {
                    *self.unreported.entry(topic.name.clone()).or_default() += events;
                    copied += events;
                }
            }
        }
        Ok(copied)
    }

    fn report(&mut self) {
        if self.unreported.is_empty() {
            return;
        }
        let total: u64 = self.unreported.values().sum();
        let by_topic: Vec<String> = std::mem::take(&mut self.unreported)
            .into_iter()
            .map(|(topic, events)| format!("{topic} {events}"))
            .collect();
        println!("copied {total} more events ({})", by_topic.join(", "));
    }
}

/// Copies what is appended to the source, a round at a time, until SIGINT (Ctrl-C) or SIGTERM.
pub(super) async fn follow(
    source: &Source,
    target: &Arc<dyn ImportTarget>,
    copied: &[TopicDescription],
    wanted: &[TopicName],
    batch: u32,
    stop: &mut StopSignals,
) -> Result<(), String> {
    println!(
        "following new events; Ctrl-C (or SIGTERM) when ready to switch: what is left is copied then, and every partition verified"
    );
    let mut followed = Followed::after(copied);
    let (mut failures, mut reported) = (0, Instant::now());
    loop {
        let wait = match followed.round(source, target, wanted, batch).await {
            Ok(copied) => {
                failures = 0;
                if copied == 0 {
                    FOLLOW_IDLE_WAIT
                } else {
                    Duration::ZERO
                }
            }
            Err(e) => {
                failures += 1;
                if failures >= FOLLOW_ROUND_FAILURES_MAX {
                    followed.report();
                    return Err(format!(
                        "{e} ({failures} rounds in a row failed while following; run migrate-topics again to resume)"
                    ));
                }
                eprintln!("following: {e}; trying again");
                FOLLOW_IDLE_WAIT
            }
        };
        // Said when the copy has caught up, and at least every second while it has not.
        if wait == FOLLOW_IDLE_WAIT || reported.elapsed() >= FOLLOW_REPORT_INTERVAL {
            followed.report();
            reported = Instant::now();
        }
        tokio::select! {
            biased;
            _ = stop.received() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    followed.report();
    Ok(())
}
