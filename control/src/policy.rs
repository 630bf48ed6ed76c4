//! The progressive-delivery engine: walks each rollout with a `policy` through its
//! steps, reading the Envoys' stats, and rolls the candidate back the moment its
//! checks fail. The rules themselves are pure functions in
//! `rollout_core::analysis`; this module runs them on a timer against the store.
//!
//! Every analysis tick (`--analysis-tick-ms`, default 1000):
//!
//! 1. read every `--envoy-admin` (`scrape`) and add the tick's increases to the
//!    per-rollout time series (`window`);
//! 2. start each rollout that has a policy but no `progress` (not paused): step 0,
//!    progressing, the candidate at step 0's weight (0 % for a shadow-only step);
//! 3. for each rollout with progress `progressing`, `waiting` or `holding` (not
//!    paused) whose `interval_s` has elapsed since its last evaluation: judge every
//!    check over the last `interval_s` seconds, update the failed/inconclusive
//!    streaks and decide (`analysis::decide`): stay, advance, wait for promote,
//!    complete, hold or roll back. `rolled_back` and `complete` rollouts are never
//!    evaluated: nothing moves them but a person.
//! 4. commit each transition as a new plan version (author `policy`, a reason that
//!    names the checks, values and thresholds), only if the rollout's progress is
//!    still the one the decision was based on (a person's change in between wins);
//! 5. store every decision (checks, window, series) in the `policy_decisions` table.
//!
//! Decisions: table `policy_decisions`, `(rollout, unix_ms) -> Decision JSON`, at most
//! [`DECISIONS_PER_ROLLOUT`] per rollout (the oldest go); table
//! `policy_decision_versions`: `plan version -> summary` of the decision that wrote
//! that version (shown as `analysis` in `GET /v1/history`). A decision that changed
//! the plan is committed with `Durability::Immediate`; the others with
//! `Durability::None` (made durable by the next immediate commit, at least every
//! 10 s), so a crash may lose the last seconds of "stay" decisions, never a transition.
//!
//! In memory only (a restarted sidecar starts afresh, at the step stored in the plan):
//! the time series, the streaks, the time of the next evaluation (one `interval_s`
//! after the engine first sees a step) and the candidate traffic counted toward a
//! step's `min_requests` (what this process observed since it first saw the step).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use rollout_core::analysis::{
    self, evaluate_checks, interval_verdict, next_action, update_baselines, AbOutcome, AbState,
    Action, Baseline, CheckOutcome, EvalContext, IntervalVerdict, NextAction, NextFacts, StepFacts,
    Streak,
};
use rollout_core::plan::RolloutSpec;
use rollout_core::policy::{
    step_label, step_weight, CheckMetric, PolicySpec, ProgressSpec, ProgressState,
};
use rollout_core::transitions;
use rollout_core::PlanSpec;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::analysis::SeriesPoint;
use crate::api::analysis::{AnalysisReport, Decision, WindowSummary};
use crate::api::status::{EngineView, EnvoyStatus, PolicyStatus, StatsFormat};
use crate::error::ApiError;
use crate::scrape::Scraper;
use crate::server::AppState;
use crate::store::decisions::{read_decisions, write_decisions, DECISIONS_PER_ROLLOUT};
use crate::store::{Change, Current, Op, Store, StoreError};
use crate::util::timefmt::{now_unix_ms, rfc3339_ms};
use crate::window::{plan_selectors, tick_traffic, variant_summary, SeriesStore};

/// Author of every change the engine makes.
pub const AUTHOR: &str = "policy";
/// Points of the window series stored with each decision.
const DECISION_POINTS: usize = 30;
/// Points of the live series in `GET /v1/rollouts/{name}/analysis`.
const LIVE_POINTS: usize = 120;
/// Non-transition decisions are made durable at least this often.
const DURABLE_EVERY_MS: u64 = 10_000;
/// Decisions returned without `?limit=`, and at most.
const DEFAULT_DECISIONS: usize = 20;
const MAX_DECISIONS: usize = DECISIONS_PER_ROLLOUT;

// ---------------------------------------------------------------------------
// Options, A/B source

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Envoy admin base URLs (`http://127.0.0.1:9901`).
    pub envoy_admin: Vec<String>,
    pub stats_format: StatsFormat,
    /// How often the Envoys are read (and due evaluations run).
    pub tick: Duration,
}

/// `serve` flags of the engine.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Envoy admin base URL whose stats the policy engine reads (repeat for every
    /// Envoy the sidecar serves; their counters are added up). Without it the policy
    /// engine does not run.
    #[arg(long = "envoy-admin", value_name = "URL")]
    pub envoy_admin: Vec<String>,
    /// How to read the stats: `json` (Envoy's detailed histogram bins) or `prometheus`.
    #[arg(long, value_enum, default_value_t = StatsFormat::Json)]
    pub stats_format: StatsFormat,
    /// Read the Envoys (and run due evaluations) this often, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub analysis_tick_ms: u64,
}

