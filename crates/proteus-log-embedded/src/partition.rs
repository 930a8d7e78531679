//! One partition: its segments, the writer, group commit, reads, recovery and retention.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use bytes::Bytes;
use proteus_log::import::does_not_continue;
use proteus_log::port::{ReadBatch, ReadFrom, ReadLimits, StoredEvent};
use proteus_log::{
    DedupKey, Event, LogError, Offset, PartitionDescription, PartitionId, TopicConfig, TopicName,
};
use tokio::sync::watch;

use crate::Durability;
use crate::index::{self, SegmentIndex};
use crate::record::{self, Decoded, HEADER_BYTES, RecordView};
use crate::segment::{self, IndexBuilder, ScanError, ScanFailure, Segment, Visit};

/// The first corruption found in a partition. Reads stop before it and appends are refused.
#[derive(Clone, Debug)]
pub struct Corruption {
    pub offset: Offset,
    pub file: PathBuf,
    pub position: u64,
    pub reason: String,
}

struct Writer {
    active: Arc<Segment>,
    file: Arc<File>,
    index_file: File,
    time_index_file: File,
    index_file_bytes: u64,
    time_index_file_bytes: u64,
    position: u64,
    next_offset: Offset,
    last_time_ms: i64,
    segment_first_time_ms: Option<i64>,
    index_builder: IndexBuilder,
    buf: Vec<u8>,
    /// Set when a write or sync failed in a way that leaves the file state unknown.
    failed: Option<String>,
}

#[derive(Default)]
struct SyncState {
    in_flight: bool,
    failed: Option<String>,
}

struct PartitionMetrics {
    end_offset: metrics::Gauge,
    first_offset: metrics::Gauge,
    fsync_seconds: metrics::Histogram,
    group_commit_events: metrics::Histogram,
}

pub struct Partition {
    pub topic: TopicName,
    pub id: PartitionId,
    dir: PathBuf,
    durability: Durability,
    segments: RwLock<Vec<Arc<Segment>>>,
    writer: Mutex<Writer>,
    /// One past the last event readers may see: the durable end in fsync mode, the written end
    /// in interval mode.
    visible_end: AtomicU64,
    durable_end: AtomicU64,
    sync_state: Mutex<SyncState>,
    durable_tx: watch::Sender<Offset>,
    corruption: Mutex<Option<Corruption>>,
    /// Bumped whenever `visible_end` moves, shared by all partitions of the topic.
    topic_change: Arc<watch::Sender<u64>>,
    metrics: PartitionMetrics,
}

/// What recovery found, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub truncated_bytes: u64,
    pub corruption: Option<String>,
}

