//! Picks the metrics source the engine's options ask for.

use std::time::Duration;

use crate::engine::options::EngineOptions;
use crate::engine::source::envoy_admin::EnvoyAdmin;
use crate::engine::source::MetricsSource;

/// The source of `opts`; `timeout` bounds each request to a backend.
pub fn open(opts: &EngineOptions, timeout: Duration) -> anyhow::Result<Box<dyn MetricsSource>> {
    Ok(Box::new(EnvoyAdmin::new(
        &opts.envoy_admin,
        opts.stats_format,
        timeout,
    )?))
}
