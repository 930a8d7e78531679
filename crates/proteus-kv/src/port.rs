//! The [`KvStore`] port, its types and limits, and the checks every adapter applies.

use std::fmt;

use async_trait::async_trait;

/// Longest namespace, in bytes.
pub const NAMESPACE_BYTES_MAX: usize = 300;
/// Longest key, in bytes (keys are arbitrary bytes, at least one).
pub const KEY_BYTES_MAX: usize = 1024;
/// Largest value, in bytes.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Most writes plus checks in one commit.
pub const COMMIT_WRITES_MAX: usize = 10_000;
/// Most key and value bytes in one commit (writes and checks together).
pub const COMMIT_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Most keys in one [`KvStore::get_many`].
pub const GET_KEYS_MAX: usize = 10_000;
/// Most entries one [`KvStore::scan`] returns.
pub const SCAN_ENTRIES_MAX: usize = 10_000;

/// A namespace: 1 to [`NAMESPACE_BYTES_MAX`] bytes of `a-z`, `0-9`, `.`, `_` and `-`, starting
/// with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Namespace(String);

impl Namespace {
    pub fn parse(name: &str) -> Result<Namespace, KvError> {
        let valid_start = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let valid_bytes = name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
        if !valid_start || !valid_bytes || name.len() > NAMESPACE_BYTES_MAX {
            return Err(KvError::Invalid(format!(
                "namespace {name:?} is not valid: use 1 to {NAMESPACE_BYTES_MAX} bytes of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
            )));
        }
        Ok(Namespace(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One write of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvWrite {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Deleting an absent key is not an error.
    Delete {
        key: Vec<u8>,
    },
}

impl KvWrite {
    pub fn key(&self) -> &[u8] {
        match self {
            KvWrite::Put { key, .. } | KvWrite::Delete { key } => key,
        }
    }
}

/// A condition of a commit: the key's current value is `expected` (`None`: the key is absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvCheck {
    pub key: Vec<u8>,
    pub expected: Option<Vec<u8>>,
}

/// Checks and writes applied atomically: all writes (in order: a later write to a key wins)
/// when every check holds, else nothing and [`KvError::Conflict`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvCommit {
    pub checks: Vec<KvCheck>,
    pub writes: Vec<KvWrite>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Bad input: a limit, an empty key, a bad namespace. Nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// A check did not hold; nothing was changed.
    #[error(
        "the value of key {key} in namespace {namespace} is not the one expected: another writer changed it; read it again and retry"
    )]
    Conflict { namespace: String, key: String },
    /// The backend could not be reached or failed. When `retriable`, the same call may succeed
    /// later; a commit that failed this way may or may not have been applied (its checks make a
    /// retry safe).
    #[error("{message}")]
    Unavailable { message: String, retriable: bool },
    /// Stored data could not be read back as written.
    #[error("stored key-value data is corrupt: {0}")]
    Corrupt(String),
}

impl KvError {
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            KvError::Unavailable {
                retriable: true,
                ..
            }
        )
    }
}

/// How a key reads in errors: UTF-8 when it is, hex otherwise.
pub fn display_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if !text.chars().any(char::is_control) => format!("{text:?}"),
        _ => {
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}")
        }
    }
}

fn check_key(key: &[u8], what: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::Invalid(format!(
            "{what}: a key is empty; keys have 1 to {KEY_BYTES_MAX} bytes"
        )));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(KvError::Invalid(format!(
            "{what}: key {}… has {} bytes, more than the {KEY_BYTES_MAX} allowed",
            display_key(&key[..32]),
            key.len()
        )));
    }
    Ok(())
}

/// Refuses a commit beyond the limits, or with an empty or too long key or too large value.
pub fn check_commit(commit: &KvCommit) -> Result<(), KvError> {
    let count = commit.checks.len() + commit.writes.len();
    if count > COMMIT_WRITES_MAX {
        return Err(KvError::Invalid(format!(
            "a commit has {count} writes and checks, more than the {COMMIT_WRITES_MAX} allowed; split it"
        )));
    }
    let mut bytes = 0usize;
    for check in &commit.checks {
        check_key(&check.key, "a check")?;
        bytes += check.key.len() + check.expected.as_ref().map_or(0, Vec::len);
    }
    for write in &commit.writes {
        check_key(write.key(), "a write")?;
        bytes += write.key().len();
        if let KvWrite::Put { key, value } = write {
            if value.len() > VALUE_BYTES_MAX {
                return Err(KvError::Invalid(format!(
                    "the value of key {} has {} bytes, more than the {VALUE_BYTES_MAX} allowed",
                    display_key(key),
                    value.len()
                )));
            }
            bytes += value.len();
        }
    }
    if bytes > COMMIT_BYTES_MAX {
        return Err(KvError::Invalid(format!(
            "a commit holds {bytes} bytes of keys and values, more than the {COMMIT_BYTES_MAX} allowed; split it"
        )));
    }
    Ok(())
}

