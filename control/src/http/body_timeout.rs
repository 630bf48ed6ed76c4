//! The body read timeout: a request with a body (PUT, POST) must deliver all of it
//! within the limit, or it is answered 408 and the connection closed. The body is
//! read here, up to the largest body any route takes ([`MAX_INGEST_BODY`]; more is
//! 413), so a client that stalls mid-body holds nothing past the deadline; the
//! routes' own limits still apply to the bytes read.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::error::ApiError;
use crate::http::extract::MAX_INGEST_BODY;

/// Reads the body of a PUT / POST within `timeout`, then runs the rest of the stack.
pub async fn read_body(timeout: Duration, req: Request, next: Next) -> Response {
    if !matches!(*req.method(), Method::PUT | Method::POST) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_INGEST_BODY)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
            format!("the request body is larger than {MAX_INGEST_BODY} bytes (or broken off)"),
        )
        .into_response(),
        Err(_) => {
            let mut resp = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "",
                format!(
                    "the request body did not arrive within {} ms",
                    timeout.as_millis()
                ),
            )
            .into_response();
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            resp
        }
    }
}
