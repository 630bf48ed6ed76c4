//! Counter and histogram arithmetic over successive scrapes: increases with
//! counter resets (a drop is a restart, never a negative delta), and percentiles of
//! a histogram by linear interpolation within the bin holding the rank.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Tolerance of floating point comparisons (noise, not policy).
pub(crate) const EPSILON: f64 = 1e-12;

/// The increase of a monotonic counter between two readings. A reading below the
/// previous one means the counter restarted from zero (Envoy restarted, or the
/// stat was re-created): everything counted since the restart is the increase.
pub fn counter_increase(prev: f64, cur: f64) -> f64 {
    if !cur.is_finite() || cur < 0.0 {
        return 0.0;
    }
    if !prev.is_finite() || cur >= prev {
        cur - prev.max(0.0)
    } else {
        cur
    }
}

/// A bin's bounds as an ordered key: non-negative floats order like their bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct BinKey(u64, u64);

impl BinKey {
    fn new(lower: f64, upper: f64) -> Option<BinKey> {
        if !lower.is_finite() || lower < 0.0 || upper.is_nan() {
            return None;
        }
        // -0.0 and 0.0 are one bin.
        let lower = if lower == 0.0 { 0.0 } else { lower };
        let upper = if upper < lower { lower } else { upper };
        Some(BinKey(lower.to_bits(), upper.to_bits()))
    }

    fn lower(self) -> f64 {
        f64::from_bits(self.0)
    }

    fn upper(self) -> f64 {
        f64::from_bits(self.1)
    }
}

/// One histogram bin: values in `[lower, upper)` (Envoy's detailed bins) or
/// `(lower, upper]` (Prometheus `le` buckets); `upper` may be infinite.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bin {
    pub lower: f64,
    pub upper: f64,
    pub count: f64,
}

/// A distribution as counts per bin. Bins from one source never overlap; adding the
/// same bin twice adds the counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    bins: BTreeMap<BinKey, f64>,
}

impl Histogram {
    /// Adds `count` observations to the bin `[lower, upper)`. Invalid bins (negative
    /// or non-finite lower bound) and non-positive counts are ignored.
    pub fn add(&mut self, lower: f64, upper: f64, count: f64) {
        if !(count.is_finite() && count > 0.0) {
            return;
        }
        if let Some(k) = BinKey::new(lower, upper) {
            *self.bins.entry(k).or_insert(0.0) += count;
        }
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (k, c) in &other.bins {
            *self.bins.entry(*k).or_insert(0.0) += c;
        }
    }

    /// Observations in all bins.
    pub fn count(&self) -> f64 {
        // fold from +0.0: an empty f64 `sum()` is -0.0, which prints as "-0"
        self.bins.values().fold(0.0, |a, b| a + b)
    }

    pub fn is_empty(&self) -> bool {
        self.bins.is_empty()
    }

    pub fn bins(&self) -> Vec<Bin> {
        self.bins
            .iter()
            .map(|(k, c)| Bin {
                lower: k.lower(),
                upper: k.upper(),
                count: *c,
            })
            .collect()
    }

    pub fn from_bins(bins: &[Bin]) -> Histogram {
        let mut h = Histogram::default();
        for b in bins {
            h.add(b.lower, b.upper, b.count);
        }
        h
    }

    /// Builds disjoint bins from Prometheus-style cumulative buckets
    /// `(upper bound, count of observations <= bound)`, in any order. The first bucket
    /// starts at 0; the `+Inf` bucket gets what lies above the last finite bound.
    pub fn from_cumulative(buckets: &[(f64, f64)]) -> Histogram {
        let mut sorted: Vec<(f64, f64)> = buckets
            .iter()
            .copied()
            .filter(|(le, c)| !le.is_nan() && c.is_finite())
            .collect();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut h = Histogram::default();
        let mut lower = 0.0;
        let mut below = 0.0;
        for (le, cum) in sorted {
            h.add(lower, le, cum - below);
            if cum > below {
                below = cum;
            }
            lower = le.max(0.0);
        }
        h
    }

    /// What was added between `prev` and `self`, two cumulative readings of one
    /// histogram. `None` when some bin went down: the histogram restarted, and
    /// `self` itself is what was observed since.
    pub fn increase_since(&self, prev: &Histogram) -> Option<Histogram> {
        for (k, p) in &prev.bins {
            if self.bins.get(k).copied().unwrap_or(0.0) + EPSILON < *p {
                return None;
            }
        }
        let mut out = Histogram::default();
        for (k, c) in &self.bins {
            let d = c - prev.bins.get(k).copied().unwrap_or(0.0);
            if d > 0.0 {
                out.bins.insert(*k, d);
            }
        }
        Some(out)
    }

