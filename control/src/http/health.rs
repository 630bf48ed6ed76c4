//! `GET /live` (200 while the process serves) and `GET /ready` (200 when the store
//! is open and its latest record reads back, else 503).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::store::blocking::blocking;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
}

async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "live"}))
}

async fn ready(State(state): State<AppState>) -> Response {
    let store = Arc::clone(state.store());
    match blocking(move || store.check_readable()).await {
        Ok(count) => Json(serde_json::json!({
            "status": "ready",
            "versions": count,
            "version": state.store().current().map(|c| c.version()),
        }))
        .into_response(),
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "", e.to_string()).into_response(),
    }
}
