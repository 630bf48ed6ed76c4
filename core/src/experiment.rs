//! A/B experiments: the `experiment` section of a rollout. The filter records which
//! variant served each (sampled) correlation id; the sidecar joins those records
//! with outcomes posted to `/v1/feedback` and judges the difference, either at a
//! fixed horizon (`stopping: fixed`, the default) or sequentially (`stopping:
//! sequential`, the mSPRT of `crate::msprt`: readable at any time, decided as soon
//! as it is significant).

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

/// When an experiment may give its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Stopping {
    /// Nothing is significant before `samples_per_variant` outcomes per variant; the
    /// test then reads exactly the first `samples_per_variant` of each.
    #[default]
    Fixed,
    /// Always-valid p-values (mSPRT): the verdict may be read after every outcome and
    /// is final the first time it is significant; `samples_per_variant` is the most
    /// the experiment runs (undecided there: no difference).
    Sequential,
}

impl Stopping {
    pub fn as_str(self) -> &'static str {
        match self {
            Stopping::Fixed => "fixed",
            Stopping::Sequential => "sequential",
        }
    }
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
    /// `fixed` (default) or `sequential`.
    #[serde(default, skip_serializing_if = "is_fixed")]
    pub stopping: Stopping,
    /// Sequential only: tau^2 of the mSPRT's mixture, in the metric's squared units
    /// (default: 1 % of the pooled per-outcome variance, see `crate::msprt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixture_variance: Option<f64>,
}

fn is_fixed(s: &Stopping) -> bool {
    *s == Stopping::Fixed
}

#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    pub metric: ExperimentMetric,
    pub alpha: f64,
    pub samples_per_variant: u64,
    pub record_bp: u16,
    pub stopping: Stopping,
    pub mixture_variance: Option<f64>,
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
        if let Some(t) = self.mixture_variance {
            if self.stopping != Stopping::Sequential {
                return Err(ConfigError::new(
                    "mixture_variance",
                    "only with stopping: sequential",
                ));
            }
            if !(t.is_finite() && t > 0.0) {
                return Err(ConfigError::new(
                    "mixture_variance",
                    "must be a finite number > 0 (tau^2, in the metric's squared units)",
                ));
            }
        }
        Ok(Experiment {
            metric: self.metric,
            alpha: self.alpha,
            samples_per_variant: self.samples_per_variant,
            record_bp: weight_to_bp("record_percent", self.record_percent)?,
            stopping: self.stopping,
            mixture_variance: self.mixture_variance,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(json: &str) -> Result<Experiment, ConfigError> {
        serde_json::from_str::<ExperimentSpec>(json)
            .unwrap()
            .compile()
    }

    #[test]
    fn stopping_options() {
        let x = compile(r#"{"metric":"conversion"}"#).unwrap();
        assert_eq!(x.stopping, Stopping::Fixed);
        let x = compile(r#"{"stopping":"sequential","mixture_variance":0.0004}"#).unwrap();
        assert_eq!(
            (x.stopping, x.mixture_variance),
            (Stopping::Sequential, Some(0.0004))
        );
        for (json, field) in [
            (r#"{"mixture_variance":0.01}"#, "mixture_variance"),
            (
                r#"{"stopping":"sequential","mixture_variance":0}"#,
                "mixture_variance",
            ),
            (r#"{"alpha":0.7}"#, "alpha"),
        ] {
            assert_eq!(compile(json).unwrap_err().field, field, "{json}");
        }
        assert!(serde_json::from_str::<ExperimentSpec>(r#"{"stopping":"whenever"}"#).is_err());
        // the default is not written back
        let spec: ExperimentSpec = serde_json::from_str("{}").unwrap();
        assert!(!serde_json::to_string(&spec).unwrap().contains("stopping"));
    }
}
