//! What every PostgreSQL adapter shares, written once: the schema-name rule, URL redaction for
//! messages, which error codes are worth a retry, a bounded pool, and migrations compiled into
//! the binary and applied at open.
//!
//! Adapters map [`PgError`] into their port's error type. Every PostgreSQL adapter (event
//! store, read models, consumer groups, key-value metadata) opens its pool and applies its
//! migrations through [`Connection::open`].

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;

pub mod environment;
pub mod service;
pub mod tls;
pub use tls::Tls;

/// How to start the local PostgreSQL of a developer machine, for messages.
pub const START_HINT: &str = "start it (on Debian: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start)";

/// Longest schema name, in bytes (PostgreSQL identifiers take 63; room is left for suffixes).
pub const SCHEMA_NAME_BYTES_MAX: usize = 48;

/// A failure, with whether retrying later can fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub message: String,
    pub retriable: bool,
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl PgError {
    fn permanent(message: impl Into<String>) -> Self {
        PgError {
            message: message.into(),
            retriable: false,
        }
    }
}

/// Schema names that never need quoting rules: 1 to [`SCHEMA_NAME_BYTES_MAX`] bytes of
/// lowercase ASCII letters, digits and `_`, starting with a letter or `_`, not `pg_…`.
pub fn validate_schema_name(schema: &str) -> Result<(), String> {
    let refuse = |why: &str| {
        Err(format!(
            "invalid schema name {:?}: {why}",
            schema.chars().take(64).collect::<String>()
        ))
    };
    if schema.is_empty() {
        return refuse("it is empty");
    }
    if schema.len() > SCHEMA_NAME_BYTES_MAX {
        return refuse(&format!(
            "it is {} bytes long, the most is {SCHEMA_NAME_BYTES_MAX}",
            schema.len()
        ));
    }
    if !schema
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return refuse("use only lowercase ASCII letters, digits and '_'");
    }
    if schema.as_bytes()[0].is_ascii_digit() {
        return refuse("it must start with a letter or '_'");
    }
    if schema.starts_with("pg_") {
        return refuse("names starting with 'pg_' are reserved by PostgreSQL");
    }
    Ok(())
}

pub use proteus_redact::redact;

/// Whether a PostgreSQL error code means "try again later": connection exceptions (08),
/// insufficient resources (53), shutdown or start-up (57P0x), serialization failure and
/// deadlock (40001, 40P01), lock not available (55P03), statement timeout (57014).
pub fn retriable(code: &SqlState) -> bool {
    let code = code.code();
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P0")
        || matches!(code, "40001" | "40P01" | "55P03" | "57014")
}

/// Maps a driver error met while doing `what` (a phrase such as "saving group 'billing'") on
/// a connection to the server at `url` (named without its password: a deployment may use
/// several PostgreSQL servers, one per store).
pub fn pg(error: tokio_postgres::Error, what: &str, url: &str) -> PgError {
    let server = described(url);
    if let Some(db) = error.as_db_error() {
        let retry = retriable(db.code());
        // 25006: a write on a server that takes none, most often a standby named first.
        let fix = if db.code().code() == "25006" {
            "; the server is read-only (a standby?): point the URL at the primary, or list every host and add target_session_attrs=read-write"
        } else {
            ""
        };
        return PgError {
            message: format!(
                "PostgreSQL at {server} failed {what}: {} ({}){}{}{fix}",
                db.message(),
                db.code().code(),
                db.detail().map(|d| format!("; {d}")).unwrap_or_default(),
                if retry { " (temporary, retry)" } else { "" }
            ),
            retriable: retry,
        };
    }
    let text = error.to_string();
    // A row or parameter of the wrong type: a bug or a schema changed under us, never fixed
    // by a retry.
    if text.starts_with("error deserializing") || text.starts_with("error serializing") {
        return PgError::permanent(format!("PostgreSQL at {server} failed {what}: {text}"));
    }
    PgError {
        message: format!(
            "the connection to PostgreSQL at {server} failed while {what} (temporary, retry): {error}{}",
            std::error::Error::source(&error)
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        ),
        retriable: true,
    }
}

