//! The answer of the ingestion calls that store items (`POST /v1/shadow-records`,
//! `POST /v1/assignments`).

use serde::{Deserialize, Serialize};

/// Answer of the ingestion calls that store items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub stored: u64,
}
