//! The events every target receives: CloudEvents of an exact size with unique ids, built
//! cheaply so that generating them is never what a benchmark measures.

use std::io::Write;
use std::ops::Range;

use bytes::Bytes;

/// Smallest `--event-bytes`: the CloudEvent envelope and id take 100 bytes; the rest is data.
pub const EVENT_BYTES_MIN: usize = 128;
/// Largest `--event-bytes`: under Proteus's default `event_bytes_max` (1 MiB) and NATS's default
/// `max_payload` (1 MiB, headers included).
pub const EVENT_BYTES_MAX: usize = 1_000_000;

/// One batch of events, encoded once as a CloudEvents JSON batch (a JSON array). Each target
/// takes what it needs from it without copying: `events` and `ids` are ranges of `body`.
#[derive(Clone, Debug)]
pub struct Batch {
    pub body: Bytes,
    pub events: Vec<Range<usize>>,
    pub ids: Vec<Range<usize>>,
}

impl Batch {
    /// Event `i`'s CloudEvent JSON.
    pub fn event(&self, i: usize) -> Bytes {
        self.body.slice(self.events[i].clone())
    }

    /// Event `i`'s id.
    pub fn id(&self, i: usize) -> &str {
        // Ids are written by `EventFactory::batch` from ASCII digits and letters only.
        std::str::from_utf8(&self.body[self.ids[i].clone()]).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }
}

/// Builds batches of CloudEvents of exactly `event_bytes` bytes each.
///
/// Ids are `RRRRRRRR-PPPPP-SSSSSSSSSSSS`: a run id (so a second run against the same topic is not
/// taken for retries by Proteus's or NATS's deduplication), the producer and its sequence
/// number, fixed width so every event has the same size.
pub struct EventFactory {
    prefix: Vec<u8>,
    suffix: Vec<u8>,
    run: u32,
    event_bytes: usize,
}

const ID_BYTES: usize = 8 + 1 + 5 + 1 + 12;
/// Producer numbers are written with 5 digits.
pub const PRODUCER_IDS: usize = 100_000;
const SEQ_MODULUS: u64 = 1_000_000_000_000;

impl EventFactory {
    pub fn new(event_bytes: usize) -> Result<EventFactory, String> {
        let prefix = br#"{"specversion":"1.0","id":""#.to_vec();
        let middle = br#"","source":"/bench","type":"bench.event","data":""#;
        let end = br#""}"#;
        let fixed = prefix.len() + ID_BYTES + middle.len() + end.len();
        debug_assert!(fixed <= EVENT_BYTES_MIN);
        if !(EVENT_BYTES_MIN..=EVENT_BYTES_MAX).contains(&event_bytes) {
            return Err(format!(
                "--event-bytes must be from {EVENT_BYTES_MIN} (the CloudEvent envelope alone takes {fixed} bytes) to {EVENT_BYTES_MAX}, got {event_bytes}"
            ));
        }
        let mut suffix = middle.to_vec();
        suffix.extend(std::iter::repeat_n(b'x', event_bytes - fixed));
        suffix.extend_from_slice(end);
        Ok(EventFactory {
            prefix,
            suffix,
            run: run_id(),
            event_bytes,
        })
    }

    /// The JSON array size of a batch of `events` events.
    pub fn batch_bytes(event_bytes: usize, events: usize) -> usize {
        2 + events * (event_bytes + 1) - 1
    }

    /// `events` events of `producer`, numbered from `first_seq`.
    pub fn batch(&self, producer: usize, first_seq: u64, events: usize) -> Batch {
        let mut body = Vec::with_capacity(Self::batch_bytes(self.event_bytes, events.max(1)));
        let mut event_ranges = Vec::with_capacity(events);
        let mut id_ranges = Vec::with_capacity(events);
        body.push(b'[');
        for i in 0..events {
            if i > 0 {
                body.push(b',');
            }
            let start = body.len();
            body.extend_from_slice(&self.prefix);
            let id_start = body.len();
            // Writing to a Vec cannot fail.
            let _ = write!(
                body,
                "{:08x}-{:05}-{:012}",
                self.run,
                producer % PRODUCER_IDS,
                (first_seq + i as u64) % SEQ_MODULUS
            );
            id_ranges.push(id_start..body.len());
            body.extend_from_slice(&self.suffix);
            event_ranges.push(start..body.len());
        }
        body.push(b']');
        Batch {
            body: Bytes::from(body),
            events: event_ranges,
            ids: id_ranges,
        }
    }
}

/// Different for every run: the clock's nanoseconds mixed with the process id.
fn run_id() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = (nanos ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proteus_log::Event;

    #[test]
    fn every_event_has_the_requested_size_and_a_unique_valid_id() {
        let factory = EventFactory::new(1024).unwrap();
        let batch = factory.batch(7, 1_000, 50);
        assert_eq!(batch.body.len(), EventFactory::batch_bytes(1024, 50));
        let parsed: Vec<serde_json::Value> = serde_json::from_slice(&batch.body).unwrap();
        assert_eq!(parsed.len(), 50);
        let mut ids = std::collections::HashSet::new();
        for (i, value) in parsed.iter().enumerate() {
            assert_eq!(batch.event(i).len(), 1024);
            assert!(Event::from_json(&batch.event(i)).is_ok());
            assert_eq!(value["id"], batch.id(i));
            assert!(ids.insert(batch.id(i).to_owned()));
        }
        assert!(
            batch.id(0).ends_with("-00007-000000001000"),
            "{}",
            batch.id(0)
        );
        assert_eq!(
            Event::batch_from_json(&batch.body).unwrap().len(),
            batch.len()
        );
    }

    #[test]
    fn the_smallest_event_fits_its_envelope() {
        let factory = EventFactory::new(EVENT_BYTES_MIN).unwrap();
        let batch = factory.batch(0, 0, 1);
        assert_eq!(batch.event(0).len(), EVENT_BYTES_MIN);
        assert!(Event::from_json(&batch.event(0)).is_ok());
    }

    #[test]
    fn sizes_out_of_range_are_refused() {
        assert!(
            EventFactory::new(EVENT_BYTES_MIN - 1)
                .err()
                .unwrap()
                .contains("--event-bytes")
        );
        assert!(EventFactory::new(EVENT_BYTES_MAX + 1).is_err());
    }

    #[test]
    fn two_factories_use_different_run_ids() {
        let a = EventFactory::new(256).unwrap().batch(0, 0, 1);
        std::thread::sleep(std::time::Duration::from_millis(1));
        let b = EventFactory::new(256).unwrap().batch(0, 0, 1);
        assert_ne!(a.id(0), b.id(0));
    }
}
