//! The conformance suite of the [`KvStore`] port. Every adapter runs all of it through
//! [`kv_conformance_tests!`](crate::kv_conformance_tests):
//!
//! ```text
//! struct Harness { ... }
//! impl proteus_kv::conformance::KvHarness for Harness { ... }
//! proteus_kv::kv_conformance_tests!(Harness::new());
//! ```
//!
//! Each test takes a fresh harness, opens one store with [`KvHarness::open`], asserts only on
//! what callers of the port observe, and calls [`KvHarness::clean_up`] before it returns. The
//! tests run on a multi-threaded runtime, so the concurrency tests race for real.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use crate::port::{
    COMMIT_BYTES_MAX, COMMIT_WRITES_MAX, GET_KEYS_MAX, KEY_BYTES_MAX, KvCheck, KvCommit, KvError,
    KvStore, KvWrite, NAMESPACE_BYTES_MAX, Namespace, SCAN_ENTRIES_MAX, VALUE_BYTES_MAX,
    display_key,
};

/// What the suite needs from an adapter's test set-up.
#[async_trait]
pub trait KvHarness: Send + Sync {
    /// A store isolated for this test: it holds no key of any other test, in any namespace.
    /// Each test calls it once.
    async fn open(&self) -> Arc<dyn KvStore>;

    /// The store [`open`](KvHarness::open) returned, opened again from the same storage as
    /// after a process restart; the test has dropped every handle of the first one before it
    /// calls this. `None` when the store does not outlive its process (memory): the durability
    /// test then checks nothing.
    async fn reopen(&self) -> Option<Arc<dyn KvStore>> {
        None
    }

    /// Removes anything the test left behind (called at the end of every test).
    async fn clean_up(&self) {}
}

type Entries = Vec<(Vec<u8>, Vec<u8>)>;

pub fn namespace(name: &str) -> Namespace {
    Namespace::parse(name).unwrap()
}

fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> KvWrite {
    KvWrite::Put {
        key: key.as_ref().to_vec(),
        value: value.as_ref().to_vec(),
    }
}

fn delete(key: impl AsRef<[u8]>) -> KvWrite {
    KvWrite::Delete {
        key: key.as_ref().to_vec(),
    }
}

fn absent(key: impl AsRef<[u8]>) -> KvCheck {
    KvCheck {
        key: key.as_ref().to_vec(),
        expected: None,
    }
}

