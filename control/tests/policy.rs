//! The policy engine in-process against a fake Envoy admin endpoint: a tiny axum
//! server serving `/stats?format=json` and `/stats/prometheus` from counters that a
//! simulator advances every 25 ms from the plan in force (so the candidate's share of
//! the traffic follows the weights the engine writes), with faults the tests script.
//! Intervals are 1 s and ticks 100 ms, so a whole rollout takes seconds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::Router;
use rollout_control::api::status::StatsFormat;
use rollout_control::engine::clock::WallClock;
use rollout_control::engine::commit::AUTHOR;
use rollout_control::engine::options::EngineOptions;
use rollout_control::engine::runner::EngineHandle;
use rollout_control::store::{Change, Op};
use rollout_control::testutil::TempDir;
use rollout_control::util::timefmt::now_unix_ms;
use rollout_control::{app, AppState, Store};
use rollout_core::policy::ProgressState;
use rollout_core::stats;
use rollout_core::PlanSpec;
use serde_json::Value;
use tower::ServiceExt;

// ---------------------------------------------------------------------------
// The fake Envoy

/// Faults of the candidate (and of the shadow comparisons).
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    error_rate: f64,
    extra_latency_ms: f64,
    nan_rate: f64,
    disagree_rate: f64,
    /// The candidate's (and the shadow's) scores come from `SHIFTED` instead of `HEALTHY`.
    score_shift: bool,
}

/// Shares of the predictions per bin of `EDGES` (underflow, 4 intervals, overflow, other).
const HEALTHY: [f64; 7] = [0.0, 0.25, 0.25, 0.25, 0.25, 0.0, 0.0];
const SHIFTED: [f64; 7] = [0.0, 0.05, 0.10, 0.25, 0.60, 0.0, 0.0];

#[derive(Debug, Default, Clone)]
struct VariantCounters {
    requests: f64,
    ok: f64,
    errors: f64,
    checked: f64,
    nan: f64,
    /// lower bound (ms) -> count, bins of width 1
    latency: BTreeMap<u64, f64>,
    /// predictions per bin
    bins: [f64; 7],
}

#[derive(Debug, Default)]
struct Sim {
    variants: BTreeMap<String, VariantCounters>,
    compared: f64,
    agree: f64,
    disagree: f64,
    shadow_bins: [f64; 7],
    uptime_s: f64,
    /// Requests per second to the rollout (all variants).
    rps: f64,
    /// Share of requests compared with the shadow.
    shadow_fraction: f64,
    faults: Faults,
}

impl Sim {
    fn advance(&mut self, plan: &PlanSpec, dt: f64) {
        self.uptime_s += dt;
        let Some(r) = plan.rollouts.iter().find(|r| r.name == "fraud") else {
            return;
        };
        let candidate = r
            .variants
            .last()
            .map(|v| v.name.clone())
            .unwrap_or_default();
        let policy_candidate = r
            .policy
            .as_ref()
            .and_then(|p| p.candidate.clone())
            .unwrap_or(candidate);
        let total = self.rps * dt;
        for v in &r.variants {
            let n = total * v.weight / 100.0;
            let faulty = v.name == policy_candidate && r.variants.first().unwrap().name != v.name;
            let f = if faulty {
                self.faults
            } else {
                Faults::default()
            };
            let c = self.variants.entry(v.name.clone()).or_default();
            c.requests += n;
            c.errors += n * f.error_rate;
            c.ok += n * (1.0 - f.error_rate);
            c.checked += n;
            c.nan += n * f.nan_rate;
            let shares = if f.score_shift { SHIFTED } else { HEALTHY };
            for (b, share) in c.bins.iter_mut().zip(shares) {
                *b += n * share;
            }
            let base = 20.0 + f.extra_latency_ms;
            for (ms, share) in [(base, 0.9), (base + 5.0, 0.09), (base + 30.0, 0.01)] {
                *c.latency.entry(ms as u64).or_default() += n * share;
            }
        }
        let compared = total * self.shadow_fraction;
        self.compared += compared;
        self.disagree += compared * self.faults.disagree_rate;
        self.agree += compared * (1.0 - self.faults.disagree_rate);
        let shares = if self.faults.score_shift {
            SHIFTED
        } else {
            HEALTHY
        };
        for (b, share) in self.shadow_bins.iter_mut().zip(shares) {
            *b += compared * share;
        }
    }

    /// An Envoy restart: every counter back to zero.
    fn restart(&mut self) {
        for c in self.variants.values_mut() {
            *c = VariantCounters::default();
        }
        self.compared = 0.0;
        self.agree = 0.0;
        self.disagree = 0.0;
        self.shadow_bins = [0.0; 7];
        self.uptime_s = 0.0;
    }

