//! Progressive delivery: the `policy` section of a rollout (steps, checks, limits,
//! the proxies' local trip) and the `progress` record the sidecar writes into the
//! plan as it walks the steps. Keeping progress in the plan makes every step a
//! versioned, durable plan change, so a restarted sidecar resumes where it was.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::fields::{check_rate, weight_to_bp};

fn d_interval() -> u64 {
    60
}
fn d_true() -> bool {
    true
}
fn d_fail() -> u32 {
    2
}
fn d_inconclusive() -> u32 {
    10
}
fn d_min_duration() -> u64 {
    300
}
fn d_min_requests() -> u64 {
    200
}
fn d_window() -> u64 {
    10
}
fn d_trip_min() -> u64 {
    20
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// The variant being rolled out; default the last one. The first variant is
    /// the stable baseline it is compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    /// In order; the last usually sends 100 % to the candidate.
    pub steps: Vec<StepSpec>,
    /// Analysis interval: checks are judged over the last interval's window.
    #[serde(default = "d_interval")]
    pub interval_s: u64,
    /// Advance by itself when a step's checks pass; false waits for `promote` at every step.
    #[serde(default = "d_true")]
    pub auto_advance: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckSpec>,
    /// Consecutive failed intervals before the rollback.
    #[serde(default = "d_fail")]
    pub failure_limit: u32,
    /// Consecutive inconclusive intervals (too little traffic) before
    /// `on_inconclusive_limit` applies.
    #[serde(default = "d_inconclusive")]
    pub inconclusive_limit: u32,
    #[serde(default)]
    pub on_inconclusive_limit: OnInconclusive,
    /// Each proxy's own fast trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trip: Option<TripSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnInconclusive {
    /// Stay at the step (state `holding`) until traffic comes or a person acts.
    #[default]
    Hold,
    /// Treat as a failure: roll back.
    Rollback,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// The candidate's weight in percent (two decimals); the first variant gets the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Candidate at 0 %, judged on shadow comparisons only (needs a `shadow` section).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow_only: bool,
    #[serde(default = "d_min_duration")]
    pub min_duration_s: u64,
    /// Candidate requests (shadow comparisons for a shadow-only step) the step must see.
    #[serde(default = "d_min_requests")]
    pub min_requests: u64,
    /// Wait for an explicit `promote` before leaving this step, even with auto_advance.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckMetric {
    /// 5xx responses / responses.
    ErrorRate,
    /// A latency percentile in ms (`percentile`, default 99).
    Latency,
    /// Invalid outputs / outputs checked (needs an `output` section).
    InvalidOutputRate,
    /// Shadow disagreements / comparisons (needs a `shadow` section; absolute only).
    ShadowDisagreementRate,
    /// Any Envoy stat by name (`stat`): a counter's rate per second over the window,
    /// or a gauge's value. Absolute only unless `{variant}` appears in the name.
    Stat,
    /// The A/B verdict of the `experiment` section: a promotion check.
    Ab,
    /// How far the candidate's prediction distribution drifted from the stable's
    /// (the shadow's from the primary's at a shadow-only step), by `method`
    /// (needs `output.distribution`; absolute only: `max`).
    PredictionDrift,
}

/// How a `prediction_drift` check measures drift (see `analysis::drift`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DriftMethod {
    /// Population Stability Index (0 none; < 0.1 no shift, 0.1-0.25 moderate, > 0.25 major).
    #[default]
    Psi,
    /// Jensen-Shannon distance, base 2 (0 identical, 1 disjoint).
    Js,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub metric: CheckMetric,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat: Option<String>,
    /// Absolute: candidate value <= max (rates are fractions: 0.01 = 1 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Relative: candidate <= stable + max_increase (0.005 = 0.5 percentage points).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_increase: Option<f64>,
    /// Relative: candidate <= max_ratio x stable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ratio: Option<f64>,
    /// Samples each compared variant needs in the window, else the check is inconclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u64>,
    /// For `ab`: "better" (candidate significantly better) or "not_worse".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require: Option<AbRequirement>,
    /// For `prediction_drift`: `psi` (default) or `js`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<DriftMethod>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbRequirement {
    Better,
    NotWorse,
}