/// Refuses a read of more than [`GET_KEYS_MAX`] keys or of a bad key.
pub fn check_keys(keys: &[Vec<u8>]) -> Result<(), KvError> {
    if keys.len() > GET_KEYS_MAX {
        return Err(KvError::Invalid(format!(
            "a read asks for {} keys, more than the {GET_KEYS_MAX} allowed; split it",
            keys.len()
        )));
    }
    keys.iter().try_for_each(|k| check_key(k, "a read"))
}

/// Refuses a scan limit of 0 or above [`SCAN_ENTRIES_MAX`], or a prefix longer than a key.
pub fn check_scan(prefix: &[u8], limit: usize) -> Result<(), KvError> {
    if !(1..=SCAN_ENTRIES_MAX).contains(&limit) {
        return Err(KvError::Invalid(format!(
            "a scan limit is {limit}; use 1 to {SCAN_ENTRIES_MAX} entries"
        )));
    }
    if prefix.len() > KEY_BYTES_MAX {
        return Err(KvError::Invalid(format!(
            "a scan prefix has {} bytes, more than a key's {KEY_BYTES_MAX}",
            prefix.len()
        )));
    }
    Ok(())
}

/// Key-value metadata: namespaced byte keys and values, atomic checked commits, snapshot reads,
/// ordered scans. See the crate docs for the promises; the conformance suite tests each.
#[async_trait]
pub trait KvStore: Send + Sync {
    /// The values of `keys`, in the same order, from one consistent snapshot.
    async fn get_many(
        &self,
        namespace: &Namespace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, KvError>;

    /// Applies `commit` atomically and durably when its checks hold (see [`KvCommit`]).
    async fn commit(&self, namespace: &Namespace, commit: KvCommit) -> Result<(), KvError>;

    /// At most `limit` entries whose key starts with `prefix` and, when `after` is given, is
    /// greater than `after`; in ascending key order, from one snapshot.
    async fn scan(
        &self,
        namespace: &Namespace,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError>;

    /// Removes every key of `namespace` atomically; returns how many there were.
    async fn clear(&self, namespace: &Namespace) -> Result<u64, KvError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_follow_the_rule() {
        assert!(Namespace::parse("experiments.checkout-1").is_ok());
        for bad in [
            "",
            ".x",
            "Upper",
            "a b",
            &"a".repeat(NAMESPACE_BYTES_MAX + 1),
        ] {
            assert!(
                matches!(Namespace::parse(bad), Err(KvError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn limits_are_checked() {
        let put = |key: Vec<u8>, value: Vec<u8>| KvWrite::Put { key, value };
        let too_many = KvCommit {
            checks: vec![],
            writes: (0..=COMMIT_WRITES_MAX as u32)
                .map(|i| KvWrite::Delete {
                    key: i.to_be_bytes().to_vec(),
                })
                .collect(),
        };
        assert!(check_commit(&too_many).is_err());
        let empty_key = KvCommit {
            checks: vec![],
            writes: vec![put(vec![], vec![1])],
        };
        assert!(
            check_commit(&empty_key)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        let big = KvCommit {
            checks: vec![],
            writes: vec![put(b"k".to_vec(), vec![0; VALUE_BYTES_MAX + 1])],
        };
        assert!(
            check_commit(&big)
                .unwrap_err()
                .to_string()
                .contains("\"k\"")
        );
        assert!(check_keys(&[vec![0xff; KEY_BYTES_MAX + 1]]).is_err());
        assert!(check_scan(b"", 0).is_err());
        assert!(check_scan(b"", SCAN_ENTRIES_MAX).is_ok());
    }
}
