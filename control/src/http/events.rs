//! `GET /v1/events?rollout=R&after=ID&limit=N`: the policy engine's recent rollout
//! events (`api::events`), oldest first; `after` is the last id seen (poll with the
//! answer's `last_id`). Empty when the sidecar runs no notifier (no engine).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::api::events::EventList;
use crate::http::error::ApiError;
use crate::http::extract::{parse_limit, query};
use crate::http::state::AppState;
use crate::notify::log::MAX_LIMIT;

/// Events returned without `?limit=`.
pub const DEFAULT_EVENTS: usize = 100;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/events", get(events))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    rollout: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

async fn events(
    State(state): State<AppState>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<EventList>, ApiError> {
    let q = query(q)?;
    let limit = parse_limit(q.limit.as_deref(), DEFAULT_EVENTS, MAX_LIMIT)?;
    let after = match q.after.as_deref() {
        None | Some("") => 0,
        Some(a) => a.parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "after",
                format!("{a:?} is not an event id (a whole number)"),
            )
        })?,
    };
    Ok(Json(match state.notifier() {
        Some(n) => n.events(q.rollout.as_deref(), after, limit),
        None => EventList {
            events: Vec::new(),
            last_id: 0,
        },
    }))
}
