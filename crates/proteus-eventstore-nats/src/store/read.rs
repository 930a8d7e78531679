//! Reads: a stream by versions (forward and backward), and the `$all` feed or a category by
//! positions.

use super::scan::PARKED_SCAN_BYTES_MAX;
use super::*;
use std::ops::RangeInclusive;

impl NatsEventStore {
    /// The message of the stream's subject from which reading finds `version`: the last one
    /// whose first version is at most `version`, or a sequence before it. A binary search
    /// over stream sequences with `next_by_subj` gets.
    pub(super) async fn locate(
        &self,
        stream: &StreamName,
        subject: &str,
        version: u64,
        last_seq: u64,
        last_first_version: u64,
    ) -> Result<u64, EventStoreError> {
        if version == 0 {
            return Ok(1);
        }
        if version >= last_first_version {
            return Ok(last_seq);
        }
        let what = format!("finding version {version} of stream '{stream}'");
        let (mut lo, mut hi) = (1u64, last_seq);
        for _ in 0..SEARCH_PROBES_MAX {
            if hi - lo <= 1 {
                break;
            }
            let mid = lo + (hi - lo) / 2;
            match self.next_on(subject, mid, &what).await? {
                Some(msg) if msg.seq < hi => match self.record(&msg)? {
                    Record::Events { first_version, .. } if first_version <= version => {
                        lo = msg.seq
                    }
                    _ => hi = msg.seq,
                },
                _ => hi = mid,
            }
        }
        Ok(lo)
    }

    /// The events of a live stream at versions `low..=high`, oldest first. A forward page
    /// (`forward_in`: the events stream's creation time) goes on with the scan the page
    /// before parked where this one starts, if any (no search for its first message, no
    /// consumer to create), and parks its scan where it stops unless the stream's last append
    /// holds the rest.
    pub(super) async fn stream_events(
        &self,
        stream: &StreamName,
        subject: &str,
        end: &LiveEnd,
        versions: RangeInclusive<u64>,
        forward_in: Option<i128>,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let (low, high) = (*versions.start(), *versions.end());
        let connection = self.inner.connections.load(Ordering::SeqCst);
        let cursor = forward_in.map(|stream_created_ns| StreamCursor {
            subject: subject.to_owned(),
            stream_created_ns,
            next_version: low,
        });
        // The scan the previous page parked here, taken out even when this page does without
        // it (dropping it deletes its consumer rather than leaving it to the server's idle
        // timeout).
        let parked = cursor
            .as_ref()
            .and_then(|cursor| self.inner.parked_stream_scans.take(cursor, connection));
        if end.holds_from(low) {
            // Within the last append: its message, read with the stream's end, holds them.
            let mut events = Vec::new();
            for (i, event) in self.decode(&end.last, end.count)?.into_iter().enumerate() {
                let version = end.first_version + i as u64;
                if versions.contains(&version) {
                    events.push(recorded(
                        stream,
                        &end.last,
                        end.first_version,
                        i as u64,
                        event,
                    ));
                }
            }
            return Ok(events);
        }
        let wanted = (high - low + 1) as usize;
        let first_fetch = wanted.min(FIRST_FETCH_MESSAGES_MAX);
        let parked_scans = &self.inner.parked_stream_scans;
        let read = async |scan| {
            self.stream_events_with(
                scan,
                stream,
                end,
                versions.clone(),
                cursor.as_ref(),
                connection,
            )
            .await
        };
        if let Some(events) = parked_scans
            .resumed_page(parked, end.last.seq, first_fetch, read)
            .await
        {
            return Ok(events);
        }
        let start = self
            .locate(stream, subject, low, end.last.seq, end.first_version)
            .await?;
        let what = format!("reading stream '{stream}'");
        let mut scan = self
            .scan(
                &self.inner.events,
                subject,
                start,
                end.last.seq,
                first_fetch,
                &what,
            )
            .await?;
        if cursor.is_some() {
            parked_scans.parkable(&mut scan);
        }
        self.stream_events_with(scan, stream, end, versions, cursor.as_ref(), connection)
            .await
    }

