//! Progressive delivery, the pure part: what the sidecar's policy engine measures
//! and decides, with no I/O and no clock (times are passed in as unix ms). The plan
//! changes it leads to are `crate::transitions`.
//!
//! Layers, each importing only those above it in this list:
//!
//! - [`histogram`]: counter and histogram arithmetic (increases across resets,
//!   percentiles by interpolation within a bin).
//! - [`window`]: what one rollout's stats added up to over an analysis window.
//! - [`drift`]: PSI and Jensen-Shannon distance between two arms' prediction bins.
//! - [`checks`]: every `policy.checks[]` entry judged over a window as passed /
//!   failed / inconclusive / skipped.
//! - [`verdict`]: the interval's verdict and the streaks of failed and inconclusive
//!   intervals.
//! - [`steps`]: the step machine ([`decide`]): stay, advance, wait, complete, hold
//!   or roll back.
//! - [`reasons`]: the texts stored as reasons and shown by status.
//!
//! Every public item is also re-exported here (`rollout_core::analysis::X`), the
//! path the sidecar uses.

pub mod checks;
pub mod drift;
pub mod histogram;
pub mod reasons;
pub mod steps;
pub mod verdict;
pub mod window;

#[cfg(test)]
mod testkit;

pub use checks::{
    check_name, effective_checks, evaluate_check, evaluate_check_with, evaluate_checks, fmt_value,
    metric_str, update_baselines, AbOutcome, AbState, Baseline, CheckOutcome, CheckVerdict,
    EvalContext, DEFAULT_MIN_SAMPLES, DEFAULT_PERCENTILE,
};
pub use drift::{
    js_distance, method_label, psi, DriftDetail, PsiBand, DRIFT_MIN_SAMPLES, PSEUDO_COUNT,
};
pub use histogram::{counter_increase, Bin, Histogram};
pub use reasons::{
    advance_reason, complete_reason, hold_reason, next_action, rollback_reason, start_reason,
    wait_reason, NextAction, NextFacts,
};
pub use steps::{decide, traffic_noun, Action, StepFacts};
pub use verdict::{interval_verdict, step_traffic, IntervalVerdict, Streak};
pub use window::{
    stat_key, ShadowWindow, StatKind, StatWindow, VariantWindow, WindowData, CLASS_5XX,
    MAX_BIN_INDEX,
};