impl PolicyArgs {
    /// The engine's options; `None` without `--envoy-admin`.
    pub fn options(&self) -> Option<EngineOptions> {
        (!self.envoy_admin.is_empty()).then(|| EngineOptions {
            envoy_admin: self.envoy_admin.clone(),
            stats_format: self.stats_format,
            tick: Duration::from_millis(self.analysis_tick_ms),
        })
    }
}

/// Where the `ab` check gets the experiment's verdict.
pub trait AbSource: Send + Sync {
    /// The verdict for `rollout` of `plan`; `None`: nothing to judge (no experiment
    /// section, or no data source), the check is inconclusive.
    fn outcome(&self, store: &Store, plan: &PlanSpec, rollout: &str) -> Option<AbOutcome>;
}

/// The A/B verdicts of `crate::experiments` (assignments joined with feedback).
pub struct ExperimentsAb;

impl AbSource for ExperimentsAb {
    fn outcome(&self, store: &Store, plan: &PlanSpec, rollout: &str) -> Option<AbOutcome> {
        let compiled = plan.compile().ok()?;
        let r = compiled.rollouts.iter().find(|r| r.name == rollout)?;
        let v = match crate::report::experiment::verdict(store, r) {
            Ok(v) => v?,
            Err(e) => {
                return Some(AbOutcome {
                    state: AbState::NotReady,
                    detail: format!("cannot read the experiment: {e}"),
                })
            }
        };
        let counts = v
            .counts
            .iter()
            .map(|(n, c)| format!("{n} {c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let state = match (v.status, v.significant, v.candidate_better) {
            (crate::api::experiment::VerdictStatus::Collecting, _, _) => AbState::NotReady,
            (_, true, Some(true)) => AbState::Better,
            (_, true, Some(false)) => AbState::Worse,
            _ => AbState::NoDifference,
        };
        let mut detail = format!(
            "outcomes {counts} (horizon {} per variant)",
            v.samples_per_variant
        );
        if let Some(d) = v.diff {
            detail.push_str(&format!(", diff {d:.4}"));
        }
        if let Some(p) = v.p_value {
            detail.push_str(&format!(", p = {p:.4} (alpha {})", v.alpha));
        }
        Some(AbOutcome { state, detail })
    }
}

// ---------------------------------------------------------------------------
// Decisions

// ---------------------------------------------------------------------------
// The engine

/// The progress a decision is based on; a transition is committed only if the
/// rollout still has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Basis {
    step: Option<usize>,
    state: Option<ProgressState>,
    since_ms: Option<u64>,
}

impl Basis {
    fn of(r: &RolloutSpec) -> Basis {
        Basis {
            step: r.progress.as_ref().map(|p| p.step),
            state: r.progress.as_ref().map(|p| p.state),
            since_ms: r.progress.as_ref().map(|p| p.since_ms),
        }
    }
}

/// The latest evaluation of a rollout, for status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub at_ms: u64,
    pub verdict: IntervalVerdict,
    pub action: String,
    pub checks: Vec<CheckOutcome>,
    pub window: WindowSummary,
}

#[derive(Debug, Clone)]
struct Runtime {
    basis: Basis,
    streak: Streak,
    next_eval_ms: u64,
    step_traffic: f64,
    last: Option<Evaluation>,
    error: Option<String>,
    /// Why the last evaluation could not move forward (proxies behind).
    blocked: Option<String>,
}

/// Stable baselines of a rollout's relative checks (kept across steps, for steps
/// where the stable variant gets no traffic), with the stable variant they describe.
#[derive(Debug, Default)]
struct Baselines {
    stable: String,
    checks: BTreeMap<usize, Baseline>,
}

#[derive(Debug, Default)]
struct EngineState {
    rollouts: HashMap<String, Runtime>,
    baselines: HashMap<String, Baselines>,
    series: SeriesStore,
    envoys: Vec<EnvoyStatus>,
    last_tick_ms: Option<u64>,
}

/// The engine's shared state (read by status and the analysis endpoint).
pub struct Engine {
    tick_ms: u64,
    format: StatsFormat,
    state: Mutex<EngineState>,
}

impl Engine {
    fn lock(&self) -> std::sync::MutexGuard<'_, EngineState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn view(&self) -> EngineView {
        let st = self.lock();
        EngineView {
            running: true,
            tick_ms: self.tick_ms,
            stats_format: self.format,
            envoys: st.envoys.clone(),
            last_tick: st.last_tick_ms.map(rfc3339_ms),
        }
    }

    /// The live series of a rollout over `(from_ms, to_ms]`.
    pub fn points(&self, rollout: &str, from_ms: u64, to_ms: u64, max: usize) -> Vec<SeriesPoint> {
        self.lock().series.points(rollout, from_ms, to_ms, max)
    }
}

