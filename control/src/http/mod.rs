//! The control sidecar's HTTP API. Listens on loopback by default; JSON everywhere.
//! Every error answer is `{"error": "<message>", "field": "<json path or empty>"}`
//! ([`error`]). One file per resource; each has its `routes()`, merged by [`app`].
//!
//! Endpoints:
//!
//! | method | path | file | answer |
//! |---|---|---|---|
//! | GET  | `/v1/plan` | [`plan`] | 200 the latest plan (a bare `PlanSpec`), with the store's `epoch`, `ETag: "v<N>.<epoch>"`, `X-Plan-Version`, `Cache-Control: no-cache`; 304 when `If-None-Match` holds the current ETag; 404 before any plan. Records the polling proxy (`x-model-rollout-proxy`, `x-model-rollout-plan-version`) when the poll carries the proxy credential (or none is configured). |
//! | PUT  | `/v1/plan` | [`plan`] | replace the plan: 200 `{"version", "plan"}`; 400 naming the field; 412 on an `If-Match` mismatch; 413 beyond 1 MiB |
//! | GET  | `/v1/plan/versions/{v}` | [`plan`] | that version's plan; 404 if unknown |
//! | POST | `/v1/plan/versions/{v}/restore` | [`plan`] | a new version with version v's plan |
//! | POST | `/v1/rollouts/{name}/weights` | [`rollouts`] | `{"weights": {"stable": 75, "canary": 25}}` or `{"variant": "canary", "weight": 25}` |
//! | POST | `/v1/rollouts/{name}/switch` | [`rollouts`] | `{"variant": "green"}`: that variant 100, the others 0 |
//! | POST | `/v1/rollouts/{name}/promote` | [`rollouts`] | the last variant gets 100 and becomes the first (with a policy: one step forward) |
//! | POST | `/v1/rollouts/{name}/rollback` | [`rollouts`] | the last variant to 0, its weight to the first |
//! | POST | `/v1/rollouts/{name}/pause` | [`rollouts`] | sets `paused` |
//! | POST | `/v1/rollouts/{name}/resume` | [`rollouts`] | clears `paused` (a holding policy progresses again) |
//! | POST | `/v1/rollouts/{name}/restart` | [`rollouts`] | restart the rollout's policy at step 0 |
//! | GET  | `/v1/history?limit=N&before=V` | [`history`] | newest first (default 100, at most 1,000 per page; `before`: versions below V, the next page) |
//! | GET  | `/v1/status` | [`status`] | version, age, weights, policies, the engine, proxies and how far behind they are |
//! | GET  | `/v1/rollouts/{name}/analysis?limit=N&version=V` | [`analysis`] | policy decisions, check values, window series |
//! | POST | `/v1/shadow-records` | [`shadow`] | the filter's shadow comparison records: 200 `{"stored": n}` (4 MiB; 503 `Retry-After: 1` when every `--ingest-concurrency` permit stays busy 2 s, as on the other two ingestion calls: [`ingest`]) |
//! | GET  | `/v1/shadow-report?rollout=R[&since_ms=T][&limit=N]` | [`shadow`] | agreement, verdicts, latency percentiles, recent disagreements |
//! | POST | `/v1/assignments` | [`experiments`] | the filter's A/B assignments: 200 `{"stored": n}` (4 MiB) |
//! | POST | `/v1/feedback` | [`experiments`] | outcomes per correlation id: 200 `{"accepted", "unknown", "dropped"}` (4 MiB) |
//! | GET  | `/v1/experiments/{rollout}` | [`experiments`] | the A/B report and verdict |
//! | POST | `/v1/experiments/{rollout}/reset` | [`experiments`] | deletes the rollout's assignments and outcomes |
//! | GET  | `/v1/events?rollout=R&after=ID&limit=N` | [`events`] | the engine's recent rollout events, oldest first, and `last_id` |
//! | GET  | `/ui` (`/ui/app.js`, `/ui/app.css`) | [`ui`] | the status page (offline, embedded; read-only without a credential) |
//! | GET  | `/metrics` | [`metrics`] | Prometheus text: the sidecar's own metrics ([`counters`]) |
//! | GET  | `/live` | [`health`] | 200 while the process serves |
//! | GET  | `/ready` | [`health`] | 200 when the store is open and readable, else 503 |
//!
//! Every change (PUT / POST on the plan and the rollouts) creates exactly one new
//! version, answers 200 `{"version": N, "plan": {...}}` only after the durable commit,
//! and accepts: the reason from `?reason=` or `X-Rollout-Reason`, the author from
//! `X-Rollout-Author` (default `api`), and `If-Match: "v<N>"` (412 unless N is the
//! latest version) ([`change`]). Per-rollout operations answer 404 for an unknown
//! rollout and 400 naming the field for bad input. Each call needs the credential of
//! its role ([`roles`]: operator, proxy, feedback, read) once any credential is
//! configured: 401 without a valid token, 403 naming the role for another role's
//! ([`auth`]). `GET /v1/plan`, `/live`, `/ready`, `/metrics` stay open; other reads
//! too unless a read credential is configured. A PUT / POST a browser marks
//! as cross-site (`Sec-Fetch-Site`, `Origin`) is refused with 403 whatever it carries
//! ([`origin`]).
//!
//! A new endpoint: its JSON shapes in `api/`, a handler file here with `routes()`,
//! one `.merge` in [`app`], a row in the table above and in control/README.md.

pub mod analysis;
pub mod auth;
pub mod body_timeout;
pub mod change;
pub mod counters;
pub mod error;
pub mod events;
pub mod experiments;
pub mod extract;
pub mod headers;
pub mod health;
pub mod history;
pub mod ingest;
pub mod metrics;
pub mod origin;
pub mod plan;
pub mod roles;
pub mod rollouts;
pub mod server;
pub mod shadow;
pub mod state;
pub mod status;
pub mod ui;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode, Uri};
use axum::middleware;
use axum::routing::get;
use axum::Router;

use crate::http::error::ApiError;
use crate::http::extract::MAX_BODY;
use crate::http::state::AppState;

/// The router with every endpoint.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(plan::routes())
        .merge(history::routes())
        .merge(status::routes())
        .merge(rollouts::routes())
        .merge(health::routes())
        .route("/metrics", get(metrics::serve))
        .merge(shadow::routes())
        .merge(experiments::routes())
        .merge(analysis::routes())
        .merge(events::routes())
        .merge(ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn({
            let timeout = state.limits().body_timeout;
            move |req, next| body_timeout::read_body(timeout, req, next)
        }))
        // Outside the body read: the permit is taken before the body arrives.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            ingest::permit,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(middleware::from_fn(origin::same_origin_writes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found("", format!("no endpoint {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
