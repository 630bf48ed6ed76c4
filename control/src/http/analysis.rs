//! `GET /v1/rollouts/{name}/analysis?limit=N&version=V`: the policy's stored
//! decisions (newest first; `version`: only the one that wrote that plan version), the
//! live window series and the policy status.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::api::analysis::AnalysisReport;
use crate::engine::status::rollout_status;
use crate::http::error::ApiError;
use crate::http::extract::{parse_limit, query};
use crate::http::state::AppState;
use crate::store::blocking::blocking;
use crate::store::decisions::{read_decisions, DECISIONS_PER_ROLLOUT};
use crate::util::timefmt::now_unix_ms;

/// Points of the live series in `GET /v1/rollouts/{name}/analysis`.
const LIVE_POINTS: usize = 120;
/// Decisions returned without `?limit=`, and at most.
const DEFAULT_DECISIONS: usize = 20;
const MAX_DECISIONS: usize = DECISIONS_PER_ROLLOUT;

#[derive(Debug, Deserialize)]
struct AnalysisQuery {
    limit: Option<String>,
    version: Option<String>,
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/rollouts/{name}/analysis", get(get_analysis))
}

/// `GET /v1/rollouts/{name}/analysis`.
async fn get_analysis(
    State(state): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<AnalysisQuery>, QueryRejection>,
) -> Result<Json<AnalysisReport>, ApiError> {
    let q = query(q)?;
    let limit = parse_limit(q.limit.as_deref(), DEFAULT_DECISIONS, MAX_DECISIONS)?;
    let version = match q.version.as_deref() {
        None => None,
        Some(s) => Some(s.trim_start_matches('v').parse::<u64>().map_err(|_| {
            ApiError::bad_request("version", format!("{s:?} is not a plan version"))
        })?),
    };
    let cur = state.store().current().ok_or_else(ApiError::no_plan)?;
    let plan = &cur.record.plan;
    let r = plan.rollout_named(&name)?;
    let engine = state.policy_engine();
    let now = now_unix_ms();
    let status = rollout_status(engine.as_deref(), r, now);
    let interval_ms = r
        .policy
        .as_ref()
        .map_or(60_000, |p| p.interval_s.saturating_mul(1000));
    let span = interval_ms.saturating_mul(10).max(60_000);
    let (series, window) = match &engine {
        Some(e) => {
            let last = e.last_window(&name);
            (
                e.points(&name, now.saturating_sub(span), now, LIVE_POINTS),
                last,
            )
        }
        None => (Vec::new(), None),
    };
    let store = Arc::clone(state.store());
    let n = name.clone();
    // Filtering by version scans the kept decisions.
    let scan = if version.is_some() {
        MAX_DECISIONS
    } else {
        limit
    };
    let decisions = blocking(move || read_decisions(&store, &n, scan, version)).await?;
    Ok(Json(AnalysisReport {
        rollout: name,
        plan_version: cur.version(),
        engine_running: engine.is_some(),
        progress: r.progress.clone(),
        status,
        window,
        series,
        decisions: decisions.into_iter().take(limit).collect(),
    }))
}
