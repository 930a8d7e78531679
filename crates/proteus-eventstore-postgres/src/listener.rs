//! The one LISTEN connection of a store: it hears the `<schema>.head` notifications appends
//! send at commit and advances the store's `watch` of the committed head, which every
//! `wait_for_position` of the process waits on.
//!
//! When the connection is lost it reconnects (with backoff) and, once listening again, reads
//! the head from the table, so what was announced while it was away is not missed. Waiters
//! also poll the head themselves every `listen_fallback_poll_ms` while they hear nothing.

use std::future::poll_fn;
use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, NoTls};

/// Advances `head` to `position` if it is higher (the head never goes back).
pub(crate) fn advance(head: &watch::Sender<u64>, position: u64) {
    head.send_if_modified(|current| {
        if position > *current {
            *current = position;
            true
        } else {
            false
        }
    });
}

/// Runs until aborted (the store's `close` or drop aborts it).
pub(crate) async fn run(
    config: tokio_postgres::Config,
    channel: String,
    head_sql: String,
    head: watch::Sender<u64>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if let Ok((client, mut connection)) = config.connect(NoTls).await {
            let notified = head.clone();
            // Drives the connection and forwards notifications; ends when it is lost.
            let driver = tokio::spawn(async move {
                while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
                    match message {
                        Ok(AsyncMessage::Notification(notification)) => {
                            if let Ok(position) = notification.payload().parse::<u64>() {
                                advance(&notified, position);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            });
            // Listen first, then read the head: nothing committed in between is missed.
            let listening = client
                .batch_execute(&format!("LISTEN \"{channel}\""))
                .await
                .is_ok();
            if listening && let Ok(row) = client.query_one(&head_sql, &[]).await {
                let position: i64 = row.get(0);
                advance(&head, u64::try_from(position).unwrap_or(0));
                backoff = Duration::from_millis(50);
                // Keep the client alive while the connection lives.
                let _ = driver.await;
            } else {
                driver.abort();
            }
            drop(client);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