fn holds(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> KvCheck {
    KvCheck {
        key: key.as_ref().to_vec(),
        expected: Some(value.as_ref().to_vec()),
    }
}

fn writes(writes: Vec<KvWrite>) -> KvCommit {
    KvCommit {
        checks: vec![],
        writes,
    }
}

fn keys<K: AsRef<[u8]>>(keys: &[K]) -> Vec<Vec<u8>> {
    keys.iter().map(|k| k.as_ref().to_vec()).collect()
}

fn entry(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> (Vec<u8>, Vec<u8>) {
    (key.as_ref().to_vec(), value.as_ref().to_vec())
}

/// Every entry of `namespace` whose key starts with `prefix`, read page by page.
async fn scan_all(store: &dyn KvStore, namespace: &Namespace, prefix: &[u8]) -> Entries {
    let mut all: Entries = Vec::new();
    loop {
        let after = all.last().map(|(k, _)| k.clone());
        let page = store
            .scan(namespace, prefix, after.as_deref(), SCAN_ENTRIES_MAX)
            .await
            .unwrap();
        let done = page.len() < SCAN_ENTRIES_MAX;
        all.extend(page);
        if done {
            return all;
        }
    }
}

async fn get_one(store: &dyn KvStore, namespace: &Namespace, key: &[u8]) -> Option<Vec<u8>> {
    let mut got = store.get_many(namespace, &[key.to_vec()]).await.unwrap();
    assert_eq!(got.len(), 1, "one value per key");
    got.pop().unwrap()
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, KvError>, what: &str) {
    match result {
        Err(KvError::Invalid(message)) => assert!(!message.is_empty(), "{what}: empty message"),
        other => panic!("{what}: expected KvError::Invalid, got {other:?}"),
    }
}

fn assert_conflict(result: Result<(), KvError>, namespace: &Namespace, key: &[u8]) {
    match result {
        Err(KvError::Conflict {
            namespace: got_namespace,
            key: got_key,
        }) => {
            assert_eq!(
                got_namespace,
                namespace.as_str(),
                "the conflict names the namespace"
            );
            assert_eq!(got_key, display_key(key), "the conflict names the key");
        }
        other => panic!(
            "expected a conflict on {} in {namespace}, got {other:?}",
            display_key(key)
        ),
    }
}

/// Values are kept byte for byte: every byte value, the empty value (which is not an absent
/// key), the largest value allowed; keys too are arbitrary bytes up to the longest allowed.
pub async fn values_round_trip_byte_exact(harness: &impl KvHarness) {
    let store = harness.open().await;
    let ns = namespace("round-trip");
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let reversed: Vec<u8> = (0..=255u8).rev().collect();
    let largest: Vec<u8> = (0..VALUE_BYTES_MAX).map(|i| (i * 7 % 251) as u8).collect();
    let longest_key: Vec<u8> = (0..KEY_BYTES_MAX).map(|i| (i % 256) as u8).collect();
    store
        .commit(
            &ns,
            writes(vec![
                put(b"bytes", &every_byte),
                put(&every_byte, &reversed),
                put(b"empty", b""),
                put(b"largest", &largest),
                put(&longest_key, b"long key"),
                put([0u8], [0u8]),
                put([0xffu8], [0xffu8]),
                put("ünïcode ✓", "välue ✓"),
            ]),
        )
        .await
        .unwrap();
    let got = store
        .get_many(
            &ns,
            &keys(&[
                &b"bytes"[..],
                &every_byte[..],
                b"empty",
                b"largest",
                &longest_key[..],
                &[0u8],
                &[0xffu8],
                "ünïcode ✓".as_bytes(),
            ]),
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 8);
    assert_eq!(
        got[0].as_deref(),
        Some(&every_byte[..]),
        "all 256 byte values"
    );
    assert_eq!(got[1].as_deref(), Some(&reversed[..]), "a binary key");
    assert_eq!(
        got[2].as_deref(),
        Some(&b""[..]),
        "an empty value is present"
    );
    assert!(
        got[3].as_deref() == Some(&largest[..]),
        "the largest value comes back whole ({:?} bytes)",
        got[3].as_ref().map(Vec::len)
    );
    assert_eq!(got[4].as_deref(), Some(&b"long key"[..]), "the longest key");
    assert_eq!(got[5].as_deref(), Some(&[0u8][..]));
    assert_eq!(got[6].as_deref(), Some(&[0xffu8][..]));
    assert_eq!(got[7].as_deref(), Some("välue ✓".as_bytes()));

    // Scans return the same bytes.
    let scanned = store.scan(&ns, b"", None, 100).await.unwrap();
    assert_eq!(scanned.len(), 8);
    for (key, value) in &scanned {
        assert_eq!(
            Some(value),
            get_one(&*store, &ns, key).await.as_ref(),
            "scan and get agree on {}",
            display_key(key)
        );
    }
    drop(store);
    harness.clean_up().await;
}

/// Misses are `None`, in the order of the keys asked; no keys gives no values.
pub async fn misses_are_none_in_order(harness: &impl KvHarness) {
    let store = harness.open().await;
    let ns = namespace("misses");
    assert_eq!(
        store
            .get_many(&ns, &keys(&["never", "written"]))
            .await
            .unwrap(),
        vec![None, None],
        "a namespace never written reads as empty"
    );
    store
        .commit(&ns, writes(vec![put("b", "2"), put("d", "4")]))
        .await
        .unwrap();
    let got = store
        .get_many(&ns, &keys(&["a", "b", "c", "d", "e"]))
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![None, Some(b"2".to_vec()), None, Some(b"4".to_vec()), None]
    );
    let got = store.get_many(&ns, &keys(&["d", "a", "b"])).await.unwrap();
    assert_eq!(got, vec![Some(b"4".to_vec()), None, Some(b"2".to_vec())]);
    assert_eq!(
        store.get_many(&ns, &[]).await.unwrap(),
        Vec::<Option<Vec<u8>>>::new()
    );
    drop(store);
    harness.clean_up().await;
}

/// A key asked several times is answered at each of its places.
pub async fn get_many_answers_duplicate_keys(harness: &impl KvHarness) {
    let store = harness.open().await;
    let ns = namespace("duplicates");
    store
        .commit(&ns, writes(vec![put("k", "v")]))
        .await
        .unwrap();
    let got = store
        .get_many(&ns, &keys(&["k", "missing", "k", "missing", "k"]))
        .await
        .unwrap();
    let v = Some(b"v".to_vec());
    assert_eq!(got, vec![v.clone(), None, v.clone(), None, v]);
    drop(store);
    harness.clean_up().await;
}

/// Writes apply in order: a later write to the same key in one commit wins.
pub async fn a_later_write_to_a_key_wins(harness: &impl KvHarness) {
    let store = harness.open().await;
    let ns = namespace("order");
    store
        .commit(&ns, writes(vec![put("deleted-later", "old")]))
        .await
        .unwrap();
    store
        .commit(
            &ns,
            writes(vec![
                put("twice", "first"),
                put("twice", "second"),
                put("put-then-deleted", "x"),
                delete("put-then-deleted"),
                delete("deleted-then-put"),
                put("deleted-then-put", "back"),
                put("deleted-later", "new"),
                delete("deleted-later"),
            ]),
        )
        .await
        .unwrap();
    let got = store
        .get_many(
            &ns,
            &keys(&[
                "twice",
                "put-then-deleted",
                "deleted-then-put",
                "deleted-later",
            ]),
        )
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![Some(b"second".to_vec()), None, Some(b"back".to_vec()), None]
    );
    assert_eq!(
        scan_all(&*store, &ns, b"").await,
        vec![entry("deleted-then-put", "back"), entry("twice", "second")]
    );
    drop(store);
    harness.clean_up().await;
}

/// Deleting an absent key is not an error; a commit with nothing in it is not either.
pub async fn deleting_an_absent_key_is_not_an_error(harness: &impl KvHarness) {
    let store = harness.open().await;
    let ns = namespace("deletes");
    store
        .commit(&ns, writes(vec![delete("never-written")]))
        .await
        .unwrap();
    store
        .commit(&ns, writes(vec![put("k", "v"), put("other", "o")]))
        .await
        .unwrap();
    store.commit(&ns, writes(vec![delete("k")])).await.unwrap();
    store.commit(&ns, writes(vec![delete("k")])).await.unwrap();
    store.commit(&ns, KvCommit::default()).await.unwrap();
    assert_eq!(
        store
            .get_many(&ns, &keys(&["k", "never-written", "other"]))
            .await
            .unwrap(),
        vec![None, None, Some(b"o".to_vec())]
    );
    drop(store);
    harness.clean_up().await;
}

