//! JSON shapes of the API, shared by the server (which writes them) and the CLI
//! (which reads them), plus the plan-document parsing both use. What the filter
//! sends and reads (the poll's headers and ETag, records, assignments) is
//! `rollout_core::wire`.

use rollout_core::{ConfigError, PlanSpec};
use serde::{Deserialize, Serialize};

use crate::util::ordered::OrderedMap;

pub use crate::error::ErrorBody;

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
    pub analysis: Option<crate::policy::VersionAnalysis>,
}

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
    pub proxies: Vec<StatusProxy>,
    /// The policy engine (`null` when `serve` runs without `--envoy-admin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_engine: Option<crate::policy::EngineView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusRollout {
    pub name: String,
    pub paused: bool,
    pub variants: Vec<StatusVariant>,
    /// The rollout's policy: step, state, checks, next action (only with a policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::PolicyStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusVariant {
    pub name: String,
    pub weight: f64,
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

/// Parses and validates a plan document whose `version` belongs to the store: the
/// document's `version` may be missing or anything; it is replaced by 0 here and by
/// the stored version on commit. Every other field is validated by
/// `rollout_core::parse_plan`, and errors name the field.
pub fn parse_plan_document(bytes: &[u8]) -> Result<PlanSpec, ConfigError> {
    match rollout_core::parse_plan(bytes) {
        Ok((spec, _)) => Ok(spec),
        Err(e) if e.field == "version" || e.message.contains("missing field `version`") => {
            let Ok(serde_json::Value::Object(mut map)) =
                serde_json::from_slice::<serde_json::Value>(bytes)
            else {
                return Err(e);
            };
            map.insert("version".into(), serde_json::Value::from(0u64));
            let text = serde_json::to_vec(&map)
                .map_err(|err| ConfigError::new("", format!("cannot re-encode the plan: {err}")))?;
            rollout_core::parse_plan(&text).map(|(spec, _)| spec)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_optional_and_ignored() {
        let body =
            br#"{"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":100}]}]}"#;
        assert_eq!(parse_plan_document(body).unwrap().version, 0);
        let body = br#"{"version":"x","rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":100}]}]}"#;
        assert_eq!(parse_plan_document(body).unwrap().version, 0);
        let body = br#"{"version":7,"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":100}]}]}"#;
        assert_eq!(parse_plan_document(body).unwrap().version, 7);
    }

    #[test]
    fn other_errors_name_the_field() {
        let body =
            br#"{"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":90}]}]}"#;
        assert_eq!(
            parse_plan_document(body).unwrap_err().field,
            "rollouts[0].variants"
        );
        let body = br#"{"version":1,"version":2,"rollouts":[]}"#;
        assert!(parse_plan_document(body).is_err());
        assert_eq!(parse_plan_document(b"[]").unwrap_err().field, "");
        assert_eq!(parse_plan_document(b"").unwrap_err().field, "");
    }
}
