//! What only the embedded adapter promises.

use proteus_eventstore::{EventStore, ExpectedVersion, ProposedEvent, StreamName};
use proteus_eventstore_embedded::{EmbeddedConfig, EmbeddedEventStore, FILE_NAME};

#[tokio::test]
async fn the_store_lives_in_one_file_of_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("nested").join("data");
    let store = EmbeddedEventStore::open(&data_dir, EmbeddedConfig::default()).unwrap();
    store
        .append(
            &StreamName::parse("file-1").unwrap(),
            ExpectedVersion::Any,
            vec![ProposedEvent::new("a", "T", &b"{}"[..])],
        )
        .await
        .unwrap();
    store.close().await.unwrap();
    assert!(data_dir.join(FILE_NAME).is_file());
}

#[tokio::test]
async fn the_file_is_locked_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedEventStore::open(dir.path(), EmbeddedConfig::default()).unwrap();
    let error = EmbeddedEventStore::open(dir.path(), EmbeddedConfig::default())
        .err()
        .expect("a second open of the same file fails");
    assert!(error.to_string().contains(FILE_NAME), "{error}");
    drop(store);
    // Dropping the last handle releases it.
    EmbeddedEventStore::open(dir.path(), EmbeddedConfig::default()).unwrap();
}

#[test]
fn zero_limits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for config in [
        EmbeddedConfig {
            write_batch_events_max: 0,
            ..EmbeddedConfig::default()
        },
        EmbeddedConfig {
            queue_writes_max: 0,
            ..EmbeddedConfig::default()
        },
        EmbeddedConfig {
            queue_bytes_max: 0,
            ..EmbeddedConfig::default()
        },
    ] {
        let error = EmbeddedEventStore::open(dir.path(), config).err().unwrap();
        assert!(error.to_string().contains("must be at least 1"), "{error}");
    }
}

/// Set in the child process of [`kill_9_keeps_whole_appends_only`]: the data directory it
/// appends to until it is killed.
const CRASH_CHILD_DIR: &str = "PROTEUS_EVENTSTORE_CRASH_CHILD_DIR";
const CRASH_EVENTS_PER_APPEND: usize = 5;

/// The child: appends from 8 tasks (so group commits hold several appends) and prints `ACK
/// <stream> <append>` once each append returned, until it is killed.
async fn crash_child(dir: &std::path::Path) {
    use std::io::Write;
    let store =
        std::sync::Arc::new(EmbeddedEventStore::open(dir, EmbeddedConfig::default()).unwrap());
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for append in 0.. {
                let stream = StreamName::parse(&format!("crash-{}", (task + append) % 5)).unwrap();
                let id = format!("{}-t{task}-a{append}", std::process::id());
                let events = (0..CRASH_EVENTS_PER_APPEND)
                    .map(|i| ProposedEvent::new(format!("{id}-e{i}"), "T", &b"{\"x\":1}"[..]))
                    .collect();
                store
                    .append(&stream, ExpectedVersion::Any, events)
                    .await
                    .unwrap();
                let mut out = std::io::stdout().lock();
                writeln!(out, "ACK {stream} {id}").unwrap();
                out.flush().unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// A store killed with SIGKILL while 8 tasks append keeps every acknowledged append, and of
/// the others keeps each one whole or not at all; positions and versions stay gapless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_keeps_whole_appends_only() {
    use std::collections::{BTreeMap, HashSet};
    use std::io::BufRead;

    if let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) {
        crash_child(std::path::Path::new(&dir)).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut acked: HashSet<(String, String)> = HashSet::new();
    for cycle in 0..3 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "adapter::kill_9_keeps_whole_appends_only",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD_DIR, dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let wanted = 150 + cycle * 70;
        let mut lines = stdout.lines();
        let mut seen = 0;
        while seen < wanted {
            let Some(Ok(line)) = lines.next() else {
                panic!("the child stopped after {seen} acknowledged appends")
            };
            if let Some(rest) = line.strip_prefix("ACK ") {
                let (stream, id) = rest.split_once(' ').unwrap();
                acked.insert((stream.to_owned(), id.to_owned()));
                seen += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let store = EmbeddedEventStore::open(dir.path(), EmbeddedConfig::default()).unwrap();
        let mut appends: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
        let mut from = 0;
        let mut last_position = 0;
        loop {
            let page = store
                .read_all(
                    from,
                    proteus_eventstore::Direction::Forward,
                    1000,
                    &Default::default(),
                )
                .await
                .unwrap();
            for event in &page.events {
                assert_eq!(event.position, last_position + 1, "no gap in $all");
                last_position = event.position;
                let (append, _) = event.id.rsplit_once("-e").unwrap();
                appends
                    .entry((event.stream.to_string(), append.to_owned()))
                    .or_default()
                    .push(event.version);
            }
            from = page.next_position;
            if page.is_end {
                break;
            }
        }
        for ((stream, append), versions) in &appends {
            assert_eq!(
                versions.len(),
                CRASH_EVENTS_PER_APPEND,
                "cycle {cycle}: append {append} of {stream} is torn"
            );
            assert!(
                versions.windows(2).all(|w| w[1] == w[0] + 1),
                "cycle {cycle}: {append} not consecutive: {versions:?}"
            );
        }
        for key in &acked {
            assert!(
                appends.contains_key(key),
                "cycle {cycle}: acknowledged append {key:?} was lost"
            );
        }
        for stream in 0..5 {
            let page = store
                .read_stream(
                    &StreamName::parse(&format!("crash-{stream}")).unwrap(),
                    0,
                    proteus_eventstore::Direction::Forward,
                    10_000,
                )
                .await
                .unwrap();
            let versions: Vec<u64> = page.events.iter().map(|e| e.version).collect();
            assert_eq!(versions, (0..versions.len() as u64).collect::<Vec<_>>());
        }
        store.close().await.unwrap();
    }
}

struct EmbeddedImporter(EmbeddedEventStore);

#[async_trait::async_trait]
impl proteus_eventstore::import_conformance::Importer for EmbeddedImporter {
    async fn import(
        &self,
        events: Vec<proteus_eventstore::RecordedEvent>,
    ) -> Result<(), proteus_eventstore::EventStoreError> {
        self.0.import(events).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_keep_positions_versions_and_times() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedEventStore::open(dir.path(), EmbeddedConfig::default()).unwrap();
    let importer = EmbeddedImporter(store.clone());
    proteus_eventstore::import_conformance::imports_keep_everything(&store, &importer).await;
    // What was imported is in the file: a reopened store starts after it.
    let everything = |store: EmbeddedEventStore| async move {
        store
            .read_all(
                0,
                proteus_eventstore::Direction::Forward,
                100,
                &Default::default(),
            )
            .await
            .unwrap()
    };
    let before = everything(store.clone()).await;
    drop(importer);
    store.close().await.unwrap();
    drop(store);
    let reopened = EmbeddedEventStore::open(dir.path(), EmbeddedConfig::default()).unwrap();
    let after = everything(reopened.clone()).await;
    assert_eq!(after.events, before.events);
    let next = reopened
        .append(
            &StreamName::parse("after-1").unwrap(),
            ExpectedVersion::NoStream,
            vec![ProposedEvent::new("n", "T", &b"{}"[..])],
        )
        .await
        .unwrap();
    assert_eq!(next.first_position, before.head_position + 1);
}