/// A check that the key is absent holds when it is (never written, or deleted) and conflicts
/// when it is present, even with an empty value.
pub async fn an_absent_check_holds_only_when_the_key_is_absent(harness: &impl KvHarness) {
    let store = harness.open().await;
    let ns = namespace("absent-checks");
    store
        .commit(
            &ns,
            KvCommit {
                checks: vec![absent("k")],
                writes: vec![put("k", "1")],
            },
        )
        .await
        .unwrap();
    assert_eq!(get_one(&*store, &ns, b"k").await, Some(b"1".to_vec()));

    let result = store
        .commit(
            &ns,
            KvCommit {
                checks: vec![absent("k")],
                writes: vec![put("k", "2")],
            },
        )
        .await;
    assert_conflict(result, &ns, b"k");
    assert_eq!(get_one(&*store, &ns, b"k").await, Some(b"1".to_vec()));

    // An empty value is present, not absent.
    store
        .commit(&ns, writes(vec![put("empty", "")]))
        .await
        .unwrap();
    let result = store
        .commit(
            &ns,
            KvCommit {
                checks: vec![absent("empty")],
                writes: vec![put("empty", "x")],
            },
        )
        .await;
    assert_conflict(result, &ns, b"empty");

    // Once deleted, the key is absent again.
    store.commit(&ns, writes(vec![delete("k")])).await.unwrap();
    store
        .commit(
            &ns,
            KvCommit {
                checks: vec![absent("k")],
                writes: vec![put("k", "3")],
            },
        )
        .await
        .unwrap();
    assert_eq!(get_one(&*store, &ns, b"k").await, Some(b"3".to_vec()));
    drop(store);
    harness.clean_up().await;
}

/// A check of a value holds only when the key holds exactly that value.
pub async fn a_value_check_holds_only_on_the_exact_value(harness: &impl KvHarness) {
    let store = harness.open().await;
    let ns = namespace("value-checks");
    store
        .commit(&ns, writes(vec![put("k", "v1"), put("empty", "")]))
        .await
        .unwrap();
    store
        .commit(
            &ns,
            KvCommit {
                checks: vec![holds("k", "v1")],
                writes: vec![put("k", "v2")],
            },
        )
        .await
        .unwrap();
    assert_eq!(get_one(&*store, &ns, b"k").await, Some(b"v2".to_vec()));

    for (key, expected, what) in [
        ("k", &b"v1"[..], "the value it held before"),
        ("k", b"v", "a prefix of the value"),
        ("k", b"v2 ", "a longer value"),
        ("k", b"", "the empty value"),
        ("absent", b"", "an empty value on an absent key"),
        ("absent", b"x", "a value on an absent key"),
        ("empty", b"x", "a value on an empty one"),
    ] {
        let result = store
            .commit(
                &ns,
                KvCommit {
                    checks: vec![holds(key, expected)],
                    writes: vec![put(key, "changed")],
                },
            )
            .await;
        match &result {
            Err(KvError::Conflict { .. }) => {}
            other => panic!("checking {what}: expected a conflict, got {other:?}"),
        }
        assert_conflict(result, &ns, key.as_bytes());
    }
    assert_eq!(
        store
            .get_many(&ns, &keys(&["k", "absent", "empty"]))
            .await
            .unwrap(),
        vec![Some(b"v2".to_vec()), None, Some(Vec::new())]
    );

    // The empty value is a value a check can expect; a commit of checks only writes nothing.
    store
        .commit(
            &ns,
            KvCommit {
                checks: vec![holds("empty", ""), holds("k", "v2"), absent("absent")],
                writes: vec![],
            },
        )
        .await
        .unwrap();
    // Checks on one key and writes on another.
    store
        .commit(
            &ns,
            KvCommit {
                checks: vec![holds("k", "v2")],
                writes: vec![put("elsewhere", "e")],
            },
        )
        .await
        .unwrap();
    assert_eq!(
        get_one(&*store, &ns, b"elsewhere").await,
        Some(b"e".to_vec())
    );
    drop(store);
    harness.clean_up().await;
}

/// When one check fails, none of the writes are applied (not even to other keys) and the
/// conflict names the failing key.
pub async fn a_failed_check_applies_no_write(harness: &impl KvHarness) {
    let store = harness.open().await;
    let ns = namespace("atomic");
    let binary_key = vec![0x00, 0xff, 0x10];
    store
        .commit(
            &ns,
            writes(vec![put("a", "1"), put("b", "2"), put(&binary_key, "bin")]),
        )
        .await
        .unwrap();
    let before = scan_all(&*store, &ns, b"").await;

    // The last of several checks fails.
    let result = store
        .commit(
            &ns,
            KvCommit {
                checks: vec![holds("a", "1"), absent("c"), holds("b", "not-2")],
                writes: vec![
                    put("a", "changed"),
                    delete("b"),
                    put("c", "new"),
                    put("d", "new"),
                ],
            },
        )
        .await;
    assert_conflict(result, &ns, b"b");
    assert_eq!(scan_all(&*store, &ns, b"").await, before);

    // The first fails; a binary key is named in hex.
    let result = store
        .commit(
            &ns,
            KvCommit {
                checks: vec![absent(&binary_key), holds("a", "1")],
                writes: vec![delete(&binary_key), put("e", "new")],
            },
        )
        .await;
    assert_conflict(result, &ns, &binary_key);
    assert_eq!(scan_all(&*store, &ns, b"").await, before);

    // A failed check in one namespace leaves the others as they were.
    let other = namespace("atomic.other");
    store
        .commit(&other, writes(vec![put("a", "x")]))
        .await
        .unwrap();
    let result = store
        .commit(
            &other,
            KvCommit {
                checks: vec![absent("a")],
                writes: vec![put("z", "z")],
            },
        )
        .await;
    assert_conflict(result, &other, b"a");
    assert_eq!(scan_all(&*store, &other, b"").await, vec![entry("a", "x")]);
    assert_eq!(scan_all(&*store, &ns, b"").await, before);
    drop(store);
    harness.clean_up().await;
}

