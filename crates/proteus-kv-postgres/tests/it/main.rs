//! The PostgreSQL key-value store: focused tests of what is particular to it (byte order with
//! 0x00 and 0xff keys, agreement with the in-memory store, racing commits, killed connections,
//! a lost COMMIT answer, an unreachable server), then the whole KvStore conformance suite,
//! reopening on the same schema. Each test runs in a schema of its own, dropped afterwards.
//! PostgreSQL must be running (the tests fail, saying how to start it, when it is not).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use proteus_kv::conformance::KvHarness;
use proteus_kv::{
    KvCheck, KvCommit, KvError, KvStore, KvWrite, MemoryKvStore, Namespace, display_key,
};
use proteus_kv_postgres::{KEY_LOCKS_MAX, PostgresKvStore, PostgresKvStoreConfig};
use proteus_postgres::test_support::{TestSchema, admin, unique_name as unique, unreachable, url};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `url` with the sessions' `application_name` set, to find (and kill) a store's backends.
fn with_application_name(url: &str, name: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={name}")
}

async fn drop_schema(schema: &str) {
    admin()
        .await
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

/// A schema of its own, dropped when the harness is.
struct Harness {
    schema: TestSchema,
}

impl Harness {
    fn new() -> Self {
        Harness {
            schema: TestSchema::new("proteus_kv"),
        }
    }

    fn config(&self, url: String) -> PostgresKvStoreConfig {
        PostgresKvStoreConfig {
            pool_size_max: 4,
            ..PostgresKvStoreConfig::new(url, self.schema.name.clone())
        }
    }

    async fn open_with(&self, config: PostgresKvStoreConfig) -> PostgresKvStore {
        PostgresKvStore::open(config)
            .await
            .unwrap_or_else(|e| panic!("{}", unreachable(e)))
    }

    async fn store(&self) -> PostgresKvStore {
        self.open_with(self.config(url())).await
    }
}

#[async_trait]
impl KvHarness for Harness {
    async fn open(&self) -> Arc<dyn KvStore> {
        Arc::new(self.store().await)
    }

    /// A new store (its own pool) on the same schema, as after a restart.
    async fn reopen(&self) -> Option<Arc<dyn KvStore>> {
        Some(Arc::new(self.store().await))
    }

    async fn clean_up(&self) {
        drop_schema(&self.schema.name).await;
    }
}

proteus_kv::kv_conformance_tests!(Harness::new());

fn ns(name: &str) -> Namespace {
    Namespace::parse(name).unwrap()
}

fn put(key: &[u8], value: &[u8]) -> KvWrite {
    KvWrite::Put {
        key: key.to_vec(),
        value: value.to_vec(),
    }
}

fn writes(writes: Vec<KvWrite>) -> KvCommit {
    KvCommit {
        checks: vec![],
        writes,
    }
}

fn keys(scanned: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<u8>> {
    scanned.iter().map(|(k, _)| k.clone()).collect()
}

/// Keys with 0x00 and 0xff bytes sort bytewise (`bytea` is memcmp, then length), prefixes of
/// 0xff bytes have no successor, and the empty prefix scans everything.
#[tokio::test]
async fn keys_with_zero_and_ff_bytes_sort_bytewise() {
    let harness = Harness::new();
    let store = harness.store().await;
    let n = ns("bytes");
    let mut all: Vec<Vec<u8>> = vec![
        vec![0x00],
        vec![0x00, 0x00],
        vec![0x00, 0xff],
        vec![0x01],
        vec![0x7f],
        vec![0x80],
        vec![0xfe, 0xff],
        vec![0xff],
        vec![0xff, 0x00],
        vec![0xff, 0xff],
        vec![0xff, 0xff, 0x00],
        vec![0xff, 0xff, 0xff],
    ];
    // Written in reverse so insertion order cannot pass for key order.
    store
        .commit(
            &n,
            writes(all.iter().rev().map(|k| put(k, k)).collect::<Vec<_>>()),
        )
        .await
        .unwrap();
    all.sort();
    let scan = |prefix: Vec<u8>, after: Option<Vec<u8>>| {
        let store = store.clone();
        let n = n.clone();
        async move {
            let got = store
                .scan(&n, &prefix, after.as_deref(), 100)
                .await
                .unwrap();
            for (key, value) in &got {
                assert_eq!(key, value);
            }
            keys(&got)
        }
    };
    assert_eq!(
        scan(vec![], None).await,
        all,
        "the empty prefix, in byte order"
    );
    let starting = |prefix: &[u8]| -> Vec<Vec<u8>> {
        all.iter()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    };
    for prefix in [
        vec![0x00],
        vec![0x00, 0x00],
        vec![0xfe],
        vec![0xff],
        vec![0xff, 0xff],
        vec![0xff, 0xff, 0xff],
        vec![0xff, 0xff, 0xff, 0xff],
        vec![0x7f],
    ] {
        assert_eq!(
            scan(prefix.clone(), None).await,
            starting(&prefix),
            "prefix {}",
            display_key(&prefix)
        );
    }
    assert_eq!(
        scan(vec![0xff], Some(vec![0xff, 0x00])).await,
        vec![
            vec![0xff, 0xff],
            vec![0xff, 0xff, 0x00],
            vec![0xff, 0xff, 0xff]
        ]
    );
    assert_eq!(
        scan(vec![], Some(vec![0xff, 0xff, 0xff])).await,
        Vec::<Vec<u8>>::new()
    );
    assert_eq!(
        scan(vec![0x00], Some(vec![])).await,
        starting(&[0x00]),
        "an `after` before the prefix is ignored"
    );
    assert_eq!(
        scan(vec![0x00], Some(vec![0x00, 0xff, 0x00])).await,
        Vec::<Vec<u8>>::new(),
        "an `after` past every key of the prefix"
    );
    // Paging one entry at a time visits every key once, in order.
    let mut paged = Vec::new();
    loop {
        let page = store
            .scan(&n, &[], paged.last().map(Vec::as_slice), 1)
            .await
            .unwrap();
        let Some((key, _)) = page.into_iter().next() else {
            break;
        };
        paged.push(key);
    }
    assert_eq!(paged, all);
    harness.clean_up().await;
}

/// xorshift64*: a fixed pseudo-random sequence, so a failure replays.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, lengths: std::ops::RangeInclusive<usize>) -> Vec<u8> {
        const ALPHABET: [u8; 6] = [0x00, 0x01, 0x61, 0x7f, 0x80, 0xff];
        let length = lengths.start() + self.below(lengths.end() - lengths.start() + 1);
        (0..length)
            .map(|_| ALPHABET[self.below(ALPHABET.len())])
            .collect()
    }
}

