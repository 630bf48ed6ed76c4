//! `GET /live` (200 while the process serves) and `GET /ready` (200 when the store
//! is open, its latest record reads back and writes work; else 503 naming the cause).
//! While writes fail (disk full), each `/ready` also retries the store's recovery.

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
    let checked = blocking(move || {
        store.check_writable()?;
        store.check_readable()
    });
    match checked.await {
        Ok(count) => Json(serde_json::json!({
            "status": "ready",
            "versions": count,
            "version": state.store().current().map(|c| c.version()),
        }))
        .into_response(),
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "", e.to_string()).into_response(),
    }
}
