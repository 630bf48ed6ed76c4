//! Shadow comparison records: the filter posts a sample of its per-request
//! comparisons (every disagreement up to a per-minute budget, agreements at
//! `shadow.records.sample_percent`); the sidecar keeps them durably and reports on
//! them.
//!
//! | method | path | answer |
//! |---|---|---|
//! | POST | `/v1/shadow-records` | `{"proxy", "records": [...]}` (at most 1,000 records, 4 MiB): 200 `{"stored": n}` |
//! | GET  | `/v1/shadow-report?rollout=R[&since_ms=T][&limit=N]` | agreement, verdicts, latency percentiles, recent disagreements |
//!
//! Storage: table `shadow_records` in the store's redb file, keyed by
//! `(rollout, unix_ms, seq)` (`seq` a store-wide counter) -> the record as JSON;
//! `shadow_record_counts`: rollout -> records kept. At most
//! [`MAX_RECORDS_PER_ROLLOUT`] per rollout: a batch that goes beyond it drops the
//! oldest (smallest `unix_ms`) in the same transaction. Each batch is one write
//! transaction, fsynced before the answer.
//!
//! Also home of the helpers the ingestion endpoints share (`experiments` uses them):
//! body limits, JSON parsing with the offending field named, blocking store calls.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use rollout_core::wire::ShadowRecordBatch;
use rollout_core::ConfigError;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::api::ingest::Stored;
use crate::api::shadow::{LatencySummary, ShadowReport, SAMPLE_NOTE};
use crate::error::ApiError;
use crate::server::AppState;
use crate::store::blocking::blocking;
use crate::store::shadow_records::store_records;

/// Largest body of an ingestion call (shadow records, assignments, feedback).
pub const MAX_INGEST_BODY: usize = 4 * 1024 * 1024;
/// Most items (records, assignments, outcomes) in one ingestion call.
pub const MAX_BATCH: usize = rollout_core::wire::MAX_BATCH;
/// Recent disagreements a report lists without `?limit=`.
pub const DEFAULT_DISAGREEMENTS: usize = 50;
/// Most recent disagreements a report lists.
pub const MAX_DISAGREEMENTS: usize = 1000;

// ---------------------------------------------------------------------------
// Helpers shared with `experiments`

/// The body, or 413 beyond [`MAX_INGEST_BODY`].
pub(crate) fn ingest_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let status = e.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the request body is larger than {MAX_INGEST_BODY} bytes")
        } else {
            e.body_text()
        };
        ApiError::new(status, "", message)
    })
}

/// A JSON object body; errors name the field (`records[3].agree`).
pub(crate) fn parse_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(ApiError::bad_request(
                "",
                "the request body is empty: a JSON object is expected",
            ))
        }
        Some(b'{') => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "",
                "the request body must be a JSON object",
            ))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| name_missing_field(ConfigError::from_serde(e)))?;
    de.end()
        .map_err(|e| ApiError::bad_request("", format!("trailing data after the JSON: {e}")))?;
    Ok(value)
}

/// serde reports a missing field at its parent (`records[2]`): name the field itself
/// (`records[2].unix_ms`).
fn name_missing_field(mut e: ConfigError) -> ConfigError {
    let missing = e
        .message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
        .map(str::to_string);
    if let Some(name) = missing {
        e.field = if e.field.is_empty() {
            name
        } else {
            format!("{}.{name}", e.field)
        };
        e.message = "missing".to_string();
    }
    e
}

/// A batch is at most [`MAX_BATCH`] items.
pub(crate) fn check_batch(field: &str, len: usize) -> Result<(), ApiError> {
    Ok(rollout_core::wire::check_batch(field, len)?)
}

pub(crate) fn check_correlation_id(field: &str, id: &str) -> Result<(), ApiError> {
    Ok(rollout_core::fields::check_correlation_id(field, id)?)
}

/// A rollout or variant name, by the plan's rules.
pub(crate) fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    rollout_core::fields::check_name(field, name)
        .map_err(|e| ApiError::bad_request(e.field, e.message))
}

/// 400 for a query the extractor refused.
pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("", e.body_text()))
}

/// An optional unsigned query parameter.
pub(crate) fn parse_u64_param(field: &str, raw: Option<&str>) -> Result<Option<u64>, ApiError> {
    raw.map(|s| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(field, format!("{s:?} is not a whole number")))
    })
    .transpose()
}

// ---------------------------------------------------------------------------
// Records

// ---------------------------------------------------------------------------
// HTTP

/// The routes of this module (merged into `server::app`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/shadow-records",
            post(post_records).layer(DefaultBodyLimit::max(MAX_INGEST_BODY)),
        )
        .route("/v1/shadow-report", get(report))
}

