//! A/B experiments: which variant served each (sampled) correlation id, outcomes
//! keyed by correlation id, and the fixed-horizon verdict of a rollout's
//! `experiment` section.
//!
//! | method | path | answer |
//! |---|---|---|
//! | POST | `/v1/assignments` | `{"proxy", "assignments": [{"correlation_id", "rollout", "variant", "unix_ms"}]}` (at most 1,000, 4 MiB): 200 `{"stored": n}` |
//! | POST | `/v1/feedback` | `{"outcomes": [{"correlation_id", "reward"}]}` or one `{"correlation_id", "reward"}`: 200 `{"accepted", "unknown", "dropped"}` |
//! | GET  | `/v1/experiments/{rollout}` | per-variant counts, rates or means with confidence intervals, comparisons against the first variant, status `collecting` / `complete` |
//! | POST | `/v1/experiments/{rollout}/reset` | deletes the rollout's assignments and outcomes: 200 `{"assignments_deleted", "outcomes_deleted"}` |
//!
//! The statistics are `rollout_core::abtest`. The analysis is fixed-horizon: a
//! variant's verdict uses exactly its first `samples_per_variant` outcomes in
//! arrival order, and nothing is significant before every variant has that many.
//!
//! Storage, in the store's redb file (one write transaction per call, fsynced
//! before the answer):
//!
//! - `assignments`: correlation id -> (rollout, variant, unix_ms, seq);
//!   `assignment_order`: (rollout, unix_ms, seq) -> correlation id;
//!   `assignment_counts`: rollout -> n. At most [`MAX_ASSIGNMENTS_PER_ROLLOUT`] per
//!   rollout; beyond it the oldest (smallest `unix_ms`) are dropped.
//! - `outcomes`: correlation id -> (rollout, variant, seq, reward);
//!   `outcome_order`: (rollout, variant, seq) -> (correlation id, reward);
//!   `outcome_counts`: (rollout, variant) -> n. `seq` is the arrival order. At
//!   most [`MAX_OUTCOMES_PER_VARIANT`] per variant; later ones are `dropped` (they
//!   could never enter a supported analysis). Outcomes stay when their assignment
//!   is dropped.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use rollout_core::experiment::ExperimentMetric;
use rollout_core::wire::AssignmentBatch;
use rollout_core::Rollout;
use serde::{Deserialize, Serialize};

use crate::api::experiment::{
    ExperimentReport, FeedbackRequest, FeedbackResult, Outcome, ResetResult, VerdictStatus,
};
use crate::api::ingest::Stored;
use crate::error::ApiError;
use crate::records::{
    check_batch, check_correlation_id, check_name, ingest_body, parse_object, MAX_INGEST_BODY,
};
use crate::server::AppState;
use crate::store::assignments::store_assignments;
use crate::store::blocking::blocking;
use crate::store::experiment_reset::reset;
use crate::store::outcomes::{check_reward, store_outcomes};

// ---------------------------------------------------------------------------
// Assignments

// ---------------------------------------------------------------------------
// Feedback

/// Where an outcome sits in the request body, for error fields.
#[derive(Debug, Clone, Copy)]
enum Shape {
    Batch,
    Single,
}

