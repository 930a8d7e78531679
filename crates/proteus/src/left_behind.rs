//! Start-up warnings for data a server does not serve because a backend moved: a data
//! directory used with the embedded backends before may still hold topics, events, consumer
//! groups or projection definitions that a server configured for NATS or PostgreSQL would
//! otherwise silently hide. Each warning says what is left and the command that moves it; once
//! it is moved, nothing is said. Each check is a read or two of each side, made once at start.

use std::collections::HashSet;
use std::path::Path;

use proteus_eventstore::{Direction, EventStore, EventStoreError, ReadFilter, RecordedEvent};
use proteus_eventstore_embedded::{EmbeddedConfig, EmbeddedEventStore};
use proteus_groups_embedded::EmbeddedGroupStore;
use proteus_groups_service::proteus_groups::GroupStore;
use proteus_log::port::Log;
use proteus_log::{LogError, TopicName};
use proteus_projections::ReadModelStore;
use proteus_projections_embedded::EmbeddedReadModelStore;

use crate::settings::{EventStoreBackend, LogBackend, Settings};

/// The stores a server uses, whose backends may differ from its data directory's.
pub struct Served<'a> {
    pub log: &'a dyn Log,
    pub groups: &'a dyn GroupStore,
    pub read_models: &'a dyn ReadModelStore,
    pub events: &'a dyn EventStore,
}

/// Longest the start-up checks may take together: an embedded file that needs a long repair
/// (left by a crash) or a slow backend must not hold the server's start.
const CHECKS_MS_MAX: u64 = 10_000;

/// Every check below that applies to `settings`: each backend that is not embedded is
/// compared with what the data directory still holds in its embedded counterpart. Bounded by
/// [`CHECKS_MS_MAX`]; past it the checks are abandoned with a warning.
pub async fn warn_of_data_not_served(settings: &Settings, served: Served<'_>) {
    let bound = std::time::Duration::from_millis(CHECKS_MS_MAX);
    check_within(bound, settings, served).await;
}

/// [`warn_of_data_not_served`] bounded by `bound`: whether the checks finished in time.
async fn check_within(bound: std::time::Duration, settings: &Settings, served: Served<'_>) -> bool {
    if tokio::time::timeout(bound, check_all(settings, served))
        .await
        .is_ok()
    {
        return true;
    }
    tracing::warn!(
        "the start-up check for data left in the embedded stores of {} took more than {} ms and was abandoned",
        settings.data_dir.display(),
        bound.as_millis()
    );
    false
}