/// Maps a failure to get a pooled connection to the server at `url` (named without its
/// password, since this is where an unreachable server shows).
pub fn pool_error(error: deadpool_postgres::PoolError, what: &str, url: &str) -> PgError {
    use deadpool_postgres::PoolError;
    let server = described(url);
    match error {
        PoolError::Backend(error) => {
            if let Some(failed) = tls_error(&error, url) {
                return failed;
            }
            // The server answered (too many connections, starting up): it is running.
            let answered = error.as_db_error().is_some();
            let mut mapped = pg(error, what, url);
            if mapped.retriable && !answered {
                mapped
                    .message
                    .push_str(&format!("; is it running? If not, {START_HINT}"));
            }
            mapped
        }
        PoolError::Closed => PgError::permanent("the store was closed"),
        PoolError::Timeout(kind) => PgError {
            message: format!(
                "no connection to PostgreSQL at {server} became available in time ({kind:?} timeout) while {what} (temporary, retry); every pooled connection is busy (raise pool_size_max) or PostgreSQL does not answer"
            ),
            retriable: true,
        },
        other => PgError::permanent(format!("the connection pool failed while {what}: {other}")),
    }
}

/// A failed TLS handshake, with what to change. A certificate refused or TLS refused by the
/// server is configuration, never fixed by a retry; a handshake cut by the network is.
fn tls_error(error: &tokio_postgres::Error, url: &str) -> Option<PgError> {
    // In TLS 1.3 the server checks a client certificate after the client has finished its
    // side of the handshake, so a refused one arrives as an alert on the first read.
    let alerted = std::error::Error::source(error)
        .is_some_and(|cause| cause.to_string().contains("received fatal alert"));
    if !alerted
        && !error
            .to_string()
            .starts_with("error performing TLS handshake")
    {
        return None;
    }
    // The driver's message names only the step; the cause (rustls's, or the server refusing
    // TLS) is in the source chain.
    let mut text = String::from("TLS handshake");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    let configuration =
        alerted || text.contains("certificate") || text.contains("does not support TLS");
    Some(PgError {
        message: format!(
            "TLS with PostgreSQL at {} failed: {text}; {}",
            described(url),
            tls::hint(&text)
        ),
        retriable: !configuration,
    })
}

/// Why connecting to the server at `url` failed, and what to do. A server that answered and
/// refused (unknown role or database, wrong password) is running: telling the user to start it
/// would send them the wrong way, and retrying will not help.
fn connect_error(error: &tokio_postgres::Error, url: &str) -> PgError {
    if let Some(failed) = tls_error(error, url) {
        return failed;
    }
    let server = described(url);
    if let Some(db) = error.as_db_error() {
        let code = db.code().code();
        let fix = match code {
            "28000" if db.message().contains("certificate") => {
                "; the server authenticates this user by client certificate: name one signed by a CA in the server's ssl_ca_file, whose common name is the user, with sslcert=/path/cert.pem&sslkey=/path/key.pem in the URL"
            }
            "28000" => {
                "; create the role (CREATE ROLE name LOGIN) or put an existing user in the URL"
            }
            "28P01" => {
                "; check the password in the URL (postgres://user:password@host/db), in PGPASSWORD or in the password file (~/.pgpass, or the file PGPASSFILE names)"
            }
            "3D000" => {
                "; create the database (CREATE DATABASE name) or name an existing one in the URL"
            }
            _ => "",
        };
        if retriable(db.code()) {
            return PgError {
                message: format!(
                    "PostgreSQL at {server} refused the connection for now: {} ({code}); retry later",
                    db.message()
                ),
                retriable: true,
            };
        }
        return PgError::permanent(format!(
            "PostgreSQL at {server} refused the connection: {} ({code}){fix}",
            db.message()
        ));
    }
    let missing_password = std::error::Error::source(error)
        .is_some_and(|cause| cause.to_string().contains("password missing"));
    if missing_password {
        return PgError::permanent(format!(
            "PostgreSQL at {server} asks for a password and none is given: put it in the URL (postgres://user:password@host/db), in PGPASSWORD or in the password file (~/.pgpass, or the file PGPASSFILE names)"
        ));
    }
    PgError {
        message: format!(
            "cannot connect to PostgreSQL at {server}: {error}{}; is it running? If not, {START_HINT}",
            std::error::Error::source(error)
                .map(|s| format!(" ({s})"))
                .unwrap_or_default(),
        ),
        retriable: true,
    }
}

