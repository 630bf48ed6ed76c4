//! Cross-site write protection: a browser tells where a request comes from
//! (`Sec-Fetch-Site`, `Origin`); a PUT / POST that a browser marks as coming from
//! another site is refused with 403 before authentication, whatever credential it
//! carries. Requests without these headers (the CLI, the proxies, curl) are not
//! browsers' and pass. The status page's own writes are same-origin.

use axum::extract::Request;
use axum::http::header::{HOST, ORIGIN};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::error::ApiError;

/// Why a write is cross-site, if it is.
fn cross_site(req: &Request) -> Option<String> {
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return Some(format!("Sec-Fetch-Site: {site}"));
        }
    }
    let origin = h.get(ORIGIN)?.to_str().unwrap_or("?");
    let host = h.get(HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    (origin_host.is_empty() || origin_host != host)
        .then(|| format!("Origin {origin} is not {host}"))
}

/// Middleware: refuses cross-site writes.
pub async fn same_origin_writes(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    match cross_site(&req) {
        None => next.run(req).await,
        Some(why) => ApiError::new(
            StatusCode::FORBIDDEN,
            "",
            format!("cross-site write refused ({why})"),
        )
        .into_response(),
    }
}
