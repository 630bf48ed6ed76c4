//! Plan transitions: every change to a rollout's weights, pause or policy progress,
//! as pure functions from the plan in force to the next one. This is the one place
//! where a plan changes: the sidecar's API calls the operations of a person
//! ([`set_weights`], [`promote`], [`rollback`], [`resume`], [`restart`], ...) and its
//! policy engine applies the step machine's actions ([`apply`]).
//!
//! Nothing here reads a clock or knows who asks: the time (unix ms) and the author
//! are passed in. Each function returns a new, validated plan (`PlanSpec::compile`
//! passes on it); its `version` is left untouched, the store assigns versions.
//!
//! Errors ([`OpError`]): `UnknownRollout` for a rollout the plan does not have;
//! otherwise `Invalid` naming the field: `variant` for an unknown variant, `weight`
//! / `weights.<variant>` for a bad weight, `progress` when the policy's state refuses
//! the operation, `policy` when it needs a policy, or the plan path reported by
//! validation.
//!
//! With a policy, a person's operation also moves its progress: promote advances a
//! step (or completes), rollback marks it rolled back, manual weights make it hold,
//! resume and restart walk the steps again. Without one they are the plain weight
//! edits (`weights.rs`).

mod progress;
mod weights;

use crate::analysis::steps::Action;
use crate::error::{ConfigError, OpError};
use crate::plan::PlanSpec;
use crate::policy::{step_label, ProgressState};

pub use progress::MAX_NOTE;

/// A plan change: the next plan and the reason recorded in the history (a default
/// the caller may replace with the person's own).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub plan: PlanSpec,
    pub reason: String,
}

impl Transition {
    fn new(plan: PlanSpec, reason: String) -> Self {
        Transition { plan, reason }
    }
}

// ---------------------------------------------------------------------------
// A person's operations

/// Sets explicit weights for every variant of `rollout` (each named once, summing
/// to 100). A policy that was walking its steps holds (`resume` restores the
/// step's weight, `promote` advances).
pub fn set_weights<S: AsRef<str>>(
    plan: &PlanSpec,
    rollout: &str,
    weights: &[(S, f64)],
    author: &str,
    now_ms: u64,
) -> Result<Transition, OpError> {
    let next = weights::set_weights(plan, rollout, weights)?;
    manual_weights(next, rollout, author, now_ms)
}

/// Sets one variant's weight; the first variant (stable) absorbs the difference. A
/// policy that was walking its steps holds.
pub fn set_weight(
    plan: &PlanSpec,
    rollout: &str,
    variant: &str,
    weight: f64,
    author: &str,
    now_ms: u64,
) -> Result<Transition, OpError> {
    let next = weights::set_weight(plan, rollout, variant, weight)?;
    manual_weights(next, rollout, author, now_ms)
}

fn manual_weights(
    next: PlanSpec,
    rollout: &str,
    author: &str,
    now_ms: u64,
) -> Result<Transition, OpError> {
    let next = hold_after_manual(next, rollout, "set-weights", author, now_ms)?;
    let reason = format!("set weights of {rollout}: {}", weights_text(&next, rollout));
    Ok(Transition::new(next, reason))
}

/// Blue/green switch: `variant` gets 100, every other variant 0. A policy that was
/// walking its steps holds.
pub fn switch(
    plan: &PlanSpec,
    rollout: &str,
    variant: &str,
    author: &str,
    now_ms: u64,
) -> Result<Transition, OpError> {
    let next = weights::switch(plan, rollout, variant)?;
    let next = hold_after_manual(next, rollout, "switch", author, now_ms)?;
    Ok(Transition::new(
        next,
        format!("switch {rollout} to {variant}"),
    ))
}

