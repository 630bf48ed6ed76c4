//! Progressive delivery, the pure part: what the sidecar's policy engine measures
//! and decides, with no I/O and no clock (times are passed in as unix ms).
//!
//! - Counter and histogram arithmetic: increases between two scrapes with counter
//!   resets (a drop is a restart, never a negative delta), percentiles of a
//!   histogram by linear interpolation within the bin holding the rank.
//! - [`WindowData`]: what one rollout's stats added up to over an analysis window.
//! - Check evaluation ([`evaluate_checks`]): every `policy.checks[]` entry judged
//!   over a window as passed / failed / inconclusive / skipped.
//! - The interval verdict ([`interval_verdict`]), the streaks of failed and
//!   inconclusive intervals ([`Streak`]) and the step machine ([`decide`]).
//! - The texts stored as reasons and shown by status ([`rollback_reason`], ...).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::{
    step_label, AbRequirement, CheckMetric, CheckSpec, OnInconclusive, PolicySpec, ProgressSpec,
    ProgressState, StepSpec,
};

/// Samples each compared variant needs in a window when a check gives no `min_samples`.
pub const DEFAULT_MIN_SAMPLES: u64 = 50;
/// The latency percentile when a check gives none.
pub const DEFAULT_PERCENTILE: f64 = 99.0;
/// Index of `5xx` in `stats::CLASSES`.
pub const CLASS_5XX: usize = 3;
/// Tolerance of threshold comparisons (floating point noise, not policy).
const EPSILON: f64 = 1e-12;

// ---------------------------------------------------------------------------
// Counters and histograms

/// The increase of a monotonic counter between two readings. A reading below the
/// previous one means the counter restarted from zero (Envoy restarted, or the
/// stat was re-created): everything counted since the restart is the increase.
pub fn counter_increase(prev: f64, cur: f64) -> f64 {
    if !cur.is_finite() || cur < 0.0 {
        return 0.0;
    }
    if !prev.is_finite() || cur >= prev {
        cur - prev.max(0.0)
    } else {
        cur
    }
}

/// A bin's bounds as an ordered key: non-negative floats order like their bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct BinKey(u64, u64);

impl BinKey {
    fn new(lower: f64, upper: f64) -> Option<BinKey> {
        if !lower.is_finite() || lower < 0.0 || upper.is_nan() {
            return None;
        }
        // -0.0 and 0.0 are one bin.
        let lower = if lower == 0.0 { 0.0 } else { lower };
        let upper = if upper < lower { lower } else { upper };
        Some(BinKey(lower.to_bits(), upper.to_bits()))
    }

    fn lower(self) -> f64 {
        f64::from_bits(self.0)
    }

    fn upper(self) -> f64 {
        f64::from_bits(self.1)
    }
}

/// One histogram bin: values in `[lower, upper)` (Envoy's detailed bins) or
/// `(lower, upper]` (Prometheus `le` buckets); `upper` may be infinite.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bin {
    pub lower: f64,
    pub upper: f64,
    pub count: f64,
}

/// A distribution as counts per bin. Bins from one source never overlap; adding the
/// same bin twice adds the counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    bins: BTreeMap<BinKey, f64>,
}

impl Histogram {
    /// Adds `count` observations to the bin `[lower, upper)`. Invalid bins (negative
    /// or non-finite lower bound) and non-positive counts are ignored.
    pub fn add(&mut self, lower: f64, upper: f64, count: f64) {
        if !(count.is_finite() && count > 0.0) {
            return;
        }
        if let Some(k) = BinKey::new(lower, upper) {
            *self.bins.entry(k).or_insert(0.0) += count;
        }
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (k, c) in &other.bins {
            *self.bins.entry(*k).or_insert(0.0) += c;
        }
    }

    /// Observations in all bins.
    pub fn count(&self) -> f64 {
        // fold from +0.0: an empty f64 `sum()` is -0.0, which prints as "-0"
        self.bins.values().fold(0.0, |a, b| a + b)
    }

    pub fn is_empty(&self) -> bool {
        self.bins.is_empty()
    }

    pub fn bins(&self) -> Vec<Bin> {
        self.bins
            .iter()
            .map(|(k, c)| Bin {
                lower: k.lower(),
                upper: k.upper(),
                count: *c,
            })
            .collect()
    }

    pub fn from_bins(bins: &[Bin]) -> Histogram {
        let mut h = Histogram::default();
        for b in bins {
            h.add(b.lower, b.upper, b.count);
        }
        h
    }

    /// Builds disjoint bins from Prometheus-style cumulative buckets
    /// `(upper bound, count of observations <= bound)`, in any order. The first bucket
    /// starts at 0; the `+Inf` bucket gets what lies above the last finite bound.
    pub fn from_cumulative(buckets: &[(f64, f64)]) -> Histogram {
        let mut sorted: Vec<(f64, f64)> = buckets
            .iter()
            .copied()
            .filter(|(le, c)| !le.is_nan() && c.is_finite())
            .collect();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut h = Histogram::default();
        let mut lower = 0.0;
        let mut below = 0.0;
        for (le, cum) in sorted {
            h.add(lower, le, cum - below);
            if cum > below {
                below = cum;
            }
            lower = le.max(0.0);
        }
        h
    }

    /// What was added between `prev` and `self`, two cumulative readings of one
    /// histogram. `None` when some bin went down: the histogram restarted, and
    /// `self` itself is what was observed since.
    pub fn increase_since(&self, prev: &Histogram) -> Option<Histogram> {
        for (k, p) in &prev.bins {
            if self.bins.get(k).copied().unwrap_or(0.0) + EPSILON < *p {
                return None;
            }
        }
        let mut out = Histogram::default();
        for (k, c) in &self.bins {
            let d = c - prev.bins.get(k).copied().unwrap_or(0.0);
            if d > 0.0 {
                out.bins.insert(*k, d);
            }
        }
        Some(out)
    }

    /// The `p`-th percentile (0 < p <= 100): the rank `p/100 x count` is located in
    /// the bin that holds it and interpolated linearly between the bin's bounds
    /// (Prometheus' `histogram_quantile` rule). A rank in an unbounded bin answers
    /// its lower bound. `None` without observations.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        let total = self.count();
        if !(total > 0.0 && p > 0.0 && p <= 100.0) {
            return None;
        }
        let rank = p / 100.0 * total;
        let mut below = 0.0;
        let mut last = None;
        for (k, c) in &self.bins {
            let (lo, hi) = (k.lower(), k.upper());
            if below + c >= rank - EPSILON {
                if hi.is_infinite() {
                    return Some(lo);
                }
                let frac = ((rank - below) / c).clamp(0.0, 1.0);
                return Some(lo + frac * (hi - lo));
            }
            below += c;
            last = Some(if hi.is_finite() { hi } else { lo });
        }
        last
    }
}

// ---------------------------------------------------------------------------
// Windows

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
}

impl WindowData {
    pub fn variant(&self, name: &str) -> Option<&VariantWindow> {
        self.variants.get(name)
    }
}

/// The stat a `stat` check reads for `variant` (`{variant}` replaced).
pub fn stat_key(stat: &str, variant: &str) -> String {
    stat.replace("{variant}", variant)
}

// ---------------------------------------------------------------------------
// Checks

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckVerdict {
    Passed,
    Failed,
    /// Too little data to judge: never healthy.
    Inconclusive,
    /// Does not apply at this step (e.g. error_rate on a shadow-only step).
    Skipped,
}

impl CheckVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckVerdict::Passed => "passed",
            CheckVerdict::Failed => "failed",
            CheckVerdict::Inconclusive => "inconclusive",
            CheckVerdict::Skipped => "skipped",
        }
    }
}

/// The A/B verdict of a rollout's experiment, as the `ab` check sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbState {
    /// The fixed horizon is not reached yet (or no experiment data source).
    NotReady,
    /// Candidate significantly better.
    Better,
    /// Horizon reached, no significant difference.
    NoDifference,
    /// Candidate significantly worse.
    Worse,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbOutcome {
    pub state: AbState,
    /// Human-readable evidence ("conversion 0.112 vs 0.104, p = 0.01, n = 1000/1000").
    pub detail: String,
}