/// `policy.trip`: each proxy stops routing to the candidate on its own when,
/// over the last `window_s` seconds, it saw at least `min_requests` candidate
/// answers and their error (5xx) or invalid-output rate exceeded the limit. The
/// trip holds until a newer plan arrives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TripSpec {
    #[serde(default = "d_window")]
    pub window_s: u64,
    #[serde(default = "d_trip_min")]
    pub min_requests: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_invalid_rate: Option<f64>,
}

/// `rollouts[].progress`, written by the sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgressSpec {
    /// Index into `policy.steps`.
    pub step: usize,
    pub state: ProgressState,
    /// When the current step (or state) began, unix ms.
    pub since_ms: u64,
    /// Why the last transition happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressState {
    /// Being judged; advances when the step's checks pass.
    Progressing,
    /// Checks passed at a gate (or auto_advance is off): waiting for `promote`.
    Waiting,
    /// Inconclusive for too long with on_inconclusive_limit = hold.
    Holding,
    /// Rolled back: the candidate is at 0 % until a person restarts the rollout.
    RolledBack,
    /// The last step passed: the candidate was promoted.
    Complete,
}

/// The candidate's weight at a step (0 for a shadow-only step).
pub fn step_weight(step: &StepSpec) -> f64 {
    if step.shadow_only {
        0.0
    } else {
        step.weight.unwrap_or(0.0)
    }
}

/// `step 2 (5 %)`, `step 0 (shadow only)`.
pub fn step_label(policy: &PolicySpec, i: usize) -> String {
    match policy.steps.get(i) {
        Some(s) if s.shadow_only => format!("step {i} (shadow only)"),
        Some(s) => format!("step {i} ({} %)", step_weight(s)),
        None => format!("step {i}"),
    }
}

/// The compiled trip the filter runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    /// Index of the candidate variant.
    pub candidate: usize,
    pub window_s: u64,
    pub min_requests: u64,
    pub max_error_rate: Option<f64>,
    pub max_invalid_rate: Option<f64>,
}

impl PolicySpec {
    /// Validates the policy against its rollout; returns the candidate's index and
    /// the compiled trip.
    pub fn compile(
        &self,
        variants: &[String],
        has_shadow: bool,
        has_output: bool,
        has_experiment: bool,
    ) -> Result<(usize, Option<Trip>), ConfigError> {
        if variants.len() < 2 {
            return Err(ConfigError::new(
                "",
                "a policy needs a rollout with at least two variants",
            ));
        }
        let candidate = match &self.candidate {
            Some(c) => variants.iter().position(|v| v == c).ok_or_else(|| {
                ConfigError::new(
                    "candidate",
                    format!("{c:?} is not a variant of this rollout"),
                )
            })?,
            None => variants.len() - 1,
        };
        if candidate == 0 {
            return Err(ConfigError::new(
                "candidate",
                "the first variant is the stable baseline, not a candidate",
            ));
        }
        if self.steps.is_empty() || self.steps.len() > 32 {
            return Err(ConfigError::new("steps", "must list 1 to 32 steps"));
        }
        for (i, s) in self.steps.iter().enumerate() {
            let f = |n: &str| format!("steps[{i}].{n}");
            match (s.shadow_only, s.weight) {
                (true, Some(_)) => {
                    return Err(ConfigError::new(
                        f("weight"),
                        "a shadow-only step has no weight",
                    ))
                }
                (true, None) if !has_shadow => {
                    return Err(ConfigError::new(
                        f("shadow_only"),
                        "needs a shadow section in the rollout",
                    ))
                }
                (false, None) => {
                    return Err(ConfigError::new(
                        f("weight"),
                        "missing (or set shadow_only)",
                    ))
                }
                (false, Some(w)) => {
                    weight_to_bp(&f("weight"), w)?;
                }
                (true, None) => {}
            }
            if s.min_duration_s > 30 * 86_400 {
                return Err(ConfigError::new(f("min_duration_s"), "at most 30 days"));
            }
        }
        if !(1..=3600).contains(&self.interval_s) {
            return Err(ConfigError::new("interval_s", "must be between 1 and 3600"));
        }
        if !(1..=1000).contains(&self.failure_limit) {
            return Err(ConfigError::new(
                "failure_limit",
                "must be between 1 and 1000",
            ));
        }
        if !(1..=100_000).contains(&self.inconclusive_limit) {
            return Err(ConfigError::new(
                "inconclusive_limit",
                "must be between 1 and 100000",
            ));
        }
        if self.checks.len() > 16 {
            return Err(ConfigError::new("checks", "at most 16 checks"));
        }
        for (i, c) in self.checks.iter().enumerate() {
            c.validate(has_shadow, has_output, has_experiment)
                .map_err(|e| e.within(&format!("checks[{i}]")))?;
        }
        let trip = match &self.trip {
            None => None,
            Some(t) => {
                if !(1..=300).contains(&t.window_s) {
                    return Err(ConfigError::new(
                        "trip.window_s",
                        "must be between 1 and 300",
                    ));
                }
                if !(1..=1_000_000).contains(&t.min_requests) {
                    return Err(ConfigError::new(
                        "trip.min_requests",
                        "must be between 1 and 1000000",
                    ));
                }
                check_rate("trip.max_error_rate", t.max_error_rate)?;
                check_rate("trip.max_invalid_rate", t.max_invalid_rate)?;
                if t.max_error_rate.is_none() && t.max_invalid_rate.is_none() {
                    return Err(ConfigError::new(
                        "trip",
                        "needs max_error_rate or max_invalid_rate",
                    ));
                }
                if t.max_invalid_rate.is_some() && !has_output {
                    return Err(ConfigError::new(
                        "trip.max_invalid_rate",
                        "needs an output section in the rollout",
                    ));
                }
                Some(Trip {
                    candidate,
                    window_s: t.window_s,
                    min_requests: t.min_requests,
                    max_error_rate: t.max_error_rate,
                    max_invalid_rate: t.max_invalid_rate,
                })
            }
        };
        Ok((candidate, trip))
    }
}