/// Whether the server at `url` answers a query on a connection of `pool` (a pooled one, so
/// this checks what the store's own calls would meet) within `timeout`: a health check, cheap
/// enough to run every few seconds. `Err` says why not, with the server's redacted URL.
pub async fn check_health(pool: &Pool, url: &str, timeout: Duration) -> Result<(), String> {
    let checked = async {
        let client = pool
            .get()
            .await
            .map_err(|e| pool_error(e, "checking its health", url))?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| pg(e, "checking its health", url))?;
        Ok::<(), PgError>(())
    };
    match tokio::time::timeout(timeout, checked).await {
        Ok(result) => result.map_err(|e| e.message),
        Err(_) => {
            // Every pooled connection busy the whole time: the server may be fine but slow to
            // free them, or the pool too small for the load; either way the store's own calls
            // wait as this check did, so it is reported, with what tells the two apart.
            let status = pool.status();
            let busy = if status.size >= status.max_size && status.available == 0 {
                format!(
                    "; all {} pooled connections stayed busy (a slow server or a pool too small for the load: raise pool_size_max)",
                    status.max_size
                )
            } else {
                String::new()
            };
            Err(format!(
                "PostgreSQL at {} did not answer SELECT 1 within {} ms{busy}",
                described(url),
                timeout.as_millis()
            ))
        }
    }
}

/// `url` without its password, for messages, with where its host came from when libpq's
/// environment gave it (a bare `postgres://` names no server).
pub fn described(url: &str) -> String {
    let shown = redact(url);
    match environment::host_from_environment(url, &|name| std::env::var(name).ok()) {
        Some(host) => format!("{shown} ({host})"),
        None => shown,
    }
}

/// The driver's configuration for `url` (libpq's TLS settings taken out, see [`tls`]) and
/// the TLS connector they ask for, or why the URL is refused. As libpq does, what the URL
/// leaves out comes from libpq's environment variables and password file (see
/// [`environment`]), so a password, or every part of the connection, can live in a secret's
/// variables instead of the URL.
pub fn driver(url: &str) -> Result<(tokio_postgres::Config, Tls), String> {
    driver_with(url, &|name| std::env::var(name).ok())
}

fn driver_with(url: &str, env: environment::Env) -> Result<(tokio_postgres::Config, Tls), String> {
    let invalid = |e: String| {
        format!(
            "the PostgreSQL URL {} is invalid: {e}; use the form postgres://user@host:5432/database",
            redact(url)
        )
    };
    let at = |e: String| format!("PostgreSQL at {}: {e}", redact(url));
    let expanded = service::expand(url, env).map_err(at)?;
    let (driver_url, settings) = tls::split(&expanded, env).map_err(invalid)?;
    let driver_url = environment::url_with_pgport(&driver_url, env).map_err(at)?;
    let mut config =
        tokio_postgres::Config::from_str(&driver_url).map_err(|e| invalid(e.to_string()))?;
    environment::fill(&mut config, &driver_url, env).map_err(at)?;
    let tls = tls::connector(&settings).map_err(at)?;
    Ok((config, tls))
}

/// How to connect: the URL and the pool's bounds.
#[derive(Clone)]
pub struct Connection {
    pub url: String,
    pub application_name: &'static str,
    pub pool_size_max: usize,
    pub connect_timeout_ms: u64,
    pub pool_wait_timeout_ms: u64,
    pub statement_timeout_ms: u64,
}

