//! Which partition an event goes to.
//!
//! An event with a routing key (the `partitionkey` extension, else `subject`) goes to
//! `(murmur2(key) & 0x7fffffff) % partitions`, where `murmur2` is the 32-bit MurmurHash2 with
//! seed `0x9747b28c` that Kafka's Java client uses. The function is part of the on-disk
//! contract: it never changes, and the same key lands on the same partition as it would in Kafka
//! with the same partition count. Events without a key are spread evenly by the adapter
//! (round-robin, one partition per append call so a batch shares one write and one sync).

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition for a routing key.
pub fn partition_for_key(key: &str, partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic always has at least one partition");
    (murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_utils_test_vectors() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input) as i32, expected, "murmur2({input:?})");
        }
    }

    #[test]
    fn keys_map_to_the_same_partition_as_kafka() {
        assert_eq!(partition_for_key("foobar", 50), 16);
        for partitions in 1..20 {
            assert!(partition_for_key("order-42", partitions) < partitions);
        }
    }
}
