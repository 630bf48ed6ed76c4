//! The filter's per-rollout metrics in one tick, as the windows count them: per
//! variant (requests, responses by class, latency histogram, outputs checked,
//! invalid outputs, prediction bins), the rollout's shadow comparisons and the
//! shadow's prediction bins, the stats of `stat` checks, and the candidate traffic a
//! step's `min_requests` counts.
//!
//! Any source that yields these series (`model_rollout_predictions_total{rollout,
//! variant, bin}`, `model_rollout_shadow_predictions_total{rollout, bin}` for the
//! bins) fills the windows; the Envoy admin reader does.

use std::collections::HashMap;

use rollout_core::analysis::{ShadowWindow, StatKind, VariantWindow, WindowData};
use rollout_core::stats::CLASSES;

use crate::engine::source::series::{Increment, Selector, SeriesKey, TickData};

// The filter's metric names as `SeriesKey` metrics (checked against
// `rollout_core::stats` in the tests).
const M_REQUESTS: &str = "model_rollout_requests_total";
const M_RESPONSES: &str = "model_rollout_responses_total";
const M_LATENCY: &str = "model_rollout_latency_ms";
const M_CHECKED: &str = "model_rollout_outputs_checked_total";
const M_INVALID: &str = "model_rollout_invalid_outputs_total";
const M_COMPARED: &str = "model_rollout_shadow_compared_total";
const M_AGREE: &str = "model_rollout_shadow_agree_total";
const M_DISAGREE: &str = "model_rollout_shadow_disagree_total";
const M_BINS: &str = "model_rollout_predictions_total";
const M_SHADOW_BINS: &str = "model_rollout_shadow_predictions_total";

/// A stat of a `stat` check in one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatTick {
    pub kind: StatKind,
    /// Counter increase (0 for a gauge).
    pub increase: f64,
    /// Gauge value.
    pub value: Option<f64>,
}

/// One rollout's part of a tick.
#[derive(Debug, Default)]
pub struct RolloutPart {
    /// Per variant, by name.
    pub variants: HashMap<String, VariantWindow>,
    pub shadow: ShadowWindow,
    /// The prediction bins (`WindowData::bins` and `shadow_bins`; nothing else set).
    pub bins: WindowData,
}

/// The bin number of a series (`bin` label).
fn bin_of(k: &SeriesKey) -> Option<usize> {
    k.label("bin")?.parse().ok()
}

