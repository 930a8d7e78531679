//! Live waits across processes: the one LISTEN connection of a store, and the follower task
//! that announces this process's commits and keeps the safe head moving while someone waits.
//!
//! Appends no longer NOTIFY inside their transactions (a NOTIFY there makes every commit of
//! the database wait for PostgreSQL's notification queue lock). Instead the follower sends
//! `pg_notify('<schema>.head', last_position)` after the commits, coalesced: while one is on
//! its way the next positions pile up into one. Every process LISTENs and records what it hears
//! in `heard`; while `wait_for_position` has waiters and something heard or committed is past
//! the safe head, the follower probes (module `head`) until the head reaches it.
//!
//! When the LISTEN connection is lost it reconnects (with backoff) and, once listening again,
//! probes, so what was announced while it was away is not missed. Waiters also probe
//! themselves every `listen_fallback_poll_ms` while they hear nothing.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::AsyncMessage;

use crate::Shared;
use crate::head::advance;

/// Pause between probes while the safe head is behind what is known committed, doubling.
const FOLLOW_PAUSE_MS_MIN: u64 = 1;
const FOLLOW_PAUSE_MS_MAX: u64 = 50;

/// Runs until aborted (the store's `close` or drop aborts it).
pub(crate) async fn listen(
    config: tokio_postgres::Config,
    tls: proteus_postgres::Tls,
    channel: String,
    shared: Arc<Shared>,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if let Ok((client, mut connection)) = config.connect(tls.clone()).await {
            let heard = shared.heard.clone();
            // Drives the connection and forwards notifications; ends when it is lost.
            let driver = tokio::spawn(async move {
                while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
                    match message {
                        Ok(AsyncMessage::Notification(notification)) => {
                            if let Ok(position) = notification.payload().parse::<u64>() {
                                advance(&heard, position);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            });
            // Listen first, then probe: nothing committed in between is missed.
            let listening = client
                .batch_execute(&format!("LISTEN \"{channel}\""))
                .await
                .is_ok();
            if listening && shared.probe_head().await.is_ok() {
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

/// Announces this process's commits and, while anyone waits, probes until the safe head
/// reaches every position known committed. Runs until aborted.
pub(crate) async fn follow(shared: Arc<Shared>, channel: String) {
    let mut committed = shared.committed.subscribe();
    let mut heard = shared.heard.subscribe();
    let mut announced = 0u64;
    let min_pause = Duration::from_millis(FOLLOW_PAUSE_MS_MIN);
    let mut pause = min_pause;
    loop {
        let own = *committed.borrow_and_update();
        if own > announced {
            let payload = own.to_string();
            if shared
                .query(
                    &shared.sql.notify,
                    &[&channel, &payload],
                    "announcing a commit",
                    false,
                )
                .await
                .is_ok()
            {
                announced = own;
            }
        }
        let wanted = own.max(*heard.borrow_and_update());
        let waiting = shared.head.receiver_count() > 0;
        let before = *shared.head.borrow();
        let behind = waiting
            && wanted > before
            && match shared.probe_head().await {
                Ok(probe) => {
                    if probe.safe > before {
                        pause = min_pause;
                    }
                    probe.safe < wanted
                }
                Err(_) => true,
            };
        if behind || own > announced {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(FOLLOW_PAUSE_MS_MAX));
            continue;
        }
        pause = min_pause;
        tokio::select! {
            _ = committed.changed() => {}
            _ = heard.changed() => {}
        }
    }
}