impl Partition {
    /// Opens (or creates) a partition directory, recovering its last segment.
    pub fn open(
        dir: &Path,
        topic: &TopicName,
        id: PartitionId,
        durability: Durability,
        topic_change: Arc<watch::Sender<u64>>,
    ) -> Result<(Arc<Partition>, RecoveryReport), LogError> {
        let ctx = |what: &str| {
            format!(
                "{what} partition {id} of topic '{topic}' in {}",
                dir.display()
            )
        };
        std::fs::create_dir_all(dir).map_err(LogError::storage(ctx("creating")))?;
        let mut bases = Vec::new();
        let mut index_files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(LogError::storage(ctx("listing")))? {
            let entry = entry.map_err(LogError::storage(ctx("listing")))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(base) = segment::parse_log_file_name(&name) {
                bases.push(base);
            } else if name.ends_with(".index") || name.ends_with(".timeindex") {
                index_files.push(name);
            }
        }
        bases.sort_unstable();
        // Index files whose log file is gone were left by an interrupted retention pass.
        for name in index_files {
            let stem = name.split('.').next().unwrap_or_default();
            if !bases.iter().any(|b| format!("{b:020}") == stem) {
                let _ = std::fs::remove_file(dir.join(&name));
            }
        }
        if bases.is_empty() {
            segment::open_for_write(&segment::log_path(dir, 0))
                .map_err(LogError::storage(ctx("creating the first segment of")))?;
            sync_dir(dir).map_err(LogError::storage(ctx("syncing the directory of")))?;
            bases.push(0);
        }
        let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(bases.len());
        for pair in bases.windows(2) {
            let size = std::fs::metadata(segment::log_path(dir, pair[0]))
                .map_err(LogError::storage(ctx("reading a segment of")))?
                .len();
            segments.push(Arc::new(Segment::closed(dir, pair[0], size, pair[1])));
        }
        let last_base = *bases.last().unwrap();
        let previous_max_time = match segments.last() {
            Some(previous) => previous
                .max_time_ms()
                .map_err(LogError::storage(ctx("reading the time index of")))?,
            None => 0,
        };
        let recovered = recover_active(dir, last_base, previous_max_time)
            .map_err(LogError::storage(ctx("recovering")))?;
        let report = RecoveryReport {
            truncated_bytes: recovered.truncated_bytes,
            corruption: recovered.corruption.as_ref().map(|c| c.reason.clone()),
        };
        if recovered.truncated_bytes > 0 {
            tracing::warn!(
                topic = %topic, partition = id,
                file = %segment::log_path(dir, last_base).display(),
                bytes = recovered.truncated_bytes,
                "dropped an incomplete record at the end of the log (a write that was never acknowledged)"
            );
        }
        if let Some(corruption) = &recovered.corruption {
            tracing::error!(
                topic = %topic, partition = id, offset = corruption.offset,
                file = %corruption.file.display(), position = corruption.position,
                reason = %corruption.reason,
                "corrupt record in the log; the partition serves events before it and refuses appends"
            );
        }
        let active = Arc::new(Segment::active(
            dir,
            last_base,
            recovered.file.clone(),
            recovered.index.clone(),
            recovered.size_bytes,
            recovered.next_offset,
            recovered.last_time_ms,
        ));
        segments.push(active.clone());
        let labels = [("topic", topic.to_string()), ("partition", id.to_string())];
        let metrics = PartitionMetrics {
            end_offset: metrics::gauge!("proteus_log_partition_end_offset", &labels),
            first_offset: metrics::gauge!("proteus_log_partition_first_offset", &labels),
            fsync_seconds: metrics::histogram!("proteus_log_fsync_duration_seconds"),
            group_commit_events: metrics::histogram!("proteus_log_group_commit_events"),
        };
        let visible = recovered
            .corruption
            .as_ref()
            .map_or(recovered.next_offset, |c| c.offset);
        metrics.end_offset.set(visible as f64);
        metrics.first_offset.set(segments[0].base_offset as f64);
        let writer = Writer {
            active,
            file: recovered.file,
            index_file: recovered.index_file,
            time_index_file: recovered.time_index_file,
            index_file_bytes: (recovered.index.offsets.len() * index::OFFSET_ENTRY_BYTES) as u64,
            time_index_file_bytes: (recovered.index.times.len() * index::TIME_ENTRY_BYTES) as u64,
            position: recovered.size_bytes,
            next_offset: recovered.next_offset,
            last_time_ms: recovered.last_time_ms,
            segment_first_time_ms: recovered.first_time_ms,
            index_builder: IndexBuilder::resume(
                last_base,
                &recovered.index,
                recovered.bytes_since_entry,
            ),
            buf: Vec::new(),
            failed: recovered
                .corruption
                .as_ref()
                .map(|c| corruption_message(topic, id, c)),
        };
        let partition = Arc::new(Partition {
            topic: topic.clone(),
            id,
            dir: dir.to_owned(),
            durability,
            segments: RwLock::new(segments),
            writer: Mutex::new(writer),
            visible_end: AtomicU64::new(visible),
            durable_end: AtomicU64::new(recovered.next_offset),
            sync_state: Mutex::new(SyncState::default()),
            durable_tx: watch::Sender::new(recovered.next_offset),
            corruption: Mutex::new(recovered.corruption),
            topic_change,
            metrics,
        });
        Ok((partition, report))
    }

    pub fn visible_end(&self) -> Offset {
        self.visible_end.load(Ordering::Acquire)
    }

    pub fn first_offset(&self) -> Offset {
        self.segments.read().unwrap()[0].base_offset
    }

    pub fn corruption(&self) -> Option<Corruption> {
        self.corruption.lock().unwrap().clone()
    }

    /// Writes events to the page cache and returns the offset of the first. They become
    /// visible once [`Partition::make_durable`] (fsync mode) or the write itself (interval
    /// mode) says so. Blocking: call from a blocking thread.
    pub fn write(
        &self,
        events: &[&Event],
        now_ms: i64,
        config: &TopicConfig,
    ) -> Result<Offset, LogError> {
        assert!(!events.is_empty());
        let mut guard = self.writer.lock().unwrap();
        let time_ms = now_ms.max(guard.last_time_ms);
        let records = events
            .iter()
            .map(|event| (time_ms, event.dedup_key(), event.json()));
        self.write_records(&mut guard, records, now_ms, config)
    }

    /// Writes events copied from another log at their own offsets and append times (see
    /// `PartitionImport::import_partition`; [`proteus_log::import::check_import`] has checked
    /// them). An empty partition first moves to start at the first event's offset. Blocking.
    pub fn import(
        &self,
        events: &[StoredEvent],
        dedup_keys: &[DedupKey],
        config: &TopicConfig,
    ) -> Result<Offset, LogError> {
        assert!(!events.is_empty() && events.len() == dedup_keys.len());
        let first = &events[0];
        let mut guard = self.writer.lock().unwrap();
        let w = &mut *guard;
        if let Some(reason) = &w.failed {
            return Err(LogError::Unavailable {
                reason: reason.clone(),
            });
        }
        let empty = w.position == 0
            && w.next_offset == w.active.base_offset
            && self.segments.read().unwrap().len() == 1;
        if empty && w.next_offset < first.offset {
            self.move_empty_start(w, first.offset).map_err(|e| {
                LogError::storage(format!(
                    "moving empty partition {} of topic '{}' to start at offset {}",
                    self.id, self.topic, first.offset
                ))(e)
            })?;
        } else if w.next_offset != first.offset {
            return Err(does_not_continue(
                &self.topic,
                self.id,
                first.offset,
                w.next_offset,
            ));
        } else if !empty && first.append_time_ms < w.last_time_ms {
            return Err(LogError::InvalidImport {
                topic: self.topic.clone(),
                partition: self.id,
                reason: format!(
                    "the event at offset {} was appended at {} ms, before the partition's last event ({} ms): append times never decrease within a partition",
                    first.offset, first.append_time_ms, w.last_time_ms
                ),
            });
        }
        let records = events
            .iter()
            .zip(dedup_keys)
            .map(|(event, key)| (event.append_time_ms, *key, &event.json[..]));
        // Segments roll by the imported times, so they span what they spanned in the source.
        self.write_records(w, records, first.append_time_ms, config)
    }