impl Connection {
    /// The driver's configuration and TLS connector, or why the URL is refused.
    pub fn config(&self) -> Result<(tokio_postgres::Config, Tls), String> {
        let (mut config, tls) = driver(&self.url)?;
        if config.get_application_name().is_none() {
            config.application_name(self.application_name);
        }
        // A timeout the string or PGCONNECT_TIMEOUT gives wins over the store's setting.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_millis(self.connect_timeout_ms));
        }
        let mut options = config.get_options().unwrap_or_default().to_owned();
        if !options.is_empty() {
            options.push(' ');
        }
        // Notices (`CREATE SCHEMA IF NOT EXISTS` of a schema that exists, at every start) would
        // reach the log as INFO lines from the driver; warnings and errors still come.
        options.push_str(&format!(
            "-c statement_timeout={} -c client_encoding=UTF8 -c client_min_messages=warning",
            self.statement_timeout_ms
        ));
        config.options(&options);
        Ok((config, tls))
    }

    /// Applies `migrations` to `schema`, then builds the pool (connections open lazily).
    pub async fn open(&self, schema: &str, migrations: &Migrations) -> Result<Pool, PgError> {
        self.open_schema(schema, migrations, false).await
    }

    /// [`Connection::open`] for a schema that must already hold `migrations`' tables, as when
    /// a store is read rather than served (`proteus migrate --from postgres://…`): a mistyped
    /// schema is refused, creating nothing, instead of opening as an empty store. A schema an
    /// older Proteus wrote still gets the migrations it lacks, as a server opening it would:
    /// the reads are written for the current tables, and the migrations only add to them.
    pub async fn open_existing(
        &self,
        schema: &str,
        migrations: &Migrations,
    ) -> Result<Pool, PgError> {
        self.open_schema(schema, migrations, true).await
    }

    /// Checks (when `must_exist`) and migrates `schema` over one connection, closed after,
    /// then builds the pool.
    async fn open_schema(
        &self,
        schema: &str,
        migrations: &Migrations,
        must_exist: bool,
    ) -> Result<Pool, PgError> {
        validate_schema_name(schema).map_err(PgError::permanent)?;
        if self.pool_size_max == 0 {
            return Err(PgError::permanent(
                "pool_size_max is 0; it must be at least 1",
            ));
        }
        let (config, tls) = self.config().map_err(PgError::permanent)?;
        let connect_timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_millis(self.connect_timeout_ms));
        let (mut client, connection) = config
            .connect(tls.clone())
            .await
            .map_err(|e| connect_error(&e, &self.url))?;
        let driver = tokio::spawn(connection);
        let prepared = async {
            if must_exist {
                self.check_exists(&client, schema, migrations).await?;
            }
            migrations.apply(&mut client, &self.url, schema).await
        }
        .await;
        drop(client);
        let _ = driver.await;
        prepared?;
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(self.pool_size_max)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_millis(self.pool_wait_timeout_ms)))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(connect_timeout))
            .build()
            .map_err(|e| PgError::permanent(format!("cannot build the connection pool: {e}")))
    }

    /// Refuses a `schema` without `migrations`' table, naming it.
    async fn check_exists(
        &self,
        client: &tokio_postgres::Client,
        schema: &str,
        migrations: &Migrations,
    ) -> Result<(), PgError> {
        // `schema` passed `validate_schema_name`: only [a-z0-9_], safe to splice.
        let table = format!("\"{schema}\".{}", migrations.table);
        let found = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .map_err(|e| pg(e, &format!("looking for schema {schema}"), &self.url))?;
        if !found.get::<_, bool>(0) {
            return Err(PgError::permanent(format!(
                "schema {schema} at {} holds no {} (it has no table {}); name the schema that does",
                described(&self.url),
                migrations.what,
                migrations.table
            )));
        }
        Ok(())
    }
}

/// One migration: its version (from 1, consecutive), a short name and its SQL.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// An adapter's migrations and the table recording them in each schema.
pub struct Migrations {
    /// Named per adapter, so adapters sharing a schema never mix their versions.
    pub table: &'static str,
    /// What the schema holds, for messages ("consumer groups").
    pub what: &'static str,
    pub list: &'static [Migration],
}

/// The first key of the advisory lock (the second is the schema name's hash), shared by every
/// adapter so two processes, or two adapters sharing a schema, migrate one after the other.
const ADVISORY_LOCK_CLASS: i32 = 0x5052_5453;

