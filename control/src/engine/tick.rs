//! One analysis tick, in five steps (each a function below):
//!
//! 1. `read_source`: read the metrics source and add the tick's increases to the
//!    per-rollout time series;
//! 2. `follow_rollouts`: start each rollout that has a policy but no `progress`
//!    (not paused), count the step's candidate traffic, and list the rollouts whose
//!    `interval_s` has elapsed since their last evaluation (progress `progressing`,
//!    `waiting` or `holding`, not paused; `rolled_back` and `complete` rollouts are
//!    never evaluated: nothing moves them but a person);
//! 3. `ab_outcomes` and `evaluate::evaluate`: judge the due rollouts and decide;
//! 4. `commit_transitions`: commit each transition as a new plan version
//!    (`commit::commit_transition`);
//! 5. `store_decisions`: store every decision in the store's decision tables.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use rollout_core::analysis::{AbOutcome, Action};
use rollout_core::policy::{CheckMetric, ProgressState};
use rollout_core::PlanSpec;

use crate::api::analysis::Decision;
use crate::api::status::EnvoyStatus;
use crate::engine::ab::AbSource;
use crate::engine::commit::{commit_transition, AUTHOR};
use crate::engine::decision::{start_decision, Work};
use crate::engine::evaluate::evaluate;
use crate::engine::rollout_metrics::tick_traffic;
use crate::engine::source::series::TickData;
use crate::engine::source::MetricsSource;
use crate::engine::stat_selectors::plan_selectors;
use crate::engine::state::{Basis, Engine, EngineState, Runtime};
use crate::store::blocking::blocking;
use crate::store::decisions::write_decisions;
use crate::store::{Current, Store, StoreError};

/// Non-transition decisions are made durable at least this often.
const DURABLE_EVERY_MS: u64 = 10_000;

/// The metrics source, shared with the blocking thread that reads it.
pub type SharedSource = Arc<Mutex<Box<dyn MetricsSource>>>;

/// Runs one tick. `behind`: why advancing must wait (proxies not on the latest
/// plan); `last_durable_ms`: when decisions were last committed durably.
pub async fn run_tick(
    engine: &Arc<Engine>,
    store: &Arc<Store>,
    source: &SharedSource,
    ab: &Arc<dyn AbSource>,
    behind: Option<String>,
    last_durable_ms: &mut u64,
) -> anyhow::Result<()> {
    let cur = store.current();
    let (tick, statuses, reads) = read_source(source, cur.as_deref()).await?;
    let now = engine.now_ms();
    engine.lock().source_reads = reads;
    let Some(cur) = cur else {
        let mut st = engine.lock();
        st.envoys = statuses;
        st.last_tick_ms = Some(now);
        return Ok(());
    };
    let plan = &cur.record.plan;
    let (mut works, due) = {
        let mut st = engine.lock();
        let start = st
            .last_tick_ms
            .unwrap_or_else(|| now.saturating_sub(engine.tick_ms()));
        st.series.ingest(start, now, &tick, plan);
        st.last_tick_ms = Some(now);
        st.envoys = statuses;
        follow_rollouts(&mut st, plan, cur.version(), &tick, now)
    };
    let abs = ab_outcomes(store, ab, plan, &due).await?;
    {
        let mut st = engine.lock();
        for name in &due {
            let Some(r) = plan.rollouts.iter().find(|r| &r.name == name) else {
                continue;
            };
            works.extend(evaluate(
                &mut st,
                r,
                cur.version(),
                abs.get(name),
                behind.as_ref(),
                now,
            ));
        }
    }
    let (decisions, transitions) = commit_transitions(engine, store, works, now).await?;
    store_decisions(store, decisions, transitions, last_durable_ms, now).await
}

/// The source's reads by result: `(source, result, count)`.
type SourceReads = Vec<(&'static str, &'static str, u64)>;

