//! [`Scan`]: reading a range of stream sequences through an ephemeral pull consumer; and
//! [`ParkedScans`], scans kept between forward reads so that a reader going on where its last
//! page stopped (a projection catching up, a subscription, a migration, a client paging through
//! a long stream) reads on with the same consumer instead of creating and deleting one (and, for
//! a stream, searching for the page's first message) for every page.

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
    /// Set when a parked scan is resumed, until its consumer answers a fetch. A consumer
    /// deleted meanwhile answers nothing (NATS 2.9) or 503 (no responders): the fetch then
    /// waits at most [`RESUMED_FETCH_WAIT_MS`] and takes a 503 for an answer, not for a new
    /// consumer's leader starting, and the reader goes on with a new consumer.
    pub(super) resumed_unconfirmed: bool,
    /// Whether a fetch that reaches the end is still taken in whole (a forward read's scan,
    /// which may be parked: its consumer has moved past every message it delivered, so none
    /// may be dropped unread). Other scans stop waiting at the end and drop the rest.
    pub(super) keep_fetched_past_end: bool,
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

    /// The next message at or below the end. Messages fetched past the end stay buffered, so
    /// a scan parked and resumed with a later end still returns them.
    pub(super) async fn next(&mut self) -> Result<Option<Msg>, EventStoreError> {
        if self.buffer.is_empty() && !self.drained {
            self.fill().await?;
        }
        match self.buffer.front() {
            Some(message) if message.seq <= self.end_seq => Ok(self.buffer.pop_front()),
            _ => {
                self.drained = true;
                Ok(None)
            }
        }
    }

    /// Whether the consumer stands exactly after the buffered messages (every message it
    /// delivered was either returned or is buffered), so the scan can go on later. A scan
    /// reading with gets has no such consumer.
    pub(super) fn can_resume(&self) -> bool {
        self.consumer.is_some() && !self.by_gets && self.keep_fetched_past_end
    }

    /// Payload bytes of the messages fetched and not yet returned.
    pub(super) fn buffered_bytes(&self) -> usize {
        self.buffer.iter().map(|m| m.payload.len()).sum()
    }

    /// Puts back a message returned by [`Scan::next`] whose later events the reader did not
    /// take, so that the scan returns it first when it goes on.
    pub(super) fn put_back(&mut self, message: Msg) {
        self.buffer.push_front(message);
    }

    /// Goes on up to `end_seq` (the stream's end now) after being parked.
    pub(super) fn resume(&mut self, end_seq: u64, batch: usize) {
        self.end_seq = end_seq.max(self.end_seq);
        self.batch = batch.clamp(1, FETCH_MESSAGES_MAX);
        self.drained = self.buffer.is_empty() && self.cursor > self.end_seq;
        self.resumed_unconfirmed = true;
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
                let idle = if self.resumed_unconfirmed {
                    self.fetch_idle.min(ms(RESUMED_FETCH_WAIT_MS))
                } else {
                    self.fetch_idle
                };
                while let Some(item) = next_fetched(&mut messages, idle)
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
                                && !self.resumed_unconfirmed
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
                    if seq >= self.end_seq && !self.keep_fetched_past_end {
                        self.drained = true;
                        return Ok(());
                    }
                }
                // Answered (messages, or the server's status that there are none): the
                // consumer is there.
                self.resumed_unconfirmed = false;
                if received > 0 {
                    self.drained = self.cursor > self.end_seq;
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

/// Scans parked between reads of one kind (feeds, streams), over all the readers of one
/// store, at most this many; past it the one parked longest ago is dropped (and its consumer
/// deleted).
const PARKED_SCANS_MAX: usize = 64;
/// A scan holding more fetched and unreturned bytes than this is not parked: parked scans
/// of one kind together hold at most [`PARKED_SCANS_MAX`] times this.
pub(super) const PARKED_SCAN_BYTES_MAX: usize = 1024 * 1024;
/// A parked scan is resumed only if it was parked this recently: well before the server
/// removes its consumer as idle.
const PARKED_SCAN_REUSE_MS: u64 = READ_CONSUMER_IDLE_MS / 2;
/// Longest wait for the first answer of a resumed scan's consumer, which answers a no-wait
/// fetch at once unless it is gone; the page is then read with a new consumer.
const RESUMED_FETCH_WAIT_MS: u64 = 1_000;

/// Where a parked feed scan stands: which subjects it reads, of which events stream (told
/// apart from one of the same name created later by its creation time), and the position a
/// read starting where its last page stopped asks for.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct FeedCursor {
    pub(super) subjects: String,
    pub(super) stream_created_ns: i128,
    pub(super) next_position: u64,
}