/// Namespaces never see each other: not through gets, checks, scans or clears, not even when
/// one namespace's name starts with another's or a key looks like a namespace suffix.
pub async fn namespaces_are_isolated(harness: &impl KvHarness) {
    let store = harness.open().await;
    let a = namespace("a");
    let a_b = namespace("a.b");
    let a0 = namespace("a0");
    let a_dash = namespace("a-b");
    store
        .commit(&a, writes(vec![put("k", "in a"), put("b.c", "a: b.c")]))
        .await
        .unwrap();
    store
        .commit(&a_b, writes(vec![put("k", "in a.b"), put("c", "a.b: c")]))
        .await
        .unwrap();
    store
        .commit(&a0, writes(vec![put("k", "in a0")]))
        .await
        .unwrap();
    store
        .commit(&a_dash, writes(vec![put([0u8], "in a-b")]))
        .await
        .unwrap();

    assert_eq!(get_one(&*store, &a, b"k").await, Some(b"in a".to_vec()));
    assert_eq!(get_one(&*store, &a_b, b"k").await, Some(b"in a.b".to_vec()));
    assert_eq!(get_one(&*store, &a0, b"k").await, Some(b"in a0".to_vec()));
    assert_eq!(get_one(&*store, &a, b"c").await, None);
    assert_eq!(get_one(&*store, &a_b, b"b.c").await, None);
    assert_eq!(get_one(&*store, &a, &[0u8]).await, None);

    assert_eq!(
        scan_all(&*store, &a, b"").await,
        vec![entry("b.c", "a: b.c"), entry("k", "in a")]
    );
    assert_eq!(
        scan_all(&*store, &a_b, b"").await,
        vec![entry("c", "a.b: c"), entry("k", "in a.b")]
    );
    assert_eq!(scan_all(&*store, &a0, b"").await, vec![entry("k", "in a0")]);
    assert_eq!(
        scan_all(&*store, &a_dash, b"").await,
        vec![entry([0u8], "in a-b")]
    );

    // Checks read their own namespace.
    store
        .commit(
            &a_b,
            KvCommit {
                checks: vec![holds("k", "in a.b"), absent("b.c")],
                writes: vec![put("k", "in a.b, 2")],
            },
        )
        .await
        .unwrap();
    assert_eq!(get_one(&*store, &a, b"k").await, Some(b"in a".to_vec()));

    // Writes and deletes touch their own namespace only.
    store
        .commit(&a, writes(vec![delete("k"), put("new", "n")]))
        .await
        .unwrap();
    assert_eq!(
        get_one(&*store, &a_b, b"k").await,
        Some(b"in a.b, 2".to_vec())
    );
    assert_eq!(get_one(&*store, &a0, b"k").await, Some(b"in a0".to_vec()));
    assert_eq!(get_one(&*store, &a_b, b"new").await, None);

    // Clearing one leaves the others.
    assert_eq!(store.clear(&a).await.unwrap(), 2);
    assert_eq!(scan_all(&*store, &a, b"").await, vec![]);
    assert_eq!(scan_all(&*store, &a_b, b"").await.len(), 2);
    assert_eq!(scan_all(&*store, &a0, b"").await.len(), 1);
    assert_eq!(scan_all(&*store, &a_dash, b"").await.len(), 1);
    assert_eq!(store.clear(&a_b).await.unwrap(), 2);
    assert_eq!(scan_all(&*store, &a0, b"").await, vec![entry("k", "in a0")]);
    assert_eq!(
        scan_all(&*store, &a_dash, b"").await,
        vec![entry([0u8], "in a-b")]
    );

    // The longest namespaces allowed, differing in their last byte only.
    let longest = namespace(&"n".repeat(NAMESPACE_BYTES_MAX));
    let neighbour = namespace(&format!("{}o", "n".repeat(NAMESPACE_BYTES_MAX - 1)));
    store
        .commit(&longest, writes(vec![put("k", "longest")]))
        .await
        .unwrap();
    store
        .commit(&neighbour, writes(vec![put("k", "neighbour")]))
        .await
        .unwrap();
    assert_eq!(
        scan_all(&*store, &longest, b"").await,
        vec![entry("k", "longest")]
    );
    assert_eq!(store.clear(&longest).await.unwrap(), 1);
    assert_eq!(
        get_one(&*store, &neighbour, b"k").await,
        Some(b"neighbour".to_vec())
    );
    drop(store);
    harness.clean_up().await;
}

/// Scans return entries in ascending order of key bytes (unsigned, shorter first), whatever
/// the bytes, with their values.
pub async fn scans_are_ordered_by_key_bytes(harness: &impl KvHarness) {
    let store = harness.open().await;
    let ns = namespace("order-by-bytes");
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
        vec![0xff, 0xff, 0xff],
        b"A".to_vec(),
        b"Z".to_vec(),
        b"a".to_vec(),
        b"a\0".to_vec(),
        b"a\0b".to_vec(),
        b"a b".to_vec(),
        b"a-b".to_vec(),
        b"a.b".to_vec(),
        b"a/b".to_vec(),
        b"aa".to_vec(),
        b"ab".to_vec(),
        b"b".to_vec(),
        b"\xc3\xa9".to_vec(), // é
        b"e".to_vec(),
        b"10".to_vec(),
        b"9".to_vec(),
    ];
    // Written in an order that is not the key order, over two commits.
    all.reverse();
    let (first, second) = all.split_at(all.len() / 2);
    for half in [second, first] {
        store
            .commit(
                &ns,
                writes(half.iter().map(|k| put(k, value_of(k))).collect()),
            )
            .await
            .unwrap();
    }
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    let expected: Entries = sorted.iter().map(|k| entry(k, value_of(k))).collect();
    assert_eq!(
        store.scan(&ns, b"", None, SCAN_ENTRIES_MAX).await.unwrap(),
        expected
    );
    // Page by page, one entry at a time, gives the same.
    let mut paged: Entries = Vec::new();
    loop {
        let after = paged.last().map(|(k, _)| k.clone());
        let page = store.scan(&ns, b"", after.as_deref(), 1).await.unwrap();
        assert!(page.len() <= 1);
        if page.is_empty() {
            break;
        }
        paged.extend(page);
    }
    assert_eq!(paged, expected);
    drop(store);
    harness.clean_up().await;
}