/// The running engine: its state and the task driving it.
pub struct EngineHandle {
    engine: Arc<Engine>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl EngineHandle {
    pub fn engine(&self) -> Arc<Engine> {
        Arc::clone(&self.engine)
    }

    /// Stops the loop after the tick in progress and waits for it (the task's store
    /// reference is gone when this returns).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// A proxy that polled within this long counts for "proxies behind".
const ACTIVE_PROXY_MS: u128 = 30_000;

/// Starts the engine on the current tokio runtime for the store of `state`, and
/// attaches it to `state` (status and analysis read it; the proxy table tells
/// whether the proxies run the latest plan).
pub fn start(
    state: &AppState,
    opts: EngineOptions,
    ab: Option<Arc<dyn AbSource>>,
) -> anyhow::Result<EngineHandle> {
    let store = Arc::clone(state.store());
    let tick = opts.tick.max(Duration::from_millis(10));
    let tick_ms = u64::try_from(tick.as_millis()).unwrap_or(u64::MAX);
    // A read never takes longer than a tick, but at least 500 ms (at most 5 s).
    let timeout = tick.clamp(Duration::from_millis(500), Duration::from_secs(5));
    let scraper = Scraper::new(&opts.envoy_admin, opts.stats_format, timeout)?;
    let engine = Arc::new(Engine {
        tick_ms,
        format: opts.stats_format,
        state: Mutex::new(EngineState {
            envoys: scraper.statuses(),
            ..EngineState::default()
        }),
    });
    let (stop, stop_rx) = watch::channel(false);
    state.set_policy_engine(Arc::clone(&engine));
    let task = tokio::spawn(run(
        Arc::clone(&engine),
        store,
        state.clone(),
        scraper,
        ab.unwrap_or_else(|| Arc::new(ExperimentsAb)),
        tick,
        stop_rx,
    ));
    Ok(EngineHandle { engine, stop, task })
}

/// A unit of work decided under the engine's lock and carried out after it.
enum Work {
    Transition {
        basis: Basis,
        action: Action,
        decision: Decision,
    },
    Record(Decision),
}

async fn run(
    engine: Arc<Engine>,
    store: Arc<Store>,
    state: AppState,
    scraper: Scraper,
    ab: Arc<dyn AbSource>,
    tick: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let scraper = Arc::new(Mutex::new(scraper));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_durable_ms = 0u64;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
        let behind = proxies_behind(&state);
        if let Err(e) = run_tick(&engine, &store, &scraper, &ab, behind, &mut last_durable_ms).await
        {
            eprintln!("rollout-control: policy engine: {e}");
        }
    }
}

/// Proxies that polled in the last 30 s and report a plan version older than the
/// latest: `"demo-envoy at v3 (latest v5)"`; `None` when all are current.
fn proxies_behind(state: &AppState) -> Option<String> {
    let latest = state.store().current()?.version();
    let now = std::time::Instant::now();
    let behind: Vec<String> = state
        .proxies()
        .snapshot()
        .into_iter()
        .filter(|(_, seen)| now.duration_since(seen.last_seen).as_millis() <= ACTIVE_PROXY_MS)
        .filter_map(|(id, seen)| {
            seen.plan_version
                .filter(|v| *v < latest)
                .map(|v| format!("{id} at v{v}"))
        })
        .collect();
    if behind.is_empty() {
        return None;
    }
    let n = behind.len();
    let mut list: Vec<String> = behind.into_iter().take(5).collect();
    if n > 5 {
        list.push(format!("and {} more", n - 5));
    }
    Some(format!(
        "proxies not on the latest plan v{latest}: {}",
        list.join(", ")
    ))
}

async fn run_tick(
    engine: &Arc<Engine>,
    store: &Arc<Store>,
    scraper: &Arc<Mutex<Scraper>>,
    ab: &Arc<dyn AbSource>,
    behind: Option<String>,
    last_durable_ms: &mut u64,
) -> anyhow::Result<()> {
    let cur = store.current();
    let selectors = cur
        .as_ref()
        .map(|c| plan_selectors(&c.record.plan))
        .unwrap_or_default();
    let sc = Arc::clone(scraper);
    let (tick, statuses) = tokio::task::spawn_blocking(move || {
        let mut s = sc.lock().unwrap_or_else(PoisonError::into_inner);
        let t = s.scrape(&selectors);
        (t, s.statuses())
    })
    .await?;
    let now = now_unix_ms();
    let Some(cur) = cur else {
        let mut st = engine.lock();
        st.envoys = statuses;
        st.last_tick_ms = Some(now);
        return Ok(());
    };
    let plan = &cur.record.plan;

    // Phase 1: series, runtimes, starts, due evaluations.
    let mut works: Vec<Work> = Vec::new();
    let mut due: Vec<String> = Vec::new();
    {
        let mut st = engine.lock();
        let start = st
            .last_tick_ms
            .unwrap_or_else(|| now.saturating_sub(engine.tick_ms));
        st.series.ingest(start, now, &tick, plan);
        st.last_tick_ms = Some(now);
        st.envoys = statuses;
        let with_policy = |name: &String| {
            plan.rollouts
                .iter()
                .any(|r| &r.name == name && r.policy.is_some())
        };
        st.rollouts.retain(|name, _| with_policy(name));
        st.baselines.retain(|name, _| with_policy(name));
        for r in &plan.rollouts {
            let Some(policy) = &r.policy else { continue };
            let basis = Basis::of(r);
            let interval_ms = policy.interval_s.saturating_mul(1000);
            let rt = st
                .rollouts
                .entry(r.name.clone())
                .or_insert_with(|| Runtime {
                    basis,
                    streak: Streak::default(),
                    next_eval_ms: now + interval_ms,
                    step_traffic: 0.0,
                    last: None,
                    error: None,
                    blocked: None,
                });
            if rt.basis != basis {
                // A new step or state: fresh streaks and traffic count (the last
                // evaluation stays visible in status until the next one).
                let last = rt.last.take();
                *rt = Runtime {
                    basis,
                    streak: Streak::default(),
                    next_eval_ms: now + interval_ms,
                    step_traffic: 0.0,
                    last,
                    error: None,
                    blocked: None,
                };
            }
            if r.paused {
                continue;
            }
            let Some(progress) = &r.progress else {
                works.push(Work::Transition {
                    basis,
                    action: Action::Advance { to: 0 },
                    decision: start_decision(r, policy, cur.version(), now),
                });
                continue;
            };
            let shadow_only = policy
                .steps
                .get(progress.step)
                .is_some_and(|s| s.shadow_only);
            let candidate = r.candidate_name().unwrap_or("");
            let live = matches!(
                progress.state,
                ProgressState::Progressing | ProgressState::Waiting | ProgressState::Holding
            );
            if live {
                rt.step_traffic += tick_traffic(&tick, &r.name, candidate, shadow_only);
            }
            if live && now >= rt.next_eval_ms {
                due.push(r.name.clone());
            }
        }
    }

    // Phase 2: A/B verdicts (store reads) for due rollouts with an ab check.
    let mut abs: HashMap<String, AbOutcome> = HashMap::new();
    let needs_ab: Vec<String> = due
        .iter()
        .filter(|n| {
            plan.rollouts.iter().any(|r| {
                &r.name == *n
                    && r.policy
                        .as_ref()
                        .is_some_and(|p| p.checks.iter().any(|c| c.metric == CheckMetric::Ab))
            })
        })
        .cloned()
        .collect();
    if !needs_ab.is_empty() {
        let (s, a, p) = (Arc::clone(store), Arc::clone(ab), plan.clone());
        abs = tokio::task::spawn_blocking(move || {
            needs_ab
                .into_iter()
                .filter_map(|n| a.outcome(&s, &p, &n).map(|o| (n, o)))
                .collect::<HashMap<_, _>>()
        })
        .await?;
    }

    // Phase 3: evaluate and decide.
    {
        let mut st = engine.lock();
        for name in &due {
            let Some(r) = plan.rollouts.iter().find(|r| &r.name == name) else {
                continue;
            };
            let (Some(policy), Some(progress)) = (&r.policy, &r.progress) else {
                continue;
            };
            let interval_ms = policy.interval_s.saturating_mul(1000);
            let from = now.saturating_sub(interval_ms);
            // Only samples taken entirely within the step judge it.
            let w = st.series.window_since(name, from, now, progress.since_ms);
            let points = st
                .series
                .points(name, from.max(progress.since_ms), now, DECISION_POINTS);
            let stable = r.variants.first().map(|v| v.name.as_str()).unwrap_or("");
            let stable_idle = r.variants.first().is_some_and(|v| v.weight == 0.0);
            let candidate = r.candidate_name().unwrap_or("");
            let shadow_only = policy
                .steps
                .get(progress.step)
                .is_some_and(|s| s.shadow_only);
            let bl = st.baselines.entry(name.clone()).or_default();
            if bl.stable != stable {
                *bl = Baselines {
                    stable: stable.to_string(),
                    checks: BTreeMap::new(),
                };
            }
            // Baselines older than the series' memory are forgotten.
            let oldest = now.saturating_sub(crate::window::RETENTION_MS);
            bl.checks.retain(|_, b| b.at_ms >= oldest);
            let ctx = EvalContext {
                stable,
                candidate,
                shadow_only,
                ab: abs.get(name),
                stable_idle,
                baselines: Some(&bl.checks),
            };
            let judged = PolicySpec {
                checks: rollout_core::analysis::effective_checks(name, policy),
                ..policy.clone()
            };
            let checks = evaluate_checks(&judged, &ctx, &w);
            let verdict = interval_verdict(&checks, &ctx, &w);
            update_baselines(&mut bl.checks, &checks, now);
            let Some(rt) = st.rollouts.get_mut(name) else {
                continue;
            };
            rt.streak.record(verdict);
            rt.next_eval_ms = now + interval_ms;
            let facts = StepFacts {
                now_ms: now,
                step_traffic: rt.step_traffic,
                blocked: behind.clone(),
            };
            rt.blocked = behind.clone();
            let action = analysis::decide(policy, progress, rt.streak, verdict, &facts);
            let summary = WindowSummary {
                from_ms: from,
                to_ms: now,
                span_s: w.span_s,
                variants: w
                    .variants
                    .iter()
                    .map(|(k, v)| (k.clone(), variant_summary(v)))
                    .collect(),
                shadow: w.shadow,
                stats: w
                    .stats
                    .iter()
                    .filter_map(|(k, s)| s.value(w.span_s).map(|v| (k.clone(), v)))
                    .collect(),
            };
            let reason = transition_reason(
                policy,
                progress,
                candidate,
                &action,
                rt.streak,
                &checks,
                rt.step_traffic,
            );
            rt.last = Some(Evaluation {
                at_ms: now,
                verdict,
                action: action.as_str().to_string(),
                checks: checks.clone(),
                window: summary.clone(),
            });
            let decision = Decision {
                rollout: name.clone(),
                unix_ms: now,
                time: rfc3339_ms(now),
                action: action.as_str().to_string(),
                reason,
                plan_version: None,
                based_on_version: cur.version(),
                step: progress.step,
                step_label: step_label(policy, progress.step),
                state: Some(progress.state),
                verdict: Some(verdict),
                streak: rt.streak,
                step_traffic: rt.step_traffic,
                checks,
                window: Some(summary),
                series: points,
                error: None,
            };
            match action {
                Action::Stay(_) => works.push(Work::Record(decision)),
                a => works.push(Work::Transition {
                    basis: rt.basis,
                    action: a,
                    decision,
                }),
            }
        }
    }

    // Phase 4: commit transitions, store decisions.
    let mut decisions = Vec::with_capacity(works.len());
    let mut transitions = false;
    for w in works {
        match w {
            Work::Record(d) => decisions.push(d),
            Work::Transition {
                basis,
                action,
                mut decision,
            } => {
                let s = Arc::clone(store);
                let (name, reason, now2) = (decision.rollout.clone(), decision.reason.clone(), now);
                let a = action.clone();
                let res = tokio::task::spawn_blocking(move || {
                    commit_transition(&s, &name, basis, &a, &reason, now2)
                })
                .await?;
                match res {
                    Ok(version) => {
                        transitions = true;
                        decision.plan_version = Some(version);
                        eprintln!(
                            "rollout-control: v{version} by \"{AUTHOR}\": {:?}",
                            decision.reason
                        );
                    }
                    Err(e) => {
                        decision.error = Some(e.clone());
                        let mut st = engine.lock();
                        if let Some(rt) = st.rollouts.get_mut(&decision.rollout) {
                            rt.error = Some(e);
                        }
                    }
                }
                decisions.push(decision);
            }
        }
    }
    if !decisions.is_empty() {
        let durable = transitions || now.saturating_sub(*last_durable_ms) >= DURABLE_EVERY_MS;
        if durable {
            *last_durable_ms = now;
        }
        let s = Arc::clone(store);
        tokio::task::spawn_blocking(move || write_decisions(&s, &decisions, durable)).await??;
    }
    Ok(())
}

fn start_decision(r: &RolloutSpec, policy: &PolicySpec, version: u64, now: u64) -> Decision {
    Decision {
        rollout: r.name.clone(),
        unix_ms: now,
        time: rfc3339_ms(now),
        action: "start".to_string(),
        reason: analysis::start_reason(policy),
        plan_version: None,
        based_on_version: version,
        step: 0,
        step_label: step_label(policy, 0),
        state: None,
        verdict: None,
        streak: Streak::default(),
        step_traffic: 0.0,
        checks: Vec::new(),
        window: None,
        series: Vec::new(),
        error: None,
    }
}

/// The reason of a transition (or, for `Stay`, why nothing changed).
fn transition_reason(
    policy: &PolicySpec,
    progress: &ProgressSpec,
    candidate: &str,
    action: &Action,
    streak: Streak,
    checks: &[CheckOutcome],
    traffic: f64,
) -> String {
    let step = progress.step;
    match action {
        Action::Stay(why) => format!("policy: stay at {}: {why}", step_label(policy, step)),
        Action::Advance { to } => analysis::advance_reason(policy, step, *to, checks, traffic),
        Action::Wait => analysis::wait_reason(policy, step, checks, traffic),
        Action::Complete => analysis::complete_reason(policy, step, candidate, checks, traffic),
        Action::Rollback => analysis::rollback_reason(policy, step, streak, checks),
        Action::Hold => analysis::hold_reason(policy, step, streak, checks),
    }
}

/// Commits one transition if the rollout still has the progress it was based on and
/// is not paused. Returns the new version, or why not. Blocking.
fn commit_transition(
    store: &Store,
    rollout: &str,
    basis: Basis,
    action: &Action,
    reason: &str,
    now: u64,
) -> Result<u64, String> {
    #[derive(Debug)]
    enum E {
        Store(StoreError),
        Refused(String),
    }
    impl From<StoreError> for E {
        fn from(e: StoreError) -> Self {
            E::Store(e)
        }
    }
    let res = store.commit(|cur: Option<&Current>| -> Result<Change, E> {
        let cur = cur.ok_or_else(|| E::Refused("no plan".to_string()))?;
        let plan = &cur.record.plan;
        let r = plan
            .rollouts
            .iter()
            .find(|r| r.name == rollout)
            .ok_or_else(|| E::Refused(format!("rollout {rollout} is gone")))?;
        if r.paused || r.policy.is_none() || Basis::of(r) != basis {
            return Err(E::Refused(format!(
                "rollout {rollout} changed meanwhile (paused, policy or progress); decision dropped"
            )));
        }
        let op = match action {
            Action::Advance { .. } => Op::SetWeights,
            Action::Wait | Action::Hold => Op::Progress,
            Action::Rollback => Op::Rollback,
            Action::Complete => Op::Promote,
            Action::Stay(_) => return Err(E::Refused("nothing to commit".to_string())),
        };
        let next = transitions::apply(plan, rollout, action, now, reason)
            .map_err(|e| E::Refused(e.to_string()))?
            .ok_or_else(|| E::Refused("nothing to commit".to_string()))?;
        Ok(Change {
            plan: next,
            op,
            reason: reason.to_string(),
            author: AUTHOR.to_string(),
        })
    });
    match res {
        Ok(c) => Ok(c.version()),
        Err(E::Store(e)) => Err(e.to_string()),
        Err(E::Refused(m)) => Err(m),
    }
}

// ---------------------------------------------------------------------------
// Status

/// The policy status of a rollout (`None` without a policy).
pub fn rollout_status(
    engine: Option<&Engine>,
    r: &RolloutSpec,
    now_ms: u64,
) -> Option<PolicyStatus> {
    let policy = r.policy.as_ref()?;
    let complete = r
        .progress
        .as_ref()
        .is_some_and(|p| p.state == ProgressState::Complete);
    // Once complete, the promoted candidate is the first (stable) variant.
    let candidate = if complete {
        r.variants
            .first()
            .map(|v| v.name.clone())
            .unwrap_or_default()
    } else {
        r.candidate_name().unwrap_or("").to_string()
    };
    let stable = r
        .variants
        .first()
        .map(|v| v.name.clone())
        .unwrap_or_default();
    let step = r.progress.as_ref().map_or(0, |p| p.step);
    let spec = policy.steps.get(step);
    let weight = r
        .variants
        .iter()
        .find(|v| v.name == candidate)
        .map_or(0.0, |v| v.weight);
    let any_rt = engine.and_then(|e| e.lock().rollouts.get(&r.name).cloned());
    // Streaks and counts belong to the step the engine saw; right after a transition
    // (before the next tick) they start afresh.
    let rt = any_rt.clone().filter(|rt| rt.basis == Basis::of(r));
    let streak = rt.as_ref().map(|x| x.streak).unwrap_or_default();
    let step_traffic = rt.as_ref().map_or(0.0, |x| x.step_traffic);
    let next_eval = match (engine, &rt) {
        (Some(_), Some(x)) => Some(x.next_eval_ms),
        (Some(e), None) => Some(now_ms + e.tick_ms),
        (None, _) => None,
    };
    let next = match &r.progress {
        Some(p) => next_action(
            policy,
            p,
            &candidate,
            &NextFacts {
                paused: r.paused,
                streak,
                step_traffic,
                now_ms,
                next_eval_ms: next_eval,
            },
            &rfc3339_ms,
        ),
        None => NextAction {
            action: if r.paused || engine.is_none() {
                "none"
            } else {
                "start"
            }
            .to_string(),
            at_ms: next_eval.filter(|_| !r.paused),
            text: if engine.is_none() {
                "the policy engine is not running (serve without --envoy-admin)".to_string()
            } else if r.paused {
                "paused: no automatic change until resume".to_string()
            } else {
                format!("start at {} on the next tick", step_label(policy, 0))
            },
        },
    };
    let last = any_rt.as_ref().and_then(|x| x.last.clone());
    let mut next = next;
    if let Some(b) = rt.as_ref().and_then(|x| x.blocked.as_ref()) {
        if matches!(next.action.as_str(), "advance" | "complete" | "wait") {
            next.text.push_str(&format!("; held back: {b}"));
        }
    }
    Some(PolicyStatus {
        candidate,
        stable,
        step,
        steps: policy.steps.len(),
        step_label: step_label(policy, step),
        step_weight: spec.map_or(0.0, step_weight),
        weight,
        shadow_only: spec.is_some_and(|s| s.shadow_only),
        state: r.progress.as_ref().map(|p| p.state),
        since: r.progress.as_ref().map(|p| rfc3339_ms(p.since_ms)),
        time_in_step_s: r
            .progress
            .as_ref()
            .map(|p| now_ms.saturating_sub(p.since_ms) as f64 / 1000.0),
        note: r.progress.as_ref().and_then(|p| p.note.clone()),
        interval_s: policy.interval_s,
        min_duration_s: spec.map_or(0, |s| s.min_duration_s),
        min_requests: spec.map_or(0, |s| s.min_requests),
        step_traffic,
        verdict: last.as_ref().map(|l| l.verdict),
        evaluated: last.as_ref().map(|l| rfc3339_ms(l.at_ms)),
        consecutive_failed: streak.failed,
        consecutive_inconclusive: streak.inconclusive,
        failure_limit: policy.failure_limit,
        inconclusive_limit: policy.inconclusive_limit,
        checks: last.map(|l| l.checks).unwrap_or_default(),
        next_at: next.at_ms.map(rfc3339_ms),
        next_action: next,
        error: any_rt.and_then(|x| x.error),
    })
}

// ---------------------------------------------------------------------------
// GET /v1/rollouts/{name}/analysis

#[derive(Debug, Deserialize)]
pub struct AnalysisQuery {
    limit: Option<String>,
    version: Option<String>,
}

/// The routes of this module (merged into `server::app`).
pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/rollouts/{name}/analysis", get(get_analysis))
}

