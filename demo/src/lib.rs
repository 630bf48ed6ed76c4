//! `rollout-demo`: demo model server speaking the Open Inference Protocol
//! (KServe v2 REST) with fault knobs, a TCP blackhole for failure tests, and a
//! traffic generator. See `demo/README.md`.

pub mod blackhole;
pub mod cli;
pub mod faults;
pub mod model;
pub mod predict;
pub mod rng;
pub mod traffic;

pub use model::{app, AppState, ModelConfig};