fn value_of(key: &[u8]) -> Vec<u8> {
    let mut value = b"value of ".to_vec();
    value.extend_from_slice(key);
    value
}

/// A scan returns exactly the keys that start with its prefix, whatever the bytes around it.
pub async fn scans_filter_by_prefix(harness: &impl KvHarness) {
    let store = harness.open().await;
    let ns = namespace("prefixes");
    let all: Vec<Vec<u8>> = vec![
        b"user".to_vec(),
        b"user.".to_vec(),
        b"user/".to_vec(),
        b"user/\0".to_vec(),
        b"user/a".to_vec(),
        b"user/b/c".to_vec(),
        b"user/\xff".to_vec(),
        b"user/\xff\xff".to_vec(),
        b"user0".to_vec(),
        b"usex".to_vec(),
        b"use".to_vec(),
        b"Suser/a".to_vec(),
        vec![0x00],
        vec![0x00, 0x01],
        vec![0x01],
        vec![0xfe],
        vec![0xfe, 0xff],
        vec![0xff],
        vec![0xff, 0x00],
        vec![0xff, 0xff],
        vec![0xff, 0xff, 0x01],
    ];
    store
        .commit(
            &ns,
            writes(all.iter().map(|k| put(k, value_of(k))).collect()),
        )
        .await
        .unwrap();
    let matching = |prefix: &[u8]| -> Entries {
        let mut keys: Vec<&Vec<u8>> = all.iter().filter(|k| k.starts_with(prefix)).collect();
        keys.sort();
        keys.into_iter().map(|k| entry(k, value_of(k))).collect()
    };
    for prefix in [
        &b""[..],
        b"user/",
        b"user",
        b"user/\xff",
        b"user/b/c",
        b"use",
        b"u",
        b"nothing",
        &[0x00],
        &[0xff],
        &[0xff, 0xff],
        &[0xfe],
    ] {
        let got = store
            .scan(&ns, prefix, None, SCAN_ENTRIES_MAX)
            .await
            .unwrap();
        assert_eq!(got, matching(prefix), "prefix {}", display_key(prefix));
        assert!(
            got.iter().all(|(k, _)| k.starts_with(prefix)),
            "prefix {}",
            display_key(prefix)
        );
    }
    assert_eq!(
        scan_all(&*store, &ns, b"user/").await.len(),
        6,
        "user/ itself and its five children"
    );
    // The longest prefix allowed matches the longest key.
    let longest: Vec<u8> = vec![b'L'; KEY_BYTES_MAX];
    store
        .commit(&ns, writes(vec![put(&longest, "longest")]))
        .await
        .unwrap();
    assert_eq!(
        store.scan(&ns, &longest, None, 10).await.unwrap(),
        vec![entry(&longest, "longest")]
    );
    drop(store);
    harness.clean_up().await;
}

/// Paging with `after` over more entries than a page returns every key exactly once, in
/// order; `after` need not be a stored key; `after` past the prefix's keys gives nothing.
pub async fn scans_page_after_the_last_key_seen(harness: &impl KvHarness) {
    let store = harness.open().await;
    let ns = namespace("paging");
    let inside: Vec<Vec<u8>> = (0..250u32)
        .map(|i| format!("p/{:04}", i * 3).into_bytes())
        .chain([b"p/".to_vec(), b"p/0000\0".to_vec(), b"p/\xff".to_vec()])
        .collect();
    let outside: Vec<Vec<u8>> = vec![
        b"p".to_vec(),
        b"p.".to_vec(),
        b"p0".to_vec(),
        b"o/9999".to_vec(),
        b"q/0000".to_vec(),
    ];
    store
        .commit(
            &ns,
            writes(
                inside
                    .iter()
                    .chain(&outside)
                    .map(|k| put(k, value_of(k)))
                    .collect(),
            ),
        )
        .await
        .unwrap();
    let mut expected: Vec<Vec<u8>> = inside.clone();
    expected.sort();

    for limit in [1, 7, 100, 252, 253, 254, SCAN_ENTRIES_MAX] {
        let mut seen: Vec<Vec<u8>> = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        let mut pages = 0;
        loop {
            let page = store
                .scan(&ns, b"p/", after.as_deref(), limit)
                .await
                .unwrap();
            assert!(page.len() <= limit, "a page holds at most {limit} entries");
            pages += 1;
            assert!(pages <= expected.len() + 2, "paging does not end");
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, value) in page {
                assert_eq!(value, value_of(&key));
                seen.push(key);
            }
        }
        assert_eq!(seen, expected, "limit {limit}: every key once, in order");
        let unique: BTreeSet<&Vec<u8>> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len());
    }

    // `after` between stored keys, equal to one, or a prefix of one.
    let got = store.scan(&ns, b"p/", Some(b"p/0004"), 2).await.unwrap();
    assert_eq!(
        got.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        vec![b"p/0006".to_vec(), b"p/0009".to_vec()]
    );
    let got = store.scan(&ns, b"p/", Some(b"p/0000"), 2).await.unwrap();
    assert_eq!(
        got.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        vec![b"p/0000\0".to_vec(), b"p/0003".to_vec()]
    );
    let got = store.scan(&ns, b"p/", Some(b"p/"), 1).await.unwrap();
    assert_eq!(got, vec![entry("p/0000", value_of(b"p/0000"))]);
    // `after` before the prefix's keys starts at the first of them.
    let got = store.scan(&ns, b"p/", Some(b"a"), 2).await.unwrap();
    assert_eq!(
        got.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        vec![b"p/".to_vec(), b"p/0000".to_vec()]
    );
    let got = store.scan(&ns, b"p/", Some(b"p"), 1).await.unwrap();
    assert_eq!(got, vec![entry("p/", value_of(b"p/"))]);
    // `after` at or past the last of the prefix's keys gives nothing.
    for after in [&b"p/\xff"[..], b"p/\xff\xff", b"p0", b"q", b"\xff\xff\xff"] {
        assert_eq!(
            store.scan(&ns, b"p/", Some(after), 10).await.unwrap(),
            vec![],
            "after {}",
            display_key(after)
        );
    }
    drop(store);
    harness.clean_up().await;
}

