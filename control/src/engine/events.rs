//! The engine's decisions as rollout events (`api::events::RolloutEvent`): a
//! committed transition is `started`, `step_advanced`, `waiting`, `holding`,
//! `rolled_back` or `promoted`; an evaluation that saw a proxy's local trip is
//! `local_trip`, one held by a gate webhook `gate_holding` (each once per step).
//! The sink gives each event its id.

use rollout_core::analysis::{Action, CheckVerdict};
use rollout_core::notify::EventKind;
use rollout_core::plan::RolloutSpec;
use rollout_core::policy::{step_label, step_weight};

use crate::api::analysis::Decision;
use crate::api::events::{RolloutEvent, EVENT_SCHEMA};
use crate::engine::state::Runtime;
use crate::util::timefmt::rfc3339_ms;

/// The kind of a committed transition (`decision.action` tells a start).
fn transition_kind(decision: &Decision, action: &Action) -> Option<EventKind> {
    Some(match action {
        Action::Advance { .. } if decision.action == "start" => EventKind::Started,
        Action::Advance { .. } => EventKind::StepAdvanced,
        Action::Wait => EventKind::Waiting,
        Action::Hold => EventKind::Holding,
        Action::Rollback => EventKind::RolledBack,
        Action::Complete => EventKind::Promoted,
        Action::Stay(_) => return None,
    })
}

/// An event of rollout `r` (as the decision saw it) at `step`, with the candidate at
/// `weight`.
fn event(
    r: &RolloutSpec,
    kind: EventKind,
    step: usize,
    weight: f64,
    decision: &Decision,
    reason: String,
) -> RolloutEvent {
    let steps = r.policy.as_ref().map_or(0, |p| p.steps.len());
    RolloutEvent {
        schema: EVENT_SCHEMA,
        id: 0,
        kind,
        rollout: r.name.clone(),
        unix_ms: decision.unix_ms,
        time: rfc3339_ms(decision.unix_ms),
        stable: r
            .variants
            .first()
            .map(|v| v.name.clone())
            .unwrap_or_default(),
        candidate: r.candidate_name().unwrap_or("").to_string(),
        step,
        steps,
        step_label: r
            .policy
            .as_ref()
            .map(|p| step_label(p, step))
            .unwrap_or_default(),
        weight,
        plan_version: decision.plan_version,
        reason,
    }
}

/// The event of a committed transition of `r` (the rollout before the change).
pub fn transition_event(
    r: &RolloutSpec,
    decision: &Decision,
    action: &Action,
) -> Option<RolloutEvent> {
    let kind = transition_kind(decision, action)?;
    let current = r
        .candidate_index()
        .and_then(|i| r.variants.get(i))
        .map_or(0.0, |v| v.weight);
    let (step, weight) = match action {
        Action::Advance { to } => (
            *to,
            r.policy
                .as_ref()
                .and_then(|p| p.steps.get(*to))
                .map_or(current, step_weight),
        ),
        Action::Rollback => (decision.step, 0.0),
        Action::Complete => (decision.step, 100.0),
        _ => (decision.step, current),
    };
    Some(event(
        r,
        kind,
        step,
        weight,
        decision,
        decision.reason.clone(),
    ))
}

/// The events an evaluation of `r` saw, each once per step (`rt.announced`): a
/// proxy's local trip (the `local_trip` check failed), a gate webhook holding the
/// rollout (`gate`: what the gate answered) after its checks passed.
pub fn evaluation_events(
    r: &RolloutSpec,
    rt: &mut Runtime,
    decision: &Decision,
    gate: Option<&String>,
) -> Vec<RolloutEvent> {
    let mut out = Vec::new();
    let weight = r
        .candidate_index()
        .and_then(|i| r.variants.get(i))
        .map_or(0.0, |v| v.weight);
    if let Some(trip) = decision
        .checks
        .iter()
        .find(|c| c.name == "local_trip" && c.verdict == CheckVerdict::Failed)
    {
        if !rt.announced.contains(&EventKind::LocalTrip) {
            rt.announced.push(EventKind::LocalTrip);
            let reason = format!("a proxy tripped locally: {}", trip.detail);
            out.push(event(
                r,
                EventKind::LocalTrip,
                decision.step,
                weight,
                decision,
                reason,
            ));
        }
    }
    if let Some(g) = gate {
        let held = decision.action == "stay" && decision.reason.ends_with(g.as_str());
        if held && !rt.announced.contains(&EventKind::GateHolding) {
            rt.announced.push(EventKind::GateHolding);
            out.push(event(
                r,
                EventKind::GateHolding,
                decision.step,
                weight,
                decision,
                g.clone(),
            ));
        }
    }
    out
}
