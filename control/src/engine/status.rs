//! A rollout's policy as `GET /v1/status` shows it: step, state, time in the step,
//! streaks, the checks of the last evaluation and the next action
//! (`rollout_core::analysis::next_action`), from the plan and the engine's memory.

use rollout_core::analysis::{next_action, NextAction, NextFacts};
use rollout_core::plan::RolloutSpec;
use rollout_core::policy::{step_label, step_weight, ProgressState};

use crate::api::status::PolicyStatus;
use crate::engine::state::{Basis, Engine};
use crate::util::timefmt::rfc3339_ms;

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
        (Some(e), None) => Some(now_ms + e.tick_ms()),
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
                "the policy engine is not running (serve without --envoy-admin or --prometheus-url)"
                    .to_string()
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
