//! model-rollout: the proxy-wasm filter. Glue only — the root context compiles the
//! configuration, request contexts apply `rollout_core`'s decisions, and every host
//! call goes through `host::Host`.

pub mod host;
pub mod http;
pub mod metrics;
pub mod rng;
pub mod root;
pub mod shadow;
pub mod trip;

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