/// Random commits (checks that mostly hold, puts, deletes, repeated keys), reads and scans
/// (prefixes and `after` keys of 0x00 and 0xff bytes, small limits) and clears give exactly
/// what the in-memory store gives.
#[tokio::test]
async fn agrees_with_the_memory_store() {
    let harness = Harness::new();
    let store = harness.store().await;
    let memory = MemoryKvStore::new();
    let namespaces = [ns("a"), ns("b")];
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    for step in 0..400 {
        let n = &namespaces[random.below(2)];
        match random.below(20) {
            0..=9 => {
                let mut checks = Vec::new();
                for _ in 0..random.below(3) {
                    let key = random.bytes(1..=3);
                    let current = memory
                        .get_many(n, std::slice::from_ref(&key))
                        .await
                        .unwrap()
                        .remove(0);
                    let expected = match random.below(5) {
                        0 => None,
                        1 => Some(random.bytes(0..=2)),
                        _ => current,
                    };
                    checks.push(KvCheck { key, expected });
                }
                let writes = (0..1 + random.below(5))
                    .map(|_| {
                        let key = random.bytes(1..=3);
                        if random.below(3) == 0 {
                            KvWrite::Delete { key }
                        } else {
                            KvWrite::Put {
                                key,
                                value: random.bytes(0..=3),
                            }
                        }
                    })
                    .collect();
                let commit = KvCommit { checks, writes };
                let want = memory.commit(n, commit.clone()).await;
                let got = store.commit(n, commit.clone()).await;
                assert_eq!(got, want, "step {step}: {commit:?}");
            }
            10..=12 => {
                let asked: Vec<Vec<u8>> = (0..1 + random.below(6))
                    .map(|_| random.bytes(1..=3))
                    .collect();
                assert_eq!(
                    store.get_many(n, &asked).await,
                    memory.get_many(n, &asked).await,
                    "step {step}: get {asked:?}"
                );
            }
            13..=18 => {
                let prefix = random.bytes(0..=2);
                let after = (random.below(2) == 0).then(|| random.bytes(0..=3));
                let limit = 1 + random.below(8);
                assert_eq!(
                    store.scan(n, &prefix, after.as_deref(), limit).await,
                    memory.scan(n, &prefix, after.as_deref(), limit).await,
                    "step {step}: scan {prefix:?} after {after:?} limit {limit}"
                );
            }
            _ => {
                assert_eq!(
                    store.clear(n).await,
                    memory.clear(n).await,
                    "step {step}: clear"
                );
            }
        }
    }
    for n in &namespaces {
        assert_eq!(
            store.scan(n, &[], None, 10_000).await,
            memory.scan(n, &[], None, 10_000).await
        );
    }
    harness.clean_up().await;
}

