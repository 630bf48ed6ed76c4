//! The records of the engine's decisions: the start of a policy, the reason of a
//! transition (or why nothing changed), the window a decision judged. The wording of
//! the reasons is `rollout_core::analysis`'s.

use rollout_core::analysis::{self, Action, CheckOutcome, Streak, WindowData};
use rollout_core::plan::RolloutSpec;
use rollout_core::policy::{step_label, PolicySpec, ProgressSpec};

use crate::api::analysis::{Decision, WindowSummary};
use crate::engine::state::Basis;
use crate::engine::window::variant_summaries;
use crate::util::timefmt::rfc3339_ms;

/// The decision that starts a rollout's policy at step 0.
pub fn start_decision(r: &RolloutSpec, policy: &PolicySpec, version: u64, now: u64) -> Decision {
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
pub fn transition_reason(
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

/// The numbers of the window `(from_ms, to_ms]` a decision judged.
pub fn window_summary(w: &WindowData, from_ms: u64, to_ms: u64) -> WindowSummary {
    WindowSummary {
        from_ms,
        to_ms,
        span_s: w.span_s,
        variants: variant_summaries(w),
        shadow: w.shadow,
        stats: w
            .stats
            .iter()
            .filter_map(|(k, s)| s.value(w.span_s).map(|v| (k.clone(), v)))
            .collect(),
    }
}

/// A decision, and for a transition what to commit: made under the engine's lock,
/// carried out after it.
pub enum Work {
    Transition {
        basis: Basis,
        action: Action,
        decision: Decision,
    },
    Record(Decision),
}