async fn get_analysis(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<AnalysisQuery>, QueryRejection>,
) -> Result<Json<AnalysisReport>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request("", e.body_text()))?;
    let limit = match q.limit.as_deref() {
        None => DEFAULT_DECISIONS,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_DECISIONS).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "limit",
                    format!("{s:?} is not a number from 1 to {MAX_DECISIONS}"),
                ))
            }
        },
    };
    let version = match q.version.as_deref() {
        None => None,
        Some(s) => Some(s.trim_start_matches('v').parse::<u64>().map_err(|_| {
            ApiError::bad_request("version", format!("{s:?} is not a plan version"))
        })?),
    };
    let cur = state.store().current().ok_or_else(ApiError::no_plan)?;
    let plan = &cur.record.plan;
    let r = plan.rollout_named(&name)?;
    let engine = state.policy_engine();
    let now = now_unix_ms();
    let status = rollout_status(engine.as_deref(), r, now);
    let interval_ms = r
        .policy
        .as_ref()
        .map_or(60_000, |p| p.interval_s.saturating_mul(1000));
    let span = interval_ms.saturating_mul(10).max(60_000);
    let (series, window) = match &engine {
        Some(e) => {
            let last = e
                .lock()
                .rollouts
                .get(&name)
                .and_then(|rt| rt.last.as_ref().map(|l| l.window.clone()));
            (
                e.points(&name, now.saturating_sub(span), now, LIVE_POINTS),
                last,
            )
        }
        None => (Vec::new(), None),
    };
    let store = Arc::clone(state.store());
    let n = name.clone();
    // Filtering by version scans the kept decisions.
    let scan = if version.is_some() {
        MAX_DECISIONS
    } else {
        limit
    };
    let decisions = tokio::task::spawn_blocking(move || read_decisions(&store, &n, scan, version))
        .await
        .map_err(|e| ApiError::internal(format!("store task failed: {e}")))??;
    Ok(Json(AnalysisReport {
        rollout: name,
        plan_version: cur.version(),
        engine_running: engine.is_some(),
        progress: r.progress.clone(),
        status,
        window,
        series,
        decisions: decisions.into_iter().take(limit).collect(),
    }))
}

