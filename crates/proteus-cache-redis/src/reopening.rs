//! A connection opened when first needed and dropped when a call shows it unusable, so the
//! next call opens a fresh one: how the cluster connection gets past the redis crate's wedge
//! (`cluster.rs`) and how the Sentinel connection follows a failover (`sentinel.rs`).

use std::future::Future;
use std::time::Duration;

use tokio::sync::Mutex;

/// Longest a call waits for the connection to use: another call may be opening it (to a
/// server that does not answer, say), and a call must stay bounded however many wait.
const CONNECTION_WAIT_MS: u64 = 5_000;

/// The connection in use, if any, and how many were dropped before it.
struct Current<C> {
    generation: u64,
    connection: Option<C>,
}

pub(crate) struct Reopening<C> {
    current: Mutex<Current<C>>,
}

impl<C: Clone> Reopening<C> {
    /// Starting with `connection` (`None`: opened by the first call).
    pub(crate) fn new(connection: Option<C>) -> Reopening<C> {
        Reopening {
            current: Mutex::new(Current {
                generation: 0,
                connection,
            }),
        }
    }

    /// The connection to use and its generation, opened with `open` if there is none (one
    /// caller opens it; the others wait for it, at most [`CONNECTION_WAIT_MS`]).
    pub(crate) async fn get<Open, Opening>(&self, open: Open) -> redis::RedisResult<(u64, C)>
    where
        Open: FnOnce() -> Opening,
        Opening: Future<Output = redis::RedisResult<C>>,
    {
        let getting = async {
            let mut current = self.current.lock().await;
            let connection = match &current.connection {
                Some(connection) => connection.clone(),
                None => {
                    let connection = open().await?;
                    current.connection = Some(connection.clone());
                    connection
                }
            };
            Ok((current.generation, connection))
        };
        let wait = Duration::from_millis(CONNECTION_WAIT_MS);
        match tokio::time::timeout(wait, getting).await {
            Ok(got) => got,
            Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
        }
    }

    /// Drops the connection of `generation`, so the next call opens another; `true` if this
    /// call dropped it (calls that failed on the same connection drop it once, not the fresh
    /// one opened after it).
    pub(crate) async fn drop_generation(&self, generation: u64) -> bool {
        let mut current = self.current.lock().await;
        if current.generation != generation {
            return false;
        }
        current.generation += 1;
        current.connection = None;
        true
    }
}
