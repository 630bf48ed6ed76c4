//! The gate on advancing: a rollout does not move forward while a proxy that polls
//! the plan still runs an older version (a failure still rolls back at once), nor
//! while polls went untracked because the proxies table was full (then nobody can
//! tell that every proxy is current).

use std::time::{Duration, Instant};

use crate::store::proxies::ProxyTable;
use crate::store::Store;

/// A proxy that polled within this long counts for "proxies behind".
pub const ACTIVE_PROXY: Duration = Duration::from_secs(30);

/// Why advancing must wait: `"proxies not on the latest plan v5: demo-envoy at v3"`
/// (at most five named, then how many more), or the full table; `None` when every
/// proxy that polled in the last 30 s is current. One pass over the table.
pub fn proxies_behind(store: &Store, proxies: &ProxyTable) -> Option<String> {
    let latest = store.current()?.version();
    let s = proxies.summary(Some(latest), Instant::now(), ACTIVE_PROXY);
    if s.untracked_recently {
        return Some(format!(
            "the proxies table is full ({} of {} tracked): polls of untracked proxies in the \
             last {} s, so nobody can tell that every proxy runs v{latest} (raise --max-proxies)",
            s.tracked,
            s.capacity,
            ACTIVE_PROXY.as_secs()
        ));
    }
    if s.behind == 0 {
        return None;
    }
    let mut list: Vec<String> = s
        .behind_examples
        .iter()
        .map(|(id, v)| format!("{id} at v{v}"))
        .collect();
    if s.behind > list.len() {
        list.push(format!("and {} more", s.behind - list.len()));
    }
    Some(format!(
        "proxies not on the latest plan v{latest}: {}",
        list.join(", ")
    ))
}
