//! The step machine: what the engine does after an interval (stay, advance, wait
//! for promote, complete, hold, roll back), from the policy, the progress, the
//! streaks, the interval's verdict and the step's facts (time, traffic, blockers).

use crate::policy::{OnInconclusive, PolicySpec, ProgressSpec, ProgressState, StepSpec};

use super::verdict::{IntervalVerdict, Streak};

/// What the engine does after an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No plan change; why.
    Stay(String),
    /// Next step (progressing).
    Advance { to: usize },
    /// Checks passed at a gate (or auto_advance is off): wait for `promote`.
    Wait,
    /// The last step passed: the candidate becomes stable.
    Complete,
    /// Candidate to 0 %, state rolled_back.
    Rollback,
    /// Inconclusive for too long with `on_inconclusive_limit: hold`.
    Hold,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Stay(_) => "stay",
            Action::Advance { .. } => "advance",
            Action::Wait => "wait",
            Action::Complete => "complete",
            Action::Rollback => "rollback",
            Action::Hold => "hold",
        }
    }
}

/// Facts about the current step besides the interval's verdict.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepFacts {
    pub now_ms: u64,
    /// Candidate requests (shadow comparisons at a shadow-only step) seen since the step began.
    pub step_traffic: f64,
    /// Why the rollout must not move forward now (e.g. proxies still on an older
    /// plan); rollbacks and holds are never blocked.
    pub blocked: Option<String>,
}

/// The step machine. Rolled-back and complete rollouts never move by themselves.
/// A failure streak reaching `failure_limit` rolls back in every other state
/// (waiting and holding candidates still serve traffic and stay watched). An
/// inconclusive streak reaching `inconclusive_limit` while progressing holds or rolls
/// back per `on_inconclusive_limit`. Only a progressing step advances: the interval
/// passed, `min_duration_s` elapsed since `progress.since_ms` and the step saw
/// `min_requests`, and nothing blocks it (`StepFacts::blocked`); then a gate (or
/// `auto_advance: false`) waits for promote, the last step completes, any other step
/// advances.
pub fn decide(
    policy: &PolicySpec,
    progress: &ProgressSpec,
    streak: Streak,
    verdict: IntervalVerdict,
    facts: &StepFacts,
) -> Action {
    match progress.state {
        ProgressState::RolledBack => return Action::Stay("rolled back".to_string()),
        ProgressState::Complete => return Action::Stay("complete".to_string()),
        _ => {}
    }
    if streak.failed >= policy.failure_limit {
        return Action::Rollback;
    }
    if progress.state == ProgressState::Progressing
        && streak.inconclusive >= policy.inconclusive_limit
    {
        return match policy.on_inconclusive_limit {
            OnInconclusive::Hold => Action::Hold,
            OnInconclusive::Rollback => Action::Rollback,
        };
    }
    match progress.state {
        ProgressState::Waiting => return Action::Stay("waiting for promote".to_string()),
        ProgressState::Holding => return Action::Stay("holding".to_string()),
        _ => {}
    }
    if verdict != IntervalVerdict::Passed {
        return Action::Stay(format!("interval {}", verdict.as_str()));
    }
    let Some(step) = policy.steps.get(progress.step) else {
        return Action::Stay("no such step".to_string());
    };
    let elapsed_ms = facts.now_ms.saturating_sub(progress.since_ms);
    let need_ms = step.min_duration_s.saturating_mul(1000);
    if elapsed_ms < need_ms {
        return Action::Stay(format!(
            "passed; the step needs {} s more",
            (need_ms - elapsed_ms).div_ceil(1000)
        ));
    }
    if facts.step_traffic < step.min_requests as f64 {
        return Action::Stay(format!(
            "passed; the step needs {:.0} more {}",
            step.min_requests as f64 - facts.step_traffic,
            traffic_noun(step)
        ));
    }
    if let Some(why) = &facts.blocked {
        return Action::Stay(format!("passed; not moving on: {why}"));
    }
    if step.gate || !policy.auto_advance {
        return Action::Wait;
    }
    if progress.step + 1 >= policy.steps.len() {
        return Action::Complete;
    }
    Action::Advance {
        to: progress.step + 1,
    }
}

