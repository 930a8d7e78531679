//! One segment: a `.log` file of records and its two index files.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use bytes::{Bytes, BytesMut};
use proteus_log::Offset;

use crate::index::{self, SegmentIndex};
use crate::record::{self, Decoded, HEADER_BYTES, RecordView};

/// Bytes read from a segment file at a time when scanning.
pub const READ_CHUNK_BYTES: usize = 256 * 1024;

pub fn log_path(dir: &Path, base_offset: Offset) -> PathBuf {
    dir.join(format!("{base_offset:020}.log"))
}
pub fn index_path(dir: &Path, base_offset: Offset) -> PathBuf {
    dir.join(format!("{base_offset:020}.index"))
}
pub fn time_index_path(dir: &Path, base_offset: Offset) -> PathBuf {
    dir.join(format!("{base_offset:020}.timeindex"))
}

/// The valid prefix of a segment's two index files (see [`index::decode_offsets`]); a missing
/// file reads as empty.
pub fn read_index_files(
    dir: &Path,
    base_offset: Offset,
    log_bytes: u64,
) -> io::Result<SegmentIndex> {
    let read = |path: PathBuf| match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    };
    Ok(SegmentIndex {
        offsets: index::decode_offsets(&read(index_path(dir, base_offset))?, log_bytes),
        times: index::decode_times(&read(time_index_path(dir, base_offset))?),
    })
}

/// Parses `00000000000000001234.log` into 1234.
pub fn parse_log_file_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// A segment file, shared by the writer (for the active segment) and readers.
///
/// The file is opened on first use, so a partition with thousands of old segments opens in
/// constant time; the index is likewise loaded on the first read that needs it.
pub struct Segment {
    pub base_offset: Offset,
    pub dir: PathBuf,
    file: OnceLock<Arc<File>>,
    index: RwLock<Option<SegmentIndex>>,
    /// Bytes of valid records in the `.log` file.
    size_bytes: AtomicU64,
    /// One past the last record's offset.
    end_offset: AtomicU64,
    /// Newest append time in the segment; `i64::MIN` until known.
    max_time_ms: AtomicI64,
}

/// Where a scan stopped, when it did not reach its end.
#[derive(Debug)]
pub struct ScanFailure {
    pub offset: Offset,
    pub position: u64,
    pub reason: String,
}

pub enum ScanError {
    Io(io::Error),
    Corrupt(ScanFailure),
}

impl From<io::Error> for ScanError {
    fn from(error: io::Error) -> Self {
        ScanError::Io(error)
    }
}

/// What a scan visitor wants next.
pub enum Visit {
    Continue,
    Stop,
}

impl Segment {
    /// A segment known from its file name; size and end come from the caller.
    pub fn closed(dir: &Path, base_offset: Offset, size_bytes: u64, end_offset: Offset) -> Self {
        Segment {
            base_offset,
            dir: dir.to_owned(),
            file: OnceLock::new(),
            index: RwLock::new(None),
            size_bytes: AtomicU64::new(size_bytes),
            end_offset: AtomicU64::new(end_offset),
            max_time_ms: AtomicI64::new(i64::MIN),
        }
    }

    /// The active segment: its file is open for writing and its index is in memory.
    pub fn active(
        dir: &Path,
        base_offset: Offset,
        file: Arc<File>,
        index: SegmentIndex,
        size_bytes: u64,
        end_offset: Offset,
        max_time_ms: i64,
    ) -> Self {
        let segment = Segment::closed(dir, base_offset, size_bytes, end_offset);
        let _ = segment.file.set(file);
        *segment.index.write().unwrap() = Some(index);
        segment.max_time_ms.store(max_time_ms, Ordering::Release);
        segment
    }

    pub fn log_path(&self) -> PathBuf {
        log_path(&self.dir, self.base_offset)
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes.load(Ordering::Acquire)
    }

    pub fn end_offset(&self) -> Offset {
        self.end_offset.load(Ordering::Acquire)
    }

