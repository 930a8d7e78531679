//! `commit`: the writes of a batch and its checkpoint in one transaction (see the crate
//! documentation).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use proteus_projections::{Checkpoint, ListItem, ProjectionName, StoreError, Write};
use serde_json::Value;
use tokio_postgres::types::ToSql;

use crate::error::{backend, pg};
use crate::{Inner, column, decode_checkpoint, not_found};

/// The writes of a commit, folded and encoded: what the statements send.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Folded {
    /// `(key, JSON)` of the documents written, by key.
    pub upserts: Vec<(String, String)>,
    /// Keys of the documents deleted.
    pub deletes: Vec<String>,
    /// The appends, one per list, by key.
    pub lists: Vec<ListAppend>,
}

#[derive(Debug, PartialEq)]
pub(crate) struct ListAppend {
    pub key: String,
    /// Items appended by the commit.
    pub added: i64,
    /// How many of the list's last items are kept after the commit's appends.
    pub keep: i64,
    /// `(index among the appended items, JSON)` of the appended items still kept.
    pub items: Vec<(i64, ListItem)>,
}

impl ListAppend {
    fn bytes(&self) -> usize {
        self.key.len()
            + self
                .items
                .iter()
                .map(|(_, j)| j.json().len() + 8)
                .sum::<usize>()
    }
}

fn json(value: &Value) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| backend(e.to_string()))
}

/// Folds `writes` as applying them in order would: the last write to a document wins; the
/// appends to a list add up, each keeping the last `max_items` of the list after it, so the
/// list keeps `keep = min over appends j of (max_items_j + items appended after j)` items.
pub(crate) fn fold(writes: Vec<Write>) -> Result<Folded, StoreError> {
    let mut docs: BTreeMap<String, Option<Value>> = BTreeMap::new();
    let mut lists: BTreeMap<String, (Vec<ListItem>, usize)> = BTreeMap::new();
    for write in writes {
        match write {
            Write::Doc { key, doc } => {
                docs.insert(key, doc);
            }
            Write::Append {
                key,
                items,
                max_items,
            } => {
                let (all, keep) = lists.entry(key).or_insert((Vec::new(), usize::MAX));
                *keep = keep.saturating_add(items.len()).min(max_items);
                all.extend(items);
            }
        }
    }
    let mut folded = Folded::default();
    for (key, doc) in docs {
        match doc {
            Some(doc) => folded.upserts.push((key, json(&doc)?)),
            None => folded.deletes.push(key),
        }
    }
    for (key, (items, keep)) in lists {
        let skip = items.len().saturating_sub(keep);
        let added = items.len() as i64;
        let kept = (0..).zip(items).skip(skip).collect();
        folded.lists.push(ListAppend {
            key,
            added,
            keep: keep as i64,
            items: kept,
        });
    }
    Ok(folded)
}

/// Splits `all` into runs of at most `rows_max` rows and `bytes_max` bytes (a larger element
/// alone makes a run).
pub(crate) fn chunks<T>(
    all: &[T],
    rows_max: usize,
    bytes_max: usize,
    measure: impl Fn(&T) -> (usize, usize),
) -> Vec<&[T]> {
    let mut runs = Vec::new();
    let (mut start, mut rows, mut bytes) = (0, 0, 0);
    for (index, element) in all.iter().enumerate() {
        let (r, b) = measure(element);
        if index > start && (rows + r > rows_max || bytes + b > bytes_max) {
            runs.push(&all[start..index]);
            (start, rows, bytes) = (index, 0, 0);
        }
        rows += r;
        bytes += b;
    }
    if start < all.len() {
        runs.push(&all[start..]);
    }
    runs
}

type Param<'a> = &'a (dyn ToSql + Sync);
type Execution<'a> = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>;

/// The parameters of the list statement for one run of lists.
struct ListParams<'a> {
    keys: Vec<&'a [u8]>,
    added: Vec<i64>,
    keep: Vec<i64>,
    ords: Vec<i64>,
    indexes: Vec<i64>,
    items: Vec<&'a str>,
}

impl<'a> ListParams<'a> {
    fn new(lists: &'a [ListAppend]) -> Result<Self, StoreError> {
        let mut params = ListParams {
            keys: Vec::with_capacity(lists.len()),
            added: Vec::with_capacity(lists.len()),
            keep: Vec::with_capacity(lists.len()),
            ords: Vec::new(),
            indexes: Vec::new(),
            items: Vec::new(),
        };
        for (ord, list) in (1..).zip(lists) {
            params.keys.push(list.key.as_bytes());
            params.added.push(list.added);
            params.keep.push(list.keep);
            for (index, item) in &list.items {
                params.ords.push(ord);
                params.indexes.push(*index);
                // Items are serde_json's output: UTF-8.
                let text = std::str::from_utf8(item.json()).map_err(|e| {
                    backend(format!("an item of list '{}' is not UTF-8: {e}", list.key))
                })?;
                params.items.push(text);
            }
        }
        Ok(params)
    }
}

