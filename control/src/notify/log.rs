//! The recent events, in memory (`GET /v1/events`, `watch`, the status page): the
//! last [`KEEP`] events of the process, each given its id here. Not durable: the
//! history keeps every plan change with its reason.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use crate::api::events::{EventList, RolloutEvent};

/// Events kept.
pub const KEEP: usize = 1000;
/// Most events one answer carries.
pub const MAX_LIMIT: usize = 1000;

#[derive(Debug, Default)]
pub struct EventLog {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    last_id: u64,
    events: VecDeque<RolloutEvent>,
}

impl EventLog {
    /// Gives `e` the next id and keeps it; returns it.
    pub fn push(&self, mut e: RolloutEvent) -> RolloutEvent {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.last_id += 1;
        e.id = g.last_id;
        if g.events.len() >= KEEP {
            g.events.pop_front();
        }
        g.events.push_back(e.clone());
        e
    }

    /// The events after id `after` (of `rollout`, or every rollout), oldest first, at
    /// most `limit` (the newest of them).
    pub fn list(&self, rollout: Option<&str>, after: u64, limit: usize) -> EventList {
        let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut events: Vec<RolloutEvent> = g
            .events
            .iter()
            .filter(|e| e.id > after && rollout.is_none_or(|r| e.rollout == r))
            .cloned()
            .collect();
        let limit = limit.min(MAX_LIMIT);
        if events.len() > limit {
            events.drain(..events.len() - limit);
        }
        EventList {
            events,
            last_id: g.last_id,
        }
    }
}
