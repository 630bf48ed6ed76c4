//! model-rollout: the proxy-wasm filter. Glue only: the root context compiles the
//! configuration, request contexts apply `rollout_core`'s decisions, and every host
//! call goes through `host::Host`.
//!
//! Layers (a module imports only from layers below its own; no cycles):
//!
//! 1. [`host`]: the one adapter to the proxy (and a mock for tests); [`trip`]: a
//!    worker's trip window; [`answer`]: the one check of an answer, primary or shadow.
//! 2. [`metrics`]: every stat, defined per plan, counted without host calls.
//! 3. [`rng`]: the worker's random pool (every draw); [`active`]: the configuration
//!    in force with its metrics and trip windows.
//! 4. [`hub`]: shadow jobs, joins and record buffers, shared by request and root
//!    contexts; [`trip_share`]: a trip announced to and followed by every worker.
//! 5. [`http`]: the request context. [`dispatcher`]: the root's shadow dispatcher and
//!    record poster. [`poller`]: the root's plan poller (lease, poll, publish, adopt).
//! 6. [`root`]: the root context, which installs the configuration and routes the
//!    callbacks to the parts above.

pub mod active;
pub mod answer;
pub mod dispatcher;
pub mod host;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod poller;
pub mod rng;
pub mod root;
pub mod trip;
pub mod trip_share;

/// The commit the filter was built from (set by build.rs).
pub const GIT_HASH: &str = env!("MODEL_ROLLOUT_GIT_HASH");

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    use proxy_wasm::types::LogLevel;
    std::panic::set_hook(Box::new(|info| {
        // A panic aborts the VM (panic = "abort"); say why at the loudest level first.
        let _ = proxy_wasm::hostcalls::log(LogLevel::Critical, &format!("model-rollout panic: {info}"));
    }));
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::Root::new(host::ProxyHost, context_id))
    });
}}

#[cfg(test)]
mod tests;
