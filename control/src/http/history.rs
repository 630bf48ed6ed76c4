//! `GET /v1/history?limit=N&before=V`: plan versions, newest first (default 100, at
//! most 1,000 per page; `before=V`: only versions below V, the cursor of the next
//! page), each with its weights and, for versions the policy engine wrote, the
//! decision behind them. Plans are reduced to their weights as they are read, and the
//! read runs under a heavy-read permit.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::api::history::{weights_of, HistoryEntry};
use crate::engine::commit::AUTHOR;
use crate::http::error::ApiError;
use crate::http::extract::{parse_limit, parse_u64_param, query};
use crate::http::state::AppState;
use crate::store::blocking::blocking;
use crate::store::decisions::version_analyses;
use crate::store::plans::MAX_HISTORY;
use crate::store::StoreError;

/// History entries returned without `?limit=`.
pub const DEFAULT_HISTORY: usize = 100;

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
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    let q = query(q)?;
    let limit = parse_limit(q.limit.as_deref(), DEFAULT_HISTORY, MAX_HISTORY)?;
    let before = parse_u64_param("before", q.before.as_deref())?;
    let store = Arc::clone(state.store());
    let _permit = state.heavy_read().await;
    let (records, mut analyses) = blocking(move || {
        let records = store.history_map(limit, before, |r| HistoryEntry {
            analysis: None,
            weights: weights_of(&r.plan),
            version: r.version,
            time: r.time,
            unix_ms: r.unix_ms,
            reason: r.reason,
            author: r.author,
            op: r.op,
        })?;
        let policy_versions: Vec<u64> = records
            .iter()
            .filter(|r| r.author == AUTHOR)
            .map(|r| r.version)
            .collect();
        let analyses = version_analyses(&store, &policy_versions)?;
        Ok::<_, StoreError>((records, analyses))
    })
    .await?;
    Ok(Json(
        records
            .into_iter()
            .map(|mut e| {
                e.analysis = analyses.remove(&e.version);
                e
            })
            .collect(),
    ))
}
