//! The demo model server: Open Inference Protocol (KServe v2 REST) endpoints
//! with fault knobs, plus an admin API on the same listener.
//!
//! Endpoints (see `demo/README.md` for bodies):
//!
//! | method | path                                        | what                                  |
//! |--------|---------------------------------------------|---------------------------------------|
//! | POST   | `/v2/models/{name}/infer`                   | inference                             |
//! | POST   | `/v2/models/{name}/versions/{v}/infer`      | inference (any `v`; answered alike)   |
//! | GET    | `/v2/health/live`, `/v2/health/ready`       | liveness / readiness                  |
//! | GET    | `/v2`                                       | server metadata                       |
//! | GET    | `/v2/models/{name}`, `.../versions/{v}`     | model metadata                        |
//! | GET    | `/v2/models/{name}/ready`                   | model readiness                       |
//! | GET    | `/admin/stats`                              | counters                              |
//! | GET    | `/admin/faults`                             | fault set in force                    |
//! | POST   | `/admin/faults`                             | change faults (partial JSON object)   |
//! | GET    | `/admin/requests?limit=N`                   | most recent infer requests            |
//! | POST   | `/admin/reset`                              | clear counters and the request log    |
//!
//! Every response carries `x-served-by: VERSION`.

use crate::faults::Faults;
use crate::predict;
use crate::rng::Rng;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header::{HeaderValue, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Most entries kept by the request log (oldest dropped first).
pub const REQUEST_LOG_CAPACITY: usize = 20_000;
/// `GET /admin/requests` returns this many entries when no `limit` is given.
pub const DEFAULT_REQUESTS_LIMIT: usize = 100;
/// Largest accepted request body (infer and admin).
pub const BODY_LIMIT: usize = 16 * 1024 * 1024;
/// Distinct model names counted separately in `by_model`; more go to `"(other)"`.
pub const MAX_MODEL_NAMES: usize = 1_024;
/// How long a `hang` fault holds an infer call (unless the server shuts down
/// or the client goes away first).
pub const HANG_FOR: Duration = Duration::from_secs(3_600);
/// Response header naming the version that answered.
pub const SERVED_BY_HEADER: &str = "x-served-by";
/// Platform reported by model metadata.
pub const PLATFORM: &str = "model-rollout-demo";
/// Name of the single output tensor.
pub const OUTPUT_NAME: &str = "score";

/// Start-up configuration of one model server.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Version label (`stable`, `canary`, `shadow`, ...).
    pub version: String,
    /// Initial fault set.
    pub faults: Faults,
    /// Seed of the random fault knobs.
    pub seed: u64,
    /// Echo request headers in the infer response's `parameters.headers`.
    pub echo_headers: bool,
    /// Request log bound (default [`REQUEST_LOG_CAPACITY`]).
    pub log_capacity: usize,
    /// Elements of the output tensor (`outputs[0].data`), each the prediction:
    /// large answers for tests of record sizes. 1 by default, at most
    /// [`MAX_OUTPUT_LEN`].
    pub output_len: usize,
}

/// Largest `--output-len`.
pub const MAX_OUTPUT_LEN: usize = 1_000_000;

impl ModelConfig {
    pub fn new(version: impl Into<String>) -> Self {
        Self {
            version: version.into(),
            faults: Faults::default(),
            seed: 0,
            echo_headers: false,
            log_capacity: REQUEST_LOG_CAPACITY,
            output_len: 1,
        }
    }
}

/// Counters reported by `GET /admin/stats`.
#[derive(Debug, Default, Clone, Serialize)]
struct Stats {
    requests: u64,
    by_model: BTreeMap<String, u64>,
    errors: u64,
    nan: u64,
    null: u64,
    disagreed: u64,
    /// Answered predictions by the business decision they lead to: a fraud score
    /// below 0.5 approves the transaction, 0.5 or more declines it (`GET /metrics`).
    approved: u64,
    declined: u64,
}

/// One entry of the request log (`GET /admin/requests`).
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    pub seq: u64,
    pub path: String,
    pub method: String,
    pub headers: BTreeMap<String, String>,
    pub body_len: usize,
    pub body_sha256: String,
    /// The `x-request-id` header, if any.
    pub id: Option<String>,
    /// The OIP `id` field of the body, if any.
    pub body_id: Option<String>,
    /// Model name from the path.
    pub model: String,
    /// Number, `null`, or the string `"NaN"`; `null` when no prediction was sent.
    pub prediction: Value,
    /// The disagreement rule selected this input (only decided for answered calls).
    pub disagreed: bool,
    /// Status answered; 0 for a call held by the `hang` fault.
    pub status: u16,
}