impl Migrations {
    /// Applies, in one transaction under the schema's advisory lock, every migration the schema
    /// misses (creating it if needed); refuses a schema migrated by a newer build. `url` names
    /// the server in errors.
    pub async fn apply(
        &self,
        client: &mut tokio_postgres::Client,
        url: &str,
        schema: &str,
    ) -> Result<Vec<i32>, PgError> {
        validate_schema_name(schema).map_err(PgError::permanent)?;
        let what = format!("migrating the {} in schema {schema}", self.what);
        let fail = |e| pg(e, &what, url);
        let table = self.table;
        let txn = client.transaction().await.map_err(fail)?;
        txn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            &[&ADVISORY_LOCK_CLASS, &schema],
        )
        .await
        .map_err(fail)?;
        // `schema` passed `validate_schema_name`: only [a-z0-9_], safe to splice.
        txn.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
             CREATE TABLE IF NOT EXISTS \"{schema}\".{table} (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .await
        .map_err(fail)?;
        let applied: Vec<i32> = txn
            .query(
                &format!("SELECT version FROM \"{schema}\".{table} ORDER BY version"),
                &[],
            )
            .await
            .map_err(fail)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let known = self.list.last().map_or(0, |m| m.version);
        if let Some(&newest) = applied.last()
            && newest > known
        {
            return Err(PgError::permanent(format!(
                "the {} of schema {schema} were migrated to version {newest} by a newer Proteus, but this one knows versions up to {known}; run the newer version, or use another schema",
                self.what
            )));
        }
        let mut done = Vec::new();
        for migration in self.list {
            if applied.contains(&migration.version) {
                continue;
            }
            txn.batch_execute(&format!("SET LOCAL search_path TO \"{schema}\""))
                .await
                .map_err(fail)?;
            txn.batch_execute(migration.sql).await.map_err(|e| {
                PgError::permanent(format!(
                    "migration {} ({}) of the {} in schema {schema} failed: {}",
                    migration.version,
                    migration.name,
                    self.what,
                    pg(e, &what, url)
                ))
            })?;
            txn.execute(
                &format!("INSERT INTO \"{schema}\".{table} (version, name) VALUES ($1, $2)"),
                &[&migration.version, &migration.name],
            )
            .await
            .map_err(fail)?;
            done.push(migration.version);
        }
        txn.commit().await.map_err(fail)?;
        Ok(done)
    }
}

#[cfg(feature = "test-support")]
pub mod test_support;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pguser_and_pgpassword_fill_a_url_without_them() {
        let env = |name: &str| match name {
            "PGUSER" => Some("app".to_owned()),
            "PGPASSWORD" => Some("from-secret".to_owned()),
            _ => None,
        };
        let (config, _) = driver_with("postgres://db.example/shop", &env).unwrap();
        assert_eq!(config.get_user(), Some("app"));
        assert_eq!(config.get_password(), Some(&b"from-secret"[..]));
        let (config, _) = driver_with("postgres://owner:inline@db.example/shop", &env).unwrap();
        assert_eq!(config.get_user(), Some("owner"));
        assert_eq!(config.get_password(), Some(&b"inline"[..]));
        let (config, _) = driver_with("postgres://db.example/shop", &|_| None).unwrap();
        assert_eq!(config.get_password(), None);
    }

    #[test]
    fn a_service_file_gives_the_connection_and_wins_over_the_environment() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            "[shop]\nhost=db.internal\nport=6432\ndbname=shop\nuser=app\npassword=p:w&d\n",
        )
        .unwrap();
        let path = file.path().display().to_string();
        let env = move |name: &str| match name {
            "PGSERVICEFILE" => Some(path.clone()),
            "PGSERVICE" => Some("shop".to_owned()),
            "PGPORT" => Some("7777".to_owned()),
            "PGUSER" => Some("someone-else".to_owned()),
            _ => None,
        };
        for url in ["postgres://", "postgres://?service=shop", ""] {
            let (config, _) = driver_with(url, &env).unwrap();
            assert_eq!(
                config.get_hosts(),
                &[tokio_postgres::config::Host::Tcp("db.internal".into())],
                "{url:?}"
            );
            assert_eq!(config.get_ports(), &[6432], "{url:?}");
            assert_eq!(config.get_dbname(), Some("shop"));
            assert_eq!(config.get_user(), Some("app"));
            assert_eq!(config.get_password(), Some(&b"p:w&d"[..]));
        }
        let (config, _) = driver_with("postgres://owner@primary:5433/mine", &env).unwrap();
        assert_eq!(config.get_ports(), &[5433]);
        assert_eq!(config.get_user(), Some("owner"));
        assert_eq!(config.get_dbname(), Some("mine"));
    }

    #[test]
    fn schema_names() {
        for good in [
            "groups_1",
            "proteus",
            "_x",
            "a1_b2",
            &"s".repeat(SCHEMA_NAME_BYTES_MAX),
        ] {
            assert!(validate_schema_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Groups",
            "1x",
            "pg_x",
            "a-b",
            "a b",
            "a\"b",
            "é",
            &"s".repeat(SCHEMA_NAME_BYTES_MAX + 1),
        ] {
            assert!(validate_schema_name(bad).is_err(), "{bad}");
        }
    }
}
