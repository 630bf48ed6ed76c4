//! Picks the metrics source the engine's options ask for: Prometheus when
//! `--prometheus-url` is given, else the Envoy admin endpoints (`--envoy-admin`).

use std::time::Duration;

use crate::engine::options::EngineOptions;
use crate::engine::source::envoy_admin::EnvoyAdmin;
use crate::engine::source::prometheus::PrometheusSource;
use crate::engine::source::MetricsSource;

/// The source of `opts`; `timeout` bounds each request to an Envoy admin endpoint
/// (Prometheus has its own, `--prometheus-timeout-ms`).
pub fn open(opts: &EngineOptions, timeout: Duration) -> anyhow::Result<Box<dyn MetricsSource>> {
    if let Some(p) = &opts.prometheus {
        return Ok(Box::new(PrometheusSource::new(p.clone())?));
    }
    Ok(Box::new(EnvoyAdmin::new(
        &opts.envoy_admin,
        opts.stats_format,
        timeout,
    )?))
}