/// One check judged over one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckOutcome {
    /// `name`, or the metric (`error_rate`, `latency`, ...).
    pub name: String,
    pub metric: CheckMetric,
    pub verdict: CheckVerdict,
    /// The candidate's value (rates are fractions, latency in ms).
    pub candidate: Option<f64>,
    /// The stable variant's value, for relative checks.
    pub stable: Option<f64>,
    /// The largest candidate value that passes.
    pub threshold: Option<f64>,
    /// The rule: `candidate <= 0.01`, `candidate <= stable + 0.005`, `candidate <= 1.2 x stable`.
    pub condition: String,
    pub candidate_samples: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_samples: Option<f64>,
    pub min_samples: u64,
    /// Why: `candidate 0.201 > stable 0.000 + 0.005`, `candidate has 12 of 50 responses`.
    pub detail: String,
    /// When the stable value is a baseline carried over from an earlier window (the
    /// stable variant gets no traffic at this step): that window's end, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_baseline_ms: Option<u64>,
}

/// A relative check's stable value from the latest window where the stable
/// variant had enough samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub value: f64,
    pub samples: f64,
    /// End of that window, unix ms.
    pub at_ms: u64,
}

/// How a step is judged.
#[derive(Debug, Clone, Copy)]
pub struct EvalContext<'a> {
    pub stable: &'a str,
    pub candidate: &'a str,
    /// Candidate at 0 %, judged on shadow comparisons.
    pub shadow_only: bool,
    /// The experiment's verdict, for `ab` checks (`None`: no source).
    pub ab: Option<&'a AbOutcome>,
    /// The stable variant's weight is 0 at this step (e.g. a 100 % step): relative
    /// checks without stable samples compare with their baseline instead.
    pub stable_idle: bool,
    /// Per check (index into `policy.checks`): the latest stable baseline.
    pub baselines: Option<&'a BTreeMap<usize, Baseline>>,
}

pub fn metric_str(m: CheckMetric) -> &'static str {
    match m {
        CheckMetric::ErrorRate => "error_rate",
        CheckMetric::Latency => "latency",
        CheckMetric::InvalidOutputRate => "invalid_output_rate",
        CheckMetric::ShadowDisagreementRate => "shadow_disagreement_rate",
        CheckMetric::Stat => "stat",
        CheckMetric::Ab => "ab",
    }
}

pub fn check_name(c: &CheckSpec) -> String {
    match &c.name {
        Some(n) if !n.is_empty() => n.clone(),
        _ => metric_str(c.metric).to_string(),
    }
}

/// A number for reasons and status: rates and stats with three decimals (more for
/// tiny non-zero values), latency in ms with one decimal.
pub fn fmt_value(metric: CheckMetric, v: f64) -> String {
    if metric == CheckMetric::Latency {
        return format!("{v:.1} ms");
    }
    fmt_num(v)
}

fn fmt_num(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.001 {
        let s = format!("{v:.6}");
        let s = s.trim_end_matches('0');
        return s.to_string();
    }
    format!("{v:.3}")
}

/// A bound as written in the policy (no trailing zeros: `0.005`, `1.2`).
fn fmt_bound(metric: CheckMetric, v: f64) -> String {
    let s = format!("{v}");
    if metric == CheckMetric::Latency {
        format!("{s} ms")
    } else {
        s
    }
}

/// What a check measures for one variant: `(value, samples)`.
fn measure(metric: CheckMetric, check: &CheckSpec, v: &VariantWindow) -> (Option<f64>, f64) {
    let ratio = |num: f64, den: f64| if den > 0.0 { Some(num / den) } else { None };
    match metric {
        CheckMetric::ErrorRate => {
            let n = v.responses_total();
            (ratio(v.errors_5xx(), n), n)
        }
        CheckMetric::Latency => {
            let p = check.percentile.unwrap_or(DEFAULT_PERCENTILE);
            (v.latency.percentile(p), v.latency.count())
        }
        CheckMetric::InvalidOutputRate => (
            ratio(v.invalid_outputs, v.outputs_checked),
            v.outputs_checked,
        ),
        _ => (None, 0.0),
    }
}

fn sample_noun(metric: CheckMetric) -> &'static str {
    match metric {
        CheckMetric::ErrorRate => "responses",
        CheckMetric::Latency => "latency samples",
        CheckMetric::InvalidOutputRate => "checked outputs",
        CheckMetric::ShadowDisagreementRate => "shadow comparisons",
        CheckMetric::Stat => "requests",
        CheckMetric::Ab => "outcomes",
    }
}

/// The bound of a check: `(condition text, threshold from the stable value)`.
enum Bound {
    Max(f64),
    Increase(f64),
    Ratio(f64),
}

fn bound_of(c: &CheckSpec) -> Option<Bound> {
    if let Some(m) = c.max {
        return Some(Bound::Max(m));
    }
    if let Some(i) = c.max_increase {
        return Some(Bound::Increase(i));
    }
    c.max_ratio.map(Bound::Ratio)
}

fn condition_text(metric: CheckMetric, b: &Bound) -> String {
    match b {
        Bound::Max(m) => format!("candidate <= {}", fmt_bound(metric, *m)),
        Bound::Increase(i) => format!("candidate <= stable + {}", fmt_bound(metric, *i)),
        Bound::Ratio(r) => format!("candidate <= {r} x stable"),
    }
}

struct Judged {
    verdict: CheckVerdict,
    candidate: Option<f64>,
    stable: Option<f64>,
    threshold: Option<f64>,
    detail: String,
}

/// Judges `candidate` against the bound (the stable value is only read for relative bounds).
fn judge(
    metric: CheckMetric,
    bound: &Bound,
    candidate: f64,
    stable: Option<f64>,
) -> Result<Judged, String> {
    let f = |v: f64| fmt_value(metric, v);
    let (threshold, rhs) = match bound {
        Bound::Max(m) => (*m, format!("max {}", fmt_bound(metric, *m))),
        Bound::Increase(i) => {
            let s = stable.ok_or("stable has no value")?;
            (
                s + i,
                format!("stable {} + {}", f(s), fmt_bound(metric, *i)),
            )
        }
        Bound::Ratio(r) => {
            let s = stable.ok_or("stable has no value")?;
            (s * r, format!("{r} x stable {}", f(s)))
        }
    };
    let pass = candidate <= threshold + EPSILON;
    Ok(Judged {
        verdict: if pass {
            CheckVerdict::Passed
        } else {
            CheckVerdict::Failed
        },
        candidate: Some(candidate),
        stable: if matches!(bound, Bound::Max(_)) {
            None
        } else {
            stable
        },
        threshold: Some(threshold),
        detail: format!(
            "candidate {} {} {rhs}",
            f(candidate),
            if pass { "<=" } else { ">" }
        ),
    })
}

fn inconclusive(detail: String) -> Judged {
    Judged {
        verdict: CheckVerdict::Inconclusive,
        candidate: None,
        stable: None,
        threshold: None,
        detail,
    }
}

fn skipped(detail: &str) -> Judged {
    Judged {
        verdict: CheckVerdict::Skipped,
        candidate: None,
        stable: None,
        threshold: None,
        detail: detail.to_string(),
    }
}

fn few(who: &str, have: f64, need: u64, noun: &str) -> String {
    format!("{who} has {have:.0} of {need} {noun} in the window")
}

/// The checks the engine judges: the policy's own and, when the policy has a local
/// `trip`, `local_trip`: a proxy that tripped (gauge `model_rollout_tripped` above 0)
/// fails the interval. A tripped proxy sends the candidate no more traffic to judge,
/// so without this the global loop would see only "inconclusive" and never confirm.
pub fn effective_checks(rollout: &str, policy: &PolicySpec) -> Vec<CheckSpec> {
    let mut checks = policy.checks.clone();
    if policy.trip.is_some() {
        checks.push(CheckSpec {
            name: Some("local_trip".to_string()),
            metric: CheckMetric::Stat,
            percentile: None,
            stat: Some(format!("model_rollout_tripped{{rollout=\"{rollout}\"}}")),
            max: Some(0.0),
            max_increase: None,
            max_ratio: None,
            min_samples: Some(0),
            require: None,
        });
    }
    checks
}

