//! The headers of every answer that carries a plan version: `ETag: "v<N>"`,
//! `X-Plan-Version`, `Cache-Control: no-cache`.

use axum::http::header::{CACHE_CONTROL, ETAG};
use axum::http::{HeaderMap, HeaderValue};
use rollout_core::wire::{etag, PLAN_VERSION_RESPONSE_HEADER};

/// The headers of a plan answer of `version`.
pub fn plan_headers(version: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        h.insert(ETAG, v);
    }
    h.insert(PLAN_VERSION_RESPONSE_HEADER, HeaderValue::from(version));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h
}