    /// The events at `versions` read with `scan`, which stands at or before the first; then,
    /// for a forward page (`cursor`) that stops before the stream's last append, parks the
    /// scan there, as one of `connection` (the client's connection count when the page began).
    async fn stream_events_with(
        &self,
        mut scan: Scan,
        stream: &StreamName,
        end: &LiveEnd,
        versions: RangeInclusive<u64>,
        cursor: Option<&StreamCursor>,
        connection: u64,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let (low, high) = (*versions.start(), *versions.end());
        let mut events = Vec::new();
        let (mut messages_seen, mut events_seen) = (0usize, 0usize);
        // The message the page stopped inside, whose later events the next page starts with.
        let mut unfinished = None;
        'messages: while let Some(msg) = scan.next().await? {
            let Record::Events {
                first_version,
                count,
            } = self.record(&msg)?
            else {
                continue;
            };
            messages_seen += 1;
            events_seen += count as usize;
            let still_wanted = (high + 1).saturating_sub(low.max(first_version + count));
            scan.expect(messages_to_fetch(
                still_wanted as usize,
                messages_seen,
                events_seen,
            ));
            if first_version + count <= low {
                continue;
            }
            for (i, event) in self.decode(&msg, count)?.into_iter().enumerate() {
                let version = first_version + i as u64;
                if version < low {
                    continue;
                }
                if version > high {
                    unfinished = Some(msg);
                    break 'messages;
                }
                events.push(recorded(stream, &msg, first_version, i as u64, event));
                if version == high {
                    if (i as u64) + 1 < count {
                        unfinished = Some(msg);
                    }
                    break 'messages;
                }
            }
        }
        // Not parked where the next page is within the last append: the stream's end, which
        // every read gets first, holds it.
        let next_version = events.last().map(|e: &RecordedEvent| e.version + 1);
        if let (Some(cursor), Some(next_version)) = (cursor, next_version)
            && !end.holds_from(next_version)
        {
            if let Some(msg) = unfinished {
                scan.put_back(msg);
            }
            let parked_at = StreamCursor {
                next_version,
                ..cursor.clone()
            };
            self.inner
                .parked_stream_scans
                .park(parked_at, scan, connection);
        }
        Ok(events)
    }

    pub(super) async fn read_stream_impl(
        &self,
        stream: &StreamName,
        from_version: u64,
        direction: Direction,
        max_count: usize,
    ) -> Result<StreamPage, EventStoreError> {
        validate_read_count(max_count)?;
        self.check_open()?;
        let subject = self.subject(stream);
        // The stream's end and the feed's head are asked for together: one round trip less
        // for every read (an aggregate load is usually one read).
        let (state, feed) =
            futures_util::future::try_join(self.state(stream, &subject), self.feed_end()).await?;
        let asked = PageAsked {
            from_version,
            direction,
            max_count,
        };
        self.page_of(stream, &subject, state, &feed, asked).await
    }

    /// An aggregate: the stream's snapshot and its events after it. The stream's end, the
    /// snapshot and the feed's head are asked for at once, rather than the port's default
    /// (the end and the snapshot, then the end again and the head): two round trips and one
    /// read of the stream's last message less for every load.
    pub(super) async fn read_aggregate_impl(
        &self,
        stream: &StreamName,
        max_count: usize,
    ) -> Result<Aggregate, EventStoreError> {
        validate_read_count(max_count)?;
        self.check_open()?;
        let subject = self.subject(stream);
        let (state, feed, snapshot) = futures_util::future::try_join3(
            self.state(stream, &subject),
            self.feed_end(),
            self.snapshot_of(stream),
        )
        .await?;
        let snapshot_version = snapshot.as_ref().map(|s| s.version);
        if let (
            State::Live {
                first_version,
                count,
                ..
            },
            Some(version),
        ) = (&state, snapshot_version)
            && version > first_version + count - 1
        {
            // A snapshot put after the stream's end was read, of events that end did not
            // reach: read the end again, after the snapshot.
            let snapshot = self.get_snapshot(stream).await?;
            let from_version = snapshot.as_ref().map_or(0, |s| s.version + 1);
            let page = self
                .read_stream_impl(stream, from_version, Direction::Forward, max_count)
                .await?;
            return Ok(Aggregate::from_page(stream, snapshot, page));
        }
        let from_version = snapshot_version.map_or(0, |version| version + 1);
        let asked = PageAsked {
            from_version,
            direction: Direction::Forward,
            max_count,
        };
        let page = self.page_of(stream, &subject, state, &feed, asked).await?;
        Ok(Aggregate::from_page(stream, snapshot, page))
    }

    /// The page of `stream` `asked` for, given its end (`state`) and the feed's (`feed`).
    async fn page_of(
        &self,
        stream: &StreamName,
        subject: &str,
        state: State,
        feed: &FeedEnd,
        asked: PageAsked,
    ) -> Result<StreamPage, EventStoreError> {
        let PageAsked {
            from_version,
            direction,
            max_count,
        } = asked;
        let end = state.live(stream)?;
        let last_version = end.last_version();
        // The head was read beside the stream's end, perhaps just before an append to this
        // stream: it is at least where the stream ends.
        let head_position = feed.head.max(position_of(end.last.seq, end.count - 1));
        let span = max_count as u64 - 1;
        match direction {
            Direction::Forward => {
                let events = if from_version > last_version {
                    Vec::new()
                } else {
                    let high = last_version.min(from_version.saturating_add(span));
                    let forward_in = Some(feed.stream_created_ns);
                    self.stream_events(stream, subject, &end, from_version..=high, forward_in)
                        .await?
                };
                let next_version = events.last().map_or(from_version, |e| e.version + 1);
                Ok(StreamPage {
                    stream: stream.clone(),
                    events,
                    next_version,
                    is_end: next_version > last_version,
                    last_version,
                    head_position,
                })
            }
            Direction::Backward => {
                let top = from_version.min(last_version);
                let low = top.saturating_sub(span);
                let cursor = StreamCursor {
                    subject: subject.to_owned(),
                    stream_created_ns: feed.stream_created_ns,
                    next_version: from_version,
                };
                let mut events = self
                    .stream_events_backward(stream, &end, low..=top, cursor, max_count)
                    .await?;
                events.reverse();
                let lowest = events.last().map_or(0, |e| e.version);
                Ok(StreamPage {
                    stream: stream.clone(),
                    events,
                    next_version: lowest.saturating_sub(1),
                    is_end: lowest == 0,
                    last_version,
                    head_position,
                })
            }
        }
    }

    /// The events at `versions` for a backward page of one stream (oldest first), starting
    /// with what the previous page parked at `cursor` (a page that starts where the one before
    /// stopped); a page after such a one reads ahead for [`BACKWARD_READ_AHEAD_PAGES`] pages
    /// (within about [`PARKED_SCAN_BYTES_MAX`]). What was read below the page is parked for the
    /// next one.
    async fn stream_events_backward(
        &self,
        stream: &StreamName,
        end: &LiveEnd,
        versions: RangeInclusive<u64>,
        cursor: StreamCursor,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        let (low, top) = (*versions.start(), *versions.end());
        let connection = self.inner.connections.load(Ordering::SeqCst);
        let parked_reads = &self.inner.parked_backward_stream_reads;
        let parked = parked_reads.take_resumed(&cursor, connection);
        let paging = parked.is_some();
        let BackwardStreamRest {
            mut events,
            mut event_bytes,
        } = parked.unwrap_or_default();
        events.retain(|e| e.version <= top);
        let held_from = events.first().map_or(top + 1, |e| e.version);
        if low < held_from {
            let read_from = if paging && event_bytes > 0 {
                let ahead = (max_count as u64 * BACKWARD_READ_AHEAD_PAGES)
                    .min((PARKED_SCAN_BYTES_MAX / event_bytes) as u64);
                low.saturating_sub(ahead)
            } else {
                low
            };
            // `stream_events` reads with a consumer unless the last append holds them.
            if !end.holds_from(read_from) {
                parked_reads.metrics.consumers_created.increment(1);
            }
            let subject = &cursor.subject;
            let mut read = self
                .stream_events(stream, subject, end, read_from..=held_from - 1, None)
                .await?;
            if !read.is_empty() {
                let bytes: usize = read.iter().map(event_size).sum();
                event_bytes = bytes.div_ceil(read.len());
            }
            read.append(&mut events);
            events = read;
        }
        let page = events.split_off(events.partition_point(|e| e.version < low));
        if low > 0 {
            let rest = BackwardStreamRest::within_bytes(events, event_bytes);
            let parked_at = StreamCursor {
                next_version: low - 1,
                ..cursor
            };
            parked_reads.park(parked_at, rest, connection);
        }
        Ok(page)
    }

    /// A forward read of the `$all` feed or a category (`subjects`), from `from_position`:
    /// with the scan the previous page parked where this one starts, if any (no consumer to
    /// create, and the messages it fetched past that page at hand), else a new one. The scan
    /// is parked again where this page stops.
    pub(super) async fn read_forward(
        &self,
        subjects: &str,
        from_position: u64,
        max_count: usize,
        filter: &ReadFilter,
    ) -> Result<FeedPage, EventStoreError> {
        let end = self.feed_end().await?;
        if end.head == 0 || from_position > end.head {
            return Ok(FeedPage {
                events: Vec::new(),
                next_position: from_position.max(end.head + 1),
                is_end: true,
                head_position: end.head,
            });
        }
        let connection = self.inner.connections.load(Ordering::SeqCst);
        let cursor = FeedCursor {
            subjects: subjects.to_owned(),
            stream_created_ns: end.stream_created_ns,
            next_position: from_position,
        };
        let batch = (max_count + 1).min(FIRST_FETCH_MESSAGES_MAX);
        let parked_scans = &self.inner.parked_feed_scans;
        let parked = parked_scans.take(&cursor, connection);
        let read = async |scan| {
            self.page_forward(scan, &cursor, &end, max_count, filter, connection)
                .await
        };
        if let Some(page) = parked_scans
            .resumed_page(parked, end.last_seq, batch, read)
            .await
        {
            return Ok(page);
        }
        let mut scan = self
            .scan(
                &self.inner.events,
                subjects,
                seq_of(from_position.max(1)),
                end.last_seq,
                batch,
                "reading the $all feed",
            )
            .await?;
        parked_scans.parkable(&mut scan);
        self.page_forward(scan, &cursor, &end, max_count, filter, connection)
            .await
    }

    /// The page of a forward read from `cursor` with `scan`, which stands at or before it;
    /// then parks the scan where the page stops.
    async fn page_forward(
        &self,
        mut scan: Scan,
        cursor: &FeedCursor,
        end: &FeedEnd,
        max_count: usize,
        filter: &ReadFilter,
        connection: u64,
    ) -> Result<FeedPage, EventStoreError> {
        let (from_position, head) = (cursor.next_position, end.head);
        let from = from_position.max(1);
        let mut events = Vec::new();
        let mut scanned = 0usize;
        let mut last_scanned = None;
        let mut more = None;
        // The message the page stopped inside, whose later events the next page starts with.
        let mut unfinished = None;
        let mut messages_seen = 0usize;
        'messages: while let Some(msg) = scan.next().await? {
            let Record::Events {
                first_version,
                count,
            } = self.record(&msg)?
            else {
                continue;
            };
            messages_seen += 1;
            if position_of(msg.seq, count - 1) < from {
                continue;
            }
            let stream = self.stream_of(&msg)?;
            let decoded = self.decode(&msg, count)?;
            let n = decoded.len();
            for (i, event) in decoded.into_iter().enumerate() {
                let position = position_of(msg.seq, i as u64);
                if position < from {
                    continue;
                }
                scanned += 1;
                last_scanned = Some(position);
                if filter.matches(stream.as_str(), &event.event_type) {
                    events.push(recorded(&stream, &msg, first_version, i as u64, event));
                }
                if events.len() == max_count || scanned == READ_SCAN_EVENTS_MAX {
                    more = Some(i + 1 < n);
                    if i + 1 < n {
                        unfinished = Some(msg);
                    }
                    break 'messages;
                }
            }
            // The next fetch is sized from the events matched per message so far, for the rest
            // of the page plus the one event past it that says whether more follow.
            scan.expect(messages_to_fetch(
                max_count - events.len() + 1,
                messages_seen,
                events.len(),
            ));
        }
        let more = match more {
            Some(true) => true,
            Some(false) => scan.has_more().await?,
            None => false,
        };
        let (next_position, is_end) = match (more, last_scanned) {
            (true, Some(position)) => (position + 1, false),
            // Everything up to the head was examined.
            _ => (from_position.max(head + 1), true),
        };
        if let Some(msg) = unfinished {
            scan.put_back(msg);
        }
        let parked_at = FeedCursor {
            next_position,
            ..cursor.clone()
        };
        self.inner
            .parked_feed_scans
            .park(parked_at, scan, connection);
        Ok(FeedPage {
            events,
            next_position,
            is_end,
            head_position: head,
        })
    }

    /// A backward read of the `$all` feed or a category: windows of stream sequences read
    /// forward, newest window first, each sized from what the ones before held. A page that
    /// starts where the previous one stopped goes on with what that one's window still held
    /// (parked: no consumer to create), and reads ahead when it needs a new window: a reader
    /// paging backward creates a consumer every [`BACKWARD_READ_AHEAD_PAGES`] pages or so
    /// instead of on every page.
    pub(super) async fn read_backward(
        &self,
        from_position: u64,
        max_count: usize,
        filter: &ReadFilter,
    ) -> Result<FeedPage, EventStoreError> {
        let end = self.feed_end().await?;
        let head = end.head;
        let top = from_position.min(head);
        if top == 0 {
            return Ok(FeedPage {
                events: Vec::new(),
                next_position: 0,
                is_end: true,
                head_position: head,
            });
        }
        let subjects = self.all_subjects(filter);
        let connection = self.inner.connections.load(Ordering::SeqCst);
        let cursor = FeedCursor {
            subjects,
            stream_created_ns: end.stream_created_ns,
            next_position: from_position,
        };
        let parked_reads = &self.inner.parked_backward_reads;
        let parked = parked_reads.take_resumed(&cursor, connection);
        let resumed = parked.is_some();
        let BackwardRest {
            mut messages,
            mut low_seq,
            mut seen,
        } = parked.unwrap_or(BackwardRest {
            messages: Vec::new(),
            low_seq: seq_of(top) + 1,
            seen: WindowsSeen::default(),
        });
        // The first window of a new read is small (the newest event alone is one sequence):
        // a message may hold a thousand events.
        let mut window = (max_count as u64).clamp(1, FIRST_FETCH_MESSAGES_MAX as u64);
        let mut events = Vec::new();
        let mut scanned = 0usize;
        let mut last_scanned = None;
        // Where the page stopped: the message's index in `messages`, and whether its earlier
        // events are still to be read.
        let mut stopped_at = None;
        'windows: loop {
            for (m, msg) in messages.iter().enumerate().rev() {
                let Record::Events {
                    first_version,
                    count,
                } = self.record(msg)?
                else {
                    continue;
                };
                if position_of(msg.seq, 0) > top {
                    continue;
                }
                let stream = self.stream_of(msg)?;
                let decoded = self.decode(msg, count)?;
                for (i, event) in decoded.into_iter().enumerate().rev() {
                    let position = position_of(msg.seq, i as u64);
                    if position > top {
                        continue;
                    }
                    scanned += 1;
                    last_scanned = Some(position);
                    if filter.matches(stream.as_str(), &event.event_type) {
                        events.push(recorded(&stream, msg, first_version, i as u64, event));
                        seen.events_matched += 1;
                    }
                    if events.len() == max_count || scanned == READ_SCAN_EVENTS_MAX {
                        stopped_at = Some((m, i > 0));
                        break 'windows;
                    }
                }
            }
            if low_seq <= 1 {
                messages.clear();
                break;
            }
            let hi = low_seq - 1;
            if seen.sequences > 0 {
                let read_ahead_events =
                    resumed.then_some(max_count as u64 * BACKWARD_READ_AHEAD_PAGES);
                window = seen.next_window(max_count - events.len(), read_ahead_events, window);
            }
            low_seq = hi.saturating_sub(window - 1).max(1);
            let mut scan = self
                .scan(
                    &self.inner.events,
                    &cursor.subjects,
                    low_seq,
                    hi,
                    window as usize,
                    "reading the $all feed backward",
                )
                .await?;
            if scan.consumer.is_some() {
                parked_reads.metrics.consumers_created.increment(1);
            }
            messages.clear();
            while let Some(msg) = scan.next().await? {
                seen.payload_bytes += msg.payload.len() as u64;
                messages.push(msg);
            }
            drop(scan);
            seen.sequences += hi - low_seq + 1;
        }
        // Older events follow in this window, or in the sequences below it.
        let more = |&(m, stopped_inside): &(usize, bool)| stopped_inside || m > 0 || low_seq > 1;
        let Some((m, stopped_inside)) = stopped_at.filter(more) else {
            return Ok(FeedPage {
                events,
                next_position: 0,
                is_end: true,
                head_position: head,
            });
        };
        let next_position = last_scanned.map_or(0, |p| p.saturating_sub(1));
        // What the window holds below where the page stopped, the message it stopped inside
        // included, is parked for the page that starts there.
        messages.truncate(if stopped_inside { m + 1 } else { m });
        let rest = BackwardRest::of_window(messages, low_seq, seen);
        let parked_at = FeedCursor {
            next_position,
            ..cursor
        };
        parked_reads.park(parked_at, rest, connection);
        Ok(FeedPage {
            events,
            next_position,
            is_end: false,
            head_position: head,
        })
    }
}