impl Shape {
    fn field(self, i: usize, name: &str) -> String {
        match self {
            Shape::Batch => format!("outcomes[{i}].{name}"),
            Shape::Single => name.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------
// Reset

// ---------------------------------------------------------------------------
// Analysis

// ---------------------------------------------------------------------------
// HTTP

/// The routes of this module (merged into `server::app`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/assignments",
            post(post_assignments).layer(DefaultBodyLimit::max(MAX_INGEST_BODY)),
        )
        .route(
            "/v1/feedback",
            post(post_feedback).layer(DefaultBodyLimit::max(MAX_INGEST_BODY)),
        )
        .route("/v1/experiments/{rollout}", get(get_experiment))
        .route("/v1/experiments/{rollout}/reset", post(post_reset))
}

async fn post_assignments(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Stored>, ApiError> {
    let body = ingest_body(body)?;
    let batch: AssignmentBatch = parse_object(&body)?;
    batch.validate()?;
    let assignments = batch.assignments;
    let store = Arc::clone(state.store());
    let stored = blocking(move || store_assignments(&store, &assignments)).await?;
    state.metrics().assignments_stored(stored);
    Ok(Json(Stored { stored }))
}

/// Experiment metric of every rollout with an `experiment` section in the current plan.
fn plan_metrics(state: &AppState) -> HashMap<String, ExperimentMetric> {
    state
        .store()
        .current()
        .map(|c| {
            c.record
                .plan
                .rollouts
                .iter()
                .filter_map(|r| r.experiment.as_ref().map(|x| (r.name.clone(), x.metric)))
                .collect()
        })
        .unwrap_or_default()
}

async fn post_feedback(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<FeedbackResult>, ApiError> {
    let body = ingest_body(body)?;
    let parsed: FeedbackRequest = parse_object(&body)?;
    let (outcomes, shape) =
        match parsed {
            FeedbackRequest {
                outcomes: Some(o),
                correlation_id: None,
                reward: None,
            } => (o, Shape::Batch),
            FeedbackRequest {
                outcomes: None,
                correlation_id: Some(id),
                reward: Some(reward),
            } => (
                vec![Outcome {
                    correlation_id: id,
                    reward,
                }],
                Shape::Single,
            ),
            FeedbackRequest {
                outcomes: None,
                correlation_id: Some(_),
                reward: None,
            } => return Err(ApiError::bad_request("reward", "missing")),
            FeedbackRequest {
                outcomes: None,
                correlation_id: None,
                reward: Some(_),
            } => return Err(ApiError::bad_request("correlation_id", "missing")),
            _ => return Err(ApiError::bad_request(
                "",
                "give either \"outcomes\" (a list) or one \"correlation_id\" with its \"reward\"",
            )),
        };
    check_batch("outcomes", outcomes.len())?;
    for (i, o) in outcomes.iter().enumerate() {
        check_correlation_id(&shape.field(i, "correlation_id"), &o.correlation_id)?;
        check_reward(|| shape.field(i, "reward"), o.reward, None)?;
    }
    let metrics = plan_metrics(&state);
    let store = Arc::clone(state.store());
    let result = blocking(move || {
        store_outcomes::<ApiError>(&store, &outcomes, &|i| shape.field(i, "reward"), &metrics)
    })
    .await?;
    state
        .metrics()
        .feedback(result.accepted, result.unknown, result.dropped);
    Ok(Json(result))
}

/// The rollout of the current plan, compiled; 404 without a plan or for an unknown name.
fn current_rollout(state: &AppState, name: &str) -> Result<Rollout, ApiError> {
    let cur = state.store().current().ok_or_else(ApiError::no_plan)?;
    let plan = cur
        .record
        .plan
        .compile()
        .map_err(|e| ApiError::internal(format!("the stored plan does not compile: {e}")))?;
    Ok(plan.rollout_named(name)?.clone())
}

async fn get_experiment(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ExperimentReport>, ApiError> {
    let rollout = current_rollout(&state, &name)?;
    if rollout.experiment.is_none() {
        return Err(ApiError::not_found(
            "experiment",
            format!("rollout {name:?} has no experiment section"),
        ));
    }
    let store = Arc::clone(state.store());
    let report = blocking(move || crate::report::experiment::report(&store, &rollout))
        .await?
        .ok_or_else(|| ApiError::not_found("experiment", "no experiment section"))?;
    Ok(Json(report))
}

async fn post_reset(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ResetResult>, ApiError> {
    ingest_body(body)?;
    check_name("rollout", &name)?;
    let store = Arc::clone(state.store());
    let who = name.clone();
    let result = blocking(move || reset(&store, &name)).await?;
    eprintln!(
        "rollout-control: experiment data of {who} reset: {} assignments, {} outcomes deleted",
        result.assignments_deleted, result.outcomes_deleted
    );
    Ok(Json(result))
}

// ---------------------------------------------------------------------------
// CLI output

fn pct(x: Option<f64>) -> String {
    x.map_or("-".to_string(), |x| format!("{:.2}%", x * 100.0))
}

fn num(x: Option<f64>) -> String {
    x.map_or("-".to_string(), |x| format!("{x:.4}"))
}

/// The human form of a report.
pub fn print_report(out: &mut impl std::io::Write, r: &ExperimentReport) -> std::io::Result<()> {
    let conversion = r.metric == ExperimentMetric::Conversion;
    let status = match r.status {
        VerdictStatus::Collecting => "collecting",
        VerdictStatus::Complete => "complete",
    };
    writeln!(
        out,
        "experiment {}: {} metric, alpha {}, fixed horizon {} outcomes per variant: {status}",
        r.rollout,
        if conversion { "conversion" } else { "mean" },
        r.alpha,
        r.samples_per_variant
    )?;
    if let Some(n) = &r.note {
        writeln!(out, "note: {n}")?;
    }
    writeln!(out)?;
    let level = format!("{}% CI", ((1.0 - r.alpha) * 1000.0).round() / 10.0);
    let fmt = |x: Option<f64>| if conversion { pct(x) } else { num(x) };
    let rows: Vec<Vec<String>> = r
        .variants
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.count.to_string(),
                v.analysed.to_string(),
                fmt(v.estimate()),
                match (v.ci_low, v.ci_high) {
                    (Some(l), Some(h)) => format!("[{}, {}]", fmt(Some(l)), fmt(Some(h))),
                    _ => "-".to_string(),
                },
            ]
        })
        .collect();
    crate::cli::table(
        out,
        &[
            "VARIANT",
            "OUTCOMES",
            "ANALYSED",
            if conversion { "CONVERSION" } else { "MEAN" },
            &level,
        ],
        &rows,
    )?;
    if !r.comparisons.is_empty() {
        writeln!(out)?;
        let rows: Vec<Vec<String>> = r
            .comparisons
            .iter()
            .map(|c| {
                vec![
                    format!("{} vs {}", c.variant, c.against),
                    match c.diff {
                        Some(d) if conversion => format!("{:+.2}pp", d * 100.0),
                        Some(d) => format!("{d:+.4}"),
                        None => "-".to_string(),
                    },
                    c.lift
                        .map_or("-".to_string(), |l| format!("{:+.1}%", l * 100.0)),
                    c.z.map_or("-".to_string(), |z| format!("{z:.3}")),
                    match c.p_value {
                        Some(p) if p < 0.0001 => "<0.0001".to_string(),
                        Some(p) => format!("{p:.4}"),
                        None => "-".to_string(),
                    },
                    if c.significant { "yes" } else { "no" }.to_string(),
                    c.winner.clone().unwrap_or_else(|| "-".to_string()),
                ]
            })
            .collect();
        crate::cli::table(
            out,
            &[
                "COMPARISON",
                "DIFF",
                "LIFT",
                "Z",
                "P-VALUE",
                "SIGNIFICANT",
                "WINNER",
            ],
            &rows,
        )?;
    }
    writeln!(out)?;
    let verdict = match (r.status, r.significant, r.candidate_better) {
        (VerdictStatus::Collecting, _, _) => {
            let missing: Vec<String> = r
                .variants
                .iter()
                .filter(|v| v.count < r.samples_per_variant)
                .map(|v| format!("{} {}/{}", v.name, v.count, r.samples_per_variant))
                .collect();
            format!(
                "collecting: no significance before every variant has {} outcomes ({})",
                r.samples_per_variant,
                missing.join(", ")
            )
        }
        (VerdictStatus::Complete, true, Some(true)) => format!(
            "{} is better than {} (significant at alpha {})",
            r.candidate, r.control, r.alpha
        ),
        (VerdictStatus::Complete, true, _) => format!(
            "{} is worse than {} (significant at alpha {})",
            r.candidate, r.control, r.alpha
        ),
        (VerdictStatus::Complete, false, _) => format!(
            "no significant difference between {} and {} at alpha {}",
            r.candidate, r.control, r.alpha
        ),
    };
    writeln!(out, "verdict: {verdict}")
}

// ---------------------------------------------------------------------------
// CLI commands

fn rollout_segment(rollout: &str) -> anyhow::Result<&str> {
    rollout_core::fields::check_name("--rollout", rollout).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(rollout)
}

/// `rollout-control experiment --rollout R`.
pub fn run_experiment(
    client: &crate::client::Client,
    out: &mut impl std::io::Write,
    json: bool,
    rollout: &str,
) -> anyhow::Result<()> {
    let reply = client.get(&format!("/v1/experiments/{}", rollout_segment(rollout)?))?;
    if json {
        writeln!(out, "{}", reply.body)?;
    } else {
        print_report(out, &reply.json()?)?;
    }
    Ok(())
}

/// `rollout-control reset-experiment --rollout R`.
pub fn run_reset(
    client: &crate::client::Client,
    out: &mut impl std::io::Write,
    json: bool,
    rollout: &str,
) -> anyhow::Result<()> {
    let path = format!("/v1/experiments/{}/reset", rollout_segment(rollout)?);
    let reply = client.write("POST", &path, None, None)?;
    if json {
        writeln!(out, "{}", reply.body)?;
    } else {
        let r: ResetResult = reply.json()?;
        writeln!(
            out,
            "experiment data of {rollout} deleted: {} assignments, {} outcomes",
            r.assignments_deleted, r.outcomes_deleted
        )?;
    }
    Ok(())
}

/// A line of an outcomes file: other fields are ignored.
#[derive(Debug, Deserialize)]
struct OutcomeLine {
    correlation_id: String,
    reward: f64,
}

/// Reads a JSON-lines file of `{"correlation_id", "reward"}` objects (`-`: stdin;
/// blank lines skipped). Errors name the line and the field.
pub fn read_outcomes(path: &std::path::Path) -> anyhow::Result<Vec<Outcome>> {
    let bytes = crate::validate::read_input(path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut de = serde_json::Deserializer::from_str(line);
        let parsed: Result<OutcomeLine, _> = serde_path_to_error::deserialize(&mut de);
        let o = parsed.map_err(|e| {
            let e = rollout_core::ConfigError::from_serde(e);
            anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1)
        })?;
        if !rollout_core::correlation::is_valid(&o.correlation_id) {
            anyhow::bail!(
                "{}:{}: correlation_id: {:?} is not a correlation id",
                path.display(),
                n + 1,
                o.correlation_id
            );
        }
        out.push(Outcome {
            correlation_id: o.correlation_id,
            reward: o.reward,
        });
    }
    Ok(out)
}

/// Totals of `rollout-control feedback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FeedbackTotals {
    pub outcomes: u64,
    pub batches: u64,
    pub accepted: u64,
    pub unknown: u64,
    pub dropped: u64,
}

