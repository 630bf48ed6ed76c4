//! Bucketing: the one hash every component (filter, sidecar CLI, offline notebooks)
//! uses to place a subject in one of 10,000 buckets.
//!
//! `bucket(salt, key) = XXH64(utf8(salt) ++ ":" ++ utf8(key), seed = 0) mod 10000`
//!
//! XXH64 is the 64-bit xxHash (reference implementation by Yann Collet; libraries
//! exist for Python `xxhash`, Go `cespare/xxhash`, Java `zero-allocation-hashing`,
//! Spark `xxhash64` with seed 42 — note Spark's seed differs). The ":" separator
//! keeps `("ab", "c")` and `("a", "bc")` apart. The modulo bias of 2^64 mod 10000
//! is below 1e-15 and irrelevant.

use xxhash_rust::xxh64::Xxh64;

/// Number of buckets: weights have 0.01 % resolution.
pub const BUCKETS: u16 = 10_000;

/// The bucket in `[0, 10000)` of `key` under `salt`.
pub fn bucket(salt: &str, key: &str) -> u16 {
    let mut h = Xxh64::new(0);
    h.update(salt.as_bytes());
    h.update(b":");
    h.update(key.as_bytes());
    // The remainder is < 10000, so the conversion cannot fail.
    u16::try_from(h.digest() % u64::from(BUCKETS)).unwrap_or(0)
}

/// Maps two random bytes onto a bucket, for requests without a subject key.
/// Uses a 32-bit draw so the modulo bias stays below 0.0003 %.
pub fn bucket_from_random(r: u32) -> u16 {
    u16::try_from(r % u32::from(BUCKETS)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separator_matters() {
        assert_ne!(bucket("ab", "c"), bucket("a", "bc"));
    }

    #[test]
    fn in_range_and_spread() {
        let mut hist = [0u32; 10];
        for i in 0..100_000 {
            let b = bucket("salt", &format!("user-{i}"));
            assert!(b < BUCKETS);
            hist[(b / 1000) as usize] += 1;
        }
        for h in hist {
            assert!((9_500..10_500).contains(&h), "uneven: {hist:?}");
        }
    }

    #[test]
    fn salt_reshuffles() {
        let moved = (0..10_000)
            .filter(|i| {
                let k = format!("u{i}");
                bucket("a", &k) / 1000 != bucket("b", &k) / 1000
            })
            .count();
        // Independent placements agree on a decile 10 % of the time.
        assert!(moved > 8_500, "moved {moved}");
    }
}
