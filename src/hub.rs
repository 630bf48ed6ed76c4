//! The worker's shadow hub: where request contexts and the root's dispatcher meet.
//! It holds the parked shadow jobs, the open *joins* (one per shadowed request,
//! waiting for the primary's and the shadow's answers), the shadow calls in flight,
//! and the records and assignments waiting to be posted.
//!
//! Why the root dispatches shadows: the proxy-wasm SDK (0.2.5) hands a callout's
//! answer to the context that was running when the callout was dispatched (its own
//! token table; Envoy itself places every callout on the root context), and drops
//! the answer once that request context is gone. Setting the effective context to
//! the root (`proxy_set_effective_context`) before dispatching does not change that
//! table: tried for issue 13 in Envoy, no answer reached the root's dispatcher
//! (nothing compared; the in-flight limit filled up). So a request context never
//! dispatches a shadow itself. It opens a join
//! (keyed by an internal id; the correlation id travels with it), parks the copy as
//! a job here, and nudges the root through a proxy-wasm shared queue; the root's
//! `on_queue_ready` runs on the same worker right after the current callback and
//! its `ShadowDispatcher` dispatches the job. The request context later hands over
//! its own answer (status, latency, predictions) when it ends. Whichever half
//! arrives second completes the join: compare, count, maybe record.
//!
//! Everything is bounded: jobs, joins (also by age: an expired join is counted),
//! in-flight shadow calls (per rollout and worker), buffered records.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use rollout_core::answer::{compare, Prediction};
use rollout_core::shadow::CopyHeaders;
use rollout_core::stats::{RecordDrop, ShadowSkip};
use rollout_core::wire::{
    batch_len, Assignment, ShadowRecord, MAX_BATCH, MAX_POST_BYTES, MAX_RECORD_BYTES,
};
use serde_json::Value;

use crate::active::Active;
use crate::answer::Answer;
use crate::host::Host;

pub const MAX_JOBS: usize = 256;
pub const MAX_JOINS: usize = 4096;
pub const MAX_RECORDS: usize = 5000;
/// Records (or assignments) per post: the sidecar takes at most `MAX_BATCH`. Records
/// are also split by bytes (`wire::batch_len`): a post stays under `MAX_POST_BYTES`,
/// half the sidecar's body limit, and a record over `MAX_RECORD_BYTES` has its
/// predictions cut (counted). Assignments are bounded by their fields: a full batch
/// of the largest fits (tested in `wire`).
pub const RECORD_BATCH: usize = MAX_BATCH;
/// A join outlives its shadow's timeout by this much before it expires.
pub const JOIN_GRACE_MS: u64 = 10_000;

pub struct Job {
    pub join: u64,
    pub rollout: String,
    pub cluster: String,
    pub headers: CopyHeaders,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
    pub max_in_flight: u32,
}

struct Join {
    active: Rc<Active>,
    rollout: usize,
    variant: usize,
    correlation_id: String,
    expires_ms: u64,
    primary: Option<Answer>,
    shadow: Option<Answer>,
}

pub struct InFlight {
    pub join: u64,
    pub rollout: String,
    pub started_ms: u64,
}

#[derive(Default)]
pub struct Hub {
    jobs: VecDeque<Job>,
    joins: HashMap<u64, Join>,
    next_join: u64,
    pub in_flight: HashMap<u32, InFlight>,
    /// Shared queue this worker's root listens on (None: nudges unavailable,
    /// jobs are dispatched on the tick instead).
    pub queue: Option<u32>,
    /// Each with its size as JSON.
    records: Vec<(ShadowRecord, usize)>,
    /// Sum of the buffered records' sizes.
    records_bytes: usize,
    assignments: Vec<Assignment>,
    /// Disagreement records budget per rollout: (minute window start, used).
    budget: HashMap<String, (u64, u32)>,
}

/// Which side of a join answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    Primary,
    Shadow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Joins,
    Jobs,
}

impl Hub {
    /// Opens a join for a sampled request.
    pub fn open(
        &mut self,
        active: Rc<Active>,
        rollout: usize,
        variant: usize,
        correlation_id: &str,
        expires_ms: u64,
    ) -> Result<u64, Full> {
        if self.joins.len() >= MAX_JOINS {
            return Err(Full::Joins);
        }
        self.next_join = self.next_join.wrapping_add(1);
        let id = self.next_join;
        self.joins.insert(
            id,
            Join {
                active,
                rollout,
                variant,
                correlation_id: correlation_id.to_string(),
                expires_ms,
                primary: None,
                shadow: None,
            },
        );
        Ok(id)
    }

    /// Drops a join that will never complete (no shadow sent).
    pub fn cancel(&mut self, join: u64) {
        self.joins.remove(&join);
    }

    /// Parks a job; returns whether the root must be nudged (queue was empty).
    pub fn push(&mut self, job: Job) -> Result<bool, Full> {
        if self.jobs.len() >= MAX_JOBS {
            self.joins.remove(&job.join);
            return Err(Full::Jobs);
        }
        let was_empty = self.jobs.is_empty();
        self.jobs.push_back(job);
        Ok(was_empty)
    }

    pub fn take_jobs(&mut self) -> VecDeque<Job> {
        std::mem::take(&mut self.jobs)
    }

    pub fn in_flight_for(&self, rollout: &str) -> usize {
        self.in_flight
            .values()
            .filter(|f| f.rollout == rollout)
            .count()
    }

