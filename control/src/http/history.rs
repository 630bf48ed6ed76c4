//! `GET /v1/history?limit=N&before=V`: plan versions, newest first (default 100, at
//! most 1,000 per page; `before=V`: only versions below V, the cursor of the next
//! page), each with its weights and, for versions the policy engine wrote, the
//! decision behind them. Plans are reduced to their weights as they are read, and the
//! read runs under a heavy-read permit.
//!
//! A page also holds at most `--max-report-bytes` of JSON (weights of up to 64
//! rollouts × 16 variants and a reason of up to 1 KiB make an entry up to about
//! 100 KB): it is read [`CHUNK`] versions at a time and ends early when the next
//! entry would pass that size, saying so with `X-History-Next-Before: V` (the cursor
//! of the rest: pass it as `before`).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rollout_core::wire::json_len;
use serde::Deserialize;

use crate::api::history::{weights_of, HistoryEntry};
use crate::engine::commit::AUTHOR;
use crate::http::error::ApiError;
use crate::http::extract::{parse_limit, parse_u64_param, query};
use crate::http::state::AppState;
use crate::store::blocking::blocking;
use crate::store::decisions::version_analyses;
use crate::store::plans::MAX_HISTORY;
use crate::store::{Store, StoreError};

/// History entries returned without `?limit=`.
pub const DEFAULT_HISTORY: usize = 100;
/// Versions read per read transaction while a page is built.
pub const CHUNK: usize = 50;
/// Set when a page ended early at `--max-report-bytes`: the `before` of the rest.
pub const NEXT_BEFORE_HEADER: &str = "x-history-next-before";

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/history", get(history))
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    limit: Option<String>,
    before: Option<String>,
}

/// `GET /v1/history?limit=N`.
async fn history(
    State(state): State<AppState>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = parse_limit(q.limit.as_deref(), DEFAULT_HISTORY, MAX_HISTORY)?;
    let before = parse_u64_param("before", q.before.as_deref())?;
    let store = Arc::clone(state.store());
    let max_bytes = state.limits().max_report_bytes;
    let _permit = state.heavy_read().await;
    let (records, mut analyses, next) = blocking(move || {
        let (records, next) = page(&store, limit, before, max_bytes)?;
        let policy_versions: Vec<u64> = records
            .iter()
            .filter(|r| r.author == AUTHOR)
            .map(|r| r.version)
            .collect();
        let analyses = version_analyses(&store, &policy_versions)?;
        Ok::<_, StoreError>((records, analyses, next))
    })
    .await?;
    let mut headers = HeaderMap::new();
    if let Some(v) = next {
        headers.insert(NEXT_BEFORE_HEADER, HeaderValue::from(v));
    }
    Ok((
        headers,
        Json(
            records
                .into_iter()
                .map(|mut e| {
                    e.analysis = analyses.remove(&e.version);
                    e
                })
                .collect::<Vec<_>>(),
        ),
    )
        .into_response())
}

/// Up to `limit` entries older than `before`, newest first, of at most `max_bytes` of
/// JSON together (at least one), read [`CHUNK`] at a time; and, when the bytes ended
/// the page before the versions did, the cursor of the rest. Blocking.
fn page(
    store: &Store,
    limit: usize,
    before: Option<u64>,
    max_bytes: usize,
) -> Result<(Vec<HistoryEntry>, Option<u64>), StoreError> {
    let mut out: Vec<HistoryEntry> = Vec::new();
    let mut bytes = 0usize;
    let mut cursor = before;
    while out.len() < limit {
        let chunk = store.history_map(CHUNK.min(limit - out.len()), cursor, |r| HistoryEntry {
            analysis: None,
            weights: weights_of(&r.plan),
            version: r.version,
            time: r.time,
            unix_ms: r.unix_ms,
            reason: r.reason,
            author: r.author,
            op: r.op,
        })?;
        if chunk.is_empty() {
            break;
        }
        for e in chunk {
            bytes = bytes.saturating_add(json_len(&e).saturating_add(1));
            if bytes > max_bytes && !out.is_empty() {
                return Ok((out, cursor));
            }
            cursor = Some(e.version);
            out.push(e);
        }
    }
    Ok((out, None))
}
