//! A/B experiments:
//!
//! | method | path | answer |
//! |---|---|---|
//! | POST | `/v1/assignments` | the filter's batch (`rollout_core::wire::AssignmentBatch`, at most 1,000, 4 MiB): 200 `{"stored": n}`, plus `"refused": m` for ids already assigned to another variant (immutable; counted) |
//! | POST | `/v1/feedback` | `{"outcomes": [{"correlation_id", "reward"}]}` or one `{"correlation_id", "reward"}`: 200 `{"accepted", "unknown", "dropped"}` |
//! | GET  | `/v1/experiments/{rollout}` | the report (`report::experiment`): per-variant counts, rates or means with confidence intervals, comparisons against the first variant, status `collecting` / `complete` |
//! | POST | `/v1/experiments/{rollout}/reset` | deletes the rollout's assignments and outcomes: 200 `{"assignments_deleted", "outcomes_deleted"}` |

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use rollout_core::experiment::ExperimentMetric;
use rollout_core::model::ModelSpec;
use rollout_core::wire::{self, AssignmentBatch};
use rollout_core::{fields, Rollout};

use crate::api::experiment::{
    ExperimentReport, FeedbackRequest, FeedbackResult, Outcome, ResetResult,
};
use crate::api::ingest::Stored;
use crate::http::error::ApiError;
use crate::http::extract::{ingest_body, parse_object, MAX_INGEST_BODY};
use crate::http::state::AppState;
use crate::report::experiment::report;
use crate::store::assignments::store_assignments;
use crate::store::blocking::blocking;
use crate::store::experiment_reset::reset;
use crate::store::outcomes::{check_reward, store_outcomes};

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

/// `POST /v1/assignments`.
async fn post_assignments(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Stored>, ApiError> {
    let body = ingest_body(body)?;
    let batch: AssignmentBatch = parse_object(&body)?;
    batch.validate()?;
    let mut assignments = batch.assignments;
    // Retention is oldest first by the sender's time: never later than ours.
    let now = crate::util::timefmt::now_unix_ms();
    for a in &mut assignments {
        a.unix_ms = a.unix_ms.min(now);
    }
    let store = Arc::clone(state.store());
    let r = blocking(move || store_assignments(&store, &assignments)).await?;
    state.metrics().assignments_stored(r.stored);
    state.metrics().assignments_refused(r.refused);
    if r.refused > 0 {
        eprintln!(
            "rollout-control: {} assignments refused: their ids are assigned to another variant",
            r.refused
        );
    }
    Ok(Json(Stored {
        stored: r.stored,
        refused: r.refused,
    }))
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

/// `POST /v1/feedback`.
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
    wire::check_batch("outcomes", outcomes.len())?;
    for (i, o) in outcomes.iter().enumerate() {
        fields::check_correlation_id(&shape.field(i, "correlation_id"), &o.correlation_id)?;
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

/// The model metadata of a rollout's variants in the current plan.
fn variant_models(state: &AppState, name: &str) -> BTreeMap<String, ModelSpec> {
    let Some(cur) = state.store().current() else {
        return BTreeMap::new();
    };
    let Ok(r) = cur.record.plan.rollout_named(name) else {
        return BTreeMap::new();
    };
    r.variants
        .iter()
        .filter_map(|v| Some((v.name.clone(), v.model.clone()?)))
        .collect()
}

/// `GET /v1/experiments/{rollout}`.
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
    let models = variant_models(&state, &name);
    let store = Arc::clone(state.store());
    let _permit = state.heavy_read().await;
    let mut report = blocking(move || report(&store, &rollout))
        .await?
        .ok_or_else(|| ApiError::not_found("experiment", "no experiment section"))?;
    report.models = models;
    Ok(Json(report))
}

/// `POST /v1/experiments/{rollout}/reset`.
async fn post_reset(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ResetResult>, ApiError> {
    ingest_body(body)?;
    fields::check_name("rollout", &name)?;
    let store = Arc::clone(state.store());
    let who = name.clone();
    let result = blocking(move || reset(&store, &name)).await?;
    eprintln!(
        "rollout-control: experiment data of {who} reset: {} assignments, {} outcomes deleted",
        result.assignments_deleted, result.outcomes_deleted
    );
    Ok(Json(result))
}
