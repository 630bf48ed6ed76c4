//! Who may call what: one bearer credential per role ([`Role`]), each from its own
//! file (`--operator-token-file`, `--proxy-token-file`, `--feedback-token-file`,
//! `--read-token-file`; `--token-file` is the operator's).
//!
//! | role | may |
//! |---|---|
//! | operator | change the plan (PUT / POST on the plan and the rollouts), reset experiments; read |
//! | proxy | post shadow records and assignments; identify its plan polls (the proxies table) |
//! | feedback | post outcomes (`POST /v1/feedback`) |
//! | read | every GET but the open ones |
//!
//! Open to anyone: `GET /v1/plan` (an unidentified poll, or one whose proxy role is not
//! proven, is served but not recorded), `/live`, `/ready`, `/metrics`. Other reads are
//! open unless a read credential is configured (then the read or operator token).
//!
//! With no credential configured at all every call is allowed (a loopback demo). With
//! any configured, a call needs its role's token: 401 (`WWW-Authenticate: Bearer`)
//! without a valid token, 403 naming the role for a token of another role or a role
//! without a credential. Tokens are compared in constant time; a role's file may hold
//! several tokens (rotation) and is read again when it changes ([`crate::util::token::TokenFile`]).

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rollout_core::wire::bearer_token;

use crate::http::error::ApiError;
use crate::http::roles::{need, Caller, Need, Role};
use crate::http::state::AppState;

fn unauthorized(message: String) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "", message).into_response();
    resp.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

fn forbidden(message: String) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, "", message).into_response()
}

/// Middleware: admits a call by [`need`] and the presented token, and hands the
/// [`Caller`] to the handler (a request extension).
pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let creds = state.credentials();
    if creds.is_empty() {
        req.extensions_mut().insert(Caller::Unchecked);
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let role = presented.and_then(|t| creds.role_of(t.as_bytes()));
    let caller = role.map_or(Caller::Anonymous, Caller::Role);
    let what = format!("{} {}", req.method(), req.uri().path());
    let wanted = match need(req.method(), req.uri().path()) {
        Need::Open => None,
        Need::Read if !creds.has(Role::Read) => None,
        Need::Read => Some(Role::Read),
        Need::Role(r) => Some(r),
    };
    if let Some(wanted) = wanted {
        let ok = role == Some(wanted) || (wanted == Role::Read && role == Some(Role::Operator));
        if !ok {
            return match role {
                None if presented.is_some() => unauthorized(format!(
                    "{what} needs the {} role: unknown bearer token",
                    wanted.name()
                )),
                None => unauthorized(format!(
                    "{what} needs the {} role: send Authorization: Bearer <token>",
                    wanted.name()
                )),
                Some(_) if !creds.has(wanted) => forbidden(format!(
                    "{what} needs the {} role, and no {} credential is configured ({})",
                    wanted.name(),
                    wanted.name(),
                    wanted.flag()
                )),
                Some(r) => forbidden(format!(
                    "{what} needs the {} role; this token has the {} role",
                    wanted.name(),
                    r.name()
                )),
            };
        }
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}
