//! The control sidecar's HTTP API. Listens on loopback by default; JSON everywhere.
//! Every error answer is `{"error": "<message>", "field": "<json path or empty>"}`.
//!
//! Endpoints:
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET  | `/v1/plan` | 200 the latest plan (a bare `PlanSpec`), `ETag: "v<N>"`, `X-Plan-Version`, `Cache-Control: no-cache`; 304 when `If-None-Match` holds the current ETag; 404 before any plan. Records the polling proxy (`x-model-rollout-proxy`, `x-model-rollout-plan-version`). |
//! | PUT  | `/v1/plan` | replace the plan: 200 `{"version", "plan"}`; 400 naming the field; 412 on an `If-Match` mismatch; 413 beyond 1 MiB |
//! | POST | `/v1/rollouts/{name}/weights` | `{"weights": {"stable": 75, "canary": 25}}` or `{"variant": "canary", "weight": 25}` |
//! | POST | `/v1/rollouts/{name}/switch` | `{"variant": "green"}`: that variant 100, the others 0 |
//! | POST | `/v1/rollouts/{name}/promote` | the last variant gets 100 and becomes the first |
//! | POST | `/v1/rollouts/{name}/rollback` | the last variant to 0, its weight to the first |
//! | POST | `/v1/rollouts/{name}/pause` | sets `paused` |
//! | POST | `/v1/rollouts/{name}/resume` | clears `paused` |
//! | GET  | `/v1/history?limit=N` | newest first (default 100, at most 10,000) |
//! | GET  | `/v1/plan/versions/{v}` | that version's plan; 404 if unknown |
//! | POST | `/v1/plan/versions/{v}/restore` | a new version with version v's plan |
//! | GET  | `/v1/status` | version, age, weights, proxies and how far behind they are |
//! | GET  | `/live` | 200 while the process serves |
//! | GET  | `/ready` | 200 when the store is open and readable, else 503 |
//! | POST | `/v1/rollouts/{name}/restart` | restart the rollout's policy at step 0 (`crate::policy`) |
//! | GET  | `/v1/rollouts/{name}/analysis?limit=N&version=V` | policy decisions, check values, window series (`crate::policy`) |
//! | GET  | `/metrics` | Prometheus text: the sidecar's own metrics (`crate::metrics`) |
//! | POST | `/v1/shadow-records`, GET `/v1/shadow-report` | shadow comparison records (`crate::records`) |
//! | POST | `/v1/assignments`, `/v1/feedback`; GET `/v1/experiments/{rollout}` | A/B experiments (`crate::experiments`) |
//!
//! Every change (PUT / POST) creates exactly one new version, answers 200
//! `{"version": N, "plan": {...}}` only after the durable commit, and accepts: the
//! reason from `?reason=` or `X-Rollout-Reason`, the author from `X-Rollout-Author`
//! (default `api`), and `If-Match: "v<N>"` (412 unless N is the latest version).
//! Per-rollout operations answer 404 for an unknown rollout and 400 naming the field
//! for bad input. With a token configured, every PUT / POST needs
//! `Authorization: Bearer <token>` (401 otherwise); reads stay open.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_MATCH, IF_NONE_MATCH, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rollout_core::transitions::{self, Transition};
use rollout_core::wire::{
    bearer_token, etag, PollIdentity, PLAN_VERSION_HEADER, PLAN_VERSION_RESPONSE_HEADER,
    PROXY_HEADER,
};
use rollout_core::{OpError, PlanSpec};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::api::change::{
    SwitchRequest, WeightsRequest, WriteResponse, AUTHOR_HEADER, REASON_HEADER,
};
use crate::api::history::{weights_of, HistoryEntry};
use crate::api::plan::parse_plan_document;
use crate::api::status::{Status, StatusProxy, StatusRollout, StatusVariant};
use crate::engine::ab::AbSource;
use crate::engine::options::EngineOptions;
use crate::engine::runner::{self, EngineHandle};
use crate::engine::state::Engine;
use crate::error::ApiError;
use crate::store::blocking::blocking;
use crate::store::proxies::ProxyTable;
use crate::store::{Change, Current, Op, Store, StoreError};
use crate::util::timefmt::now_unix_ms;

