//! The progressive-delivery engine: walks each rollout with a `policy` through its
//! steps, reading the proxies' metrics, and rolls the candidate back the moment its
//! checks fail. The rules themselves are pure functions in `rollout_core::analysis`
//! and every plan change is `rollout_core::transitions`; this module runs them on a
//! timer against the store.
//!
//! | file | concept |
//! |---|---|
//! | [`runner`] | start / stop: the task that runs a tick every `--analysis-tick-ms` ([`options`]) |
//! | [`tick`] | one tick, step by step: read the source, follow the rollouts, evaluate the due ones, commit transitions, store decisions |
//! | [`source`] | where the numbers come from: the [`source::MetricsSource`] trait, one file per backend (`envoy_admin`, `prometheus`) |
//! | [`rollout_metrics`], [`stat_selectors`] | the filter's metrics and the `stat` checks' stats in a tick, per rollout |
//! | [`clock`] | the engine's time: the wall clock read once at start, advanced monotonically |
//! | [`window`] | the per-rollout time series and the windows the checks judge |
//! | [`evaluate`] | judging a due rollout: checks, streaks, baselines, `analysis::decide` |
//! | [`decision`] | the decision records and their reasons |
//! | [`commit`] | committing a transition, only if the rollout did not change meanwhile |
//! | [`proxies_behind`] | no advance while a polling proxy runs an older plan |
//! | [`ab`] | where the `ab` check gets the experiment's verdict |
//! | [`state`] | what the engine keeps in memory (shared with status and analysis) |
//! | [`status`] | a rollout's policy in `GET /v1/status` |
//!
//! Decisions are stored by `store::decisions` (a transition durably at once, the
//! others made durable at least every 10 s); everything else is in memory only.
//!
//! A new check is core's (`rollout_core::analysis`); if it reads a new metric of the
//! filter, `rollout_metrics` and `window` carry it into the windows. A new metrics
//! backend is a new file in `source/`.

pub mod ab;
pub mod clock;
pub mod commit;
pub mod decision;
pub mod evaluate;
pub mod options;
pub mod proxies_behind;
pub mod rollout_metrics;
pub mod runner;
pub mod source;
pub mod stat_selectors;
pub mod state;
pub mod status;
pub mod tick;
pub mod window;