/// A scan returns at most `limit` entries, the first ones in key order.
pub async fn scans_respect_the_limit(harness: &impl KvHarness) {
    let store = harness.open().await;
    let ns = namespace("limits-of-scans");
    assert_eq!(
        store.scan(&ns, b"", None, 10).await.unwrap(),
        vec![],
        "an empty namespace scans empty"
    );
    let all: Vec<Vec<u8>> = (0..30u8).map(|i| vec![b'k', i]).collect();
    store
        .commit(&ns, writes(all.iter().map(|k| put(k, [k[1]])).collect()))
        .await
        .unwrap();
    for limit in [1, 2, 29, 30, 31, SCAN_ENTRIES_MAX] {
        let got = store.scan(&ns, b"k", None, limit).await.unwrap();
        let expected: Entries = all.iter().take(limit).map(|k| entry(k, [k[1]])).collect();
        assert_eq!(got, expected, "limit {limit}");
    }
    let got = store.scan(&ns, b"k", Some(&[b'k', 10]), 5).await.unwrap();
    assert_eq!(
        got.iter().map(|(k, _)| k[1]).collect::<Vec<_>>(),
        vec![11, 12, 13, 14, 15]
    );
    drop(store);
    harness.clean_up().await;
}

/// `clear` removes every key of its namespace, returns how many there were, and touches no
/// other namespace; the namespace can be written again afterwards.
pub async fn clear_empties_only_its_namespace(harness: &impl KvHarness) {
    let store = harness.open().await;
    let ns = namespace("clear.me");
    let neighbours = [
        namespace("clear"),
        namespace("clear.me.too"),
        namespace("clear.mf"),
        namespace("clear.m"),
    ];
    assert_eq!(store.clear(&ns).await.unwrap(), 0, "never written");
    for other in &neighbours {
        store
            .commit(
                other,
                writes(vec![put("k", other.as_str()), put([0xff], "x")]),
            )
            .await
            .unwrap();
    }
    store
        .commit(
            &ns,
            writes(
                (0..40u32)
                    .map(|i| put(i.to_be_bytes(), i.to_string()))
                    .chain([put([0x00], ""), put([0xff; 3], "ff")])
                    .collect(),
            ),
        )
        .await
        .unwrap();
    // Deleted keys are not counted.
    store
        .commit(
            &ns,
            writes(vec![delete(0u32.to_be_bytes()), delete("absent")]),
        )
        .await
        .unwrap();
    assert_eq!(store.clear(&ns).await.unwrap(), 41);
    assert_eq!(scan_all(&*store, &ns, b"").await, vec![]);
    assert_eq!(
        store
            .get_many(&ns, &keys(&[1u32.to_be_bytes().to_vec(), vec![0x00]]))
            .await
            .unwrap(),
        vec![None, None]
    );
    assert_eq!(store.clear(&ns).await.unwrap(), 0, "already empty");
    for other in &neighbours {
        assert_eq!(
            scan_all(&*store, other, b"").await,
            vec![entry("k", other.as_str()), entry([0xff], "x")],
            "{other} is untouched"
        );
    }
    // Written again after a clear; checks see the cleared keys as absent.
    store
        .commit(
            &ns,
            KvCommit {
                checks: vec![absent(1u32.to_be_bytes())],
                writes: vec![put("again", "a")],
            },
        )
        .await
        .unwrap();
    assert_eq!(scan_all(&*store, &ns, b"").await, vec![entry("again", "a")]);
    assert_eq!(store.clear(&ns).await.unwrap(), 1);
    drop(store);
    harness.clean_up().await;
}