/// One rollout's part of a tick: per variant (by name), shadow, prediction bins.
pub fn rollout_part(series: &[(&SeriesKey, &Increment)]) -> RolloutPart {
    let mut variants: HashMap<String, VariantWindow> = HashMap::new();
    let mut shadow = ShadowWindow::default();
    let mut bins = WindowData::default();
    for (k, inc) in series {
        let counter = match inc {
            Increment::Counter(c) => Some(*c),
            _ => None,
        };
        match (k.metric.as_str(), k.label("variant")) {
            (M_SHADOW_BINS, None) => {
                if let (Some(b), Some(c)) = (bin_of(k), counter) {
                    bins.add_bin(None, b, c);
                }
            }
            (M_BINS, Some(v)) => {
                if let (Some(b), Some(c)) = (bin_of(k), counter) {
                    bins.add_bin(Some(v), b, c);
                }
            }
            (M_COMPARED, None) => shadow.compared += counter.unwrap_or(0.0),
            (M_AGREE, None) => shadow.agree += counter.unwrap_or(0.0),
            (M_DISAGREE, None) => shadow.disagree += counter.unwrap_or(0.0),
            (m, Some(v)) => {
                let vw = variants.entry(v.to_string()).or_default();
                match (m, inc) {
                    (M_REQUESTS, _) => vw.requests += counter.unwrap_or(0.0),
                    (M_RESPONSES, _) => {
                        let class = k.label("class").unwrap_or("other");
                        let i = CLASSES.iter().position(|c| *c == class).unwrap_or(4);
                        if let Some(slot) = vw.responses.get_mut(i) {
                            *slot += counter.unwrap_or(0.0);
                        }
                    }
                    (M_CHECKED, _) => vw.outputs_checked += counter.unwrap_or(0.0),
                    (M_INVALID, _) => vw.invalid_outputs += counter.unwrap_or(0.0),
                    (M_LATENCY, Increment::Histogram(h)) => vw.latency.merge(h),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    RolloutPart {
        variants,
        shadow,
        bins,
    }
}

/// The sum of a selector's series in a tick; `None` when no series matches.
pub fn stat_tick(tick: &TickData, sel: &Selector) -> Option<StatTick> {
    let mut out: Option<StatTick> = None;
    for (k, inc) in &tick.series {
        if !sel.matches(k) {
            continue;
        }
        let t = out.get_or_insert(StatTick {
            kind: StatKind::Counter,
            increase: 0.0,
            value: None,
        });
        match inc {
            Increment::Counter(c) => t.increase += c,
            Increment::Gauge(g) => {
                t.kind = StatKind::Gauge;
                t.value = Some(t.value.unwrap_or(0.0) + g);
            }
            Increment::Histogram(_) => {}
        }
    }
    out
}

/// The candidate's part of one tick: requests, or shadow comparisons for a
/// shadow-only step (what a step's `min_requests` counts).
pub fn tick_traffic(tick: &TickData, rollout: &str, candidate: &str, shadow_only: bool) -> f64 {
    let r = ("rollout".to_string(), rollout.to_string());
    if shadow_only {
        tick.counter(&SeriesKey::new(M_COMPARED, vec![r]))
    } else {
        tick.counter(&SeriesKey::new(
            M_REQUESTS,
            vec![r, ("variant".to_string(), candidate.to_string())],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollout_core::stats;

    fn key(name: &str) -> SeriesKey {
        SeriesKey::from_envoy_name(&format!("wasmcustom.{name}"))
    }

    #[test]
    fn metric_names_match_the_filter() {
        let cases = [
            (stats::variant_requests("r", "v"), M_REQUESTS),
            (stats::variant_responses("r", "v", "5xx"), M_RESPONSES),
            (stats::variant_latency("r", "v"), M_LATENCY),
            (
                stats::variant_metric("r", "v", "outputs_checked_total"),
                M_CHECKED,
            ),
            (
                stats::variant_reason_metric("r", "v", "nan", "invalid_outputs_total"),
                M_INVALID,
            ),
            (
                stats::rollout_metric("r", "shadow_compared_total"),
                M_COMPARED,
            ),
            (stats::rollout_metric("r", "shadow_agree_total"), M_AGREE),
            (
                stats::rollout_reason_metric("r", "prediction", "shadow_disagree_total"),
                M_DISAGREE,
            ),
            (stats::variant_bin("r", "v", 3), M_BINS),
            (stats::shadow_bin("r", 3), M_SHADOW_BINS),
        ];
        for (name, metric) in cases {
            assert_eq!(key(&name).metric, metric, "{name}");
        }
    }

    #[test]
    fn bins_are_read_per_variant_and_for_the_shadow() {
        let series = [
            (
                key(&stats::variant_bin("r", "canary", 2)),
                Increment::Counter(5.0),
            ),
            (
                key(&stats::variant_bin("r", "canary", 0)),
                Increment::Counter(1.0),
            ),
            (
                key(&stats::variant_bin("r", "stable", 1)),
                Increment::Counter(7.0),
            ),
            (key(&stats::shadow_bin("r", 4)), Increment::Counter(3.0)),
        ];
        let refs: Vec<(&SeriesKey, &Increment)> = series.iter().map(|(k, i)| (k, i)).collect();
        let part = rollout_part(&refs);
        assert_eq!(part.bins.bins["canary"], vec![1.0, 0.0, 5.0]);
        assert_eq!(part.bins.bins["stable"], vec![0.0, 7.0]);
        assert_eq!(part.bins.shadow_bins, vec![0.0, 0.0, 0.0, 0.0, 3.0]);
    }
}
