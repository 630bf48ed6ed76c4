//! `GET /v1/history?limit=N`: plan versions, newest first (default 100, at most
//! 10,000), each with its weights and, for versions the policy engine wrote, the
//! decision behind them.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::api::history::{weights_of, HistoryEntry};
use crate::engine::commit::AUTHOR;
use crate::http::error::ApiError;
use crate::http::extract::{parse_limit, query};
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
}

/// `GET /v1/history?limit=N`.
async fn history(
    State(state): State<AppState>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    let q = query(q)?;
    let limit = parse_limit(q.limit.as_deref(), DEFAULT_HISTORY, MAX_HISTORY)?;
    let store = Arc::clone(state.store());
    let (records, mut analyses) = blocking(move || {
        let records = store.history(limit)?;
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
            .map(|r| HistoryEntry {
                analysis: analyses.remove(&r.version),
                weights: weights_of(&r.plan),
                version: r.version,
                time: r.time,
                unix_ms: r.unix_ms,
                reason: r.reason,
                author: r.author,
                op: r.op,
            })
            .collect(),
    ))
}