/// Judges every check of the policy over one window.
pub fn evaluate_checks(
    policy: &PolicySpec,
    ctx: &EvalContext<'_>,
    w: &WindowData,
) -> Vec<CheckOutcome> {
    policy
        .checks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let baseline = ctx.baselines.and_then(|b| b.get(&i));
            evaluate_check_with(c, ctx, w, baseline)
        })
        .collect()
}

/// The baselines to keep after an evaluation: every relative check whose stable
/// value came from this window's own stable samples (at least `min_samples`).
pub fn update_baselines(
    baselines: &mut BTreeMap<usize, Baseline>,
    outcomes: &[CheckOutcome],
    now_ms: u64,
) {
    for (i, o) in outcomes.iter().enumerate() {
        if o.stable_baseline_ms.is_some() {
            continue;
        }
        if let (Some(v), Some(n)) = (o.stable, o.stable_samples) {
            if n >= o.min_samples as f64 && v.is_finite() {
                baselines.insert(
                    i,
                    Baseline {
                        value: v,
                        samples: n,
                        at_ms: now_ms,
                    },
                );
            }
        }
    }
}

/// Judges one check over one window, without a baseline (see the control README
/// for the rules).
pub fn evaluate_check(c: &CheckSpec, ctx: &EvalContext<'_>, w: &WindowData) -> CheckOutcome {
    evaluate_check_with(c, ctx, w, None)
}

/// Judges one check; `baseline` stands in for the stable value when the stable
/// variant is idle (weight 0) and has too few samples in the window.
pub fn evaluate_check_with(
    c: &CheckSpec,
    ctx: &EvalContext<'_>,
    w: &WindowData,
    baseline: Option<&Baseline>,
) -> CheckOutcome {
    let min = c.min_samples.unwrap_or(DEFAULT_MIN_SAMPLES);
    let metric = c.metric;
    let noun = sample_noun(metric);
    let empty = VariantWindow::default();
    let cand = w.variant(ctx.candidate).unwrap_or(&empty);
    let stab = w.variant(ctx.stable).unwrap_or(&empty);
    let bound = bound_of(c);
    let relative = matches!(bound, Some(Bound::Increase(_) | Bound::Ratio(_)));
    let condition = match (&bound, metric) {
        (_, CheckMetric::Ab) => match c.require.unwrap_or(AbRequirement::NotWorse) {
            AbRequirement::Better => "candidate significantly better".to_string(),
            AbRequirement::NotWorse => "candidate not significantly worse".to_string(),
        },
        (Some(b), _) => condition_text(metric, b),
        (None, _) => String::new(),
    };
    let mut cand_samples = 0.0;
    let mut stable_samples = None;
    let mut baseline_ms: Option<u64> = None;
    let judged: Judged = match metric {
        CheckMetric::ErrorRate | CheckMetric::Latency | CheckMetric::InvalidOutputRate => {
            if ctx.shadow_only {
                skipped("no candidate traffic at a shadow-only step")
            } else {
                let (cv, cn) = measure(metric, c, cand);
                cand_samples = cn;
                let (mut sv, mut sn) = measure(metric, c, stab);
                if relative && ctx.stable_idle && (sn < min as f64 || sv.is_none()) {
                    if let Some(b) = baseline {
                        (sv, sn) = (Some(b.value), b.samples);
                        baseline_ms = Some(b.at_ms);
                    }
                }
                if relative {
                    stable_samples = Some(sn);
                }
                match (&bound, cv) {
                    (None, _) => inconclusive("the check has no bound".to_string()),
                    _ if cn < min as f64 || cv.is_none() => {
                        inconclusive(few("candidate", cn, min, noun))
                    }
                    _ if relative && (sn < min as f64 || sv.is_none()) => {
                        inconclusive(few("stable", sn, min, noun))
                    }
                    (Some(b), Some(cv)) => judge(metric, b, cv, sv).unwrap_or_else(inconclusive),
                    (Some(_), None) => inconclusive(few("candidate", cn, min, noun)),
                }
            }
        }
        CheckMetric::ShadowDisagreementRate => {
            let s = &w.shadow;
            cand_samples = s.compared;
            match &bound {
                _ if s.compared < min as f64 || s.compared <= 0.0 => {
                    inconclusive(few("shadow", s.compared, min, noun))
                }
                Some(b @ Bound::Max(_)) => {
                    judge(metric, b, s.disagree / s.compared, None).unwrap_or_else(inconclusive)
                }
                _ => inconclusive("shadow_disagreement_rate takes max only".to_string()),
            }
        }
        CheckMetric::Stat => {
            let stat = c.stat.as_deref().unwrap_or("");
            let per_variant = stat.contains("{variant}");
            if ctx.shadow_only && per_variant {
                skipped("no candidate traffic at a shadow-only step")
            } else {
                let key_c = stat_key(stat, ctx.candidate);
                let cv = w.stats.get(&key_c).and_then(|s| s.value(w.span_s));
                // Confidence comes from traffic: candidate requests (shadow comparisons
                // at a shadow-only step); min_samples 0 only needs the stat to exist.
                cand_samples = if ctx.shadow_only {
                    w.shadow.compared
                } else {
                    cand.requests
                };
                let mut sv = if per_variant {
                    w.stats
                        .get(&stat_key(stat, ctx.stable))
                        .and_then(|s| s.value(w.span_s))
                } else {
                    None
                };
                let mut stable_n = stab.requests;
                if relative
                    && per_variant
                    && ctx.stable_idle
                    && (stable_n < min as f64 || sv.is_none())
                {
                    if let Some(b) = baseline {
                        (sv, stable_n) = (Some(b.value), b.samples);
                        baseline_ms = Some(b.at_ms);
                    }
                }
                if relative {
                    stable_samples = Some(stable_n);
                }
                match (&bound, cv) {
                    (None, _) => inconclusive("the check has no bound".to_string()),
                    (_, None) => inconclusive(format!("stat {key_c} not found in the window")),
                    _ if relative && !per_variant => inconclusive(
                        "a relative stat check needs {variant} in the stat name".to_string(),
                    ),
                    _ if cand_samples < min as f64 => inconclusive(few(
                        "candidate",
                        cand_samples,
                        min,
                        if ctx.shadow_only {
                            "shadow comparisons"
                        } else {
                            noun
                        },
                    )),
                    _ if relative && stable_n < min as f64 => {
                        inconclusive(few("stable", stable_n, min, noun))
                    }
                    _ if relative && sv.is_none() => inconclusive(format!(
                        "stat {} not found in the window",
                        stat_key(stat, ctx.stable)
                    )),
                    (Some(b), Some(cv)) => judge(metric, b, cv, sv).unwrap_or_else(inconclusive),
                }
            }
        }
        CheckMetric::Ab => {
            if ctx.shadow_only {
                skipped("no candidate traffic at a shadow-only step")
            } else {
                let require = c.require.unwrap_or(AbRequirement::NotWorse);
                match ctx.ab {
                    None => inconclusive("no A/B verdict available".to_string()),
                    Some(ab) => {
                        let verdict = match (ab.state, require) {
                            (AbState::Worse, _) => CheckVerdict::Failed,
                            (AbState::Better, _) => CheckVerdict::Passed,
                            (AbState::NoDifference, AbRequirement::NotWorse) => {
                                CheckVerdict::Passed
                            }
                            (AbState::NoDifference, AbRequirement::Better) => {
                                CheckVerdict::Inconclusive
                            }
                            (AbState::NotReady, _) => CheckVerdict::Inconclusive,
                        };
                        let state = match ab.state {
                            AbState::NotReady => "not ready",
                            AbState::Better => "better",
                            AbState::NoDifference => "no significant difference",
                            AbState::Worse => "worse",
                        };
                        Judged {
                            verdict,
                            candidate: None,
                            stable: None,
                            threshold: None,
                            detail: if ab.detail.is_empty() {
                                format!("A/B: {state}")
                            } else {
                                format!("A/B: {state}: {}", ab.detail)
                            },
                        }
                    }
                }
            }
        }
    };
    CheckOutcome {
        name: check_name(c),
        metric,
        verdict: judged.verdict,
        candidate: judged.candidate,
        stable: judged.stable,
        threshold: judged.threshold,
        condition,
        candidate_samples: cand_samples,
        stable_samples,
        min_samples: min,
        detail: match (baseline_ms, judged.verdict) {
            (Some(_), CheckVerdict::Passed | CheckVerdict::Failed) => {
                format!("{} (stable baseline from an earlier window)", judged.detail)
            }
            _ => judged.detail,
        },
        stable_baseline_ms: baseline_ms.filter(|_| judged.stable.is_some()),
    }
}

