//! Randomness for requests without a subject key, correlation ids, sampling
//! (shadows, output checks, assignment records, agreement records) and ids: a pool
//! of bytes from `getrandom` (WASI `random_get`), refilled when used up, so a
//! request costs no host call on most requests. If the host cannot supply
//! randomness the pool falls back to a SplitMix64 stream seeded from the clock,
//! counted in `model_rollout_random_fallback_total`.
//!
//! [`Random`] is the worker's one pool, shared by the root and its request contexts;
//! every draw goes through it (`u32` for a 4-byte draw, `fill` for more).

use std::cell::RefCell;
use std::rc::Rc;

use crate::host::Host;
use crate::metrics::Metrics;

/// The worker's pool, shared by the root context and its request contexts.
#[derive(Clone, Default)]
pub struct Random(Rc<RefCell<RandomPool>>);

impl Random {
    /// Fills `out` with random bytes; a draw from the fallback stream is counted.
    pub fn fill(&self, out: &mut [u8], host: &impl Host, m: &Metrics) {
        if let Draw::Fallback = self.fill_seeded(out, || host.now_nanos().unwrap_or(0x5eed)) {
            m.bump(m.random_fallback);
        }
    }

    /// A random `u32` (four bytes of the pool).
    pub fn u32(&self, host: &impl Host, m: &Metrics) -> u32 {
        let mut b = [0u8; 4];
        self.fill(&mut b, host, m);
        u32::from_le_bytes(b)
    }

    /// A random `u64` before any metrics exist (ids of the root context); `clock`
    /// seeds the fallback stream.
    pub fn id(&self, clock: impl FnOnce() -> u64) -> u64 {
        let mut b = [0u8; 8];
        self.fill_seeded(&mut b, clock);
        u64::from_le_bytes(b)
    }

    fn fill_seeded(&self, out: &mut [u8], clock: impl FnOnce() -> u64) -> Draw {
        match self.0.try_borrow_mut() {
            Ok(mut pool) => pool.fill(out, clock),
            // Unreachable in a single-threaded VM; a fresh pool still gives randomness.
            Err(_) => RandomPool::default().fill(out, clock),
        }
    }
}

pub struct RandomPool {
    buf: [u8; 512],
    pos: usize,
    fallback_state: u64,
}

pub enum Draw {
    Random,
    Fallback,
}

impl Default for RandomPool {
    fn default() -> Self {
        RandomPool {
            buf: [0; 512],
            pos: usize::MAX,
            fallback_state: 0,
        }
    }
}

impl RandomPool {
    /// Fills `out` with random bytes; `clock` seeds the fallback stream.
    pub fn fill(&mut self, out: &mut [u8], clock: impl FnOnce() -> u64) -> Draw {
        if self.pos.saturating_add(out.len()) > self.buf.len() {
            if getrandom::fill(&mut self.buf).is_ok() {
                self.pos = 0;
            } else {
                if self.fallback_state == 0 {
                    self.fallback_state = clock() | 1;
                }
                for b in out.iter_mut() {
                    *b = (splitmix64(&mut self.fallback_state) >> 56) as u8;
                }
                return Draw::Fallback;
            }
        }
        let end = self.pos + out.len();
        match self.buf.get(self.pos..end) {
            Some(src) => {
                out.copy_from_slice(src);
                self.pos = end;
                Draw::Random
            }
            None => Draw::Fallback,
        }
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_yields_distinct_draws() {
        let mut p = RandomPool::default();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let mut b = [0u8; 16];
            p.fill(&mut b, || 1);
            assert!(seen.insert(b));
        }
    }
}
