//! The record framing inside segment files (storage format version 1).
//!
//! ```text
//! offset  size  field
//!      0     4  crc32c       CRC32C (Castagnoli) of bytes 4..40+payload_len, little-endian
//!      4     4  payload_len  length of the payload in bytes, little-endian
//!      8     8  offset       the record's offset in its partition, little-endian
//!     16     8  append_time  milliseconds since the Unix epoch, signed little-endian
//!     24    16  dedup_key    xxh3-128 of (source, 0xFF, id), little-endian
//!     40     n  payload      the CloudEvent in JSON format
//! ```
//!
//! The CRC covers the length too, so a flipped length byte is caught rather than followed.

use proteus_log::topic::EVENT_BYTES_MAX_LIMIT;
use proteus_log::{DedupKey, Offset};

pub const HEADER_BYTES: usize = 40;

/// A record decoded from a buffer; `payload` borrows from it.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub offset: Offset,
    pub append_time_ms: i64,
    pub dedup_key: DedupKey,
    pub payload: &'a [u8],
}

impl RecordView<'_> {
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES + self.payload.len()
    }
}

#[derive(Debug)]
pub enum Decoded<'a> {
    Record(RecordView<'a>),
    /// The buffer ends inside the record; `total_bytes` is its full size when the length field
    /// is plausible, so the caller can read that much and try again.
    Incomplete {
        total_bytes: Option<usize>,
    },
    /// The bytes are not a valid record.
    Invalid(String),
}

pub fn encode(
    buf: &mut Vec<u8>,
    offset: Offset,
    append_time_ms: i64,
    key: DedupKey,
    payload: &[u8],
) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(&append_time_ms.to_le_bytes());
    buf.extend_from_slice(&key.0.to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32c::crc32c(&buf[start + 4..]);
    buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The payload length a record header claims (unchecked). `header` holds at least
/// [`HEADER_BYTES`] bytes.
pub fn header_payload_len(header: &[u8]) -> u32 {
    u32::from_le_bytes(header[4..8].try_into().unwrap())
}

/// The append time a record header claims (unchecked).
pub fn header_append_time_ms(header: &[u8]) -> i64 {
    i64::from_le_bytes(header[16..24].try_into().unwrap())
}

pub fn decode(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < HEADER_BYTES {
        return Decoded::Incomplete { total_bytes: None };
    }
    let payload_len = header_payload_len(buf);
    if payload_len > EVENT_BYTES_MAX_LIMIT {
        // Either a torn header or corruption; which one is for the caller to judge.
        return Decoded::Invalid(format!(
            "record length {payload_len} exceeds the largest possible event ({EVENT_BYTES_MAX_LIMIT} bytes)"
        ));
    }
    let total = HEADER_BYTES + payload_len as usize;
    if buf.len() < total {
        return Decoded::Incomplete {
            total_bytes: Some(total),
        };
    }
    let stored_crc = u32::from_le_bytes(buf[0..4].try_into().unwrap());
    let crc = crc32c::crc32c(&buf[4..total]);
    if crc != stored_crc {
        return Decoded::Invalid(format!(
            "checksum mismatch (stored {stored_crc:#010x}, computed {crc:#010x})"
        ));
    }
    Decoded::Record(RecordView {
        offset: u64::from_le_bytes(buf[8..16].try_into().unwrap()),
        append_time_ms: header_append_time_ms(buf),
        dedup_key: DedupKey(u128::from_le_bytes(buf[24..40].try_into().unwrap())),
        payload: &buf[HEADER_BYTES..total],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_any_flipped_bit_is_caught() {
        let mut buf = Vec::new();
        encode(&mut buf, 42, 1_700_000_000_000, DedupKey(7), b"{\"a\":1}");
        let Decoded::Record(record) = decode(&buf) else {
            panic!("expected a record")
        };
        assert_eq!(
            (record.offset, record.append_time_ms, record.dedup_key),
            (42, 1_700_000_000_000, DedupKey(7))
        );
        assert_eq!(record.payload, b"{\"a\":1}");
        assert_eq!(record.encoded_len(), buf.len());
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut flipped = buf.clone();
                flipped[byte] ^= 1 << bit;
                assert!(
                    !matches!(decode(&flipped), Decoded::Record(_)),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
        for cut in 0..buf.len() {
            assert!(
                matches!(decode(&buf[..cut]), Decoded::Incomplete { .. }),
                "cut at {cut}"
            );
        }
    }
}
