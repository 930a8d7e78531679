//! Reads: a stream by versions (forward and backward), and the `$all` feed or a category by
//! positions.

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
        if low >= end.first_version {
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
            && next_version < end.first_version
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
                let mut events = self
                    .stream_events(stream, subject, &end, low..=top, None)
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

    /// A backward read of the `$all` feed: windows of stream sequences read forward, newest
    /// window first, each sized from what the ones before held.
    pub(super) async fn read_backward(
        &self,
        from_position: u64,
        max_count: usize,
        filter: &ReadFilter,
    ) -> Result<FeedPage, EventStoreError> {
        let (_, head) = self.head().await?;
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
        let mut hi = seq_of(top);
        // Windows are sized like forward fetches: a message may hold a thousand events, so the
        // first window is small (the newest event alone is one sequence), the next ones from
        // the events matched per sequence so far.
        let mut window = (max_count as u64).clamp(1, FIRST_FETCH_MESSAGES_MAX as u64);
        let mut sequences_seen = 0u64;
        let mut events = Vec::new();
        let mut scanned = 0usize;
        let mut last_scanned = None;
        let mut more = false;
        'windows: loop {
            let lo = hi.saturating_sub(window - 1).max(1);
            let mut scan = self
                .scan(
                    &self.inner.events,
                    &subjects,
                    lo,
                    hi,
                    window as usize,
                    "reading the $all feed backward",
                )
                .await?;
            let mut messages = Vec::new();
            while let Some(msg) = scan.next().await? {
                messages.push(msg);
            }
            drop(scan);
            for (m, msg) in messages.iter().enumerate().rev() {
                let Record::Events {
                    first_version,
                    count,
                } = self.record(msg)?
                else {
                    continue;
                };
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
                    }
                    if events.len() == max_count || scanned == READ_SCAN_EVENTS_MAX {
                        more = i > 0 || m > 0 || lo > 1;
                        break 'windows;
                    }
                }
            }
            if lo == 1 {
                break;
            }
            sequences_seen += hi - lo + 1;
            hi = lo - 1;
            // The sequences that held as many events as are still wanted, plus one; with
            // nothing matched yet (a filter), twice the last window.
            let matched = events.len() as u64;
            window = match matched {
                0 => window * 2,
                _ => (max_count as u64 - matched) * sequences_seen / matched + 1,
            }
            .clamp(1, BACKWARD_WINDOW_MAX);
        }
        let is_end = !more;
        Ok(FeedPage {
            events,
            next_position: if is_end {
                0
            } else {
                last_scanned.map_or(0, |p| p.saturating_sub(1))
            },
            is_end,
            head_position: head,
        })
    }
}

/// What a stream read asks for: from which version, which way, at most how many events.
struct PageAsked {
    from_version: u64,
    direction: Direction,
    max_count: usize,
}