/// Largest request body accepted (413 beyond).
pub const MAX_BODY: usize = 1024 * 1024;
/// Longest reason accepted.
pub const MAX_REASON_LEN: usize = 1024;
/// Longest author accepted.
pub const MAX_AUTHOR_LEN: usize = 128;
/// History entries returned without `?limit=`.
pub const DEFAULT_HISTORY: usize = 100;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    store: Arc<Store>,
    proxies: Arc<ProxyTable>,
    /// Bearer token required on writes; `None`: writes are open (loopback only).
    token: Option<Vec<u8>>,
    /// The sidecar's own counters (`GET /metrics`).
    metrics: crate::metrics::Metrics,
    /// The progressive-delivery engine, when `serve` runs it (`--envoy-admin`).
    policy: std::sync::OnceLock<Arc<Engine>>,
}

impl AppState {
    pub fn new(store: Arc<Store>, token: Option<String>) -> Self {
        AppState(Arc::new(Inner {
            store,
            proxies: Arc::new(ProxyTable::default()),
            token: token.map(String::into_bytes),
            metrics: crate::metrics::Metrics::default(),
            policy: std::sync::OnceLock::new(),
        }))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.0.store
    }

    pub fn proxies(&self) -> &Arc<ProxyTable> {
        &self.0.proxies
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.0.metrics
    }

    /// Starts the policy engine against this state's store and proxy table, and
    /// attaches it (status and analysis read it); once.
    pub fn start_engine(
        &self,
        opts: EngineOptions,
        ab: Option<Arc<dyn AbSource>>,
    ) -> anyhow::Result<EngineHandle> {
        let handle = runner::start(
            Arc::clone(&self.0.store),
            Arc::clone(&self.0.proxies),
            opts,
            ab,
        )?;
        let _ = self.0.policy.set(handle.engine());
        Ok(handle)
    }

    pub fn policy_engine(&self) -> Option<Arc<Engine>> {
        self.0.policy.get().cloned()
    }
}

/// The router with every endpoint.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/plan", get(get_plan).put(put_plan))
        .route("/v1/plan/versions/{version}", get(get_version))
        .route("/v1/plan/versions/{version}/restore", post(restore))
        .route("/v1/history", get(history))
        .route("/v1/status", get(status))
        .route("/v1/rollouts/{name}/weights", post(set_weights))
        .route("/v1/rollouts/{name}/switch", post(switch))
        .route("/v1/rollouts/{name}/promote", post(promote))
        .route("/v1/rollouts/{name}/rollback", post(rollback))
        .route("/v1/rollouts/{name}/pause", post(pause))
        .route("/v1/rollouts/{name}/resume", post(resume))
        .route("/v1/rollouts/{name}/restart", post(restart_policy))
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/metrics", get(crate::metrics::serve))
        .merge(crate::records::routes())
        .merge(crate::experiments::routes())
        .merge(crate::policy::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

// ---------------------------------------------------------------------------
// Auth

/// Byte-wise comparison whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        // Compare against b cyclically so the loop length depends on `a` only.
        let y = if b.is_empty() {
            0
        } else {
            b.get(i % b.len()).copied().unwrap_or(0)
        };
        diff |= x ^ y;
    }
    diff == 0
}

async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = &state.0.token else {
        return next.run(req).await;
    };
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let ok = presented.is_some_and(|t| constant_time_eq(t.as_bytes(), token));
    if ok {
        return next.run(req).await;
    }
    let message = if presented.is_some() {
        "wrong bearer token"
    } else {
        "this call changes the plan: it needs Authorization: Bearer <token>"
    };
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "", message).into_response();
    resp.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

// ---------------------------------------------------------------------------
// Reads

fn plan_headers(version: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        h.insert(ETAG, v);
    }
    h.insert(PLAN_VERSION_RESPONSE_HEADER, HeaderValue::from(version));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h
}

/// `If-None-Match` (weak comparison): `*` or a list of entity tags.
fn none_match_hits(headers: &HeaderMap, current: &str) -> bool {
    headers.get_all(IF_NONE_MATCH).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == current)
        })
    })
}

