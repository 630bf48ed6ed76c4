//! Evaluating a rollout whose interval is due: every check is judged over the last
//! `interval_s` seconds (only samples taken entirely within the step), the
//! failed/inconclusive streaks and the stable baselines are updated, and
//! `rollout_core::analysis::decide` says what to do: stay, advance, wait for promote,
//! complete, hold or roll back.

use std::collections::BTreeMap;

use rollout_core::analysis::{
    self, evaluate_checks, interval_verdict, update_baselines, AbOutcome, Action, CheckOutcome,
    EvalContext, StepFacts,
};
use rollout_core::plan::RolloutSpec;
use rollout_core::policy::{step_label, PolicySpec};

use crate::api::analysis::Decision;
use crate::engine::decision::{transition_reason, window_summary, Work};
use crate::engine::state::{Baselines, EngineState, Evaluation};
use crate::engine::window::RETENTION_MS;
use crate::util::timefmt::rfc3339_ms;

/// Points of the window series stored with each decision.
const DECISION_POINTS: usize = 30;

/// Names the bins of every drift check's detail (`[0, 0.1)`, `fraud`, `other`) from
/// the rollout's `output.distribution` (and lists every bin, empty ones too), so
/// status and the analysis show what each count is.
fn name_bins(r: &RolloutSpec, checks: &mut [CheckOutcome]) {
    let Some(d) = r
        .output
        .as_ref()
        .and_then(|o| o.distribution.as_ref())
        .and_then(|d| d.compile().ok())
    else {
        return;
    };
    let names = d.bin_names();
    for c in checks.iter_mut() {
        if let Some(drift) = c.drift.as_mut() {
            // every bin of the plan, empty ones included
            for bins in [&mut drift.candidate_bins, &mut drift.stable_bins] {
                if bins.len() < names.len() {
                    bins.resize(names.len(), 0.0);
                }
            }
            drift.bin_names = names.clone();
        }
    }
}

/// Evaluates `r` (of plan `version`) now: `ab` is its experiment's verdict (when it
/// has an `ab` check), `behind` why advancing must wait (proxies not on the latest
/// plan). `None` for a rollout without policy or progress.
pub fn evaluate(
    st: &mut EngineState,
    r: &RolloutSpec,
    version: u64,
    ab: Option<&AbOutcome>,
    behind: Option<&String>,
    now: u64,
) -> Option<Work> {
    let (Some(policy), Some(progress)) = (&r.policy, &r.progress) else {
        return None;
    };
    let name = &r.name;
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
    let oldest = now.saturating_sub(RETENTION_MS);
    bl.checks.retain(|_, b| b.at_ms >= oldest);
    let ctx = EvalContext {
        stable,
        candidate,
        shadow_only,
        ab,
        stable_idle,
        baselines: Some(&bl.checks),
    };
    let judged = PolicySpec {
        checks: analysis::effective_checks(name, policy),
        ..policy.clone()
    };
    let mut checks = evaluate_checks(&judged, &ctx, &w);
    name_bins(r, &mut checks);
    let verdict = interval_verdict(&checks, &ctx, &w);
    update_baselines(&mut bl.checks, &checks, now);
    let rt = st.rollouts.get_mut(name)?;
    rt.streak.record(verdict);
    rt.next_eval_ms = now + interval_ms;
    let facts = StepFacts {
        now_ms: now,
        step_traffic: rt.step_traffic,
        blocked: behind.cloned(),
    };
    rt.blocked = behind.cloned();
    let action = analysis::decide(policy, progress, rt.streak, verdict, &facts);
    let summary = window_summary(&w, from, now);
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
        based_on_version: version,
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
    Some(match action {
        Action::Stay(_) => Work::Record(decision),
        a => Work::Transition {
            basis: rt.basis,
            action: a,
            decision,
        },
    })
}
