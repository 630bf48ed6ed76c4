//! Where the `ab` check gets an experiment's verdict: an [`AbSource`]; by default
//! [`ExperimentsAb`], the sidecar's own A/B report (`report::experiment`).

use rollout_core::analysis::{AbOutcome, AbState};
use rollout_core::experiment::Stopping;
use rollout_core::PlanSpec;

use crate::api::experiment::VerdictStatus;
use crate::report::experiment::verdict;
use crate::store::Store;

/// Where the `ab` check gets the experiment's verdict.
pub trait AbSource: Send + Sync {
    /// The verdict for `rollout` of `plan`; `None`: nothing to judge (no experiment
    /// section, or no data source), the check is inconclusive.
    fn outcome(&self, store: &Store, plan: &PlanSpec, rollout: &str) -> Option<AbOutcome>;
}

/// The A/B verdicts of `report::experiment` (assignments joined with feedback).
pub struct ExperimentsAb;

impl AbSource for ExperimentsAb {
    fn outcome(&self, store: &Store, plan: &PlanSpec, rollout: &str) -> Option<AbOutcome> {
        let compiled = plan.compile().ok()?;
        let r = compiled.rollouts.iter().find(|r| r.name == rollout)?;
        let v = match verdict(store, r) {
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
            (VerdictStatus::Collecting, _, _) => AbState::NotReady,
            (_, true, Some(true)) => AbState::Better,
            (_, true, Some(false)) => AbState::Worse,
            _ => AbState::NoDifference,
        };
        let mut detail = match v.stopping {
            Stopping::Fixed => format!(
                "outcomes {counts} (horizon {} per variant)",
                v.samples_per_variant
            ),
            Stopping::Sequential => format!(
                "sequential (mSPRT): outcomes {counts} (at most {} per variant)",
                v.samples_per_variant
            ),
        };
        if let Some(at) = v.stopped_at {
            detail.push_str(&format!(
                ", decided at {} {} / {} {}",
                v.candidate, at.variant, v.control, at.control
            ));
        }
        if let Some(d) = v.diff {
            detail.push_str(&format!(", diff {d:.4}"));
        }
        if let Some(p) = v.p_value {
            let what = match v.stopping {
                Stopping::Fixed => "p",
                Stopping::Sequential => "always-valid p",
            };
            detail.push_str(&format!(", {what} = {p:.4} (alpha {})", v.alpha));
        }
        Some(AbOutcome { state, detail })
    }
}