/// The verdict of one analysis interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntervalVerdict {
    Passed,
    Failed,
    Inconclusive,
}

impl IntervalVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            IntervalVerdict::Passed => "passed",
            IntervalVerdict::Failed => "failed",
            IntervalVerdict::Inconclusive => "inconclusive",
        }
    }
}

/// Any check failed: failed; else any inconclusive: inconclusive; else passed. When
/// no check applies (none configured, or all skipped at a shadow-only step) the
/// interval passes only with at least `DEFAULT_MIN_SAMPLES` candidate requests
/// (shadow comparisons at a shadow-only step) in the window: no data is never healthy.
pub fn interval_verdict(
    outcomes: &[CheckOutcome],
    ctx: &EvalContext<'_>,
    w: &WindowData,
) -> IntervalVerdict {
    if outcomes.iter().any(|o| o.verdict == CheckVerdict::Failed) {
        return IntervalVerdict::Failed;
    }
    if outcomes
        .iter()
        .any(|o| o.verdict == CheckVerdict::Inconclusive)
    {
        return IntervalVerdict::Inconclusive;
    }
    if outcomes.iter().any(|o| o.verdict == CheckVerdict::Passed) {
        return IntervalVerdict::Passed;
    }
    if step_traffic(ctx, w) >= DEFAULT_MIN_SAMPLES as f64 {
        IntervalVerdict::Passed
    } else {
        IntervalVerdict::Inconclusive
    }
}

/// What a step's `min_requests` counts in a window: candidate requests, or shadow
/// comparisons at a shadow-only step.
pub fn step_traffic(ctx: &EvalContext<'_>, w: &WindowData) -> f64 {
    if ctx.shadow_only {
        w.shadow.compared
    } else {
        w.variant(ctx.candidate).map_or(0.0, |v| v.requests)
    }
}

// ---------------------------------------------------------------------------
// Streaks and the step machine

/// Failed and inconclusive intervals in a row. A passed interval clears both; a
/// failed one clears the inconclusive streak; an inconclusive one leaves the failed
/// streak as it is (a quiet interval between two failures is no proof of health).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Streak {
    pub failed: u32,
    pub inconclusive: u32,
}

impl Streak {
    pub fn record(&mut self, v: IntervalVerdict) {
        match v {
            IntervalVerdict::Passed => *self = Streak::default(),
            IntervalVerdict::Failed => {
                self.failed = self.failed.saturating_add(1);
                self.inconclusive = 0;
            }
            IntervalVerdict::Inconclusive => {
                self.inconclusive = self.inconclusive.saturating_add(1);
            }
        }
    }
}

/// What the engine does after an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No plan change; why.
    Stay(String),
    /// Next step (progressing).
    Advance { to: usize },
    /// Checks passed at a gate (or auto_advance is off): wait for `promote`.
    Wait,
    /// The last step passed: the candidate becomes stable.
    Complete,
    /// Candidate to 0 %, state rolled_back.
    Rollback,
    /// Inconclusive for too long with `on_inconclusive_limit: hold`.
    Hold,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Stay(_) => "stay",
            Action::Advance { .. } => "advance",
            Action::Wait => "wait",
            Action::Complete => "complete",
            Action::Rollback => "rollback",
            Action::Hold => "hold",
        }
    }
}

/// Facts about the current step besides the interval's verdict.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepFacts {
    pub now_ms: u64,
    /// Candidate requests (shadow comparisons at a shadow-only step) seen since the step began.
    pub step_traffic: f64,
    /// Why the rollout must not move forward now (e.g. proxies still on an older
    /// plan); rollbacks and holds are never blocked.
    pub blocked: Option<String>,
}

/// The step machine. Rolled-back and complete rollouts never move by themselves.
/// A failure streak reaching `failure_limit` rolls back in every other state
/// (waiting and holding candidates still serve traffic and stay watched). An
/// inconclusive streak reaching `inconclusive_limit` while progressing holds or rolls
/// back per `on_inconclusive_limit`. Only a progressing step advances: the interval
/// passed, `min_duration_s` elapsed since `progress.since_ms` and the step saw
/// `min_requests`, and nothing blocks it (`StepFacts::blocked`); then a gate (or
/// `auto_advance: false`) waits for promote, the last step completes, any other step
/// advances.
pub fn decide(
    policy: &PolicySpec,
    progress: &ProgressSpec,
    streak: Streak,
    verdict: IntervalVerdict,
    facts: &StepFacts,
) -> Action {
    match progress.state {
        ProgressState::RolledBack => return Action::Stay("rolled back".to_string()),
        ProgressState::Complete => return Action::Stay("complete".to_string()),
        _ => {}
    }
    if streak.failed >= policy.failure_limit {
        return Action::Rollback;
    }
    if progress.state == ProgressState::Progressing
        && streak.inconclusive >= policy.inconclusive_limit
    {
        return match policy.on_inconclusive_limit {
            OnInconclusive::Hold => Action::Hold,
            OnInconclusive::Rollback => Action::Rollback,
        };
    }
    match progress.state {
        ProgressState::Waiting => return Action::Stay("waiting for promote".to_string()),
        ProgressState::Holding => return Action::Stay("holding".to_string()),
        _ => {}
    }
    if verdict != IntervalVerdict::Passed {
        return Action::Stay(format!("interval {}", verdict.as_str()));
    }
    let Some(step) = policy.steps.get(progress.step) else {
        return Action::Stay("no such step".to_string());
    };
    let elapsed_ms = facts.now_ms.saturating_sub(progress.since_ms);
    let need_ms = step.min_duration_s.saturating_mul(1000);
    if elapsed_ms < need_ms {
        return Action::Stay(format!(
            "passed; the step needs {} s more",
            (need_ms - elapsed_ms).div_ceil(1000)
        ));
    }
    if facts.step_traffic < step.min_requests as f64 {
        return Action::Stay(format!(
            "passed; the step needs {:.0} more {}",
            step.min_requests as f64 - facts.step_traffic,
            traffic_noun(step)
        ));
    }
    if let Some(why) = &facts.blocked {
        return Action::Stay(format!("passed; not moving on: {why}"));
    }
    if step.gate || !policy.auto_advance {
        return Action::Wait;
    }
    if progress.step + 1 >= policy.steps.len() {
        return Action::Complete;
    }
    Action::Advance {
        to: progress.step + 1,
    }
}

fn traffic_noun(step: &StepSpec) -> &'static str {
    if step.shadow_only {
        "shadow comparisons"
    } else {
        "candidate requests"
    }
}

// ---------------------------------------------------------------------------
// Texts

fn failed_list(outcomes: &[CheckOutcome], verdict: CheckVerdict) -> Vec<&CheckOutcome> {
    outcomes.iter().filter(|o| o.verdict == verdict).collect()
}

