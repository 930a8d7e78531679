//! Property: writers racing on one stream with exact expected versions, from two stores on one
//! schema (as two processes would), leave one history with no gap and no duplicate, whatever
//! the number of writers and the sizes of their appends.

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use proteus_eventstore::{
    Direction, EventStore, EventStoreError, ExpectedVersion, ProposedEvent, READ_COUNT_MAX,
    StreamName,
};

use crate::support::TestSchema;

/// Each round: how many events each contender proposes (2 to 8 contenders).
fn rounds() -> impl Strategy<Value = Vec<Vec<usize>>> {
    prop::collection::vec(prop::collection::vec(1usize..4, 2..8), 1..8)
}

async fn race(stores: [Arc<dyn EventStore>; 2], rounds: &[Vec<usize>]) {
    let stream = StreamName::parse("race-1").unwrap();
    let mut last: Option<u64> = None;
    let mut history: Vec<String> = Vec::new();
    for (round, contenders) in rounds.iter().enumerate() {
        let expected = last.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        let tasks: Vec<_> = contenders
            .iter()
            .enumerate()
            .map(|(contender, &count)| {
                let proposed: Vec<ProposedEvent> = (0..count)
                    .map(|i| {
                        ProposedEvent::new(
                            format!("r{round}-c{contender}-e{i}"),
                            "Raced",
                            Bytes::from_static(b"{}"),
                        )
                    })
                    .collect();
                let (store, stream) = (stores[contender % 2].clone(), stream.clone());
                tokio::spawn(async move {
                    let result = store.append(&stream, expected, proposed.clone()).await;
                    (proposed, result)
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut losers = Vec::new();
        for task in tasks {
            let (proposed, result) = task.await.unwrap();
            match result {
                Ok(outcome) => winners.push((proposed, outcome)),
                Err(error) => losers.push(error),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one append wins");
        let (proposed, outcome) = &winners[0];
        assert_eq!(outcome.first_version, last.map_or(0, |v| v + 1), "no gap");
        assert_eq!(
            outcome.last_version + 1 - outcome.first_version,
            proposed.len() as u64
        );
        for error in losers {
            assert!(
                matches!(error, EventStoreError::WrongExpectedVersion { actual, .. }
                    if actual == Some(outcome.last_version)),
                "a loser sees the winner's version: {error}"
            );
        }
        history.extend(proposed.iter().map(|e| e.id.to_string()));
        last = Some(outcome.last_version);
    }
    let page = stores[1]
        .read_stream(&stream, 0, Direction::Forward, READ_COUNT_MAX)
        .await
        .unwrap();
    let stored: Vec<String> = page.events.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(
        stored, history,
        "the stream is the winners' events, in order, once"
    );
    let versions: Vec<u64> = page.events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (0..history.len() as u64).collect::<Vec<_>>());
    let positions: Vec<u64> = page.events.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        (1..=history.len() as u64).collect::<Vec<_>>(),
        "the feed has no gap: losers took no position"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn racing_writers_with_exact_versions_leave_one_gapless_history(rounds in rounds()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let schema = TestSchema::new("race");
        runtime.block_on(async {
            let first: Arc<dyn EventStore> = Arc::new(schema.open().await);
            let second: Arc<dyn EventStore> = Arc::new(schema.open().await);
            race([first.clone(), second.clone()], &rounds).await;
            first.close().await.unwrap();
            second.close().await.unwrap();
        });
    }
}
