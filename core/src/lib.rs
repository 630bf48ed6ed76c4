//! rollout-core: everything model-rollout decides, with no proxy-wasm import.
//! Compiled into the filter (wasm32-wasip1), the control sidecar and the CLI, so
//! every component computes the same assignment from the same plan.
//!
//! Layers (a module imports only from layers below its own; no cycles):
//!
//! 1. Leaves: [`error`] (ConfigError, UnknownRollout, OpError), [`hash`],
//!    [`correlation`], [`identity`] (verified claims and peer fields), [`request`], [`stats`] (stat names, reason enums), [`abtest`],
//!    [`json_at`] (only what JSON pointers need from a document), [`answer`]
//!    (predictions, output health, the comparison of two answers; on [`json_at`]);
//!    [`msprt`] (sequential A/B tests, on [`abtest`]'s summaries).
//! 2. [`fields`]: the validators every section shares; [`headers`]: which headers a
//!    configured role may name.
//! 3. The plan's sections, each with its schema, validation and compiled form:
//!    [`shadow`], [`output`] (with its prediction bins, [`distribution`]),
//!    [`policy`], [`experiment`], a variant's [`model`] metadata, [`notify`] (webhooks
//!    and gate webhooks, read by the sidecar only).
//! 4. [`plan`]: the plan document, compiled from the sections; lookups.
//! 5. [`decide`](mod@decide) (the variant of a request) and [`wire`] (what the filter and the
//!    sidecar send each other).
//! 6. [`control`] and [`config`] (live plans, the plugin configuration) and
//!    [`analysis`] (the policy engine's rules).
//! 7. [`transitions`]: every plan change, by a person or by the policy engine.

pub mod abtest;
pub mod analysis;
pub mod answer;
pub mod config;
pub mod control;
pub mod correlation;
pub mod decide;
pub mod distribution;
pub mod error;
pub mod experiment;
pub mod fields;
pub mod hash;
pub mod headers;
pub mod identity;
pub mod json_at;
pub mod model;
pub mod msprt;
pub mod notify;
pub mod output;
pub mod plan;
pub mod policy;
pub mod request;
pub mod shadow;
pub mod stats;
pub mod transitions;
pub mod trust;
pub mod wire;

pub use config::{parse_plugin_config, FilterConfig, PluginConfigSpec};
pub use decide::{decide, Decision, Reason, SubjectSource};
pub use error::{ConfigError, OpError, UnknownRollout};
pub use hash::{bucket, BUCKETS};
pub use plan::{parse_plan, Plan, PlanSpec, Rollout};