/// Every limit is refused with [`KvError::Invalid`], and a refused commit changes nothing,
/// not even its valid writes.
pub async fn limits_are_refused_and_change_nothing(harness: &impl KvHarness) {
    let store = harness.open().await;
    let ns = namespace("limits");
    store
        .commit(&ns, writes(vec![put("kept", "before")]))
        .await
        .unwrap();
    let before = scan_all(&*store, &ns, b"").await;
    let marker = || put("kept", "changed");
    let too_long_key = vec![b'x'; KEY_BYTES_MAX + 1];

    let refused: Vec<(&str, KvCommit)> = vec![
        (
            "too many writes",
            writes(
                std::iter::once(marker())
                    .chain((0..COMMIT_WRITES_MAX as u32).map(|i| put(i.to_be_bytes(), "v")))
                    .collect(),
            ),
        ),
        (
            "too many writes and checks together",
            KvCommit {
                checks: vec![absent("c1"), absent("c2")],
                writes: std::iter::once(marker())
                    .chain((1..COMMIT_WRITES_MAX as u32 - 1).map(|i| put(i.to_be_bytes(), "v")))
                    .collect(),
            },
        ),
        (
            "a too large value",
            writes(vec![marker(), put("big", vec![1u8; VALUE_BYTES_MAX + 1])]),
        ),
        (
            "too many bytes in one commit",
            writes(
                std::iter::once(marker())
                    .chain(
                        (0..(COMMIT_BYTES_MAX / VALUE_BYTES_MAX) as u32)
                            .map(|i| put(i.to_be_bytes(), vec![2u8; VALUE_BYTES_MAX])),
                    )
                    .collect(),
            ),
        ),
        (
            "an empty key in a put",
            writes(vec![marker(), put(b"", "v")]),
        ),
        (
            "an empty key in a delete",
            writes(vec![marker(), delete(b"")]),
        ),
        (
            "an empty key in a check",
            KvCommit {
                checks: vec![absent(b"")],
                writes: vec![marker()],
            },
        ),
        (
            "a too long key in a put",
            writes(vec![marker(), put(&too_long_key, "v")]),
        ),
        (
            "a too long key in a delete",
            writes(vec![marker(), delete(&too_long_key)]),
        ),
        (
            "a too long key in a check",
            KvCommit {
                checks: vec![absent(&too_long_key)],
                writes: vec![marker()],
            },
        ),
    ];
    for (what, commit) in refused {
        assert_invalid(store.commit(&ns, commit).await, what);
        assert_eq!(scan_all(&*store, &ns, b"").await, before, "{what}");
    }

    let too_many_keys: Vec<Vec<u8>> = (0..=GET_KEYS_MAX as u32)
        .map(|i| i.to_be_bytes().to_vec())
        .collect();
    assert_invalid(
        store.get_many(&ns, &too_many_keys).await,
        "too many keys in a read",
    );
    assert_invalid(
        store.get_many(&ns, &keys(&[&b"kept"[..], b""])).await,
        "an empty key in a read",
    );
    assert_invalid(
        store
            .get_many(&ns, &[b"kept".to_vec(), too_long_key.clone()])
            .await,
        "a too long key in a read",
    );
    assert_invalid(store.scan(&ns, b"", None, 0).await, "a scan limit of 0");
    assert_invalid(
        store.scan(&ns, b"", None, SCAN_ENTRIES_MAX + 1).await,
        "a scan limit above the maximum",
    );
    assert_invalid(
        store.scan(&ns, &too_long_key, None, 10).await,
        "a scan prefix longer than a key",
    );
    assert_eq!(scan_all(&*store, &ns, b"").await, before);
    drop(store);
    harness.clean_up().await;
}

/// What is exactly at a limit is accepted.
pub async fn limits_are_inclusive(harness: &impl KvHarness) {
    let store = harness.open().await;
    let ns = namespace("at-limits");
    // The most writes and checks one commit may hold: one check and the rest writes.
    let written = COMMIT_WRITES_MAX as u32 - 1;
    store
        .commit(
            &ns,
            KvCommit {
                checks: vec![absent("check")],
                writes: (0..written)
                    .map(|i| put(i.to_be_bytes(), &i.to_be_bytes()[2..]))
                    .collect(),
            },
        )
        .await
        .unwrap();
    // The most keys one read may ask for.
    let asked: Vec<Vec<u8>> = (0..GET_KEYS_MAX as u32)
        .map(|i| i.to_be_bytes().to_vec())
        .collect();
    let got = store.get_many(&ns, &asked).await.unwrap();
    assert_eq!(got.len(), GET_KEYS_MAX);
    for (i, value) in (0u32..).zip(&got) {
        let expected = (i < written).then(|| i.to_be_bytes()[2..].to_vec());
        assert!(*value == expected, "key {i}: {value:?}");
    }
    // The most entries one scan may return.
    let page = store.scan(&ns, b"", None, SCAN_ENTRIES_MAX).await.unwrap();
    assert_eq!(page.len(), SCAN_ENTRIES_MAX.min(written as usize));
    assert_eq!(store.clear(&ns).await.unwrap(), u64::from(written));
    drop(store);
    harness.clean_up().await;
}

/// A commit that returned is durable: the store opened again (as after a restart) reads
/// exactly what was committed, and its checks see it. Skipped when the harness cannot reopen.
pub async fn commits_survive_a_reopen(harness: &impl KvHarness) {
    let store = harness.open().await;
    let a = namespace("durable.a");
    let b = namespace("durable.b");
    let gone = namespace("durable.gone");
    let binary: Vec<u8> = (0..=255u8).collect();
    store
        .commit(
            &a,
            writes(vec![
                put("one", "1"),
                put("two", "2"),
                put("empty", ""),
                put(&binary, &binary),
                put("deleted", "x"),
            ]),
        )
        .await
        .unwrap();
    store
        .commit(
            &a,
            KvCommit {
                checks: vec![holds("one", "1")],
                writes: vec![delete("deleted"), put("two", "2b")],
            },
        )
        .await
        .unwrap();
    store
        .commit(&b, writes(vec![put("one", "b1")]))
        .await
        .unwrap();
    store
        .commit(&gone, writes(vec![put("x", "x")]))
        .await
        .unwrap();
    assert_eq!(store.clear(&gone).await.unwrap(), 1);
    let expected_a = vec![
        entry(&binary, &binary),
        entry("empty", ""),
        entry("one", "1"),
        entry("two", "2b"),
    ];
    assert_eq!(scan_all(&*store, &a, b"").await, expected_a);
    drop(store);

    let Some(store) = harness.reopen().await else {
        harness.clean_up().await;
        return;
    };
    assert_eq!(scan_all(&*store, &a, b"").await, expected_a);
    assert_eq!(scan_all(&*store, &b, b"").await, vec![entry("one", "b1")]);
    assert_eq!(scan_all(&*store, &gone, b"").await, vec![]);
    assert_eq!(
        store
            .get_many(&a, &keys(&[&b"empty"[..], b"deleted", &binary[..]]))
            .await
            .unwrap(),
        vec![Some(Vec::new()), None, Some(binary.clone())]
    );
    let result = store
        .commit(
            &a,
            KvCommit {
                checks: vec![absent("one")],
                writes: vec![put("three", "3")],
            },
        )
        .await;
    assert_conflict(result, &a, b"one");
    store
        .commit(
            &a,
            KvCommit {
                checks: vec![holds("two", "2b"), absent("deleted"), holds("empty", "")],
                writes: vec![put("three", "3")],
            },
        )
        .await
        .unwrap();
    assert_eq!(store.clear(&a).await.unwrap(), 5);
    drop(store);
    harness.clean_up().await;
}

