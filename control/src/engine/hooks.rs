//! What the engine tells and asks outside itself, behind two traits so it depends on
//! no receiver: [`EventSink`] takes its rollout events, [`GateCheck`] says whether a
//! gate webhook holds a rollout at its step. Both answer at once (the notify layer
//! queues deliveries and asks gates on its own threads), so a slow or dead receiver
//! never delays a tick.

use std::fmt;
use std::sync::Arc;

use rollout_core::plan::RolloutSpec;

use crate::api::events::RolloutEvent;

/// Takes the engine's events; never blocks.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: RolloutEvent);
}

/// Whether a gate webhook holds a rollout at its current step; never blocks.
pub trait GateCheck: Send + Sync {
    /// `Some(why)` when a gate that applies to the rollout's step has not answered
    /// 200 for it (refused, unreachable, not asked yet).
    fn holds(&self, rollout: &RolloutSpec) -> Option<String>;
}

/// The engine's hooks; none by default.
#[derive(Clone, Default)]
pub struct Hooks {
    pub events: Option<Arc<dyn EventSink>>,
    pub gates: Option<Arc<dyn GateCheck>>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("events", &self.events.is_some())
            .field("gates", &self.gates.is_some())
            .finish()
    }
}

impl Hooks {
    pub fn emit(&self, event: RolloutEvent) {
        if let Some(s) = &self.events {
            s.emit(event);
        }
    }

    pub fn gate_holds(&self, rollout: &RolloutSpec) -> Option<String> {
        self.gates.as_ref().and_then(|g| g.holds(rollout))
    }
}
