//! Proxies seen polling the plan: per proxy id, when it last polled and which plan
//! version it had in force (from the `x-model-rollout-proxy` and
//! `x-model-rollout-plan-version` request headers of authenticated proxy polls; the
//! caller decides who may write, see `http::plan`).
//!
//! In memory, not in redb: a fleet of 20,000 proxies polling every second is 20,000
//! writes a second of data that is stale a minute later and worthless after a
//! restart (every live proxy polls again within a second). One mutex-guarded hash map
//! costs one short lock per poll.
//!
//! Bounded: at most `capacity` ids (`--max-proxies`, default [`DEFAULT_CAPACITY`]);
//! an id not seen for `expire_after` (`--proxy-expiry-s`, default 10 min) is
//! forgotten. Memory is at most about `capacity x (id length + 80)` bytes (ids are at
//! most [`MAX_ID_LEN`] bytes): ~7 MB for 50,000 ids of 64 bytes. When the table is
//! full of live proxies a new id is **not tracked** (and counted): evicting a live
//! entry could hide a proxy still on an old plan, so instead the gate on advancing
//! ([`ProxyTable::summary`], `engine::proxies_behind`) holds while polls went
//! untracked recently.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Default number of proxies tracked.
pub const DEFAULT_CAPACITY: usize = 50_000;
/// Default time after which a proxy that stopped polling is forgotten.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(600);
/// Longest proxy id accepted (longer ids are not recorded).
pub const MAX_ID_LEN: usize = rollout_core::wire::MAX_PROXY_ID_LEN;
/// Shortest time between two sweeps of expired entries made by `record` on a full table.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Proxies named in a summary's `behind_examples`.
const EXAMPLES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub last_seen: Instant,
    /// Plan version the proxy reported; `None` when it sent none (or an unreadable one).
    pub plan_version: Option<u64>,
}

/// How the table is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLimits {
    pub capacity: usize,
    pub expire_after: Duration,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            capacity: DEFAULT_CAPACITY,
            expire_after: DEFAULT_EXPIRY,
        }
    }
}

#[derive(Debug)]
struct Inner {
    map: HashMap<Box<str>, Seen>,
    last_sweep: Option<Instant>,
    /// Polls of ids the full table could not take: in all, and the latest one.
    untracked_total: u64,
    last_untracked: Option<Instant>,
}

/// The table; every method takes one short lock.
#[derive(Debug)]
pub struct ProxyTable {
    limits: ProxyLimits,
    inner: Mutex<Inner>,
}

/// What the table says about the fleet, for the gate and status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxySummary {
    pub tracked: usize,
    pub capacity: usize,
    /// Proxies that polled within the `active` window.
    pub active: usize,
    /// Active proxies on the latest version (or ahead of it).
    pub current: usize,
    /// Active proxies on an older version, and up to five of them (`id`, version).
    pub behind: usize,
    pub behind_examples: Vec<(String, u64)>,
    /// Active proxies that sent no version.
    pub unknown: usize,
    /// Polls the full table could not track: in the `active` window (any means the
    /// gate cannot tell that every proxy is current), and since start.
    pub untracked_recently: bool,
    pub untracked_total: u64,
}

impl Default for ProxyTable {
    fn default() -> Self {
        ProxyTable::new(ProxyLimits::default())
    }
}