/// Many writers doing read, increment, commit-if-unchanged on one counter (retrying on
/// conflict) lose no increment: with compare-and-set only one of two racing writers wins.
/// Each commit also records its writer's own count, so a commit applied halfway would show.
pub async fn concurrent_compare_and_set_loses_no_update(harness: &impl KvHarness) {
    const TASKS: u64 = 16;
    const INCREMENTS: u64 = 20;
    let store = harness.open().await;
    let ns = namespace("counter");
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            let own_key = format!("done/{task:02}").into_bytes();
            let mut conflicts = 0u64;
            for _ in 0..INCREMENTS {
                loop {
                    let read = store
                        .get_many(&ns, &[b"counter".to_vec(), own_key.clone()])
                        .await
                        .unwrap();
                    let counter = read[0].as_deref().map_or(0, decode_u64);
                    let own = read[1].as_deref().map_or(0, decode_u64);
                    // Let the others read the same value.
                    tokio::task::yield_now().await;
                    let commit = KvCommit {
                        checks: vec![KvCheck {
                            key: b"counter".to_vec(),
                            expected: read[0].clone(),
                        }],
                        writes: vec![
                            put("counter", (counter + 1).to_be_bytes()),
                            put(&own_key, (own + 1).to_be_bytes()),
                        ],
                    };
                    match store.commit(&ns, commit).await {
                        Ok(()) => break,
                        Err(KvError::Conflict { key, .. }) => {
                            assert_eq!(key, display_key(b"counter"));
                            conflicts += 1;
                        }
                        Err(other) => panic!("task {task}: {other}"),
                    }
                }
            }
            conflicts
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let counter = get_one(&*store, &ns, b"counter").await;
    assert_eq!(
        counter.as_deref().map(decode_u64),
        Some(TASKS * INCREMENTS),
        "every increment counted exactly once"
    );
    let done = store.scan(&ns, b"done/", None, 100).await.unwrap();
    assert_eq!(done.len() as u64, TASKS);
    for (key, value) in done {
        assert_eq!(decode_u64(&value), INCREMENTS, "{}", display_key(&key));
    }
    drop(store);
    harness.clean_up().await;
}

fn decode_u64(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().expect("8 bytes"))
}

/// Reads racing with commits see each commit whole: `get_many` and `scan` read one snapshot,
/// so two keys always written together always read equal.
pub async fn reads_see_commits_whole(harness: &impl KvHarness) {
    const COMMITS: u64 = 100;
    let store = harness.open().await;
    let ns = namespace("snapshots");
    store
        .commit(
            &ns,
            writes(vec![
                put("pair/a", 0u64.to_be_bytes()),
                put("pair/b", 0u64.to_be_bytes()),
            ]),
        )
        .await
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, ns, done) = (store.clone(), ns.clone(), done.clone());
        tokio::spawn(async move {
            for i in 1..=COMMITS {
                let value = i.to_be_bytes();
                // Deleted and written again, so a read between writes would also see a gap.
                store
                    .commit(
                        &ns,
                        writes(vec![
                            delete("pair/a"),
                            put("pair/b", value),
                            put("pair/a", value),
                        ]),
                    )
                    .await
                    .unwrap();
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut reads = 0u64;
    while !done.load(Ordering::SeqCst) || reads < 10 {
        let got = store
            .get_many(&ns, &keys(&["pair/a", "pair/b"]))
            .await
            .unwrap();
        let (Some(a), Some(b)) = (&got[0], &got[1]) else {
            panic!("a read saw a commit halfway: {got:?}")
        };
        assert_eq!(a, b, "a read saw a commit halfway");

        let scanned = store.scan(&ns, b"pair/", None, 10).await.unwrap();
        assert_eq!(scanned.len(), 2, "a scan saw a commit halfway: {scanned:?}");
        assert_eq!(scanned[0].1, scanned[1].1, "a scan saw a commit halfway");
        reads += 1;
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    assert_eq!(
        get_one(&*store, &ns, b"pair/a")
            .await
            .as_deref()
            .map(decode_u64),
        Some(COMMITS)
    );
    drop(store);
    harness.clean_up().await;
}

/// Runs the whole suite: one `#[tokio::test]` (multi-threaded) per test, each on a fresh
/// harness from the expression given.
#[macro_export]
macro_rules! kv_conformance_tests {
    ($harness:expr) => {
        $crate::kv_conformance_tests!(@tests $harness;
            values_round_trip_byte_exact,
            misses_are_none_in_order,
            get_many_answers_duplicate_keys,
            a_later_write_to_a_key_wins,
            deleting_an_absent_key_is_not_an_error,
            an_absent_check_holds_only_when_the_key_is_absent,
            a_value_check_holds_only_on_the_exact_value,
            a_failed_check_applies_no_write,
            namespaces_are_isolated,
            scans_are_ordered_by_key_bytes,
            scans_filter_by_prefix,
            scans_page_after_the_last_key_seen,
            scans_respect_the_limit,
            clear_empties_only_its_namespace,
            limits_are_refused_and_change_nothing,
            limits_are_inclusive,
            commits_survive_a_reopen,
            concurrent_compare_and_set_loses_no_update,
            reads_see_commits_whole,
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let harness = $harness;
                $crate::conformance::$name(&harness).await;
            }
        )*
    };
}
