//! The shadow dispatcher of one worker's root context: it owns the [`Hub`] the
//! request contexts park their shadow jobs in, dispatches those jobs, receives the
//! shadows' answers (checked by `answer::check`, joined with the primary's in the
//! hub), and posts the buffered comparison records and A/B assignments to the
//! sidecar (`rollout_core::wire`), one post of each kind in flight.
//!
//! Why the root dispatches: a callout's answer goes to the context that made it,
//! and is dropped once a request context that made it is gone; see `hub`.

use std::cell::RefCell;
use std::rc::Rc;

use rollout_core::control::PollError;
use rollout_core::stats::{RecordDrop, ShadowError, ShadowSkip};
use rollout_core::wire::{
    post_headers, Assignment, AssignmentBatch, ShadowRecord, ShadowRecordBatch, ASSIGNMENTS_PATH,
    SHADOW_RECORDS_PATH,
};

use crate::active::Active;
use crate::answer::{self, Wanted};
use crate::host::{Host, HostError};
use crate::hub::{Half, Hub, InFlight};
use crate::metrics::count_bin;
use crate::rng::Random;

/// The two kinds of records the filter sends to the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecordKind {
    /// A shadow comparison (`POST /v1/shadow-records`).
    Shadow,
    /// Which variant served a correlation id, for A/B verdicts (`POST /v1/assignments`).
    Assignment,
}

/// One batch taken from the hub, to post.
enum Batch {
    Records(Vec<ShadowRecord>),
    Assignments(Vec<Assignment>),
}

impl Batch {
    fn len(&self) -> usize {
        match self {
            Batch::Records(r) => r.len(),
            Batch::Assignments(a) => a.len(),
        }
    }
}

#[derive(Default)]
pub struct ShadowDispatcher {
    hub: Rc<RefCell<Hub>>,
    /// Token of the shadow-records post in flight, with the number of records.
    records_in_flight: Option<(u32, u64)>,
    assignments_in_flight: Option<(u32, u64)>,
    /// Names this proxy in the posts (the Envoy node id).
    proxy_id: String,
}

impl ShadowDispatcher {
    /// The hub, for the request contexts.
    pub fn hub(&self) -> Rc<RefCell<Hub>> {
        self.hub.clone()
    }

    pub fn set_proxy_id(&mut self, proxy_id: String) {
        self.proxy_id = proxy_id;
    }

    /// Registers the shared queue request contexts nudge when they park a job
    /// (once; without it jobs wait for the tick).
    pub fn register_queue(&self, host: &impl Host, random: &Random, context_id: u32) {
        let Ok(mut hub) = self.hub.try_borrow_mut() else {
            return;
        };
        if hub.queue.is_some() {
            return;
        }
        let name = format!("model_rollout/shadow/{:016x}/{context_id}", random.id(|| 7));
        hub.queue = host.register_queue(&name).ok();
    }

    /// A request context nudged: take its nudge off the queue and dispatch the
    /// parked jobs. Envoy wakes the root once per enqueue, so one dequeue per wake
    /// keeps the queue empty; a nudge is empty, so the dequeue hands Wasm nothing
    /// to allocate (no VM entry).
    pub fn queue_ready(&mut self, host: &impl Host, active: Option<&Active>, queue: u32) {
        // The nudge carries nothing; a failed dequeue changes nothing either.
        let _ = host.dequeue(queue);
        self.dispatch_jobs(host, active);
    }

