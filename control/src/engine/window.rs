//! Per-rollout time series of what the Envoys counted, and windows over them.
//!
//! Every analysis tick adds one [`Sample`] per rollout of the plan in force: the
//! increases since the previous tick, summed over every Envoy (see `source`), for
//! each variant (requests, responses by class, latency histogram bins, outputs
//! checked, invalid outputs, prediction bins), the rollout's shadow comparisons
//! (compared, agree, disagree over every reason) and the shadow's prediction bins, and
//! each stat named by a `stat` check (a counter's increase or a gauge's value).
//!
//! Storing increases (not cumulative readings) makes a window a plain sum: the
//! window `(from, to]` adds up the samples that ended in it, rates are ratios of
//! those sums (5xx / responses, invalid / checked, disagree / compared), a latency
//! percentile is taken from the summed histogram bins (see
//! `rollout_core::analysis::Histogram::percentile`), and a counter's rate is its
//! increase divided by the seconds the samples cover.
//!
//! Bounds: each rollout keeps at most one hour of samples and at most
//! [`MAX_SAMPLES`] of them; ticks closer together than `RETENTION_MS / MAX_SAMPLES`
//! (500 ms) are merged into one sample. Histogram increases are sparse (only bins
//! that moved). Series of rollouts that left the plan are dropped. Everything is in
//! memory: a restarted sidecar starts with empty series.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use rollout_core::analysis::{ShadowWindow, StatWindow, VariantWindow, WindowData};
use rollout_core::PlanSpec;

use crate::api::analysis::{SeriesPoint, VariantSummary};
use crate::engine::rollout_metrics::{rollout_part, stat_tick, StatTick};
use crate::engine::source::series::{Increment, SeriesKey, TickData};
use crate::engine::stat_selectors::stat_keys;

/// How long samples are kept.
pub const RETENTION_MS: u64 = 3_600_000;
/// Most samples kept per rollout.
pub const MAX_SAMPLES: usize = 7_200;
/// Most variant or stat names remembered per rollout (beyond: the series restarts).
const MAX_NAMES: usize = 64;

/// One tick (or several merged) of one rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The previous tick: the increases happened in `(start_ms, end_ms]`.
    pub start_ms: u64,
    pub end_ms: u64,
    /// The plan version in force when the sample was taken (samples of different
    /// versions never merge, so a window can start exactly at a step change).
    pub plan_version: u64,
    /// The first sample of its plan version: it straddles the plan change, so later
    /// ticks never merge into it (a step's windows can leave it out).
    pub sealed: bool,
    /// Envoys that answered (the least over merged ticks).
    pub envoys_ok: usize,
    /// Indexed like the rollout's interned variant names.
    pub variants: Vec<VariantWindow>,
    pub shadow: ShadowWindow,
    /// Indexed like the rollout's interned stat names.
    pub stats: Vec<Option<StatTick>>,
    /// Prediction bins, indexed like the variants (empty without `output.distribution`).
    pub bins: Vec<Vec<f64>>,
    pub shadow_bins: Vec<f64>,
}

impl Sample {
    fn merge(&mut self, o: Sample) {
        self.end_ms = o.end_ms;
        self.envoys_ok = self.envoys_ok.min(o.envoys_ok);
        if self.variants.len() < o.variants.len() {
            self.variants
                .resize_with(o.variants.len(), VariantWindow::default);
        }
        for (a, b) in self.variants.iter_mut().zip(o.variants.iter()) {
            a.add(b);
        }
        self.shadow.add(&o.shadow);
        add_counts(&mut self.shadow_bins, &o.shadow_bins);
        if self.bins.len() < o.bins.len() {
            self.bins.resize_with(o.bins.len(), Vec::new);
        }
        for (a, b) in self.bins.iter_mut().zip(o.bins.iter()) {
            add_counts(a, b);
        }
        if self.stats.len() < o.stats.len() {
            self.stats.resize(o.stats.len(), None);
        }
        for (a, b) in self.stats.iter_mut().zip(o.stats) {
            *a = match (*a, b) {
                (Some(x), Some(y)) => Some(StatTick {
                    kind: y.kind,
                    increase: x.increase + y.increase,
                    value: y.value.or(x.value),
                }),
                (x, None) => x,
                (None, y) => y,
            };
        }
    }
}