/// Pages of a backward read a window reads ahead for, once the reader has come back for a
/// second page; within [`BACKWARD_WINDOW_MAX`] sequences and about
/// [`PARKED_SCAN_BYTES_MAX`] of messages.
const BACKWARD_READ_AHEAD_PAGES: u64 = 16;

/// What the windows of a backward read held so far, which sizes the next ones.
#[derive(Clone, Copy, Default)]
pub(super) struct WindowsSeen {
    /// Stream sequences the windows covered.
    sequences: u64,
    /// Events the read matched.
    events_matched: u64,
    /// Payload bytes of the messages the windows held.
    payload_bytes: u64,
}

impl WindowsSeen {
    /// Sequences the next window covers to find `events_wanted` more events, given the last
    /// window's size: as many as held that many events so far, plus one (twice the last window
    /// while a filter has matched nothing). A reader that came back for another page reads
    /// ahead for `read_ahead_events`, in as many sequences as fit in about
    /// [`PARKED_SCAN_BYTES_MAX`] of messages, which stay parked for its next pages.
    fn next_window(
        &self,
        events_wanted: usize,
        read_ahead_events: Option<u64>,
        last_window: u64,
    ) -> u64 {
        let estimate = |events: u64| match self.events_matched {
            0 => last_window.saturating_mul(2),
            matched => events.saturating_mul(self.sequences) / matched + 1,
        };
        let for_this_page = estimate(events_wanted as u64);
        let window = match read_ahead_events {
            Some(ahead) => {
                let bytes_per_sequence = (self.payload_bytes / self.sequences.max(1)).max(1);
                let fits = (PARKED_SCAN_BYTES_MAX as u64 / bytes_per_sequence).max(1);
                for_this_page.max(estimate(ahead).min(fits))
            }
            None => for_this_page,
        };
        window.clamp(1, BACKWARD_WINDOW_MAX)
    }
}

