//! Event-sourced streams (`/v1/streams`): atomic appends with expected versions, stream and
//! feed reads, snapshots and aggregates.

use proteus_eventstore::{
    Aggregate, AppendOutcome, Direction, ExpectedVersion, FeedPage, ProposedEvent, Snapshot,
    StreamInfo, StreamPage,
};
use serde_json::{Value, json};

use crate::{Client, ClientError, encode};

fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Forward => "forward",
        Direction::Backward => "backward",
    }
}

/// What a feed read (`$all` or `$ce-{category}`) asks for.
#[derive(Debug, Clone, Default)]
pub struct FeedQuery<'a> {
    /// First position to read (inclusive); 0 is the beginning.
    pub from: u64,
    pub limit: usize,
    /// Only these event types (empty: all).
    pub types: &'a [&'a str],
    pub stream_prefix: Option<&'a str>,
    /// At the end of the feed, wait this long for new events (long polling).
    pub wait_ms: u64,
}

impl Client {
    fn stream_path(stream: &str) -> String {
        format!("/v1/streams/{}", encode(stream))
    }

    /// Appends `events` to `stream` atomically if its version is `expected`. A mismatch is a
    /// [`ClientError::Problem`] with status 409 whose body has `actual_version`.
    pub async fn append_events(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[ProposedEvent],
    ) -> Result<AppendOutcome, ClientError> {
        let url = self.url(&format!(
            "{}?expected_version={}",
            Client::stream_path(stream),
            encode(&expected.to_string())
        ));
        let response = self.send(self.http.post(url).json(events)).await?;
        self.json(response).await
    }

    /// Up to `limit` events of `stream` from version `from` (backwards from the newest with
    /// `u64::MAX` and [`Direction::Backward`]).
    pub async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<StreamPage, ClientError> {
        let from = if from == u64::MAX {
            "end".to_owned()
        } else {
            from.to_string()
        };
        let url = self.url(&format!(
            "{}?from={from}&direction={}&limit={limit}",
            Client::stream_path(stream),
            direction_name(direction)
        ));
        let response = self.send(self.http.get(url)).await?;
        self.json(response).await
    }

    /// A page of a feed: `$all`, or `$ce-{category}` for a category.
    pub async fn read_feed(
        &self,
        feed: &str,
        query: &FeedQuery<'_>,
    ) -> Result<FeedPage, ClientError> {
        let mut url = format!(
            "{}?from={}&limit={}",
            Client::stream_path(feed),
            query.from,
            query.limit.max(1)
        );
        if !query.types.is_empty() {
            url.push_str(&format!("&types={}", encode(&query.types.join(","))));
        }
        if let Some(prefix) = query.stream_prefix {
            url.push_str(&format!("&stream_prefix={}", encode(prefix)));
        }
        if query.wait_ms > 0 {
            url.push_str(&format!("&wait_ms={}", query.wait_ms));
        }
        let response = self.send(self.http.get(self.url(&url))).await?;
        self.json(response).await
    }

    pub async fn stream_info(&self, stream: &str) -> Result<StreamInfo, ClientError> {
        let url = self.url(&format!("{}/info", Client::stream_path(stream)));
        let response = self.send(self.http.get(url)).await?;
        self.json(response).await
    }

    /// Tombstones `stream` for good if its version is `expected`.
    pub async fn delete_stream(
        &self,
        stream: &str,
        expected: ExpectedVersion,
    ) -> Result<Value, ClientError> {
        let url = self.url(&format!(
            "{}?expected_version={}",
            Client::stream_path(stream),
            encode(&expected.to_string())
        ));
        let response = self.send(self.http.delete(url)).await?;
        self.json(response).await
    }

    /// Stores the state of `stream` folded up to `version`.
    pub async fn put_snapshot(
        &self,
        stream: &str,
        version: u64,
        snapshot_type: &str,
        data: &Value,
    ) -> Result<(), ClientError> {
        let url = self.url(&format!("{}/snapshot", Client::stream_path(stream)));
        let body = json!({ "version": version, "type": snapshot_type, "data": data });
        self.send(self.http.put(url).json(&body)).await?;
        Ok(())
    }

    /// The latest snapshot of `stream`; `None` when it has none (or does not exist). A deleted
    /// stream is a [`ClientError::Problem`] with status 410.
    pub async fn get_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, ClientError> {
        let url = self.url(&format!("{}/snapshot", Client::stream_path(stream)));
        match self.send(self.http.get(url)).await {
            Ok(response) => self.json(response).await.map(Some),
            Err(ClientError::Problem { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The latest snapshot of `stream` and the events after it: what loading an aggregate
    /// needs, in one request.
    pub async fn read_aggregate(&self, stream: &str) -> Result<Aggregate, ClientError> {
        let url = self.url(&format!("{}/aggregate", Client::stream_path(stream)));
        let response = self.send(self.http.get(url)).await?;
        self.json(response).await
    }
}
