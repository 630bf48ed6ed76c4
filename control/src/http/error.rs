//! The API's one error shape: `{"error": "<message>", "field": "<json path or empty>"}`
//! with a status code that says whose fault it is.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rollout_core::{ConfigError, OpError, UnknownRollout};

use crate::api::error::ErrorBody;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: String,
}

impl ApiError {
    pub fn new(status: StatusCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: field.into(),
        }
    }

    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, field, message)
    }

    pub fn not_found(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, field, message)
    }

    pub fn no_plan() -> Self {
        ApiError::not_found("", "no plan has been stored yet")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "", message)
    }
}

/// A validation error is the client's: 400 naming the field.
impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        // serde_path_to_error says "?" where it cannot tell (malformed JSON): no field.
        let field = if e.field == "?" {
            String::new()
        } else {
            e.field
        };
        ApiError::bad_request(field, e.message)
    }
}

/// An unknown rollout is 404, field `rollout`.
impl From<UnknownRollout> for ApiError {
    fn from(e: UnknownRollout) -> Self {
        ApiError::not_found(UnknownRollout::FIELD, e.to_string())
    }
}

/// A plan transition: 404 for an unknown rollout, else 400 naming the field.
impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::UnknownRollout(u) => u.into(),
            OpError::Invalid(c) => c.into(),
        }
    }
}

/// A storage failure (disk full, I/O error) is 503 naming the cause: the store
/// recovers by itself once the disk does, so the client may retry.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "", e.to_string())
            }
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
                field: self.field,
            }),
        )
            .into_response()
    }
}
