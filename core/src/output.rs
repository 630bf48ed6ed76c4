//! Output health: the `output` section of a rollout, which says where in an answer
//! the prediction is and what range it must be in. The judgement itself is
//! `answer::health`; `plan::Rollout::health_rule` picks the rule for a rollout.
//! With `distribution`, the sampled predictions are also counted into bins
//! (`crate::distribution`) for the `prediction_drift` check.

use serde::{Deserialize, Serialize};

use crate::answer::{DEFAULT_MAX_BODY_BYTES, DEFAULT_POINTER};
use crate::distribution::{Distribution, DistributionSpec};
use crate::error::ConfigError;
use crate::fields::{check_pointer, check_size, weight_to_bp};

fn d_hundred() -> f64 {
    100.0
}

fn d_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

/// `rollouts[].output`: health of every (sampled) primary answer of the rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    #[serde(default = "d_pointer")]
    pub pointer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Percent of primary answers checked (their bodies are buffered to do so).
    #[serde(default = "d_hundred")]
    pub sample_percent: f64,
    #[serde(default = "d_max_body")]
    pub max_response_bytes: usize,
    /// Bins of the predictions, counted per variant and for the shadow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<DistributionSpec>,
}

fn d_pointer() -> String {
    DEFAULT_POINTER.into()
}

#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub pointer: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub sample_bp: u16,
    pub max_response_bytes: usize,
    pub distribution: Option<Distribution>,
}

impl OutputSpec {
    pub fn compile(&self) -> Result<Output, ConfigError> {
        check_pointer("pointer", &self.pointer)?;
        for (name, v) in [("min", self.min), ("max", self.max)] {
            if let Some(v) = v {
                if !v.is_finite() {
                    return Err(ConfigError::new(name, "must be a finite number"));
                }
            }
        }
        if let (Some(lo), Some(hi)) = (self.min, self.max) {
            if lo > hi {
                return Err(ConfigError::new("min", "must not exceed max"));
            }
        }
        check_size("max_response_bytes", self.max_response_bytes)?;
        let distribution = match &self.distribution {
            Some(d) => Some(d.compile().map_err(|e| e.within("distribution"))?),
            None => None,
        };
        Ok(Output {
            pointer: self.pointer.clone(),
            min: self.min,
            max: self.max,
            sample_bp: weight_to_bp("sample_percent", self.sample_percent)?,
            max_response_bytes: self.max_response_bytes,
            distribution,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_fields() {
        let e = serde_json::from_str::<OutputSpec>(r#"{"min":2,"max":1}"#)
            .unwrap()
            .compile()
            .unwrap_err();
        assert_eq!(e.field, "min");
        let e = serde_json::from_str::<OutputSpec>(r#"{"distribution":{"edges":[1,0]}}"#)
            .unwrap()
            .compile()
            .unwrap_err();
        assert_eq!(e.field, "distribution.edges[1]");
    }
}