    /// Called by the writer after records are in the file.
    pub fn grew(&self, size_bytes: u64, end_offset: Offset, max_time_ms: i64) {
        self.max_time_ms.store(max_time_ms, Ordering::Release);
        self.end_offset.store(end_offset, Ordering::Release);
        self.size_bytes.store(size_bytes, Ordering::Release);
    }

    /// Bytes on disk, indexes included.
    pub fn disk_bytes(&self) -> u64 {
        let index_bytes = self
            .index
            .read()
            .unwrap()
            .as_ref()
            .map(|i| {
                (i.offsets.len() * index::OFFSET_ENTRY_BYTES
                    + i.times.len() * index::TIME_ENTRY_BYTES) as u64
            })
            .unwrap_or(0);
        self.size_bytes() + index_bytes
    }

    pub fn file(&self) -> io::Result<&Arc<File>> {
        if let Some(file) = self.file.get() {
            return Ok(file);
        }
        let file = Arc::new(File::open(self.log_path())?);
        Ok(self.file.get_or_init(|| file))
    }

    /// Newest append time in the segment, read from the last time-index entry when the segment
    /// was closed before this process started.
    pub fn max_time_ms(&self) -> io::Result<i64> {
        let known = self.max_time_ms.load(Ordering::Acquire);
        if known != i64::MIN {
            return Ok(known);
        }
        let times = self.with_index(|index| index.times.last().map(|e| e.time_ms))?;
        let time = times.unwrap_or(i64::MIN + 1);
        self.max_time_ms.store(time, Ordering::Release);
        Ok(time)
    }

    /// Runs `f` on the index, loading it first if needed. A missing or damaged index file of a
    /// closed segment is rebuilt from the `.log` file.
    pub fn with_index<T>(&self, f: impl FnOnce(&SegmentIndex) -> T) -> io::Result<T> {
        {
            let guard = self.index.read().unwrap();
            if let Some(index) = guard.as_ref() {
                return Ok(f(index));
            }
        }
        let loaded = self.load_index()?;
        let mut guard = self.index.write().unwrap();
        let index = guard.get_or_insert(loaded);
        Ok(f(index))
    }

    /// Appends entries to the in-memory index of the active segment.
    pub fn extend_index(&self, offsets: &[index::OffsetEntry], times: &[index::TimeEntry]) {
        let mut guard = self.index.write().unwrap();
        let index = guard.get_or_insert_with(SegmentIndex::default);
        index.offsets.extend_from_slice(offsets);
        index.times.extend_from_slice(times);
    }

    fn load_index(&self) -> io::Result<SegmentIndex> {
        let size = self.size_bytes();
        let index = read_index_files(&self.dir, self.base_offset, size)?;
        if index.offsets.is_empty() && size > 0 {
            tracing::warn!(segment = %self.log_path().display(), "offset index missing or damaged; rebuilding it from the log file");
            return self.rebuild_index();
        }
        Ok(index)
    }

    /// Rebuilds the index by reading the whole segment. Used only when an index file is lost;
    /// corruption met on the way stops the rebuild early and is reported by the read that
    /// reaches it.
    fn rebuild_index(&self) -> io::Result<SegmentIndex> {
        let mut builder = IndexBuilder::new(self.base_offset);
        let _ = self.scan(
            0,
            self.base_offset,
            self.size_bytes(),
            |record, position, _| {
                builder.add(record, position);
                Visit::Continue
            },
        );
        Ok(builder.finish())
    }

