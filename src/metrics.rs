//! The filter's metrics: every stat is defined here, by the names in
//! `rollout_core::stats`, once per plan (in the root context, off the request path).
//!
//! Counters are accumulated in the worker's memory and added to Envoy's counters on
//! the root context's tick (every second), so the request path makes no host call
//! for them. Histograms are recorded as they happen.

use std::cell::Cell;

use rollout_core::answer::{Health, Verdict};
use rollout_core::control::{PollError, Rejection};
use rollout_core::decide::Reason;
use rollout_core::stats::{self, RecordDrop, ShadowError, ShadowSkip};
use rollout_core::Plan;

use crate::host::{Host, HostResult, MetricKind};

/// Index of a counter in `Metrics::counters`.
pub type Slot = usize;

struct Counter {
    id: u32,
    pending: Cell<u64>,
}

pub struct VariantMetrics {
    pub requests: Slot,
    pub classes: [Slot; stats::CLASSES.len()],
    pub latency_ms: u32,
    /// With an `output` section: answers checked and invalid ones by kind.
    pub output: Option<HealthMetrics>,
    /// With `output.distribution`: predictions per bin (empty without).
    pub bins: Vec<Slot>,
}

pub struct HealthMetrics {
    pub checked: Slot,
    /// Indexed like `Health::INVALID`.
    pub invalid: [Slot; Health::INVALID.len()],
}

pub struct RolloutMetrics {
    pub variants: Vec<VariantMetrics>,
    pub reasons: [Slot; Reason::ALL.len()],
    pub shadow: Option<ShadowMetrics>,
    pub trip: Option<TripMetrics>,
}

/// The local trip: how often it fired, requests it sent to stable, and a gauge
/// that is 1 while this proxy is tripped.
pub struct TripMetrics {
    pub trips: Slot,
    pub rerouted: Slot,
    pub tripped: u32,
}

/// Per-rollout shadow stats; arrays are indexed like the reasons' `ALL`.
pub struct ShadowMetrics {
    pub sent: Slot,
    pub skipped: [Slot; ShadowSkip::ALL.len()],
    pub errors: [Slot; ShadowError::ALL.len()],
    pub timeouts: Slot,
    pub compared: Slot,
    pub agree: Slot,
    /// Indexed like `Verdict::DISAGREEMENTS`.
    pub disagree: [Slot; Verdict::DISAGREEMENTS.len()],
    pub expired: Slot,
    pub latency_ms: u32,
    pub primary_latency_ms: u32,
    pub health: HealthMetrics,
    /// With `output.distribution`: the shadow's predictions per bin (empty without).
    pub bins: Vec<Slot>,
}

/// One counter per reason, in the order of `all` (a reason enum's `ALL`).
fn per_reason<R: Copy, const N: usize>(
    all: [R; N],
    counter: &mut impl FnMut(&str) -> HostResult<Slot>,
    name: impl Fn(R) -> String,
) -> HostResult<[Slot; N]> {
    let mut slots = [0; N];
    for (slot, r) in slots.iter_mut().zip(all) {
        *slot = counter(&name(r))?;
    }
    Ok(slots)
}

impl ShadowMetrics {
    pub fn skip(&self, m: &Metrics, reason: ShadowSkip) {
        if let Some(s) = self.skipped.get(reason.index()) {
            m.bump(*s);
        }
    }
    pub fn error(&self, m: &Metrics, reason: ShadowError) {
        if let Some(s) = self.errors.get(reason.index()) {
            m.bump(*s);
        }
    }
    /// Counts a disagreement by its verdict (an agreement is not one: nothing).
    pub fn disagree(&self, m: &Metrics, verdict: Verdict) {
        let i = Verdict::DISAGREEMENTS.iter().position(|v| *v == verdict);
        if let Some(s) = i.and_then(|i| self.disagree.get(i)) {
            m.bump(*s);
        }
    }
}

/// Counts one prediction into `bin` of `bins` (out of range: nothing); no host call.
pub fn count_bin(m: &Metrics, bins: &[Slot], bin: usize) {
    if let Some(slot) = bins.get(bin) {
        m.bump(*slot);
    }
}

impl HealthMetrics {
    pub fn count(&self, m: &Metrics, h: Health) {
        m.bump(self.checked);
        if let Some(slot) = h.invalid_index().and_then(|i| self.invalid.get(i)) {
            m.bump(*slot);
        }
    }
}

pub struct Metrics {
    counters: Vec<Counter>,
    pub rollouts: Vec<RolloutMetrics>,
    pub unmatched: Slot,
    pub override_rejected: Slot,
    pub correlation_generated: Slot,
    pub host_errors: Slot,
    pub random_fallback: Slot,
    plan_version: u32,
    pub control: ControlMetrics,
    pub records_sent: Slot,
    /// Records whose predictions were cut to `wire::MAX_RECORD_BYTES`.
    pub records_truncated: Slot,
    /// Indexed like `RecordDrop::ALL`.
    pub records_dropped: [Slot; RecordDrop::ALL.len()],
    pub assignments_sent: Slot,
    pub assignments_dropped: [Slot; RecordDrop::ALL.len()],
}