    /// Appends `records` (append time, dedup key, CloudEvent JSON) at the writer's next offset,
    /// first rolling to a new segment if the active one is full or older than `segment_ms` at
    /// `clock_ms`. Returns the first record's offset.
    fn write_records<'a>(
        &self,
        w: &mut Writer,
        records: impl Iterator<Item = (i64, DedupKey, &'a [u8])>,
        clock_ms: i64,
        config: &TopicConfig,
    ) -> Result<Offset, LogError> {
        if let Some(reason) = &w.failed {
            return Err(LogError::Unavailable {
                reason: reason.clone(),
            });
        }
        let segment_age_ms = w
            .segment_first_time_ms
            .map_or(0, |first| clock_ms.saturating_sub(first));
        if w.position > 0
            && (w.position >= config.segment_bytes || segment_age_ms >= config.segment_ms as i64)
            && let Err(e) = self.roll(w)
        {
            w.failed = Some(format!(
                "partition {} of topic '{}' stopped accepting appends after failing to start a new segment: {e}; restart Proteus to recover",
                self.id, self.topic
            ));
            return Err(LogError::storage(format!(
                "starting a new segment in {}",
                self.dir.display()
            ))(e));
        }
        let first_offset = w.next_offset;
        let mut builder_before = w.index_builder.clone();
        w.buf.clear();
        let (mut written, mut first_time_ms, mut last_time_ms) = (0u64, None, w.last_time_ms);
        for (time_ms, dedup_key, json) in records {
            let position = w.position + w.buf.len() as u64;
            let offset = first_offset + written;
            record::encode(&mut w.buf, offset, time_ms, dedup_key, json);
            w.index_builder.add(
                &RecordView {
                    offset,
                    append_time_ms: time_ms,
                    dedup_key,
                    payload: json,
                },
                position,
            );
            written += 1;
            first_time_ms.get_or_insert(time_ms);
            last_time_ms = time_ms;
        }
        assert!(written > 0, "a write has at least one record");
        if let Err(e) = w.file.write_all_at(&w.buf, w.position) {
            // Cut whatever part of the batch reached the file, so the next write starts on a
            // record boundary. If even that fails the file's state is unknown: stop.
            if let Err(cut) = w.file.set_len(w.position) {
                w.failed = Some(format!(
                    "partition {} of topic '{}' stopped accepting appends: a failed write could not be undone ({cut}); restart Proteus to recover",
                    self.id, self.topic
                ));
            }
            std::mem::swap(&mut w.index_builder, &mut builder_before);
            return Err(LogError::storage(format!(
                "writing to {}",
                w.active.log_path().display()
            ))(e));
        }
        if let Err(e) = append_index_entries(w) {
            w.failed = Some(format!(
                "partition {} of topic '{}' stopped accepting appends after an index write failed: {e}; restart Proteus to recover",
                self.id, self.topic
            ));
            return Err(LogError::storage("writing a segment index")(e));
        }
        w.position += w.buf.len() as u64;
        w.next_offset += written;
        w.last_time_ms = last_time_ms;
        if w.segment_first_time_ms.is_none() {
            w.segment_first_time_ms = first_time_ms;
        }
        w.active.grew(w.position, w.next_offset, last_time_ms);
        if let Durability::Interval { .. } = self.durability {
            self.publish_visible(w.next_offset);
        }
        Ok(first_offset)
    }

