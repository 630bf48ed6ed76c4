//! Reports computed from the store's data: what the HTTP layer serves and the policy
//! engine judges. No HTTP, no printing: the CLI prints the same shapes (`api`).
//!
//! - [`shadow`]: the shadow report of a rollout's comparison records;
//! - [`experiment`]: the A/B report of a rollout's experiment and its verdict.

pub mod experiment;
pub mod shadow;
