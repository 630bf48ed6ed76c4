//! Where the policy engine gets its numbers: a [`MetricsSource`] answers, every
//! analysis tick, what the filter (and any stat a `stat` check names) counted since
//! the previous tick, as [`series::TickData`].
//!
//! One file per backend, like Flagger's `pkg/metrics/providers`:
//!
//! - [`envoy_admin`]: the Envoys' admin endpoints (`--envoy-admin`), parsed by
//!   [`envoy_stats`] (JSON or Prometheus text) into cumulative [`snapshot`]s whose
//!   differences are the tick's increases.
//! - [`prometheus`]: a Prometheus server scraping every proxy (`--prometheus-url`),
//!   queried with the PromQL of [`promql`] (answers read by [`prom_answer`]):
//!   fleet-wide increases over the range since the previous read.
//!
//! A new backend is a new file here implementing [`MetricsSource`], and a case in
//! [`factory::open`]; the engine does not change.

pub mod envoy_admin;
pub mod envoy_stats;
pub mod factory;
pub mod prom_answer;
pub mod prometheus;
pub mod promql;
pub mod series;
pub mod snapshot;

use crate::api::status::EnvoyStatus;
use crate::engine::source::series::{Selector, TickData};

/// A backend of the engine's numbers.
pub trait MetricsSource: Send {
    /// Reads the backend once and returns what happened since the previous read:
    /// counter and histogram increases, gauge values, added up over every instance
    /// read. `selectors` are the stats the plan's `stat` checks name (besides the
    /// filter's own). The first read is a baseline (increases of 0). Blocking.
    fn read(&mut self, selectors: &[Selector]) -> TickData;

    /// Each instance's last answer, for `GET /v1/status` (`policy_engine.envoys`).
    fn statuses(&self) -> Vec<EnvoyStatus>;

    /// Reads so far by result: `(source, result, count)` for
    /// `rollout_control_metrics_source_reads_total` (`ok`, `timeout`, `unreachable`,
    /// `error`, `empty`).
    fn read_counts(&self) -> Vec<(&'static str, &'static str, u64)> {
        Vec::new()
    }
}
