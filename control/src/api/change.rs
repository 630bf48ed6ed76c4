//! The bodies and answer of the plan changes (`PUT /v1/plan`, `POST
//! /v1/rollouts/{name}/...`, restore) and the headers that say who and why.

use rollout_core::PlanSpec;
use serde::{Deserialize, Serialize};

use crate::util::ordered::OrderedMap;

/// Request header with the reason of a change (the `reason` query parameter wins).
pub const REASON_HEADER: &str = "x-rollout-reason";
/// Request header with the author of a change (default `api`).
pub const AUTHOR_HEADER: &str = "x-rollout-author";

/// Answer of every successful change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteResponse {
    pub version: u64,
    pub plan: PlanSpec,
}

/// Body of `POST /v1/rollouts/{name}/weights`: either `weights` (all variants) or
/// `variant` + `weight` (the first variant absorbs the difference).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<OrderedMap<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
}

/// Body of `POST /v1/rollouts/{name}/switch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    pub variant: String,
}