/// Stats of the plan poller (defined whether or not a sidecar is configured).
pub struct ControlMetrics {
    pub polls: Slot,
    pub accepted: Slot,
    /// Indexed like `PollError::ALL`.
    pub poll_errors: [Slot; PollError::ALL.len()],
    /// Indexed like `Rejection::ALL`.
    pub rejected: [Slot; Rejection::ALL.len()],
    staleness_seconds: u32,
}

impl Metrics {
    /// Defines every stat the plan needs.
    pub fn define(host: &impl Host, plan: &Plan) -> HostResult<Metrics> {
        let mut counters = Vec::new();
        let mut counter = |name: &str| -> HostResult<Slot> {
            let id = host.define_metric(MetricKind::Counter, name)?;
            counters.push(Counter {
                id,
                pending: Cell::new(0),
            });
            Ok(counters.len() - 1)
        };
        let unmatched = counter(stats::UNMATCHED)?;
        let override_rejected = counter(stats::OVERRIDE_REJECTED)?;
        let correlation_generated = counter(stats::CORRELATION_GENERATED)?;
        let host_errors = counter(stats::HOST_ERRORS)?;
        let random_fallback = counter(stats::RANDOM_FALLBACK)?;
        let mut rollouts = Vec::with_capacity(plan.rollouts.len());
        for r in &plan.rollouts {
            let bins = r
                .output
                .as_ref()
                .and_then(|o| o.distribution.as_ref())
                .map_or(0, |d| d.bins());
            let mut variants = Vec::with_capacity(r.variants.len());
            for v in &r.variants {
                let requests = counter(&stats::variant_requests(&r.name, &v.name))?;
                let classes = per_reason(stats::CLASSES, &mut counter, |class| {
                    stats::variant_responses(&r.name, &v.name, class)
                })?;
                let latency_ms = host.define_metric(
                    MetricKind::Histogram,
                    &stats::variant_latency(&r.name, &v.name),
                )?;
                let output = match r.output {
                    None => None,
                    Some(_) => {
                        let checked = counter(&stats::variant_metric(
                            &r.name,
                            &v.name,
                            "outputs_checked_total",
                        ))?;
                        let invalid = per_reason(Health::INVALID, &mut counter, |h| {
                            stats::variant_reason_metric(
                                &r.name,
                                &v.name,
                                h.as_str(),
                                "invalid_outputs_total",
                            )
                        })?;
                        Some(HealthMetrics { checked, invalid })
                    }
                };
                let bins = (0..bins)
                    .map(|i| counter(&stats::variant_bin(&r.name, &v.name, i)))
                    .collect::<HostResult<Vec<Slot>>>()?;
                variants.push(VariantMetrics {
                    requests,
                    classes,
                    latency_ms,
                    output,
                    bins,
                });
            }
            let reasons = per_reason(Reason::ALL, &mut counter, |reason| {
                stats::rollout_assignments(&r.name, reason.as_str())
            })?;
            let shadow = match r.shadow {
                None => None,
                Some(_) => {
                    let n = &r.name;
                    let skipped = per_reason(ShadowSkip::ALL, &mut counter, |why| {
                        stats::rollout_reason_metric(n, why.as_str(), "shadow_skipped_total")
                    })?;
                    let errors = per_reason(ShadowError::ALL, &mut counter, |why| {
                        stats::rollout_reason_metric(n, why.as_str(), "shadow_errors_total")
                    })?;
                    let disagree = per_reason(Verdict::DISAGREEMENTS, &mut counter, |why| {
                        stats::rollout_reason_metric(n, why.as_str(), "shadow_disagree_total")
                    })?;
                    let invalid = per_reason(Health::INVALID, &mut counter, |h| {
                        stats::rollout_reason_metric(n, h.as_str(), "shadow_invalid_outputs_total")
                    })?;
                    Some(ShadowMetrics {
                        sent: counter(&stats::rollout_metric(n, "shadow_sent_total"))?,
                        skipped,
                        errors,
                        timeouts: counter(&stats::rollout_metric(n, "shadow_timeouts_total"))?,
                        compared: counter(&stats::rollout_metric(n, "shadow_compared_total"))?,
                        agree: counter(&stats::rollout_metric(n, "shadow_agree_total"))?,
                        disagree,
                        expired: counter(&stats::rollout_metric(n, "shadow_expired_total"))?,
                        latency_ms: host.define_metric(
                            MetricKind::Histogram,
                            &stats::rollout_metric(n, "shadow_latency_ms"),
                        )?,
                        primary_latency_ms: host.define_metric(
                            MetricKind::Histogram,
                            &stats::rollout_metric(n, "shadow_primary_latency_ms"),
                        )?,
                        health: HealthMetrics {
                            checked: counter(&stats::rollout_metric(
                                n,
                                "shadow_outputs_checked_total",
                            ))?,
                            invalid,
                        },
                        bins: (0..bins)
                            .map(|i| counter(&stats::shadow_bin(n, i)))
                            .collect::<HostResult<Vec<Slot>>>()?,
                    })
                }
            };
            let trip = match r.trip {
                None => None,
                Some(_) => Some(TripMetrics {
                    trips: counter(&stats::rollout_metric(&r.name, "trips_total"))?,
                    rerouted: counter(&stats::rollout_metric(&r.name, "trip_rerouted_total"))?,
                    tripped: host.define_metric(
                        MetricKind::Gauge,
                        &stats::rollout_metric(&r.name, "tripped"),
                    )?,
                }),
            };
            rollouts.push(RolloutMetrics {
                variants,
                reasons,
                shadow,
                trip,
            });
        }
        let plan_version = host.define_metric(MetricKind::Gauge, stats::PLAN_VERSION)?;
        let polls = counter(stats::CONTROL_POLLS)?;
        let accepted = counter(stats::CONTROL_ACCEPTED)?;
        let poll_errors = per_reason(PollError::ALL, &mut counter, |e| {
            stats::control_poll_errors(e.as_str())
        })?;
        let rejected = per_reason(Rejection::ALL, &mut counter, |r| {
            stats::control_rejected(r.as_str())
        })?;
        let records_sent = counter(stats::SHADOW_RECORDS_SENT)?;
        let records_truncated = counter(stats::SHADOW_RECORDS_TRUNCATED)?;
        let records_dropped = per_reason(RecordDrop::ALL, &mut counter, |why| {
            stats::records_dropped(why.as_str())
        })?;
        let assignments_sent = counter(stats::ASSIGNMENT_RECORDS_SENT)?;
        let assignments_dropped = per_reason(RecordDrop::ALL, &mut counter, |why| {
            stats::assignment_records_dropped(why.as_str())
        })?;
        let control = ControlMetrics {
            polls,
            accepted,
            poll_errors,
            rejected,
            staleness_seconds: host.define_metric(MetricKind::Gauge, stats::CONTROL_STALENESS)?,
        };
        Ok(Metrics {
            counters,
            rollouts,
            unmatched,
            override_rejected,
            correlation_generated,
            host_errors,
            random_fallback,
            plan_version,
            control,
            records_sent,
            records_truncated,
            records_dropped,
            assignments_sent,
            assignments_dropped,
        })
    }

