//! `GET /v1/status`: the plan in force, each rollout's weights and policy, the policy
//! engine's sources, the polling proxies.

use rollout_core::analysis::{CheckOutcome, IntervalVerdict, NextAction};
use rollout_core::model::ModelSpec;
use rollout_core::policy::ProgressState;
use serde::{Deserialize, Serialize};

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Latest plan version; `null` before any plan is stored.
    pub version: Option<u64>,
    /// When the latest version was stored (RFC 3339 UTC).
    pub updated: Option<String>,
    /// Seconds since then.
    pub age_seconds: Option<f64>,
    pub rollouts: Vec<StatusRollout>,
    /// The polling proxies: those behind the latest version first, then by id; at
    /// most 1,000 (`proxy_summary` counts them all).
    pub proxies: Vec<StatusProxy>,
    /// Every tracked proxy counted (absent from older sidecars).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_summary: Option<ProxySummary>,
    /// The policy engine (`null` when `serve` runs without `--envoy-admin` or `--prometheus-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_engine: Option<EngineView>,
    /// The data budget (absent from older sidecars, or when the store cannot be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataBudget>,
}

/// The data budget in `GET /v1/status` (`--data-budget-bytes`): what shadow records,
/// assignments and outcomes hold together, and what it evicted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataBudget {
    pub budget_bytes: u64,
    pub bytes: u64,
    /// Age of the oldest item held, by the sidecar's arrival time; `null` when empty.
    /// Short, with evictions climbing: the budget is too small for the incoming rate.
    pub oldest_age_seconds: Option<f64>,
    /// `shadow_records`, `assignments`, `outcomes`.
    pub kinds: std::collections::BTreeMap<String, DataKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataKind {
    pub bytes: u64,
    pub items: u64,
    /// Evicted by the budget since the store began (kept in the store).
    pub evicted_items: u64,
    pub evicted_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusRollout {
    pub name: String,
    pub paused: bool,
    pub variants: Vec<StatusVariant>,
    /// The rollout's policy: step, state, checks, next action (only with a policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusVariant {
    pub name: String,
    pub weight: f64,
    /// The variant's model metadata, as in the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
}

/// The proxies table summed up in `GET /v1/status` (proxies that polled in the last
/// 30 s are `active`; `current` + `behind` + `unknown` = `active`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxySummary {
    pub tracked: usize,
    /// `--max-proxies`.
    pub capacity: usize,
    pub active: usize,
    /// Active proxies on the latest plan version.
    pub current: usize,
    /// Active proxies on an older one.
    pub behind: usize,
    /// Active proxies that reported no version.
    pub unknown: usize,
    /// Polls the full table could not track since start.
    pub untracked_total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusProxy {
    pub id: String,
    /// Plan version in force at the proxy, as it reported; `null` if it sent none.
    pub plan_version: Option<u64>,
    pub last_seen_seconds_ago: f64,
    /// Latest version minus the proxy's (negative if the proxy is ahead of this store).
    pub behind: Option<i64>,
}

/// A rollout's policy in `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub candidate: String,
    pub stable: String,
    /// Current step (0-based), of `steps`.
    pub step: usize,
    pub steps: usize,
    /// `step 2 (5 %)`.
    pub step_label: String,
    /// The step's candidate weight (0 for shadow-only) and the weight in force.
    pub step_weight: f64,
    pub weight: f64,
    pub shadow_only: bool,
    /// `null` before the engine started the rollout.
    pub state: Option<ProgressState>,
    pub since: Option<String>,
    pub time_in_step_s: Option<f64>,
    pub note: Option<String>,
    pub interval_s: u64,
    pub min_duration_s: u64,
    pub min_requests: u64,
    /// Candidate requests (shadow comparisons) counted toward `min_requests`.
    pub step_traffic: f64,
    /// The last interval's verdict and when it was judged.
    pub verdict: Option<IntervalVerdict>,
    pub evaluated: Option<String>,
    pub consecutive_failed: u32,
    pub consecutive_inconclusive: u32,
    pub failure_limit: u32,
    pub inconclusive_limit: u32,
    /// Each check of the last evaluation: value, threshold, verdict.
    pub checks: Vec<CheckOutcome>,
    pub next_action: NextAction,
    /// `next_action.at_ms` as RFC 3339.
    pub next_at: Option<String>,
    /// Why the rollout does not move on although its checks passed: proxies behind
    /// the latest plan, or a gate webhook that has not answered 200 (`gate webhook qa
    /// answered 403 ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_by: Option<String>,
    /// The last transition the engine could not commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The engine's own status in `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineView {
    pub running: bool,
    pub tick_ms: u64,
    pub stats_format: StatsFormat,
    pub envoys: Vec<EnvoyStatus>,
    pub last_tick: Option<String>,
}

/// The last answer of one Envoy, for status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvoyStatus {
    pub url: String,
    pub ok: bool,
    /// Unix ms of the last successful read.
    pub last_ok_ms: Option<u64>,
    /// The last error (cleared by a success).
    pub error: Option<String>,
    /// Series read at the last success.
    pub series: usize,
}

/// How to read Envoy's stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StatsFormat {
    /// `/stats?format=json` with Envoy's detailed histogram bins (finer percentiles).
    #[default]
    Json,
    /// `/stats/prometheus` (needs the shipped `stats_tags`; coarse default buckets).
    Prometheus,
}