impl ProxyTable {
    pub fn new(limits: ProxyLimits) -> Self {
        ProxyTable {
            limits: ProxyLimits {
                capacity: limits.capacity.max(1),
                expire_after: limits.expire_after,
            },
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                last_sweep: None,
                untracked_total: 0,
                last_untracked: None,
            }),
        }
    }

    /// A table of `capacity` ids and the default expiry.
    pub fn with_capacity(capacity: usize) -> Self {
        ProxyTable::new(ProxyLimits {
            capacity,
            ..ProxyLimits::default()
        })
    }

    pub fn limits(&self) -> ProxyLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a poll. Ids that are empty, too long or not printable ASCII are ignored.
    /// A new id on a full table first sweeps expired entries (at most once a second);
    /// if the table is still full the poll is counted as untracked.
    pub fn record(&self, id: &str, plan_version: Option<u64>, now: Instant) {
        if !rollout_core::wire::is_valid_proxy_id(id) {
            return;
        }
        let seen = Seen {
            last_seen: now,
            plan_version,
        };
        let mut inner = self.lock();
        if let Some(s) = inner.map.get_mut(id) {
            *s = seen;
            return;
        }
        if inner.map.len() >= self.limits.capacity {
            let due = inner
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY);
            if due {
                self.sweep(&mut inner, now);
            }
            if inner.map.len() >= self.limits.capacity {
                inner.untracked_total += 1;
                inner.last_untracked = Some(now);
                return;
            }
        }
        inner.map.insert(id.into(), seen);
    }

    fn sweep(&self, inner: &mut Inner, now: Instant) {
        let expire = self.limits.expire_after;
        inner
            .map
            .retain(|_, s| now.saturating_duration_since(s.last_seen) <= expire);
        inner.last_sweep = Some(now);
    }

    /// The plan versions proxies that polled within `active` report running (the
    /// history retention keeps them). One pass over the table.
    pub fn versions_in_use(&self, now: Instant, active: Duration) -> BTreeSet<u64> {
        self.lock()
            .map
            .values()
            .filter(|s| now.saturating_duration_since(s.last_seen) <= active)
            .filter_map(|s| s.plan_version)
            .collect()
    }

    /// Forgets expired entries and sums up the fleet against plan version `latest`:
    /// proxies that polled within `active` count. One pass over the table.
    pub fn summary(&self, latest: Option<u64>, now: Instant, active: Duration) -> ProxySummary {
        let mut inner = self.lock();
        self.sweep(&mut inner, now);
        let mut s = ProxySummary {
            tracked: inner.map.len(),
            capacity: self.limits.capacity,
            untracked_total: inner.untracked_total,
            untracked_recently: inner
                .last_untracked
                .is_some_and(|t| now.saturating_duration_since(t) <= active),
            ..ProxySummary::default()
        };
        for (id, seen) in &inner.map {
            if now.saturating_duration_since(seen.last_seen) > active {
                continue;
            }
            s.active += 1;
            match (seen.plan_version, latest) {
                (None, _) => s.unknown += 1,
                (Some(v), Some(l)) if v < l => {
                    s.behind += 1;
                    if s.behind_examples.len() < EXAMPLES {
                        s.behind_examples.push((id.to_string(), v));
                    }
                }
                (Some(_), _) => s.current += 1,
            }
        }
        s.behind_examples.sort();
        s
    }

    /// Up to `limit` proxies for status: those behind `latest` first, then by id.
    pub fn listing(&self, latest: Option<u64>, limit: usize) -> Vec<(String, Seen)> {
        let inner = self.lock();
        let behind = |s: &Seen| match (s.plan_version, latest) {
            (Some(v), Some(l)) => v < l,
            _ => false,
        };
        let mut all: Vec<(&str, Seen)> = inner.map.iter().map(|(k, v)| (&**k, *v)).collect();
        all.sort_unstable_by(|a, b| behind(&b.1).cmp(&behind(&a.1)).then(a.0.cmp(b.0)));
        all.into_iter()
            .take(limit)
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    /// All proxies, sorted by id.
    pub fn snapshot(&self) -> Vec<(String, Seen)> {
        let inner = self.lock();
        let mut all: Vec<(String, Seen)> =
            inner.map.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Polls the full table could not track, since start.
    pub fn untracked_total(&self) -> u64 {
        self.lock().untracked_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACTIVE: Duration = Duration::from_secs(30);

    #[test]
    fn records_latest_poll_per_id() {
        let t = ProxyTable::default();
        let t0 = Instant::now();
        t.record("envoy-a", Some(3), t0);
        t.record("envoy-a", Some(4), t0 + Duration::from_secs(1));
        t.record("envoy-b", None, t0);
        let s = t.snapshot();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0, "envoy-a");
        assert_eq!(s[0].1.plan_version, Some(4));
        assert_eq!(s[1].1.plan_version, None);
    }

    #[test]
    fn a_full_table_tracks_no_new_id_and_the_gate_holds() {
        let t = ProxyTable::with_capacity(3);
        let t0 = Instant::now();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            t.record(id, Some(2), t0 + Duration::from_secs(i as u64));
        }
        // "d" is not tracked: every entry is live, none may be dropped
        t.record("d", Some(1), t0 + Duration::from_secs(3));
        let ids: Vec<String> = t.snapshot().into_iter().map(|(k, _)| k).collect();
        assert_eq!(ids, vec!["a", "b", "c"]);
        let s = t.summary(Some(2), t0 + Duration::from_secs(4), ACTIVE);
        assert_eq!((s.tracked, s.current, s.behind), (3, 3, 0));
        assert!(s.untracked_recently && s.untracked_total == 1);
        // known ids still update
        t.record("a", Some(1), t0 + Duration::from_secs(5));
        let s = t.summary(Some(2), t0 + Duration::from_secs(5), ACTIVE);
        assert_eq!(s.behind_examples, vec![("a".to_string(), 1)]);
        // long after, the untracked poll no longer holds the gate
        let later = t0 + Duration::from_secs(60);
        assert!(!t.summary(Some(2), later, ACTIVE).untracked_recently);
    }

    #[test]
    fn expired_entries_make_room_and_are_forgotten() {
        let t = ProxyTable::new(ProxyLimits {
            capacity: 2,
            expire_after: Duration::from_secs(10),
        });
        let t0 = Instant::now();
        t.record("a", Some(1), t0);
        t.record("b", Some(1), t0 + Duration::from_secs(8));
        // "a" expired: "c" takes its place
        t.record("c", Some(1), t0 + Duration::from_secs(11));
        let ids: Vec<String> = t.snapshot().into_iter().map(|(k, _)| k).collect();
        assert_eq!(ids, vec!["b", "c"]);
        assert_eq!(t.untracked_total(), 0);
        // a summary sweeps too
        let s = t.summary(Some(1), t0 + Duration::from_secs(30), ACTIVE);
        assert_eq!(s.tracked, 0);
    }

    #[test]
    fn twenty_thousand_tracked_by_default_and_summed_in_one_pass() {
        let t = ProxyTable::default();
        assert!(t.limits().capacity >= 20_000);
        let t0 = Instant::now();
        for i in 0..20_000u64 {
            t.record(
                &format!("proxy-{i:05}"),
                Some(if i % 1000 == 7 { 4 } else { 5 }),
                t0,
            );
        }
        t.record("quiet", None, t0);
        let s = t.summary(Some(5), t0 + Duration::from_secs(1), ACTIVE);
        assert_eq!(s.tracked, 20_001);
        assert_eq!((s.current, s.behind, s.unknown), (19_980, 20, 1));
        assert_eq!(s.behind_examples.len(), 5);
        assert!(s
            .behind_examples
            .iter()
            .all(|(id, v)| id.ends_with("007") && *v == 4));
        let list = t.listing(Some(5), 25);
        assert_eq!(list.len(), 25);
        assert!(list[..20].iter().all(|(_, s)| s.plan_version == Some(4)));
        assert!(!s.untracked_recently);
    }

    #[test]
    fn odd_ids_ignored() {
        let t = ProxyTable::default();
        t.record("", Some(1), Instant::now());
        t.record("has space", Some(1), Instant::now());
        t.record(&"x".repeat(MAX_ID_LEN + 1), Some(1), Instant::now());
        assert!(t.is_empty());
    }
}
