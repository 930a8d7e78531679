//! PostgreSQL: one connection per producer, each batch one `INSERT … SELECT FROM UNNEST` of
//! arrays in its own implicit transaction, committed with `synchronous_commit = on` (the WAL
//! is flushed before the commit returns).

use async_trait::async_trait;
use tokio_postgres::{Client, Statement};

use super::{Bench, Setup, Sink, connecting};
use crate::events::Batch;

/// Longest identifier PostgreSQL keeps without truncating it.
const IDENTIFIER_BYTES_MAX: usize = 63;

/// A table name the benchmark may drop and create: lower-case ASCII letters, digits and `_`,
/// starting with a letter or `_`, at most 63 bytes; so it needs no quoting.
pub fn check_table_name(table: &str) -> Result<(), String> {
    let valid = !table.is_empty()
        && table.len() <= IDENTIFIER_BYTES_MAX
        && table
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !table.as_bytes()[0].is_ascii_digit();
    if !valid {
        return Err(format!(
            "--postgres-table {table:?} must be 1 to {IDENTIFIER_BYTES_MAX} lower-case letters, digits and '_', not starting with a digit"
        ));
    }
    Ok(())
}

async fn connect(url: &str) -> Result<Client, String> {
    connect_for(url, "--target").await
}

/// Connects to the PostgreSQL `flag` names; a failure says how to start it.
pub(crate) async fn connect_for(url: &str, flag: &str) -> Result<Client, String> {
    let shown = super::redact(url);
    let (client, connection) = connecting(&format!("PostgreSQL at {shown}"), async {
        // The same TLS as Proteus's stores (libpq's sslmode, prefer by default), so a peer
        // measured beside Proteus pays what Proteus pays.
        let (config, tls) = proteus_postgres::driver(url).map_err(|e| format!("{flag}: {e}"))?;
        config.connect(tls).await.map_err(|e| {
            format!(
                "cannot reach PostgreSQL at {shown}: {e}; start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` or fix {flag}"
            )
        })
    })
    .await?;
    // The connection task ends when the client is dropped; its errors surface on the client.
    tokio::spawn(connection);
    Ok(client)
}

pub struct PostgresBench {
    url: String,
    table: String,
    keep: bool,
}

impl PostgresBench {
    pub async fn prepare(url: &str, setup: &Setup) -> Result<PostgresBench, String> {
        let table = &setup.postgres_table;
        check_table_name(table)?;
        let client = connect(url).await?;
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table}; \
                 CREATE TABLE {table} (id bigserial PRIMARY KEY, event_id text NOT NULL, body bytea NOT NULL)"
            ))
            .await
            .map_err(|e| format!("creating table {table} failed: {e}"))?;
        Ok(PostgresBench {
            url: url.to_owned(),
            table: table.clone(),
            keep: setup.keep,
        })
    }
}

#[async_trait]
impl Bench for PostgresBench {
    async fn sink(&self) -> Result<Box<dyn Sink>, String> {
        let client = connect(&self.url).await?;
        client
            .batch_execute("SET synchronous_commit = on")
            .await
            .map_err(|e| format!("SET synchronous_commit failed: {e}"))?;
        let insert = client
            .prepare(&format!(
                "INSERT INTO {} (event_id, body) SELECT * FROM UNNEST($1::text[], $2::bytea[])",
                self.table
            ))
            .await
            .map_err(|e| format!("preparing the INSERT failed: {e}"))?;
        Ok(Box::new(PostgresSink {
            client,
            insert,
            staged: None,
        }))
    }

    async fn finish(&self) -> Result<(), String> {
        if self.keep {
            return Ok(());
        }
        let client = connect(&self.url).await?;
        client
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table))
            .await
            .map_err(|e| format!("dropping table {} failed: {e}", self.table))
    }
}

struct PostgresSink {
    client: Client,
    insert: Statement,
    staged: Option<Batch>,
}

#[async_trait]
impl Sink for PostgresSink {
    fn stage(&mut self, batch: Batch) -> Result<(), String> {
        self.staged = Some(batch);
        Ok(())
    }

    async fn send(&mut self) -> Result<(), String> {
        let batch = self.staged.take().ok_or("no batch staged")?;
        let ids: Vec<&str> = (0..batch.len()).map(|i| batch.id(i)).collect();
        let bodies: Vec<&[u8]> = batch
            .events
            .iter()
            .map(|r| &batch.body[r.clone()])
            .collect();
        let inserted = self
            .client
            .execute(&self.insert, &[&ids, &bodies])
            .await
            .map_err(|e| format!("INSERT failed: {e}"))?;
        if inserted != batch.len() as u64 {
            return Err(format!(
                "inserted {inserted} rows for {} events",
                batch.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_need_no_quoting() {
        assert!(check_table_name("proteus_bench_events").is_ok());
        assert!(check_table_name("_t1").is_ok());
        for bad in ["", "Events", "1t", "a-b", "a;drop table x", &"a".repeat(64)] {
            let error = check_table_name(bad).unwrap_err();
            assert!(error.contains("--postgres-table"), "{error}");
        }
    }
}
