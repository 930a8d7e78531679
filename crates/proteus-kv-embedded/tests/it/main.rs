//! The embedded store runs the KvStore conformance suite (reopening its file for the
//! durability test), plus what only this adapter promises: its file, its lock, and that every
//! acknowledged commit survives kill -9.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use proteus_kv::conformance::KvHarness;
use proteus_kv::{KvCheck, KvCommit, KvError, KvStore, KvWrite, Namespace};
use proteus_kv_embedded::{EmbeddedKvStore, FILE_NAME};

struct Harness {
    dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        Harness {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join(FILE_NAME)
    }
}

#[async_trait]
impl KvHarness for Harness {
    async fn open(&self) -> Arc<dyn KvStore> {
        Arc::new(EmbeddedKvStore::open(&self.path()).unwrap())
    }

    async fn reopen(&self) -> Option<Arc<dyn KvStore>> {
        Some(Arc::new(EmbeddedKvStore::open(&self.path()).unwrap()))
    }
}

mod conformance {
    use super::Harness;
    proteus_kv::kv_conformance_tests!(Harness::new());
}

fn ns(name: &str) -> Namespace {
    Namespace::parse(name).unwrap()
}

fn put(key: &[u8], value: &[u8]) -> KvCommit {
    KvCommit {
        checks: vec![],
        writes: vec![KvWrite::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        }],
    }
}

#[tokio::test]
async fn the_store_is_the_file_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("data").join(FILE_NAME);
    let store = EmbeddedKvStore::open(&path).unwrap();
    store.commit(&ns("a"), put(b"k", b"v")).await.unwrap();
    drop(store);
    assert!(path.is_file());
    let store = EmbeddedKvStore::open(&path).unwrap();
    assert_eq!(
        store.get_many(&ns("a"), &[b"k".to_vec()]).await.unwrap(),
        vec![Some(b"v".to_vec())]
    );
}

#[tokio::test]
async fn the_file_is_locked_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let store = EmbeddedKvStore::open(&path).unwrap();
    let clone = store.clone();
    let error = EmbeddedKvStore::open(&path)
        .err()
        .expect("a second open of the same file fails");
    assert!(matches!(error, KvError::Unavailable { .. }), "{error:?}");
    assert!(error.to_string().contains(FILE_NAME), "{error}");
    drop(store);
    assert!(
        EmbeddedKvStore::open(&path).is_err(),
        "a clone still holds it"
    );
    drop(clone);
    // Dropping the last handle releases it.
    EmbeddedKvStore::open(&path).unwrap();
}

#[test]
fn a_file_that_is_not_a_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    let error = EmbeddedKvStore::open(&path)
        .err()
        .expect("garbage is not a store");
    assert!(error.to_string().contains(FILE_NAME), "{error}");
}

/// Set in the child process of [`kill_9_keeps_every_acknowledged_commit`]: the file it commits
/// to until it is killed.
const CRASH_CHILD_FILE: &str = "PROTEUS_KV_CRASH_CHILD_FILE";
const CRASH_TASKS: u64 = 4;

fn crash_key(task: u64, number: u64) -> Vec<u8> {
    format!("t{task}/{number:08}").into_bytes()
}

/// A value large enough to span pages, so a torn write would show.
fn crash_value(namespace: &str, task: u64, number: u64) -> Vec<u8> {
    let seed = format!("{namespace}/{task}/{number}");
    seed.bytes()
        .cycle()
        .take(3000 + (number as usize % 5000))
        .collect()
}

/// The child: 4 tasks each commit keys `t<task>/<number>` in order (each commit checks that
/// the previous number is there and this one is not) to a namespace of its own, and print
/// `ACK <namespace> <task> <number>` once a commit returned, until killed.
async fn crash_child(path: &Path) {
    let store = Arc::new(EmbeddedKvStore::open(path).unwrap());
    let namespace = ns(&format!("crash.p{}", std::process::id()));
    let mut tasks = Vec::new();
    for task in 0..CRASH_TASKS {
        let (store, namespace) = (store.clone(), namespace.clone());
        tasks.push(tokio::spawn(async move {
            for number in 0u64.. {
                let mut checks = vec![KvCheck {
                    key: crash_key(task, number),
                    expected: None,
                }];
                if number > 0 {
                    checks.push(KvCheck {
                        key: crash_key(task, number - 1),
                        expected: Some(crash_value(namespace.as_str(), task, number - 1)),
                    });
                }
                let commit = KvCommit {
                    checks,
                    writes: vec![KvWrite::Put {
                        key: crash_key(task, number),
                        value: crash_value(namespace.as_str(), task, number),
                    }],
                };
                store.commit(&namespace, commit).await.unwrap();
                let mut out = std::io::stdout().lock();
                writeln!(out, "ACK {namespace} {task} {number}").unwrap();
                out.flush().unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// A store killed with SIGKILL while 4 tasks commit keeps every acknowledged commit, whole,
/// and each task's keys stay gapless (a commit is there entirely or not at all), over three
/// kill and reopen cycles on the same file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_keeps_every_acknowledged_commit() {
    if let Some(path) = std::env::var_os(CRASH_CHILD_FILE) {
        crash_child(Path::new(&path)).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    // The highest acknowledged number of each (namespace, task).
    let mut acked: BTreeMap<(String, u64), u64> = BTreeMap::new();
    for cycle in 0..3u64 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kill_9_keeps_every_acknowledged_commit",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD_FILE, &path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let wanted = 120 + cycle * 60;
        let mut lines = stdout.lines();
        let mut seen = 0;
        while seen < wanted {
            let Some(Ok(line)) = lines.next() else {
                panic!("cycle {cycle}: the child stopped after {seen} acknowledged commits")
            };
            let Some(rest) = line.strip_prefix("ACK ") else {
                continue;
            };
            let mut parts = rest.split(' ');
            let (namespace, task, number) = (
                parts.next().unwrap().to_owned(),
                parts.next().unwrap().parse::<u64>().unwrap(),
                parts.next().unwrap().parse::<u64>().unwrap(),
            );
            let highest = acked.entry((namespace, task)).or_insert(number);
            *highest = (*highest).max(number);
            seen += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let store = EmbeddedKvStore::open(&path).unwrap();
        for ((namespace, task), highest) in &acked {
            let namespace = ns(namespace);
            let prefix = format!("t{task}/").into_bytes();
            let mut numbers = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = store
                    .scan(&namespace, &prefix, after.as_deref(), 1000)
                    .await
                    .unwrap();
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                for (key, value) in page {
                    let number: u64 = std::str::from_utf8(&key[prefix.len()..])
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!(
                        value == crash_value(namespace.as_str(), *task, number),
                        "cycle {cycle}: the value of {namespace} t{task}/{number} is torn"
                    );
                    numbers.push(number);
                }
            }
            assert_eq!(
                numbers,
                (0..numbers.len() as u64).collect::<Vec<_>>(),
                "cycle {cycle}: {namespace} t{task} has a gap"
            );
            assert!(
                numbers.len() as u64 > *highest,
                "cycle {cycle}: {namespace} t{task} acknowledged {highest} but kept only {}",
                numbers.len()
            );
        }
        // The reopened store takes commits again.
        store
            .commit(&ns("after-crash"), put(&cycle.to_be_bytes(), b"ok"))
            .await
            .unwrap();
        drop(store);
    }
    assert_eq!(
        acked.len() as u64,
        3 * CRASH_TASKS,
        "every task of every cycle acknowledged commits"
    );
}