#[derive(Debug, Default)]
struct RequestLog {
    entries: VecDeque<LogEntry>,
    next_seq: u64,
}

struct Inner {
    version: String,
    served_by: HeaderValue,
    echo_headers: bool,
    log_capacity: usize,
    output_len: usize,
    faults: Mutex<Faults>,
    rng: Rng,
    stats: Mutex<Stats>,
    log: Mutex<RequestLog>,
    shutdown: watch::Sender<bool>,
}

/// Shared state of a model server; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What one prediction came out as.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Output {
    Number(f64),
    NaN,
    Null,
}

impl Output {
    /// The JSON token written inside `"data":[...]`.
    fn token(self) -> String {
        match self {
            Output::Number(p) => Value::from(p).to_string(),
            Output::NaN => "NaN".to_owned(),
            Output::Null => "null".to_owned(),
        }
    }

    fn log_value(self) -> Value {
        match self {
            Output::Number(p) => Value::from(p),
            Output::NaN => Value::from("NaN"),
            Output::Null => Value::Null,
        }
    }
}

impl AppState {
    /// Validates the configuration and builds the state.
    pub fn new(cfg: ModelConfig) -> anyhow::Result<Self> {
        cfg.faults.validate()?;
        let served_by = HeaderValue::from_str(&cfg.version)
            .map_err(|_| anyhow::anyhow!("--version must be a valid header value"))?;
        if cfg.version.is_empty() {
            anyhow::bail!("--version must not be empty");
        }
        let (shutdown, _) = watch::channel(false);
        Ok(Self {
            inner: Arc::new(Inner {
                version: cfg.version,
                served_by,
                echo_headers: cfg.echo_headers,
                log_capacity: cfg.log_capacity.max(1),
                output_len: cfg.output_len.clamp(1, MAX_OUTPUT_LEN),
                faults: Mutex::new(cfg.faults),
                rng: Rng::new(cfg.seed),
                stats: Mutex::new(Stats::default()),
                log: Mutex::new(RequestLog::default()),
                shutdown,
            }),
        })
    }

    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// The fault set in force.
    pub fn faults(&self) -> Faults {
        lock(&self.inner.faults).clone()
    }

    /// Replaces the fault set (after validation).
    pub fn set_faults(&self, faults: Faults) -> Result<(), crate::faults::FaultError> {
        faults.validate()?;
        *lock(&self.inner.faults) = faults;
        Ok(())
    }

    /// Releases calls held by `hang` or a long latency; used on shutdown.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Snapshot of the request log, oldest first.
    pub fn log_entries(&self) -> Vec<LogEntry> {
        lock(&self.inner.log).entries.iter().cloned().collect()
    }

    /// Sleeps for `d`, or less if the server starts shutting down.
    /// Returns false when cut short by shutdown.
    async fn sleep_unless_shutdown(&self, d: Duration) -> bool {
        let mut rx = self.inner.shutdown.subscribe();
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            _ = rx.wait_for(|down| *down) => false,
        }
    }

    fn record(&self, mut entry: LogEntry, output: Option<Output>) {
        {
            let mut stats = lock(&self.inner.stats);
            stats.requests += 1;
            let names = stats.by_model.len();
            let key = if names < MAX_MODEL_NAMES || stats.by_model.contains_key(&entry.model) {
                entry.model.clone()
            } else {
                "(other)".to_owned()
            };
            *stats.by_model.entry(key).or_insert(0) += 1;
            if entry.status != 0 && !(200..300).contains(&entry.status) {
                stats.errors += 1;
            }
            match output {
                Some(Output::NaN) => stats.nan += 1,
                Some(Output::Null) => stats.null += 1,
                Some(Output::Number(p)) if p < 0.5 => stats.approved += 1,
                Some(Output::Number(_)) => stats.declined += 1,
                None => {}
            }
            if entry.disagreed {
                stats.disagreed += 1;
            }
        }
        let mut log = lock(&self.inner.log);
        log.next_seq += 1;
        entry.seq = log.next_seq;
        while log.entries.len() >= self.inner.log_capacity {
            log.entries.pop_front();
        }
        log.entries.push_back(entry);
    }

    fn stats_json(&self) -> Value {
        let s = lock(&self.inner.stats).clone();
        json!({
            "version": self.inner.version,
            "requests": s.requests,
            "by_model": s.by_model,
            "errors": s.errors,
            "nan": s.nan,
            "null": s.null,
            "disagreed": s.disagreed,
        })
    }

    fn reset(&self) {
        *lock(&self.inner.stats) = Stats::default();
        *lock(&self.inner.log) = RequestLog::default();
    }
}