/// What a backward `$all` page left of the window it read, parked for the page that starts
/// where it stopped: the window's messages not yet read (oldest first; the newest may have
/// been read in part, its later events skipped by position), from `low_seq` up.
pub(super) struct BackwardRest {
    messages: Vec<Msg>,
    /// The lowest sequence the messages stand for: the next window ends just below it.
    low_seq: u64,
    seen: WindowsSeen,
}

impl BackwardRest {
    /// The rest of a window from `low_seq`, keeping its newest messages, those the next page
    /// reads first, within [`PARKED_SCAN_BYTES_MAX`]; the sequences of the older ones dropped
    /// are read again by the next window.
    fn of_window(mut messages: Vec<Msg>, mut low_seq: u64, seen: WindowsSeen) -> Self {
        let mut bytes = 0usize;
        let kept_from = messages
            .iter()
            .rposition(|msg| {
                bytes += msg.payload.len();
                bytes > PARKED_SCAN_BYTES_MAX
            })
            .map_or(0, |too_many| too_many + 1);
        if kept_from > 0 {
            // Sequences from the first message dropped's are read again; a window's messages
            // are in sequence order.
            low_seq = messages[kept_from - 1].seq + 1;
            messages.drain(..kept_from);
        }
        BackwardRest {
            messages,
            low_seq,
            seen,
        }
    }
}

