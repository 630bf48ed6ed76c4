//! The answer of the ingestion calls that store items (`POST /v1/shadow-records`,
//! `POST /v1/assignments`).

use serde::{Deserialize, Serialize};

/// Answer of the ingestion calls that store items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub stored: u64,
    /// Assignments only: items refused (an id already assigned to another variant).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refused: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
