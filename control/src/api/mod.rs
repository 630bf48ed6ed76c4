//! The JSON shapes of the HTTP API: what the server writes and the CLI reads, one
//! file per resource. Plain serde types on top of `rollout_core` (the plan, the
//! analysis results): nothing here knows the store, the engine or HTTP; the engine
//! and the reports produce these shapes. What the filter sends and reads (the poll's
//! headers and ETag, shadow records, assignments) is `rollout_core::wire`.

pub mod analysis;
pub mod change;
pub mod error;
pub mod events;
pub mod experiment;
pub mod history;
pub mod ingest;
pub mod plan;
pub mod shadow;
pub mod status;