async fn post_records(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Stored>, ApiError> {
    let body = ingest_body(body)?;
    let batch: ShadowRecordBatch = parse_object(&body)?;
    batch.validate()?;
    let ShadowRecordBatch { proxy, mut records } = batch;
    for r in &mut records {
        r.proxy.clone_from(&proxy);
    }
    let store = Arc::clone(state.store());
    let stored = blocking(move || store_records(&store, &records)).await?;
    state.metrics().shadow_records_stored(stored);
    Ok(Json(Stored { stored }))
}

#[derive(Debug, Deserialize)]
struct ReportQuery {
    rollout: Option<String>,
    since_ms: Option<String>,
    limit: Option<String>,
}

/// `shadow.records.sample_percent` of a rollout in the current plan.
fn sample_percent(state: &AppState, rollout: &str) -> Option<f64> {
    let cur = state.store().current()?;
    let r = cur
        .record
        .plan
        .rollouts
        .iter()
        .find(|r| r.name == rollout)?;
    r.shadow.as_ref().map(|s| s.records.sample_percent)
}

async fn report(
    State(state): State<AppState>,
    q: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Json<ShadowReport>, ApiError> {
    let q = query(q)?;
    let rollout = q
        .rollout
        .ok_or_else(|| ApiError::bad_request("rollout", "missing: give ?rollout=NAME"))?;
    check_name("rollout", &rollout)?;
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
    let sp = sample_percent(&state, &rollout);
    let store = Arc::clone(state.store());
    let report = blocking(move || {
        crate::report::shadow::shadow_report(&store, &rollout, since_ms, limit, sp)
    })
    .await?;
    Ok(Json(report))
}

// ---------------------------------------------------------------------------
// CLI output

fn pct(x: Option<f64>) -> String {
    x.map_or("-".to_string(), |x| format!("{:.2}%", x * 100.0))
}

fn opt<T: ToString>(x: Option<T>) -> String {
    x.map_or("-".to_string(), |x| x.to_string())
}

/// Up to `max` characters of a prediction's JSON.
fn short_json(v: &Value, max: usize) -> String {
    let s = v.to_string();
    if s.chars().count() <= max {
        return s;
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// The human form of a report: summary, latency table, recent disagreements.
pub fn print_report(out: &mut impl std::io::Write, r: &ShadowReport) -> std::io::Result<()> {
    writeln!(
        out,
        "rollout {}: {} shadow records{}",
        r.rollout,
        r.records,
        r.since_ms
            .map(|s| format!(" since {}", crate::util::timefmt::rfc3339_ms(s)))
            .unwrap_or_default()
    )?;
    writeln!(out, "  ({SAMPLE_NOTE})")?;
    if r.records == 0 {
        return Ok(());
    }
    writeln!(
        out,
        "agreement {} of the records ({} agree, {} disagree); estimated over all comparisons: {}",
        pct(r.agreement_rate),
        r.agree,
        r.disagree,
        pct(r.estimated_agreement_rate)
    )?;
    let verdicts: Vec<String> = r
        .by_verdict
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    writeln!(out, "by verdict: {}", verdicts.join(" "))?;
    writeln!(out)?;
    let lat = |name: &str, l: &LatencySummary| {
        vec![
            name.to_string(),
            opt(l.p50),
            opt(l.p90),
            opt(l.p99),
            l.mean.map_or("-".to_string(), |m| format!("{m:.1}")),
        ]
    };
    crate::cli::table(
        out,
        &["LATENCY MS", "P50", "P90", "P99", "MEAN"],
        &[
            lat("primary", &r.latency.primary),
            lat("shadow", &r.latency.shadow),
        ],
    )?;
    writeln!(out)?;
    if r.recent_disagreements.is_empty() {
        return writeln!(out, "no disagreement recorded");
    }
    writeln!(out, "recent disagreements, newest first:")?;
    let rows: Vec<Vec<String>> = r
        .recent_disagreements
        .iter()
        .map(|d| {
            vec![
                crate::util::timefmt::rfc3339_ms(d.unix_ms),
                d.correlation_id.clone(),
                d.variant.clone(),
                d.verdict.clone(),
                format!("{}/{}", d.primary_status, d.shadow_status),
                short_json(&d.primary_prediction, 40),
                short_json(&d.shadow_prediction, 40),
            ]
        })
        .collect();
    crate::cli::table(
        out,
        &[
            "TIME",
            "CORRELATION ID",
            "VARIANT",
            "VERDICT",
            "STATUS P/S",
            "PRIMARY",
            "SHADOW",
        ],
        &rows,
    )
}

/// `rollout-control shadow-report --rollout R [--limit N] [--since-ms T]`.
pub fn run_report(
    client: &crate::client::Client,
    out: &mut impl std::io::Write,
    json: bool,
    rollout: &str,
    limit: Option<usize>,
    since_ms: Option<u64>,
) -> anyhow::Result<()> {
    rollout_core::fields::check_name("--rollout", rollout).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut path = format!("/v1/shadow-report?rollout={rollout}");
    if let Some(l) = limit {
        path.push_str(&format!("&limit={l}"));
    }
    if let Some(s) = since_ms {
        path.push_str(&format!("&since_ms={s}"));
    }
    let reply = client.get(&path)?;
    if json {
        writeln!(out, "{}", reply.body)?;
    } else {
        print_report(out, &reply.json()?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_predictions() {
        assert_eq!(short_json(&serde_json::json!([0.5]), 10), "[0.5]");
        assert_eq!(short_json(&serde_json::json!("abcdefghijkl"), 6), "\"abcd…");
    }
}