/// `name=weight` list of one rollout, for default reasons.
fn weights_text(plan: &PlanSpec, rollout: &str) -> String {
    plan.rollout_named(rollout)
        .map(|r| {
            r.variants
                .iter()
                .map(|v| format!("{}={}", v.name, v.weight))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// After a person's set-weights or switch (`what`, the history's name of the
/// operation): a policy that was progressing or waiting (or not started yet) holds,
/// so the engine does not undo the person's weights. `resume` restores the step's
/// weight, `promote` advances.
fn hold_after_manual(
    next: PlanSpec,
    rollout: &str,
    what: &str,
    author: &str,
    now_ms: u64,
) -> Result<PlanSpec, OpError> {
    let Ok(r) = next.rollout_named(rollout) else {
        return Ok(next);
    };
    if r.policy.is_none() {
        return Ok(next);
    }
    let hold = match &r.progress {
        None => true,
        Some(p) => matches!(p.state, ProgressState::Progressing | ProgressState::Waiting),
    };
    if !hold {
        return Ok(next);
    }
    progress::set_state(
        &next,
        rollout,
        ProgressState::Holding,
        now_ms,
        &format!(
            "manual {what} by {author}: the policy holds; resume restores the step's weight, \
             promote advances"
        ),
    )
}

/// Without a policy: the last variant gets 100 and becomes the first (stable).
/// With a policy: at a step before the last (progressing, waiting or holding) it
/// advances to the next step; on the last step, or before the policy started, the
/// candidate becomes stable (state complete). A rolled-back or complete rollout is
/// refused (`progress`): restart it first.
pub fn promote(
    plan: &PlanSpec,
    rollout: &str,
    author: &str,
    now_ms: u64,
) -> Result<Transition, OpError> {
    let r = plan.rollout_named(rollout)?;
    let Some(policy) = &r.policy else {
        let candidate = r.variants.last().map_or("", |v| v.name.as_str());
        return Ok(Transition::new(
            weights::promote(plan, rollout)?,
            format!("promote {candidate} in {rollout}"),
        ));
    };
    let candidate = r.candidate_name().unwrap_or("");
    let done = |why: &str| -> Result<Transition, OpError> {
        let note = format!("promoted by {author}{why}");
        Ok(Transition::new(
            progress::complete(plan, rollout, now_ms, &note)?,
            format!("promote {candidate} in {rollout}{why}"),
        ))
    };
    let Some(p) = &r.progress else {
        return done(" (before the policy started)");
    };
    match p.state {
        ProgressState::RolledBack => Err(ConfigError::new(
            "progress",
            format!(
                "rollout {rollout} was rolled back ({}); POST /v1/rollouts/{rollout}/restart to \
                 walk the steps again, or set the weights by hand",
                p.note.as_deref().unwrap_or("no note")
            ),
        )
        .into()),
        ProgressState::Complete => Err(ConfigError::new(
            "progress",
            format!("rollout {rollout} is complete: its candidate is already stable"),
        )
        .into()),
        _ if p.step + 1 >= policy.steps.len() => done(" (last step)"),
        ProgressState::Progressing | ProgressState::Waiting | ProgressState::Holding => {
            let to = p.step + 1;
            Ok(Transition::new(
                progress::go_to_step(plan, rollout, to, now_ms, &format!("promoted by {author}"))?,
                format!("promote {rollout}: advance to {}", step_label(policy, to)),
            ))
        }
    }
}

/// Without a policy: the last variant to 0 at once, its weight to the first. With a
/// policy: the policy's candidate to 0 and state rolled_back (the engine then
/// leaves it alone until a restart).
pub fn rollback(
    plan: &PlanSpec,
    rollout: &str,
    author: &str,
    now_ms: u64,
) -> Result<Transition, OpError> {
    let r = plan.rollout_named(rollout)?;
    if r.policy.is_none() {
        let candidate = r.variants.last().map_or("", |v| v.name.as_str());
        return Ok(Transition::new(
            weights::rollback(plan, rollout)?,
            format!("roll back {candidate} in {rollout}"),
        ));
    }
    let candidate = r.candidate_name().unwrap_or("");
    Ok(Transition::new(
        progress::roll_back(plan, rollout, now_ms, &format!("rolled back by {author}"))?,
        format!("roll back {candidate} in {rollout}"),
    ))
}

/// Sets the operator pause (routing is unaffected; automatic changes stop).
pub fn pause(plan: &PlanSpec, rollout: &str) -> Result<Transition, OpError> {
    Ok(Transition::new(
        weights::set_paused(plan, rollout, true)?,
        format!("pause {rollout}"),
    ))
}

/// Clears the pause; a holding policy goes back to progressing at its step, with
/// the step's weight and a fresh `since`.
pub fn resume(
    plan: &PlanSpec,
    rollout: &str,
    author: &str,
    now_ms: u64,
) -> Result<Transition, OpError> {
    let next = weights::set_paused(plan, rollout, false)?;
    let r = next.rollout_named(rollout)?;
    let holding = r
        .progress
        .as_ref()
        .filter(|p| p.state == ProgressState::Holding);
    let Some(step) = holding.map(|p| p.step) else {
        return Ok(Transition::new(next, format!("resume {rollout}")));
    };
    let label = r
        .policy
        .as_ref()
        .map(|pol| step_label(pol, step))
        .unwrap_or_default();
    let next = progress::go_to_step(
        &next,
        rollout,
        step,
        now_ms,
        &format!("resumed by {author}"),
    )?;
    Ok(Transition::new(
        next,
        format!("resume {rollout} at {label}"),
    ))
}

/// Back to step 0, progressing, the candidate at step 0's weight (`policy` error
/// without a policy).
pub fn restart(
    plan: &PlanSpec,
    rollout: &str,
    author: &str,
    now_ms: u64,
) -> Result<Transition, OpError> {
    let r = plan.rollout_named(rollout)?;
    let policy = r.policy.as_ref().ok_or_else(|| {
        ConfigError::new(
            "policy",
            format!("rollout {rollout} has no policy to restart"),
        )
    })?;
    let label = step_label(policy, 0);
    Ok(Transition::new(
        progress::go_to_step(plan, rollout, 0, now_ms, &format!("restarted by {author}"))?,
        format!("restart the policy of {rollout} at {label}"),
    ))
}

// ---------------------------------------------------------------------------
// The policy engine's

/// The plan after the step machine's `action` for `rollout` (`reason` becomes the
/// progress note); `None` for `Action::Stay`, which changes nothing. The engine
/// starts a rollout with `Action::Advance { to: 0 }`.
pub fn apply(
    plan: &PlanSpec,
    rollout: &str,
    action: &Action,
    now_ms: u64,
    reason: &str,
) -> Result<Option<PlanSpec>, OpError> {
    let next = match action {
        Action::Advance { to } => progress::go_to_step(plan, rollout, *to, now_ms, reason)?,
        Action::Wait => progress::set_state(plan, rollout, ProgressState::Waiting, now_ms, reason)?,
        Action::Hold => progress::set_state(plan, rollout, ProgressState::Holding, now_ms, reason)?,
        Action::Rollback => progress::roll_back(plan, rollout, now_ms, reason)?,
        Action::Complete => progress::complete(plan, rollout, now_ms, reason)?,
        Action::Stay(_) => return Ok(None),
    };
    Ok(Some(next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::UnknownRollout;
    use crate::plan::parse_plan;

    const POLICY: &str = r#"{"steps":[{"weight":1},{"weight":5},{"weight":100}]}"#;

    fn plan() -> PlanSpec {
        parse_plan(
            format!(
                r#"{{"version":3,"rollouts":[
                {{"name":"fraud","salt":"s","variants":[{{"name":"stable","weight":100}},{{"name":"canary","weight":0}}],
                  "policy":{POLICY}}},
                {{"name":"plain","salt":"s","variants":[{{"name":"a","weight":90}},{{"name":"b","weight":10}}]}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
        .0
    }

    fn state(p: &PlanSpec) -> Option<(usize, ProgressState, u64)> {
        p.rollouts[0]
            .progress
            .as_ref()
            .map(|p| (p.step, p.state, p.since_ms))
    }

    fn started() -> PlanSpec {
        apply(&plan(), "fraud", &Action::Advance { to: 0 }, 10, "start")
            .unwrap()
            .unwrap()
    }

    #[test]
    fn unknown_rollouts_are_a_type_naming_the_known_ones() {
        let e = promote(&plan(), "ghost", "op", 1).unwrap_err();
        let want = OpError::UnknownRollout(UnknownRollout::new("ghost", ["fraud", "plain"]));
        assert_eq!(e, want);
        assert_eq!(e.field(), "rollout");
        assert_eq!(
            e.message(),
            "no rollout named \"ghost\" (rollouts: fraud, plain)"
        );
        for e in [
            set_weights(&plan(), "ghost", &[("a", 100.0)], "op", 1).unwrap_err(),
            set_weight(&plan(), "ghost", "b", 1.0, "op", 1).unwrap_err(),
            switch(&plan(), "ghost", "a", "op", 1).unwrap_err(),
            rollback(&plan(), "ghost", "op", 1).unwrap_err(),
            pause(&plan(), "ghost").unwrap_err(),
            resume(&plan(), "ghost", "op", 1).unwrap_err(),
            restart(&plan(), "ghost", "op", 1).unwrap_err(),
            apply(&plan(), "ghost", &Action::Wait, 1, "x").unwrap_err(),
        ] {
            assert_eq!(e, want);
        }
    }

    #[test]
    fn without_a_policy_the_plain_operations() {
        let t = promote(&plan(), "plain", "op", 1).unwrap();
        assert_eq!(t.reason, "promote b in plain");
        assert_eq!(t.plan.rollouts[1].variants[0].name, "b");
        let t = rollback(&plan(), "plain", "op", 1).unwrap();
        assert_eq!(t.reason, "roll back b in plain");
        assert_eq!(t.plan.rollouts[1].variants[1].weight, 0.0);
        let t = set_weight(&plan(), "plain", "b", 25.0, "op", 1).unwrap();
        assert_eq!(t.reason, "set weights of plain: a=75 b=25");
        let t = switch(&plan(), "plain", "b", "op", 1).unwrap();
        assert_eq!(t.reason, "switch plain to b");
        let t = pause(&plan(), "plain").unwrap();
        assert!(t.plan.rollouts[1].paused);
        let t = resume(&t.plan, "plain", "op", 1).unwrap();
        assert_eq!((t.reason.as_str(), t.plan), ("resume plain", plan()));
        assert_eq!(
            restart(&plan(), "plain", "op", 1).unwrap_err().field(),
            "policy"
        );
    }

    #[test]
    fn promote_walks_the_steps_then_completes() {
        let p = started();
        assert_eq!(state(&p), Some((0, ProgressState::Progressing, 10)));
        let t = promote(&p, "fraud", "ana", 20).unwrap();
        assert_eq!(t.reason, "promote fraud: advance to step 1 (5 %)");
        assert_eq!(state(&t.plan), Some((1, ProgressState::Progressing, 20)));
        assert_eq!(t.plan.rollouts[0].variants[1].weight, 5.0);
        let note = t.plan.rollouts[0].progress.as_ref().unwrap().note.clone();
        assert_eq!(note.as_deref(), Some("promoted by ana"));
        let t = promote(&t.plan, "fraud", "ana", 30).unwrap();
        let t = promote(&t.plan, "fraud", "ana", 40).unwrap();
        assert_eq!(t.reason, "promote canary in fraud (last step)");
        assert_eq!(state(&t.plan).map(|s| s.1), Some(ProgressState::Complete));
        assert_eq!(t.plan.rollouts[0].variants[0].name, "canary");
        let e = promote(&t.plan, "fraud", "ana", 50).unwrap_err();
        assert_eq!(e.field(), "progress");
        // before the policy started: complete at once
        let t = promote(&plan(), "fraud", "ana", 5).unwrap();
        assert_eq!(
            t.reason,
            "promote canary in fraud (before the policy started)"
        );
    }

    #[test]
    fn rollback_then_restart() {
        let p = promote(&started(), "fraud", "ana", 20).unwrap().plan;
        let t = rollback(&p, "fraud", "bob", 30).unwrap();
        assert_eq!(t.reason, "roll back canary in fraud");
        assert_eq!(state(&t.plan), Some((1, ProgressState::RolledBack, 30)));
        assert_eq!(t.plan.rollouts[0].variants[1].weight, 0.0);
        let e = promote(&t.plan, "fraud", "ana", 40).unwrap_err();
        assert_eq!(e.field(), "progress");
        assert!(e.message().contains("rolled back by bob"), "{e}");
        let t = restart(&t.plan, "fraud", "ana", 50).unwrap();
        assert_eq!(t.reason, "restart the policy of fraud at step 0 (1 %)");
        assert_eq!(state(&t.plan), Some((0, ProgressState::Progressing, 50)));
        assert_eq!(t.plan.rollouts[0].variants[1].weight, 1.0);
    }

    #[test]
    fn manual_weights_hold_the_policy_and_resume_restores_the_step() {
        let p = promote(&started(), "fraud", "ana", 20).unwrap().plan;
        let t = set_weight(&p, "fraud", "canary", 30.0, "bob", 30).unwrap();
        assert_eq!(t.reason, "set weights of fraud: stable=70 canary=30");
        assert_eq!(state(&t.plan), Some((1, ProgressState::Holding, 30)));
        let note = t.plan.rollouts[0].progress.as_ref().unwrap().note.clone();
        assert!(note.unwrap().starts_with("manual set-weights by bob"));
        let t = switch(&p, "fraud", "stable", "bob", 31).unwrap();
        let note = t.plan.rollouts[0].progress.as_ref().unwrap().note.clone();
        assert!(note.unwrap().starts_with("manual switch by bob"));
        let t = resume(&t.plan, "fraud", "ana", 40).unwrap();
        assert_eq!(t.reason, "resume fraud at step 1 (5 %)");
        assert_eq!(state(&t.plan), Some((1, ProgressState::Progressing, 40)));
        assert_eq!(t.plan.rollouts[0].variants[1].weight, 5.0);
        // a rolled-back policy stays rolled back under manual weights
        let back = rollback(&p, "fraud", "bob", 50).unwrap().plan;
        let t = set_weight(&back, "fraud", "canary", 3.0, "bob", 60).unwrap();
        assert_eq!(state(&t.plan), Some((1, ProgressState::RolledBack, 50)));
    }

    #[test]
    fn the_engine_applies_actions() {
        let p = started();
        assert_eq!(
            apply(&p, "fraud", &Action::Stay("x".into()), 1, "x"),
            Ok(None)
        );
        let w = apply(&p, "fraud", &Action::Wait, 20, "wait")
            .unwrap()
            .unwrap();
        assert_eq!(state(&w), Some((0, ProgressState::Waiting, 20)));
        let h = apply(&p, "fraud", &Action::Hold, 21, "hold")
            .unwrap()
            .unwrap();
        assert_eq!(state(&h), Some((0, ProgressState::Holding, 21)));
        let b = apply(&p, "fraud", &Action::Rollback, 22, "bad")
            .unwrap()
            .unwrap();
        assert_eq!(state(&b), Some((0, ProgressState::RolledBack, 22)));
        let c = apply(&p, "fraud", &Action::Complete, 23, "ok")
            .unwrap()
            .unwrap();
        assert_eq!(state(&c), Some((0, ProgressState::Complete, 23)));
        assert_eq!(c.rollouts[0].variants[0].name, "canary");
        let e = apply(&plan(), "plain", &Action::Wait, 1, "x").unwrap_err();
        assert_eq!(e.field(), "policy");
    }
}