    /// The `p`-th percentile (0 < p <= 100): the rank `p/100 x count` is located in
    /// the bin that holds it and interpolated linearly between the bin's bounds
    /// (Prometheus' `histogram_quantile` rule). A rank in an unbounded bin answers
    /// its lower bound. `None` without observations.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        let total = self.count();
        if !(total > 0.0 && p > 0.0 && p <= 100.0) {
            return None;
        }
        let rank = p / 100.0 * total;
        let mut below = 0.0;
        let mut last = None;
        for (k, c) in &self.bins {
            let (lo, hi) = (k.lower(), k.upper());
            if below + c >= rank - EPSILON {
                if hi.is_infinite() {
                    return Some(lo);
                }
                let frac = ((rank - below) / c).clamp(0.0, 1.0);
                return Some(lo + frac * (hi - lo));
            }
            below += c;
            last = Some(if hi.is_finite() { hi } else { lo });
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::testkit::hist;

    #[test]
    fn counter_resets_never_go_negative() {
        assert_eq!(counter_increase(10.0, 15.0), 5.0);
        assert_eq!(counter_increase(10.0, 10.0), 0.0);
        // Envoy restarted: 3 counted since
        assert_eq!(counter_increase(1000.0, 3.0), 3.0);
        assert_eq!(counter_increase(5.0, f64::NAN), 0.0);
        assert_eq!(counter_increase(0.0, 7.0), 7.0);
    }

    #[test]
    fn histogram_increase_and_reset() {
        let prev = hist(&[(10.0, 5.0), (20.0, 1.0)]);
        let cur = hist(&[(10.0, 8.0), (20.0, 1.0), (30.0, 2.0)]);
        let inc = cur.increase_since(&prev).unwrap();
        assert_eq!(inc, hist(&[(10.0, 3.0), (30.0, 2.0)]));
        // a bin went down: restart, the caller takes `cur` whole
        let after_restart = hist(&[(10.0, 1.0)]);
        assert!(after_restart.increase_since(&prev).is_none());
    }

    #[test]
    fn percentile_interpolates_within_the_bin() {
        // 100 observations in [10, 20): p50 is the middle of the bin
        let mut h = Histogram::default();
        h.add(10.0, 20.0, 100.0);
        assert_eq!(h.percentile(50.0), Some(15.0));
        assert_eq!(h.percentile(100.0), Some(20.0));
        // 99 fast, 1 slow: p99 is at the top of the fast bin, p99.5 in the slow one
        let mut h = Histogram::default();
        h.add(10.0, 11.0, 99.0);
        h.add(300.0, 310.0, 1.0);
        assert!((h.percentile(99.0).unwrap() - 11.0).abs() < 1e-9);
        assert!((h.percentile(99.5).unwrap() - 305.0).abs() < 1e-9);
        assert_eq!(Histogram::default().percentile(99.0), None);
        assert_eq!(h.percentile(0.0), None);
    }

    #[test]
    fn percentile_from_prometheus_buckets_and_deltas() {
        // cumulative le buckets at two scrapes; the window is their difference
        let t0 = Histogram::from_cumulative(&[
            (10.0, 100.0),
            (25.0, 100.0),
            (100.0, 100.0),
            (f64::INFINITY, 100.0),
        ]);
        let t1 = Histogram::from_cumulative(&[
            (10.0, 100.0),
            (25.0, 150.0),
            (100.0, 200.0),
            (f64::INFINITY, 200.0),
        ]);
        let w = t1.increase_since(&t0).unwrap();
        assert_eq!(w.count(), 100.0);
        // 50 in (10, 25], 50 in (25, 100]: p50 = 25, p99 = 25 + 0.98 x 75
        assert!((w.percentile(50.0).unwrap() - 25.0).abs() < 1e-9);
        assert!((w.percentile(99.0).unwrap() - 98.5).abs() < 1e-9);
        // everything above the last finite bound: its lower bound
        let inf = Histogram::from_cumulative(&[(100.0, 0.0), (f64::INFINITY, 10.0)]);
        assert_eq!(inf.percentile(99.0), Some(100.0));
    }
}
