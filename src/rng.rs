//! Randomness for requests without a subject key and for correlation ids: a pool of
//! bytes from `getrandom` (WASI `random_get`), refilled when used up, so a request
//! costs no host call on most requests. If the host cannot supply randomness the
//! pool falls back to a SplitMix64 stream seeded from the clock (counted).

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
