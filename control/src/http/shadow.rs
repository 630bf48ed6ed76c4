//! Shadow comparison records: `POST /v1/shadow-records` (the filter's batches,
//! `rollout_core::wire::ShadowRecordBatch`, at most 1,000 records and 4 MiB: 200
//! `{"stored": n}` after the durable commit) and
//! `GET /v1/shadow-report?rollout=R[&since_ms=T][&limit=N]` (agreement, verdicts,
//! latency percentiles, recent disagreements: `report::shadow`).
//!
//! Each arriving record is kept within `--max-record-bytes` of JSON
//! (`ShadowRecord::fit`): a larger one has its predictions replaced by
//! `{"truncated_from_bytes": N, "prefix": "<its JSON, cut>"}` and is counted in
//! `rollout_control_shadow_records_truncated_total`. Every other field of a record is
//! bounded by its validation (names, ids, cluster, proxy id) and unknown fields are
//! not kept, so a stored record is never larger than that setting.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rollout_core::fields;
use rollout_core::model::ModelSpec;
use rollout_core::wire::{json_len, ShadowRecordBatch};
use serde::Deserialize;

use crate::api::ingest::Stored;
use crate::http::error::ApiError;
use crate::http::extract::{ingest_body, parse_object, parse_u64_param, query, MAX_INGEST_BODY};
use crate::http::state::AppState;
use crate::report::shadow::{shadow_report, Bounds};
use crate::store::blocking::blocking;
use crate::store::error::StoreError;
use crate::store::shadow_records::store_records;
use crate::util::timefmt::now_unix_ms;

/// Recent disagreements a report lists without `?limit=`.
pub const DEFAULT_DISAGREEMENTS: usize = 50;
/// Most recent disagreements a report lists.
pub const MAX_DISAGREEMENTS: usize = 1000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/shadow-records",
            post(post_records).layer(DefaultBodyLimit::max(MAX_INGEST_BODY)),
        )
        .route("/v1/shadow-report", get(report))
}

/// `POST /v1/shadow-records`.
async fn post_records(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Stored>, ApiError> {
    let body = ingest_body(body)?;
    let max = state.limits().max_record_bytes;
    // Parsing up to 4 MiB of predictions and sizing each record is CPU work: on the
    // blocking pool, so plan polls keep the runtime's threads (`--ingest-concurrency`
    // bounds how many run).
    let (records, cut) = blocking(move || prepare(&body, max)).await?;
    let store = Arc::clone(state.store());
    let stored = blocking(move || store_records(&store, &records)).await?;
    state.metrics().shadow_records_stored(stored);
    state.metrics().shadow_records_truncated(cut);
    Ok(Json(Stored { stored, refused: 0 }))
}

#[derive(Debug, Deserialize)]
struct ReportQuery {
    rollout: Option<String>,
    since_ms: Option<String>,
    limit: Option<String>,
}

/// `shadow.records.sample_percent` of a rollout in the current plan, and its
/// variants' model metadata.
fn plan_facts(state: &AppState, rollout: &str) -> (Option<f64>, BTreeMap<String, ModelSpec>) {
    let Some(cur) = state.store().current() else {
        return (None, BTreeMap::new());
    };
    let Ok(r) = cur.record.plan.rollout_named(rollout) else {
        return (None, BTreeMap::new());
    };
    let models = r
        .variants
        .iter()
        .filter_map(|v| Some((v.name.clone(), v.model.clone()?)))
        .collect();
    (r.shadow.as_ref().map(|s| s.records.sample_percent), models)
}

/// A batch's records, parsed, validated and each cut to `max` bytes of JSON, and how
/// many were cut.
fn prepare(
    body: &[u8],
    max: usize,
) -> Result<(Vec<rollout_core::wire::ShadowRecord>, u64), ApiError> {
    let batch: ShadowRecordBatch = parse_object(body)?;
    batch.validate()?;
    let ShadowRecordBatch { proxy, mut records } = batch;
    // The sender's clock orders retention: a time ahead of ours (u64::MAX would be
    // kept for ever) becomes our receive time.
    let now = now_unix_ms();
    let mut cut = 0u64;
    for r in &mut records {
        r.proxy.clone_from(&proxy);
        r.unix_ms = r.unix_ms.min(now);
        if r.fit(max).1 {
            cut += 1;
        }
    }
    Ok((records, cut))
}

/// `GET /v1/shadow-report`.
async fn report(
    State(state): State<AppState>,
    q: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let rollout = q
        .rollout
        .ok_or_else(|| ApiError::bad_request("rollout", "missing: give ?rollout=NAME"))?;
    fields::check_name("rollout", &rollout)?;
    let since_ms = parse_u64_param("since_ms", q.since_ms.as_deref())?;
    let limit = match parse_u64_param("limit", q.limit.as_deref())? {
        None => DEFAULT_DISAGREEMENTS,
        Some(n) if n <= MAX_DISAGREEMENTS as u64 => n as usize,
        Some(n) => {
            return Err(ApiError::bad_request(
                "limit",
                format!("{n} is more than {MAX_DISAGREEMENTS}"),
            ))
        }
    };
    let (sp, models) = plan_facts(&state, &rollout);
    let store = Arc::clone(state.store());
    let bounds = Bounds {
        limit,
        max_bytes: state.limits().max_report_bytes,
    };
    let _permit = state.heavy_read().await;
    // Computed and serialized off the runtime's threads, into a buffer of the
    // answer's exact size (no doubling as it grows): the report and its text are
    // the only copies (`report::shadow` on the bound).
    let body = blocking(move || {
        let mut report = shadow_report(&store, &rollout, since_ms, bounds, sp)?;
        report.models = models;
        let mut buf = Vec::with_capacity(json_len(&report));
        serde_json::to_writer(&mut buf, &report)
            .map_err(|e| StoreError::Db(format!("cannot serialize the report: {e}")))?;
        Ok::<_, StoreError>(buf)
    })
    .await?;
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}
