//! The operations on one rollout: `POST /v1/rollouts/{name}/` `weights`, `switch`,
//! `promote`, `rollback`, `pause`, `resume`, `restart`. Each is a
//! `rollout_core::transitions` function (policy-aware: with a policy, promote /
//! rollback / resume / restart also move its progress); an unknown rollout is 404
//! (`UnknownRollout`), bad input 400 naming the field.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use rollout_core::transitions;

use crate::api::change::{SwitchRequest, WeightsRequest};
use crate::http::change::{commit, on_rollout, WriteMeta, WriteQuery};
use crate::http::error::ApiError;
use crate::http::extract::{body_bytes, parse_object};
use crate::http::state::AppState;
use crate::store::Op;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/rollouts/{name}/weights", post(set_weights))
        .route("/v1/rollouts/{name}/switch", post(switch))
        .route("/v1/rollouts/{name}/promote", post(promote))
        .route("/v1/rollouts/{name}/rollback", post(rollback))
        .route("/v1/rollouts/{name}/pause", post(pause))
        .route("/v1/rollouts/{name}/resume", post(resume))
        .route("/v1/rollouts/{name}/restart", post(restart_policy))
}

async fn set_weights(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let meta = WriteMeta::new(&headers, query)?;
    let req: WeightsRequest = parse_object(&body_bytes(body)?)?;
    let author = meta.author.clone();
    let decide = match req {
        WeightsRequest {
            weights: Some(weights),
            variant: None,
            weight: None,
        } => on_rollout(name, author, move |plan, name, author, now| {
            transitions::set_weights(plan, name, &weights.0, author, now)
        }),
        WeightsRequest {
            weights: None,
            variant: Some(variant),
            weight: Some(weight),
        } => on_rollout(name, author, move |plan, name, author, now| {
            transitions::set_weight(plan, name, &variant, weight, author, now)
        }),
        WeightsRequest {
            weights: None,
            variant: Some(_),
            weight: None,
        } => {
            return Err(ApiError::bad_request(
                "weight",
                "missing: give \"weight\" with \"variant\"",
            ))
        }
        WeightsRequest {
            weights: None,
            variant: None,
            weight: Some(_),
        } => {
            return Err(ApiError::bad_request(
                "variant",
                "missing: give \"variant\" with \"weight\"",
            ))
        }
        _ => {
            return Err(ApiError::bad_request(
                "",
                "give either \"weights\" (every variant) or \"variant\" and \"weight\"",
            ))
        }
    };
    commit(&state, meta, Op::SetWeights, decide).await
}

async fn switch(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let meta = WriteMeta::new(&headers, query)?;
    let req: SwitchRequest = parse_object(&body_bytes(body)?)?;
    let decide = on_rollout(name, meta.author.clone(), move |plan, name, author, now| {
        transitions::switch(plan, name, &req.variant, author, now)
    });
    commit(&state, meta, Op::Switch, decide).await
}

/// Promote, rollback, pause, resume, restart: no body needed (any body is ignored).
/// With a policy, promote / rollback / resume / restart also move its progress
/// (`rollout_core::transitions`); without one they are the plain operations.
async fn simple_op(
    state: AppState,
    name: String,
    headers: HeaderMap,
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
    op: Op,
) -> Result<Response, ApiError> {
    let meta = WriteMeta::new(&headers, query)?;
    body_bytes(body)?;
    let author = meta.author.clone();
    let decide = match op {
        Op::Promote => on_rollout(name, author, transitions::promote),
        Op::Rollback => on_rollout(name, author, transitions::rollback),
        Op::Pause => on_rollout(name, author, |plan, name, _, _| {
            transitions::pause(plan, name)
        }),
        Op::Resume => on_rollout(name, author, transitions::resume),
        Op::Restart => on_rollout(name, author, transitions::restart),
        Op::Initial | Op::Put | Op::SetWeights | Op::Switch | Op::Restore | Op::Progress => {
            return Err(ApiError::internal(format!(
                "{} is not an operation on one rollout without a body",
                op.as_str()
            )))
        }
    };
    commit(&state, meta, op, decide).await
}

/// The handler of one operation without a body: [`simple_op`] with `$op`.
macro_rules! no_body_op {
    ($handler:ident, $op:expr) => {
        async fn $handler(
            State(state): State<AppState>,
            Path(name): Path<String>,
            headers: HeaderMap,
            query: Result<Query<WriteQuery>, QueryRejection>,
            body: Result<Bytes, BytesRejection>,
        ) -> Result<Response, ApiError> {
            simple_op(state, name, headers, query, body, $op).await
        }
    };
}

no_body_op!(promote, Op::Promote);
no_body_op!(rollback, Op::Rollback);
no_body_op!(pause, Op::Pause);
no_body_op!(resume, Op::Resume);
no_body_op!(restart_policy, Op::Restart);
