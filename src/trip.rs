//! The local fast trip: each worker keeps a short sliding window of the
//! candidate's answers (1-second buckets); when the error or invalid-output rate
//! over the window exceeds the policy's limit with enough answers, the candidate's
//! users go to stable on this proxy at once. The trip is announced in shared data
//! so the proxy's other workers follow on their next tick, and it holds until a
//! newer plan is in force (a new plan builds new windows).

use std::cell::{Cell, RefCell};

use rollout_core::policy::Trip;

#[derive(Clone, Copy, Default)]
struct Bucket {
    sec: u64,
    responses: u64,
    errors: u64,
    checked: u64,
    invalid: u64,
}

pub struct TripWindow {
    pub spec: Trip,
    buckets: RefCell<Vec<Bucket>>,
    tripped: Cell<bool>,
}

/// What an observation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    Nothing,
    /// This observation tripped the window (it was not tripped before).
    Tripped,
}

impl TripWindow {
    pub fn new(spec: Trip) -> Self {
        let n = usize::try_from(spec.window_s).unwrap_or(1).max(1);
        TripWindow {
            spec,
            buckets: RefCell::new(vec![Bucket::default(); n]),
            tripped: Cell::new(false),
        }
    }

    pub fn tripped(&self) -> bool {
        self.tripped.get()
    }

    /// Trips without an observation (another worker announced it).
    pub fn trip(&self) -> bool {
        !self.tripped.replace(true)
    }

    /// A candidate answer's status class is known.
    pub fn response(&self, now_ms: u64, is_error: bool) -> Observed {
        self.observe(now_ms, |b| {
            b.responses += 1;
            b.errors += u64::from(is_error);
        })
    }

    /// A candidate answer's output was checked.
    pub fn output(&self, now_ms: u64, invalid: bool) -> Observed {
        self.observe(now_ms, |b| {
            b.checked += 1;
            b.invalid += u64::from(invalid);
        })
    }

    fn observe(&self, now_ms: u64, f: impl FnOnce(&mut Bucket)) -> Observed {
        if self.tripped.get() {
            return Observed::Nothing;
        }
        let Ok(mut buckets) = self.buckets.try_borrow_mut() else {
            return Observed::Nothing;
        };
        let sec = now_ms / 1000;
        let n = buckets.len() as u64;
        let Some(b) = buckets.get_mut(usize::try_from(sec % n.max(1)).unwrap_or(0)) else {
            return Observed::Nothing;
        };
        if b.sec != sec {
            *b = Bucket {
                sec,
                ..Bucket::default()
            };
        }
        f(b);
        let oldest = sec.saturating_sub(n.saturating_sub(1));
        let mut sum = Bucket::default();
        for b in buckets.iter().filter(|b| b.sec >= oldest && b.sec <= sec) {
            sum.responses += b.responses;
            sum.errors += b.errors;
            sum.checked += b.checked;
            sum.invalid += b.invalid;
        }
        let over = |num: u64, den: u64, limit: Option<f64>| {
            limit.is_some_and(|l| {
                den >= self.spec.min_requests && den > 0 && num as f64 / den as f64 > l
            })
        };
        if over(sum.errors, sum.responses, self.spec.max_error_rate)
            || over(sum.invalid, sum.checked, self.spec.max_invalid_rate)
        {
            self.tripped.set(true);
            return Observed::Tripped;
        }
        Observed::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> TripWindow {
        TripWindow::new(Trip {
            candidate: 1,
            window_s: 5,
            min_requests: 20,
            max_error_rate: Some(0.2),
            max_invalid_rate: Some(0.1),
        })
    }

    #[test]
    fn trips_on_error_rate_with_enough_answers() {
        let w = window();
        for i in 0..19 {
            assert_eq!(
                w.response(1000 + i, true),
                Observed::Nothing,
                "below min_requests"
            );
        }
        assert_eq!(w.response(1100, true), Observed::Tripped);
        assert!(w.tripped());
        assert_eq!(w.response(1200, true), Observed::Nothing);
    }

    #[test]
    fn healthy_and_old_answers_do_not_trip() {
        let w = window();
        for i in 0..100u64 {
            // 10 % errors: under the 20 % limit
            assert_eq!(w.response(i * 100, i % 10 == 0), Observed::Nothing);
        }
        // a burst of errors long ago ages out of the 5 s window
        let w = window();
        for i in 0..15 {
            w.response(1_000 + i, true);
        }
        for i in 0..30 {
            assert_eq!(w.response(20_000 + i, false), Observed::Nothing);
        }
    }

    #[test]
    fn trips_on_invalid_outputs() {
        let w = window();
        let mut tripped = false;
        for i in 0..40u64 {
            tripped |= w.output(5_000 + i, i % 4 == 0) == Observed::Tripped;
        }
        assert!(tripped);
    }
}
