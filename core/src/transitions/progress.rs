//! Moves of a rollout's policy progress: to a step (with the step's weight), to a
//! state, back (candidate to 0 %), and to complete (the candidate becomes stable).
//! Each writes `progress` (step, state, since, note) and returns the validated plan.

use crate::error::{ConfigError, OpError};
use crate::plan::{PlanSpec, RolloutSpec};
use crate::policy::{step_weight, PolicySpec, ProgressSpec, ProgressState};

use super::weights;

/// Longest `progress.note` written (characters beyond are cut).
pub const MAX_NOTE: usize = 512;

fn truncate_note(note: &str) -> String {
    note.chars().take(MAX_NOTE).collect()
}

pub(super) fn policy_of(r: &RolloutSpec) -> Result<&PolicySpec, ConfigError> {
    r.policy
        .as_ref()
        .ok_or_else(|| ConfigError::new("policy", format!("rollout {:?} has no policy", r.name)))
}

fn candidate_of(r: &RolloutSpec) -> Result<String, ConfigError> {
    r.candidate_name()
        .map(str::to_string)
        .ok_or_else(|| ConfigError::new("policy.candidate", "no candidate variant"))
}

fn progress(step: usize, state: ProgressState, now_ms: u64, note: &str) -> ProgressSpec {
    ProgressSpec {
        step,
        state,
        since_ms: now_ms,
        note: Some(truncate_note(note)),
    }
}

/// Writes `progress` (validating the plan).
fn with_progress(
    mut plan: PlanSpec,
    rollout: &str,
    progress: ProgressSpec,
) -> Result<PlanSpec, OpError> {
    plan.rollout_named_mut(rollout)?.progress = Some(progress);
    plan.compile()?;
    Ok(plan)
}

/// Moves the rollout to `step` (state progressing, since `now_ms`) and sets the
/// candidate's weight to the step's (the first variant absorbs the difference).
pub fn go_to_step(
    plan: &PlanSpec,
    rollout: &str,
    step: usize,
    now_ms: u64,
    note: &str,
) -> Result<PlanSpec, OpError> {
    let r = plan.rollout_named(rollout)?;
    let policy = policy_of(r)?;
    let s = policy.steps.get(step).ok_or_else(|| {
        ConfigError::new(
            "progress.step",
            format!(
                "{step} is not a step of the policy ({} steps)",
                policy.steps.len()
            ),
        )
    })?;
    let candidate = candidate_of(r)?;
    let next = weights::set_weight(plan, rollout, &candidate, step_weight(s))?;
    with_progress(
        next,
        rollout,
        progress(step, ProgressState::Progressing, now_ms, note),
    )
}

/// Changes only the progress state (the step is kept; 0 when the rollout had none).
pub fn set_state(
    plan: &PlanSpec,
    rollout: &str,
    state: ProgressState,
    now_ms: u64,
    note: &str,
) -> Result<PlanSpec, OpError> {
    let r = plan.rollout_named(rollout)?;
    policy_of(r)?;
    let step = r.progress.as_ref().map_or(0, |p| p.step);
    with_progress(plan.clone(), rollout, progress(step, state, now_ms, note))
}

/// Candidate to 0 % at once (the first variant absorbs its share), state rolled_back.
pub fn roll_back(
    plan: &PlanSpec,
    rollout: &str,
    now_ms: u64,
    note: &str,
) -> Result<PlanSpec, OpError> {
    let r = plan.rollout_named(rollout)?;
    policy_of(r)?;
    let candidate = candidate_of(r)?;
    let next = weights::set_weight(plan, rollout, &candidate, 0.0)?;
    set_state(&next, rollout, ProgressState::RolledBack, now_ms, note)
}

