//! rollout-control: the model-rollout control sidecar and its CLI.
//!
//! - [`server`]: the plan API (axum); its module doc lists every endpoint.
//! - [`store`]: durable, versioned plan history in redb.
//! - [`serve`]: process wiring (store, initial plan, listener, signals).
//! - [`cli`] / [`client`]: the subcommands that talk to a running sidecar.
//! - [`records`]: shadow comparison records; [`experiments`]: A/B assignments,
//!   feedback and verdicts; [`metrics`]: `GET /metrics`; [`validate`]: offline
//!   checks of plugin configurations and plans.
//! - [`policy`]: the progressive-delivery engine (steps, checks, rollback), reading
//!   Envoy stats through [`scrape`] into the time series of [`window`]; its pure
//!   rules are `rollout_core::analysis`.
//!
//! Plan transitions themselves (a person's operations and the policy engine's
//! steps) are pure functions in `rollout_core::transitions`.

pub mod api;
pub mod cli;
pub mod engine;
pub mod http;
pub mod report;
pub mod serve;
pub mod store;
pub mod util;
pub mod validate;

#[doc(hidden)]
pub mod testutil;

pub use http::app;
pub use http::state::AppState;
pub use store::Store;
