//! `GET /v1/rollouts/{name}/analysis`: the policy's decisions, as stored, and the
//! live window series.

use std::collections::BTreeMap;

use rollout_core::analysis::{CheckOutcome, IntervalVerdict, ShadowWindow, Streak};
use rollout_core::policy::{ProgressSpec, ProgressState};
use serde::{Deserialize, Serialize};

use crate::api::status::PolicyStatus;

/// `GET /v1/rollouts/{name}/analysis`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisReport {
    pub rollout: String,
    pub plan_version: u64,
    pub engine_running: bool,
    pub progress: Option<ProgressSpec>,
    pub status: Option<PolicyStatus>,
    /// The window of the last evaluation.
    pub window: Option<WindowSummary>,
    /// Live series of the last 10 intervals (at least a minute), at most 120 points.
    pub series: Vec<SeriesPoint>,
    /// Stored decisions, newest first.
    pub decisions: Vec<Decision>,
}

/// A window's numbers, stored with each decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowSummary {
    pub from_ms: u64,
    pub to_ms: u64,
    /// Seconds the window's samples cover.
    pub span_s: f64,
    pub variants: BTreeMap<String, VariantSummary>,
    pub shadow: ShadowWindow,
    /// `stat` check values (counter rate per second, or gauge value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stats: BTreeMap<String, f64>,
}

/// One evaluation of a rollout (or a start), as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub rollout: String,
    pub unix_ms: u64,
    pub time: String,
    /// `start`, `stay`, `advance`, `wait`, `complete`, `rollback`, `hold`.
    pub action: String,
    /// The plan change's reason, or why nothing changed.
    pub reason: String,
    /// The plan version this decision wrote (transitions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_version: Option<u64>,
    /// The plan version the decision was made on.
    pub based_on_version: u64,
    pub step: usize,
    pub step_label: String,
    /// Progress state before the decision (`null`: not started).
    pub state: Option<ProgressState>,
    pub verdict: Option<IntervalVerdict>,
    /// Streaks after this interval.
    pub streak: Streak,
    /// Candidate requests (shadow comparisons at a shadow-only step) seen in the step.
    pub step_traffic: f64,
    pub checks: Vec<CheckOutcome>,
    pub window: Option<WindowSummary>,
    /// The window's samples (at most 30 points).
    pub series: Vec<SeriesPoint>,
    /// The transition could not be committed (e.g. a person changed the rollout first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A variant's numbers as shown in decisions and the analysis endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantSummary {
    pub requests: f64,
    pub responses: f64,
    pub errors_5xx: f64,
    pub error_rate: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub outputs_checked: f64,
    pub invalid_outputs: f64,
    pub invalid_rate: Option<f64>,
}

/// One point of a rollout's series (one or several samples added up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// End of the point's time span (unix ms) and its length.
    pub t_ms: u64,
    pub span_ms: u64,
    pub envoys_ok: usize,
    pub variants: BTreeMap<String, VariantSummary>,
    pub shadow: ShadowWindow,
    /// `stat` check values: counter rate per second, or gauge value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stats: BTreeMap<String, f64>,
}