    /// Visits records from byte `position`, which must hold the record `offset`, up to byte
    /// `limit_bytes`, checking each record's CRC and that offsets follow one another. `visit`
    /// gets each record, its byte position, and the chunk it was read into (so a reader can keep
    /// the payload as a slice of it instead of copying).
    pub fn scan(
        &self,
        mut position: u64,
        mut expected_offset: Offset,
        limit_bytes: u64,
        mut visit: impl FnMut(&RecordView<'_>, u64, &Bytes) -> Visit,
    ) -> Result<(), ScanError> {
        let file = self.file()?;
        let corrupt = |offset, position, reason: String| {
            Err(ScanError::Corrupt(ScanFailure {
                offset,
                position,
                reason,
            }))
        };
        let mut chunk_bytes = READ_CHUNK_BYTES;
        while position < limit_bytes {
            let want = (limit_bytes - position).min(chunk_bytes as u64) as usize;
            let mut buf = BytesMut::zeroed(want);
            let filled = read_full_at(file, &mut buf, position)?;
            if filled == 0 {
                return corrupt(
                    expected_offset,
                    position,
                    format!(
                        "the file ends at byte {position}, before the end of its records at byte {limit_bytes}"
                    ),
                );
            }
            buf.truncate(filled);
            let chunk = buf.freeze();
            let mut consumed = 0usize;
            while consumed < filled {
                let at = position + consumed as u64;
                match record::decode(&chunk[consumed..]) {
                    Decoded::Record(record) => {
                        if record.offset != expected_offset {
                            return corrupt(
                                expected_offset,
                                at,
                                format!(
                                    "record holds offset {} where offset {expected_offset} was expected",
                                    record.offset
                                ),
                            );
                        }
                        if let Visit::Stop = visit(&record, at, &chunk) {
                            return Ok(());
                        }
                        consumed += record.encoded_len();
                        expected_offset += 1;
                    }
                    Decoded::Incomplete { total_bytes } => {
                        let needed = total_bytes.unwrap_or(HEADER_BYTES);
                        if at + needed as u64 > limit_bytes || filled < want {
                            return corrupt(
                                expected_offset,
                                at,
                                "record extends past the end of the segment's data".into(),
                            );
                        }
                        if consumed == 0 {
                            // A single record larger than the chunk: read a bigger one.
                            chunk_bytes = needed.max(chunk_bytes * 2);
                        }
                        break;
                    }
                    Decoded::Invalid(reason) => return corrupt(expected_offset, at, reason),
                }
            }
            position += consumed as u64;
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
pub fn read_full_at(file: &File, buf: &mut [u8], position: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], position + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Collects index entries while records are written or scanned.
#[derive(Clone)]
pub struct IndexBuilder {
    base_offset: Offset,
    index: SegmentIndex,
    bytes_since_entry: u64,
    last_time_entry_ms: i64,
    started: bool,
}

impl IndexBuilder {
    pub fn new(base_offset: Offset) -> Self {
        IndexBuilder {
            base_offset,
            index: SegmentIndex::default(),
            bytes_since_entry: 0,
            last_time_entry_ms: i64::MIN,
            started: false,
        }
    }

    /// Continues an existing index whose last entries are `last`.
    pub fn resume(base_offset: Offset, last: &SegmentIndex, bytes_since_entry: u64) -> Self {
        IndexBuilder {
            base_offset,
            index: SegmentIndex::default(),
            bytes_since_entry,
            last_time_entry_ms: last.times.last().map_or(i64::MIN, |e| e.time_ms),
            started: !last.offsets.is_empty(),
        }
    }

    pub fn add(&mut self, record: &RecordView<'_>, position: u64) {
        let relative_offset = (record.offset - self.base_offset) as u32;
        if !self.started || self.bytes_since_entry >= index::INDEX_INTERVAL_BYTES {
            self.started = true;
            self.index.offsets.push(index::OffsetEntry {
                relative_offset,
                position: position as u32,
            });
            self.add_time(record.append_time_ms, relative_offset);
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += record.encoded_len() as u64;
    }

    /// Adds a time entry if `time_ms` is newer than the last one; used for the final entry of
    /// a closing segment, which records its newest time.
    pub fn add_time(&mut self, time_ms: i64, relative_offset: u32) {
        if time_ms > self.last_time_entry_ms {
            self.index.times.push(index::TimeEntry {
                time_ms,
                relative_offset,
            });
            self.last_time_entry_ms = time_ms;
        }
    }

    /// Takes the entries collected so far, keeping the running state.
    pub fn take(&mut self) -> SegmentIndex {
        std::mem::take(&mut self.index)
    }

    pub fn finish(self) -> SegmentIndex {
        self.index
    }
}

/// Opens a file for appending records, creating it if needed.
pub fn open_for_write(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}
