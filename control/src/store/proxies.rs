//! Proxies seen polling the plan: per proxy id, when it last polled and which plan
//! version it had in force (from the `x-model-rollout-proxy` and
//! `x-model-rollout-plan-version` request headers). In memory only, bounded: at most
//! `MAX_PROXIES` ids; a new id beyond that evicts the least recently seen one.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Most proxies remembered.
pub const MAX_PROXIES: usize = 1_000;
/// Longest proxy id accepted (longer ids are not recorded).
pub const MAX_ID_LEN: usize = rollout_core::wire::MAX_PROXY_ID_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub last_seen: Instant,
    /// Plan version the proxy reported; `None` when it sent none (or an unreadable one).
    pub plan_version: Option<u64>,
}

#[derive(Debug)]
pub struct ProxyTable {
    capacity: usize,
    map: Mutex<HashMap<String, Seen>>,
}

impl Default for ProxyTable {
    fn default() -> Self {
        ProxyTable::with_capacity(MAX_PROXIES)
    }
}

impl ProxyTable {
    pub fn with_capacity(capacity: usize) -> Self {
        ProxyTable {
            capacity: capacity.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Records a poll. Ids that are empty, too long or not printable ASCII are ignored.
    pub fn record(&self, id: &str, plan_version: Option<u64>, now: Instant) {
        if !rollout_core::wire::is_valid_proxy_id(id) {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if !map.contains_key(id) && map.len() >= self.capacity {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        map.insert(
            id.to_string(),
            Seen {
                last_seen: now,
                plan_version,
            },
        );
    }

    /// All proxies, sorted by id.
    pub fn snapshot(&self) -> Vec<(String, Seen)> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<(String, Seen)> = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    fn bounded_evicting_least_recently_seen() {
        let t = ProxyTable::with_capacity(3);
        let t0 = Instant::now();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            t.record(id, Some(1), t0 + Duration::from_secs(i as u64));
        }
        // "a" polls again: now "b" is the least recently seen
        t.record("a", Some(2), t0 + Duration::from_secs(10));
        t.record("d", Some(1), t0 + Duration::from_secs(11));
        let ids: Vec<String> = t.snapshot().into_iter().map(|(k, _)| k).collect();
        assert_eq!(ids, vec!["a", "c", "d"]);
        let big = ProxyTable::default();
        for i in 0..(MAX_PROXIES + 500) {
            big.record(&format!("p{i}"), None, t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(big.len(), MAX_PROXIES);
        let ids: Vec<String> = big.snapshot().into_iter().map(|(k, _)| k).collect();
        assert!(!ids.contains(&"p0".to_string()));
        assert!(ids.contains(&format!("p{}", MAX_PROXIES + 499)));
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