/// Where a parked scan of one event stream stands: the stream's subject, the events stream's
/// creation time (as [`FeedCursor`]'s), and the version the next page asks for.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct StreamCursor {
    pub(super) subject: String,
    pub(super) stream_created_ns: i128,
    pub(super) next_version: u64,
}

/// What a read leaves between pages for the next one: a [`Scan`] with its consumer, or the
/// rest of a backward read's window ([`BackwardRest`](super::read::BackwardRest)).
pub(super) trait Parkable {
    /// Whether it can be parked: it can go on where its page stopped, within
    /// [`PARKED_SCAN_BYTES_MAX`].
    fn can_park(&self) -> bool;
}

impl Parkable for Scan {
    fn can_park(&self) -> bool {
        self.can_resume() && self.buffered_bytes() <= PARKED_SCAN_BYTES_MAX
    }
}

struct Parked<T> {
    item: T,
    parked: Instant,
    /// The client's connection count when it was parked: a consumer parked before a
    /// reconnection may have been lost with the server's memory.
    connection: u64,
}

/// Reads kept after a page, by where the next page starts (a [`FeedCursor`] or a
/// [`StreamCursor`]; several readers may stop at the same place: projections caught up to the
/// head); a reader takes one out while it reads, so none is ever shared.
pub(super) struct ParkedScans<Cursor, T: Parkable = Scan> {
    scans: StdMutex<HashMap<Cursor, Vec<Parked<T>>>>,
    pub(super) metrics: ScanReadMetrics,
}

impl<Cursor: Clone + Eq + std::hash::Hash> ParkedScans<Cursor, Scan> {
    /// The page `read` gives with `parked`, a scan [`take`](Self::take)n where the page
    /// starts, brought up to `end_seq` with a first fetch of `batch`; `None` without one, or
    /// when it failed (a consumer removed meanwhile fails within `RESUMED_FETCH_WAIT_MS`), for
    /// the page to be read with a new scan.
    pub(super) async fn resumed_page<T>(
        &self,
        parked: Option<Scan>,
        end_seq: u64,
        batch: usize,
        read: impl AsyncFnOnce(Scan) -> Result<T, EventStoreError>,
    ) -> Option<T> {
        let mut scan = parked?;
        scan.resume(end_seq, batch);
        let page = read(scan).await.ok()?;
        self.metrics.resumed.increment(1);
        Some(page)
    }

    /// Readies a new scan to be [`park`](Self::park)ed after its page: it keeps the messages
    /// it fetched past the page's end, which the next page starts with.
    pub(super) fn parkable(&self, scan: &mut Scan) {
        scan.keep_fetched_past_end = true;
        if scan.consumer.is_some() {
            self.metrics.consumers_created.increment(1);
        }
    }
}

impl<Cursor: Clone + Eq + std::hash::Hash, T: Parkable> ParkedScans<Cursor, T> {
    pub(super) fn new(metrics: ScanReadMetrics) -> Self {
        ParkedScans {
            scans: StdMutex::new(HashMap::new()),
            metrics,
        }
    }

    /// A read parked at `cursor`, if one was parked recently on the current connection.
    pub(super) fn take(&self, cursor: &Cursor, connection: u64) -> Option<T> {
        let parked = {
            let mut scans = self.lock();
            let here = scans.get_mut(cursor)?;
            let parked = here.pop();
            if here.is_empty() {
                scans.remove(cursor);
            }
            parked?
        };
        let fresh = parked.parked.elapsed() < ms(PARKED_SCAN_REUSE_MS);
        // A stale one is dropped here, which deletes its consumer.
        (fresh && parked.connection == connection).then_some(parked.item)
    }

    /// [`take`](Self::take), counting the page as resumed when a read was parked there: for
    /// what holds no consumer, which cannot fail to go on.
    pub(super) fn take_resumed(&self, cursor: &Cursor, connection: u64) -> Option<T> {
        let parked = self.take(cursor, connection);
        if parked.is_some() {
            self.metrics.resumed.increment(1);
        }
        parked
    }

