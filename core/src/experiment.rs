//! A/B experiments: the `experiment` section of a rollout. The filter records which
//! variant served each (sampled) correlation id; the sidecar joins those records
//! with outcomes posted to `/v1/feedback` and judges the difference.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::fields::weight_to_bp;

fn d_alpha() -> f64 {
    0.05
}
fn d_horizon() -> u64 {
    1000
}
fn d_record() -> f64 {
    100.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ExperimentMetric {
    /// Rewards are 0/1 outcomes; compared with a two-proportion z-test.
    #[default]
    Conversion,
    /// Rewards are real numbers; compared with Welch's z-test on the means.
    Mean,
}

/// `rollouts[].experiment`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    #[serde(default)]
    pub metric: ExperimentMetric,
    /// Two-sided significance level.
    #[serde(default = "d_alpha")]
    pub alpha: f64,
    /// Fixed horizon: outcomes per variant before any verdict is given (no peeking).
    #[serde(default = "d_horizon")]
    pub samples_per_variant: u64,
    /// Percent of requests whose assignment the filter records.
    #[serde(default = "d_record")]
    pub record_percent: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    pub metric: ExperimentMetric,
    pub alpha: f64,
    pub samples_per_variant: u64,
    pub record_bp: u16,
}

impl ExperimentSpec {
    pub fn compile(&self) -> Result<Experiment, ConfigError> {
        if !(self.alpha > 0.0 && self.alpha < 0.5) {
            return Err(ConfigError::new(
                "alpha",
                "must be between 0 and 0.5 (exclusive)",
            ));
        }
        if !(10..=1_000_000).contains(&self.samples_per_variant) {
            return Err(ConfigError::new(
                "samples_per_variant",
                "must be between 10 and 1000000 (the sidecar keeps at most 1,000,000 outcomes per variant)",
            ));
        }
        Ok(Experiment {
            metric: self.metric,
            alpha: self.alpha,
            samples_per_variant: self.samples_per_variant,
            record_bp: weight_to_bp("record_percent", self.record_percent)?,
        })
    }
}
