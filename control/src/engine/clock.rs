//! The engine's clock. Scheduling — when a rollout is due, how long a step has
//! lasted, which tick a stat increase belongs to — must not follow the wall clock: a
//! backward step of the system clock would stall automatic rollback for as long as
//! the step, a forward one would cut intervals short. The engine reads the wall clock
//! once, when it starts, and from then on adds the monotonic clock's elapsed time. Its
//! milliseconds look like Unix milliseconds (they are stored in decisions and plan
//! progress and shown in status), never go back and never jump; a restarted engine
//! re-anchors to the wall clock of its start.

use std::time::Instant;

/// Where the wall time comes from (Unix milliseconds): `util::timefmt::now_unix_ms`
/// in the sidecar, an injected function in tests.
pub type WallClock = fn() -> u64;

#[derive(Debug, Clone, Copy)]
pub struct EngineClock {
    origin_unix_ms: u64,
    origin: Instant,
}

impl EngineClock {
    /// Anchors the clock: reads `wall` once.
    pub fn start(wall: WallClock) -> EngineClock {
        EngineClock {
            origin_unix_ms: wall(),
            origin: Instant::now(),
        }
    }

    /// Milliseconds since the Unix epoch as of the anchor, advanced monotonically.
    pub fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.origin_unix_ms.saturating_add(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    static WALL: AtomicU64 = AtomicU64::new(10_000_000);

    fn stepping_wall() -> u64 {
        // every reading is an hour earlier than the one before
        WALL.fetch_sub(3_600_000, Ordering::SeqCst)
    }

    #[test]
    fn a_backward_wall_step_does_not_move_the_clock_back() {
        let clock = EngineClock::start(stepping_wall);
        let a = clock.now_ms();
        assert!(a >= 10_000_000);
        let _ = stepping_wall(); // the system clock steps back an hour
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = clock.now_ms();
        assert!(b >= a + 20, "{a} -> {b}");
        assert!(b < a + 1_000, "{a} -> {b}");
    }
}