/// Step 1: reads the source (on the blocking pool) for the stats the plan's checks
/// name; returns the tick's increases, each backend's last answer and the reads by
/// result.
async fn read_source(
    source: &SharedSource,
    cur: Option<&Current>,
) -> anyhow::Result<(TickData, Vec<EnvoyStatus>, SourceReads)> {
    let selectors = cur
        .map(|c| plan_selectors(&c.record.plan))
        .unwrap_or_default();
    let source = Arc::clone(source);
    Ok(tokio::task::spawn_blocking(move || {
        let mut s = source.lock().unwrap_or_else(PoisonError::into_inner);
        let t = s.read(&selectors);
        (t, s.statuses(), s.read_counts())
    })
    .await?)
}

/// Step 2: brings the engine's view of each rollout up to date with the plan (a new
/// step or state starts fresh streaks and traffic count), queues the start of every
/// rollout with a policy but no progress, counts the candidate traffic of this tick,
/// and returns the starts and the rollouts due for evaluation.
fn follow_rollouts(
    st: &mut EngineState,
    plan: &PlanSpec,
    version: u64,
    tick: &TickData,
    now: u64,
) -> (Vec<Work>, Vec<String>) {
    let mut works = Vec::new();
    let mut due = Vec::new();
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
            .or_insert_with(|| Runtime::fresh(basis, now + interval_ms, None));
        if rt.basis != basis {
            // A new step or state: fresh streaks and traffic count (the last
            // evaluation stays visible in status until the next one).
            let last = rt.last.take();
            *rt = Runtime::fresh(basis, now + interval_ms, last);
        }
        if r.paused {
            continue;
        }
        let Some(progress) = &r.progress else {
            works.push(Work::Transition {
                basis,
                action: Action::Advance { to: 0 },
                decision: start_decision(r, policy, version, now),
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
            rt.step_traffic += tick_traffic(tick, &r.name, candidate, shadow_only);
        }
        if live && now >= rt.next_eval_ms {
            due.push(r.name.clone());
        }
    }
    (works, due)
}

/// Step 3 (first half): the A/B verdicts (store reads) of the due rollouts that
/// have an `ab` check.
async fn ab_outcomes(
    store: &Arc<Store>,
    ab: &Arc<dyn AbSource>,
    plan: &PlanSpec,
    due: &[String],
) -> anyhow::Result<HashMap<String, AbOutcome>> {
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
    if needs_ab.is_empty() {
        return Ok(HashMap::new());
    }
    let (s, a, p) = (Arc::clone(store), Arc::clone(ab), plan.clone());
    Ok(blocking(move || {
        Ok::<_, StoreError>(
            needs_ab
                .into_iter()
                .filter_map(|n| a.outcome(&s, &p, &n).map(|o| (n, o)))
                .collect::<HashMap<_, _>>(),
        )
    })
    .await?)
}

/// Step 4: commits each transition (a refused one records why, in the decision and
/// in the rollout's status). Returns every decision, and whether any transition was
/// committed.
async fn commit_transitions(
    engine: &Arc<Engine>,
    store: &Arc<Store>,
    works: Vec<Work>,
    now: u64,
) -> anyhow::Result<(Vec<Decision>, bool)> {
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
                let (name, reason) = (decision.rollout.clone(), decision.reason.clone());
                let res = blocking(move || {
                    Ok::<_, StoreError>(commit_transition(&s, &name, basis, &action, &reason, now))
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
    Ok((decisions, transitions))
}

/// Step 5: stores the tick's decisions; durably when a transition was committed or
/// `DURABLE_EVERY_MS` passed since the last durable write.
async fn store_decisions(
    store: &Arc<Store>,
    decisions: Vec<Decision>,
    transitions: bool,
    last_durable_ms: &mut u64,
    now: u64,
) -> anyhow::Result<()> {
    if decisions.is_empty() {
        return Ok(());
    }
    let durable = transitions || now.saturating_sub(*last_durable_ms) >= DURABLE_EVERY_MS;
    if durable {
        *last_durable_ms = now;
    }
    let s = Arc::clone(store);
    blocking(move || write_decisions(&s, &decisions, durable)).await?;
    Ok(())
}
