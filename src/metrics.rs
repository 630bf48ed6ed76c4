//! The filter's metrics: every stat is defined here, by the names in
//! `rollout_core::stats`, once per plan (in the root context, off the request path).
//!
//! Counters are accumulated in the worker's memory and added to Envoy's counters on
//! the root context's tick (every second), so the request path makes no host call
//! for them. Histograms are recorded as they happen.

use std::cell::Cell;

use rollout_core::decide::Reason;
use rollout_core::stats;
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
    pub classes: [Slot; 5],
    pub latency_ms: u32,
}

pub struct RolloutMetrics {
    pub variants: Vec<VariantMetrics>,
    pub reasons: [Slot; 4],
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
            let mut variants = Vec::with_capacity(r.variants.len());
            for v in &r.variants {
                let requests = counter(&stats::variant_requests(&r.name, &v.name))?;
                let mut classes = [0; 5];
                for (slot, class) in classes.iter_mut().zip(stats::CLASSES) {
                    *slot = counter(&stats::variant_responses(&r.name, &v.name, class))?;
                }
                let latency_ms = host.define_metric(
                    MetricKind::Histogram,
                    &stats::variant_latency(&r.name, &v.name),
                )?;
                variants.push(VariantMetrics {
                    requests,
                    classes,
                    latency_ms,
                });
            }
            let mut reasons = [0; 4];
            for (slot, reason) in reasons.iter_mut().zip(Reason::ALL) {
                *slot = counter(&stats::rollout_assignments(&r.name, reason.as_str()))?;
            }
            rollouts.push(RolloutMetrics { variants, reasons });
        }
        let plan_version = host.define_metric(MetricKind::Gauge, stats::PLAN_VERSION)?;
        Ok(Metrics {
            counters,
            rollouts,
            unmatched,
            override_rejected,
            correlation_generated,
            host_errors,
            random_fallback,
            plan_version,
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
