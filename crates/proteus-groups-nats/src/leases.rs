//! [`NatsLeaseStore`]: the `KvStore` port for leases, on a JetStream key-value bucket.

use std::collections::BTreeSet;

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use async_trait::async_trait;
use bytes::Bytes;
use proteus_kv::{
    KvCommit, KvError, KvStore, KvWrite, Namespace, check_commit, check_keys, display_key,
};

use crate::error::failure;

/// Coordinator leases in the bucket `<bucket_prefix>_LEASES`.
///
/// It serves what [`proteus_kv::lease`] uses and nothing more: a read of one key, and a commit
/// whose checks and writes all name one key, applied by compare-and-set on that key's revision
/// (re-read when another writer came first, so a check is always judged against the value
/// the write replaces). JetStream (before 2.12) compares and sets one subject at a time, so a
/// commit over several keys could not be atomic, a read of several keys would not be one
/// snapshot, and a namespace cannot be scanned or cleared in one step: those calls are refused
/// with [`KvError::Invalid`] saying so, rather than done halfway. Metadata that needs them
/// (experiments, shared projections) lives in the metadata store (`--metadata`).
#[derive(Clone)]
pub struct NatsLeaseStore {
    bucket: kv::Store,
    url: String,
    write_attempts_max: u32,
}

impl std::fmt::Debug for NatsLeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsLeaseStore")
            .field("bucket", &self.bucket.name)
            .finish()
    }
}

/// The bucket key of `key` in `namespace`: the namespace with each `.` written `=` (never in
/// a namespace), a `.`, and the key's bytes in hex (keys are arbitrary bytes; bucket keys are
/// not).
fn bucket_key(namespace: &Namespace, key: &[u8]) -> String {
    let mut out = namespace.as_str().replace('.', "=");
    out.push('.');
    for byte in key {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

fn unsupported(what: &str) -> KvError {
    KvError::Invalid(format!(
        "the NATS lease store {what}: JetStream compares and sets one key at a time, so it \
         serves leases only; keep other metadata in the metadata store (--metadata embedded or \
         postgres://…)"
    ))
}

impl NatsLeaseStore {
    pub(crate) fn new(bucket: kv::Store, url: String, write_attempts_max: u32) -> NatsLeaseStore {
        NatsLeaseStore {
            bucket,
            url,
            write_attempts_max,
        }
    }

    fn unavailable(&self, what: &str, error: impl std::fmt::Display) -> KvError {
        KvError::Unavailable {
            message: failure(&self.url, what, error),
            retriable: true,
        }
    }

    /// The value at `key` (`None`: absent or deleted) and its revision (0: never written).
    async fn read(&self, key: &str) -> Result<(Option<Bytes>, u64), KvError> {
        let entry = self
            .bucket
            .entry(key)
            .await
            .map_err(|error| self.unavailable("reading a lease", error))?;
        Ok(match entry {
            Some(entry) if entry.operation == Operation::Put => (Some(entry.value), entry.revision),
            Some(entry) => (None, entry.revision),
            None => (None, 0),
        })
    }
}

#[async_trait]
impl KvStore for NatsLeaseStore {
    async fn get_many(
        &self,
        namespace: &Namespace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        check_keys(keys)?;
        let distinct: BTreeSet<&Vec<u8>> = keys.iter().collect();
        if distinct.len() > 1 {
            return Err(unsupported(&format!(
                "reads one key at a time (a read of {} keys would not be one snapshot)",
                distinct.len()
            )));
        }
        let Some(key) = distinct.first() else {
            return Ok(Vec::new());
        };
        let (value, _) = self.read(&bucket_key(namespace, key)).await?;
        let value = value.map(|bytes| bytes.to_vec());
        Ok(vec![value; keys.len()])
    }

    async fn commit(&self, namespace: &Namespace, commit: KvCommit) -> Result<(), KvError> {
        check_commit(&commit)?;
        let distinct: BTreeSet<&[u8]> = commit
            .checks
            .iter()
            .map(|check| check.key.as_slice())
            .chain(commit.writes.iter().map(KvWrite::key))
            .collect();
        if distinct.len() > 1 {
            return Err(unsupported(&format!(
                "applies a commit to one key (this one names {}, which could not change \
                 atomically)",
                distinct.len()
            )));
        }
        let Some(key) = distinct.first().map(|key| key.to_vec()) else {
            return Ok(());
        };
        let subject_key = bucket_key(namespace, &key);
        // A later write to the key wins, so only the last one is applied.
        let last_write = commit.writes.last();
        for _ in 0..self.write_attempts_max {
            let (current, revision) = self.read(&subject_key).await?;
            for check in &commit.checks {
                if check.expected.as_deref() != current.as_deref() {
                    return Err(KvError::Conflict {
                        namespace: namespace.to_string(),
                        key: display_key(&key),
                    });
                }
            }
            let written = match last_write {
                None => return Ok(()),
                Some(KvWrite::Put { value, .. }) => self
                    .bucket
                    .update(&subject_key, Bytes::from(value.clone()), revision)
                    .await
                    .map(|_| ()),
                Some(KvWrite::Delete { .. }) if current.is_none() => return Ok(()),
                Some(KvWrite::Delete { .. }) => {
                    self.bucket
                        .delete_expect_revision(&subject_key, Some(revision))
                        .await
                }
            };
            match written {
                Ok(()) => return Ok(()),
                Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => continue,
                Err(error) => return Err(self.unavailable("writing a lease", error)),
            }
        }
        Err(KvError::Unavailable {
            message: format!(
                "a lease at key {} changed under {} writes in a row; retry",
                display_key(&key),
                self.write_attempts_max
            ),
            retriable: true,
        })
    }

    async fn scan(
        &self,
        _namespace: &Namespace,
        _prefix: &[u8],
        _after: Option<&[u8]>,
        _limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, KvError> {
        Err(unsupported("does not scan"))
    }

    async fn clear(&self, _namespace: &Namespace) -> Result<u64, KvError> {
        Err(unsupported("does not clear a namespace"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_keys_are_valid_and_one_to_one() {
        let ns = Namespace::parse("groups.leases").unwrap();
        assert_eq!(bucket_key(&ns, b"o.g"), "groups=leases.6f2e67");
        let other = Namespace::parse("groups=leases");
        assert!(other.is_err(), "'=' never appears in a namespace");
        assert_eq!(bucket_key(&ns, &[0, 255]), "groups=leases.00ff");
    }
}
