//! Kafka's default partitioner for keyed records: `toPositive(murmur2(key)) % partitions`.
//!
//! Every Kafka client (Java, librdkafka's `murmur2_random`, franz-go, ...) maps a key this way, so
//! records we produce land on the same partition as the same key from any other producer, and
//! the mapping never changes with the Rust version (std's `DefaultHasher` gives neither).

/// Kafka's 32-bit murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), seed 0x9747b28c.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    // Java's switch falls through: 3 bytes left mixes bytes 2, 1 and 0.
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
    h as i32
}

/// The partition Kafka's default partitioner picks for `key` among `partitions` (> 0).
pub fn partition_for_key(key: &[u8], partitions: usize) -> usize {
    // Java's toPositive: clear the sign bit (not abs, which overflows on i32::MIN).
    let positive = (murmur2(key) & 0x7fff_ffff) as usize;
    positive % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Kafka's own `UtilsTest.testMurmur2` (clients/src/test/java/.../UtilsTest.java).
    #[test]
    fn matches_kafka_utils_test_vectors() {
        let cases: [(&str, i32); 6] = [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
            ("abc", 479470107),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key.as_bytes()), want, "murmur2({key:?})");
        }
    }

    #[test]
    fn partition_is_positive_modulo() {
        // murmur2("21") is negative: toPositive keeps the low 31 bits.
        assert_eq!(partition_for_key(b"21", 1000), ((-973932308i32 & 0x7fff_ffff) as usize) % 1000);
        assert_eq!(partition_for_key(b"abc", 7), 479470107usize % 7);
        for n in 1..10 {
            assert!(partition_for_key(b"any key", n) < n);
        }
    }
}
