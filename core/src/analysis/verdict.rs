//! The verdict of one analysis interval from its checks' outcomes, and the streaks
//! of failed and inconclusive intervals the step machine counts.

use serde::{Deserialize, Serialize};

use super::checks::{CheckOutcome, CheckVerdict, EvalContext, DEFAULT_MIN_SAMPLES};
use super::window::WindowData;

/// The verdict of one analysis interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntervalVerdict {
    Passed,
    Failed,
    Inconclusive,
}

impl IntervalVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            IntervalVerdict::Passed => "passed",
            IntervalVerdict::Failed => "failed",
            IntervalVerdict::Inconclusive => "inconclusive",
        }
    }
}

/// Any check failed: failed; else any inconclusive: inconclusive; else passed. When
/// no check applies (none configured, or all skipped at a shadow-only step) the
/// interval passes only with at least `DEFAULT_MIN_SAMPLES` candidate requests
/// (shadow comparisons at a shadow-only step) in the window: no data is never healthy.
pub fn interval_verdict(
    outcomes: &[CheckOutcome],
    ctx: &EvalContext<'_>,
    w: &WindowData,
) -> IntervalVerdict {
    if outcomes.iter().any(|o| o.verdict == CheckVerdict::Failed) {
        return IntervalVerdict::Failed;
    }
    if outcomes
        .iter()
        .any(|o| o.verdict == CheckVerdict::Inconclusive)
    {
        return IntervalVerdict::Inconclusive;
    }
    if outcomes.iter().any(|o| o.verdict == CheckVerdict::Passed) {
        return IntervalVerdict::Passed;
    }
    if step_traffic(ctx, w) >= DEFAULT_MIN_SAMPLES as f64 {
        IntervalVerdict::Passed
    } else {
        IntervalVerdict::Inconclusive
    }
}

/// What a step's `min_requests` counts in a window: candidate requests, or shadow
/// comparisons at a shadow-only step.
pub fn step_traffic(ctx: &EvalContext<'_>, w: &WindowData) -> f64 {
    if ctx.shadow_only {
        w.shadow.compared
    } else {
        w.variant(ctx.candidate).map_or(0.0, |v| v.requests)
    }
}

/// Failed and inconclusive intervals in a row. A passed interval clears both; a
/// failed one clears the inconclusive streak; an inconclusive one leaves the failed
/// streak as it is (a quiet interval between two failures is no proof of health).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Streak {
    pub failed: u32,
    pub inconclusive: u32,
}

impl Streak {
    pub fn record(&mut self, v: IntervalVerdict) {
        match v {
            IntervalVerdict::Passed => *self = Streak::default(),
            IntervalVerdict::Failed => {
                self.failed = self.failed.saturating_add(1);
                self.inconclusive = 0;
            }
            IntervalVerdict::Inconclusive => {
                self.inconclusive = self.inconclusive.saturating_add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::checks::evaluate_checks;
    use crate::analysis::testkit::{ctx, policy, vw, window};
    use crate::analysis::window::{ShadowWindow, VariantWindow};
    use crate::policy::CheckMetric;

    #[test]
    fn verdict_aggregation() {
        let mk = |v| CheckOutcome {
            name: "x".into(),
            metric: CheckMetric::ErrorRate,
            verdict: v,
            candidate: None,
            stable: None,
            threshold: None,
            condition: String::new(),
            candidate_samples: 0.0,
            stable_samples: None,
            min_samples: 50,
            detail: String::new(),
            stable_baseline_ms: None,
            drift: None,
        };
        let w = WindowData::default();
        use CheckVerdict::*;
        assert_eq!(
            interval_verdict(&[mk(Passed), mk(Inconclusive), mk(Failed)], &ctx(), &w),
            IntervalVerdict::Failed
        );
        assert_eq!(
            interval_verdict(&[mk(Passed), mk(Inconclusive)], &ctx(), &w),
            IntervalVerdict::Inconclusive
        );
        assert_eq!(
            interval_verdict(&[mk(Passed), mk(Skipped)], &ctx(), &w),
            IntervalVerdict::Passed
        );
    }

    #[test]
    fn streaks() {
        let mut s = Streak::default();
        s.record(IntervalVerdict::Failed);
        s.record(IntervalVerdict::Inconclusive);
        assert_eq!(
            s,
            Streak {
                failed: 1,
                inconclusive: 1
            }
        );
        s.record(IntervalVerdict::Failed);
        assert_eq!(
            s,
            Streak {
                failed: 2,
                inconclusive: 0
            }
        );
        s.record(IntervalVerdict::Passed);
        assert_eq!(s, Streak::default());
    }

    #[test]
    fn shadow_only_steps_judge_shadow_comparisons() {
        let p = policy(
            r#"{"steps":[{"shadow_only":true},{"weight":5}],"checks":[
              {"metric":"error_rate","max_increase":0.005},
              {"metric":"shadow_disagreement_rate","max":0.05}]}"#,
        );
        let mut w = window(vw(1000.0, 0.0, 50.0, 0.0), VariantWindow::default());
        w.shadow = ShadowWindow {
            compared: 200.0,
            agree: 140.0,
            disagree: 60.0,
        };
        let sctx = EvalContext {
            shadow_only: true,
            ..ctx()
        };
        let out = evaluate_checks(&p, &sctx, &w);
        assert_eq!(out[0].verdict, CheckVerdict::Skipped);
        assert_eq!(out[1].verdict, CheckVerdict::Failed);
        assert_eq!(out[1].detail, "candidate 0.300 > max 0.05");
        assert_eq!(interval_verdict(&out, &sctx, &w), IntervalVerdict::Failed);
        w.shadow.disagree = 2.0;
        let out = evaluate_checks(&p, &sctx, &w);
        assert_eq!(interval_verdict(&out, &sctx, &w), IntervalVerdict::Passed);
        // only skipped checks: passes on enough comparisons, else inconclusive
        let only_err = policy(
            r#"{"steps":[{"shadow_only":true}],"checks":[{"metric":"error_rate","max":0.01}]}"#,
        );
        let out = evaluate_checks(&only_err, &sctx, &w);
        assert_eq!(interval_verdict(&out, &sctx, &w), IntervalVerdict::Passed);
        w.shadow.compared = 3.0;
        let out = evaluate_checks(&only_err, &sctx, &w);
        assert_eq!(
            interval_verdict(&out, &sctx, &w),
            IntervalVerdict::Inconclusive
        );
    }
}