pub(crate) async fn commit(
    inner: &Inner,
    name: &ProjectionName,
    writes: Vec<Write>,
    checkpoint: Checkpoint,
) -> Result<(), StoreError> {
    let folded = fold(writes)?;
    let checkpoint_json = serde_json::to_string(&checkpoint).map_err(|e| backend(e.to_string()))?;
    let config = &inner.config;
    let (rows_max, bytes_max) = (config.write_chunk_rows_max, config.write_chunk_bytes_max);
    let upserts = chunks(&folded.upserts, rows_max, bytes_max, |(k, d)| {
        (1, k.len() + d.len())
    });
    let deletes = chunks(&folded.deletes, rows_max, bytes_max, |k| (1, k.len()));
    let lists = chunks(&folded.lists, rows_max, bytes_max, |l| {
        (l.items.len().max(1), l.bytes())
    });
    let upsert_params: Vec<(Vec<&[u8]>, Vec<&str>)> = upserts
        .iter()
        .map(|run| run.iter().map(|(k, d)| (k.as_bytes(), d.as_str())).unzip())
        .collect();
    let delete_params: Vec<Vec<&[u8]>> = deletes
        .iter()
        .map(|run| run.iter().map(|k| k.as_bytes()).collect())
        .collect();
    let list_params: Vec<ListParams<'_>> = lists
        .iter()
        .map(|run| ListParams::new(run))
        .collect::<Result<_, _>>()?;

    let what = format!("committing to projection '{name}'");
    let fail = |e| pg(e, &what, &inner.config.url);
    let sql = &inner.sql;
    let mut client = inner.client(&what).await?;
    let lock = client
        .prepare_cached(&sql.lock_checkpoint)
        .await
        .map_err(fail)?;
    let create = client
        .prepare_cached(&sql.create_checkpoint)
        .await
        .map_err(fail)?;
    let save = client
        .prepare_cached(&sql.save_checkpoint)
        .await
        .map_err(fail)?;
    let upsert = client
        .prepare_cached(&sql.upsert_docs)
        .await
        .map_err(fail)?;
    let delete = client
        .prepare_cached(&sql.delete_docs)
        .await
        .map_err(fail)?;
    let append = client
        .prepare_cached(&sql.append_lists)
        .await
        .map_err(fail)?;

    let name_str = name.as_str();
    let txn = client.transaction().await.map_err(fail)?;
    let written: Result<i64, StoreError> = async {
        // The checkpoint row, locked until the end of the transaction: commits of this
        // projection (from any process) wait here for each other, and reset and drop too.
        let mut row = txn.query_opt(&lock, &[&name_str]).await.map_err(fail)?;
        if row.is_none() {
            // A record saved without its checkpoint row (not by this store): create the row if
            // the projection exists, then lock it.
            txn.execute(&create, &[&name_str]).await.map_err(fail)?;
            row = txn.query_opt(&lock, &[&name_str]).await.map_err(fail)?;
        }
        let Some(row) = row else {
            return Err(not_found(name));
        };
        let xid: i64 = column(&row, 1)?;
        if let Some(stored) = column::<Option<&str>>(&row, 0)? {
            let stored = decode_checkpoint(name_str, stored)?;
            if stored.position > checkpoint.position {
                return Err(StoreError::CheckpointBehind {
                    projection: name.clone(),
                    stored: stored.position,
                    given: checkpoint.position,
                });
            }
        }

        // Every statement below touches rows no other one of them touches (keys are distinct
        // across runs), so they are pipelined: sent at once, answered in order.
        let mut executions: Vec<Execution<'_>> = Vec::new();
        for (keys, docs) in &upsert_params {
            let params: Vec<Param<'_>> = vec![&name_str, keys, docs];
            executions.push(Box::pin(txn.execute_raw(&upsert, params)));
        }
        for keys in &delete_params {
            let params: Vec<Param<'_>> = vec![&name_str, keys];
            executions.push(Box::pin(txn.execute_raw(&delete, params)));
        }
        for list in &list_params {
            let params: Vec<Param<'_>> = vec![
                &name_str,
                &list.keys,
                &list.added,
                &list.keep,
                &list.ords,
                &list.indexes,
                &list.items,
            ];
            executions.push(Box::pin(txn.execute_raw(&append, params)));
        }
        let params: Vec<Param<'_>> = vec![&name_str, &checkpoint_json];
        executions.push(Box::pin(txn.execute_raw(&save, params)));
        futures_util::future::try_join_all(executions)
            .await
            .map_err(fail)?;
        Ok(xid)
    }
    .await;
    let xid = match written {
        Ok(xid) => xid,
        Err(error) => {
            let _ = txn.rollback().await;
            return Err(error);
        }
    };

    match txn.commit().await {
        Ok(()) => Ok(()),
        // PostgreSQL answered: the transaction was rolled back.
        Err(error) if error.as_db_error().is_some() => Err(fail(error)),
        Err(error) => {
            drop(client);
            settle(inner, xid, error, &what).await
        }
    }
}

