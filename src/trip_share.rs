//! A local trip, shared among the proxy's workers: the worker whose window tripped
//! counts it, raises the gauge and announces it in shared data (the value is the
//! plan version the trip belongs to); every other worker follows on its next tick.
//! A newer plan builds new windows, so an announcement for an older version is
//! ignored.

use proxy_wasm::types::LogLevel;

use crate::active::Active;
use crate::host::Host;

/// Shared-data key announcing a local trip of `rollout`.
pub fn trip_key(rollout: &str) -> String {
    format!("model_rollout/trip/{rollout}")
}

/// This worker tripped: count it, raise the gauge, tell the other workers.
pub fn announce(host: &impl Host, active: &Active, rollout: usize) {
    let m = &active.metrics;
    if let Some(tm) = m.trip(rollout) {
        m.bump(tm.trips);
        m.set_gauge(host, tm.tripped, 1);
    }
    let Some(r) = active.config.plan.rollout(rollout) else {
        return;
    };
    let version = active.version().to_string();
    if host
        .set_shared(&trip_key(&r.name), version.as_bytes(), None)
        .is_err()
    {
        m.bump(m.host_errors);
    }
    host.log(
        LogLevel::Warn,
        &format!(
            "model-rollout: rollout {} tripped locally (plan version {version}): candidate {} traffic goes to stable",
            r.name,
            r.variant_name(active.trip(rollout).map(|t| t.spec.candidate).unwrap_or(0))
        ),
    );
}

/// Follows the trips other workers announced for the plan in force; returns the
/// rollouts this worker tripped now.
pub fn follow<'a>(host: &impl Host, active: &'a Active) -> Vec<&'a str> {
    let version = active.version().to_string();
    let mut followed = Vec::new();
    for (i, r) in active.config.plan.rollouts.iter().enumerate() {
        let Some(tw) = active.trip(i) else { continue };
        if tw.tripped() {
            continue;
        }
        if let Ok((Some(v), _)) = host.get_shared(&trip_key(&r.name)) {
            if v == version.as_bytes() && tw.trip() {
                if let Some(tm) = active.metrics.trip(i) {
                    active.metrics.set_gauge(host, tm.tripped, 1);
                }
                followed.push(r.name.as_str());
            }
        }
    }
    followed
}
