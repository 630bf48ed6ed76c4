//! What one rollout's stats added up to over an analysis window: per variant
//! (requests, responses by class, checked and invalid outputs, latency), the shadow
//! comparisons, the stats named by `stat` checks, and the prediction bins of a
//! rollout with `output.distribution` (per variant and the shadow's). The engine
//! fills them from its metrics source; the checks read them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::histogram::Histogram;

/// Index of `5xx` in `stats::CLASSES`.
pub const CLASS_5XX: usize = 3;

/// One variant's stats over a window (increases, summed over every Envoy).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VariantWindow {
    pub requests: f64,
    /// Indexed like `stats::CLASSES`.
    pub responses: [f64; 5],
    pub outputs_checked: f64,
    pub invalid_outputs: f64,
    pub latency: Histogram,
}

impl VariantWindow {
    pub fn responses_total(&self) -> f64 {
        self.responses.iter().fold(0.0, |a, b| a + b)
    }

    pub fn errors_5xx(&self) -> f64 {
        self.responses.get(CLASS_5XX).copied().unwrap_or(0.0)
    }

    pub fn add(&mut self, o: &VariantWindow) {
        self.requests += o.requests;
        for (a, b) in self.responses.iter_mut().zip(o.responses.iter()) {
            *a += b;
        }
        self.outputs_checked += o.outputs_checked;
        self.invalid_outputs += o.invalid_outputs;
        self.latency.merge(&o.latency);
    }
}

/// The rollout's shadow comparisons over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowWindow {
    pub compared: f64,
    pub agree: f64,
    /// Every disagreement reason (status, prediction) added up.
    pub disagree: f64,
}

impl ShadowWindow {
    pub fn add(&mut self, o: &ShadowWindow) {
        self.compared += o.compared;
        self.agree += o.agree;
        self.disagree += o.disagree;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatKind {
    Counter,
    Gauge,
}

/// A stat named by a `stat` check, over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatWindow {
    pub kind: Option<StatKind>,
    /// Counter: the increase over the window.
    pub increase: f64,
    /// Gauge: the latest value in the window.
    pub last: Option<f64>,
    /// Whether any scrape in the window found the stat.
    pub seen: bool,
}

impl StatWindow {
    /// A counter's rate per second over `span_s`, or a gauge's latest value.
    pub fn value(&self, span_s: f64) -> Option<f64> {
        if !self.seen {
            return None;
        }
        match self.kind {
            Some(StatKind::Gauge) => self.last,
            _ if span_s > 0.0 => Some(self.increase / span_s),
            _ => None,
        }
    }
}

/// What one rollout's stats added up to over one analysis window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowData {
    /// Seconds the window's samples cover.
    pub span_s: f64,
    pub variants: BTreeMap<String, VariantWindow>,
    pub shadow: ShadowWindow,
    /// Keyed by the `stat` of a check with `{variant}` already replaced.
    pub stats: BTreeMap<String, StatWindow>,
    /// Prediction counts per bin (`model_rollout_predictions_total{bin}`), by
    /// variant; indexed by the bin number (`crate::distribution`).
    pub bins: BTreeMap<String, Vec<f64>>,
    /// The shadow's prediction counts per bin (`model_rollout_shadow_predictions_total`).
    pub shadow_bins: Vec<f64>,
}

impl WindowData {
    pub fn variant(&self, name: &str) -> Option<&VariantWindow> {
        self.variants.get(name)
    }

    /// Adds `count` predictions to `bin` of `variant` (or of the shadow, `None`).
    /// Bins beyond [`MAX_BIN_INDEX`] are ignored (a bounded vector per arm).
    pub fn add_bin(&mut self, variant: Option<&str>, bin: usize, count: f64) {
        if bin > MAX_BIN_INDEX || !(count.is_finite() && count > 0.0) {
            return;
        }
        let v = match variant {
            Some(name) => self.bins.entry(name.to_string()).or_default(),
            None => &mut self.shadow_bins,
        };
        if v.len() <= bin {
            v.resize(bin + 1, 0.0);
        }
        if let Some(c) = v.get_mut(bin) {
            *c += count;
        }
    }

    /// Adds another window's bins to this one's.
    pub fn add_bins(&mut self, other: &WindowData) {
        for (name, counts) in &other.bins {
            for (i, c) in counts.iter().enumerate() {
                self.add_bin(Some(name), i, *c);
            }
        }
        for (i, c) in other.shadow_bins.iter().enumerate() {
            self.add_bin(None, i, *c);
        }
    }
}

/// The highest bin number a window keeps: `distribution::MAX_BINS` intervals plus
/// underflow, overflow and other.
pub const MAX_BIN_INDEX: usize = crate::distribution::MAX_BINS + 2;

/// The stat a `stat` check reads for `variant` (`{variant}` replaced).
pub fn stat_key(stat: &str, variant: &str) -> String {
    stat.replace("{variant}", variant)
}
