//! The gate on advancing: a rollout does not move forward while a proxy that polls
//! the plan still runs an older version (a failure still rolls back at once).

use std::time::Instant;

use crate::store::proxies::ProxyTable;
use crate::store::Store;

/// A proxy that polled within this long counts for "proxies behind".
const ACTIVE_PROXY_MS: u128 = 30_000;

/// Proxies that polled in the last 30 s and report a plan version older than the
/// latest: `"demo-envoy at v3 (latest v5)"`; `None` when all are current.
pub fn proxies_behind(store: &Store, proxies: &ProxyTable) -> Option<String> {
    let latest = store.current()?.version();
    let now = Instant::now();
    let behind: Vec<String> = proxies
        .snapshot()
        .into_iter()
        .filter(|(_, seen)| now.duration_since(seen.last_seen).as_millis() <= ACTIVE_PROXY_MS)
        .filter_map(|(id, seen)| {
            seen.plan_version
                .filter(|v| *v < latest)
                .map(|v| format!("{id} at v{v}"))
        })
        .collect();
    if behind.is_empty() {
        return None;
    }
    let n = behind.len();
    let mut list: Vec<String> = behind.into_iter().take(5).collect();
    if n > 5 {
        list.push(format!("and {} more", n - 5));
    }
    Some(format!(
        "proxies not on the latest plan v{latest}: {}",
        list.join(", ")
    ))
}