    /// Dispatches every parked job, within each rollout's in-flight limit.
    pub fn dispatch_jobs(&mut self, host: &impl Host, active: Option<&Active>) {
        let Some(active) = active else { return };
        let jobs = match self.hub.try_borrow_mut() {
            Ok(mut hub) => hub.take_jobs(),
            Err(_) => return,
        };
        let now = host.now_ms();
        let m = &active.metrics;
        for job in jobs {
            // Metrics of the plan the job was sampled under are found by name.
            let sm = active.rollout_index(&job.rollout).and_then(|i| m.shadow(i));
            let Ok(mut hub) = self.hub.try_borrow_mut() else {
                return;
            };
            if hub.in_flight_for(&job.rollout) >= job.max_in_flight as usize {
                hub.cancel(job.join);
                if let Some(sm) = sm {
                    sm.skip(m, ShadowSkip::InFlightLimit);
                }
                continue;
            }
            let headers = job.headers.iter().collect();
            match host.dispatch(&job.cluster, headers, Some(&job.body), job.timeout_ms) {
                Ok(token) => {
                    hub.in_flight.insert(
                        token,
                        InFlight {
                            join: job.join,
                            rollout: job.rollout,
                            started_ms: now,
                        },
                    );
                    if let Some(sm) = sm {
                        m.bump(sm.sent);
                    }
                }
                Err(e) => {
                    hub.cancel(job.join);
                    if let Some(sm) = sm {
                        // Envoy refuses a callout to an unknown cluster with BadArgument.
                        sm.skip(
                            m,
                            if e == HostError::BadArgument {
                                ShadowSkip::NoCluster
                            } else {
                                ShadowSkip::DispatchFailed
                            },
                        );
                    }
                }
            }
        }
    }

    /// A callout answered: a shadow's answer or a post's. `false` when the token is
    /// not one of ours.
    pub fn on_response(
        &mut self,
        host: &impl Host,
        active: Option<&Active>,
        random: &Random,
        token: u32,
        body_size: usize,
    ) -> bool {
        let in_flight = self
            .hub
            .try_borrow_mut()
            .ok()
            .and_then(|mut h| h.in_flight.remove(&token));
        if let Some(f) = in_flight {
            if let Some(active) = active {
                self.shadow_answer(host, active, random, f, body_size);
            }
            return true;
        }
        for kind in [RecordKind::Shadow, RecordKind::Assignment] {
            let slot = self.slot(kind);
            if let Some((t, n)) = *slot {
                if t == token {
                    *slot = None;
                    if let Some(active) = active {
                        post_answer(host, active, kind, n);
                    }
                    return true;
                }
            }
        }
        false
    }

    fn shadow_answer(
        &mut self,
        host: &impl Host,
        active: &Active,
        random: &Random,
        f: InFlight,
        body_size: usize,
    ) {
        let now = host.now_ms();
        let m = &active.metrics;
        let Some(ri) = active.rollout_index(&f.rollout) else {
            // The rollout left the plan meanwhile; its join expires.
            return;
        };
        let (Some(rollout), Some(sm)) = (active.config.plan.rollout(ri), m.shadow(ri)) else {
            return;
        };
        let Some(sh) = &rollout.shadow else { return };
        let status = host.call_status();
        let limit = sh.compare.max_response_bytes;
        // Over the limit: enough to recognise Envoy's own local replies.
        let body = host
            .call_response_body(if body_size <= limit { body_size } else { 64 })
            .ok()
            .flatten()
            .unwrap_or_default();
        let failure = match status {
            None => Some(PollError::Unreachable),
            Some(s) if !(200..300).contains(&s) => match PollError::classify(s, &body) {
                PollError::Status => None,
                e => Some(e),
            },
            _ => None,
        };
        match failure {
            Some(PollError::Timeout) => {
                m.bump(sm.timeouts);
                self.with_hub(|hub| hub.shadow_failed(f.join));
                return;
            }
            Some(_) => {
                sm.error(m, ShadowError::Unreachable);
                self.with_hub(|hub| hub.shadow_failed(f.join));
                return;
            }
            None => {}
        }
        let status = status.unwrap_or(0);
        if !(200..300).contains(&status) {
            sm.error(m, ShadowError::Status);
        }
        let latency_ms = now.saturating_sub(f.started_ms);
        let wanted = Wanted {
            health: true,
            comparison: true,
        };
        let checked = answer::check(
            rollout,
            status,
            latency_ms,
            &body,
            body_size > limit,
            wanted,
        );
        if let Some(h) = checked.health {
            sm.health.count(m, h);
        }
        for b in &checked.bins {
            count_bin(m, &sm.bins, *b);
        }
        let Some(answer) = checked.answer else { return };
        let mut draw = || random.u32(host, m);
        self.with_hub(|hub| hub.answered(host, f.join, Half::Shadow, answer, now, &mut draw));
    }