/// The model server's router (OIP endpoints and admin API).
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{v}",
            get(model_version_metadata),
        )
        .route("/v2/models/{name}/infer", post(infer_latest))
        .route("/v2/models/{name}/versions/{v}/infer", post(infer_version))
        .route("/admin/stats", get(admin_stats))
        .route("/metrics", get(metrics))
        .route(
            "/admin/faults",
            get(admin_get_faults).post(admin_post_faults),
        )
        .route("/admin/requests", get(admin_requests))
        .route("/admin/reset", post(admin_reset))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            add_served_by,
        ))
        .with_state(state)
}

/// Serves `app(state)` on `listener` until `shutdown` completes, then drains
/// (held `hang` calls are released with 503).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let st = state.clone();
    let signal = async move {
        shutdown.await;
        st.begin_shutdown();
    };
    axum::serve(listener, app(state))
        .with_graceful_shutdown(signal)
        .await
}

async fn add_served_by(State(st): State<AppState>, mut res: Response) -> Response {
    res.headers_mut()
        .insert(SERVED_BY_HEADER, st.inner.served_by.clone());
    res
}

fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn field_error(message: impl Into<String>, field: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": message.into(), "field": field })),
    )
        .into_response()
}

async fn not_found(uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        format!("no route for {}", uri.path()),
    )
}

async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

async fn ready() -> Json<Value> {
    Json(json!({ "ready": true }))
}

async fn server_metadata(State(st): State<AppState>) -> Json<Value> {
    Json(json!({
        "name": "rollout-demo",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
        "model_version": st.inner.version,
    }))
}

fn metadata(st: &AppState, name: &str) -> Json<Value> {
    Json(json!({
        "name": name,
        "versions": [st.inner.version],
        "platform": PLATFORM,
        "inputs": [{ "name": "x", "datatype": "FP32", "shape": [-1, -1] }],
        "outputs": [{ "name": OUTPUT_NAME, "datatype": "FP64", "shape": [1] }],
    }))
}

async fn model_metadata(State(st): State<AppState>, Path(name): Path<String>) -> Json<Value> {
    metadata(&st, &name)
}

async fn model_version_metadata(
    State(st): State<AppState>,
    Path((name, _v)): Path<(String, String)>,
) -> Json<Value> {
    metadata(&st, &name)
}

async fn model_ready(Path(name): Path<String>) -> Json<Value> {
    Json(json!({ "name": name, "ready": true }))
}

async fn infer_latest(
    State(st): State<AppState>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    infer(st, name, method, uri, headers, body).await
}