/// Opens an embedded store off the async threads (opening may repair a file), so the bound
/// of the checks holds even while it runs.
async fn open_blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    data_dir: &Path,
    open: impl FnOnce(&Path) -> Result<T, E> + Send + 'static,
) -> Result<T, String> {
    let dir = data_dir.to_path_buf();
    match tokio::task::spawn_blocking(move || open(&dir)).await {
        Ok(opened) => opened.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// What an embedded store in `data_dir` (its file `file_name`) lists, if it exists, opens
/// and lists at least one thing; a store that cannot be read is not checked (said at debug).
async fn list_embedded<S: Send + 'static, T, E: std::fmt::Display + Send + 'static>(
    data_dir: &Path,
    file_name: &str,
    open: impl FnOnce(&Path) -> Result<S, E> + Send + 'static,
    list: impl AsyncFnOnce(S) -> Result<Vec<T>, E>,
) -> Option<Vec<T>> {
    if !data_dir.join(file_name).is_file() {
        return None;
    }
    let listed = match open_blocking(data_dir, open).await {
        Ok(store) => list(store).await.map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    match listed {
        Ok(items) if items.is_empty() => None,
        Ok(items) => Some(items),
        Err(e) => {
            tracing::debug!(error = %e, file = file_name, "not checking an embedded store");
            None
        }
    }
}

async fn check_all(settings: &Settings, served: Served<'_>) {
    // Shared groups are refused at start-up without a NATS log, so both checks need one.
    if let LogBackend::Nats { url, prefix } = &settings.log {
        warn_of_topics(&settings.data_dir, served.log, url, prefix).await;
        let (backend, groups_to) = match &settings.groups {
            EventStoreBackend::Embedded => ("", None),
            EventStoreBackend::Postgres { url, schema } => (
                "PostgreSQL",
                Some(format!(
                    "{} --groups-schema {schema}",
                    proteus_postgres::redact(url)
                )),
            ),
            EventStoreBackend::Nats { url, prefix } => (
                "NATS",
                Some(format!(
                    "{} --groups-prefix {prefix}",
                    proteus_nats::redact(url)
                )),
            ),
        };
        if let Some(groups_to) = groups_to {
            let command = format!(
                "proteus migrate-topics --from embedded:{} --to {} --to-prefix {prefix} --groups-to {groups_to}",
                settings.data_dir.display(),
                proteus_nats::redact(url)
            );
            warn_of_groups(&settings.data_dir, served.groups, backend, &command).await;
        }
    }
    if let EventStoreBackend::Postgres { .. } = &settings.read_models {
        warn_of_projections(&settings.data_dir, served.read_models).await;
    }
    match &settings.event_store {
        EventStoreBackend::Embedded => {}
        EventStoreBackend::Postgres { url, schema } => {
            let to = format!(
                "--to {} --to-schema {schema}",
                proteus_postgres::redact(url)
            );
            warn_of_events(&settings.data_dir, served.events, "PostgreSQL", &to).await;
        }
        EventStoreBackend::Nats { url, prefix } => {
            let to = format!("--to {} --to-prefix {prefix}", proteus_nats::redact(url));
            warn_of_events(&settings.data_dir, served.events, "NATS", &to).await;
        }
    }
}

/// Most names (of topics, of groups) a warning lists.
const NAMED_MAX: usize = 5;

/// The first [`NAMED_MAX`] of `names`, and how many more there are.
fn named(names: &[String]) -> String {
    let more = names.len().saturating_sub(NAMED_MAX);
    let mut listed = names[..names.len().min(NAMED_MAX)].join(", ");
    if more > 0 {
        listed.push_str(&format!(" and {more} more"));
    }
    listed
}

/// Topics in the embedded log of `data_dir` that this server, its log on NATS, does not serve,
/// or serves without all their events (a copy made while the embedded server still took
/// appends, say): says which, and how to move them (`proteus migrate-topics`). The server's own
/// topics are created on NATS before this runs, so they are not named unless missing there.
async fn warn_of_topics(data_dir: &Path, log: &dyn Log, url: &str, prefix: &str) {
    let embedded = proteus_log_embedded::topics_in(data_dir);
    if embedded.is_empty() {
        return;
    }
    // Only the embedded topics are looked up: listing every NATS topic would cost a request per
    // partition of the whole deployment on each start.
    let (mut left, mut behind) = (Vec::new(), Vec::new());
    for name in &embedded {
        match log.describe_topic(name).await {
            Err(LogError::TopicNotFound { .. }) => left.push(name.to_string()),
            Ok(served) => {
                let missing = events_not_copied(data_dir, name, &served.partitions);
                if missing > 0 {
                    behind.push(format!("{name} ({missing} events)"));
                }
            }
            Err(_) => {}
        }
    }
    let command = format!(
        "stop this server and run: proteus migrate-topics --from embedded:{} --to {} --to-prefix {prefix}",
        data_dir.display(),
        proteus_nats::redact(url)
    );
    if !left.is_empty() {
        tracing::warn!(
            "{} has {} topic(s) in its embedded log that this server does not serve, since its log is on NATS: {}; \
             to move them (with their offsets), {command}",
            data_dir.display(),
            left.len(),
            named(&left),
        );
    }
    if !behind.is_empty() {
        tracing::warn!(
            "{} has events in its embedded log after the end of the same topic on NATS, which this server does not serve, in {} topic(s): {}; \
             to copy them (the copy continues each partition where it ends), {command}",
            data_dir.display(),
            behind.len(),
            named(&behind),
        );
    }
}

/// How many events the embedded log of `data_dir` holds in `topic` past the end of each
/// partition `served` describes (0 when its files cannot be read).
fn events_not_copied(
    data_dir: &Path,
    topic: &TopicName,
    served: &[proteus_log::PartitionDescription],
) -> u64 {
    let Some(ends) = proteus_log_embedded::partition_ends_in(data_dir, topic) else {
        return 0;
    };
    ends.iter()
        .zip(served)
        .map(|(end, partition)| end.saturating_sub(partition.next_offset))
        .sum()
}

/// Consumer groups in the embedded group store of `data_dir` that `shared`, the group store
/// this server uses instead (on `backend`: "NATS" or "PostgreSQL"), lacks: says which, and
/// `command`, which copies them. Two listings: the embedded store's and the shared store's.
async fn warn_of_groups(data_dir: &Path, shared: &dyn GroupStore, backend: &str, command: &str) {
    let listed = list_embedded(
        data_dir,
        proteus_groups_embedded::FILE_NAME,
        EmbeddedGroupStore::open,
        async |store: EmbeddedGroupStore| store.list_groups().await,
    );
    let Some(embedded) = listed.await else {
        return;
    };
    let present: HashSet<(String, String)> = match shared.list_groups().await {
        Ok(records) => records
            .into_iter()
            .map(|r| (r.topic.to_string(), r.group.to_string()))
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "cannot tell whether the embedded groups were copied");
            return;
        }
    };
    let left: Vec<String> = embedded
        .iter()
        .map(|r| (r.topic.to_string(), r.group.to_string()))
        .filter(|key| !present.contains(key))
        .map(|(topic, group)| format!("{group} (topic {topic})"))
        .collect();
    if left.is_empty() {
        return;
    }
    tracing::warn!(
        "{} has {} consumer group(s) in its embedded group store that this server does not serve, since its groups are in {backend}: {}; to copy them with their committed offsets, stop this server and run: {command}",
        data_dir.display(),
        left.len(),
        named(&left),
    );
}

/// Events in the embedded event store of `data_dir` that `served`, the event store this server
/// uses instead (`backend`: "PostgreSQL" or "NATS"), does not hold: says how many and how to
/// move them (`migrate_to`: the `--to …` arguments of `proteus migrate`).
///
/// The check is the embedded store's newest event: a copy made by `proteus migrate` holds its
/// stream at that version or later (or deleted, if it was deleted). Positions are not compared,
/// since a NATS copy numbers them itself. Two reads; an embedded store that cannot be opened
/// (another process holds it) is not checked.
async fn warn_of_events(data_dir: &Path, served: &dyn EventStore, backend: &str, migrate_to: &str) {
    let file = data_dir.join(proteus_eventstore_embedded::FILE_NAME);
    if !file.is_file() {
        return;
    }
    let opened = open_blocking(data_dir, |dir| {
        EmbeddedEventStore::open(dir, EmbeddedConfig::default())
    });
    let embedded = match opened.await {
        Ok(store) => store,
        Err(e) => {
            tracing::debug!(error = %e, "not checking the embedded event store for events left behind");
            return;
        }
    };
    let newest = newest_event(&embedded).await;
    if let Err(e) = embedded.close().await {
        tracing::debug!(error = %e, "closing the embedded event store after the check failed");
    }
    let Some((newest, head_position)) = newest else {
        return;
    };
    let copied = match served.stream_info(&newest.stream).await {
        Ok(info) => info.deleted || info.last_version.is_some_and(|v| v >= newest.version),
        Err(EventStoreError::StreamNotFound { .. }) => false,
        Err(e) => {
            tracing::debug!(error = %e, "cannot tell whether the embedded events were moved");
            return;
        }
    };
    if copied {
        return;
    }
    tracing::warn!(
        "{} has an embedded event store (events up to position {head_position}) that this server does not serve, since its event store is on {backend}; \
         to move its events (with their versions, ids and order) before this server takes writes, stop it and run: proteus migrate --from embedded:{} {migrate_to}",
        data_dir.display(),
        data_dir.display(),
    );
}

/// The newest event of `store` and its head position; `None` when it holds none.
async fn newest_event(store: &EmbeddedEventStore) -> Option<(RecordedEvent, u64)> {
    let page = store
        .read_all(u64::MAX, Direction::Backward, 1, &ReadFilter::default())
        .await
        .map_err(|e| tracing::debug!(error = %e, "cannot read the embedded event store"))
        .ok()?;
    let head_position = page.head_position;
    page.events
        .into_iter()
        .next()
        .map(|event| (event, head_position))
}

/// Projections defined in the embedded read-model store of `data_dir` that `shared`, the
/// read-model store this server uses instead (PostgreSQL), lacks: says which, with the command
/// that creates each again here (its read model then rebuilds from the event store).
async fn warn_of_projections(data_dir: &Path, shared: &dyn ReadModelStore) {
    let listed = list_embedded(
        data_dir,
        proteus_projections_embedded::FILE_NAME,
        EmbeddedReadModelStore::open,
        async |store: EmbeddedReadModelStore| store.list_projections().await,
    );
    let Some(embedded) = listed.await else {
        return;
    };
    let present: HashSet<String> = match shared.list_projections().await {
        Ok(records) => records.into_iter().map(|r| r.name.to_string()).collect(),
        Err(e) => {
            tracing::debug!(error = %e, "cannot tell whether the embedded projections exist here");
            return;
        }
    };
    let left: Vec<_> = embedded
        .iter()
        .filter(|record| !present.contains(record.name.as_str()))
        .collect();
    if left.is_empty() {
        return;
    }
    let names: Vec<String> = left.iter().map(|r| r.name.to_string()).collect();
    let commands: Vec<String> = left
        .iter()
        .take(NAMED_MAX)
        .map(|record| {
            let definition = serde_json::to_string(&record.definition).unwrap_or_default();
            format!(
                "proteus projection create {} --definition '{definition}'",
                record.name
            )
        })
        .collect();
    tracing::warn!(
        "{} has {} projection(s) in its embedded read-model store that this server does not serve, since its read models are in PostgreSQL: {}; \
         create them here and their read models rebuild from the event store: {}",
        data_dir.display(),
        left.len(),
        named(&names),
        commands.join(" ; "),
    );
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use proteus_eventstore::{ExpectedVersion, ProposedEvent, StreamName};
    use proteus_eventstore_postgres::{PostgresEventStore, PostgresEventStoreConfig};
    use proteus_postgres::test_support;

    use super::*;
    use crate::settings::ServeArgs;

    /// A check held up by its backend (here a PostgreSQL table locked by another session, as
    /// `VACUUM FULL` or a long migration would hold it, under a statement timeout of 30 s)
    /// is abandoned at its bound, so the server starts anyway.
    #[tokio::test]
    async fn checks_held_up_by_a_backend_are_abandoned_at_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let embedded = EmbeddedEventStore::open(dir.path(), EmbeddedConfig::default()).unwrap();
        let stream = StreamName::parse("order-1").unwrap();
        let event = ProposedEvent::new("e-1", "OrderPlaced", &b"{}"[..]);
        embedded
            .append(&stream, ExpectedVersion::Any, vec![event])
            .await
            .unwrap();
        embedded.close().await.unwrap();
        drop(embedded);

        let schema = test_support::unique_name("left_behind");
        let settings = Settings::resolve(ServeArgs {
            data_dir: Some(dir.path().into()),
            event_store: Some(test_support::url()),
            event_store_schema: Some(schema.clone()),
            ..ServeArgs::default()
        })
        .unwrap();
        let served_events =
            PostgresEventStore::open(PostgresEventStoreConfig::new(test_support::url(), &schema))
                .await
                .unwrap_or_else(|e| panic!("{}", test_support::unreachable(e)));
        let log = proteus_log_embedded::EmbeddedLog::open(
            proteus_log_embedded::EmbeddedConfig::new(dir.path()),
        )
        .await
        .unwrap();
        let groups = EmbeddedGroupStore::open(dir.path()).unwrap();
        let read_models = EmbeddedReadModelStore::open(dir.path()).unwrap();
        let served = || Served {
            log: &log,
            groups: &groups,
            read_models: &read_models,
            events: &served_events,
        };

        // Unhindered, the check ends well within the bound.
        assert!(check_within(Duration::from_secs(10), &settings, served()).await);

        let locker = test_support::admin().await;
        locker
            .batch_execute(&format!(
                "BEGIN; LOCK TABLE {schema}.streams IN ACCESS EXCLUSIVE MODE"
            ))
            .await
            .unwrap();
        let started = Instant::now();
        let finished = check_within(Duration::from_millis(300), &settings, served()).await;
        let took = started.elapsed();
        locker.batch_execute("ROLLBACK").await.unwrap();
        test_support::drop_schema(&schema);
        assert!(
            !finished,
            "the check finished although its table was locked"
        );
        assert!(
            took < Duration::from_secs(5),
            "the check took {took:?}, far past its bound of 300 ms"
        );
    }
}