/// Many commits racing to create the same key (each expecting it absent), from two stores
/// with pools of their own (as two processes would): exactly one wins each key, and the
/// others get a conflict naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_one_of_racing_creators_wins() {
    const KEYS: usize = 10;
    const RACERS: usize = 8;
    let harness = Harness::new();
    let stores = [harness.store().await, harness.store().await];
    let n = ns("create");
    for round in 0..KEYS {
        let key = format!("key-{round}").into_bytes();
        let start = Arc::new(tokio::sync::Barrier::new(RACERS));
        let mut racers = Vec::new();
        for racer in 0..RACERS {
            let store = stores[racer % 2].clone();
            let (n, key, start) = (n.clone(), key.clone(), start.clone());
            racers.push(tokio::spawn(async move {
                start.wait().await;
                let commit = KvCommit {
                    checks: vec![KvCheck {
                        key: key.clone(),
                        expected: None,
                    }],
                    writes: vec![
                        put(&key, &[racer as u8]),
                        put(format!("winner-of-{round}/{racer}").as_bytes(), b"1"),
                    ],
                };
                match store.commit(&n, commit).await {
                    Ok(()) => Some(racer),
                    Err(KvError::Conflict { key: named, .. }) => {
                        assert_eq!(named, display_key(&key));
                        None
                    }
                    Err(other) => panic!("racer {racer}: {other}"),
                }
            }));
        }
        let mut winners = Vec::new();
        for racer in racers {
            winners.extend(racer.await.unwrap());
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let value = stores[0].get_many(&n, &[key]).await.unwrap().remove(0);
        assert_eq!(value, Some(vec![winners[0] as u8]));
        let marks = stores[1]
            .scan(&n, format!("winner-of-{round}/").as_bytes(), None, 100)
            .await
            .unwrap();
        assert_eq!(marks.len(), 1, "only the winner's other write was applied");
    }
    harness.clean_up().await;
}

