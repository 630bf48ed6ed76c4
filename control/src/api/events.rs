//! Rollout events: what the policy engine did or saw, as webhooks receive them
//! (`format: json`), `GET /v1/events` lists them, and `watch` and the status page
//! show them. The kinds are `rollout_core::notify::EventKind`.

use rollout_core::notify::EventKind;
use serde::{Deserialize, Serialize};

/// Schema of the event document; bumped on an incompatible change.
pub const EVENT_SCHEMA: u32 = 1;

/// One rollout event (the JSON webhook payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutEvent {
    pub schema: u32,
    /// Increasing per sidecar process (receivers de-duplicate retries by it).
    pub id: u64,
    pub kind: EventKind,
    pub rollout: String,
    pub unix_ms: u64,
    /// RFC 3339 UTC.
    pub time: String,
    pub stable: String,
    pub candidate: String,
    /// The step the rollout is at after the event (0-based) and its label.
    pub step: usize,
    pub steps: usize,
    pub step_label: String,
    /// The candidate's weight (percent) after the event.
    pub weight: f64,
    /// The plan version the event's transition wrote (`null` for events that change
    /// no plan: `gate_holding`, `local_trip`).
    pub plan_version: Option<u64>,
    /// Why: the transition's reason (for `rolled_back`, the failed checks with their
    /// values), the gate's answer, the trip.
    pub reason: String,
}

/// `GET /v1/events?rollout=R&after=ID&limit=N`: oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventList {
    pub events: Vec<RolloutEvent>,
    /// The newest id the sidecar has made (0 before any): poll with `after=last_id`.
    pub last_id: u64,
}

/// The webhooks' delivery counters (`GET /metrics` shows them too).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeliveryCounts {
    pub delivered: u64,
    /// Attempts that failed and were tried again.
    pub retried: u64,
    /// Given up after every attempt.
    pub failed: u64,
    /// Dropped because the receiver's queue was full.
    pub dropped: u64,
}