impl CheckSpec {
    fn validate(
        &self,
        has_shadow: bool,
        has_output: bool,
        has_experiment: bool,
    ) -> Result<(), ConfigError> {
        let bounds = [self.max, self.max_increase, self.max_ratio];
        for (name, v) in [
            ("max", self.max),
            ("max_increase", self.max_increase),
            ("max_ratio", self.max_ratio),
        ] {
            if let Some(v) = v {
                if !v.is_finite() || v < 0.0 {
                    return Err(ConfigError::new(name, "must be a finite number >= 0"));
                }
            }
        }
        let n = bounds.iter().filter(|b| b.is_some()).count();
        match self.metric {
            CheckMetric::Ab => {
                if n > 0 {
                    return Err(ConfigError::new(
                        "metric",
                        "an ab check takes `require`, not max/max_increase/max_ratio",
                    ));
                }
                if !has_experiment {
                    return Err(ConfigError::new(
                        "metric",
                        "ab needs an experiment section in the rollout",
                    ));
                }
            }
            _ => {
                if n != 1 {
                    return Err(ConfigError::new(
                        "",
                        "needs exactly one of max, max_increase or max_ratio",
                    ));
                }
                if self.require.is_some() {
                    return Err(ConfigError::new("require", "only for metric ab"));
                }
            }
        }
        match self.metric {
            CheckMetric::Latency => {
                if let Some(p) = self.percentile {
                    if !(p > 0.0 && p < 100.0) {
                        return Err(ConfigError::new(
                            "percentile",
                            "must be between 0 and 100 (exclusive)",
                        ));
                    }
                }
            }
            CheckMetric::InvalidOutputRate if !has_output => {
                return Err(ConfigError::new(
                    "metric",
                    "invalid_output_rate needs an output section in the rollout",
                ))
            }
            CheckMetric::ShadowDisagreementRate => {
                if !has_shadow {
                    return Err(ConfigError::new(
                        "metric",
                        "shadow_disagreement_rate needs a shadow section in the rollout",
                    ));
                }
                if self.max.is_none() {
                    return Err(ConfigError::new(
                        "max",
                        "shadow_disagreement_rate is absolute: use max",
                    ));
                }
            }
            CheckMetric::Stat => match &self.stat {
                Some(s) if !s.is_empty() && s.len() <= 512 => {}
                _ => return Err(ConfigError::new("stat", "the Envoy stat name is required")),
            },
            CheckMetric::PredictionDrift => {
                let Some(max) = self.max else {
                    return Err(ConfigError::new(
                        "max",
                        "prediction_drift is absolute (the drift between candidate and stable): use max",
                    ));
                };
                if self.method == Some(DriftMethod::Js) && max > 1.0 {
                    return Err(ConfigError::new(
                        "max",
                        "a Jensen-Shannon distance is at most 1",
                    ));
                }
            }
            _ => {}
        }
        if self.metric != CheckMetric::PredictionDrift && self.method.is_some() {
            return Err(ConfigError::new(
                "method",
                "only for metric prediction_drift",
            ));
        }
        if self.metric != CheckMetric::Latency && self.percentile.is_some() {
            return Err(ConfigError::new("percentile", "only for metric latency"));
        }
        if self.metric != CheckMetric::Stat && self.stat.is_some() {
            return Err(ConfigError::new("stat", "only for metric stat"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(json: &str) -> Result<(usize, Option<Trip>), ConfigError> {
        let p: PolicySpec = serde_json::from_str(json).unwrap();
        p.compile(&["stable".into(), "canary".into()], true, true, false)
    }

    #[test]
    fn a_typical_policy() {
        let (c, trip) = compile(
            r#"{"steps":[{"shadow_only":true,"min_duration_s":60},{"weight":1},{"weight":5},{"weight":25},{"weight":50},{"weight":100}],
                "interval_s":30,
                "checks":[{"metric":"error_rate","max_increase":0.005},{"metric":"latency","percentile":99,"max_ratio":1.2},
                          {"metric":"invalid_output_rate","max":0.01},{"metric":"shadow_disagreement_rate","max":0.05}],
                "trip":{"window_s":5,"min_requests":20,"max_error_rate":0.2}}"#,
        )
        .unwrap();
        assert_eq!(c, 1);
        assert_eq!(trip.unwrap().window_s, 5);
    }

    #[test]
    fn errors_name_fields() {
        let cases = [
            (r#"{"steps":[]}"#, "steps"),
            (r#"{"steps":[{"min_duration_s":5}]}"#, "steps[0].weight"),
            (r#"{"steps":[{"weight":101}]}"#, "steps[0].weight"),
            (
                r#"{"steps":[{"weight":5}],"checks":[{"metric":"error_rate"}]}"#,
                "checks[0]",
            ),
            (
                r#"{"steps":[{"weight":5}],"checks":[{"metric":"error_rate","max":0.1,"max_ratio":2}]}"#,
                "checks[0]",
            ),
            (
                r#"{"steps":[{"weight":5}],"checks":[{"metric":"stat","max":1}]}"#,
                "checks[0].stat",
            ),
            (
                r#"{"steps":[{"weight":5}],"checks":[{"metric":"ab"}]}"#,
                "checks[0].metric",
            ),
            (
                r#"{"steps":[{"weight":5}],"candidate":"stable"}"#,
                "candidate",
            ),
            (r#"{"steps":[{"weight":5}],"trip":{"window_s":5}}"#, "trip"),
            (r#"{"steps":[{"weight":5}],"interval_s":0}"#, "interval_s"),
            (
                r#"{"steps":[{"weight":5}],"checks":[{"metric":"prediction_drift","max_ratio":2}]}"#,
                "checks[0].max",
            ),
            (
                r#"{"steps":[{"weight":5}],"checks":[{"metric":"prediction_drift","method":"js","max":1.5}]}"#,
                "checks[0].max",
            ),
            (
                r#"{"steps":[{"weight":5}],"checks":[{"metric":"error_rate","method":"psi","max":0.1}]}"#,
                "checks[0].method",
            ),
        ];
        for (json, field) in cases {
            assert_eq!(compile(json).unwrap_err().field, field, "{json}");
        }
        let kl = r#"{"steps":[{"weight":5}],"checks":[{"metric":"prediction_drift","method":"kl","max":0.1}]}"#;
        let e = serde_json::from_str::<PolicySpec>(kl).unwrap_err();
        assert!(e.to_string().contains("unknown variant `kl`"), "{e}");
    }
}
