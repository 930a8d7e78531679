//! Leases on a [`KvStore`] key: which instance owns something (a consumer group's coordination,
//! a projection's runner) for a while. Built only on the port's compare-and-set commits, so any
//! adapter that passes the conformance suite gives leases that two holders never both hold at
//! the same store time.
//!
//! A lease is `{holder, data, expires_ms}` at one key. [`acquire`] takes it when it is absent,
//! expired, or already the caller's (a renewal), with a commit checked against the value it
//! read; otherwise it answers who holds it. Expiry compares the caller's clock with the
//! holder's: instances must have clocks within a small fraction of `ttl_ms` of each other
//! (NTP), and a holder must stop acting on a lease before it expires (renew at `ttl_ms / 3`).
//!
//! Every lease carries a **fencing token** ([`Lease::token`]) that grows by one each time the
//! lease is taken while absent, expired or held by someone else, and stays the same across
//! renewals. A holder passes its token with every write it makes under the lease, and the
//! store it writes to refuses a token lower than the highest it has seen: a holder that
//! stalled past its expiry (a pause, a clock off by more than the margin) cannot overwrite
//! what its successor wrote. [`release`] keeps the key (expired, token kept) so tokens never go
//! back.

use crate::port::{KvCheck, KvCommit, KvError, KvStore, KvWrite, Namespace};

/// Shortest lease, in ms.
pub const LEASE_TTL_MS_MIN: u64 = 100;
/// Longest lease, in ms (an hour).
pub const LEASE_TTL_MS_MAX: u64 = 3_600_000;
/// Longest holder id and data, in bytes.
pub const LEASE_TEXT_BYTES_MAX: usize = 1024;

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it (an instance id).
    pub holder: String,
    /// What the holder publishes with it (e.g. the URL other instances forward to).
    pub data: String,
    /// Until when, in ms since the epoch on the holder's clock.
    pub expires_ms: i64,
    /// The fencing token: one more than the previous holder's, the same across renewals.
    pub token: u64,
}

/// The outcome of [`acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// The caller holds the lease until `expires_ms`.
    Held(Lease),
    /// Someone else holds it.
    HeldByOther(Lease),
}

impl Lease {
    fn encode(&self) -> Vec<u8> {
        // holder \n data \n expires \n token: the texts are checked to hold no newline.
        format!(
            "{}\n{}\n{}\n{}",
            self.holder, self.data, self.expires_ms, self.token
        )
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<Lease, KvError> {
        let corrupt = || {
            KvError::Corrupt(format!(
                "a lease is not holder\\ndata\\nexpires_ms\\ntoken: {:?}",
                String::from_utf8_lossy(bytes)
            ))
        };
        let text = std::str::from_utf8(bytes).map_err(|_| corrupt())?;
        let mut parts = text.splitn(4, '\n');
        let (Some(holder), Some(data), Some(expires)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(corrupt());
        };
        Ok(Lease {
            holder: holder.to_owned(),
            data: data.to_owned(),
            expires_ms: expires.parse().map_err(|_| corrupt())?,
            // Leases written before tokens existed count as token 0.
            token: match parts.next() {
                Some(token) => token.parse().map_err(|_| corrupt())?,
                None => 0,
            },
        })
    }
}

fn check_text(what: &str, text: &str) -> Result<(), KvError> {
    if text.is_empty() && what == "holder" {
        return Err(KvError::Invalid("a lease holder is empty".into()));
    }
    if text.len() > LEASE_TEXT_BYTES_MAX || text.contains('\n') {
        return Err(KvError::Invalid(format!(
            "a lease {what} is at most {LEASE_TEXT_BYTES_MAX} bytes without newlines, found {} bytes",
            text.len()
        )));
    }
    Ok(())
}

/// Takes or renews the lease at `key` for `holder` until `now_ms + ttl_ms`, unless another
/// holder's lease is still running; see the module docs.
pub async fn acquire(
    kv: &dyn KvStore,
    namespace: &Namespace,
    key: &[u8],
    holder: &str,
    data: &str,
    now_ms: i64,
    ttl_ms: u64,
) -> Result<LeaseState, KvError> {
    check_text("holder", holder)?;
    check_text("data", data)?;
    if !(LEASE_TTL_MS_MIN..=LEASE_TTL_MS_MAX).contains(&ttl_ms) {
        return Err(KvError::Invalid(format!(
            "a lease lasts {LEASE_TTL_MS_MIN} to {LEASE_TTL_MS_MAX} ms, asked {ttl_ms}"
        )));
    }
    let current = kv
        .get_many(namespace, &[key.to_vec()])
        .await?
        .pop()
        .flatten();
    let previous = current.as_deref().map(Lease::decode).transpose()?;
    if let Some(lease) = &previous
        && lease.holder != holder
        && lease.expires_ms > now_ms
    {
        return Ok(LeaseState::HeldByOther(lease.clone()));
    }
    let token = match &previous {
        // A renewal: the holder's lease is still running.
        Some(lease) if lease.holder == holder && lease.expires_ms > now_ms => lease.token,
        Some(lease) => lease.token.saturating_add(1),
        None => 1,
    };
    let lease = Lease {
        holder: holder.to_owned(),
        data: data.to_owned(),
        expires_ms: now_ms.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX)),
        token,
    };
    let commit = KvCommit {
        checks: vec![KvCheck {
            key: key.to_vec(),
            expected: current,
        }],
        writes: vec![KvWrite::Put {
            key: key.to_vec(),
            value: lease.encode(),
        }],
    };
    match kv.commit(namespace, commit).await {
        Ok(()) => Ok(LeaseState::Held(lease)),
        // Someone else wrote in between: report what is there now.
        Err(KvError::Conflict { .. }) => {
            match kv
                .get_many(namespace, &[key.to_vec()])
                .await?
                .pop()
                .flatten()
            {
                Some(bytes) => {
                    let other = Lease::decode(&bytes)?;
                    if other.holder == holder {
                        Ok(LeaseState::Held(other))
                    } else {
                        Ok(LeaseState::HeldByOther(other))
                    }
                }
                None => Err(KvError::Unavailable {
                    message: "a lease was released while being taken; try again".into(),
                    retriable: true,
                }),
            }
        }
        Err(other) => Err(other),
    }
}

