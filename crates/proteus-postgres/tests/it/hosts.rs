//! Several hosts in one URL, as libpq takes them for a primary and its standbys: the first
//! that answers is used, and `target_session_attrs=read-write` passes over a read-only one
//! (on which opening a store fails, its migrations being writes).

use proteus_postgres::test_support::{PrivatePostgres, unique_name};
use proteus_postgres::{Connection, Migrations};

const NO_MIGRATIONS: Migrations = Migrations {
    table: "hosts_test_migrations",
    what: "hosts test",
    list: &[],
};

/// The port of the server the pool's connection reached.
async fn port_reached(url: &str) -> Result<i32, String> {
    let connection = Connection {
        url: url.to_owned(),
        application_name: "proteus-it-hosts",
        pool_size_max: 1,
        connect_timeout_ms: 5_000,
        pool_wait_timeout_ms: 5_000,
        statement_timeout_ms: 5_000,
    };
    let pool = connection
        .open(&unique_name("hosts"), &NO_MIGRATIONS)
        .await
        .map_err(|e| e.to_string())?;
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let row = client
        .query_one("SELECT current_setting('port')::int", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn the_first_host_that_answers_is_used_and_read_write_skips_a_read_only_one() {
    let (first, second) = tokio::join!(PrivatePostgres::start(), PrivatePostgres::start());
    let (p1, p2) = (first.port, second.port);
    let nothing_listens = 1;

    let url = format!("postgres://postgres@127.0.0.1:{nothing_listens},127.0.0.1:{p2}/postgres");
    assert_eq!(port_reached(&url).await.unwrap(), i32::from(p2));

    // The first server turns read-only, as a standby is: opening on it fails (migrations
    // write), and read-write passes over it to the second.
    let admin = first.admin().await;
    admin
        .batch_execute("ALTER SYSTEM SET default_transaction_read_only = on")
        .await
        .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let both = format!("postgres://postgres@127.0.0.1:{p1},127.0.0.1:{p2}/postgres");
    let refused = port_reached(&both).await.unwrap_err();
    assert!(
        refused.contains("read-only") && refused.contains("target_session_attrs=read-write"),
        "{refused}"
    );
    let read_write = format!("{both}?target_session_attrs=read-write");
    assert_eq!(port_reached(&read_write).await.unwrap(), i32::from(p2));
}