    pub fn has_join(&self, join: u64) -> bool {
        self.joins.contains_key(&join)
    }

    /// One half's answer; completes the join when the other half is already there.
    pub fn answered(
        &mut self,
        host: &impl Host,
        join: u64,
        half: Half,
        answer: Answer,
        now: u64,
        rng: &mut impl FnMut() -> u32,
    ) {
        let Some(j) = self.joins.get_mut(&join) else {
            return;
        };
        let (mine, other) = match half {
            Half::Primary => (&mut j.primary, j.shadow.is_some()),
            Half::Shadow => (&mut j.shadow, j.primary.is_some()),
        };
        *mine = Some(answer);
        if other {
            self.complete(host, join, now, rng);
        }
    }

    /// The shadow produced no answer (unreachable, timeout): nothing to compare.
    pub fn shadow_failed(&mut self, join: u64) {
        self.joins.remove(&join);
    }

    fn complete(&mut self, host: &impl Host, join: u64, now: u64, rng: &mut impl FnMut() -> u32) {
        let Some(j) = self.joins.remove(&join) else {
            return;
        };
        let (Some(p), Some(s)) = (&j.primary, &j.shadow) else {
            return;
        };
        let m = &j.active.metrics;
        let Some(sm) = m.shadow(j.rollout) else {
            return;
        };
        let Some(rollout) = j.active.config.plan.rollout(j.rollout) else {
            return;
        };
        let Some(spec) = &rollout.shadow else { return };
        if p.too_large || s.too_large {
            sm.skip(m, ShadowSkip::ResponseTooLarge);
            return;
        }
        let verdict = compare(
            p.status,
            s.status,
            &p.predictions,
            &s.predictions,
            &spec.compare,
        );
        m.bump(sm.compared);
        if verdict.agrees() {
            m.bump(sm.agree);
        } else {
            sm.disagree(m, verdict);
        }
        m.record(host, sm.latency_ms, s.latency_ms);
        m.record(host, sm.primary_latency_ms, p.latency_ms);

        let keep = if verdict.agrees() {
            spec.record_bp > 0 && rng() % 10_000 < u32::from(spec.record_bp)
        } else {
            let (start, used) = self.budget.entry(rollout.name.clone()).or_insert((now, 0));
            if now.saturating_sub(*start) >= 60_000 {
                *start = now;
                *used = 0;
            }
            *used += 1;
            *used <= spec.disagreements_per_minute
        };
        if !keep {
            return;
        }
        if self.records.len() >= MAX_RECORDS {
            m.records_dropped(RecordDrop::BufferFull, 1);
            return;
        }
        let preds = |a: &Answer| {
            Value::Array(
                a.predictions
                    .iter()
                    .map(|p| p.as_ref().map(Prediction::to_json).unwrap_or(Value::Null))
                    .collect(),
            )
        };
        let mut record = ShadowRecord {
            correlation_id: j.correlation_id,
            rollout: rollout.name.clone(),
            variant: rollout.variant_name(j.variant).to_string(),
            shadow_cluster: spec.cluster.clone(),
            agree: verdict.agrees(),
            verdict,
            primary_status: p.status,
            shadow_status: s.status,
            primary_latency_ms: p.latency_ms,
            shadow_latency_ms: s.latency_ms,
            primary_prediction: preds(p),
            shadow_prediction: preds(s),
            unix_ms: now,
            proxy: None,
        };
        let (size, cut) = record.fit(MAX_RECORD_BYTES);
        if cut {
            m.bump(m.records_truncated);
        }
        self.records_bytes = self.records_bytes.saturating_add(size);
        self.records.push((record, size));
    }

    /// Expires joins past their age; each is counted on its rollout.
    pub fn expire(&mut self, now: u64) {
        self.joins.retain(|_, j| {
            if j.expires_ms > now {
                return true;
            }
            if let Some(sm) = j.active.metrics.shadow(j.rollout) {
                j.active.metrics.bump(sm.expired);
            }
            false
        });
    }

    /// Takes up to a batch of shadow records to send: at most `RECORD_BATCH`, their
    /// post under `MAX_POST_BYTES`.
    pub fn take_records(&mut self) -> Vec<ShadowRecord> {
        let n = batch_len(self.records.iter().map(|(_, size)| *size));
        self.records
            .drain(..n)
            .map(|(r, size)| {
                self.records_bytes = self.records_bytes.saturating_sub(size);
                r
            })
            .collect()
    }

    /// Takes up to a batch of assignments to send.
    pub fn take_assignments(&mut self) -> Vec<Assignment> {
        let n = self.assignments.len().min(RECORD_BATCH);
        self.assignments.drain(..n).collect()
    }

    /// Whether a full batch of either kind is waiting.
    pub fn batch_ready(&self) -> bool {
        self.records.len() >= RECORD_BATCH
            || self.records_bytes >= MAX_POST_BYTES
            || self.assignments.len() >= RECORD_BATCH
    }

    /// Buffers an assignment record; false when the buffer is full.
    pub fn assignment(&mut self, record: Assignment) -> bool {
        if self.assignments.len() >= MAX_RECORDS {
            return false;
        }
        self.assignments.push(record);
        true
    }

    pub fn joins(&self) -> usize {
        self.joins.len()
    }
}
