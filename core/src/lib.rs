//! rollout-core: everything model-rollout decides, with no proxy-wasm import.
//! Compiled into the filter (wasm32-wasip1), the control sidecar and the CLI, so
//! every component computes the same assignment from the same plan.

pub mod abtest;
pub mod analysis;
pub mod config;
pub mod control;
pub mod correlation;
pub mod decide;
pub mod error;
pub mod experiment;
pub mod fields;
pub mod hash;
pub mod plan;
pub mod policy;
pub mod request;
pub mod shadow;
pub mod stats;
pub mod transitions;
pub mod wire;

pub use config::{parse_plugin_config, FilterConfig, PluginConfigSpec};
pub use decide::{decide, Decision, Reason, SubjectSource};
pub use error::{ConfigError, OpError, UnknownRollout};
pub use hash::{bucket, BUCKETS};
pub use plan::{parse_plan, Plan, PlanSpec, Rollout};