/// Adds bin counts (`b` may be longer than `a`).
fn add_counts(a: &mut Vec<f64>, b: &[f64]) {
    if a.len() < b.len() {
        a.resize(b.len(), 0.0);
    }
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

#[derive(Debug, Default)]
struct RolloutSeries {
    variants: Vec<String>,
    stats: Vec<String>,
    samples: VecDeque<Sample>,
}

impl RolloutSeries {
    fn intern(names: &mut Vec<String>, name: &str) -> Option<usize> {
        if let Some(i) = names.iter().position(|n| n == name) {
            return Some(i);
        }
        if names.len() >= MAX_NAMES {
            return None;
        }
        names.push(name.to_string());
        Some(names.len() - 1)
    }
}

/// Every variant's numbers of a window.
pub fn variant_summaries(w: &WindowData) -> BTreeMap<String, VariantSummary> {
    w.variants
        .iter()
        .map(|(k, v)| (k.clone(), variant_summary(v)))
        .collect()
}

/// A variant's numbers as shown in decisions and the analysis endpoint.
pub fn variant_summary(v: &VariantWindow) -> VariantSummary {
    let ratio = |a: f64, b: f64| (b > 0.0).then(|| round6(a / b));
    VariantSummary {
        requests: v.requests,
        responses: v.responses_total(),
        errors_5xx: v.errors_5xx(),
        error_rate: ratio(v.errors_5xx(), v.responses_total()),
        latency_p50_ms: v.latency.percentile(50.0).map(round6),
        latency_p99_ms: v.latency.percentile(99.0).map(round6),
        outputs_checked: v.outputs_checked,
        invalid_outputs: v.invalid_outputs,
        invalid_rate: ratio(v.invalid_outputs, v.outputs_checked),
    }
}

fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// The time series of every rollout of the plan.
#[derive(Debug)]
pub struct SeriesStore {
    rollouts: HashMap<String, RolloutSeries>,
    retention_ms: u64,
    resolution_ms: u64,
    max_samples: usize,
}

impl Default for SeriesStore {
    fn default() -> Self {
        SeriesStore::new(RETENTION_MS, MAX_SAMPLES)
    }
}

impl SeriesStore {
    /// Keeps `retention_ms` of samples, at most `max_samples` per rollout (ticks
    /// closer than `retention_ms / max_samples` merge).
    pub fn new(retention_ms: u64, max_samples: usize) -> SeriesStore {
        let max_samples = max_samples.max(2);
        SeriesStore {
            rollouts: HashMap::new(),
            retention_ms,
            resolution_ms: retention_ms / max_samples as u64,
            max_samples,
        }
    }

    /// Adds one tick (the increases of `(start_ms, end_ms]`) to every rollout of `plan`.
    pub fn ingest(&mut self, start_ms: u64, end_ms: u64, tick: &TickData, plan: &PlanSpec) {
        let mut by_rollout: HashMap<&str, Vec<(&SeriesKey, &Increment)>> = HashMap::new();
        for (k, inc) in &tick.series {
            if let Some(r) = k.label("rollout") {
                if k.metric.starts_with("model_rollout_") {
                    by_rollout.entry(r).or_default().push((k, inc));
                }
            }
        }
        let names: HashSet<&str> = plan.rollouts.iter().map(|r| r.name.as_str()).collect();
        self.rollouts.retain(|k, _| names.contains(k.as_str()));
        for r in &plan.rollouts {
            let part = by_rollout
                .get(r.name.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let part = rollout_part(part);
            let (mut variants, shadow, mut bins) = (part.variants, part.shadow, part.bins);
            let stats: Vec<(String, Option<StatTick>)> = stat_keys(r)
                .into_iter()
                .map(|(key, sel)| {
                    let t = stat_tick(tick, &sel);
                    (key, t)
                })
                .collect();
            let series = self.rollouts.entry(r.name.clone()).or_default();
            let mut sample = Sample {
                start_ms,
                end_ms,
                plan_version: plan.version,
                sealed: series
                    .samples
                    .back()
                    .is_none_or(|l| l.plan_version != plan.version),
                envoys_ok: tick.envoys_ok,
                variants: Vec::new(),
                shadow,
                stats: Vec::new(),
                bins: Vec::new(),
                shadow_bins: std::mem::take(&mut bins.shadow_bins),
            };
            let mut overflow = false;
            for v in &r.variants {
                let vw = variants.remove(&v.name).unwrap_or_default();
                match RolloutSeries::intern(&mut series.variants, &v.name) {
                    Some(i) => {
                        if sample.variants.len() <= i {
                            sample.variants.resize_with(i + 1, VariantWindow::default);
                        }
                        if let Some(slot) = sample.variants.get_mut(i) {
                            *slot = vw;
                        }
                        if let Some(b) = bins.bins.remove(&v.name) {
                            if sample.bins.len() <= i {
                                sample.bins.resize_with(i + 1, Vec::new);
                            }
                            if let Some(slot) = sample.bins.get_mut(i) {
                                *slot = b;
                            }
                        }
                    }
                    None => overflow = true,
                }
            }
            for (key, t) in stats {
                match RolloutSeries::intern(&mut series.stats, &key) {
                    Some(i) => {
                        if sample.stats.len() <= i {
                            sample.stats.resize(i + 1, None);
                        }
                        if let Some(slot) = sample.stats.get_mut(i) {
                            *slot = t;
                        }
                    }
                    None => overflow = true,
                }
            }
            if overflow {
                // Names churned past the bound: start this rollout's series afresh.
                *series = RolloutSeries::default();
                continue;
            }
            match series.samples.back_mut() {
                Some(last)
                    if last.end_ms.saturating_sub(last.start_ms) < self.resolution_ms
                        && last.end_ms == start_ms
                        && last.plan_version == plan.version
                        && !last.sealed =>
                {
                    last.merge(sample)
                }
                _ => series.samples.push_back(sample),
            }
            let oldest = end_ms.saturating_sub(self.retention_ms);
            while series.samples.len() > self.max_samples
                || series.samples.front().is_some_and(|s| s.end_ms <= oldest)
            {
                series.samples.pop_front();
            }
        }
    }

    fn in_range(
        &self,
        rollout: &str,
        from_ms: u64,
        to_ms: u64,
        after_ms: Option<u64>,
    ) -> Option<(&RolloutSeries, Vec<&Sample>)> {
        let s = self.rollouts.get(rollout)?;
        let samples: Vec<&Sample> = s
            .samples
            .iter()
            .filter(|x| {
                x.end_ms > from_ms && x.end_ms <= to_ms && after_ms.is_none_or(|a| x.start_ms > a)
            })
            .collect();
        Some((s, samples))
    }

    /// The samples that ended in `(from_ms, to_ms]`, added up.
    pub fn window(&self, rollout: &str, from_ms: u64, to_ms: u64) -> WindowData {
        let Some((series, samples)) = self.in_range(rollout, from_ms, to_ms, None) else {
            return WindowData::default();
        };
        sum_samples(series, &samples)
    }

    /// Like [`SeriesStore::window`], with only the samples that began strictly after
    /// `after_ms` (the start of the step being judged: the tick that straddles an
    /// engine's step change begins exactly at it and is left out).
    pub fn window_since(
        &self,
        rollout: &str,
        from_ms: u64,
        to_ms: u64,
        after_ms: u64,
    ) -> WindowData {
        let Some((series, samples)) = self.in_range(rollout, from_ms, to_ms, Some(after_ms)) else {
            return WindowData::default();
        };
        sum_samples(series, &samples)
    }

    /// Samples of `(from_ms, to_ms]` as at most `max_points` points (consecutive
    /// samples added up).
    pub fn points(
        &self,
        rollout: &str,
        from_ms: u64,
        to_ms: u64,
        max_points: usize,
    ) -> Vec<SeriesPoint> {
        let Some((series, samples)) = self.in_range(rollout, from_ms, to_ms, None) else {
            return Vec::new();
        };
        let per = samples.len().div_ceil(max_points.max(1)).max(1);
        samples
            .chunks(per)
            .map(|chunk| {
                let w = sum_samples(series, chunk);
                let first = chunk.first().map_or(0, |s| s.start_ms);
                let last = chunk.last().map_or(0, |s| s.end_ms);
                SeriesPoint {
                    t_ms: last,
                    span_ms: last.saturating_sub(first),
                    envoys_ok: chunk.iter().map(|s| s.envoys_ok).min().unwrap_or(0),
                    variants: variant_summaries(&w),
                    shadow: w.shadow,
                    stats: w
                        .stats
                        .iter()
                        .filter_map(|(k, s)| s.value(w.span_s).map(|v| (k.clone(), round6(v))))
                        .collect(),
                }
            })
            .collect()
    }

    /// Samples kept for a rollout.
    pub fn len(&self, rollout: &str) -> usize {
        self.rollouts.get(rollout).map_or(0, |s| s.samples.len())
    }

    pub fn is_empty(&self) -> bool {
        self.rollouts.values().all(|s| s.samples.is_empty())
    }
}

fn sum_samples(series: &RolloutSeries, samples: &[&Sample]) -> WindowData {
    let mut w = WindowData::default();
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        w.span_s = last.end_ms.saturating_sub(first.start_ms) as f64 / 1000.0;
    }
    for s in samples {
        for (name, v) in series.variants.iter().zip(s.variants.iter()) {
            w.variants.entry(name.clone()).or_default().add(v);
        }
        w.shadow.add(&s.shadow);
        for (name, b) in series.variants.iter().zip(s.bins.iter()) {
            for (i, c) in b.iter().enumerate() {
                w.add_bin(Some(name), i, *c);
            }
        }
        for (i, c) in s.shadow_bins.iter().enumerate() {
            w.add_bin(None, i, *c);
        }
        for (name, t) in series.stats.iter().zip(s.stats.iter()) {
            let e: &mut StatWindow = w.stats.entry(name.clone()).or_default();
            if let Some(t) = t {
                e.seen = true;
                e.kind = Some(t.kind);
                e.increase += t.increase;
                if t.value.is_some() {
                    e.last = t.value;
                }
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::rollout_metrics::tick_traffic;
    use rollout_core::analysis::Histogram;
    use rollout_core::stats;

    fn key(name: &str) -> SeriesKey {
        SeriesKey::from_envoy_name(&format!("wasmcustom.{name}"))
    }

    fn plan() -> PlanSpec {
        rollout_core::parse_plan(
            br#"{"version":1,"rollouts":[{"name":"fraud","salt":"s",
            "variants":[{"name":"stable","weight":90},{"name":"canary","weight":10}],
            "policy":{"steps":[{"weight":10}],"checks":[
              {"metric":"stat","stat":"cluster.model_{variant}.upstream_rq_retry","max_ratio":2}]}}]}"#,
        )
        .unwrap()
        .0
    }

    fn tick(canary_req: f64, canary_5xx: f64, latency: f64, retries: f64) -> TickData {
        let mut t = TickData {
            envoys_ok: 1,
            envoys: 1,
            ..TickData::default()
        };
        let c = |n: f64| Increment::Counter(n);
        t.series.insert(
            key(&stats::variant_requests("fraud", "canary")),
            c(canary_req),
        );
        t.series.insert(
            key(&stats::variant_responses("fraud", "canary", "2xx")),
            c(canary_req - canary_5xx),
        );
        t.series.insert(
            key(&stats::variant_responses("fraud", "canary", "5xx")),
            c(canary_5xx),
        );
        let mut h = Histogram::default();
        h.add(latency, latency + 1.0, canary_req);
        t.series.insert(
            key(&stats::variant_latency("fraud", "canary")),
            Increment::Histogram(h),
        );
        t.series.insert(
            key(&stats::rollout_reason_metric(
                "fraud",
                "status",
                "shadow_disagree_total",
            )),
            c(1.0),
        );
        t.series.insert(
            key(&stats::rollout_reason_metric(
                "fraud",
                "prediction",
                "shadow_disagree_total",
            )),
            c(2.0),
        );
        t.series.insert(
            SeriesKey::new("cluster.model_canary.upstream_rq_retry", vec![]),
            c(retries),
        );
        t.series.insert(
            key(&stats::variant_bin("fraud", "canary", 1)),
            c(canary_req),
        );
        t.series
            .insert(key(&stats::shadow_bin("fraud", 2)), c(canary_5xx));
        t
    }

    #[test]
    fn windows_add_up_samples() {
        let mut s = SeriesStore::new(60_000, 600);
        let p = plan();
        s.ingest(0, 1000, &tick(100.0, 10.0, 50.0, 4.0), &p);
        s.ingest(1000, 2000, &tick(100.0, 30.0, 300.0, 6.0), &p);
        s.ingest(2000, 3000, &tick(100.0, 0.0, 50.0, 0.0), &p);
        // the last two seconds
        let w = s.window("fraud", 1000, 3000);
        assert_eq!(w.span_s, 2.0);
        let c = w.variant("canary").unwrap();
        assert_eq!(c.requests, 200.0);
        assert_eq!(c.errors_5xx(), 30.0);
        assert_eq!(c.latency.count(), 200.0);
        assert!((c.latency.percentile(99.0).unwrap() - 300.98).abs() < 1e-9);
        assert_eq!(w.shadow.disagree, 6.0);
        let r = w
            .stats
            .get("cluster.model_canary.upstream_rq_retry")
            .unwrap();
        assert_eq!(r.increase, 6.0);
        assert_eq!(r.value(w.span_s), Some(3.0));
        // stable exists with zeros
        assert_eq!(w.variant("stable").unwrap().requests, 0.0);
        // prediction bins add up like every counter
        assert_eq!(w.bins["canary"], vec![0.0, 200.0]);
        assert_eq!(w.shadow_bins, vec![0.0, 0.0, 30.0]);
        assert!(!w.bins.contains_key("stable"));
        let pts = s.points("fraud", 0, 3000, 2);
        assert_eq!(pts.len(), 2);
        assert_eq!(pts[0].variants["canary"].requests, 200.0);
        assert_eq!(pts[0].span_ms, 2000);
        assert_eq!(
            tick_traffic(&tick(7.0, 0.0, 1.0, 0.0), "fraud", "canary", false),
            7.0
        );
    }

    #[test]
    fn a_plan_change_starts_a_sample_that_is_never_merged_into() {
        let mut s = SeriesStore::new(10_000, 10); // 1000 ms resolution
        let mut p = plan();
        s.ingest(0, 100, &tick(1.0, 0.0, 1.0, 0.0), &p);
        s.ingest(100, 200, &tick(1.0, 0.0, 1.0, 0.0), &p);
        assert_eq!(
            s.len("fraud"),
            2,
            "the first sample of a version stands alone"
        );
        s.ingest(200, 300, &tick(1.0, 0.0, 1.0, 0.0), &p);
        assert_eq!(s.len("fraud"), 2, "the next ones merge");
        // a step change committed at 300 (version 2)
        p.version = 2;
        s.ingest(300, 400, &tick(2.0, 0.0, 1.0, 0.0), &p);
        s.ingest(400, 500, &tick(4.0, 0.0, 1.0, 0.0), &p);
        s.ingest(500, 600, &tick(4.0, 0.0, 1.0, 0.0), &p);
        assert_eq!(s.len("fraud"), 4);
        // merged samples add their bins too
        assert_eq!(s.window("fraud", 0, 600).bins["canary"], vec![0.0, 13.0]);
        // the step's window leaves out the straddling tick (300, 400]
        let w = s.window_since("fraud", 0, 600, 300);
        assert_eq!(w.variant("canary").unwrap().requests, 8.0);
        assert_eq!(
            s.window("fraud", 0, 600)
                .variant("canary")
                .unwrap()
                .requests,
            13.0
        );
    }

    #[test]
    fn bounded_and_merged() {
        // resolution 1000 ms: ticks of 200 ms merge
        let mut s = SeriesStore::new(10_000, 10);
        let p = plan();
        let mut t = 0;
        for _ in 0..200 {
            s.ingest(t, t + 200, &tick(1.0, 0.0, 1.0, 0.0), &p);
            t += 200;
        }
        assert!(s.len("fraud") <= 10, "{}", s.len("fraud"));
        // samples: (0, 200] alone (first of its version), then 1 s each from 200 on,
        // the last one (39200, 40000] still growing: the 5 s window ends in 6 of them
        let w = s.window("fraud", t - 5000, t);
        assert_eq!(w.variant("canary").unwrap().requests, 29.0);
        assert_eq!(w.span_s, 5.8);
        // a rollout leaving the plan is dropped
        let empty = rollout_core::parse_plan(br#"{"version":2,"rollouts":[]}"#)
            .unwrap()
            .0;
        s.ingest(t, t + 200, &TickData::default(), &empty);
        assert!(s.is_empty());
    }
}
