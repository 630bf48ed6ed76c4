//! Every change (PUT / POST) creates exactly one new plan version and answers 200
//! `{"version": N, "plan": {...}}` only after the durable commit. Each takes the
//! reason from `?reason=` or `X-Rollout-Reason`, the author from `X-Rollout-Author`
//! (default `api`), and `If-Match: "v<N>"` (412 unless N is the latest version,
//! checked inside the store's write transaction).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::header::{CACHE_CONTROL, IF_MATCH};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rollout_core::transitions::Transition;
use rollout_core::wire::etag;
use rollout_core::{OpError, PlanSpec};
use serde::Deserialize;

use crate::api::change::{WriteResponse, AUTHOR_HEADER, REASON_HEADER};
use crate::http::error::ApiError;
use crate::http::extract::query;
use crate::http::headers::plan_headers;
use crate::http::state::AppState;
use crate::store::blocking::blocking;
use crate::store::{Change, Current, Op};
use crate::util::timefmt::now_unix_ms;

/// Longest reason accepted.
pub const MAX_REASON_LEN: usize = 1024;
/// Longest author accepted.
pub const MAX_AUTHOR_LEN: usize = 128;

/// The query of a change: `?reason=`.
#[derive(Debug, Deserialize)]
pub struct WriteQuery {
    reason: Option<String>,
}

/// Who and why, and the optimistic-concurrency precondition, of one change.
pub struct WriteMeta {
    reason: Option<String>,
    pub author: String,
    if_match: Option<Vec<String>>,
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(|s| Some(s.trim())).map_err(|_| {
            ApiError::bad_request(
                "",
                format!("header {name} must be visible ASCII (use ?reason= for other text)"),
            )
        }),
    }
}

impl WriteMeta {
    pub fn new(
        headers: &HeaderMap,
        query_result: Result<Query<WriteQuery>, QueryRejection>,
    ) -> Result<Self, ApiError> {
        let q = query(query_result)?;
        let reason = match q.reason {
            Some(r) => Some(r),
            None => header_text(headers, REASON_HEADER)?.map(str::to_string),
        }
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
        if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON_LEN) {
            return Err(ApiError::bad_request(
                "reason",
                format!("longer than {MAX_REASON_LEN} bytes"),
            ));
        }
        let author = header_text(headers, AUTHOR_HEADER)?
            .filter(|a| !a.is_empty())
            .unwrap_or("api")
            .to_string();
        if author.len() > MAX_AUTHOR_LEN {
            return Err(ApiError::bad_request(
                "author",
                format!("longer than {MAX_AUTHOR_LEN} bytes"),
            ));
        }
        let if_match = match headers.get(IF_MATCH) {
            None => None,
            Some(v) => {
                let s = v
                    .to_str()
                    .map_err(|_| ApiError::bad_request("", "If-Match must be visible ASCII"))?;
                Some(s.split(',').map(|t| t.trim().to_string()).collect())
            }
        };
        Ok(WriteMeta {
            reason,
            author,
            if_match,
        })
    }
}

/// `If-Match` (strong comparison): `*` needs some plan, a tag list needs the latest's tag.
fn check_if_match(if_match: Option<&[String]>, cur: Option<&Current>) -> Result<(), ApiError> {
    let Some(tags) = if_match else { return Ok(()) };
    // `"v<N>"` (what change answers carry) or `"v<N>.<epoch>"` (GET /v1/plan's).
    let hit = tags.iter().any(|t| match cur {
        Some(c) => t == "*" || *t == etag(c.version()) || *t == c.etag,
        None => false,
    });
    if hit {
        return Ok(());
    }
    let have = match cur {
        Some(c) => format!("the latest plan version is {}", c.version()),
        None => "no plan has been stored yet".to_string(),
    };
    Err(ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "",
        format!("If-Match {} does not hold: {have}", tags.join(", ")),
    ))
}

/// The plan's next version, decided inside the store's write transaction.
pub type Decide = Box<dyn FnOnce(Option<&Current>) -> Result<(PlanSpec, String), ApiError> + Send>;

pub async fn commit(
    state: &AppState,
    meta: WriteMeta,
    op: Op,
    decide: Decide,
) -> Result<Response, ApiError> {
    let store = Arc::clone(state.store());
    let WriteMeta {
        reason,
        author,
        if_match,
    } = meta;
    let cur = blocking(move || {
        store.commit(|cur| {
            check_if_match(if_match.as_deref(), cur)?;
            let (plan, default_reason) = decide(cur)?;
            Ok::<_, ApiError>(Change {
                plan,
                op,
                reason: reason.unwrap_or(default_reason),
                author,
            })
        })
    })
    .await?;
    let r = &cur.record;
    eprintln!(
        "rollout-control: v{} {} by {:?}: {:?}",
        r.version, r.op, r.author, r.reason
    );
    let mut h = plan_headers(r.version);
    h.remove(CACHE_CONTROL);
    Ok((
        h,
        Json(WriteResponse {
            version: r.version,
            plan: r.plan.clone(),
        }),
    )
        .into_response())
}

/// A per-rollout operation: 404 without a plan; `f` makes the next plan and the
/// default reason from the plan in force, the author and the time (unix ms); its
/// errors say 404 for an unknown rollout and 400 naming the field otherwise.
pub fn on_rollout(
    name: String,
    author: String,
    f: impl FnOnce(&PlanSpec, &str, &str, u64) -> Result<Transition, OpError> + Send + 'static,
) -> Decide {
    Box::new(move |cur| {
        let cur = cur.ok_or_else(ApiError::no_plan)?;
        let t = f(&cur.record.plan, &name, &author, now_unix_ms())?;
        Ok((t.plan, t.reason))
    })
}
