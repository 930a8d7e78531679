//! The suite every store that can import runs (`proteus migrate` into it keeps positions,
//! versions, ids and times): the PostgreSQL and embedded stores. Importing is not part of the
//! [`EventStore`] port (a store served to clients never needs it), so each adapter passes its
//! own `import` through [`Importer`]:
//!
//! ```text
//! proteus_eventstore::import_conformance::imports_keep_everything(&*store, &importer).await;
//! ```

use async_trait::async_trait;
use bytes::Bytes;

use crate::conformance::{event, stream};
use crate::error::EventStoreError;
use crate::event::{Direction, ExpectedVersion, ReadFilter, RecordedEvent};
use crate::limits::IMPORT_EVENTS_MAX;
use crate::name::Category;
use crate::store::EventStore;

/// An adapter's import.
#[async_trait]
pub trait Importer: Send + Sync {
    async fn import(&self, events: Vec<RecordedEvent>) -> Result<(), EventStoreError>;
}

/// An event as another store would have recorded it.
fn recorded(name: &str, version: u64, position: u64, id: &str) -> RecordedEvent {
    RecordedEvent {
        stream: stream(name),
        version,
        position,
        id: id.into(),
        event_type: "Imported".into(),
        schema_version: Some(version as u32 + 2),
        data: Bytes::from(format!("{{\"id\":\"{id}\",\"at\":{position}}}")),
        metadata: version
            .is_multiple_of(2)
            .then(|| Bytes::from_static(b"{\"by\":\"migrate\"}")),
        // Recorded long ago, and not in position order's clock: the import keeps it as is.
        recorded_ms: 1_600_000_000_000 + (position as i64 % 3) * 1_000,
    }
}

async fn head(store: &dyn EventStore) -> u64 {
    store
        .read_all(u64::MAX, Direction::Backward, 1, &ReadFilter::default())
        .await
        .unwrap()
        .head_position
}

async fn all(store: &dyn EventStore) -> Vec<RecordedEvent> {
    store
        .read_all(0, Direction::Forward, 1_000, &ReadFilter::default())
        .await
        .unwrap()
        .events
}

/// Expects `import(events)` to be refused as an invalid request whose reason contains
/// `wanted`, with nothing written.
async fn expect_refused(
    store: &dyn EventStore,
    importer: &dyn Importer,
    events: Vec<RecordedEvent>,
    wanted: &str,
) {
    let before = all(store).await;
    match importer.import(events).await {
        Err(EventStoreError::InvalidRequest { reason }) => {
            assert!(
                reason.contains(wanted),
                "{reason:?} does not say {wanted:?}"
            )
        }
        other => panic!("expected a refusal saying {wanted:?}, got {other:?}"),
    }
    assert_eq!(all(store).await, before, "a refused import wrote something");
}

/// `store` must be empty. Imported events read back exactly as recorded elsewhere, positions
/// (gaps included) and times kept, through every read; appends continue after them, retries
/// of imported ids are recognised; every import that does not continue the store is refused
/// whole.
pub async fn imports_keep_everything(store: &dyn EventStore, importer: &dyn Importer) {
    assert_eq!(head(store).await, 0, "the suite needs an empty store");
    let first = vec![
        recorded("order-1", 0, 3, "a"),
        recorded("order-1", 1, 4, "b"),
        recorded("cart-7", 0, 7, "c"),
        recorded("order-1", 2, 9, "d"),
    ];
    importer.import(first.clone()).await.unwrap();
    assert_eq!(all(store).await, first, "the $all feed");
    assert_eq!(head(store).await, 9);
    let order = store
        .read_stream(&stream("order-1"), 0, Direction::Forward, 100)
        .await
        .unwrap();
    assert_eq!(
        order.events,
        vec![first[0].clone(), first[1].clone(), first[3].clone()]
    );
    let cart = store
        .read_category(
            &Category::parse("cart").unwrap(),
            0,
            100,
            &ReadFilter::default(),
        )
        .await
        .unwrap();
    assert_eq!(cart.events, vec![first[2].clone()]);
    let info = store.stream_info(&stream("order-1")).await.unwrap();
    assert_eq!(info.last_version, Some(2));

    // A second import continues where the first ended.
    let second = vec![
        recorded("cart-7", 1, 12, "e"),
        recorded("invoice-2", 0, 13, "f"),
    ];
    importer.import(second.clone()).await.unwrap();
    assert_eq!(head(store).await, 13);

    // Refused whole, each for its own reason.
    let too_many: Vec<RecordedEvent> = (0..=IMPORT_EVENTS_MAX as u64)
        .map(|i| recorded("bulk-1", i, 100 + i, &format!("bulk-{i}")))
        .collect();
    let refusals: Vec<(Vec<RecordedEvent>, &str)> = vec![
        (
            vec![recorded("invoice-2", 1, 13, "g")],
            "not after this store's head 13",
        ),
        (
            vec![
                recorded("fresh-1", 0, 20, "g"),
                recorded("invoice-2", 2, 21, "h"),
            ],
            "stream 'invoice-2' continues at version 1 in this store, but the import starts it at 2",
        ),
        (
            vec![
                recorded("fresh-1", 0, 20, "g"),
                recorded("fresh-1", 2, 21, "h"),
            ],
            "jumps from version 0 to 2",
        ),
        (
            vec![
                recorded("fresh-1", 0, 21, "g"),
                recorded("fresh-2", 0, 20, "h"),
            ],
            "strictly increasing position order",
        ),
        (vec![recorded("invoice-2", 1, 40, "f")], "already in"),
        (too_many, "the most is"),
    ];
    for (events, reason) in refusals {
        expect_refused(store, importer, events, reason).await;
    }
    store
        .delete_stream(&stream("cart-7"), ExpectedVersion::Any)
        .await
        .unwrap();
    expect_refused(
        store,
        importer,
        vec![recorded("cart-7", 2, 30, "i")],
        "stream 'cart-7' is deleted in this store",
    )
    .await;

    // Appends continue after the imported positions and versions, and a retry of an imported
    // event is recognised as one.
    let appended = store
        .append(
            &stream("order-1"),
            ExpectedVersion::Exact(2),
            vec![event("z", "Shipped")],
        )
        .await
        .unwrap();
    assert_eq!(appended.first_version, 3);
    assert!(appended.first_position > 13, "{appended:?}");
    let retried = store
        .append(
            &stream("invoice-2"),
            ExpectedVersion::NoStream,
            vec![crate::event::ProposedEvent {
                schema_version: Some(2),
                metadata: Some(Bytes::from_static(b"{\"by\":\"migrate\"}")),
                ..crate::event::ProposedEvent::new("f", "Imported", &b"{}"[..])
            }],
        )
        .await
        .unwrap();
    assert!(retried.duplicate, "{retried:?}");
    assert_eq!((retried.first_version, retried.first_position), (0, 13));
}