impl Parkable for BackwardRest {
    fn can_park(&self) -> bool {
        true
    }
}

/// What a backward page of one stream read below itself, parked for the page that starts
/// where it stopped: events by ascending version, up to that page's first, the newest kept
/// within [`PARKED_SCAN_BYTES_MAX`].
#[derive(Default)]
pub(super) struct BackwardStreamRest {
    events: Vec<RecordedEvent>,
    /// About how many bytes an event of the stream takes, which bounds the next read-ahead.
    event_bytes: usize,
}

impl BackwardStreamRest {
    fn within_bytes(mut events: Vec<RecordedEvent>, event_bytes: usize) -> Self {
        let mut bytes = 0usize;
        if let Some(too_many) = events.iter().rposition(|event| {
            bytes += event_size(event);
            bytes > PARKED_SCAN_BYTES_MAX
        }) {
            // The versions dropped are read again by the page that needs them.
            events.drain(..=too_many);
        }
        BackwardStreamRest {
            events,
            event_bytes,
        }
    }
}

impl Parkable for BackwardStreamRest {
    fn can_park(&self) -> bool {
        true
    }
}

/// The bytes an event held in memory stands for: its data, metadata, id and type.
fn event_size(event: &RecordedEvent) -> usize {
    event.data.len()
        + event.metadata.as_ref().map_or(0, |m| m.len())
        + event.id.len()
        + event.event_type.len()
}