    /// Moves a partition that holds no event to start at `base`: its empty segment's files are
    /// removed, then a segment is started at `base`. A crash in between leaves no segment,
    /// which opening recreates (empty, at offset 0), so the import can simply run again.
    fn move_empty_start(&self, w: &mut Writer, base: Offset) -> io::Result<()> {
        let old = w.active.base_offset;
        for path in [
            segment::log_path(&self.dir, old),
            segment::index_path(&self.dir, old),
            segment::time_index_path(&self.dir, old),
        ] {
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                return Err(e);
            }
        }
        sync_dir(&self.dir)?;
        let active = self.start_segment(w, base, i64::MIN)?;
        *self.segments.write().unwrap() = vec![active];
        // Nothing lies before `base`: everything up to it is as durable as it will ever be.
        self.durable_end.fetch_max(base, Ordering::AcqRel);
        self.durable_tx
            .send_replace(self.durable_end.load(Ordering::Acquire));
        self.publish_visible(base);
        self.metrics.first_offset.set(base as f64);
        Ok(())
    }

    /// Closes the active segment (syncing it and its indexes, and recording its newest time)
    /// and starts a new one at the next offset.
    fn roll(&self, w: &mut Writer) -> io::Result<()> {
        let last_relative = (w.next_offset - 1 - w.active.base_offset) as u32;
        w.index_builder.add_time(w.last_time_ms, last_relative);
        append_index_entries(w)?;
        w.file.sync_data()?;
        w.index_file.sync_data()?;
        w.time_index_file.sync_data()?;
        let active = self.start_segment(w, w.next_offset, w.last_time_ms)?;
        self.segments.write().unwrap().push(active);
        Ok(())
    }

    /// Creates the files of an empty segment starting at `base` and makes it the writer's
    /// active segment; returns it for the caller to place in `segments`.
    fn start_segment(
        &self,
        w: &mut Writer,
        base: Offset,
        max_time_ms: i64,
    ) -> io::Result<Arc<Segment>> {
        let file = Arc::new(segment::open_for_write(&segment::log_path(
            &self.dir, base,
        ))?);
        let index_file = segment::open_for_write(&segment::index_path(&self.dir, base))?;
        let time_index_file = segment::open_for_write(&segment::time_index_path(&self.dir, base))?;
        sync_dir(&self.dir)?;
        let active = Arc::new(Segment::active(
            &self.dir,
            base,
            file.clone(),
            SegmentIndex::default(),
            0,
            base,
            max_time_ms,
        ));
        w.active = active.clone();
        w.file = file;
        w.index_file = index_file;
        w.time_index_file = time_index_file;
        w.index_file_bytes = 0;
        w.time_index_file_bytes = 0;
        w.position = 0;
        w.next_offset = base;
        w.segment_first_time_ms = None;
        w.index_builder = IndexBuilder::new(base);
        Ok(active)
    }

    fn publish_visible(&self, end: Offset) {
        let previous = self.visible_end.fetch_max(end, Ordering::AcqRel);
        if end > previous {
            self.metrics.end_offset.set(end as f64);
            self.topic_change
                .send_modify(|version| *version = version.wrapping_add(1));
        }
    }

    /// Waits until every event before `end` is on disk, sharing one fdatasync among all the
    /// appends that wait at the same time (group commit): the first waiter to find no sync in
    /// flight starts one covering everything written so far; the others wait for it, and
    /// whoever still needs more afterwards starts the next.
    pub async fn make_durable(self: &Arc<Self>, end: Offset) -> Result<(), LogError> {
        let mut durable_rx = self.durable_tx.subscribe();
        loop {
            if self.durable_end.load(Ordering::Acquire) >= end {
                return Ok(());
            }
            let lead = {
                let mut state = self.sync_state.lock().unwrap();
                if let Some(reason) = &state.failed {
                    return Err(LogError::Unavailable {
                        reason: reason.clone(),
                    });
                }
                if self.durable_end.load(Ordering::Acquire) >= end {
                    return Ok(());
                }
                !std::mem::replace(&mut state.in_flight, true)
            };
            if lead {
                // The sync runs in its own task so that a caller that goes away (a client that
                // disconnects) cannot leave the sync half done and the others waiting forever.
                let partition = self.clone();
                let _ = tokio::spawn(async move { partition.sync_once().await }).await;
            } else if durable_rx.changed().await.is_err() {
                return Err(LogError::Unavailable {
                    reason: "the log is shutting down".into(),
                });
            }
        }
    }

    async fn sync_once(self: Arc<Self>) {
        let (file, target) = {
            let w = self.writer.lock().unwrap();
            (w.file.clone(), w.next_offset)
        };
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || file.sync_data()).await;
        self.metrics
            .fsync_seconds
            .record(started.elapsed().as_secs_f64());
        let mut state = self.sync_state.lock().unwrap();
        state.in_flight = false;
        match result {
            Ok(Ok(())) => {
                let previous = self.durable_end.fetch_max(target, Ordering::AcqRel);
                if target > previous {
                    self.metrics
                        .group_commit_events
                        .record((target - previous) as f64);
                }
                if let Durability::Fsync = self.durability {
                    self.publish_visible(target);
                }
            }
            Ok(Err(e)) => {
                // After a failed fsync the kernel may have dropped the dirty pages: what is on
                // disk is unknown, so acknowledging anything more would be a lie.
                let reason = format!(
                    "partition {} of topic '{}' stopped accepting appends: fdatasync failed ({e}); restart Proteus to recover from what is on disk",
                    self.id, self.topic
                );
                tracing::error!(topic = %self.topic, partition = self.id, error = %e, "fdatasync failed");
                state.failed = Some(reason.clone());
                self.writer.lock().unwrap().failed = Some(reason);
            }
            Err(join) => {
                state.failed = Some(format!("fdatasync task failed: {join}"));
            }
        }
        drop(state);
        self.durable_tx
            .send_replace(self.durable_end.load(Ordering::Acquire));
    }

    /// Syncs whatever was written and is not yet durable (interval durability and shutdown).
    pub async fn sync_written(self: &Arc<Self>) -> Result<(), LogError> {
        let written = self.writer.lock().unwrap().next_offset;
        self.make_durable(written).await
    }

    /// The segment holding `offset`, or `None` if retention already removed it.
    fn segment_for(&self, offset: Offset) -> Option<Arc<Segment>> {
        let segments = self.segments.read().unwrap();
        let at = segments.partition_point(|s| s.base_offset <= offset);
        (at > 0).then(|| segments[at - 1].clone())
    }

    fn next_segment_after(&self, base_offset: Offset) -> Option<Arc<Segment>> {
        let segments = self.segments.read().unwrap();
        let at = segments.partition_point(|s| s.base_offset <= base_offset);
        segments.get(at).cloned()
    }

    /// Visits the records with offsets in `[start, end)` in order. Stops early when `visit`
    /// says so, or at the first corrupt record (recorded and returned as an error).
    fn scan_range(
        &self,
        start: Offset,
        end: Offset,
        mut visit: impl FnMut(&RecordView<'_>, &Bytes) -> Visit,
    ) -> Result<(), LogError> {
        let mut next = start;
        let Some(mut segment) = self.segment_for(next) else {
            return Ok(());
        };
        while next < end {
            let entry = segment
                .with_index(|index| index.floor(segment.base_offset, next))
                .map_err(|e| self.storage_error(&segment, e))?;
            let mut from = (
                u64::from(entry.position),
                segment.base_offset + u64::from(entry.relative_offset),
            );
            let mut stopped = false;
            loop {
                let result =
                    segment.scan(from.0, from.1, segment.size_bytes(), |record, _, chunk| {
                        if record.offset < next {
                            return Visit::Continue;
                        }
                        if record.offset >= end {
                            stopped = true;
                            return Visit::Stop;
                        }
                        next = record.offset + 1;
                        match visit(record, chunk) {
                            Visit::Continue => Visit::Continue,
                            Visit::Stop => {
                                stopped = true;
                                Visit::Stop
                            }
                        }
                    });
                match result {
                    Ok(()) => break,
                    Err(ScanError::Corrupt(failure))
                        if failure.position == from.0 && from.0 != 0 =>
                    {
                        // The index led to a bad place: it may be the index that is damaged.
                        // Scan the segment from its start to tell.
                        tracing::warn!(segment = %segment.log_path().display(), position = failure.position, "index entry points at an invalid record; scanning the segment from its start");
                        from = (0, segment.base_offset);
                    }
                    Err(ScanError::Corrupt(failure)) => return Err(self.corrupt(&segment, failure)),
                    Err(ScanError::Io(e)) => return Err(self.storage_error(&segment, e)),
                }
            }
            if stopped || next >= end {
                break;
            }
            match self.next_segment_after(segment.base_offset) {
                Some(following) => segment = following,
                None => break,
            }
        }
        Ok(())
    }

    fn storage_error(&self, segment: &Segment, e: io::Error) -> LogError {
        LogError::storage(format!("reading {}", segment.log_path().display()))(e)
    }

    /// Records a corruption found while reading and turns it into the error readers get.
    fn corrupt(&self, segment: &Segment, failure: ScanFailure) -> LogError {
        let corruption = Corruption {
            offset: failure.offset,
            file: segment.log_path(),
            position: failure.position,
            reason: failure.reason,
        };
        {
            let mut known = self.corruption.lock().unwrap();
            if known.as_ref().is_none_or(|k| corruption.offset < k.offset) {
                tracing::error!(
                    topic = %self.topic, partition = self.id, offset = corruption.offset,
                    file = %corruption.file.display(), position = corruption.position,
                    reason = %corruption.reason,
                    "corrupt record in the log; the partition serves events before it and refuses appends"
                );
                *known = Some(corruption.clone());
                self.writer.lock().unwrap().failed =
                    Some(corruption_message(&self.topic, self.id, &corruption));
            }
        }
        corruption_error(&self.topic, self.id, &corruption)
    }

    /// Reads events in offset order (blocking: call from a blocking thread).
    pub fn read(&self, from: ReadFrom, limits: ReadLimits) -> Result<ReadBatch, LogError> {
        let mut end = self.visible_end();
        let corruption = self.corruption();
        if let Some(corruption) = &corruption {
            end = end.min(corruption.offset);
        }
        if let (Some(corruption), ReadFrom::Offset(offset)) = (&corruption, from)
            && offset >= corruption.offset
        {
            return Err(corruption_error(&self.topic, self.id, corruption));
        }
        let first = self.first_offset();
        let start = match from {
            ReadFrom::Offset(offset) if offset > self.visible_end() => {
                return Err(LogError::OffsetOutOfRange {
                    topic: self.topic.clone(),
                    partition: self.id,
                    offset,
                    end_offset: self.visible_end(),
                });
            }
            ReadFrom::Offset(offset) => offset.max(first),
            ReadFrom::TimeMs(time_ms) => self.offset_for_time(time_ms, end)?.max(first),
        };
        if let Some(corruption) = &corruption
            && start >= corruption.offset
        {
            return Err(corruption_error(&self.topic, self.id, corruption));
        }
        let mut events = Vec::new();
        let mut bytes = 0u64;
        let result = self.scan_range(start, end, |record, chunk| {
            bytes += record.payload.len() as u64;
            events.push(StoredEvent {
                partition: self.id,
                offset: record.offset,
                append_time_ms: record.append_time_ms,
                json: chunk.slice_ref(record.payload),
            });
            if events.len() as u64 >= u64::from(limits.events_max)
                || bytes >= u64::from(limits.bytes_max)
            {
                Visit::Stop
            } else {
                Visit::Continue
            }
        });
        match result {
            Ok(()) => {}
            // Events before the corruption are still served; the next read gets the error.
            Err(LogError::Corrupt { .. }) if !events.is_empty() => {}
            Err(e) => return Err(e),
        }
        let next_offset = events.last().map_or(start, |e| e.offset + 1);
        Ok(ReadBatch {
            events,
            next_offset,
            first_offset: self.first_offset(),
            end_offset: self.visible_end(),
        })
    }

    /// The offset of the first event appended at or after `time_ms` (or `end` if none).
    fn offset_for_time(&self, time_ms: i64, end: Offset) -> Result<Offset, LogError> {
        let segments = self.segments.read().unwrap().clone();
        for segment in segments {
            let max_time = segment
                .max_time_ms()
                .map_err(|e| self.storage_error(&segment, e))?;
            if max_time < time_ms || segment.end_offset() == segment.base_offset {
                continue;
            }
            let relative = segment
                .with_index(|index| index.time_floor(time_ms))
                .map_err(|e| self.storage_error(&segment, e))?;
            let mut found = None;
            self.scan_range(
                segment.base_offset + u64::from(relative),
                end,
                |record, _| {
                    if record.append_time_ms >= time_ms {
                        found = Some(record.offset);
                        Visit::Stop
                    } else {
                        Visit::Continue
                    }
                },
            )?;
            return Ok(found.unwrap_or(end));
        }
        Ok(end)
    }

    /// The offset of the first visible event appended at or after `time_ms`.
    pub fn offset_at_or_after(&self, time_ms: i64) -> Result<Offset, LogError> {
        self.offset_for_time(time_ms, self.visible_end())
    }

    /// Visits (offset, append time, dedup key) of records in `[start, end)`; used to rebuild the
    /// dedup index at start-up.
    pub fn scan_keys(
        &self,
        start: Offset,
        end: Offset,
        mut visit: impl FnMut(Offset, i64, proteus_log::DedupKey),
    ) -> Result<(), LogError> {
        self.scan_range(start.max(self.first_offset()), end, |record, _| {
            visit(record.offset, record.append_time_ms, record.dedup_key);
            Visit::Continue
        })
    }

    pub fn describe(&self) -> PartitionDescription {
        let segments = self.segments.read().unwrap();
        let next_offset = self.visible_end();
        PartitionDescription {
            partition: self.id,
            first_offset: segments[0].base_offset.min(next_offset),
            next_offset,
            bytes: segments.iter().map(|s| s.disk_bytes()).sum(),
            segments: Some(segments.len() as u32),
        }
    }

    /// Deletes whole closed segments that age or size retention no longer wants. The active
    /// segment is never deleted. Returns how many segments went.
    pub fn apply_retention(&self, now_ms: i64, config: &TopicConfig) -> Result<usize, LogError> {
        let mut deleted = 0;
        loop {
            let oldest = {
                let segments = self.segments.read().unwrap();
                if segments.len() <= 1 {
                    break;
                }
                let total: u64 = segments.iter().map(|s| s.size_bytes()).sum();
                let oldest = segments[0].clone();
                let too_big = config.retention_bytes.is_some_and(|max| total > max);
                (oldest, too_big)
            };
            let (segment, too_big) = oldest;
            let too_old = match config.retention_ms {
                Some(retention_ms) => {
                    let max_time = segment
                        .max_time_ms()
                        .map_err(|e| self.storage_error(&segment, e))?;
                    max_time < now_ms.saturating_sub(retention_ms as i64)
                }
                None => false,
            };
            if !(too_old || too_big) {
                break;
            }
            {
                let mut segments = self.segments.write().unwrap();
                if !Arc::ptr_eq(&segments[0], &segment) {
                    continue;
                }
                segments.remove(0);
                self.metrics
                    .first_offset
                    .set(segments[0].base_offset as f64);
            }
            // The log file goes first: an index without its log is cleaned up at the next
            // start, whereas a log without its index would be rebuilt needlessly.
            for path in [
                segment.log_path(),
                segment::index_path(&self.dir, segment.base_offset),
                segment::time_index_path(&self.dir, segment.base_offset),
            ] {
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    tracing::warn!(file = %path.display(), error = %e, "could not delete a segment file removed by retention");
                }
            }
            tracing::debug!(topic = %self.topic, partition = self.id, base_offset = segment.base_offset, too_old, too_big, "retention deleted a segment");
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Makes everything written durable and the active segment's index files complete; used
    /// at shutdown. Blocking.
    pub fn close(&self) -> io::Result<()> {
        let w = self.writer.lock().unwrap();
        w.file.sync_data()?;
        w.index_file.sync_data()?;
        w.time_index_file.sync_data()?;
        Ok(())
    }
}

fn corruption_message(topic: &TopicName, partition: PartitionId, c: &Corruption) -> String {
    format!(
        "partition {partition} of topic '{topic}' refuses appends: it is corrupt at offset {} ({}, file {}, byte {}); restore the file from a backup, or stop Proteus and truncate the file at that byte accepting the loss of the events after it",
        c.offset,
        c.reason,
        c.file.display(),
        c.position
    )
}

fn corruption_error(topic: &TopicName, partition: PartitionId, c: &Corruption) -> LogError {
    LogError::Corrupt {
        topic: topic.clone(),
        partition,
        offset: c.offset,
        file: c.file.display().to_string(),
        position: c.position,
        reason: c.reason.clone(),
    }
}

/// Moves the entries the index builder collected into the active segment's index files and
/// its in-memory index.
fn append_index_entries(w: &mut Writer) -> io::Result<()> {
    let entries = w.index_builder.take();
    if !entries.offsets.is_empty() {
        let buf = index::encode_offsets(&entries.offsets);
        w.index_file.write_all_at(&buf, w.index_file_bytes)?;
        w.index_file_bytes += buf.len() as u64;
    }
    if !entries.times.is_empty() {
        let buf = index::encode_times(&entries.times);
        w.time_index_file
            .write_all_at(&buf, w.time_index_file_bytes)?;
        w.time_index_file_bytes += buf.len() as u64;
    }
    w.active.extend_index(&entries.offsets, &entries.times);
    Ok(())
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The state of the last segment after recovery.
struct RecoveredActive {
    file: Arc<File>,
    index_file: File,
    time_index_file: File,
    index: SegmentIndex,
    size_bytes: u64,
    next_offset: Offset,
    last_time_ms: i64,
    first_time_ms: Option<i64>,
    bytes_since_entry: u64,
    truncated_bytes: u64,
    corruption: Option<Corruption>,
}

/// Recovers the last segment without reading the whole log: start from the last index entry
/// that points at a valid record, check every record from there to the end of the file, and
/// either truncate a torn tail or stop at a corrupt record.
///
/// A bad record with no valid record anywhere after it is the unfinished last write before a
/// crash (it was never acknowledged): it is truncated. A bad record followed by a valid one is
/// corruption of data that was acknowledged: it is never truncated or skipped.
fn recover_active(
    dir: &Path,
    base: Offset,
    previous_max_time_ms: i64,
) -> io::Result<RecoveredActive> {
    let log_path = segment::log_path(dir, base);
    let file = Arc::new(segment::open_for_write(&log_path)?);
    let file_bytes = file.metadata()?.len();
    let SegmentIndex {
        mut offsets,
        mut times,
    } = segment::read_index_files(dir, base, file_bytes)?;

    // The last index entry whose record is intact is where checking starts.
    let mut start = (0u64, base);
    while let Some(entry) = offsets.last().copied() {
        let expected = base + u64::from(entry.relative_offset);
        if record_at(&file, u64::from(entry.position), file_bytes)?
            .is_some_and(|offset| offset == expected)
        {
            start = (u64::from(entry.position), expected);
            break;
        }
        offsets.pop();
    }
    // Entries from the start record on are rebuilt by the scan below.
    let start_relative = (start.1 - base) as u32;
    offsets.retain(|e| e.relative_offset < start_relative);
    times.retain(|e| e.relative_offset < start_relative);
    let kept = SegmentIndex { offsets, times };

    let probe = Segment::active(
        dir,
        base,
        file.clone(),
        SegmentIndex::default(),
        file_bytes,
        base,
        i64::MIN,
    );
    let mut builder = IndexBuilder::resume(base, &kept, index::INDEX_INTERVAL_BYTES);
    let mut next_offset = start.1;
    let mut end_position = start.0;
    let mut last_time_ms = previous_max_time_ms;
    let scan = probe.scan(start.0, start.1, file_bytes, |record, position, _| {
        builder.add(record, position);
        next_offset = record.offset + 1;
        end_position = position + record.encoded_len() as u64;
        last_time_ms = last_time_ms.max(record.append_time_ms);
        Visit::Continue
    });
    let mut truncated_bytes = 0;
    let mut corruption = None;
    match scan {
        Ok(()) => {}
        Err(ScanError::Io(e)) => return Err(e),
        Err(ScanError::Corrupt(failure)) => {
            if valid_record_after(&file, failure.position + 1, file_bytes, failure.offset)? {
                corruption = Some(Corruption {
                    offset: failure.offset,
                    file: log_path.clone(),
                    position: failure.position,
                    reason: failure.reason,
                });
            } else {
                truncated_bytes = file_bytes - failure.position;
                file.set_len(failure.position)?;
            }
        }
    }
    let mut index = kept;
    let scanned = builder.take();
    index.offsets.extend(scanned.offsets);
    index.times.extend(scanned.times);
    // Rewrite both index files to match what the log holds.
    let index_file = segment::open_for_write(&segment::index_path(dir, base))?;
    let time_index_file = segment::open_for_write(&segment::time_index_path(dir, base))?;
    index_file.set_len(0)?;
    index_file.write_all_at(&index::encode_offsets(&index.offsets), 0)?;
    time_index_file.set_len(0)?;
    time_index_file.write_all_at(&index::encode_times(&index.times), 0)?;
    // What recovery found may so far live only in the page cache of a process that crashed:
    // make it durable before serving it as acknowledged.
    file.sync_all()?;
    index_file.sync_data()?;
    time_index_file.sync_data()?;
    let first_time_ms = if end_position > 0 {
        first_record_time(&file)?
    } else {
        None
    };
    let bytes_since_entry = index
        .offsets
        .last()
        .map_or(0, |last| end_position - u64::from(last.position));
    Ok(RecoveredActive {
        file,
        index_file,
        time_index_file,
        index,
        size_bytes: end_position,
        next_offset,
        last_time_ms: last_time_ms.max(0),
        first_time_ms,
        bytes_since_entry,
        truncated_bytes,
        corruption,
    })
}

/// The next offset of the partition in `dir`, from its files alone (no lock, no recovery,
/// nothing written): one past the last whole record of its last segment, found from the
/// segment's last index entry. For a server whose log is elsewhere, to tell whether that log
/// holds everything this one does. A torn or corrupt tail ends the count where it starts.
pub fn end_offset_on_disk(dir: &Path) -> io::Result<Offset> {
    let mut last_base = None;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(base) = segment::parse_log_file_name(&name.to_string_lossy()) {
            last_base = last_base.max(Some(base));
        }
    }
    let Some(base) = last_base else {
        return Ok(0);
    };
    let file = File::open(segment::log_path(dir, base))?;
    let file_bytes = file.metadata()?.len();
    let index = segment::read_index_files(dir, base, file_bytes)?;
    let (mut position, mut next) = index.offsets.last().map_or((0, base), |entry| {
        (
            u64::from(entry.position),
            base + u64::from(entry.relative_offset),
        )
    });
    while let Some((offset, bytes)) = record_and_bytes_at(&file, position, file_bytes)? {
        if offset != next {
            break;
        }
        next += 1;
        position += bytes;
    }
    Ok(next)
}

/// The offset of the valid record at `position`, if there is one.
fn record_at(file: &File, position: u64, file_bytes: u64) -> io::Result<Option<Offset>> {
    Ok(record_and_bytes_at(file, position, file_bytes)?.map(|(offset, _)| offset))
}

/// The offset and the size in bytes of the valid record at `position`, if there is one.
fn record_and_bytes_at(
    file: &File,
    position: u64,
    file_bytes: u64,
) -> io::Result<Option<(Offset, u64)>> {
    let mut header = [0u8; HEADER_BYTES];
    if position + HEADER_BYTES as u64 > file_bytes
        || segment::read_full_at(file, &mut header, position)? < HEADER_BYTES
    {
        return Ok(None);
    }
    let payload_len = u64::from(record::header_payload_len(&header));
    let total = HEADER_BYTES as u64 + payload_len;
    if payload_len > u64::from(proteus_log::topic::EVENT_BYTES_MAX_LIMIT)
        || position + total > file_bytes
    {
        return Ok(None);
    }
    let mut buf = vec![0u8; total as usize];
    segment::read_full_at(file, &mut buf, position)?;
    Ok(match record::decode(&buf) {
        Decoded::Record(record) => Some((record.offset, total)),
        _ => None,
    })
}

/// Whether any byte position in `[from, file_bytes)` starts a valid record with an offset
/// after `bad_offset`: the sign that a bad record is corruption, not a torn tail.
fn valid_record_after(
    file: &File,
    from: u64,
    file_bytes: u64,
    bad_offset: Offset,
) -> io::Result<bool> {
    if from >= file_bytes {
        return Ok(false);
    }
    let tail_len = (file_bytes - from) as usize;
    let mut tail = vec![0u8; tail_len];
    let filled = segment::read_full_at(file, &mut tail, from)?;
    tail.truncate(filled);
    for start in 0..tail.len() {
        if let Decoded::Record(record) = record::decode(&tail[start..])
            && record.offset > bad_offset
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn first_record_time(file: &File) -> io::Result<Option<i64>> {
    let mut header = [0u8; HEADER_BYTES];
    if segment::read_full_at(file, &mut header, 0)? < HEADER_BYTES {
        return Ok(None);
    }
    Ok(Some(record::header_append_time_ms(&header)))
}
