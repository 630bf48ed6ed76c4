//! A/B experiments: the feedback body and answer, the reset answer and the report of
//! `GET /v1/experiments/{rollout}`. (Assignments are `rollout_core::wire::Assignment`.)

use std::collections::BTreeMap;

use rollout_core::experiment::{ExperimentMetric, Stopping};
use rollout_core::model::ModelSpec;
use serde::{Deserialize, Serialize};

/// One outcome: the reward observed for a correlation id (higher is better).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub correlation_id: String,
    pub reward: f64,
}

/// Body of `POST /v1/feedback`: `{"outcomes": [...]}` or a single `{"correlation_id", "reward"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    #[serde(default)]
    pub outcomes: Option<Vec<Outcome>>,
    #[serde(default)]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub reward: Option<f64>,
}

/// Answer of `POST /v1/feedback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FeedbackResult {
    /// Joined with a known assignment (new, repeated or replacing an earlier reward).
    pub accepted: u64,
    /// No assignment known for the correlation id: not stored (safe to send again later).
    pub unknown: u64,
    /// The variant already holds `MAX_OUTCOMES_PER_VARIANT` outcomes: not stored.
    #[serde(default)]
    pub dropped: u64,
}

/// Answer of `POST /v1/experiments/{rollout}/reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetResult {
    pub assignments_deleted: u64,
    pub outcomes_deleted: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictStatus {
    /// Fixed horizon: some variant has fewer than `samples_per_variant` outcomes, no
    /// significance yet. Sequential: not decided and below the horizon.
    Collecting,
    /// Fixed horizon: every variant reached the horizon. Sequential: the candidate's
    /// comparison decided (or every variant reached the horizon undecided). The
    /// verdict is final (later outcomes do not enter the analysis).
    Complete,
}

/// Where a sequential comparison decided: the outcomes of each arm then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoppedAt {
    pub control: u64,
    pub variant: u64,
}

/// One variant in a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantStats {
    pub name: String,
    /// Outcomes joined with this variant's assignments (all of them).
    pub count: u64,
    /// Outcomes analysed: the first `min(count, samples_per_variant)` in arrival order.
    pub analysed: u64,
    /// Conversion experiments: the share of analysed rewards equal to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversion: Option<Option<f64>>,
    /// Mean experiments: the mean analysed reward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Option<f64>>,
    /// Confidence interval at `1 - alpha` (Wilson score for conversion, normal for means).
    pub ci_low: Option<f64>,
    pub ci_high: Option<f64>,
}

impl VariantStats {
    /// The estimate: conversion or mean.
    pub fn estimate(&self) -> Option<f64> {
        self.conversion.flatten().or(self.mean.flatten())
    }
}

/// A variant against the control (the first variant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub variant: String,
    pub against: String,
    /// Variant minus control (rates or means) of the analysed outcomes.
    pub diff: Option<f64>,
    /// `diff / control` (relative lift); null when the control's estimate is 0.
    pub lift: Option<f64>,
    /// Only once complete (fixed horizon): null while collecting, and for an
    /// infinite z (no variance at all); always null for a sequential test.
    pub z: Option<f64>,
    /// Fixed horizon: the z-test's two-sided p-value, once complete. Sequential: the
    /// always-valid p-value so far (it never rises; at the decision once decided).
    pub p_value: Option<f64>,
    /// Fixed horizon: `p_value < alpha`, and only ever true once complete.
    /// Sequential: the mSPRT decided (`p_value <= alpha`); final.
    pub significant: bool,
    /// Sequential: the outcomes of each arm when it decided (`diff` is then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at: Option<StoppedAt>,
    /// The better of the two when significant (higher reward is better).
    pub winner: Option<String>,
}

/// `GET /v1/experiments/{rollout}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentReport {
    pub rollout: String,
    pub metric: ExperimentMetric,
    pub alpha: f64,
    pub samples_per_variant: u64,
    /// `fixed` (horizon) or `sequential` (mSPRT, always valid).
    pub stopping: Stopping,
    /// Sequential: the configured tau^2 (`null`: the default share of the variance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixture_variance: Option<f64>,
    pub status: VerdictStatus,
    /// `two_proportion_z_pooled` (conversion) or `welch_z` (mean) at a fixed horizon;
    /// `msprt` (sequential).
    pub test: String,
    /// `wilson` (conversion) or `normal` (mean).
    pub interval: String,
    /// The first variant: every other one is compared with it.
    pub control: String,
    /// The rollout's candidate (the policy's, default the last variant).
    pub candidate: String,
    pub variants: Vec<VariantStats>,
    pub comparisons: Vec<Comparison>,
    /// The candidate-vs-control comparison, as in `report::experiment::Verdict`.
    pub significant: bool,
    pub candidate_better: Option<bool>,
    pub winner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The model metadata of the variants, as in the plan.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ModelSpec>,
}
