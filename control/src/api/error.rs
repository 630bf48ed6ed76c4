//! The API's one error shape: `{"error": "<message>", "field": "<json path or empty>"}`.
//! The status code that goes with it is the HTTP layer's (`http::error`).

use serde::{Deserialize, Serialize};

/// The JSON body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default)]
    pub field: String,
}