async fn get_plan(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(id) = PollIdentity::from_headers(header(PROXY_HEADER), header(PLAN_VERSION_HEADER))
    {
        state
            .0
            .proxies
            .record(&id.proxy, id.plan_version, Instant::now());
    }
    let Some(cur) = state.0.store.current() else {
        return ApiError::no_plan().into_response();
    };
    let mut h = plan_headers(cur.version());
    if none_match_hits(&headers, &etag(cur.version())) {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    (StatusCode::OK, h, cur.plan_json.clone()).into_response()
}

fn parse_version(raw: &str) -> Result<u64, ApiError> {
    raw.strip_prefix('v')
        .unwrap_or(raw)
        .parse::<u64>()
        .map_err(|_| ApiError::bad_request("version", format!("{raw:?} is not a plan version")))
}

async fn get_version(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let version = parse_version(&raw)?;
    let store = Arc::clone(&state.0.store);
    let record = blocking(move || store.get(version))
        .await?
        .ok_or_else(|| ApiError::not_found("version", format!("no plan version {version}")))?;
    let mut h = plan_headers(version);
    h.remove(CACHE_CONTROL);
    Ok((h, Json(record.plan)).into_response())
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    limit: Option<String>,
}

async fn history(
    State(state): State<AppState>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("", e.body_text()))?;
    let limit = match q.limit.as_deref() {
        None => DEFAULT_HISTORY,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=crate::store::plans::MAX_HISTORY).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "limit",
                    format!(
                        "{s:?} is not a number from 1 to {}",
                        crate::store::plans::MAX_HISTORY
                    ),
                ))
            }
        },
    };
    let store = Arc::clone(&state.0.store);
    let (records, mut analyses) = blocking(move || {
        let records = store.history(limit)?;
        let policy_versions: Vec<u64> = records
            .iter()
            .filter(|r| r.author == crate::engine::commit::AUTHOR)
            .map(|r| r.version)
            .collect();
        let analyses = crate::store::decisions::version_analyses(&store, &policy_versions)?;
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

fn round_ms(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

async fn status(State(state): State<AppState>) -> Json<Status> {
    let cur = state.0.store.current();
    let now = Instant::now();
    let latest = cur.as_ref().map(|c| c.version());
    let proxies = state
        .0
        .proxies
        .snapshot()
        .into_iter()
        .map(|(id, seen)| StatusProxy {
            id,
            plan_version: seen.plan_version,
            last_seen_seconds_ago: round_ms(now.duration_since(seen.last_seen).as_secs_f64()),
            behind: match (latest, seen.plan_version) {
                (Some(l), Some(p)) => Some(
                    i64::try_from(l).unwrap_or(i64::MAX) - i64::try_from(p).unwrap_or(i64::MAX),
                ),
                _ => None,
            },
        })
        .collect();
    let engine = state.policy_engine();
    let now_ms = now_unix_ms();
    let rollouts = cur
        .as_ref()
        .map(|c| {
            c.record
                .plan
                .rollouts
                .iter()
                .map(|r| StatusRollout {
                    policy: crate::engine::status::rollout_status(engine.as_deref(), r, now_ms),
                    name: r.name.clone(),
                    paused: r.paused,
                    variants: r
                        .variants
                        .iter()
                        .map(|v| StatusVariant {
                            name: v.name.clone(),
                            weight: v.weight,
                        })
                        .collect(),
                })
                .collect()
        })
        .unwrap_or_default();
    Json(Status {
        version: latest,
        updated: cur.as_ref().map(|c| c.record.time.clone()),
        age_seconds: cur.as_ref().map(|c| {
            let ms = now_unix_ms().saturating_sub(c.record.unix_ms);
            // u64 ms -> seconds; exact below 2^53 ms (285,000 years)
            round_ms(ms as f64 / 1000.0)
        }),
        rollouts,
        proxies,
        policy_engine: engine.map(|e| e.view()),
    })
}

async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "live"}))
}