/// Commits touching more keys than are locked one by one (so they lock the namespace) race
/// with small ones on the same counter: no increment is lost, no commit deadlocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wide_and_narrow_commits_lose_no_update() {
    const TASKS: u64 = 6;
    const INCREMENTS: u64 = 10;
    let harness = Harness::new();
    let store = harness.store().await;
    let n = ns("wide");
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (store, n) = (store.clone(), n.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..INCREMENTS {
                loop {
                    let read = store
                        .get_many(&n, &[b"counter".to_vec()])
                        .await
                        .unwrap()
                        .remove(0);
                    let counter = read
                        .as_deref()
                        .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
                    let mut writes = vec![put(b"counter", &(counter + 1).to_be_bytes())];
                    // Every other task writes wide commits.
                    if task % 2 == 0 {
                        writes.extend(
                            (0..=KEY_LOCKS_MAX).map(|k| {
                                put(format!("wide/{task}/{k}").as_bytes(), &i.to_be_bytes())
                            }),
                        );
                    }
                    let commit = KvCommit {
                        checks: vec![KvCheck {
                            key: b"counter".to_vec(),
                            expected: read,
                        }],
                        writes,
                    };
                    match store.commit(&n, commit).await {
                        Ok(()) => break,
                        Err(KvError::Conflict { .. }) => continue,
                        Err(other) => panic!("task {task}: {other}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let counter = store
        .get_many(&n, &[b"counter".to_vec()])
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    assert_eq!(
        u64::from_be_bytes(counter.try_into().unwrap()),
        TASKS * INCREMENTS
    );
    let wide = store.scan(&n, b"wide/", None, 10_000).await.unwrap();
    assert_eq!(wide.len(), (TASKS as usize / 2) * (KEY_LOCKS_MAX + 1));
    harness.clean_up().await;
}

/// Terminates every backend of the sessions named `application_name`; returns how many.
async fn kill_backends(admin: &tokio_postgres::Client, application_name: &str) -> i64 {
    admin
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) \
             FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
            &[&application_name],
        )
        .await
        .unwrap()
        .get(0)
}

/// The call after the store's connections were killed either works (the adapter noticed and
/// reconnected) or fails with a retriable error naming `server`; a retry then works.
async fn works_now_or_after_a_retry<T, F, Fut>(what: &str, server: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, KvError>>,
{
    match call().await {
        Ok(value) => value,
        Err(error) => {
            assert!(error.is_retriable(), "{what}: {error:?} is not retriable");
            assert!(
                error
                    .to_string()
                    .contains(&format!("PostgreSQL at {server}")),
                "{what}: {error}"
            );
            call()
                .await
                .unwrap_or_else(|e| panic!("{what}: the retry failed too: {e}"))
        }
    }
}

/// Killing the store's connections (`pg_terminate_backend`) between calls: the next read and
/// commit reconnect (or fail retriably, and their retry works), on new backends.
#[tokio::test]
async fn killed_connections_are_replaced() {
    let harness = Harness::new();
    let application_name = unique("kvkill");
    let server = with_application_name(&url(), &application_name);
    let store = harness.open_with(harness.config(server.clone())).await;
    let admin = admin().await;
    let n = ns("killed");
    store
        .commit(&n, writes(vec![put(b"k", b"1")]))
        .await
        .unwrap();
    for round in 0..3u8 {
        assert!(
            kill_backends(&admin, &application_name).await >= 1,
            "round {round}: the store had a connection to kill"
        );
        let asked = [b"k".to_vec()];
        let got =
            works_now_or_after_a_retry("a read", &server, || store.get_many(&n, &asked)).await;
        assert_eq!(got, vec![Some(vec![b'1' + round])]);

        kill_backends(&admin, &application_name).await;
        let value = [b'2' + round];
        let commit = KvCommit {
            checks: vec![KvCheck {
                key: b"k".to_vec(),
                expected: Some(vec![b'1' + round]),
            }],
            writes: vec![put(b"k", &value)],
        };
        let result = store.commit(&n, commit.clone()).await;
        match result {
            Ok(()) => {}
            Err(error) => {
                assert!(error.is_retriable(), "{error:?}");
                assert!(
                    error
                        .to_string()
                        .contains(&format!("PostgreSQL at {server}")),
                    "{error}"
                );
                // Applied or not, the check makes the retry safe.
                match store.commit(&n, commit).await {
                    Ok(()) | Err(KvError::Conflict { .. }) => {}
                    Err(other) => panic!("the retry failed: {other}"),
                }
            }
        }
        let got = store.get_many(&n, &[b"k".to_vec()]).await.unwrap();
        assert_eq!(got, vec![Some(value.to_vec())]);
    }
    let backends: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&application_name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(backends >= 1, "the store reconnected");
    harness.clean_up().await;
}

/// A commit whose connection is killed while it waits inside its transaction (here for a row
/// another session locked) applies nothing; the adapter runs it again on a new connection,
/// and it completes once the row is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_killed_mid_transaction_is_run_again() {
    let harness = Harness::new();
    let application_name = unique("kvmid");
    let store = PostgresKvStore::open(PostgresKvStoreConfig {
        pool_size_max: 1,
        ..harness.config(with_application_name(&url(), &application_name))
    })
    .await
    .unwrap();
    let n = ns("mid");
    store
        .commit(&n, writes(vec![put(b"k", b"old")]))
        .await
        .unwrap();
    let mut locker = admin().await;
    let locking = locker.transaction().await.unwrap();
    locking
        .query_one(
            &format!(
                "SELECT value FROM \"{}\".kv WHERE namespace = 'mid' AND key = '\\x6b'::bytea FOR UPDATE",
                harness.schema.name
            ),
            &[],
        )
        .await
        .unwrap();
    let commit = tokio::spawn({
        let (store, n) = (store.clone(), n.clone());
        async move {
            store
                .commit(
                    &n,
                    KvCommit {
                        checks: vec![KvCheck {
                            key: b"k".to_vec(),
                            expected: Some(b"old".to_vec()),
                        }],
                        writes: vec![put(b"k", b"new"), put(b"other", b"x")],
                    },
                )
                .await
        }
    });
    let watcher = admin().await;
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE application_name = $1 AND wait_event_type = 'Lock'";
    let wait_for_the_commit = async |watcher: &tokio_postgres::Client| {
        for _ in 0..500 {
            let count: i64 = watcher
                .query_one(waiting, &[&application_name])
                .await
                .unwrap()
                .get(0);
            if count == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the commit never waited for the locked row");
    };
    wait_for_the_commit(&watcher).await;
    assert_eq!(kill_backends(&watcher, &application_name).await, 1);
    // Killed while waiting: nothing applied; the adapter tries again and waits again.
    wait_for_the_commit(&watcher).await;
    let other: i64 = watcher
        .query_one(
            &format!(
                "SELECT count(*) FROM \"{}\".kv WHERE key = '\\x6f74686572'::bytea",
                harness.schema.name
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(other, 0, "the killed attempt applied nothing");
    locking.rollback().await.unwrap();
    commit.await.unwrap().unwrap();
    assert_eq!(
        store
            .get_many(&n, &[b"k".to_vec(), b"other".to_vec()])
            .await
            .unwrap(),
        vec![Some(b"new".to_vec()), Some(b"x".to_vec())]
    );
    harness.clean_up().await;
}

/// A TCP proxy to PostgreSQL that, once armed, forwards the next `COMMIT` and then cuts the
/// connection before PostgreSQL's answer reaches the client.
struct CommitCutter {
    port: u16,
    armed: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
}

impl CommitCutter {
    async fn start(upstream: String) -> CommitCutter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicBool::new(false));
        let (armed_, cut_) = (armed.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&upstream).await.unwrap();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let cutting = Arc::new(AtomicBool::new(false));
                let (armed, cut, cutting_) = (armed_.clone(), cut_.clone(), cutting.clone());
                tokio::spawn(async move {
                    let mut buffer = vec![0; 64 * 1024];
                    while let Ok(read) = client_read.read(&mut buffer).await {
                        if read == 0 {
                            break;
                        }
                        let chunk = &buffer[..read];
                        let commit = chunk.windows(7).any(|w| w == b"COMMIT\0");
                        if commit && armed.swap(false, Ordering::SeqCst) {
                            cutting_.store(true, Ordering::SeqCst);
                            let _ = server_write.write_all(chunk).await;
                            cut.store(true, Ordering::SeqCst);
                            break;
                        }
                        if server_write.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buffer = vec![0; 64 * 1024];
                    while let Ok(read) = server_read.read(&mut buffer).await {
                        if read == 0 || cutting.load(Ordering::SeqCst) {
                            break;
                        }
                        if client_write.write_all(&buffer[..read]).await.is_err() {
                            break;
                        }
                    }
                    // Dropping both halves closes the client's socket.
                });
            }
        });
        CommitCutter { port, armed, cut }
    }
}

/// When the answer to COMMIT is lost, the commit is a retriable `Unavailable` saying it may
/// have been applied; the caller's retry with the same checks is then safe (here it was
/// applied, so the retry is a conflict and nothing is applied twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_answer_is_retriable_and_the_retry_is_safe() {
    let harness = Harness::new();
    let config: tokio_postgres::Config = url().parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("the test URL must name a TCP host, not {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let cutter = CommitCutter::start(format!("{host}:{port}")).await;
    // Plain text on purpose: the cutter finds COMMIT in the bytes it forwards, which TLS (the
    // default `prefer`, when the server has it) would hide.
    let proxied = format!(
        "postgres://{}@127.0.0.1:{}/{}?sslmode=disable",
        config.get_user().unwrap_or("postgres"),
        cutter.port,
        config.get_dbname().unwrap_or("test")
    );
    let store = PostgresKvStore::open(PostgresKvStoreConfig {
        pool_size_max: 1,
        ..harness.config(proxied)
    })
    .await
    .unwrap();
    let n = ns("lost");
    let commit = KvCommit {
        checks: vec![KvCheck {
            key: b"once".to_vec(),
            expected: None,
        }],
        writes: vec![put(b"once", b"1"), put(b"counter", b"1")],
    };
    cutter.armed.store(true, Ordering::SeqCst);
    let error = store.commit(&n, commit.clone()).await.unwrap_err();
    assert!(cutter.cut.load(Ordering::SeqCst), "the COMMIT was cut");
    assert!(error.is_retriable(), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("may or may not have been applied"),
        "{message}"
    );
    // PostgreSQL answered the COMMIT, so it was applied; the retry's check sees it.
    let retried = store.commit(&n, commit).await;
    assert!(
        matches!(retried, Err(KvError::Conflict { .. })),
        "{retried:?}"
    );
    assert_eq!(
        store
            .get_many(&n, &[b"once".to_vec(), b"counter".to_vec()])
            .await
            .unwrap(),
        vec![Some(b"1".to_vec()), Some(b"1".to_vec())]
    );
    harness.clean_up().await;
}

/// An unreachable server is a clear, retriable error naming the URL without its password and
/// saying how to start PostgreSQL.
#[tokio::test]
async fn an_unreachable_server_names_the_url_and_how_to_start_it() {
    let error = PostgresKvStore::open(PostgresKvStoreConfig {
        connect_timeout_ms: 2_000,
        ..PostgresKvStoreConfig::new("postgres://postgres:s3cret@127.0.0.1:1/test", "kv")
    })
    .await
    .unwrap_err();
    assert!(error.is_retriable(), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("postgres://postgres:***@127.0.0.1:1/test"),
        "{message}"
    );
    assert!(!message.contains("s3cret"), "{message}");
    assert!(message.contains("pg_ctlcluster"), "{message}");
}

/// Bad settings are refused as invalid before any connection: the schema name, an empty pool,
/// a malformed URL (its password not echoed).
#[tokio::test]
async fn bad_settings_are_invalid() {
    let refused =
        async |config: PostgresKvStoreConfig, says: &str| match PostgresKvStore::open(config).await
        {
            Err(KvError::Invalid(message)) => {
                assert!(message.contains(says), "{message}");
                assert!(!message.contains("s3cret"), "{message}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        };
    refused(
        PostgresKvStoreConfig::new(url(), "Bad-Name"),
        "invalid schema name",
    )
    .await;
    refused(
        PostgresKvStoreConfig {
            pool_size_max: 0,
            ..PostgresKvStoreConfig::new(url(), "kv")
        },
        "pool_size_max",
    )
    .await;
    refused(
        PostgresKvStoreConfig::new("postgres://u:s3cret@127.0.0.1:5432/test?sslmode=nope", "kv"),
        "is invalid",
    )
    .await;
}

/// A schema migrated by a newer build is refused, naming the versions.
#[tokio::test]
async fn a_schema_from_a_newer_build_is_refused() {
    let harness = Harness::new();
    drop(harness.store().await);
    admin()
        .await
        .batch_execute(&format!(
            "INSERT INTO \"{}\".kv_migrations (version, name) VALUES (99, 'future')",
            harness.schema.name
        ))
        .await
        .unwrap();
    let error = PostgresKvStore::open(harness.config(url()))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("version 99"), "{error}");
    assert!(!error.is_retriable());
    harness.clean_up().await;
}