fn names(list: &[&CheckOutcome]) -> String {
    list.iter()
        .map(|o| o.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn details(list: &[&CheckOutcome], with_names: bool) -> String {
    list.iter()
        .map(|o| {
            if with_names {
                format!("{}: {}", o.name, o.detail)
            } else {
                o.detail.clone()
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn plural(n: u32, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

/// `policy: start at step 0 (shadow only)`.
pub fn start_reason(policy: &PolicySpec) -> String {
    format!("policy: start at {}", step_label(policy, 0))
}

/// `policy: rollback at step 2 (5 %): check error_rate failed 2 intervals: candidate
/// 0.201 > stable 0.000 + 0.005` (several failed checks are listed with their names).
/// With no failed check (an inconclusive limit with `on_inconclusive_limit:
/// rollback`) it names the inconclusive checks.
pub fn rollback_reason(
    policy: &PolicySpec,
    step: usize,
    streak: Streak,
    outcomes: &[CheckOutcome],
) -> String {
    let at = step_label(policy, step);
    let failed = failed_list(outcomes, CheckVerdict::Failed);
    if streak.failed >= policy.failure_limit {
        let n = plural(streak.failed, "interval", "intervals");
        return match failed.len() {
            0 => format!("policy: rollback at {at}: failed {n}"),
            1 => format!(
                "policy: rollback at {at}: check {} failed {n}: {}",
                names(&failed),
                details(&failed, false)
            ),
            _ => format!(
                "policy: rollback at {at}: checks {} failed {n}: {}",
                names(&failed),
                details(&failed, true)
            ),
        };
    }
    format!(
        "policy: rollback at {at}: inconclusive for {} (on_inconclusive_limit: rollback){}",
        plural(streak.inconclusive, "interval", "intervals"),
        inconclusive_suffix(outcomes)
    )
}

fn inconclusive_suffix(outcomes: &[CheckOutcome]) -> String {
    let list = failed_list(outcomes, CheckVerdict::Inconclusive);
    if list.is_empty() {
        ": too little traffic".to_string()
    } else {
        format!(": {}", details(&list, true))
    }
}

/// `policy: hold at step 1 (1 %): inconclusive for 10 intervals: error_rate: candidate has 3 of 50 responses in the window`.
pub fn hold_reason(
    policy: &PolicySpec,
    step: usize,
    streak: Streak,
    outcomes: &[CheckOutcome],
) -> String {
    format!(
        "policy: hold at {}: inconclusive for {}{}",
        step_label(policy, step),
        plural(streak.inconclusive, "interval", "intervals"),
        inconclusive_suffix(outcomes)
    )
}

fn passed_summary(outcomes: &[CheckOutcome], traffic: f64, step: Option<&StepSpec>) -> String {
    let passed = failed_list(outcomes, CheckVerdict::Passed);
    let mut parts = Vec::new();
    if !passed.is_empty() {
        parts.push(
            passed
                .iter()
                .map(|o| format!("{} {}", o.name, o.detail.trim_start_matches("candidate ")))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    let noun = step.map_or("candidate requests", traffic_noun);
    parts.push(format!("{traffic:.0} {noun} in the step"));
    parts.join("; ")
}

/// `policy: advance to step 3 (25 %): step 2 (5 %) passed: error_rate 0.001 <= ...; 812 candidate requests in the step`.
pub fn advance_reason(
    policy: &PolicySpec,
    from: usize,
    to: usize,
    outcomes: &[CheckOutcome],
    traffic: f64,
) -> String {
    format!(
        "policy: advance to {}: {} passed: {}",
        step_label(policy, to),
        step_label(policy, from),
        passed_summary(outcomes, traffic, policy.steps.get(from))
    )
}

/// `policy: step 2 (5 %) passed: waiting for promote (gate): ...`.
pub fn wait_reason(
    policy: &PolicySpec,
    step: usize,
    outcomes: &[CheckOutcome],
    traffic: f64,
) -> String {
    let why = match policy.steps.get(step) {
        Some(s) if s.gate => "gate",
        _ => "auto_advance is off",
    };
    format!(
        "policy: {} passed: waiting for promote ({why}): {}",
        step_label(policy, step),
        passed_summary(outcomes, traffic, policy.steps.get(step))
    )
}

/// `policy: complete: step 5 (100 %) passed: canary promoted to stable: ...`.
pub fn complete_reason(
    policy: &PolicySpec,
    step: usize,
    candidate: &str,
    outcomes: &[CheckOutcome],
    traffic: f64,
) -> String {
    format!(
        "policy: complete: {} passed: {candidate} promoted to stable: {}",
        step_label(policy, step),
        passed_summary(outcomes, traffic, policy.steps.get(step))
    )
}

/// What happens next, for status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NextAction {
    /// `advance`, `wait`, `complete`, `rollback`, `hold`, `none`.
    pub action: String,
    /// Unix ms of the earliest time it can happen, when known.
    pub at_ms: Option<u64>,
    /// The sentence (times as produced by `fmt_time`).
    pub text: String,
}

/// Inputs of [`next_action`].
#[derive(Debug, Clone, Copy)]
pub struct NextFacts {
    pub paused: bool,
    pub streak: Streak,
    pub step_traffic: f64,
    pub now_ms: u64,
    /// When the engine evaluates next (None: the engine is not running).
    pub next_eval_ms: Option<u64>,
}

/// The next action of a rollout with a policy and its progress.
pub fn next_action(
    policy: &PolicySpec,
    progress: &ProgressSpec,
    candidate: &str,
    facts: &NextFacts,
    fmt_time: &dyn Fn(u64) -> String,
) -> NextAction {
    let none = |text: String| NextAction {
        action: "none".to_string(),
        at_ms: None,
        text,
    };
    let note = progress.note.clone().unwrap_or_default();
    match progress.state {
        ProgressState::RolledBack => {
            return none(format!(
                "rolled back: {note}; restart (POST .../restart) walks the steps again"
            ))
        }
        ProgressState::Complete => return none(format!("complete: {candidate} is stable")),
        _ => {}
    }
    if facts.paused {
        return none("paused: no automatic change until resume".to_string());
    }
    let Some(next_eval) = facts.next_eval_ms else {
        return none("the policy engine is not running (serve without --envoy-admin)".to_string());
    };
    let remaining = policy.failure_limit.saturating_sub(facts.streak.failed);
    if facts.streak.failed > 0 {
        return NextAction {
            action: "rollback".to_string(),
            at_ms: Some(next_eval),
            text: format!(
                "roll back if {} fail{} (next evaluation at {})",
                plural(remaining, "more interval", "more intervals"),
                if remaining == 1 { "s" } else { "" },
                fmt_time(next_eval)
            ),
        };
    }
    match progress.state {
        ProgressState::Waiting => {
            let what = if progress.step + 1 >= policy.steps.len() {
                format!("promote makes {candidate} stable")
            } else {
                format!(
                    "promote advances to {}",
                    step_label(policy, progress.step + 1)
                )
            };
            return none(format!("waiting for promote: {what}"));
        }
        ProgressState::Holding => {
            return none(format!("holding: {note}; resume or promote to continue"))
        }
        _ => {}
    }
    let Some(step) = policy.steps.get(progress.step) else {
        return none(String::new());
    };
    let ready_ms = progress
        .since_ms
        .saturating_add(step.min_duration_s.saturating_mul(1000));
    let at = next_eval.max(ready_ms);
    let (action, what) = if step.gate || !policy.auto_advance {
        ("wait", "wait for promote".to_string())
    } else if progress.step + 1 >= policy.steps.len() {
        ("complete", format!("promote {candidate} to stable"))
    } else {
        (
            "advance",
            format!("advance to {}", step_label(policy, progress.step + 1)),
        )
    };
    let missing = step.min_requests as f64 - facts.step_traffic;
    let mut text = format!("{what} at {} if checks pass", fmt_time(at));
    if missing > 0.0 {
        text.push_str(&format!(
            " and {missing:.0} more {} arrive",
            traffic_noun(step)
        ));
    }
    if facts.streak.inconclusive > 0 {
        let left = policy
            .inconclusive_limit
            .saturating_sub(facts.streak.inconclusive);
        let then = match policy.on_inconclusive_limit {
            OnInconclusive::Hold => "hold",
            OnInconclusive::Rollback => "roll back",
        };
        text.push_str(&format!(
            " ({then} after {} inconclusive)",
            plural(left, "more interval", "more intervals")
        ));
    }
    NextAction {
        action: action.to_string(),
        at_ms: Some(at),
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> PolicySpec {
        serde_json::from_str(json).unwrap()
    }

    fn hist(values: &[(f64, f64)]) -> Histogram {
        let mut h = Histogram::default();
        for (v, n) in values {
            h.add(*v, v + 1.0, *n);
        }
        h
    }

    fn vw(requests: f64, errors: f64, latency_ms: f64, invalid: f64) -> VariantWindow {
        VariantWindow {
            requests,
            responses: [requests - errors, 0.0, 0.0, errors, 0.0],
            outputs_checked: requests,
            invalid_outputs: invalid,
            latency: hist(&[(latency_ms, requests)]),
        }
    }

    fn window(stable: VariantWindow, canary: VariantWindow) -> WindowData {
        let mut w = WindowData {
            span_s: 10.0,
            ..WindowData::default()
        };
        w.variants.insert("stable".into(), stable);
        w.variants.insert("canary".into(), canary);
        w
    }

    fn ctx() -> EvalContext<'static> {
        EvalContext {
            stable: "stable",
            candidate: "canary",
            shadow_only: false,
            ab: None,
            stable_idle: false,
            baselines: None,
        }
    }

    fn check(json: &str) -> CheckSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn counter_resets_never_go_negative() {
        assert_eq!(counter_increase(10.0, 15.0), 5.0);
        assert_eq!(counter_increase(10.0, 10.0), 0.0);
        // Envoy restarted: 3 counted since
        assert_eq!(counter_increase(1000.0, 3.0), 3.0);
        assert_eq!(counter_increase(5.0, f64::NAN), 0.0);
        assert_eq!(counter_increase(0.0, 7.0), 7.0);
    }

    #[test]
    fn histogram_increase_and_reset() {
        let prev = hist(&[(10.0, 5.0), (20.0, 1.0)]);
        let cur = hist(&[(10.0, 8.0), (20.0, 1.0), (30.0, 2.0)]);
        let inc = cur.increase_since(&prev).unwrap();
        assert_eq!(inc, hist(&[(10.0, 3.0), (30.0, 2.0)]));
        // a bin went down: restart, the caller takes `cur` whole
        let after_restart = hist(&[(10.0, 1.0)]);
        assert!(after_restart.increase_since(&prev).is_none());
    }

    #[test]
    fn percentile_interpolates_within_the_bin() {
        // 100 observations in [10, 20): p50 is the middle of the bin
        let mut h = Histogram::default();
        h.add(10.0, 20.0, 100.0);
        assert_eq!(h.percentile(50.0), Some(15.0));
        assert_eq!(h.percentile(100.0), Some(20.0));
        // 99 fast, 1 slow: p99 is at the top of the fast bin, p99.5 in the slow one
        let mut h = Histogram::default();
        h.add(10.0, 11.0, 99.0);
        h.add(300.0, 310.0, 1.0);
        assert!((h.percentile(99.0).unwrap() - 11.0).abs() < 1e-9);
        assert!((h.percentile(99.5).unwrap() - 305.0).abs() < 1e-9);
        assert_eq!(Histogram::default().percentile(99.0), None);
        assert_eq!(h.percentile(0.0), None);
    }

    #[test]
    fn percentile_from_prometheus_buckets_and_deltas() {
        // cumulative le buckets at two scrapes; the window is their difference
        let t0 = Histogram::from_cumulative(&[
            (10.0, 100.0),
            (25.0, 100.0),
            (100.0, 100.0),
            (f64::INFINITY, 100.0),
        ]);
        let t1 = Histogram::from_cumulative(&[
            (10.0, 100.0),
            (25.0, 150.0),
            (100.0, 200.0),
            (f64::INFINITY, 200.0),
        ]);
        let w = t1.increase_since(&t0).unwrap();
        assert_eq!(w.count(), 100.0);
        // 50 in (10, 25], 50 in (25, 100]: p50 = 25, p99 = 25 + 0.98 x 75
        assert!((w.percentile(50.0).unwrap() - 25.0).abs() < 1e-9);
        assert!((w.percentile(99.0).unwrap() - 98.5).abs() < 1e-9);
        // everything above the last finite bound: its lower bound
        let inf = Histogram::from_cumulative(&[(100.0, 0.0), (f64::INFINITY, 10.0)]);
        assert_eq!(inf.percentile(99.0), Some(100.0));
    }

    #[test]
    fn absolute_and_relative_checks() {
        let w = window(vw(1000.0, 0.0, 50.0, 0.0), vw(1000.0, 201.0, 50.0, 0.0));
        let o = evaluate_check(
            &check(r#"{"metric":"error_rate","max_increase":0.005}"#),
            &ctx(),
            &w,
        );
        assert_eq!(o.verdict, CheckVerdict::Failed);
        assert_eq!(o.detail, "candidate 0.201 > stable 0.000 + 0.005");
        assert_eq!(o.threshold, Some(0.005));
        let o = evaluate_check(&check(r#"{"metric":"error_rate","max":0.25}"#), &ctx(), &w);
        assert_eq!(o.verdict, CheckVerdict::Passed);
        assert_eq!(o.detail, "candidate 0.201 <= max 0.25");
        assert_eq!(o.stable, None);
        // latency ratio: 350 ms vs 50 ms
        let w = window(vw(1000.0, 0.0, 50.0, 0.0), vw(1000.0, 0.0, 350.0, 0.0));
        let o = evaluate_check(
            &check(r#"{"metric":"latency","percentile":99,"max_ratio":1.2}"#),
            &ctx(),
            &w,
        );
        assert_eq!(o.verdict, CheckVerdict::Failed);
        assert_eq!(o.detail, "candidate 351.0 ms > 1.2 x stable 51.0 ms");
        // invalid outputs
        let w = window(vw(1000.0, 0.0, 50.0, 0.0), vw(1000.0, 0.0, 50.0, 100.0));
        let o = evaluate_check(
            &check(r#"{"metric":"invalid_output_rate","max":0.01}"#),
            &ctx(),
            &w,
        );
        assert_eq!(o.verdict, CheckVerdict::Failed);
        assert_eq!(o.candidate, Some(0.1));
    }

    #[test]
    fn too_little_data_is_inconclusive_never_healthy() {
        let c = check(r#"{"metric":"error_rate","max_increase":0.005}"#);
        // candidate below min_samples
        let w = window(vw(1000.0, 0.0, 50.0, 0.0), vw(20.0, 0.0, 50.0, 0.0));
        let o = evaluate_check(&c, &ctx(), &w);
        assert_eq!(o.verdict, CheckVerdict::Inconclusive);
        assert_eq!(o.detail, "candidate has 20 of 50 responses in the window");
        // stable below min_samples for a relative check
        let w = window(vw(10.0, 0.0, 50.0, 0.0), vw(1000.0, 0.0, 50.0, 0.0));
        assert_eq!(
            evaluate_check(&c, &ctx(), &w).verdict,
            CheckVerdict::Inconclusive
        );
        // ...but an absolute check does not need stable
        let abs = check(r#"{"metric":"error_rate","max":0.01}"#);
        assert_eq!(
            evaluate_check(&abs, &ctx(), &w).verdict,
            CheckVerdict::Passed
        );
        // no data at all
        let empty = WindowData::default();
        let o = evaluate_check(&c, &ctx(), &empty);
        assert_eq!(o.verdict, CheckVerdict::Inconclusive);
        let p = policy(r#"{"steps":[{"weight":5}]}"#);
        assert_eq!(
            interval_verdict(&evaluate_checks(&p, &ctx(), &empty), &ctx(), &empty),
            IntervalVerdict::Inconclusive,
            "no checks and no traffic is not a pass"
        );
        // explicit min_samples
        let c = check(r#"{"metric":"error_rate","max":0.01,"min_samples":10}"#);
        let w = window(vw(1000.0, 0.0, 50.0, 0.0), vw(20.0, 0.0, 50.0, 0.0));
        assert_eq!(evaluate_check(&c, &ctx(), &w).verdict, CheckVerdict::Passed);
    }

    #[test]
    fn an_idle_stable_uses_the_baseline_of_an_earlier_window() {
        let p = policy(
            r#"{"steps":[{"weight":50},{"weight":100}],"checks":[
              {"metric":"error_rate","max_increase":0.005}]}"#,
        );
        // step at 50 %: stable has data, the baseline is taken
        let w = window(vw(1000.0, 10.0, 50.0, 0.0), vw(1000.0, 12.0, 50.0, 0.0));
        let out = evaluate_checks(&p, &ctx(), &w);
        assert_eq!(out[0].verdict, CheckVerdict::Passed);
        let mut baselines = BTreeMap::new();
        update_baselines(&mut baselines, &out, 77);
        assert_eq!(baselines[&0].value, 0.01);
        // step at 100 %: no stable traffic
        let w = window(VariantWindow::default(), vw(1000.0, 100.0, 50.0, 0.0));
        let idle = EvalContext {
            stable_idle: true,
            baselines: Some(&baselines),
            ..ctx()
        };
        let out = evaluate_checks(&p, &idle, &w);
        assert_eq!(out[0].verdict, CheckVerdict::Failed);
        assert_eq!(out[0].stable_baseline_ms, Some(77));
        assert!(out[0]
            .detail
            .starts_with("candidate 0.100 > stable 0.010 + 0.005"));
        // a baseline does not replace itself
        update_baselines(&mut baselines, &out, 99);
        assert_eq!(baselines[&0].at_ms, 77);
        // without a baseline, or when stable is not idle: inconclusive
        let none = EvalContext {
            stable_idle: true,
            ..ctx()
        };
        assert_eq!(
            evaluate_checks(&p, &none, &w)[0].verdict,
            CheckVerdict::Inconclusive
        );
        let busy = EvalContext {
            baselines: Some(&baselines),
            ..ctx()
        };
        assert_eq!(
            evaluate_checks(&p, &busy, &w)[0].verdict,
            CheckVerdict::Inconclusive
        );
    }

    #[test]
    fn shadow_only_steps_judge_shadow_comparisons() {
        let p = policy(
            r#"{"steps":[{"shadow_only":true},{"weight":5}],"checks":[
              {"metric":"error_rate","max_increase":0.005},
              {"metric":"shadow_disagreement_rate","max":0.05}]}"#,
        );
        let mut w = window(vw(1000.0, 0.0, 50.0, 0.0), VariantWindow::default());
        w.shadow = ShadowWindow {
            compared: 200.0,
            agree: 140.0,
            disagree: 60.0,
        };
        let sctx = EvalContext {
            shadow_only: true,
            ..ctx()
        };
        let out = evaluate_checks(&p, &sctx, &w);
        assert_eq!(out[0].verdict, CheckVerdict::Skipped);
        assert_eq!(out[1].verdict, CheckVerdict::Failed);
        assert_eq!(out[1].detail, "candidate 0.300 > max 0.05");
        assert_eq!(interval_verdict(&out, &sctx, &w), IntervalVerdict::Failed);
        w.shadow.disagree = 2.0;
        let out = evaluate_checks(&p, &sctx, &w);
        assert_eq!(interval_verdict(&out, &sctx, &w), IntervalVerdict::Passed);
        // only skipped checks: passes on enough comparisons, else inconclusive
        let only_err = policy(
            r#"{"steps":[{"shadow_only":true}],"checks":[{"metric":"error_rate","max":0.01}]}"#,
        );
        let out = evaluate_checks(&only_err, &sctx, &w);
        assert_eq!(interval_verdict(&out, &sctx, &w), IntervalVerdict::Passed);
        w.shadow.compared = 3.0;
        let out = evaluate_checks(&only_err, &sctx, &w);
        assert_eq!(
            interval_verdict(&out, &sctx, &w),
            IntervalVerdict::Inconclusive
        );
    }

    #[test]
    fn stat_checks() {
        let mut w = window(vw(1000.0, 0.0, 50.0, 0.0), vw(1000.0, 0.0, 50.0, 0.0));
        w.stats.insert(
            "cluster.model_canary.upstream_rq_retry".into(),
            StatWindow {
                kind: Some(StatKind::Counter),
                increase: 50.0,
                last: None,
                seen: true,
            },
        );
        w.stats.insert(
            "cluster.model_stable.upstream_rq_retry".into(),
            StatWindow {
                kind: Some(StatKind::Counter),
                increase: 10.0,
                last: None,
                seen: true,
            },
        );
        // 50 in 10 s = 5/s vs 1/s
        let c = check(
            r#"{"metric":"stat","stat":"cluster.model_{variant}.upstream_rq_retry","max_ratio":2}"#,
        );
        let o = evaluate_check(&c, &ctx(), &w);
        assert_eq!(o.verdict, CheckVerdict::Failed);
        assert_eq!(o.candidate, Some(5.0));
        assert_eq!(o.stable, Some(1.0));
        let missing = check(r#"{"metric":"stat","stat":"nope","max":1}"#);
        let o = evaluate_check(&missing, &ctx(), &w);
        assert_eq!(o.verdict, CheckVerdict::Inconclusive);
        assert!(o.detail.contains("not found"), "{}", o.detail);
        w.stats.insert(
            "server.memory_allocated".into(),
            StatWindow {
                kind: Some(StatKind::Gauge),
                increase: 0.0,
                last: Some(7.0),
                seen: true,
            },
        );
        let g = check(r#"{"metric":"stat","stat":"server.memory_allocated","max":8}"#);
        assert_eq!(evaluate_check(&g, &ctx(), &w).verdict, CheckVerdict::Passed);
    }

    #[test]
    fn ab_checks() {
        let ab = |state| AbOutcome {
            state,
            detail: String::new(),
        };
        let w = WindowData::default();
        let better = check(r#"{"metric":"ab","require":"better"}"#);
        let not_worse = check(r#"{"metric":"ab","require":"not_worse"}"#);
        let cases = [
            (AbState::Better, CheckVerdict::Passed, CheckVerdict::Passed),
            (
                AbState::NoDifference,
                CheckVerdict::Inconclusive,
                CheckVerdict::Passed,
            ),
            (AbState::Worse, CheckVerdict::Failed, CheckVerdict::Failed),
            (
                AbState::NotReady,
                CheckVerdict::Inconclusive,
                CheckVerdict::Inconclusive,
            ),
        ];
        for (state, b, nw) in cases {
            let o = ab(state);
            let c = EvalContext {
                ab: Some(&o),
                ..ctx()
            };
            assert_eq!(evaluate_check(&better, &c, &w).verdict, b, "{state:?}");
            assert_eq!(evaluate_check(&not_worse, &c, &w).verdict, nw, "{state:?}");
        }
        assert_eq!(
            evaluate_check(&better, &ctx(), &w).verdict,
            CheckVerdict::Inconclusive
        );
    }

    #[test]
    fn verdict_aggregation() {
        let mk = |v| CheckOutcome {
            name: "x".into(),
            metric: CheckMetric::ErrorRate,
            verdict: v,
            candidate: None,
            stable: None,
            threshold: None,
            condition: String::new(),
            candidate_samples: 0.0,
            stable_samples: None,
            min_samples: 50,
            detail: String::new(),
            stable_baseline_ms: None,
        };
        let w = WindowData::default();
        use CheckVerdict::*;
        assert_eq!(
            interval_verdict(&[mk(Passed), mk(Inconclusive), mk(Failed)], &ctx(), &w),
            IntervalVerdict::Failed
        );
        assert_eq!(
            interval_verdict(&[mk(Passed), mk(Inconclusive)], &ctx(), &w),
            IntervalVerdict::Inconclusive
        );
        assert_eq!(
            interval_verdict(&[mk(Passed), mk(Skipped)], &ctx(), &w),
            IntervalVerdict::Passed
        );
    }

    #[test]
    fn streaks() {
        let mut s = Streak::default();
        s.record(IntervalVerdict::Failed);
        s.record(IntervalVerdict::Inconclusive);
        assert_eq!(
            s,
            Streak {
                failed: 1,
                inconclusive: 1
            }
        );
        s.record(IntervalVerdict::Failed);
        assert_eq!(
            s,
            Streak {
                failed: 2,
                inconclusive: 0
            }
        );
        s.record(IntervalVerdict::Passed);
        assert_eq!(s, Streak::default());
    }

    const POLICY: &str = r#"{"steps":[{"weight":1,"min_duration_s":60,"min_requests":100},
        {"weight":5,"min_duration_s":60,"min_requests":100,"gate":true},
        {"weight":100,"min_duration_s":0,"min_requests":0}],
        "failure_limit":2,"inconclusive_limit":3}"#;

    fn progress(step: usize, state: ProgressState) -> ProgressSpec {
        ProgressSpec {
            step,
            state,
            since_ms: 1_000_000,
            note: None,
        }
    }

    #[test]
    fn step_advancement_rules() {
        let p = policy(POLICY);
        let pr = progress(0, ProgressState::Progressing);
        let ok = Streak::default();
        let facts = |secs: u64, traffic: f64| StepFacts {
            now_ms: 1_000_000 + secs * 1000,
            step_traffic: traffic,
            blocked: None,
        };
        // too early
        assert!(matches!(
            decide(&p, &pr, ok, IntervalVerdict::Passed, &facts(30, 500.0)),
            Action::Stay(_)
        ));
        // too few requests
        let a = decide(&p, &pr, ok, IntervalVerdict::Passed, &facts(61, 50.0));
        assert_eq!(
            a,
            Action::Stay("passed; the step needs 50 more candidate requests".into())
        );
        // not passed this interval
        assert!(matches!(
            decide(
                &p,
                &pr,
                ok,
                IntervalVerdict::Inconclusive,
                &facts(61, 500.0)
            ),
            Action::Stay(_)
        ));
        // all three: advance
        assert_eq!(
            decide(&p, &pr, ok, IntervalVerdict::Passed, &facts(61, 500.0)),
            Action::Advance { to: 1 }
        );
        // a gate waits
        let pr1 = progress(1, ProgressState::Progressing);
        assert_eq!(
            decide(&p, &pr1, ok, IntervalVerdict::Passed, &facts(61, 500.0)),
            Action::Wait
        );
        // waiting never advances by itself
        let w = progress(1, ProgressState::Waiting);
        assert!(matches!(
            decide(&p, &w, ok, IntervalVerdict::Passed, &facts(600, 5000.0)),
            Action::Stay(_)
        ));
        // the last step completes
        let last = progress(2, ProgressState::Progressing);
        assert_eq!(
            decide(&p, &last, ok, IntervalVerdict::Passed, &facts(1, 0.0)),
            Action::Complete
        );
        // blocked (proxies behind): no advance, but a rollback still happens
        let blocked = StepFacts {
            blocked: Some("proxies behind".into()),
            ..facts(61, 500.0)
        };
        assert_eq!(
            decide(&p, &pr, ok, IntervalVerdict::Passed, &blocked),
            Action::Stay("passed; not moving on: proxies behind".into())
        );
        let failing = Streak {
            failed: 2,
            inconclusive: 0,
        };
        assert_eq!(
            decide(&p, &pr, failing, IntervalVerdict::Failed, &blocked),
            Action::Rollback
        );
        // auto_advance off waits at every step
        let mut manual = p.clone();
        manual.auto_advance = false;
        assert_eq!(
            decide(&manual, &pr, ok, IntervalVerdict::Passed, &facts(61, 500.0)),
            Action::Wait
        );
    }

    #[test]
    fn rollback_on_failure_limit_and_no_re_advance() {
        let p = policy(POLICY);
        let pr = progress(1, ProgressState::Progressing);
        let f = StepFacts {
            now_ms: 9_000_000,
            step_traffic: 1e6,
            blocked: None,
        };
        let mut s = Streak::default();
        s.record(IntervalVerdict::Failed);
        assert!(matches!(
            decide(&p, &pr, s, IntervalVerdict::Failed, &f),
            Action::Stay(_)
        ));
        s.record(IntervalVerdict::Failed);
        assert_eq!(
            decide(&p, &pr, s, IntervalVerdict::Failed, &f),
            Action::Rollback
        );
        // waiting and holding candidates are still watched
        for st in [ProgressState::Waiting, ProgressState::Holding] {
            assert_eq!(
                decide(&p, &progress(1, st), s, IntervalVerdict::Failed, &f),
                Action::Rollback
            );
        }
        // rolled back: nothing, whatever the verdict
        let rb = progress(1, ProgressState::RolledBack);
        for v in [IntervalVerdict::Passed, IntervalVerdict::Failed] {
            assert!(matches!(
                decide(&p, &rb, Streak::default(), v, &f),
                Action::Stay(_)
            ));
        }
        assert!(matches!(
            decide(
                &p,
                &progress(2, ProgressState::Complete),
                Streak::default(),
                IntervalVerdict::Passed,
                &f
            ),
            Action::Stay(_)
        ));
    }

    #[test]
    fn inconclusive_limit_holds_or_rolls_back() {
        let mut p = policy(POLICY);
        let pr = progress(0, ProgressState::Progressing);
        let f = StepFacts {
            now_ms: 9_000_000,
            step_traffic: 0.0,
            blocked: None,
        };
        let s = Streak {
            failed: 0,
            inconclusive: 3,
        };
        assert_eq!(
            decide(&p, &pr, s, IntervalVerdict::Inconclusive, &f),
            Action::Hold
        );
        let two = Streak {
            failed: 0,
            inconclusive: 2,
        };
        assert!(matches!(
            decide(&p, &pr, two, IntervalVerdict::Inconclusive, &f),
            Action::Stay(_)
        ));
        p.on_inconclusive_limit = OnInconclusive::Rollback;
        assert_eq!(
            decide(&p, &pr, s, IntervalVerdict::Inconclusive, &f),
            Action::Rollback
        );
        // already holding: stays
        p.on_inconclusive_limit = OnInconclusive::Hold;
        assert!(matches!(
            decide(
                &p,
                &progress(0, ProgressState::Holding),
                s,
                IntervalVerdict::Inconclusive,
                &f
            ),
            Action::Stay(_)
        ));
    }

    #[test]
    fn reasons_name_checks_values_and_thresholds() {
        let p = policy(POLICY);
        let w = window(vw(1000.0, 0.0, 50.0, 0.0), vw(1000.0, 201.0, 50.0, 0.0));
        let out = vec![evaluate_check(
            &check(r#"{"metric":"error_rate","max_increase":0.005}"#),
            &ctx(),
            &w,
        )];
        let s = Streak {
            failed: 2,
            inconclusive: 0,
        };
        assert_eq!(
            rollback_reason(&p, 1, s, &out),
            "policy: rollback at step 1 (5 %): check error_rate failed 2 intervals: \
             candidate 0.201 > stable 0.000 + 0.005"
        );
        assert_eq!(start_reason(&p), "policy: start at step 0 (1 %)");
        let hold = hold_reason(
            &p,
            0,
            Streak {
                failed: 0,
                inconclusive: 3,
            },
            &[],
        );
        assert_eq!(
            hold,
            "policy: hold at step 0 (1 %): inconclusive for 3 intervals: too little traffic"
        );
    }

    #[test]
    fn next_action_texts() {
        let p = policy(POLICY);
        let t = |ms: u64| format!("t{ms}");
        let facts = NextFacts {
            paused: false,
            streak: Streak::default(),
            step_traffic: 40.0,
            now_ms: 1_000_000,
            next_eval_ms: Some(1_001_000),
        };
        let n = next_action(
            &p,
            &progress(0, ProgressState::Progressing),
            "canary",
            &facts,
            &t,
        );
        assert_eq!(n.action, "advance");
        assert_eq!(n.at_ms, Some(1_060_000));
        assert_eq!(
            n.text,
            "advance to step 1 (5 %) at t1060000 if checks pass and 60 more candidate requests arrive"
        );
        let failing = NextFacts {
            streak: Streak {
                failed: 1,
                inconclusive: 0,
            },
            ..facts
        };
        let n = next_action(
            &p,
            &progress(0, ProgressState::Progressing),
            "canary",
            &failing,
            &t,
        );
        assert_eq!(
            n.text,
            "roll back if 1 more interval fails (next evaluation at t1001000)"
        );
        let n = next_action(
            &p,
            &progress(1, ProgressState::Waiting),
            "canary",
            &facts,
            &t,
        );
        assert_eq!(
            n.text,
            "waiting for promote: promote advances to step 2 (100 %)"
        );
    }
}