// ---------------------------------------------------------------------------
// CLI output

fn state_str(s: ProgressState) -> &'static str {
    match s {
        ProgressState::Progressing => "progressing",
        ProgressState::Waiting => "waiting",
        ProgressState::Holding => "holding",
        ProgressState::RolledBack => "rolled_back",
        ProgressState::Complete => "complete",
    }
}

fn fmt_opt(metric: CheckMetric, v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| analysis::fmt_value(metric, v))
}

/// A table indented by two spaces.
fn indented_table(
    out: &mut impl std::io::Write,
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    crate::cli::table(&mut buf, header, rows)?;
    for line in String::from_utf8_lossy(&buf).lines() {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

fn checks_table(out: &mut impl std::io::Write, checks: &[CheckOutcome]) -> std::io::Result<()> {
    if checks.is_empty() {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.verdict.as_str().to_string(),
                fmt_opt(c.metric, c.candidate),
                fmt_opt(c.metric, c.stable),
                fmt_opt(c.metric, c.threshold),
                format!("{:.0}", c.candidate_samples),
                c.detail.clone(),
            ]
        })
        .collect();
    indented_table(
        out,
        &[
            "CHECK",
            "VERDICT",
            "CANDIDATE",
            "STABLE",
            "THRESHOLD",
            "SAMPLES",
            "DETAIL",
        ],
        &rows,
    )
}

