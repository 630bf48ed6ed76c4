//! The ingest permit: a POST to an ingestion call (`/v1/shadow-records`,
//! `/v1/assignments`, `/v1/feedback`) buffers up to 4 MiB of body and parses it
//! (parsed predictions take up to about 16 times their text), so at most
//! `--ingest-concurrency` of them are read, parsed and stored at once. The permit is
//! taken before the body is read ([`crate::http::body_timeout`] runs inside this
//! layer) and held until the answer. A request that gets none within [`INGEST_WAIT`]
//! (or the body timeout, if shorter) is answered 503 with `Retry-After: 1`, naming
//! the cause, and counted in `rollout_control_ingest_refused_total{path}`; its body
//! is read and discarded a frame at a time (within the body timeout and
//! [`MAX_INGEST_BODY`]), so the client gets the answer rather than a reset, and
//! nothing of it is kept. Other requests (plan polls, reports) never wait for it.

use std::pin::Pin;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Body as _;

use crate::http::counters::INGEST_PATHS;
use crate::http::error::ApiError;
use crate::http::extract::MAX_INGEST_BODY;
use crate::http::state::AppState;

/// Longest wait for a permit before the request is refused.
pub const INGEST_WAIT: Duration = Duration::from_secs(2);

/// Middleware: an ingestion POST runs under a permit or is refused with 503.
pub async fn permit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if *req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(index) = INGEST_PATHS.iter().position(|p| *p == req.uri().path()) else {
        return next.run(req).await;
    };
    let limits = *state.limits();
    let wait = INGEST_WAIT.min(limits.body_timeout);
    let started = tokio::time::Instant::now();
    if let Some(_permit) = state.ingest_permit(wait).await {
        return next.run(req).await;
    }
    state.metrics().ingest_refused(index);
    let drained = tokio::time::timeout_at(
        started + limits.body_timeout,
        discard(req.into_body(), MAX_INGEST_BODY),
    )
    .await
    .unwrap_or(false);
    let mut resp = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "",
        format!(
            "too many ingest requests at once: all {} ingest permits (--ingest-concurrency) \
             stayed busy for {} ms; retry later",
            limits.ingest_concurrency,
            wait.as_millis()
        ),
    )
    .into_response();
    let headers = resp.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    if !drained {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Reads `body` to its end, keeping nothing; false if it is broken off or longer
/// than `limit` bytes.
async fn discard(mut body: Body, limit: usize) -> bool {
    let mut seen = 0usize;
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            None => return true,
            Some(Err(_)) => return false,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    seen = seen.saturating_add(data.len());
                    if seen > limit {
                        return false;
                    }
                }
            }
        }
    }
}
