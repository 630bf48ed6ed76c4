//! `GET /v1/history`: the versions, newest first, with the weights of each and, for
//! versions the policy engine wrote, the decision behind them.

use rollout_core::analysis::{CheckOutcome, IntervalVerdict, Streak};
use rollout_core::PlanSpec;
use serde::{Deserialize, Serialize};

use crate::util::ordered::OrderedMap;

/// One entry of `GET /v1/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub version: u64,
    pub time: String,
    pub unix_ms: u64,
    pub reason: String,
    pub author: String,
    pub op: String,
    /// `{rollout: {variant: weight}}`, rollouts and variants in plan order.
    pub weights: OrderedMap<OrderedMap<f64>>,
    /// For a version written by the policy engine: the decision behind it (checks
    /// with values, thresholds, verdicts; `href` to the full decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<VersionAnalysis>,
}

/// What `GET /v1/history` shows for a version written by the policy engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionAnalysis {
    pub rollout: String,
    pub action: String,
    pub decision_ms: u64,
    pub verdict: Option<IntervalVerdict>,
    pub streak: Streak,
    pub checks: Vec<CheckOutcome>,
    /// Where the full decision (window, series) is.
    pub href: String,
}

/// `{rollout: {variant: weight}}` of a plan, in plan order.
pub fn weights_of(plan: &PlanSpec) -> OrderedMap<OrderedMap<f64>> {
    OrderedMap(
        plan.rollouts
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    OrderedMap(
                        r.variants
                            .iter()
                            .map(|v| (v.name.clone(), v.weight))
                            .collect(),
                    ),
                )
            })
            .collect(),
    )
}
