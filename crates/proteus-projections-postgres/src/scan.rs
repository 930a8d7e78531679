//! `query`: keyset scans feeding the domain's [`Scan`] (see the crate documentation).

use std::pin::pin;

use futures_util::TryStreamExt;
use proteus_projections::query::{Scan, ScanOrder};
use proteus_projections::{Page, ProjectionName, Query, StoreError, list_document};
use serde_json::Value;
use tokio_postgres::IsolationLevel;
use tokio_postgres::types::ToSql;

use crate::error::pg;
use crate::{Inner, column, decode, decode_key};

type Param<'a> = &'a (dyn ToSql + Sync);

/// Where a scan stands and which way it goes.
struct Walk {
    descending: bool,
    /// The size of the next chunk, in rows.
    chunk: usize,
}

impl Walk {
    fn new(order: &ScanOrder, first_chunk: usize) -> Self {
        Walk {
            descending: matches!(order, ScanOrder::KeyDesc { .. }),
            chunk: first_chunk,
        }
    }

    fn grow(&mut self, rows_max: usize) {
        self.chunk = self.chunk.saturating_mul(2).min(rows_max);
    }
}

pub(crate) async fn run(
    inner: &Inner,
    name: &ProjectionName,
    query: &Query,
) -> Result<Page, StoreError> {
    let mut scan = query.scan()?;
    let what = format!("querying projection '{name}'");
    let fail = |e| pg(e, &what, &inner.config.url);
    let mut client = inner.client(&what).await?;
    let txn = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(fail)?;
    let scanned = async {
        let has_lists = txn
            .prepare_cached(&inner.sql.has_lists)
            .await
            .map_err(fail)?;
        let row = txn
            .query_one(&has_lists, &[&name.as_str()])
            .await
            .map_err(fail)?;
        if column::<bool>(&row, 0)? {
            scan_lists(inner, &txn, name, query, &mut scan, &what).await
        } else {
            scan_docs(inner, &txn, name, query, &mut scan, &what).await
        }
    }
    .await;
    match scanned {
        Ok(()) => txn.commit().await.map_err(fail)?,
        // Ended now rather than when the connection is next used (a scan stopped by an
        // error may leave rows unread).
        Err(error) => {
            let _ = txn.rollback().await;
            return Err(error);
        }
    }
    Ok(scan.finish())
}

fn too_broad(name: &ProjectionName, scan: &Scan<'_>) -> StoreError {
    StoreError::QueryTooBroad {
        projection: name.clone(),
        scanned: scan.scanned(),
    }
}

async fn scan_docs(
    inner: &Inner,
    txn: &deadpool_postgres::Transaction<'_>,
    name: &ProjectionName,
    query: &Query,
    scan: &mut Scan<'_>,
    what: &str,
) -> Result<(), StoreError> {
    let fail = |e| pg(e, what, &inner.config.url);
    let (sql, config) = (&inner.sql, &inner.config);
    let order = scan.order();
    let mut bound: Option<Vec<u8>> = match &order {
        ScanOrder::KeyAsc { after } => after.as_ref().map(|k| k.as_bytes().to_vec()),
        ScanOrder::KeyDesc { before } => before.as_ref().map(|k| k.as_bytes().to_vec()),
        ScanOrder::Any => None,
    };
    let rows_max = config.query_chunk_rows_max;
    let mut walk = Walk::new(&order, (query.limit + 1).min(rows_max));
    let name_str = name.as_str();
    loop {
        // One row past the budget shows whether the query needs more than it.
        let budget = config.query_scan_docs_max.saturating_sub(scan.scanned()) + 1;
        let fetch = walk.chunk.min(budget);
        let limit = fetch as i64;
        let text = match (walk.descending, bound.is_some()) {
            (false, false) => &sql.docs_asc,
            (false, true) => &sql.docs_asc_after,
            (true, false) => &sql.docs_desc,
            (true, true) => &sql.docs_desc_before,
        };
        let statement = txn.prepare_cached(text).await.map_err(fail)?;
        let params: Vec<Param<'_>> = match &bound {
            Some(key) => vec![&name_str, key, &limit],
            None => vec![&name_str, &limit],
        };
        let rows = txn.query_raw(&statement, params).await.map_err(fail)?;
        let mut rows = pin!(rows);
        let mut fetched = 0;
        while let Some(row) = rows.try_next().await.map_err(fail)? {
            fetched += 1;
            let key = decode_key(column(&row, 0)?)?;
            if scan.scanned() >= config.query_scan_docs_max {
                return Err(too_broad(name, scan));
            }
            let doc = decode(&key, column(&row, 1)?)?;
            if scan.offer(&key, doc) {
                return Ok(());
            }
            bound = Some(key.into_bytes());
        }
        if fetched < fetch {
            return Ok(());
        }
        walk.grow(rows_max);
    }
}