    fn counters(&self) -> Vec<(String, f64)> {
        let w = |n: String| format!("wasmcustom.{n}");
        let mut out = vec![("server.uptime".to_string(), self.uptime_s.floor())];
        for (v, c) in &self.variants {
            out.push((w(stats::variant_requests("fraud", v)), c.requests));
            out.push((w(stats::variant_responses("fraud", v, "2xx")), c.ok));
            out.push((w(stats::variant_responses("fraud", v, "5xx")), c.errors));
            out.push((w(stats::variant_responses("fraud", v, "4xx")), 0.0));
            out.push((
                w(stats::variant_metric("fraud", v, "outputs_checked_total")),
                c.checked,
            ));
            out.push((
                w(stats::variant_reason_metric(
                    "fraud",
                    v,
                    "nan",
                    "invalid_outputs_total",
                )),
                c.nan,
            ));
            out.push((
                w(stats::variant_reason_metric(
                    "fraud",
                    v,
                    "null",
                    "invalid_outputs_total",
                )),
                0.0,
            ));
            for (i, b) in c.bins.iter().enumerate() {
                out.push((w(stats::variant_bin("fraud", v, i)), *b));
            }
        }
        for (i, b) in self.shadow_bins.iter().enumerate() {
            out.push((w(stats::shadow_bin("fraud", i)), *b));
        }
        out.push((
            w(stats::rollout_metric("fraud", "shadow_compared_total")),
            self.compared,
        ));
        out.push((
            w(stats::rollout_metric("fraud", "shadow_agree_total")),
            self.agree,
        ));
        out.push((
            w(stats::rollout_reason_metric(
                "fraud",
                "prediction",
                "shadow_disagree_total",
            )),
            self.disagree,
        ));
        out.push((
            w(stats::rollout_reason_metric(
                "fraud",
                "status",
                "shadow_disagree_total",
            )),
            0.0,
        ));
        out
    }

    fn json(&self) -> String {
        let mut stats: Vec<Value> = self
            .counters()
            .into_iter()
            .map(|(n, v)| serde_json::json!({"name": n, "value": v.floor() as u64}))
            .collect();
        let details: Vec<Value> = self
            .variants
            .iter()
            .map(|(v, c)| {
                let totals: Vec<Value> = c
                    .latency
                    .iter()
                    .map(|(lo, n)| {
                        serde_json::json!({"lower_bound": lo, "width": 1, "count": n.floor() as u64})
                    })
                    .collect();
                serde_json::json!({
                    "name": format!("wasmcustom.{}", stats::variant_latency("fraud", v)),
                    "totals": totals, "intervals": [], "percentiles": []})
            })
            .collect();
        stats.push(serde_json::json!({"histograms": {"supported_percentiles": [50, 99], "details": details}}));
        serde_json::json!({ "stats": stats }).to_string()
    }

    fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut typed = std::collections::HashSet::new();
        for (name, value) in self.counters() {
            let (metric, labels, kind) = if name == "server.uptime" {
                ("envoy_server_uptime".to_string(), String::new(), "gauge")
            } else {
                let p = stats::parse_stat_name(&name).unwrap();
                let labels: Vec<String> = p
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect();
                (p.metric, labels.join(","), "counter")
            };
            if typed.insert(metric.clone()) {
                writeln!(out, "# TYPE {metric} {kind}").unwrap();
            }
            writeln!(out, "{metric}{{{labels}}} {}", value.floor()).unwrap();
        }
        writeln!(out, "# TYPE model_rollout_latency_ms histogram").unwrap();
        let bounds = [
            0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
        ];
        for (v, c) in &self.variants {
            let labels = format!("rollout=\"fraud\",variant=\"{v}\"");
            for le in bounds {
                let n: f64 = c
                    .latency
                    .iter()
                    .filter(|(lo, _)| (**lo as f64) < le)
                    .map(|(_, n)| n.floor())
                    .sum();
                writeln!(
                    out,
                    "model_rollout_latency_ms_bucket{{{labels},le=\"{le}\"}} {n}"
                )
                .unwrap();
            }
            let all: f64 = c.latency.values().map(|n| n.floor()).sum();
            writeln!(
                out,
                "model_rollout_latency_ms_bucket{{{labels},le=\"+Inf\"}} {all}"
            )
            .unwrap();
            writeln!(out, "model_rollout_latency_ms_count{{{labels}}} {all}").unwrap();
        }
        out
    }
}

type Shared = Arc<Mutex<Sim>>;

async fn stats_json(State(sim): State<Shared>) -> String {
    sim.lock().unwrap().json()
}

async fn stats_prometheus(State(sim): State<Shared>) -> String {
    sim.lock().unwrap().prometheus()
}

// ---------------------------------------------------------------------------
// Harness

const SHADOW_OUTPUT: &str = r#""shadow": {"cluster": "model_shadow", "percent": 25},
  "output": {"pointer": "/outputs/0/data", "min": 0, "max": 1}"#;

const CHECKS: &str = r#""checks": [
  {"metric": "error_rate", "max_increase": 0.05, "min_samples": 20},
  {"metric": "latency", "percentile": 99, "max_increase": 100, "min_samples": 20},
  {"metric": "invalid_output_rate", "max": 0.05, "min_samples": 20},
  {"metric": "shadow_disagreement_rate", "max": 0.1, "min_samples": 20}]"#;

const STEPS: &str = r#""steps": [
  {"shadow_only": true, "min_duration_s": 1, "min_requests": 20},
  {"weight": 1, "min_duration_s": 1, "min_requests": 20},
  {"weight": 5, "min_duration_s": 1, "min_requests": 20},
  {"weight": 25, "min_duration_s": 1, "min_requests": 20},
  {"weight": 50, "min_duration_s": 1, "min_requests": 20},
  {"weight": 100, "min_duration_s": 1, "min_requests": 20}]"#;

