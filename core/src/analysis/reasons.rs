//! The texts the engine stores as reasons of its plan changes (and of the
//! decisions it keeps), and what status shows as the next action. They name the
//! step, every failed or inconclusive check with its values and threshold, and the
//! traffic seen.

use serde::{Deserialize, Serialize};

use crate::policy::{
    step_label, OnInconclusive, PolicySpec, ProgressSpec, ProgressState, StepSpec,
};

use super::checks::{CheckOutcome, CheckVerdict};
use super::steps::traffic_noun;
use super::verdict::Streak;

fn failed_list(outcomes: &[CheckOutcome], verdict: CheckVerdict) -> Vec<&CheckOutcome> {
    outcomes.iter().filter(|o| o.verdict == verdict).collect()
}

fn names(list: &[&CheckOutcome]) -> String {
    list.iter()
        .map(|o| o.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn details(list: &[&CheckOutcome], with_names: bool) -> String {
    list.iter()
        .map(|o| {
            if with_names {
                format!("{}: {}", o.name, o.detail)
            } else {
                o.detail.clone()
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn plural(n: u32, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

/// `policy: start at step 0 (shadow only)`.
pub fn start_reason(policy: &PolicySpec) -> String {
    format!("policy: start at {}", step_label(policy, 0))
}

/// `policy: rollback at step 2 (5 %): check error_rate failed 2 intervals: candidate
/// 0.201 > stable 0.000 + 0.005` (several failed checks are listed with their names).
/// With no failed check (an inconclusive limit with `on_inconclusive_limit:
/// rollback`) it names the inconclusive checks.
pub fn rollback_reason(
    policy: &PolicySpec,
    step: usize,
    streak: Streak,
    outcomes: &[CheckOutcome],
) -> String {
    let at = step_label(policy, step);
    let failed = failed_list(outcomes, CheckVerdict::Failed);
    if streak.failed >= policy.failure_limit {
        let n = plural(streak.failed, "interval", "intervals");
        return match failed.len() {
            0 => format!("policy: rollback at {at}: failed {n}"),
            1 => format!(
                "policy: rollback at {at}: check {} failed {n}: {}",
                names(&failed),
                details(&failed, false)
            ),
            _ => format!(
                "policy: rollback at {at}: checks {} failed {n}: {}",
                names(&failed),
                details(&failed, true)
            ),
        };
    }
    format!(
        "policy: rollback at {at}: inconclusive for {} (on_inconclusive_limit: rollback){}",
        plural(streak.inconclusive, "interval", "intervals"),
        inconclusive_suffix(outcomes)
    )
}

fn inconclusive_suffix(outcomes: &[CheckOutcome]) -> String {
    let list = failed_list(outcomes, CheckVerdict::Inconclusive);
    if list.is_empty() {
        ": too little traffic".to_string()
    } else {
        format!(": {}", details(&list, true))
    }
}

/// `policy: hold at step 1 (1 %): inconclusive for 10 intervals: error_rate: candidate has 3 of 50 responses in the window`.
pub fn hold_reason(
    policy: &PolicySpec,
    step: usize,
    streak: Streak,
    outcomes: &[CheckOutcome],
) -> String {
    format!(
        "policy: hold at {}: inconclusive for {}{}",
        step_label(policy, step),
        plural(streak.inconclusive, "interval", "intervals"),
        inconclusive_suffix(outcomes)
    )
}

fn passed_summary(outcomes: &[CheckOutcome], traffic: f64, step: Option<&StepSpec>) -> String {
    let passed = failed_list(outcomes, CheckVerdict::Passed);
    let mut parts = Vec::new();
    if !passed.is_empty() {
        parts.push(
            passed
                .iter()
                .map(|o| format!("{} {}", o.name, o.detail.trim_start_matches("candidate ")))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    let noun = step.map_or("candidate requests", traffic_noun);
    parts.push(format!("{traffic:.0} {noun} in the step"));
    parts.join("; ")
}

/// `policy: advance to step 3 (25 %): step 2 (5 %) passed: error_rate 0.001 <= ...; 812 candidate requests in the step`.
pub fn advance_reason(
    policy: &PolicySpec,
    from: usize,
    to: usize,
    outcomes: &[CheckOutcome],
    traffic: f64,
) -> String {
    format!(
        "policy: advance to {}: {} passed: {}",
        step_label(policy, to),
        step_label(policy, from),
        passed_summary(outcomes, traffic, policy.steps.get(from))
    )
}

/// `policy: step 2 (5 %) passed: waiting for promote (gate): ...`.
pub fn wait_reason(
    policy: &PolicySpec,
    step: usize,
    outcomes: &[CheckOutcome],
    traffic: f64,
) -> String {
    let why = match policy.steps.get(step) {
        Some(s) if s.gate => "gate",
        _ => "auto_advance is off",
    };
    format!(
        "policy: {} passed: waiting for promote ({why}): {}",
        step_label(policy, step),
        passed_summary(outcomes, traffic, policy.steps.get(step))
    )
}

/// `policy: complete: step 5 (100 %) passed: canary promoted to stable: ...`.
pub fn complete_reason(
    policy: &PolicySpec,
    step: usize,
    candidate: &str,
    outcomes: &[CheckOutcome],
    traffic: f64,
) -> String {
    format!(
        "policy: complete: {} passed: {candidate} promoted to stable: {}",
        step_label(policy, step),
        passed_summary(outcomes, traffic, policy.steps.get(step))
    )
}

/// What happens next, for status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NextAction {
    /// `advance`, `wait`, `complete`, `rollback`, `hold`, `none`.
    pub action: String,
    /// Unix ms of the earliest time it can happen, when known.
    pub at_ms: Option<u64>,
    /// The sentence (times as produced by `fmt_time`).
    pub text: String,
}

/// Inputs of [`next_action`].
#[derive(Debug, Clone, Copy)]
pub struct NextFacts {
    pub paused: bool,
    pub streak: Streak,
    pub step_traffic: f64,
    pub now_ms: u64,
    /// When the engine evaluates next (None: the engine is not running).
    pub next_eval_ms: Option<u64>,
}

/// The next action of a rollout with a policy and its progress.
pub fn next_action(
    policy: &PolicySpec,
    progress: &ProgressSpec,
    candidate: &str,
    facts: &NextFacts,
    fmt_time: &dyn Fn(u64) -> String,
) -> NextAction {
    let none = |text: String| NextAction {
        action: "none".to_string(),
        at_ms: None,
        text,
    };
    let note = progress.note.clone().unwrap_or_default();
    match progress.state {
        ProgressState::RolledBack => {
            return none(format!(
                "rolled back: {note}; restart (POST .../restart) walks the steps again"
            ))
        }
        ProgressState::Complete => return none(format!("complete: {candidate} is stable")),
        _ => {}
    }
    if facts.paused {
        return none("paused: no automatic change until resume".to_string());
    }
    let Some(next_eval) = facts.next_eval_ms else {
        return none("the policy engine is not running (serve without --envoy-admin)".to_string());
    };
    let remaining = policy.failure_limit.saturating_sub(facts.streak.failed);
    if facts.streak.failed > 0 {
        return NextAction {
            action: "rollback".to_string(),
            at_ms: Some(next_eval),
            text: format!(
                "roll back if {} fail{} (next evaluation at {})",
                plural(remaining, "more interval", "more intervals"),
                if remaining == 1 { "s" } else { "" },
                fmt_time(next_eval)
            ),
        };
    }
    match progress.state {
        ProgressState::Waiting => {
            let what = if progress.step + 1 >= policy.steps.len() {
                format!("promote makes {candidate} stable")
            } else {
                format!(
                    "promote advances to {}",
                    step_label(policy, progress.step + 1)
                )
            };
            return none(format!("waiting for promote: {what}"));
        }
        ProgressState::Holding => {
            return none(format!("holding: {note}; resume or promote to continue"))
        }
        _ => {}
    }
    let Some(step) = policy.steps.get(progress.step) else {
        return none(String::new());
    };
    let ready_ms = progress
        .since_ms
        .saturating_add(step.min_duration_s.saturating_mul(1000));
    let at = next_eval.max(ready_ms);
    let (action, what) = if step.gate || !policy.auto_advance {
        ("wait", "wait for promote".to_string())
    } else if progress.step + 1 >= policy.steps.len() {
        ("complete", format!("promote {candidate} to stable"))
    } else {
        (
            "advance",
            format!("advance to {}", step_label(policy, progress.step + 1)),
        )
    };
    let missing = step.min_requests as f64 - facts.step_traffic;
    let mut text = format!("{what} at {} if checks pass", fmt_time(at));
    if missing > 0.0 {
        text.push_str(&format!(
            " and {missing:.0} more {} arrive",
            traffic_noun(step)
        ));
    }
    if facts.streak.inconclusive > 0 {
        let left = policy
            .inconclusive_limit
            .saturating_sub(facts.streak.inconclusive);
        let then = match policy.on_inconclusive_limit {
            OnInconclusive::Hold => "hold",
            OnInconclusive::Rollback => "roll back",
        };
        text.push_str(&format!(
            " ({then} after {} inconclusive)",
            plural(left, "more interval", "more intervals")
        ));
    }
    NextAction {
        action: action.to_string(),
        at_ms: Some(at),
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::checks::evaluate_check;
    use crate::analysis::testkit::{check, ctx, policy, progress, vw, window, POLICY};

    #[test]
    fn reasons_name_checks_values_and_thresholds() {
        let p = policy(POLICY);
        let w = window(vw(1000.0, 0.0, 50.0, 0.0), vw(1000.0, 201.0, 50.0, 0.0));
        let out = vec![evaluate_check(
            &check(r#"{"metric":"error_rate","max_increase":0.005}"#),
            &ctx(),
            &w,
        )];
        let s = Streak {
            failed: 2,
            inconclusive: 0,
        };
        assert_eq!(
            rollback_reason(&p, 1, s, &out),
            "policy: rollback at step 1 (5 %): check error_rate failed 2 intervals: \
             candidate 0.201 > stable 0.000 + 0.005"
        );
        assert_eq!(start_reason(&p), "policy: start at step 0 (1 %)");
        // a drift rollback names the method and its value
        let mut w = window(vw(1000.0, 0.0, 50.0, 0.0), vw(1000.0, 0.0, 50.0, 0.0));
        w.bins
            .insert("stable".into(), vec![0.0, 600.0, 600.0, 0.0, 0.0]);
        w.bins
            .insert("canary".into(), vec![0.0, 100.0, 1100.0, 0.0, 0.0]);
        let out = vec![evaluate_check(
            &check(r#"{"metric":"prediction_drift","max":0.25}"#),
            &ctx(),
            &w,
        )];
        let psi = crate::analysis::drift::psi(&[100.0, 1100.0], &[600.0, 600.0]).unwrap();
        assert_eq!(
            rollback_reason(&p, 1, s, &out),
            format!(
                "policy: rollback at step 1 (5 %): check prediction_drift failed 2 intervals: \
                 PSI {psi:.3} > max 0.25 (major shift): candidate 1200 vs stable 1200 predictions"
            )
        );
        let hold = hold_reason(
            &p,
            0,
            Streak {
                failed: 0,
                inconclusive: 3,
            },
            &[],
        );
        assert_eq!(
            hold,
            "policy: hold at step 0 (1 %): inconclusive for 3 intervals: too little traffic"
        );
    }

    #[test]
    fn next_action_texts() {
        let p = policy(POLICY);
        let t = |ms: u64| format!("t{ms}");
        let facts = NextFacts {
            paused: false,
            streak: Streak::default(),
            step_traffic: 40.0,
            now_ms: 1_000_000,
            next_eval_ms: Some(1_001_000),
        };
        let n = next_action(
            &p,
            &progress(0, ProgressState::Progressing),
            "canary",
            &facts,
            &t,
        );
        assert_eq!(n.action, "advance");
        assert_eq!(n.at_ms, Some(1_060_000));
        assert_eq!(
            n.text,
            "advance to step 1 (5 %) at t1060000 if checks pass and 60 more candidate requests arrive"
        );
        let failing = NextFacts {
            streak: Streak {
                failed: 1,
                inconclusive: 0,
            },
            ..facts
        };
        let n = next_action(
            &p,
            &progress(0, ProgressState::Progressing),
            "canary",
            &failing,
            &t,
        );
        assert_eq!(
            n.text,
            "roll back if 1 more interval fails (next evaluation at t1001000)"
        );
        let n = next_action(
            &p,
            &progress(1, ProgressState::Waiting),
            "canary",
            &facts,
            &t,
        );
        assert_eq!(
            n.text,
            "waiting for promote: promote advances to step 2 (100 %)"
        );
    }
}