async fn ready(State(state): State<AppState>) -> Response {
    let store = Arc::clone(&state.0.store);
    match blocking(move || store.check_readable()).await {
        Ok(count) => Json(serde_json::json!({
            "status": "ready",
            "versions": count,
            "version": state.0.store.current().map(|c| c.version()),
        }))
        .into_response(),
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "", e.to_string()).into_response(),
    }
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

// ---------------------------------------------------------------------------
// Writes

#[derive(Debug, Deserialize)]
struct WriteQuery {
    reason: Option<String>,
}

/// Who and why, and the optimistic-concurrency precondition, of one change.
struct WriteMeta {
    reason: Option<String>,
    author: String,
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
    fn new(
        headers: &HeaderMap,
        query: Result<Query<WriteQuery>, QueryRejection>,
    ) -> Result<Self, ApiError> {
        let Query(q) = query.map_err(|e| ApiError::bad_request("", e.body_text()))?;
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
    let current = cur.map(|c| etag(c.version()));
    let hit = tags.iter().any(|t| match &current {
        Some(c) => t == "*" || t == c,
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

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let status = e.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the request body is larger than {MAX_BODY} bytes")
        } else {
            e.body_text()
        };
        ApiError::new(status, "", message)
    })
}

fn parse_json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    crate::records::parse_object(body)
}

/// The plan's next version, decided inside the store's write transaction.
type Decide = Box<dyn FnOnce(Option<&Current>) -> Result<(PlanSpec, String), ApiError> + Send>;

async fn commit(
    state: &AppState,
    meta: WriteMeta,
    op: Op,
    decide: Decide,
) -> Result<Response, ApiError> {
    let store = Arc::clone(&state.0.store);
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

async fn put_plan(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let meta = WriteMeta::new(&headers, query)?;
    let body = body_bytes(body)?;
    let plan = parse_plan_document(&body)?;
    commit(
        &state,
        meta,
        Op::Put,
        Box::new(move |_| Ok((plan, "replace the plan".to_string()))),
    )
    .await
}

/// A per-rollout operation: 404 without a plan; `f` makes the next plan and the
/// default reason from the plan in force, the author and the time (unix ms); its
/// errors say 404 for an unknown rollout and 400 naming the field otherwise.
fn on_rollout(
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

async fn set_weights(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let meta = WriteMeta::new(&headers, query)?;
    let req: WeightsRequest = parse_json_body(&body_bytes(body)?)?;
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
    let req: SwitchRequest = parse_json_body(&body_bytes(body)?)?;
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

async fn restart_policy(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    simple_op(state, name, headers, query, body, Op::Restart).await
}

async fn promote(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    simple_op(state, name, headers, query, body, Op::Promote).await
}

async fn rollback(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    simple_op(state, name, headers, query, body, Op::Rollback).await
}

async fn pause(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    simple_op(state, name, headers, query, body, Op::Pause).await
}

async fn resume(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    simple_op(state, name, headers, query, body, Op::Resume).await
}

async fn restore(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    query: Result<Query<WriteQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let meta = WriteMeta::new(&headers, query)?;
    body_bytes(body)?;
    let version = parse_version(&raw)?;
    let store = Arc::clone(&state.0.store);
    let record = blocking(move || store.get(version))
        .await?
        .ok_or_else(|| ApiError::not_found("version", format!("no plan version {version}")))?;
    let plan = record.plan;
    commit(
        &state,
        meta,
        Op::Restore,
        Box::new(move |_| Ok((plan, format!("restore v{version}")))),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"secret2", b"secret"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(!constant_time_eq(b"x", b""));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn etags() {
        let mut h = HeaderMap::new();
        assert!(!none_match_hits(&h, "\"v3\""));
        h.insert(IF_NONE_MATCH, HeaderValue::from_static("\"v2\", W/\"v3\""));
        assert!(none_match_hits(&h, "\"v3\""));
        assert!(!none_match_hits(&h, "\"v4\""));
        assert_eq!(parse_version("v12").unwrap(), 12);
        assert_eq!(parse_version("12").unwrap(), 12);
        assert_eq!(parse_version("x").unwrap_err().field, "version");
    }
}