/// The rollout `fraud` with the policy above; `progress` (a JSON object) and the
/// candidate's weight are optional.
fn plan(progress: Option<(usize, f64)>, extra_policy: &str) -> PlanSpec {
    let (canary, progress) = match progress {
        Some((step, w)) => (
            w,
            format!(
                r#","progress": {{"step": {step}, "state": "progressing", "since_ms": {}}}"#,
                rollout_control::util::timefmt::now_unix_ms()
            ),
        ),
        None => (0.0, String::new()),
    };
    let json = format!(
        r#"{{"version": 1, "rollouts": [{{"name": "fraud", "salt": "s",
        "variants": [{{"name": "stable", "weight": {}}}, {{"name": "canary", "weight": {canary}}}],
        {SHADOW_OUTPUT},
        "policy": {{"interval_s": 1, "failure_limit": 2, "inconclusive_limit": 3 {extra_policy},
                    {STEPS}, {CHECKS}}} {progress} }}]}}"#,
        100.0 - canary
    );
    rollout_core::parse_plan(json.as_bytes())
        .unwrap_or_else(|e| panic!("{e}: {json}"))
        .0
}

/// The rollout `fraud` judged by prediction drift only (PSI, bins of `EDGES`), at
/// `step` with the canary at `weight`.
fn drift_plan(step: usize, weight: f64) -> PlanSpec {
    let json = format!(
        r#"{{"version": 1, "rollouts": [{{"name": "fraud", "salt": "s",
        "variants": [{{"name": "stable", "weight": {}}}, {{"name": "canary", "weight": {weight}}}],
        "shadow": {{"cluster": "model_shadow", "percent": 25}},
        "output": {{"pointer": "/outputs/0/data", "distribution": {{"edges": [0, 0.25, 0.5, 0.75, 1]}}}},
        "policy": {{"interval_s": 1, "failure_limit": 2, "inconclusive_limit": 3, {STEPS},
                    "checks": [{{"metric": "prediction_drift", "method": "psi", "max": 0.25,
                                "min_samples": 100}}]}},
        "progress": {{"step": {step}, "state": "progressing", "since_ms": {}}} }}]}}"#,
        100.0 - weight,
        rollout_control::util::timefmt::now_unix_ms()
    );
    rollout_core::parse_plan(json.as_bytes())
        .unwrap_or_else(|e| panic!("{e}: {json}"))
        .0
}