async fn infer_version(
    State(st): State<AppState>,
    Path((name, _v)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    infer(st, name, method, uri, headers, body).await
}

/// Lower-case header name -> value; repeated headers joined with ", ".
pub fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.entry(name.as_str().to_owned())
            .and_modify(|existing| {
                existing.push_str(", ");
                existing.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn body_id(parsed: &Value) -> Option<String> {
    match parsed.get("id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn infer_body(st: &AppState, name: &str, id: &str, output: Output, headers: &HeaderMap) -> String {
    let mut parameters = json!({ "served_by": st.inner.version });
    if st.inner.echo_headers {
        parameters["headers"] = json!(header_map(headers));
    }
    let n = st.inner.output_len;
    let data = vec![output.token(); n].join(",");
    // Written by hand: serde_json cannot emit the bare `NaN` token.
    format!(
        "{{\"model_name\":{},\"model_version\":{},\"id\":{},\"outputs\":[{{\"name\":\"{OUTPUT_NAME}\",\"shape\":[{n}],\"datatype\":\"FP64\",\"data\":[{data}]}}],\"parameters\":{}}}",
        Value::from(name),
        Value::from(st.inner.version.as_str()),
        Value::from(id),
        parameters,
    )
}

async fn infer(
    st: AppState,
    name: String,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let faults = st.faults();
    let request_id = headers
        .get("x-request-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let mut entry = LogEntry {
        seq: 0,
        path: uri.path().to_owned(),
        method: method.as_str().to_owned(),
        headers: header_map(&headers),
        body_len: body.len(),
        body_sha256: sha256_hex(&body),
        id: request_id.clone(),
        body_id: None,
        model: name.clone(),
        prediction: Value::Null,
        disagreed: false,
        status: 0,
    };

    let delay = faults
        .latency_ms
        .saturating_add(st.inner.rng.up_to(faults.latency_jitter_ms));
    if delay > 0 && !st.sleep_unless_shutdown(Duration::from_millis(delay)).await {
        entry.status = StatusCode::SERVICE_UNAVAILABLE.as_u16();
        st.record(entry, None);
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "model server shutting down",
        );
    }

    if faults.hang {
        // Recorded before holding, with status 0: the call is never answered
        // (unless the server shuts down; a client that goes away drops it).
        st.record(entry, None);
        st.sleep_unless_shutdown(HANG_FOR).await;
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "model server shutting down",
        );
    }

    if let Some(code) = faults.status {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        entry.status = status.as_u16();
        st.record(entry, None);
        return error_response(status, format!("forced status {code}"));
    }

    let parsed = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) if v.is_object() => v,
            Ok(_) => {
                entry.status = 400;
                st.record(entry, None);
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "request body must be a JSON object",
                );
            }
            Err(e) => {
                entry.status = 400;
                st.record(entry, None);
                return error_response(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}"));
            }
        }
    };
    entry.body_id = body_id(&parsed);

    if st.inner.rng.chance(faults.error_rate) {
        entry.status = 500;
        st.record(entry, None);
        return error_response(StatusCode::INTERNAL_SERVER_ERROR, "injected error");
    }

    let (p, disagreed) = predict::predict(
        &parsed,
        &body,
        faults.disagree_rate,
        faults.score_shift,
        faults.bias,
    );
    let output = if st.inner.rng.chance(faults.nan_rate) {
        Output::NaN
    } else if st.inner.rng.chance(faults.null_rate) {
        Output::Null
    } else {
        Output::Number(p)
    };
    let id = entry.body_id.clone().or(request_id).unwrap_or_default();
    let text = infer_body(&st, &name, &id, output, &headers);
    entry.prediction = output.log_value();
    entry.disagreed = disagreed;
    entry.status = 200;
    st.record(entry, Some(output));
    (
        StatusCode::OK,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        text,
    )
        .into_response()
}

/// `GET /metrics`: the business counter a custom PromQL check reads, in the
/// Prometheus text format: `demo_model_answers_total{version, decision}` with
/// `decision` = `approve` (score < 0.5) or `decline`.
async fn metrics(State(st): State<AppState>) -> Response {
    let s = lock(&st.inner.stats).clone();
    let v = st.inner.version.replace(['\\', '"', '\n'], "_");
    let text = format!(
        "# HELP demo_model_answers_total Predictions answered, by the decision they lead to.\n\
         # TYPE demo_model_answers_total counter\n\
         demo_model_answers_total{{version=\"{v}\",decision=\"approve\"}} {}\n\
         demo_model_answers_total{{version=\"{v}\",decision=\"decline\"}} {}\n",
        s.approved, s.declined
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn admin_stats(State(st): State<AppState>) -> Json<Value> {
    Json(st.stats_json())
}

async fn admin_get_faults(State(st): State<AppState>) -> Json<Faults> {
    Json(st.faults())
}

async fn admin_post_faults(State(st): State<AppState>, body: Bytes) -> Response {
    let patch: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let mut guard = lock(&st.inner.faults);
    match guard.patched(&patch) {
        Ok(next) => {
            *guard = next.clone();
            drop(guard);
            Json(next).into_response()
        }
        Err(e) => match &e.field {
            Some(field) => field_error(e.to_string(), field),
            None => error_response(StatusCode::BAD_REQUEST, e.to_string()),
        },
    }
}

async fn admin_requests(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let limit = match q.get("limit") {
        None => DEFAULT_REQUESTS_LIMIT,
        Some(s) => match s.parse::<usize>() {
            Ok(n) => n,
            Err(_) => return field_error("limit: must be a non-negative integer", "limit"),
        },
    };
    let log = lock(&st.inner.log);
    let skip = log.entries.len().saturating_sub(limit);
    let entries: Vec<&LogEntry> = log.entries.iter().skip(skip).collect();
    Json(entries).into_response()
}

async fn admin_reset(State(st): State<AppState>) -> Json<Value> {
    st.reset();
    Json(json!({ "reset": true }))
}
