//! `GET /v1/shadow-report`: agreement, verdicts and latency of a rollout's shadow
//! records, and the recent disagreements. (The records themselves are
//! `rollout_core::wire::ShadowRecord`.)

use std::collections::BTreeMap;

use rollout_core::model::ModelSpec;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyReport {
    pub primary: LatencySummary,
    pub shadow: LatencySummary,
}

/// A prediction as its JSON text: a report holds the stored text, never a parsed
/// tree (a parsed array of numbers takes up to 16 times its text in memory). A
/// prediction cut at ingest (`--max-record-bytes`) is the marker
/// `{"truncated_from_bytes": N, "prefix": "<its JSON, cut>"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Prediction(pub Box<RawValue>);

impl Prediction {
    /// The JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for Prediction {
    fn eq(&self, other: &Self) -> bool {
        self.json() == other.json()
    }
}

/// One disagreement in a report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disagreement {
    pub correlation_id: String,
    pub variant: String,
    pub verdict: String,
    pub primary_prediction: Prediction,
    pub shadow_prediction: Prediction,
    pub primary_status: u32,
    pub shadow_status: u32,
    pub unix_ms: u64,
}

/// `GET /v1/shadow-report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShadowReport {
    pub rollout: String,
    /// Always true: the records are a sample (see `note`).
    pub sampled: bool,
    pub note: String,
    pub since_ms: Option<u64>,
    /// Records considered (each is one comparison).
    pub records: u64,
    pub compared: u64,
    pub agree: u64,
    pub disagree: u64,
    /// `agree / compared` over the records: biased low, disagreements are over-sampled.
    pub agreement_rate: Option<f64>,
    /// Agreements re-weighted by the current plan's `shadow.records.sample_percent`:
    /// an estimate of the agreement over all comparisons (too high when the
    /// disagreement budget ran out). `null` without that setting or without records.
    pub estimated_agreement_rate: Option<f64>,
    pub by_verdict: BTreeMap<String, u64>,
    pub latency: LatencyReport,
    pub first_unix_ms: Option<u64>,
    pub last_unix_ms: Option<u64>,
    /// Records whose predictions were cut at ingest (`--max-record-bytes`): their
    /// predictions are `{"truncated_from_bytes": N, "prefix": ...}` markers.
    #[serde(default)]
    pub truncated: u64,
    /// Newest first: at most `?limit=`, and at most `--max-report-bytes` of JSON
    /// together.
    pub recent_disagreements: Vec<Disagreement>,
    /// Disagreements within `?limit=` left out because the listed ones reached
    /// `--max-report-bytes` (the oldest go).
    #[serde(default)]
    pub disagreements_omitted: u64,
    /// The model metadata of the rollout's variants (the primaries), as in the plan
    /// in force.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ModelSpec>,
}

pub const SAMPLE_NOTE: &str = "records are a sample: every disagreement up to the filter's \
     per-minute budget, agreements at shadow.records.sample_percent; exact counts are Envoy's \
     model_rollout_shadow_* metrics";

/// Latency summary of the records in a report (ms; nearest-rank percentiles).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub p50: Option<u64>,
    pub p90: Option<u64>,
    pub p99: Option<u64>,
    pub mean: Option<f64>,
}
