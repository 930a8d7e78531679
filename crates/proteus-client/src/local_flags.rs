//! In-process flag evaluation kept in sync with the server.
//!
//! [`LocalFlags`] fetches a flag set once, compiles it with the same engine the server uses
//! (`proteus-flags`), and evaluates locally: no network round trip per evaluation. A background
//! task follows the set's change stream (`GET /v1/flagsets/{set}/events`) and refetches on every
//! message, so a change reaches the process within one round trip; if the stream breaks it
//! reconnects with backoff and refetches, so a missed message is never a stale set for long.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use proteus_flags::{FlagSet, FlagSetBuilder, Validation};
use serde_json::Value;

use crate::{Client, ClientError};

/// Reconnection delays of the change stream, doubling from the first to the last.
const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(100);
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(30);

/// One version of the set, compiled.
#[derive(Debug)]
pub struct FlagsSnapshot {
    pub version: u64,
    pub flags: FlagSet,
}

/// A flag set evaluated in this process, updated as the server's set changes.
///
/// ```no_run
/// # async fn example() -> Result<(), proteus_client::ClientError> {
/// let client = proteus_client::Client::new("http://127.0.0.1:7070")?;
/// let flags = proteus_client::LocalFlags::connect(client, "prod").await?;
/// let context = serde_json::json!({"targetingKey": "user-1"});
/// let snapshot = flags.snapshot();
/// let on = snapshot.flags.evaluate("new-checkout", context.as_object().unwrap(), 0);
/// println!("{:?} {:?}", on.value, on.reason);
/// # Ok(()) }
/// ```
pub struct LocalFlags {
    current: Arc<RwLock<Arc<FlagsSnapshot>>>,
    follower: tokio::task::JoinHandle<()>,
}

impl Drop for LocalFlags {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

async fn fetch(client: &Client, set: &str) -> Result<FlagsSnapshot, ClientError> {
    let answer = client.get_flag_set(set).await?;
    let protocol = |reason: String| ClientError::Protocol {
        url: client.base_url.clone(),
        reason,
    };
    let validation = match answer["validation"].as_str() {
        Some("flagd") => Validation::FlagdCompatible,
        _ => Validation::Strict,
    };
    let document = answer.get("document").cloned().unwrap_or(Value::Null);
    let compiled = FlagSetBuilder::new(validation)
        .with_value(document)
        .build()
        .map_err(|e| protocol(format!("the server's flag set does not compile here: {e}")))?;
    Ok(FlagsSnapshot {
        version: answer["version"].as_u64().unwrap_or(0),
        flags: compiled.flag_set,
    })
}

impl LocalFlags {
    /// Fetches `set` and starts following its changes.
    pub async fn connect(client: Client, set: &str) -> Result<LocalFlags, ClientError> {
        let current = Arc::new(RwLock::new(Arc::new(fetch(&client, set).await?)));
        let follower = tokio::spawn(follow(client, set.to_owned(), current.clone()));
        Ok(LocalFlags { current, follower })
    }

    /// The current version, compiled; cheap (an `Arc` clone), and consistent for as long as it
    /// is held.
    pub fn snapshot(&self) -> Arc<FlagsSnapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn version(&self) -> u64 {
        self.snapshot().version
    }
}

/// Follows the change stream until the `LocalFlags` is dropped.
async fn follow(client: Client, set: String, current: Arc<RwLock<Arc<FlagsSnapshot>>>) {
    let mut delay = RECONNECT_DELAY_MIN;
    loop {
        let url = client.url(&format!("{}/events", Client::set_path(&set)));
        let request = client.flag_request(
            client
                .http
                .get(url)
                .header(reqwest::header::ACCEPT, "text/event-stream"),
        );
        if let Ok(response) = client.send(request).await {
            // (Re)connected: refetch, in case a change happened while disconnected.
            refresh(&client, &set, &current).await;
            delay = RECONNECT_DELAY_MIN;
            let mut events = eventsource_stream::Eventsource::eventsource(response.bytes_stream());
            while let Some(Ok(_message)) = events.next().await {
                refresh(&client, &set, &current).await;
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RECONNECT_DELAY_MAX);
    }
}

async fn refresh(client: &Client, set: &str, current: &RwLock<Arc<FlagsSnapshot>>) {
    // On failure (the set was deleted, the server is away) keep serving the last version.
    if let Ok(snapshot) = fetch(client, set).await {
        let mut current = current.write().unwrap_or_else(|p| p.into_inner());
        // Never go back to an older version (a slow fetch overtaken by a newer one).
        if snapshot.version >= current.version {
            *current = Arc::new(snapshot);
        }
    }
}