/// `rollout-control feedback --file outcomes.jsonl`: the whole file is read and
/// checked first, then posted in batches of [`crate::records::MAX_BATCH`]. A failed
/// batch stops the command; the batches before it are stored, and posting the
/// file again is safe (a repeated outcome replaces itself).
pub fn run_feedback(
    client: &crate::client::Client,
    out: &mut impl std::io::Write,
    json: bool,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let outcomes = read_outcomes(path)?;
    let mut totals = FeedbackTotals {
        outcomes: outcomes.len() as u64,
        ..FeedbackTotals::default()
    };
    for (i, batch) in outcomes.chunks(crate::records::MAX_BATCH).enumerate() {
        let body = serde_json::to_vec(&serde_json::json!({ "outcomes": batch }))?;
        let reply = client
            .write("POST", "/v1/feedback", Some(body), None)
            .map_err(|e| {
                anyhow::anyhow!(
                    "batch {} (outcomes {} to {}): {e:#}",
                    i + 1,
                    i * crate::records::MAX_BATCH + 1,
                    i * crate::records::MAX_BATCH + batch.len()
                )
            })?;
        let r: FeedbackResult = reply.json()?;
        totals.batches += 1;
        totals.accepted += r.accepted;
        totals.unknown += r.unknown;
        totals.dropped += r.dropped;
    }
    if json {
        writeln!(out, "{}", serde_json::to_string(&totals)?)?;
    } else {
        writeln!(
            out,
            "{} outcomes in {} batch(es): {} accepted, {} unknown (no assignment known){}",
            totals.outcomes,
            totals.batches,
            totals.accepted,
            totals.unknown,
            if totals.dropped > 0 {
                format!(", {} dropped (variant full)", totals.dropped)
            } else {
                String::new()
            }
        )?;
    }
    Ok(())
}