/// The policy part of `rollout-control status`.
pub fn print_policies(
    out: &mut impl std::io::Write,
    rollouts: &[crate::api::status::StatusRollout],
    engine: Option<&EngineView>,
) -> std::io::Result<()> {
    let with: Vec<(&crate::api::status::StatusRollout, &PolicyStatus)> = rollouts
        .iter()
        .filter_map(|r| r.policy.as_ref().map(|p| (r, p)))
        .collect();
    if with.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    match engine {
        Some(e) => {
            let envoys: Vec<String> = e
                .envoys
                .iter()
                .map(|x| match (&x.error, x.ok) {
                    (_, true) => format!("{} ok", x.url),
                    (Some(err), false) => format!("{} FAILING: {err}", x.url),
                    (None, false) => format!("{} not read yet", x.url),
                })
                .collect();
            writeln!(
                out,
                "policy engine: reads every {} ms ({:?}): {}",
                e.tick_ms,
                e.stats_format,
                envoys.join("; ")
            )?;
        }
        None => writeln!(
            out,
            "policy engine: not running (serve without --envoy-admin): policies do not move"
        )?,
    }
    for (r, p) in with {
        writeln!(out)?;
        let state = p.state.map_or("not started", state_str);
        let since = p
            .time_in_step_s
            .map(|t| format!(" for {}", crate::cli::fmt_age(t)))
            .unwrap_or_default();
        writeln!(
            out,
            "{}: {} of {}, {state}{since}; {} at {} %{}",
            r.name,
            p.step_label,
            p.steps,
            p.candidate,
            crate::cli::fmt_weight(p.weight),
            if r.paused { " (paused)" } else { "" }
        )?;
        if let Some(note) = &p.note {
            writeln!(out, "  note: {note}")?;
        }
        let traffic = if p.shadow_only {
            "shadow comparisons"
        } else {
            "candidate requests"
        };
        writeln!(
            out,
            "  last interval: {}{}; failed {}/{}, inconclusive {}/{}; {:.0} of {} {traffic} in the step (min {} s, interval {} s)",
            p.verdict.map_or("not evaluated yet", IntervalVerdict::as_str),
            p.evaluated
                .as_ref()
                .map(|t| format!(" at {t}"))
                .unwrap_or_default(),
            p.consecutive_failed,
            p.failure_limit,
            p.consecutive_inconclusive,
            p.inconclusive_limit,
            p.step_traffic,
            p.min_requests,
            p.min_duration_s,
            p.interval_s
        )?;
        checks_table(out, &p.checks)?;
        writeln!(out, "  next: {}", p.next_action.text)?;
        if let Some(e) = &p.error {
            writeln!(out, "  last error: {e}")?;
        }
    }
    Ok(())
}