    pub fn variant(&self, rollout: usize, variant: usize) -> Option<&VariantMetrics> {
        self.rollouts.get(rollout)?.variants.get(variant)
    }

    /// Counts one event; no host call.
    pub fn bump(&self, slot: Slot) {
        if let Some(c) = self.counters.get(slot) {
            c.pending.set(c.pending.get().saturating_add(1));
        }
    }

    pub fn record(&self, host: &impl Host, histogram: u32, value: u64) {
        if host.record_metric(histogram, value).is_err() {
            self.bump(self.host_errors);
        }
    }

    pub fn set_plan_version(&self, host: &impl Host, version: u64) {
        if host.record_metric(self.plan_version, version).is_err() {
            self.bump(self.host_errors);
        }
    }

    pub fn set_staleness(&self, host: &impl Host, seconds: u64) {
        if host
            .record_metric(self.control.staleness_seconds, seconds)
            .is_err()
        {
            self.bump(self.host_errors);
        }
    }

    pub fn shadow(&self, rollout: usize) -> Option<&ShadowMetrics> {
        self.rollouts.get(rollout)?.shadow.as_ref()
    }

    pub fn records_dropped(&self, reason: RecordDrop, n: u64) {
        if let Some(slot) = self.records_dropped.get(reason.index()) {
            self.add(*slot, n);
        }
    }

    pub fn assignments_dropped(&self, reason: RecordDrop, n: u64) {
        if let Some(slot) = self.assignments_dropped.get(reason.index()) {
            self.add(*slot, n);
        }
    }

    pub fn trip(&self, rollout: usize) -> Option<&TripMetrics> {
        self.rollouts.get(rollout)?.trip.as_ref()
    }

    pub fn set_gauge(&self, host: &impl Host, id: u32, value: u64) {
        if host.record_metric(id, value).is_err() {
            self.bump(self.host_errors);
        }
    }

    /// Counts `n` events; no host call.
    pub fn add(&self, slot: Slot, n: u64) {
        if let Some(c) = self.counters.get(slot) {
            c.pending.set(c.pending.get().saturating_add(n));
        }
    }

    pub fn poll_error(&self, e: PollError) {
        let i = PollError::ALL.iter().position(|x| *x == e).unwrap_or(0);
        if let Some(slot) = self.control.poll_errors.get(i) {
            self.bump(*slot);
        }
    }

    pub fn rejected(&self, r: Rejection) {
        let i = Rejection::ALL.iter().position(|x| *x == r).unwrap_or(0);
        if let Some(slot) = self.control.rejected.get(i) {
            self.bump(*slot);
        }
    }

    /// Adds the pending counts to Envoy's counters. A failed add keeps its count
    /// for the next flush.
    pub fn flush(&self, host: &impl Host) {
        for c in &self.counters {
            let n = c.pending.get();
            if n == 0 {
                continue;
            }
            let delta = i64::try_from(n).unwrap_or(i64::MAX);
            if host.increment_metric(c.id, delta).is_ok() {
                c.pending.set(0);
            }
        }
    }
}
