//! rollout-control: the model-rollout control sidecar and its CLI.
//!
//! - [`server`]: the plan API (axum); its module doc lists every endpoint.
//! - [`store`]: durable, versioned plan history in redb.
//! - [`serve`]: process wiring (store, initial plan, listener, signals).
//! - [`cli`] / [`client`]: the subcommands that talk to a running sidecar.
//!
//! Plan operations themselves are pure functions in `rollout_core::ops`.

pub mod api;
pub mod cli;
pub mod client;
pub mod error;
pub mod ordered;
pub mod proxies;
pub mod serve;
pub mod server;
pub mod store;
pub mod timefmt;

#[doc(hidden)]
pub mod testutil;

pub use server::{app, AppState};
pub use store::Store;
