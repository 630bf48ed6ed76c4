//! Committing the engine's transitions: each is a new plan version made by
//! `rollout_core::transitions::apply` (author [`AUTHOR`]), only if the rollout still
//! has the progress the decision was based on and is not paused: a person's change in
//! between wins.

use rollout_core::analysis::Action;
use rollout_core::transitions;

use crate::engine::state::Basis;
use crate::store::{Change, Current, Op, Store, StoreError};

/// Author of every change the engine makes.
pub const AUTHOR: &str = "policy";

/// The operation a transition is recorded as in the history.
fn op_of(action: &Action) -> Option<Op> {
    match action {
        Action::Advance { .. } => Some(Op::SetWeights),
        Action::Wait | Action::Hold => Some(Op::Progress),
        Action::Rollback => Some(Op::Rollback),
        Action::Complete => Some(Op::Promote),
        Action::Stay(_) => None,
    }
}

/// Commits one transition if the rollout still has the progress it was based on and
/// is not paused. Returns the new version, or why not. Blocking.
pub fn commit_transition(
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
            .rollout_named(rollout)
            .map_err(|_| E::Refused(format!("rollout {rollout} is gone")))?;
        if r.paused || r.policy.is_none() || Basis::of(r) != basis {
            return Err(E::Refused(format!(
                "rollout {rollout} changed meanwhile (paused, policy or progress); decision dropped"
            )));
        }
        let op = op_of(action).ok_or_else(|| E::Refused("nothing to commit".to_string()))?;
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
