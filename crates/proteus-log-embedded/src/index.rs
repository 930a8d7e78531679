//! Sparse offset and time indexes of one segment.
//!
//! Both are append-only files of fixed-size little-endian entries, rewritten only by recovery:
//!
//! - `.index`: `relative_offset: u32, position: u32` — the record with offset
//!   `base + relative_offset` starts at byte `position` of the `.log` file;
//! - `.timeindex`: `time_ms: i64, relative_offset: u32` — the record at `base + relative_offset`
//!   was appended at `time_ms`, and every earlier record of the segment at or before it.
//!
//! An entry is added for the first record of a segment and then whenever
//! [`INDEX_INTERVAL_BYTES`] of records were written since the previous entry, so finding a
//! position never scans more than that many bytes. A segment's last time entry, written when
//! it is closed, holds its newest append time, which age-based retention reads.

use proteus_log::Offset;

/// Bytes of records between two index entries.
pub const INDEX_INTERVAL_BYTES: u64 = 4096;
pub const OFFSET_ENTRY_BYTES: usize = 8;
pub const TIME_ENTRY_BYTES: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeEntry {
    pub time_ms: i64,
    pub relative_offset: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentIndex {
    pub offsets: Vec<OffsetEntry>,
    pub times: Vec<TimeEntry>,
}

impl OffsetEntry {
    pub fn encode(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&self.relative_offset.to_le_bytes());
        buf.extend_from_slice(&self.position.to_le_bytes());
    }
}

impl TimeEntry {
    pub fn encode(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&self.time_ms.to_le_bytes());
        buf.extend_from_slice(&self.relative_offset.to_le_bytes());
    }
}

/// The bytes of `entries` as they are appended to an `.index` file.
pub fn encode_offsets(entries: &[OffsetEntry]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(entries.len() * OFFSET_ENTRY_BYTES);
    entries.iter().for_each(|e| e.encode(&mut buf));
    buf
}

/// The bytes of `entries` as they are appended to a `.timeindex` file.
pub fn encode_times(entries: &[TimeEntry]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(entries.len() * TIME_ENTRY_BYTES);
    entries.iter().for_each(|e| e.encode(&mut buf));
    buf
}

/// Decodes an offset index file, keeping the longest prefix of entries that is strictly
/// increasing and points inside a log file of `log_bytes`. Anything after is the unsynced tail
/// of a crash and is dropped.
pub fn decode_offsets(bytes: &[u8], log_bytes: u64) -> Vec<OffsetEntry> {
    let mut entries: Vec<OffsetEntry> = Vec::with_capacity(bytes.len() / OFFSET_ENTRY_BYTES);
    for chunk in bytes.chunks_exact(OFFSET_ENTRY_BYTES) {
        let entry = OffsetEntry {
            relative_offset: u32::from_le_bytes(chunk[0..4].try_into().unwrap()),
            position: u32::from_le_bytes(chunk[4..8].try_into().unwrap()),
        };
        let increasing = entries.last().is_none_or(|last| {
            entry.relative_offset > last.relative_offset && entry.position > last.position
        });
        let first_is_origin =
            !entries.is_empty() || (entry.relative_offset == 0 && entry.position == 0);
        if !increasing || !first_is_origin || u64::from(entry.position) >= log_bytes {
            break;
        }
        entries.push(entry);
    }
    entries
}

/// Decodes a time index file, keeping the prefix whose times never decrease and whose offsets
/// increase.
pub fn decode_times(bytes: &[u8]) -> Vec<TimeEntry> {
    let mut entries: Vec<TimeEntry> = Vec::with_capacity(bytes.len() / TIME_ENTRY_BYTES);
    for chunk in bytes.chunks_exact(TIME_ENTRY_BYTES) {
        let entry = TimeEntry {
            time_ms: i64::from_le_bytes(chunk[0..8].try_into().unwrap()),
            relative_offset: u32::from_le_bytes(chunk[8..12].try_into().unwrap()),
        };
        let ordered = entries.last().is_none_or(|last| {
            entry.time_ms >= last.time_ms && entry.relative_offset > last.relative_offset
        });
        if !ordered {
            break;
        }
        entries.push(entry);
    }
    entries
}

impl SegmentIndex {
    /// The indexed entry at or before `offset`: where to start scanning for it.
    pub fn floor(&self, base_offset: Offset, offset: Offset) -> OffsetEntry {
        let relative = offset.saturating_sub(base_offset).min(u64::from(u32::MAX)) as u32;
        let at = self
            .offsets
            .partition_point(|e| e.relative_offset <= relative);
        if at == 0 {
            OffsetEntry {
                relative_offset: 0,
                position: 0,
            }
        } else {
            self.offsets[at - 1]
        }
    }

    /// The relative offset from which to scan for the first record appended at or after
    /// `time_ms`: every record before it is older.
    pub fn time_floor(&self, time_ms: i64) -> u32 {
        let at = self.times.partition_point(|e| e.time_ms < time_ms);
        if at == 0 {
            0
        } else {
            self.times[at - 1].relative_offset
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_keeps_only_the_consistent_prefix() {
        let mut bytes = Vec::new();
        for (relative_offset, position) in [(0, 0), (10, 4100), (20, 8200), (15, 9000)] {
            OffsetEntry {
                relative_offset,
                position,
            }
            .encode(&mut bytes);
        }
        assert_eq!(decode_offsets(&bytes, 100_000).len(), 3);
        assert_eq!(
            decode_offsets(&bytes, 8200).len(),
            2,
            "entries past the log end are dropped"
        );
        assert_eq!(
            decode_offsets(&bytes[..20], 100_000).len(),
            2,
            "a partial entry is dropped"
        );
    }

    #[test]
    fn floor_finds_the_closest_entry_at_or_before() {
        let index = SegmentIndex {
            offsets: vec![
                OffsetEntry {
                    relative_offset: 0,
                    position: 0,
                },
                OffsetEntry {
                    relative_offset: 10,
                    position: 4100,
                },
            ],
            times: vec![
                TimeEntry {
                    time_ms: 100,
                    relative_offset: 0,
                },
                TimeEntry {
                    time_ms: 200,
                    relative_offset: 10,
                },
            ],
        };
        assert_eq!(index.floor(1000, 1009).position, 0);
        assert_eq!(index.floor(1000, 1010).position, 4100);
        assert_eq!(index.floor(1000, 5000).position, 4100);
        assert_eq!(index.time_floor(100), 0);
        assert_eq!(index.time_floor(150), 0);
        assert_eq!(index.time_floor(201), 10);
    }
}