/// How long [`settle`] waits for a transaction PostgreSQL still shows in progress.
const SETTLE_WAIT_MS: u64 = 10_000;

/// The connection broke while COMMIT was in flight: asks PostgreSQL, on another connection,
/// whether transaction `xid` committed.
async fn settle(
    inner: &Inner,
    xid: i64,
    error: tokio_postgres::Error,
    what: &str,
) -> Result<(), StoreError> {
    let lost = pg(error, what, &inner.config.url);
    let unknown = |why: String| {
        backend(format!(
            "{lost}; whether the commit was applied is unknown ({why}): reload the checkpoint before retrying, since retrying an applied commit appends its list items again"
        ))
    };
    let started = std::time::Instant::now();
    loop {
        let status: Option<String> = async {
            let client = inner.client(what).await?;
            let row = client
                .query_one(&inner.sql.xact_status, &[&xid])
                .await
                .map_err(|e| pg(e, what, &inner.config.url))?;
            column::<Option<String>>(&row, 0)
        }
        .await
        .map_err(|e| unknown(format!("asking PostgreSQL failed: {e}")))?;
        match status.as_deref() {
            Some("committed") => return Ok(()),
            Some("aborted") => {
                return Err(backend(format!(
                    "{lost}; the commit was not applied (retry it)"
                )));
            }
            Some("in progress") if started.elapsed() < Duration::from_millis(SETTLE_WAIT_MS) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return Err(unknown(format!("transaction status {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn append(key: &str, items: std::ops::Range<i64>, max_items: usize) -> Write {
        Write::Append {
            key: key.into(),
            items: items.map(|i| json!(i).into()).collect(),
            max_items,
        }
    }

    #[test]
    fn folding_keeps_the_last_document_and_adds_up_appends() {
        let folded = fold(vec![
            Write::Doc {
                key: "b".into(),
                doc: Some(json!(1)),
            },
            Write::Doc {
                key: "a".into(),
                doc: Some(json!(1)),
            },
            Write::Doc {
                key: "b".into(),
                doc: None,
            },
            Write::Doc {
                key: "a".into(),
                doc: Some(json!({"x": 2})),
            },
            append("l", 0..3, 5),
            append("l", 3..4, 5),
            append("m", 0..12, 5),
            // A smaller max_items later trims what came before; a larger one after it cannot
            // bring items back.
            append("n", 0..4, 10),
            append("n", 4..5, 2),
            append("n", 5..6, 10),
        ])
        .unwrap();
        assert_eq!(folded.upserts, vec![("a".into(), r#"{"x":2}"#.into())]);
        assert_eq!(folded.deletes, vec!["b".to_owned()]);
        let l = &folded.lists[0];
        assert_eq!((l.added, l.keep, l.items.len()), (4, 5, 4));
        let m = &folded.lists[1];
        assert_eq!((m.added, m.keep), (12, 5));
        assert_eq!(
            m.items,
            (7..12).map(|i| (i, json!(i).into())).collect::<Vec<_>>()
        );
        let n = &folded.lists[2];
        assert_eq!((n.added, n.keep), (6, 3));
        assert_eq!(
            n.items,
            vec![
                (3, json!(3).into()),
                (4, json!(4).into()),
                (5, json!(5).into())
            ]
        );
    }

    #[test]
    fn chunks_respect_rows_and_bytes() {
        let all: Vec<usize> = vec![1, 1, 1, 5, 1, 1];
        let runs = chunks(&all, 2, 4, |&b| (1, b));
        assert_eq!(runs, vec![&[1, 1][..], &[1][..], &[5][..], &[1, 1][..]]);
        assert!(chunks(&[] as &[usize], 2, 4, |&b| (1, b)).is_empty());
        assert_eq!(chunks(&all, 100, 100, |&b| (1, b)).len(), 1);
    }
}
