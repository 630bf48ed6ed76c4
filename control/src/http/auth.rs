//! Write authorization: with a token configured, every PUT / POST needs
//! `Authorization: Bearer <token>` (401 with `WWW-Authenticate: Bearer` otherwise);
//! reads stay open (the filter polls without credentials).

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rollout_core::wire::bearer_token;

use crate::http::error::ApiError;
use crate::http::state::AppState;

/// Byte-wise comparison whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        // Compare against b cyclically so the loop length depends on `a` only.
        let y = if b.is_empty() {
            0
        } else {
            b.get(i % b.len()).copied().unwrap_or(0)
        };
        diff |= x ^ y;
    }
    diff == 0
}

/// Middleware: lets reads through, and writes with the right token.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = state.token() else {
        return next.run(req).await;
    };
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let ok = presented.is_some_and(|t| constant_time_eq(t.as_bytes(), token));
    if ok {
        return next.run(req).await;
    }
    let message = if presented.is_some() {
        "wrong bearer token"
    } else {
        "this call changes the plan: it needs Authorization: Bearer <token>"
    };
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "", message).into_response();
    resp.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"secret2", b"secret"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(!constant_time_eq(b"x", b""));
        assert!(constant_time_eq(b"", b""));
    }
}