/// `rollout-control analysis --rollout R`.
pub fn run_analysis(
    client: &crate::client::Client,
    out: &mut impl std::io::Write,
    json: bool,
    rollout: &str,
    limit: usize,
    version: Option<u64>,
) -> anyhow::Result<()> {
    let mut path = format!("/v1/rollouts/{rollout}/analysis?limit={limit}");
    if let Some(v) = version {
        path.push_str(&format!("&version={v}"));
    }
    let reply = client.get(&path)?;
    if json {
        writeln!(out, "{}", reply.body)?;
        return Ok(());
    }
    let a: AnalysisReport = reply.json()?;
    writeln!(
        out,
        "{} (plan v{}){}",
        a.rollout,
        a.plan_version,
        if a.engine_running {
            ""
        } else {
            ": the policy engine is not running"
        }
    )?;
    if let Some(p) = &a.status {
        writeln!(
            out,
            "{} of {}, {}; next: {}",
            p.step_label,
            p.steps,
            p.state.map_or("not started", state_str),
            p.next_action.text
        )?;
    }
    if a.decisions.is_empty() {
        writeln!(out, "no decisions stored")?;
        return Ok(());
    }
    writeln!(out)?;
    let rows: Vec<Vec<String>> = a
        .decisions
        .iter()
        .map(|d| {
            vec![
                d.time.clone(),
                d.step_label.clone(),
                d.verdict.map_or("-", IntervalVerdict::as_str).to_string(),
                d.action.clone(),
                d.plan_version
                    .map_or_else(|| "-".to_string(), |v| format!("v{v}")),
                match &d.error {
                    Some(e) => format!("{} (not applied: {e})", d.reason),
                    None => d.reason.clone(),
                },
            ]
        })
        .collect();
    crate::cli::table(
        out,
        &["TIME", "STEP", "VERDICT", "ACTION", "WROTE", "REASON"],
        &rows,
    )?;
    if let Some(d) = a.decisions.first() {
        if !d.checks.is_empty() {
            writeln!(out)?;
            writeln!(out, "checks of the latest decision ({}):", d.time)?;
            checks_table(out, &d.checks)?;
        }
    }
    Ok(())
}