/// What a stream read asks for: from which version, which way, at most how many events.
struct PageAsked {
    from_version: u64,
    direction: Direction,
    max_count: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64, payload_bytes: usize) -> Msg {
        Msg {
            seq,
            subject: String::new(),
            headers: None,
            payload: Bytes::from(vec![b' '; payload_bytes]),
            time_ms: 0,
        }
    }

    #[test]
    fn a_window_rest_keeps_its_newest_messages_within_a_mebibyte() {
        let seen = WindowsSeen::default();
        let small = BackwardRest::of_window(vec![message(4, 10), message(6, 10)], 3, seen);
        assert_eq!((small.messages.len(), small.low_seq), (2, 3));

        // 400 KB each: the newest two fit; the next window reads 6 and 5 again.
        let messages = (5..=8).map(|seq| message(seq, 400_000)).collect();
        let large = BackwardRest::of_window(messages, 2, seen);
        let kept: Vec<u64> = large.messages.iter().map(|m| m.seq).collect();
        assert_eq!((kept, large.low_seq), (vec![7, 8], 7));

        // A message larger than the bound alone is not kept: it is read again.
        let huge = BackwardRest::of_window(vec![message(9, 2_000_000)], 9, seen);
        assert_eq!((huge.messages.len(), huge.low_seq), (0, 10));
    }

    fn event_of(version: u64, data_bytes: usize) -> RecordedEvent {
        RecordedEvent {
            stream: StreamName::parse("s-1").unwrap(),
            version,
            position: version + 1,
            id: format!("e{version}").into(),
            event_type: "T".into(),
            schema_version: None,
            data: Bytes::from(vec![b' '; data_bytes]),
            metadata: None,
            recorded_ms: 0,
        }
    }

    #[test]
    fn a_stream_rest_keeps_its_newest_events_within_a_mebibyte() {
        let small = BackwardStreamRest::within_bytes((0..5).map(|v| event_of(v, 10)).collect(), 13);
        assert_eq!(small.events.len(), 5);
        assert_eq!(small.event_bytes, 13);
        // 300 KB each: versions 7 to 9 fit, 4 to 6 are read again by the page that needs them.
        let large =
            BackwardStreamRest::within_bytes((4..10).map(|v| event_of(v, 300_000)).collect(), 0);
        let kept: Vec<u64> = large.events.iter().map(|e| e.version).collect();
        assert_eq!(kept, vec![7, 8, 9]);
    }

    #[test]
    fn windows_read_ahead_for_a_reader_that_pages_within_the_bytes_parked() {
        // 10 sequences held 70 events of 1 KB each so far.
        let seen = WindowsSeen {
            sequences: 10,
            events_matched: 70,
            payload_bytes: 70_000,
        };
        // The rest of this page: 20 events, about 3 sequences, plus one.
        assert_eq!(seen.next_window(20, None, 5), 3);
        // Paging: 320 events ahead, about 45 sequences plus one, within 1 MiB (149 sequences).
        assert_eq!(seen.next_window(20, Some(320), 5), 46);
        // Large messages: only what fits in 1 MiB is read ahead, never less than the page.
        let large = WindowsSeen {
            payload_bytes: 7_000_000,
            ..seen
        };
        assert_eq!(large.next_window(20, Some(320), 5), 3);
        // Nothing matched yet (a filter): twice the last window, within the bound.
        let none = WindowsSeen {
            events_matched: 0,
            ..seen
        };
        assert_eq!(none.next_window(20, None, 5), 10);
        assert_eq!(none.next_window(20, None, 800), BACKWARD_WINDOW_MAX);
    }
}
