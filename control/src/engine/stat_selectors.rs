//! The stats a plan's `stat` checks read, as selectors: what the metrics source must
//! fetch besides the filter's own metrics, and what each rollout's windows sum up. A
//! `stat` with a `(` is a PromQL expression, run by the Prometheus source only (see
//! `source::series::Selector`).

use std::collections::HashSet;

use rollout_core::analysis::stat_key;
use rollout_core::plan::RolloutSpec;
use rollout_core::policy::CheckMetric;
use rollout_core::PlanSpec;

use crate::engine::source::series::{is_expression, Selector};

/// A PromQL `stat` with `{rollout}` and `{interval}` (the policy's `interval_s`, as
/// `60s`) replaced (`{variant}` is replaced before, like in every `stat`).
pub fn expand(stat: &str, rollout: &str, interval_s: u64) -> String {
    stat.replace("{rollout}", rollout)
        .replace("{interval}", &format!("{}s", interval_s.max(1)))
}

/// The stats a rollout's `stat` checks read: `(key, selector)`, with `{variant}`
/// replaced by the stable and the candidate variant.
pub fn stat_keys(r: &RolloutSpec) -> Vec<(String, Selector)> {
    let Some(policy) = &r.policy else {
        return Vec::new();
    };
    let stable = r.variants.first().map(|v| v.name.as_str()).unwrap_or("");
    let candidate = r.candidate_name().unwrap_or("");
    let mut out: Vec<(String, Selector)> = Vec::new();
    for c in &rollout_core::analysis::effective_checks(&r.name, policy) {
        if c.metric != CheckMetric::Stat {
            continue;
        }
        let Some(stat) = &c.stat else { continue };
        for v in [stable, candidate] {
            let key = stat_key(stat, v);
            if !out.iter().any(|(k, _)| k == &key) {
                let sel = if is_expression(&key) {
                    Selector::expression(&key, expand(&key, &r.name, policy.interval_s))
                } else {
                    Selector::parse(&key)
                };
                out.push((key, sel));
            }
        }
    }
    out
}

/// Every stat selector of every rollout of the plan (for the admin filter).
pub fn plan_selectors(plan: &PlanSpec) -> Vec<Selector> {
    let mut seen = HashSet::new();
    plan.rollouts
        .iter()
        .flat_map(stat_keys)
        .filter(|(k, _)| seen.insert(k.clone()))
        .map(|(_, s)| s)
        .collect()
}