struct Harness {
    _dir: TempDir,
    store: Arc<Store>,
    state: AppState,
    engine: Option<EngineHandle>,
    sim: Shared,
    admin: String,
    format: StatsFormat,
    /// The wall clock the engine is anchored to.
    wall_clock: WallClock,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Harness {
    async fn new(plan: PlanSpec, format: StatsFormat, rps: f64) -> Harness {
        let dir = TempDir::new("policy");
        let store = Arc::new(Store::open(dir.path()).unwrap());
        store
            .commit(|_| {
                Ok::<_, rollout_control::store::StoreError>(Change {
                    plan,
                    op: Op::Initial,
                    reason: "test".into(),
                    author: "test".into(),
                })
            })
            .unwrap();
        let sim: Shared = Arc::new(Mutex::new(Sim {
            rps,
            shadow_fraction: 0.25,
            ..Sim::default()
        }));
        // the fake admin endpoint
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = format!("http://{}", listener.local_addr().unwrap());
        let router = Router::new()
            .route("/stats", get(stats_json))
            .route("/stats/prometheus", get(stats_prometheus))
            .with_state(Arc::clone(&sim));
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        // the traffic: follows the plan in force
        let (s2, st2) = (Arc::clone(&sim), Arc::clone(&store));
        let traffic = tokio::spawn(async move {
            let mut last = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(25)).await;
                let now = Instant::now();
                let dt = now.duration_since(last).as_secs_f64();
                last = now;
                if let Some(cur) = st2.current() {
                    s2.lock().unwrap().advance(&cur.record.plan, dt);
                }
            }
        });
        let mut h = Harness {
            _dir: dir,
            state: AppState::new(Arc::clone(&store), None),
            store,
            engine: None,
            sim,
            admin,
            format,
            wall_clock: now_unix_ms,
            tasks: vec![server, traffic],
        };
        h.start_engine();
        h
    }

    fn start_engine(&mut self) {
        // a fresh AppState, as a restarted sidecar would have
        self.state = AppState::new(Arc::clone(&self.store), None);
        let handle = self
            .state
            .start_engine(
                EngineOptions {
                    envoy_admin: vec![self.admin.clone()],
                    stats_format: self.format,
                    prometheus: None,
                    tick: Duration::from_millis(100),
                    wall_clock: self.wall_clock,
                },
                None,
            )
            .unwrap();
        self.engine = Some(handle);
    }

    async fn stop_engine(&mut self) {
        if let Some(h) = self.engine.take() {
            h.shutdown().await;
        }
    }

    fn faults(&self, f: Faults) {
        self.sim.lock().unwrap().faults = f;
    }

    fn rollout(&self) -> rollout_core::plan::RolloutSpec {
        let cur = self.store.current().unwrap();
        cur.record
            .plan
            .rollouts
            .iter()
            .find(|r| r.name == "fraud")
            .unwrap()
            .clone()
    }

    fn progress(&self) -> Option<(usize, ProgressState)> {
        self.rollout().progress.map(|p| (p.step, p.state))
    }

    fn weight(&self, variant: &str) -> f64 {
        self.rollout()
            .variants
            .iter()
            .find(|v| v.name == variant)
            .unwrap()
            .weight
    }

    /// Polls the plan until `f` holds; panics with the history after `secs`.
    async fn wait_for(&self, secs: f64, what: &str, f: impl Fn(&Harness) -> bool) -> Duration {
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            if f(self) {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "timed out after {secs} s waiting for {what}; progress {:?}; history:\n{}\nanalysis: {}",
            self.progress(),
            self.reasons().join("\n"),
            self.get("/v1/rollouts/fraud/analysis?limit=5").await.1
        );
    }

    /// Reasons of the versions written by the policy, oldest first.
    fn reasons(&self) -> Vec<String> {
        let mut h = self.store.history(1000).unwrap();
        h.reverse();
        h.into_iter()
            .map(|r| format!("v{} {} {} {}", r.version, r.op, r.author, r.reason))
            .collect()
    }

    fn policy_reasons(&self) -> Vec<String> {
        let mut h = self.store.history(1000).unwrap();
        h.reverse();
        h.into_iter()
            .filter(|r| r.author == AUTHOR)
            .map(|r| r.reason)
            .collect()
    }

    async fn call(&self, method: &str, path: &str) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("x-rollout-author", "ana")
            .body(Body::empty())
            .unwrap();
        let resp = app(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let body = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, v)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call("GET", path).await
    }

    async fn post(&self, path: &str) -> (StatusCode, Value) {
        self.call("POST", path).await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The number after `prefix` in `text` (`candidate 0.201 > ...` -> 0.201).
fn number_after(text: &str, prefix: &str) -> f64 {
    let rest = text
        .split(prefix)
        .nth(1)
        .unwrap_or_else(|| panic!("no {prefix:?} in {text:?}"));
    let num: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse()
        .unwrap_or_else(|_| panic!("no number after {prefix:?} in {text:?}"))
}

fn state(h: &Harness) -> Option<ProgressState> {
    h.progress().map(|p| p.1)
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_candidate_walks_every_step_and_becomes_stable() {
    let h = Harness::new(plan(None, ""), StatsFormat::Json, 20_000.0).await;
    // started at step 0 (shadow only)
    h.wait_for(3.0, "the start", |h| h.progress().is_some())
        .await;
    assert_eq!(h.weight("canary"), 0.0);
    // an Envoy restart on the way (counters back to 0) changes nothing
    h.wait_for(10.0, "step 2", |h| h.progress().is_some_and(|p| p.0 >= 2))
        .await;
    h.sim.lock().unwrap().restart();
    h.wait_for(30.0, "completion", |h| {
        state(h) == Some(ProgressState::Complete)
    })
    .await;
    let r = h.rollout();
    assert_eq!(r.variants[0].name, "canary", "the candidate became stable");
    assert_eq!(r.variants[0].weight, 100.0);
    assert_eq!(r.variants[1].weight, 0.0);
    let reasons = h.policy_reasons();
    let expected = [
        "policy: start at step 0 (shadow only)",
        "policy: advance to step 1 (1 %): step 0 (shadow only) passed",
        "policy: advance to step 2 (5 %): step 1 (1 %) passed",
        "policy: advance to step 3 (25 %): step 2 (5 %) passed",
        "policy: advance to step 4 (50 %): step 3 (25 %) passed",
        "policy: advance to step 5 (100 %): step 4 (50 %) passed",
        "policy: complete: step 5 (100 %) passed: canary promoted to stable",
    ];
    assert_eq!(reasons.len(), expected.len(), "{reasons:#?}");
    for (got, want) in reasons.iter().zip(expected) {
        assert!(got.starts_with(want), "{got:?} should start with {want:?}");
    }
    // the 100 % step judged the relative checks against the stable baseline
    assert!(reasons[6].contains("stable baseline"), "{}", reasons[6]);
    // history entries of policy versions carry the analysis (stored right after)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, hist) = h.get("/v1/history?limit=20").await;
    assert_eq!(status, StatusCode::OK);
    let policy_entries: Vec<&Value> = hist
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["author"] == "policy")
        .collect();
    assert_eq!(policy_entries.len(), 7);
    let complete = policy_entries[0];
    assert_eq!(complete["op"], "promote");
    assert_eq!(complete["analysis"]["action"], "complete");
    assert_eq!(complete["analysis"]["verdict"], "passed");
    let checks = complete["analysis"]["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 4);
    assert!(
        checks.iter().all(|c| c["verdict"] == "passed"),
        "{checks:?}"
    );
    let href = complete["analysis"]["href"].as_str().unwrap().to_string();
    let (status, a) = h.get(&href).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    let d = &a["decisions"][0];
    assert_eq!(d["action"], "complete");
    assert!(
        d["window"]["variants"]["canary"]["requests"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(!d["series"].as_array().unwrap().is_empty());
    // status: complete, nothing next
    let (_, s) = h.get("/v1/status").await;
    let p = &s["rollouts"][0]["policy"];
    assert_eq!(p["state"], "complete", "{p}");
    assert_eq!(s["policy_engine"]["running"], true);
    assert_eq!(s["policy_engine"]["envoys"][0]["ok"], true);
}

/// Runs a rollout from `step` (canary at `weight`) and injects `faults`; returns the
/// time to the rollback and the rollback's reason.
async fn rollback_case(
    format: StatsFormat,
    step: usize,
    weight: f64,
    faults: Faults,
) -> (Harness, Duration, String) {
    let h = Harness::new(plan(Some((step, weight)), ""), format, 20_000.0).await;
    // the fault starts with the step (a healthy candidate would advance after 1 s)
    h.faults(faults);
    let start_step = step;
    let took = h
        .wait_for(8.0, "the rollback", |h| {
            state(h) == Some(ProgressState::RolledBack)
        })
        .await;
    assert_eq!(h.weight("canary"), 0.0);
    assert_eq!(h.weight("stable"), 100.0);
    let reason = h.policy_reasons().last().unwrap().clone();
    assert!(
        reason.starts_with(&format!("policy: rollback at step {start_step}")),
        "{reason}"
    );
    (h, took, reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_roll_back_within_two_intervals_and_never_re_advance() {
    let (h, took, reason) = rollback_case(
        StatsFormat::Json,
        2,
        5.0,
        Faults {
            error_rate: 0.2,
            ..Faults::default()
        },
    )
    .await;
    // two failed 1 s intervals, plus up to one interval of partial data and ticks
    assert!(took < Duration::from_millis(3500), "took {took:?}");
    let seen = number_after(&reason, "error_rate failed 2 intervals: candidate ");
    assert!((seen - 0.2).abs() < 0.01, "{reason}");
    assert!(reason.contains("> stable 0.000 + 0.05"), "{reason}");
    // healthy again: it stays rolled back (no flapping)
    h.faults(Faults::default());
    let version = h.store.current().unwrap().version();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(h.store.current().unwrap().version(), version);
    assert_eq!(state(&h), Some(ProgressState::RolledBack));
    // status says why and what to do
    let (_, s) = h.get("/v1/status").await;
    let p = &s["rollouts"][0]["policy"];
    assert_eq!(p["state"], "rolled_back");
    assert!(
        p["next_action"]["text"]
            .as_str()
            .unwrap()
            .starts_with("rolled back: policy: rollback at step 2"),
        "{p}"
    );
    // a person restarts it: step 0 again, and it progresses
    let (status, _) = h.post("/v1/rollouts/fraud/restart").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.progress(), Some((0, ProgressState::Progressing)));
    h.wait_for(5.0, "step 1 after the restart", |h| {
        h.progress().is_some_and(|p| p.0 >= 1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_roll_back_with_prometheus_stats_too() {
    let (_h, took, reason) = rollback_case(
        StatsFormat::Prometheus,
        3,
        25.0,
        Faults {
            error_rate: 0.2,
            ..Faults::default()
        },
    )
    .await;
    assert!(took < Duration::from_millis(3500), "took {took:?}");
    assert!(reason.contains("check error_rate failed"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slower_candidate_rolls_back_naming_latency() {
    let (_h, _, reason) = rollback_case(
        StatsFormat::Json,
        2,
        5.0,
        Faults {
            extra_latency_ms: 300.0,
            ..Faults::default()
        },
    )
    .await;
    // p99 of the candidate: about 350 ms against about 50 ms + 100 ms
    let seen = number_after(&reason, "check latency failed 2 intervals: candidate ");
    assert!((320.0..360.0).contains(&seen), "{reason}");
    assert!(reason.contains("ms > stable"), "{reason}");
    assert!(reason.contains("+ 100 ms"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nan_outputs_roll_back_naming_invalid_output_rate() {
    let (_h, _, reason) = rollback_case(
        StatsFormat::Json,
        2,
        5.0,
        Faults {
            nan_rate: 0.1,
            ..Faults::default()
        },
    )
    .await;
    let seen = number_after(
        &reason,
        "check invalid_output_rate failed 2 intervals: candidate ",
    );
    assert!((seen - 0.1).abs() < 0.01, "{reason}");
    assert!(reason.contains("> max 0.05"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shadow_disagreement_rolls_back_a_shadow_only_step() {
    let (_h, _, reason) = rollback_case(
        StatsFormat::Json,
        0,
        0.0,
        Faults {
            disagree_rate: 0.3,
            ..Faults::default()
        },
    )
    .await;
    let prefix = "policy: rollback at step 0 (shadow only): check shadow_disagreement_rate \
                  failed 2 intervals: candidate ";
    assert!(reason.starts_with(prefix), "{reason}");
    assert!(
        (number_after(&reason, prefix) - 0.3).abs() < 0.01,
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_traffic_is_inconclusive_and_never_advances() {
    let h = Harness::new(plan(Some((1, 1.0)), ""), StatsFormat::Json, 0.0).await;
    // inconclusive_limit 3 at 1 s intervals: holding after about 3 s
    h.wait_for(6.0, "the hold", |h| {
        state(h) == Some(ProgressState::Holding)
    })
    .await;
    assert_eq!(h.progress().unwrap().0, 1, "never advanced");
    let reason = h.policy_reasons().last().unwrap().clone();
    assert!(
        reason.starts_with("policy: hold at step 1 (1 %): inconclusive for 3 intervals: error_rate: candidate has 0 of 20 responses"),
        "{reason}"
    );
    let (_, s) = h.get("/v1/status").await;
    let p = &s["rollouts"][0]["policy"];
    assert_eq!(p["verdict"], "inconclusive", "{p}");
    assert!(p["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["verdict"] == "inconclusive"));
    // still nothing after more silence
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.progress(), Some((1, ProgressState::Holding)));
    // traffic comes back; a person resumes: it progresses again
    h.sim.lock().unwrap().rps = 20_000.0;
    let (status, _) = h.post("/v1/rollouts/fraud/resume").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.progress(), Some((1, ProgressState::Progressing)));
    h.wait_for(5.0, "step 2", |h| h.progress().is_some_and(|p| p.0 >= 2))
        .await;
}

/// The wall clock of `a_backward_clock_step_does_not_delay_an_evaluation`: the real
/// time at its first reading, then an hour further back at every later one.
fn stepping_back_wall() -> u64 {
    static READINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = READINGS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    now_unix_ms().saturating_sub(n * 3_600_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backward_clock_step_does_not_delay_an_evaluation() {
    let mut h = Harness::new(plan(None, ""), StatsFormat::Json, 20_000.0).await;
    h.stop_engine().await;
    // the system clock steps back an hour after the engine starts (and again at
    // every reading): an engine scheduling on wall time would not evaluate for hours
    h.wall_clock = stepping_back_wall;
    h.start_engine();
    h.wait_for(10.0, "step 2 on time", |h| {
        h.progress().is_some_and(|p| p.0 >= 2)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_engine_resumes_at_the_same_step() {
    let mut h = Harness::new(plan(None, ""), StatsFormat::Json, 20_000.0).await;
    h.wait_for(10.0, "step 2", |h| h.progress().is_some_and(|p| p.0 >= 2))
        .await;
    h.stop_engine().await;
    let (step, st) = h.progress().unwrap();
    let versions = h.store.current().unwrap().version();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.store.current().unwrap().version(), versions, "stopped");
    h.start_engine();
    h.wait_for(8.0, "the next step", |h| {
        h.progress().is_some_and(|p| p.0 == step + 1)
    })
    .await;
    assert_eq!(st, ProgressState::Progressing);
    let reasons = h.policy_reasons();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.starts_with("policy: start"))
            .count(),
        1,
        "no second start: {reasons:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gate_waits_for_promote_and_people_take_precedence() {
    // step 1 is a gate
    let gated = plan(Some((1, 1.0)), "").rollouts[0].clone();
    let mut p = plan(Some((1, 1.0)), "");
    let mut r = gated;
    r.policy.as_mut().unwrap().steps[1].gate = true;
    p.rollouts[0] = r;
    let h = Harness::new(p, StatsFormat::Json, 20_000.0).await;
    h.wait_for(5.0, "waiting", |h| state(h) == Some(ProgressState::Waiting))
        .await;
    assert_eq!(h.weight("canary"), 1.0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(h.progress(), Some((1, ProgressState::Waiting)), "waits");
    let (_, s) = h.get("/v1/status").await;
    assert_eq!(
        s["rollouts"][0]["policy"]["next_action"]["text"],
        "waiting for promote: promote advances to step 2 (5 %)"
    );
    // promote = next step
    let (status, body) = h.post("/v1/rollouts/fraud/promote").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(h.progress(), Some((2, ProgressState::Progressing)));
    assert_eq!(h.weight("canary"), 5.0);
    // a person's weight change: the policy holds and keeps its hands off
    let req = Request::builder()
        .method("POST")
        .uri("/v1/rollouts/fraud/weights")
        .body(Body::from(r#"{"variant":"canary","weight":2}"#))
        .unwrap();
    let resp = app(h.state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(h.progress(), Some((2, ProgressState::Holding)));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        h.weight("canary"),
        2.0,
        "the engine left the person's weight"
    );
    // a manual rollback: rolled_back, candidate 0
    let (status, _) = h.post("/v1/rollouts/fraud/rollback").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h.progress(), Some((2, ProgressState::RolledBack)));
    assert_eq!(h.weight("canary"), 0.0);
    // promote of a rolled-back rollout is refused
    let (status, body) = h.post("/v1/rollouts/fraud/promote").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "progress");
    // history: the person's and the policy's changes
    let ops: Vec<String> = h
        .store
        .history(100)
        .unwrap()
        .into_iter()
        .rev()
        .map(|r| format!("{} {}", r.op, r.author))
        .collect();
    assert_eq!(
        ops,
        vec![
            "initial test",
            "progress policy",
            "promote ana",
            "set-weights api",
            "rollback ana"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_rollouts_and_the_analysis_endpoint() {
    let mut p = plan(Some((1, 1.0)), "");
    p.rollouts[0].paused = true;
    let h = Harness::new(p, StatsFormat::Json, 20_000.0).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(h.store.current().unwrap().version(), 1, "paused: no change");
    let (_, s) = h.get("/v1/status").await;
    assert_eq!(
        s["rollouts"][0]["policy"]["next_action"]["text"],
        "paused: no automatic change until resume"
    );
    let (status, _) = h.post("/v1/rollouts/fraud/resume").await;
    assert_eq!(status, StatusCode::OK);
    h.wait_for(5.0, "step 2", |h| h.progress().is_some_and(|p| p.0 >= 2))
        .await;
    // decisions are stored right after the plan change they made
    let mut a = Value::Null;
    for _ in 0..40 {
        let (status, body) = h.get("/v1/rollouts/fraud/analysis?limit=3").await;
        assert_eq!(status, StatusCode::OK);
        a = body;
        if !a["decisions"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a["engine_running"].as_bool().unwrap());
    let decisions = a["decisions"].as_array().unwrap();
    assert!(!decisions.is_empty() && decisions.len() <= 3);
    let d = &decisions[0];
    for k in [
        "time", "action", "reason", "checks", "window", "series", "streak",
    ] {
        assert!(d.get(k).is_some(), "{k} missing in {d}");
    }
    assert!(!a["series"].as_array().unwrap().is_empty());
    let (status, _) = h.get("/v1/rollouts/nope/analysis").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, e) = h.get("/v1/rollouts/fraud/analysis?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(e["field"], "limit");
    let (status, e) = h.post("/v1/rollouts/fraud/restart?reason=x").await;
    assert_eq!(status, StatusCode::OK, "{e}");
}

#[tokio::test]
async fn restart_needs_a_policy() {
    let dir = TempDir::new("policy-nopolicy");
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let plan = rollout_core::parse_plan(
        br#"{"version":1,"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":90},{"name":"b","weight":10}]}]}"#,
    )
    .unwrap()
    .0;
    store
        .commit(|_| {
            Ok::<_, rollout_control::store::StoreError>(Change {
                plan,
                op: Op::Initial,
                reason: "t".into(),
                author: "t".into(),
            })
        })
        .unwrap();
    let state = AppState::new(store, None);
    let req = Request::builder()
        .method("POST")
        .uri("/v1/rollouts/r/restart")
        .body(Body::empty())
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value =
        serde_json::from_slice(&to_bytes(resp.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert_eq!(body["field"], "policy");
    // without a policy promote keeps its meaning
    let req = Request::builder()
        .method("POST")
        .uri("/v1/rollouts/r/promote")
        .body(Body::empty())
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let req = Request::builder()
        .uri("/v1/status")
        .body(Body::empty())
        .unwrap();
    let resp = app(state).oneshot(req).await.unwrap();
    let s: Value =
        serde_json::from_slice(&to_bytes(resp.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert_eq!(s["rollouts"][0]["variants"][0]["name"], "b");
    assert!(s["rollouts"][0].get("policy").is_none());
    assert!(s.get("policy_engine").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_advance_while_a_proxy_runs_an_older_plan() {
    let h = Harness::new(plan(Some((1, 1.0)), ""), StatsFormat::Json, 20_000.0).await;
    // a proxy that keeps polling but stays on version 1 (e.g. it rejects the plan)
    let stuck = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (app_state, flag) = (h.state.clone(), Arc::clone(&stuck));
    let store = Arc::clone(&h.store);
    let poller = tokio::spawn(async move {
        loop {
            let latest = store.current().unwrap().version();
            let v = if flag.load(std::sync::atomic::Ordering::SeqCst) {
                1
            } else {
                latest
            };
            app_state
                .proxies()
                .record("edge-1", Some(v), std::time::Instant::now());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // version 1 is the latest: nothing is behind, so step 1 advances
    h.wait_for(5.0, "step 2", |h| h.progress().is_some_and(|p| p.0 >= 2))
        .await;
    // now the proxy is behind: passing intervals do not move the rollout
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(h.progress(), Some((2, ProgressState::Progressing)));
    let (_, s) = h.get("/v1/status").await;
    let text = s["rollouts"][0]["policy"]["next_action"]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        text.contains("held back: proxies not on the latest plan v2: edge-1 at v1"),
        "{text}"
    );
    // ...but a failure still rolls back at once
    h.faults(Faults {
        error_rate: 0.5,
        ..Faults::default()
    });
    h.wait_for(5.0, "the rollback", |h| {
        state(h) == Some(ProgressState::RolledBack)
    })
    .await;
    // the proxy catches up: restart, and it walks again
    h.faults(Faults::default());
    stuck.store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, _) = h.post("/v1/rollouts/fraud/restart").await;
    assert_eq!(status, StatusCode::OK);
    h.wait_for(6.0, "step 1 after the restart", |h| {
        h.progress().is_some_and(|p| p.0 >= 1)
    })
    .await;
    poller.abort();
}

/// The real binary: `serve --envoy-admin URL --analysis-tick-ms 100` drives the
/// policy, and the CLI shows it (`status`, `analysis`) and restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_runs_the_engine_and_the_cli_shows_it() {
    const BIN: &str = env!("CARGO_BIN_EXE_rollout-control");
    // a fake Envoy without traffic: every interval is inconclusive
    let sim: Shared = Arc::new(Mutex::new(Sim::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = format!("http://{}", listener.local_addr().unwrap());
    let router = Router::new()
        .route("/stats", get(stats_json))
        .with_state(Arc::clone(&sim));
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    let dir = TempDir::new("policy-bin");
    let plan_file = dir.path().join("plan.json");
    std::fs::write(&plan_file, serde_json::to_vec(&plan(None, "")).unwrap()).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--initial-plan")
        .arg(&plan_file)
        .args(["--envoy-admin", &admin, "--analysis-tick-ms", "100"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let keep = Arc::clone(&lines);
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            keep.lock().unwrap().push(line);
        }
    });
    let seen = |what: &str| lines.lock().unwrap().iter().any(|l| l.contains(what));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(seen("listening on") && seen("policy: start at step 0")) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = lines
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| {
            l.split("listening on ")
                .nth(1)
                .map(|u| u.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no listener: {:?}", lines.lock().unwrap()));
    assert!(
        seen(&format!("policy engine: reading {admin} every 100 ms")),
        "{:?}",
        lines.lock().unwrap()
    );
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(["--server", &url])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // a few inconclusive intervals
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (ok, out, err) = cli(&["status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("policy engine: reads every 100 ms (Json)"),
        "{out}"
    );
    assert!(
        out.contains("fraud: step 0 (shadow only) of 6, progressing"),
        "{out}"
    );
    assert!(
        out.contains("shadow_disagreement_rate  inconclusive"),
        "{out}"
    );
    assert!(out.contains("next: advance to step 1 (1 %) at"), "{out}");
    let (ok, out, err) = cli(&["analysis", "--rollout", "fraud", "--limit", "3"]);
    assert!(ok, "{err}");
    assert!(out.contains("inconclusive  stay"), "{out}");
    let (ok, out, err) = cli(&["--json", "status"]);
    assert!(ok, "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["rollouts"][0]["policy"]["state"], "progressing");
    let (ok, out, err) = cli(&["restart", "--rollout", "fraud", "--reason", "again"]);
    assert!(ok, "{err}");
    assert!(out.contains("stored"), "{out}");
    let (ok, out, _) = cli(&["history", "--limit", "1"]);
    assert!(ok);
    assert!(out.contains("restart") && out.contains("again"), "{out}");
    let _ = child.kill();
    let _ = child.wait();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_identical_distribution_advances_and_a_shifted_one_rolls_back_naming_the_psi() {
    let h = Harness::new(drift_plan(2, 5.0), StatsFormat::Json, 20_000.0).await;
    // the same distribution as stable: the step passes
    h.wait_for(5.0, "step 3 with an undrifted candidate", |h| {
        h.progress().is_some_and(|p| p.0 >= 3)
    })
    .await;
    let (_, s) = h.get("/v1/status").await;
    let check = &s["rollouts"][0]["policy"]["checks"][0];
    assert_eq!(check["name"], "prediction_drift", "{s}");
    assert_eq!(check["verdict"], "passed", "{check}");
    assert!(check["candidate"].as_f64().unwrap() < 0.01, "{check}");
    let drift = &check["drift"];
    assert_eq!(drift["method"], "psi");
    assert_eq!(
        drift["bin_names"],
        serde_json::json!([
            "< 0",
            "[0, 0.25)",
            "[0.25, 0.5)",
            "[0.5, 0.75)",
            "[0.75, 1]",
            "> 1",
            "other"
        ])
    );
    assert_eq!(drift["candidate_bins"].as_array().unwrap().len(), 7);
    // a shifted candidate: healthy by every other measure, rolled back by drift
    h.faults(Faults {
        score_shift: true,
        ..Faults::default()
    });
    h.wait_for(6.0, "the rollback", |h| {
        state(h) == Some(ProgressState::RolledBack)
    })
    .await;
    let reason = h.policy_reasons().last().unwrap().clone();
    let psi = number_after(&reason, "check prediction_drift failed 2 intervals: PSI ");
    // the windows mix the shares exactly (counts are large): the PSI of the two
    // distributions, smoothing aside
    let want: f64 = SHIFTED
        .iter()
        .zip(HEALTHY)
        .filter(|(c, s)| **c > 0.0 && *s > 0.0)
        .map(|(c, s)| (c - s) * (c / s).ln())
        .sum();
    assert!((psi - want).abs() < 0.02, "{reason}: want about {want}");
    assert!(reason.contains("> max 0.25 (major shift)"), "{reason}");
    // the analysis keeps the bins of the failed intervals
    let (_, a) = h.get("/v1/rollouts/fraud/analysis?limit=5").await;
    let text = a.to_string();
    assert!(text.contains("candidate_bins"), "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drifting_shadow_rolls_back_a_shadow_only_step() {
    let h = Harness::new(drift_plan(0, 0.0), StatsFormat::Json, 20_000.0).await;
    h.faults(Faults {
        score_shift: true,
        ..Faults::default()
    });
    h.wait_for(6.0, "the rollback", |h| {
        state(h) == Some(ProgressState::RolledBack)
    })
    .await;
    let reason = h.policy_reasons().last().unwrap().clone();
    assert!(
        reason.starts_with(
            "policy: rollback at step 0 (shadow only): check prediction_drift failed 2 intervals: PSI "
        ),
        "{reason}"
    );
    assert!(
        reason.contains("shadow") && reason.contains("vs primary"),
        "{reason}"
    );
}