/// Who holds the lease at `key`, if anyone (expired leases included: compare `expires_ms`).
pub async fn current(
    kv: &dyn KvStore,
    namespace: &Namespace,
    key: &[u8],
) -> Result<Option<Lease>, KvError> {
    match kv
        .get_many(namespace, &[key.to_vec()])
        .await?
        .pop()
        .flatten()
    {
        Some(bytes) => Lease::decode(&bytes).map(Some),
        None => Ok(None),
    }
}

/// Gives up `holder`'s lease at `key` (nothing when someone else holds it): the lease stays,
/// expired, so the next holder's token is still higher.
pub async fn release(
    kv: &dyn KvStore,
    namespace: &Namespace,
    key: &[u8],
    holder: &str,
) -> Result<(), KvError> {
    let Some(bytes) = kv
        .get_many(namespace, &[key.to_vec()])
        .await?
        .pop()
        .flatten()
    else {
        return Ok(());
    };
    let lease = Lease::decode(&bytes)?;
    if lease.holder != holder {
        return Ok(());
    }
    let released = Lease {
        expires_ms: 0,
        ..lease
    };
    let commit = KvCommit {
        checks: vec![KvCheck {
            key: key.to_vec(),
            expected: Some(bytes),
        }],
        writes: vec![KvWrite::Put {
            key: key.to_vec(),
            value: released.encode(),
        }],
    };
    match kv.commit(namespace, commit).await {
        Ok(()) | Err(KvError::Conflict { .. }) => Ok(()),
        Err(other) => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryKvStore;

    fn block<T>(future: impl std::future::Future<Output = T>) -> T {
        // The memory store never awaits anything pending: one poll finishes every call.
        let mut future = std::pin::pin!(future);
        let waker = std::task::Waker::noop();
        match future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        {
            std::task::Poll::Ready(value) => value,
            std::task::Poll::Pending => panic!("the memory store never waits"),
        }
    }

    #[test]
    fn one_holder_at_a_time_until_expiry() {
        let kv = MemoryKvStore::new();
        let ns = Namespace::parse("leases").unwrap();
        let take = |holder: &str, now: i64| {
            block(acquire(
                &kv,
                &ns,
                b"group/orders",
                holder,
                "http://a",
                now,
                1_000,
            ))
            .unwrap()
        };
        assert!(
            matches!(take("a", 0), LeaseState::Held(l) if l.expires_ms == 1_000 && l.token == 1)
        );
        assert!(matches!(take("b", 500), LeaseState::HeldByOther(l) if l.holder == "a"));
        // A renewal by the holder extends it and keeps its token.
        assert!(
            matches!(take("a", 900), LeaseState::Held(l) if l.expires_ms == 1_900 && l.token == 1)
        );
        assert!(matches!(take("b", 1_800), LeaseState::HeldByOther(_)));
        // Expired: someone else takes it, with a higher token.
        assert!(matches!(take("b", 1_900), LeaseState::Held(l) if l.holder == "b" && l.token == 2));
        // Release by a non-holder does nothing; by the holder frees it, and the token still
        // grows for the next holder.
        block(release(&kv, &ns, b"group/orders", "a")).unwrap();
        assert!(matches!(take("a", 2_000), LeaseState::HeldByOther(_)));
        block(release(&kv, &ns, b"group/orders", "b")).unwrap();
        let released = block(current(&kv, &ns, b"group/orders")).unwrap().unwrap();
        assert_eq!((released.holder.as_str(), released.token), ("b", 2));
        assert!(released.expires_ms <= 2_000);
        assert!(matches!(take("a", 2_000), LeaseState::Held(l) if l.token == 3));
        // Taking one's own expired lease again is a new term too.
        assert!(matches!(take("a", 5_000), LeaseState::Held(l) if l.token == 4));
        // Leases written before tokens existed read as token 0.
        assert_eq!(Lease::decode(b"a\nhttp://a\n7").unwrap().token, 0);
        assert!(block(acquire(&kv, &ns, b"k", "a\nb", "", 0, 1_000)).is_err());
        assert!(block(acquire(&kv, &ns, b"k", "a", "", 0, 1)).is_err());
    }
}
