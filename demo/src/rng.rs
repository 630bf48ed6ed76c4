//! A tiny lock-free pseudo random source for the fault knobs (SplitMix64 over
//! an atomic counter). Not cryptographic; reproducible for a given `--seed`
//! and request order.

use std::sync::atomic::{AtomicU64, Ordering};

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function.
pub fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Shared random source: every draw advances one atomic counter.
#[derive(Debug)]
pub struct Rng {
    state: AtomicU64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self {
            state: AtomicU64::new(seed),
        }
    }

    /// Next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        let s = self
            .state
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        splitmix64(s)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&self) -> f64 {
        crate::predict::unit_interval(self.next_u64())
    }

    /// True with probability `rate` (never for 0, always for 1).
    pub fn chance(&self, rate: f64) -> bool {
        rate > 0.0 && (rate >= 1.0 || self.next_f64() < rate)
    }

    /// Uniform integer in `[0, max]`.
    pub fn up_to(&self, max: u64) -> u64 {
        if max == 0 {
            0
        } else {
            self.next_u64() % (max + 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_reproducible() {
        let a = Rng::new(7);
        let b = Rng::new(7);
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn chance_extremes_and_fraction() {
        let r = Rng::new(1);
        assert!(!r.chance(0.0));
        assert!(r.chance(1.0));
        let hits = (0..10_000).filter(|_| r.chance(0.3)).count();
        assert!((2_800..3_200).contains(&hits), "{hits}");
        assert!((0..100).all(|_| r.up_to(5) <= 5));
    }
}
