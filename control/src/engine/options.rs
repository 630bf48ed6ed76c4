//! How `serve` runs the policy engine (`--envoy-admin`, `--stats-format`,
//! `--prometheus-url`, `--prometheus-timeout-ms`, `--prometheus-min-range-ms`,
//! `--analysis-tick-ms`).

use std::time::Duration;

use crate::api::status::StatsFormat;
use crate::engine::clock::WallClock;
use crate::engine::source::prometheus::PrometheusOptions;

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Envoy admin base URLs (`http://127.0.0.1:9901`).
    pub envoy_admin: Vec<String>,
    pub stats_format: StatsFormat,
    /// Read Prometheus instead of the Envoys (`--prometheus-url`).
    pub prometheus: Option<PrometheusOptions>,
    /// How often the source is read (and due evaluations run).
    pub tick: Duration,
    /// The wall clock the engine's monotonic clock is anchored to (read once at start).
    pub wall_clock: WallClock,
}