/// A list being gathered from its rows: key, items in row order, last sequence.
type Gathered = (String, Vec<Value>, i64);

async fn scan_lists(
    inner: &Inner,
    txn: &deadpool_postgres::Transaction<'_>,
    name: &ProjectionName,
    query: &Query,
    scan: &mut Scan<'_>,
    what: &str,
) -> Result<(), StoreError> {
    let fail = |e| pg(e, what, &inner.config.url);
    let (sql, config) = (&inner.sql, &inner.config);
    let order = scan.order();
    // `(key, seq) > (k, MAX)` is `key > k`; `(key, seq) < (k, -1)` is `key < k`.
    let mut bound: Option<(Vec<u8>, i64)> = match &order {
        ScanOrder::KeyAsc { after } => after.as_ref().map(|k| (k.as_bytes().to_vec(), i64::MAX)),
        ScanOrder::KeyDesc { before } => before.as_ref().map(|k| (k.as_bytes().to_vec(), -1)),
        ScanOrder::Any => None,
    };
    let rows_max = config.query_chunk_rows_max;
    let mut walk = Walk::new(&order, (query.limit + 1).saturating_mul(4).min(rows_max));
    let descending = walk.descending;
    let offer = |scan: &mut Scan<'_>, (key, mut items, last): Gathered| {
        if scan.scanned() >= config.query_scan_docs_max {
            return Err(too_broad(name, scan));
        }
        if descending {
            items.reverse();
        }
        let count = u64::try_from(last).unwrap_or(0) + 1;
        Ok(scan.offer(&key, list_document(items, count)))
    };
    let name_str = name.as_str();
    let mut current: Option<Gathered> = None;
    loop {
        let fetch = walk.chunk;
        let limit = fetch as i64;
        let text = match (descending, bound.is_some()) {
            (false, false) => &sql.items_asc,
            (false, true) => &sql.items_asc_after,
            (true, false) => &sql.items_desc,
            (true, true) => &sql.items_desc_before,
        };
        let statement = txn.prepare_cached(text).await.map_err(fail)?;
        let params: Vec<Param<'_>> = match &bound {
            Some((key, seq)) => vec![&name_str, key, seq, &limit],
            None => vec![&name_str, &limit],
        };
        let rows = txn.query_raw(&statement, params).await.map_err(fail)?;
        let mut rows = pin!(rows);
        let mut fetched = 0;
        while let Some(row) = rows.try_next().await.map_err(fail)? {
            fetched += 1;
            let key: &[u8] = column(&row, 0)?;
            let seq: i64 = column(&row, 1)?;
            let item: &str = column(&row, 2)?;
            let same = matches!(&current, Some((k, ..)) if k.as_bytes() == key);
            if !same {
                let next = (decode_key(key)?, Vec::new(), seq);
                if let Some(done) = current.replace(next)
                    && offer(scan, done)?
                {
                    return Ok(());
                }
            }
            if let Some((key, items, last)) = &mut current {
                items.push(decode(key, item)?);
                *last = (*last).max(seq);
            }
            bound = Some((key.to_vec(), seq));
        }
        if fetched < fetch {
            break;
        }
        walk.grow(rows_max);
    }
    if let Some(done) = current {
        offer(scan, done)?;
    }
    Ok(())
}
