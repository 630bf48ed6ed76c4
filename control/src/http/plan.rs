//! The plan: `GET /v1/plan` (what the filter polls: ETag, 304, proxy tracking of
//! proxy-role polls),
//! `PUT /v1/plan`, `GET /v1/plan/versions/{v}`, `POST /v1/plan/versions/{v}/restore`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use rollout_core::wire::{PollIdentity, PLAN_VERSION_HEADER, PROXY_HEADER};

use crate::api::plan::parse_plan_document;
use crate::http::change::{commit, WriteMeta, WriteQuery};
use crate::http::error::ApiError;
use crate::http::extract::{body_bytes, parse_version};
use crate::http::headers::plan_headers;
use crate::http::roles::Caller;
use crate::http::state::AppState;
use crate::store::blocking::blocking;
use crate::store::{Op, Record};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/plan", get(get_plan).put(put_plan))
        .route("/v1/plan/versions/{version}", get(get_version))
        .route("/v1/plan/versions/{version}/restore", post(restore))
}

/// `If-None-Match` (weak comparison): `*` or a list of entity tags.
fn none_match_hits(headers: &HeaderMap, current: &str) -> bool {
    headers.get_all(IF_NONE_MATCH).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == current)
        })
    })
}

async fn get_plan(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // Only a proven proxy is recorded: an anonymous poll is served, and changes nothing.
    let may_record = caller.is_some_and(|Extension(c)| c.may_identify_proxy());
    if let Some(id) = PollIdentity::from_headers(header(PROXY_HEADER), header(PLAN_VERSION_HEADER))
        .filter(|_| may_record)
    {
        state
            .proxies()
            .record(&id.proxy, id.plan_version, Instant::now());
    }
    let Some(cur) = state.store().current() else {
        return ApiError::no_plan().into_response();
    };
    let mut h = plan_headers(cur.version());
    if let Ok(v) = HeaderValue::from_str(&cur.etag) {
        h.insert(axum::http::header::ETAG, v);
    }
    if none_match_hits(&headers, &cur.etag) {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    (StatusCode::OK, h, cur.plan_json.clone()).into_response()
}

async fn put_plan(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let meta = WriteMeta::new(&headers, query)?;
    let body = body_bytes(body)?;
    let plan = parse_plan_document(&body)?;
    commit(
        &state,
        meta,
        Op::Put,
        Box::new(move |_| Ok((plan, "replace the plan".to_string()))),
    )
    .await
}

async fn get_version(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let version = parse_version(&raw)?;
    let record = stored_version(&state, version).await?;
    let mut h = plan_headers(version);
    h.remove(CACHE_CONTROL);
    Ok((h, Json(record.plan)).into_response())
}

/// A stored version; 404 when there is none, naming the history retention when it
/// dropped the version (versions run 1..=latest without a gap until it does).
async fn stored_version(state: &AppState, version: u64) -> Result<Record, ApiError> {
    let latest = state.store().current().map_or(0, |c| c.version());
    let store = Arc::clone(state.store());
    let record = blocking(move || store.get(version)).await?;
    match record {
        Some(r) => Ok(r),
        None if (1..latest).contains(&version) => {
            let keep = state.store().history_keep();
            Err(ApiError::not_found(
                "version",
                format!(
                    "plan version {version} was dropped by the history retention \
                     (--history-keep {keep}: the {keep} newest versions are kept, and those \
                     proxies still run)"
                ),
            ))
        }
        None => Err(ApiError::not_found(
            "version",
            format!("no plan version {version}"),
        )),
    }
}

async fn restore(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let meta = WriteMeta::new(&headers, query)?;
    body_bytes(body)?;
    let version = parse_version(&raw)?;
    let record = stored_version(&state, version).await?;
    let plan = record.plan;
    commit(
        &state,
        meta,
        Op::Restore,
        Box::new(move |_| Ok((plan, format!("restore v{version}")))),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags() {
        let mut h = HeaderMap::new();
        assert!(!none_match_hits(&h, "\"v3\""));
        h.insert(IF_NONE_MATCH, HeaderValue::from_static("\"v2\", W/\"v3\""));
        assert!(none_match_hits(&h, "\"v3\""));
        assert!(!none_match_hits(&h, "\"v4\""));
    }
}