    fn with_hub(&self, f: impl FnOnce(&mut Hub)) {
        if let Ok(mut hub) = self.hub.try_borrow_mut() {
            f(&mut hub);
        }
    }

    /// Posts a full batch of either kind at once (partial ones wait for [`Self::post`]).
    pub fn post_full_batches(&mut self, host: &impl Host, active: Option<&Active>) {
        if self
            .hub
            .try_borrow()
            .map(|h| h.batch_ready())
            .unwrap_or(false)
        {
            self.post(host, active);
        }
    }

    /// Expires joins past their age (counted on their rollouts).
    pub fn expire(&self, now: u64) {
        self.with_hub(|hub| hub.expire(now));
    }

    /// Sends buffered records to the sidecar: shadow comparisons and experiment
    /// assignments, one post of each kind in flight.
    pub fn post(&mut self, host: &impl Host, active: Option<&Active>) {
        let Some(active) = active else { return };
        for kind in [RecordKind::Shadow, RecordKind::Assignment] {
            self.post_kind(host, active, kind);
        }
    }

    fn slot(&mut self, kind: RecordKind) -> &mut Option<(u32, u64)> {
        match kind {
            RecordKind::Shadow => &mut self.records_in_flight,
            RecordKind::Assignment => &mut self.assignments_in_flight,
        }
    }

    fn post_kind(&mut self, host: &impl Host, active: &Active, kind: RecordKind) {
        let m = &active.metrics;
        if self.slot(kind).is_some() {
            return;
        }
        let batch = match self.hub.try_borrow_mut() {
            Ok(mut hub) => match kind {
                RecordKind::Shadow => Batch::Records(hub.take_records()),
                RecordKind::Assignment => Batch::Assignments(hub.take_assignments()),
            },
            Err(_) => return,
        };
        let n = batch.len() as u64;
        if n == 0 {
            return;
        }
        let dropped = |why: RecordDrop| match kind {
            RecordKind::Shadow => m.records_dropped(why, n),
            RecordKind::Assignment => m.assignments_dropped(why, n),
        };
        let Some(control) = &active.config.control else {
            dropped(RecordDrop::NoSidecar);
            return;
        };
        let proxy = Some(self.proxy_id.clone());
        let (path, body) = match batch {
            Batch::Records(records) => (
                SHADOW_RECORDS_PATH,
                serde_json::to_vec(&ShadowRecordBatch { proxy, records }),
            ),
            Batch::Assignments(assignments) => (
                ASSIGNMENTS_PATH,
                serde_json::to_vec(&AssignmentBatch { proxy, assignments }),
            ),
        };
        let Ok(body) = body else {
            dropped(RecordDrop::PostFailed);
            return;
        };
        let headers = post_headers(path, &control.authority, control.token.as_deref());
        match host.dispatch(
            &control.cluster,
            headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            Some(&body),
            control.timeout_ms.max(1000),
        ) {
            Ok(token) => *self.slot(kind) = Some((token, n)),
            Err(_) => dropped(RecordDrop::PostFailed),
        }
    }
}

/// The sidecar answered a post of `n` items: sent on 2xx, else dropped.
fn post_answer(host: &impl Host, active: &Active, kind: RecordKind, n: u64) {
    let m = &active.metrics;
    let ok = host.call_status().is_some_and(|s| (200..300).contains(&s));
    match (kind, ok) {
        (RecordKind::Shadow, true) => m.add(m.records_sent, n),
        (RecordKind::Shadow, false) => m.records_dropped(RecordDrop::PostFailed, n),
        (RecordKind::Assignment, true) => m.add(m.assignments_sent, n),
        (RecordKind::Assignment, false) => m.assignments_dropped(RecordDrop::PostFailed, n),
    }
}
