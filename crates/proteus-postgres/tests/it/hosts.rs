//! Several hosts in one URL, as libpq takes them for a primary and its standbys: the first
//! that answers is used, and `target_session_attrs=read-write` passes over a read-only one
//! (on which opening a store fails, its migrations being writes).

use proteus_postgres::test_support::PrivatePostgres;

/// The port of the server the pool's connection reached.
async fn port_reached(url: &str) -> Result<i32, String> {
    let port = crate::ask_pooled(url, "SELECT current_setting('port')")
        .await
        .map_err(|e| e.to_string())?;
    Ok(port.parse().expect("a port number"))
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
    first
        .admin()
        .await
        .batch_execute("ALTER SYSTEM SET default_transaction_read_only = on")
        .await
        .unwrap();
    first.restart().await;
    let both = format!("postgres://postgres@127.0.0.1:{p1},127.0.0.1:{p2}/postgres");
    let refused = port_reached(&both).await.unwrap_err();
    assert!(
        refused.contains("read-only") && refused.contains("target_session_attrs=read-write"),
        "{refused}"
    );
    let read_write = format!("{both}?target_session_attrs=read-write");
    assert_eq!(port_reached(&read_write).await.unwrap(), i32::from(p2));
}
