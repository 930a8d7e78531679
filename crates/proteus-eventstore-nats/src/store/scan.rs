//! [`Scan`]: reading a range of stream sequences through an ephemeral pull consumer.

use super::*;
use proteus_nats::client;

/// Reads a range of stream sequences of one subject filter through an ephemeral pull
/// consumer (no acks, memory storage), deleted when dropped, or with message gets.
pub(super) struct Scan {
    pub(super) consumer: Option<consumer::PullConsumer>,
    pub(super) stream: stream::Stream,
    pub(super) end_seq: u64,
    pub(super) batch: usize,
    pub(super) buffer: VecDeque<Msg>,
    pub(super) drained: bool,
    /// The subject filter.
    pub(super) filter: String,
    /// The sequence from which the next message is looked for.
    pub(super) cursor: u64,
    /// Whether the scan reads with message gets: the consumer missed a message, or was not
    /// created in time (`proteus_nats::client::CONSUMER_CREATE_WAIT_MS`).
    pub(super) by_gets: bool,
    /// Longest wait for the next message of a fetch (the request timeout).
    pub(super) fetch_idle: Duration,
    pub(super) url: String,
    pub(super) what: String,
}

impl Scan {
    /// Sets how many messages the next fetch asks for (the reader's estimate of what it still
    /// needs), within the bound of one fetch.
    pub(super) fn expect(&mut self, messages: usize) {
        self.batch = messages.clamp(1, FETCH_MESSAGES_MAX);
    }

    pub(super) async fn next(&mut self) -> Result<Option<Msg>, EventStoreError> {
        if self.buffer.is_empty() && !self.drained {
            self.fill().await?;
        }
        match self.buffer.pop_front() {
            Some(message) if message.seq <= self.end_seq => Ok(Some(message)),
            _ => {
                self.drained = true;
                self.buffer.clear();
                Ok(None)
            }
        }
    }

    /// Whether another message at or below the end follows.
    pub(super) async fn has_more(&mut self) -> Result<bool, EventStoreError> {
        if self.buffer.is_empty() && !self.drained {
            self.fill().await?;
        }
        Ok(self.buffer.front().is_some_and(|m| m.seq <= self.end_seq))
    }

    /// Fetches the next batch. When the consumer finds nothing more before the end, that is
    /// checked with a message get (`next_by_subj` from the next sequence): NATS 2.9 answers a
    /// no-wait fetch from its count of pending messages, which can be short for filtered
    /// consumers that start mid-stream. If the get finds a message the consumer did not
    /// deliver, the rest of the scan reads message by message with gets; so does a scan whose
    /// consumer was not created in time.
    pub(super) async fn fill(&mut self) -> Result<(), EventStoreError> {
        let error = |e: &dyn std::fmt::Display| nats(&self.url, &self.what, e.to_string(), false);
        if !self.by_gets {
            let Some(consumer) = self.consumer.as_ref() else {
                self.drained = true;
                return Ok(());
            };
            let mut refused_for_size = false;
            let mut unanswered_fetches = 0;
            let mut attempt = 0;
            while attempt < 2 {
                let mut fetch = consumer.fetch().max_messages(self.batch);
                if refused_for_size {
                    // The next message alone is larger than the byte budget: fetch it alone.
                    fetch = fetch.max_messages(1);
                } else {
                    fetch = fetch.max_bytes(FETCH_BYTES_MAX);
                }
                let mut messages = fetch.messages().await.map_err(|e| error(&e))?;
                let mut received = 0;
                let mut unanswered = false;
                while let Some(item) = next_fetched(&mut messages, self.fetch_idle)
                    .await
                    .map_err(|e| error(&e))?
                {
                    let message = match item {
                        Ok(message) => message,
                        Err(e) => {
                            let text = e.to_string();
                            if text.contains("409")
                                || text.to_ascii_lowercase().contains("maxbytes")
                            {
                                refused_for_size = true;
                                break;
                            }
                            // On a cluster a new consumer's leader may not take pull requests
                            // yet: its first fetch is answered 503 (no responders). Ask again.
                            if client::is_unanswered_fetch(&e)
                                && received == 0
                                && unanswered_fetches < client::FRESH_CONSUMER_FETCHES_MAX
                            {
                                unanswered = true;
                                break;
                            }
                            return Err(error(&e));
                        }
                    };
                    let (seq, time_ms) = {
                        let info = message.info().map_err(|e| error(&e))?;
                        (
                            info.stream_sequence,
                            (info.published.unix_timestamp_nanos() / 1_000_000) as i64,
                        )
                    };
                    received += 1;
                    self.cursor = seq + 1;
                    self.buffer.push_back(Msg {
                        seq,
                        subject: message.message.subject.to_string(),
                        headers: message.message.headers.clone(),
                        payload: message.message.payload.clone(),
                        time_ms,
                    });
                    if seq >= self.end_seq {
                        self.drained = true;
                        return Ok(());
                    }
                }
                if received > 0 {
                    return Ok(());
                }
                if unanswered {
                    unanswered_fetches += 1;
                    tokio::time::sleep(ms(client::FRESH_CONSUMER_RETRY_MS)).await;
                    continue;
                }
                if !refused_for_size {
                    break;
                }
                attempt += 1;
            }
        }
        if self.cursor > self.end_seq {
            self.drained = true;
            return Ok(());
        }
        match self
            .stream
            .raw_message_builder()
            .next_by_subject(self.filter.clone())
            .sequence(self.cursor)
            .send()
            .await
        {
            Ok(message) if message.sequence <= self.end_seq => {
                // Read past what the consumer delivered, which it may deliver later (a replica
                // catching up): from here the scan reads with gets only, so no message comes
                // twice and none is skipped.
                self.cursor = message.sequence + 1;
                self.by_gets = true;
                self.buffer.push_back(message.into());
            }
            Ok(_) => self.drained = true,
            Err(e) if matches!(e.kind(), RawMessageErrorKind::NoMessageFound) => {
                self.drained = true
            }
            Err(e) => return Err(error(&e)),
        }
        Ok(())
    }
}

impl Drop for Scan {
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            let name = consumer.cached_info().name.clone();
            let stream = self.stream.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = stream.delete_consumer(&name).await;
                });
            }
        }
    }
}