/// What a step's `min_requests` counts: candidate requests, or shadow comparisons
/// at a shadow-only step.
pub fn traffic_noun(step: &StepSpec) -> &'static str {
    if step.shadow_only {
        "shadow comparisons"
    } else {
        "candidate requests"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::testkit::{policy, progress, POLICY};

    #[test]
    fn step_advancement_rules() {
        let p = policy(POLICY);
        let pr = progress(0, ProgressState::Progressing);
        let ok = Streak::default();
        let facts = |secs: u64, traffic: f64| StepFacts {
            now_ms: 1_000_000 + secs * 1000,
            step_traffic: traffic,
            blocked: None,
        };
        // too early
        assert!(matches!(
            decide(&p, &pr, ok, IntervalVerdict::Passed, &facts(30, 500.0)),
            Action::Stay(_)
        ));
        // too few requests
        let a = decide(&p, &pr, ok, IntervalVerdict::Passed, &facts(61, 50.0));
        assert_eq!(
            a,
            Action::Stay("passed; the step needs 50 more candidate requests".into())
        );
        // not passed this interval
        assert!(matches!(
            decide(
                &p,
                &pr,
                ok,
                IntervalVerdict::Inconclusive,
                &facts(61, 500.0)
            ),
            Action::Stay(_)
        ));
        // all three: advance
        assert_eq!(
            decide(&p, &pr, ok, IntervalVerdict::Passed, &facts(61, 500.0)),
            Action::Advance { to: 1 }
        );
        // a gate waits
        let pr1 = progress(1, ProgressState::Progressing);
        assert_eq!(
            decide(&p, &pr1, ok, IntervalVerdict::Passed, &facts(61, 500.0)),
            Action::Wait
        );
        // waiting never advances by itself
        let w = progress(1, ProgressState::Waiting);
        assert!(matches!(
            decide(&p, &w, ok, IntervalVerdict::Passed, &facts(600, 5000.0)),
            Action::Stay(_)
        ));
        // the last step completes
        let last = progress(2, ProgressState::Progressing);
        assert_eq!(
            decide(&p, &last, ok, IntervalVerdict::Passed, &facts(1, 0.0)),
            Action::Complete
        );
        // blocked (proxies behind): no advance, but a rollback still happens
        let blocked = StepFacts {
            blocked: Some("proxies behind".into()),
            ..facts(61, 500.0)
        };
        assert_eq!(
            decide(&p, &pr, ok, IntervalVerdict::Passed, &blocked),
            Action::Stay("passed; not moving on: proxies behind".into())
        );
        let failing = Streak {
            failed: 2,
            inconclusive: 0,
        };
        assert_eq!(
            decide(&p, &pr, failing, IntervalVerdict::Failed, &blocked),
            Action::Rollback
        );
        // auto_advance off waits at every step
        let mut manual = p.clone();
        manual.auto_advance = false;
        assert_eq!(
            decide(&manual, &pr, ok, IntervalVerdict::Passed, &facts(61, 500.0)),
            Action::Wait
        );
    }

    #[test]
    fn rollback_on_failure_limit_and_no_re_advance() {
        let p = policy(POLICY);
        let pr = progress(1, ProgressState::Progressing);
        let f = StepFacts {
            now_ms: 9_000_000,
            step_traffic: 1e6,
            blocked: None,
        };
        let mut s = Streak::default();
        s.record(IntervalVerdict::Failed);
        assert!(matches!(
            decide(&p, &pr, s, IntervalVerdict::Failed, &f),
            Action::Stay(_)
        ));
        s.record(IntervalVerdict::Failed);
        assert_eq!(
            decide(&p, &pr, s, IntervalVerdict::Failed, &f),
            Action::Rollback
        );
        // waiting and holding candidates are still watched
        for st in [ProgressState::Waiting, ProgressState::Holding] {
            assert_eq!(
                decide(&p, &progress(1, st), s, IntervalVerdict::Failed, &f),
                Action::Rollback
            );
        }
        // rolled back: nothing, whatever the verdict
        let rb = progress(1, ProgressState::RolledBack);
        for v in [IntervalVerdict::Passed, IntervalVerdict::Failed] {
            assert!(matches!(
                decide(&p, &rb, Streak::default(), v, &f),
                Action::Stay(_)
            ));
        }
        assert!(matches!(
            decide(
                &p,
                &progress(2, ProgressState::Complete),
                Streak::default(),
                IntervalVerdict::Passed,
                &f
            ),
            Action::Stay(_)
        ));
    }

    #[test]
    fn inconclusive_limit_holds_or_rolls_back() {
        let mut p = policy(POLICY);
        let pr = progress(0, ProgressState::Progressing);
        let f = StepFacts {
            now_ms: 9_000_000,
            step_traffic: 0.0,
            blocked: None,
        };
        let s = Streak {
            failed: 0,
            inconclusive: 3,
        };
        assert_eq!(
            decide(&p, &pr, s, IntervalVerdict::Inconclusive, &f),
            Action::Hold
        );
        let two = Streak {
            failed: 0,
            inconclusive: 2,
        };
        assert!(matches!(
            decide(&p, &pr, two, IntervalVerdict::Inconclusive, &f),
            Action::Stay(_)
        ));
        p.on_inconclusive_limit = OnInconclusive::Rollback;
        assert_eq!(
            decide(&p, &pr, s, IntervalVerdict::Inconclusive, &f),
            Action::Rollback
        );
        // already holding: stays
        p.on_inconclusive_limit = OnInconclusive::Hold;
        assert!(matches!(
            decide(
                &p,
                &progress(0, ProgressState::Holding),
                s,
                IntervalVerdict::Inconclusive,
                &f
            ),
            Action::Stay(_)
        ));
    }
}
