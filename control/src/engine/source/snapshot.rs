//! Cumulative readings and what happened between two of them.
//!
//! A [`Snapshot`] is everything one backend answered at one tick (counters and
//! histograms cumulative since the backend started). [`increments`] turns two
//! snapshots into the increases in between: counters and histogram bins by
//! difference, where a drop means the counter restarted (Envoy restarted, or the stat
//! was re-created) and the new reading is the increase; the uptime going down marks
//! every series as restarted. The first snapshot is only a baseline (its counters hold
//! history from before the sidecar looked).

use std::collections::HashMap;

use rollout_core::analysis::{counter_increase, Histogram};

use crate::engine::source::series::{Increment, SeriesKey};

/// One series as read (cumulative since Envoy started, for counters and histograms).
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    Counter(f64),
    Gauge(f64),
    Histogram(Histogram),
}

/// Everything one Envoy answered at one tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub series: HashMap<SeriesKey, Reading>,
    /// `server.uptime` in seconds, when present.
    pub uptime_s: Option<f64>,
}

/// What happened between two snapshots of one Envoy. Without `prev` (the first
/// snapshot) counters and histograms are a baseline (increase 0). A counter below
/// its previous reading, a histogram bin below its previous count, or `server.uptime`
/// below its previous value mean a restart: the new reading is the increase. A
/// series that is new since `prev` counts in full (it was created in between).
pub fn increments(prev: Option<&Snapshot>, cur: &Snapshot) -> HashMap<SeriesKey, Increment> {
    let restarted = match (prev.and_then(|p| p.uptime_s), cur.uptime_s) {
        (Some(a), Some(b)) => b + 0.5 < a,
        _ => false,
    };
    let mut out = HashMap::with_capacity(cur.series.len());
    for (k, r) in &cur.series {
        let inc = match r {
            Reading::Gauge(g) => Increment::Gauge(*g),
            Reading::Counter(c) => match prev {
                None => Increment::Counter(0.0),
                Some(_) if restarted => Increment::Counter(counter_increase(0.0, *c)),
                Some(p) => match p.series.get(k) {
                    Some(Reading::Counter(pc)) => Increment::Counter(counter_increase(*pc, *c)),
                    _ => Increment::Counter(counter_increase(0.0, *c)),
                },
            },
            Reading::Histogram(h) => match prev {
                None => Increment::Histogram(Histogram::default()),
                Some(_) if restarted => Increment::Histogram(h.clone()),
                Some(p) => match p.series.get(k) {
                    Some(Reading::Histogram(ph)) => {
                        Increment::Histogram(h.increase_since(ph).unwrap_or_else(|| h.clone()))
                    }
                    _ => Increment::Histogram(h.clone()),
                },
            },
        };
        out.insert(k.clone(), inc);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_and_baselines() {
        let k = SeriesKey::of("c", &[]);
        let snap = |c: f64, up: f64| Snapshot {
            series: HashMap::from([(k.clone(), Reading::Counter(c))]),
            uptime_s: Some(up),
        };
        // first snapshot: a baseline
        assert_eq!(
            increments(None, &snap(100.0, 10.0)).get(&k),
            Some(&Increment::Counter(0.0))
        );
        assert_eq!(
            increments(Some(&snap(100.0, 10.0)), &snap(130.0, 11.0)).get(&k),
            Some(&Increment::Counter(30.0))
        );
        // the counter dropped: a restart, never negative
        assert_eq!(
            increments(Some(&snap(100.0, 10.0)), &snap(4.0, 11.0)).get(&k),
            Some(&Increment::Counter(4.0))
        );
        // uptime went down: restarted even though the counter grew past the old value
        assert_eq!(
            increments(Some(&snap(100.0, 500.0)), &snap(150.0, 3.0)).get(&k),
            Some(&Increment::Counter(150.0))
        );
        // a series created since the last snapshot counts in full
        let empty = Snapshot {
            series: HashMap::new(),
            uptime_s: Some(1.0),
        };
        assert_eq!(
            increments(Some(&empty), &snap(5.0, 2.0)).get(&k),
            Some(&Increment::Counter(5.0))
        );
    }
}
