//! `GET /metrics` (the counters of `http::counters`) and the middleware that counts
//! every answer by route template and status.

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::error::ApiError;
use crate::http::state::AppState;

/// `Content-Type` of the text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`.
pub async fn serve(State(state): State<AppState>) -> Response {
    let st = state.clone();
    let reads = state
        .policy_engine()
        .map(|e| e.source_reads())
        .unwrap_or_default();
    let text =
        tokio::task::spawn_blocking(move || st.metrics().render(st.store(), st.proxies(), &reads))
            .await;
    match text {
        Ok(Ok(text)) => {
            let mut resp = text.into_response();
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
            resp
        }
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(e) => ApiError::internal(format!("metrics task failed: {e}")).into_response(),
    }
}

/// Middleware counting every answer by route template and status.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let resp = next.run(req).await;
    state.metrics().http_request(&route, resp.status().as_u16());
    resp
}