/// The candidate becomes stable: it gets 100 % and moves first, the others follow at
/// 0 % in their previous order (what a plain promote does to the last variant). The
/// policy's `candidate` field is cleared (it would now name the stable variant) and
/// the state is complete.
pub fn complete(
    plan: &PlanSpec,
    rollout: &str,
    now_ms: u64,
    note: &str,
) -> Result<PlanSpec, OpError> {
    let r = plan.rollout_named(rollout)?;
    policy_of(r)?;
    let ci = r
        .candidate_index()
        .ok_or_else(|| ConfigError::new("policy.candidate", "no candidate variant"))?;
    let step = r.progress.as_ref().map_or(0, |p| p.step);
    let mut next = plan.clone();
    let rm = next.rollout_named_mut(rollout)?;
    weights::promote_in_place(rm, ci)?;
    if let Some(p) = rm.policy.as_mut() {
        p.candidate = None;
    }
    rm.progress = Some(progress(step, ProgressState::Complete, now_ms, note));
    next.compile()?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::parse_plan;

    const POLICY: &str = r#"{"steps":[{"weight":1,"min_duration_s":60,"min_requests":100},
        {"weight":5,"min_duration_s":60,"min_requests":100,"gate":true},
        {"weight":100,"min_duration_s":0,"min_requests":0}],
        "failure_limit":2,"inconclusive_limit":3}"#;

    fn plan() -> PlanSpec {
        parse_plan(
            format!(
                r#"{{"version":3,"rollouts":[{{"name":"fraud","salt":"s",
                "variants":[{{"name":"stable","weight":100}},{{"name":"canary","weight":0}}],
                "policy":{POLICY}}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
        .0
    }

    #[test]
    fn transitions_write_weights_and_progress() {
        let p = go_to_step(&plan(), "fraud", 1, 42, "go").unwrap();
        let r = &p.rollouts[0];
        assert_eq!(r.variants[1].weight, 5.0);
        assert_eq!(r.variants[0].weight, 95.0);
        let pr = r.progress.as_ref().unwrap();
        assert_eq!(
            (pr.step, pr.state, pr.since_ms),
            (1, ProgressState::Progressing, 42)
        );
        let back = roll_back(&p, "fraud", 43, "bad").unwrap();
        let r = &back.rollouts[0];
        assert_eq!(r.variants[1].weight, 0.0);
        assert_eq!(r.variants[0].weight, 100.0);
        assert_eq!(
            r.progress.as_ref().unwrap().state,
            ProgressState::RolledBack
        );
        assert_eq!(r.progress.as_ref().unwrap().step, 1);
        let done = complete(&p, "fraud", 44, "ok").unwrap();
        let r = &done.rollouts[0];
        assert_eq!(r.variants[0].name, "canary");
        assert_eq!(r.variants[0].weight, 100.0);
        assert_eq!(r.progress.as_ref().unwrap().state, ProgressState::Complete);
        done.compile().unwrap();
        assert!(go_to_step(&plan(), "fraud", 9, 1, "x").is_err());
        assert!(matches!(
            go_to_step(&plan(), "nope", 0, 1, "x").unwrap_err(),
            OpError::UnknownRollout(u) if u.name == "nope" && u.known == ["fraud"]
        ));
    }

    #[test]
    fn complete_with_a_named_candidate_that_is_not_last() {
        let (p, _) = parse_plan(
            br#"{"version":1,"rollouts":[{"name":"r","salt":"s",
            "variants":[{"name":"a","weight":90},{"name":"b","weight":10},{"name":"c","weight":0}],
            "policy":{"candidate":"b","steps":[{"weight":10}]}}]}"#,
        )
        .unwrap();
        let done = complete(&p, "r", 1, "ok").unwrap();
        let names: Vec<(&str, f64)> = done.rollouts[0]
            .variants
            .iter()
            .map(|v| (v.name.as_str(), v.weight))
            .collect();
        assert_eq!(names, vec![("b", 100.0), ("a", 0.0), ("c", 0.0)]);
        assert_eq!(done.rollouts[0].policy.as_ref().unwrap().candidate, None);
    }

    #[test]
    fn notes_are_bounded() {
        let long = "x".repeat(MAX_NOTE + 100);
        let p = go_to_step(&plan(), "fraud", 0, 1, &long).unwrap();
        let note = p.rollouts[0].progress.as_ref().unwrap().note.clone();
        assert_eq!(note.map(|n| n.len()), Some(MAX_NOTE));
    }
}