    /// Parks `item` at `cursor` if it can go on from there and holds little enough; otherwise
    /// drops it (a scan's drop deletes its consumer). Reads parked too long ago to be resumed,
    /// and the oldest past [`PARKED_SCANS_MAX`], are dropped too.
    pub(super) fn park(&self, cursor: Cursor, item: T, connection: u64) {
        if !item.can_park() {
            return;
        }
        let mut dropped: Vec<Parked<T>> = Vec::new();
        {
            let mut scans = self.lock();
            for here in scans.values_mut() {
                let (stale, fresh) = std::mem::take(here)
                    .into_iter()
                    .partition(|p| p.parked.elapsed() >= ms(PARKED_SCAN_REUSE_MS));
                *here = fresh;
                dropped.extend::<Vec<Parked<T>>>(stale);
            }
            scans.retain(|_, here| !here.is_empty());
            let count: usize = scans.values().map(Vec::len).sum();
            if count >= PARKED_SCANS_MAX
                && let Some(oldest) = scans
                    .iter()
                    .min_by_key(|(_, here)| here[0].parked)
                    .map(|(cursor, _)| cursor.clone())
                && let Some(here) = scans.get_mut(&oldest)
            {
                // Each list is in parking order: its first is its oldest.
                dropped.push(here.remove(0));
                if here.is_empty() {
                    scans.remove(&oldest);
                }
            }
            scans.entry(cursor).or_default().push(Parked {
                item,
                parked: Instant::now(),
                connection,
            });
        }
        // Dropped outside the lock: each drop spawns its consumer's deletion.
        drop(dropped);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Cursor, Vec<Parked<T>>>> {
        self.scans.lock().expect("parked scans lock poisoned")
    }
}

/// What reads of one kind do with consumers, for `/metrics`: consumers created rising with the
/// pages read means readers do not go on where they stopped, or their parked reads are dropped
/// before they come back.
pub(super) struct ScanReadMetrics {
    /// Consumers created for pages (a reader starting, or one whose parked read was dropped,
    /// stale or lost; for backward reads, each window read).
    pub(super) consumers_created: metrics::Counter,
    /// Pages read on with what the previous page parked.
    pub(super) resumed: metrics::Counter,
}

impl ScanReadMetrics {
    /// `proteus_eventstore_nats_feed_read_consumers_total` and
    /// `proteus_eventstore_nats_feed_reads_resumed_total`: `$all` and category pages.
    pub(super) fn feeds(stream_prefix: &str) -> Self {
        Self::of("feed", stream_prefix)
    }

    /// `proteus_eventstore_nats_stream_read_consumers_total` and
    /// `proteus_eventstore_nats_stream_reads_resumed_total`: forward pages of one stream that
    /// needed a consumer (those within its last append read that message alone, and count in
    /// neither).
    pub(super) fn streams(stream_prefix: &str) -> Self {
        Self::of("stream", stream_prefix)
    }

    /// `proteus_eventstore_nats_backward_feed_read_consumers_total` and
    /// `proteus_eventstore_nats_backward_feed_reads_resumed_total`: backward `$all` and
    /// category pages, which create a consumer for each window of sequences they read, and go
    /// on from the window the previous page read when they start where it stopped.
    pub(super) fn backward_feeds(stream_prefix: &str) -> Self {
        Self::of("backward_feed", stream_prefix)
    }

    /// `proteus_eventstore_nats_backward_stream_read_consumers_total` and
    /// `proteus_eventstore_nats_backward_stream_reads_resumed_total`: backward pages of one
    /// stream, which read a range of versions (with a consumer unless the stream's last append
    /// holds it), and go on from what the previous page read below itself.
    pub(super) fn backward_streams(stream_prefix: &str) -> Self {
        Self::of("backward_stream", stream_prefix)
    }

    fn of(reads: &str, stream_prefix: &str) -> Self {
        let labels = [("store", stream_prefix.to_owned())];
        ScanReadMetrics {
            consumers_created: metrics::counter!(
                format!("proteus_eventstore_nats_{reads}_read_consumers_total"),
                &labels
            ),
            resumed: metrics::counter!(
                format!("proteus_eventstore_nats_{reads}_reads_resumed_total"),
                &labels
            ),
        }
    }
}
