//! Check evaluation: every `policy.checks[]` entry judged over one window as
//! passed / failed / inconclusive (too little data: never healthy) / skipped (not
//! applicable at a shadow-only step), with the values, threshold and a detail that
//! says why. Relative checks compare with the stable variant over the same window;
//! when the stable variant gets no traffic (a 100 % step) they compare with the
//! baseline of an earlier window instead.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::{AbRequirement, CheckMetric, CheckSpec, PolicySpec};

use super::drift::{self, DriftDetail, PsiBand, DRIFT_MIN_SAMPLES};
use super::histogram::EPSILON;
use super::window::{stat_key, VariantWindow, WindowData};

/// Samples each compared variant needs in a window when a check gives no `min_samples`.
pub const DEFAULT_MIN_SAMPLES: u64 = 50;
/// The latency percentile when a check gives none.
pub const DEFAULT_PERCENTILE: f64 = 99.0;

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
    /// A `prediction_drift` check: the method and both arms' bins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftDetail>,
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
        CheckMetric::PredictionDrift => "prediction_drift",
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
        CheckMetric::PredictionDrift => "predictions",
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
    drift: Option<DriftDetail>,
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
        drift: None,
    })
}

fn inconclusive(detail: String) -> Judged {
    Judged {
        verdict: CheckVerdict::Inconclusive,
        candidate: None,
        stable: None,
        threshold: None,
        detail,
        drift: None,
    }
}

fn skipped(detail: &str) -> Judged {
    Judged {
        verdict: CheckVerdict::Skipped,
        candidate: None,
        stable: None,
        threshold: None,
        detail: detail.to_string(),
        drift: None,
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
            method: None,
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
    let metric = c.metric;
    let min = c
        .min_samples
        .unwrap_or(if metric == CheckMetric::PredictionDrift {
            DRIFT_MIN_SAMPLES
        } else {
            DEFAULT_MIN_SAMPLES
        });
    let bound = bound_of(c);
    let condition = match (&bound, metric) {
        (_, CheckMetric::Ab) => match c.require.unwrap_or(AbRequirement::NotWorse) {
            AbRequirement::Better => "candidate significantly better".to_string(),
            AbRequirement::NotWorse => "candidate not significantly worse".to_string(),
        },
        (Some(b), _) => condition_text(metric, b),
        (None, _) => String::new(),
    };
    let rule = Rule {
        check: c,
        bound: bound.as_ref(),
        min,
    };
    let (judged, samples) = match metric {
        CheckMetric::ErrorRate | CheckMetric::Latency | CheckMetric::InvalidOutputRate => {
            judge_variants(&rule, ctx, w, baseline)
        }
        CheckMetric::ShadowDisagreementRate => judge_shadow(&rule, w),
        CheckMetric::Stat => judge_stat(&rule, ctx, w, baseline),
        CheckMetric::Ab => (judge_ab(c, ctx), Samples::default()),
        CheckMetric::PredictionDrift => judge_drift(&rule, ctx, w),
    };
    CheckOutcome {
        name: check_name(c),
        metric,
        verdict: judged.verdict,
        candidate: judged.candidate,
        stable: judged.stable,
        threshold: judged.threshold,
        condition,
        candidate_samples: samples.candidate,
        stable_samples: samples.stable,
        min_samples: min,
        detail: match (samples.baseline_ms, judged.verdict) {
            (Some(_), CheckVerdict::Passed | CheckVerdict::Failed) => {
                format!("{} (stable baseline from an earlier window)", judged.detail)
            }
            _ => judged.detail,
        },
        stable_baseline_ms: samples.baseline_ms.filter(|_| judged.stable.is_some()),
        drift: judged.drift,
    }
}

/// A check with its bound and the samples each compared variant needs.
struct Rule<'a> {
    check: &'a CheckSpec,
    bound: Option<&'a Bound>,
    min: u64,
}

impl Rule<'_> {
    fn relative(&self) -> bool {
        matches!(self.bound, Some(Bound::Increase(_) | Bound::Ratio(_)))
    }

    /// Fewer samples than the check needs.
    fn short(&self, samples: f64) -> bool {
        samples < self.min as f64
    }
}

/// The samples behind a judgement.
#[derive(Default)]
struct Samples {
    candidate: f64,
    /// Relative checks only.
    stable: Option<f64>,
    /// The stable side is the baseline of the window that ended then (unix ms).
    baseline_ms: Option<u64>,
}

/// The stable side of a relative check: this window's `(value, samples)`, or, when
/// `idle` (the stable variant gets no traffic at this step) and the window has too
/// few stable samples, the baseline from an earlier window (with its end time).
fn stable_side(
    rule: &Rule<'_>,
    own: (Option<f64>, f64),
    idle: bool,
    baseline: Option<&Baseline>,
) -> (Option<f64>, f64, Option<u64>) {
    let (value, samples) = own;
    let short = rule.short(samples) || value.is_none();
    match baseline {
        Some(b) if rule.relative() && idle && short => (Some(b.value), b.samples, Some(b.at_ms)),
        _ => (value, samples, None),
    }
}

const SHADOW_ONLY: &str = "no candidate traffic at a shadow-only step";

/// `error_rate`, `latency`, `invalid_output_rate`: the candidate's value against the
/// bound (relative bounds: against the stable variant's).
fn judge_variants(
    rule: &Rule<'_>,
    ctx: &EvalContext<'_>,
    w: &WindowData,
    baseline: Option<&Baseline>,
) -> (Judged, Samples) {
    if ctx.shadow_only {
        return (skipped(SHADOW_ONLY), Samples::default());
    }
    let metric = rule.check.metric;
    let noun = sample_noun(metric);
    let empty = VariantWindow::default();
    let cand = w.variant(ctx.candidate).unwrap_or(&empty);
    let stab = w.variant(ctx.stable).unwrap_or(&empty);
    let (cv, cn) = measure(metric, rule.check, cand);
    let own = measure(metric, rule.check, stab);
    let (sv, sn, baseline_ms) = stable_side(rule, own, ctx.stable_idle, baseline);
    let samples = Samples {
        candidate: cn,
        stable: rule.relative().then_some(sn),
        baseline_ms,
    };
    let judged = match (rule.bound, cv) {
        (None, _) => inconclusive("the check has no bound".to_string()),
        (Some(b), Some(cv)) if !rule.short(cn) => {
            if rule.relative() && (rule.short(sn) || sv.is_none()) {
                inconclusive(few("stable", sn, rule.min, noun))
            } else {
                judge(metric, b, cv, sv).unwrap_or_else(inconclusive)
            }
        }
        (Some(_), _) => inconclusive(few("candidate", cn, rule.min, noun)),
    };
    (judged, samples)
}

/// `shadow_disagreement_rate`: disagreements over comparisons (absolute bound only).
fn judge_shadow(rule: &Rule<'_>, w: &WindowData) -> (Judged, Samples) {
    let s = &w.shadow;
    let samples = Samples {
        candidate: s.compared,
        ..Samples::default()
    };
    let metric = rule.check.metric;
    let judged = match rule.bound {
        _ if rule.short(s.compared) || s.compared <= 0.0 => {
            inconclusive(few("shadow", s.compared, rule.min, sample_noun(metric)))
        }
        Some(b @ Bound::Max(_)) => {
            judge(metric, b, s.disagree / s.compared, None).unwrap_or_else(inconclusive)
        }
        _ => inconclusive("shadow_disagreement_rate takes max only".to_string()),
    };
    (judged, samples)
}

/// `stat`: a counter's rate or a gauge's value; per variant with `{variant}` in the
/// name (then relative bounds compare with the stable variant's stat).
fn judge_stat(
    rule: &Rule<'_>,
    ctx: &EvalContext<'_>,
    w: &WindowData,
    baseline: Option<&Baseline>,
) -> (Judged, Samples) {
    let stat = rule.check.stat.as_deref().unwrap_or("");
    let per_variant = stat.contains("{variant}");
    if ctx.shadow_only && per_variant {
        return (skipped(SHADOW_ONLY), Samples::default());
    }
    let metric = rule.check.metric;
    let noun = sample_noun(metric);
    let value_of = |variant: &str| {
        w.stats
            .get(&stat_key(stat, variant))
            .and_then(|s| s.value(w.span_s))
    };
    let key_c = stat_key(stat, ctx.candidate);
    let cv = value_of(ctx.candidate);
    // Confidence comes from traffic: candidate requests (shadow comparisons at a
    // shadow-only step); min_samples 0 only needs the stat to exist.
    let cn = if ctx.shadow_only {
        w.shadow.compared
    } else {
        w.variant(ctx.candidate).map_or(0.0, |v| v.requests)
    };
    let own = (
        per_variant.then(|| value_of(ctx.stable)).flatten(),
        w.variant(ctx.stable).map_or(0.0, |v| v.requests),
    );
    let (sv, sn, baseline_ms) = stable_side(rule, own, ctx.stable_idle && per_variant, baseline);
    let samples = Samples {
        candidate: cn,
        stable: rule.relative().then_some(sn),
        baseline_ms,
    };
    let relative = rule.relative();
    let judged = match (rule.bound, cv) {
        (None, _) => inconclusive("the check has no bound".to_string()),
        (_, None) => inconclusive(format!("stat {key_c} not found in the window")),
        _ if relative && !per_variant => {
            inconclusive("a relative stat check needs {variant} in the stat name".to_string())
        }
        _ if rule.short(cn) => inconclusive(few(
            "candidate",
            cn,
            rule.min,
            if ctx.shadow_only {
                "shadow comparisons"
            } else {
                noun
            },
        )),
        _ if relative && rule.short(sn) => inconclusive(few("stable", sn, rule.min, noun)),
        _ if relative && sv.is_none() => inconclusive(format!(
            "stat {} not found in the window",
            stat_key(stat, ctx.stable)
        )),
        (Some(b), Some(cv)) => judge(metric, b, cv, sv).unwrap_or_else(inconclusive),
    };
    (judged, samples)
}

/// `prediction_drift`: the drift of the candidate's predictions from the stable's
/// (at a shadow-only step: the shadow's from the primary's, every variant's bins
/// added up) by the check's method, against `max`. Both arms need `min_samples`
/// predictions. At a step where the stable variant gets no traffic (100 %) there is
/// nothing to compare with: skipped (earlier steps judged it).
fn judge_drift(rule: &Rule<'_>, ctx: &EvalContext<'_>, w: &WindowData) -> (Judged, Samples) {
    let method = rule.check.method.unwrap_or_default();
    let (arm, reference, cand, stab): (&str, &str, Vec<f64>, Vec<f64>) = if ctx.shadow_only {
        let mut primary: Vec<f64> = Vec::new();
        for bins in w.bins.values() {
            if primary.len() < bins.len() {
                primary.resize(bins.len(), 0.0);
            }
            for (p, c) in primary.iter_mut().zip(bins) {
                *p += c;
            }
        }
        ("shadow", "primary", w.shadow_bins.clone(), primary)
    } else {
        let get = |v: &str| w.bins.get(v).cloned().unwrap_or_default();
        ("candidate", "stable", get(ctx.candidate), get(ctx.stable))
    };
    let count = |b: &[f64]| b.iter().filter(|c| c.is_finite()).fold(0.0, |a, c| a + c);
    let (cn, sn) = (count(&cand), count(&stab));
    let samples = Samples {
        candidate: cn,
        stable: Some(sn),
        baseline_ms: None,
    };
    if !ctx.shadow_only && ctx.stable_idle && rule.short(sn) {
        return (
            skipped(
                "the stable variant gets no traffic at this step: no distribution to compare with",
            ),
            samples,
        );
    }
    let noun = "predictions";
    let detail = DriftDetail {
        method,
        arm: arm.to_string(),
        reference: reference.to_string(),
        candidate_bins: cand,
        stable_bins: stab,
        band: None,
        bin_names: Vec::new(),
    };
    let value = drift::drift(method, &detail.candidate_bins, &detail.stable_bins);
    let judged = match (rule.bound, value) {
        (Some(Bound::Max(max)), Some(v)) if !rule.short(cn) && !rule.short(sn) => {
            let pass = v <= max + EPSILON;
            let band = (method == crate::policy::DriftMethod::Psi).then(|| PsiBand::of(v));
            let label = drift::method_label(method);
            let reading = band
                .map(|b| format!(" ({})", b.as_str()))
                .unwrap_or_default();
            Judged {
                verdict: if pass {
                    CheckVerdict::Passed
                } else {
                    CheckVerdict::Failed
                },
                candidate: Some(v),
                stable: None,
                threshold: Some(*max),
                detail: format!(
                    "{label} {} {} max {max}{reading}: {arm} {cn:.0} vs {reference} {sn:.0} predictions",
                    fmt_num(v),
                    if pass { "<=" } else { ">" },
                ),
                drift: Some(DriftDetail { band, ..detail }),
            }
        }
        (Some(Bound::Max(_)), _) if rule.short(cn) || cn <= 0.0 => Judged {
            drift: Some(detail),
            ..inconclusive(few(arm, cn, rule.min, noun))
        },
        (Some(Bound::Max(_)), _) => Judged {
            drift: Some(detail),
            ..inconclusive(few(reference, sn, rule.min, noun))
        },
        _ => inconclusive("prediction_drift takes max only".to_string()),
    };
    (judged, samples)
}

/// `ab`: the experiment's verdict against the requirement.
fn judge_ab(c: &CheckSpec, ctx: &EvalContext<'_>) -> Judged {
    if ctx.shadow_only {
        return skipped(SHADOW_ONLY);
    }
    let require = c.require.unwrap_or(AbRequirement::NotWorse);
    let Some(ab) = ctx.ab else {
        return inconclusive("no A/B verdict available".to_string());
    };
    let verdict = match (ab.state, require) {
        (AbState::Worse, _) => CheckVerdict::Failed,
        (AbState::Better, _) => CheckVerdict::Passed,
        (AbState::NoDifference, AbRequirement::NotWorse) => CheckVerdict::Passed,
        (AbState::NoDifference, AbRequirement::Better) => CheckVerdict::Inconclusive,
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
        drift: None,
        detail: if ab.detail.is_empty() {
            format!("A/B: {state}")
        } else {
            format!("A/B: {state}: {}", ab.detail)
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::analysis::testkit::{check, ctx, policy, vw, window};
    use crate::analysis::verdict::{interval_verdict, IntervalVerdict};
    use crate::analysis::window::{StatKind, StatWindow, VariantWindow};

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
    fn prediction_drift_checks() {
        let mut w = window(vw(1000.0, 0.0, 50.0, 0.0), vw(1000.0, 0.0, 50.0, 0.0));
        let uniform = vec![0.0, 300.0, 300.0, 300.0, 300.0, 0.0, 0.0];
        let shifted = vec![0.0, 0.0, 200.0, 400.0, 600.0, 0.0, 0.0];
        w.bins.insert("stable".into(), uniform.clone());
        w.bins.insert("canary".into(), uniform.clone());
        let c = check(r#"{"metric":"prediction_drift","method":"psi","max":0.25}"#);
        let o = evaluate_check(&c, &ctx(), &w);
        assert_eq!(o.verdict, CheckVerdict::Passed);
        assert_eq!(o.candidate, Some(0.0));
        assert_eq!(o.min_samples, DRIFT_MIN_SAMPLES);
        assert_eq!(
            o.detail,
            "PSI 0.000 <= max 0.25 (no shift): candidate 1200 vs stable 1200 predictions"
        );
        let d = o.drift.unwrap();
        assert_eq!(d.band, Some(PsiBand::None));
        assert_eq!(d.candidate_bins, uniform);
        // shifted
        w.bins.insert("canary".into(), shifted.clone());
        let o = evaluate_check(&c, &ctx(), &w);
        assert_eq!(o.verdict, CheckVerdict::Failed);
        let want = drift::psi(&shifted, &uniform).unwrap();
        assert_eq!(o.candidate, Some(want));
        assert!(
            o.detail
                .starts_with(&format!("PSI {want:.3} > max 0.25 (major shift)")),
            "{}",
            o.detail
        );
        // JS names its method
        let js = check(r#"{"metric":"prediction_drift","method":"js","max":0.1}"#);
        let o = evaluate_check(&js, &ctx(), &w);
        assert_eq!(o.verdict, CheckVerdict::Failed);
        assert!(o.detail.starts_with("JS distance "), "{}", o.detail);
        assert_eq!(o.drift.unwrap().band, None);
        // too few predictions in either arm: inconclusive, never healthy
        let few = check(r#"{"metric":"prediction_drift","max":0.25,"min_samples":1500}"#);
        let o = evaluate_check(&few, &ctx(), &w);
        assert_eq!(o.verdict, CheckVerdict::Inconclusive);
        assert_eq!(
            o.detail,
            "candidate has 1200 of 1500 predictions in the window"
        );
        w.bins.insert("stable".into(), vec![0.0, 10.0]);
        let o = evaluate_check(&c, &ctx(), &w);
        assert_eq!(o.verdict, CheckVerdict::Inconclusive);
        assert_eq!(o.detail, "stable has 10 of 1000 predictions in the window");
        // no stable traffic at a 100 % step: skipped
        let idle = EvalContext {
            stable_idle: true,
            ..ctx()
        };
        assert_eq!(evaluate_check(&c, &idle, &w).verdict, CheckVerdict::Skipped);
    }

    #[test]
    fn shadow_drift_compares_the_shadow_with_every_primary_answer() {
        let mut w = window(vw(1000.0, 0.0, 50.0, 0.0), VariantWindow::default());
        w.bins.insert("stable".into(), vec![0.0, 500.0, 500.0]);
        w.bins.insert("canary".into(), vec![0.0, 100.0, 100.0]);
        w.shadow_bins = vec![0.0, 600.0, 600.0];
        let sctx = EvalContext {
            shadow_only: true,
            ..ctx()
        };
        let c = check(r#"{"metric":"prediction_drift","max":0.1}"#);
        let o = evaluate_check(&c, &sctx, &w);
        assert_eq!(o.verdict, CheckVerdict::Passed, "{}", o.detail);
        assert_eq!(
            o.detail,
            "PSI 0.000 <= max 0.1 (no shift): shadow 1200 vs primary 1200 predictions"
        );
        w.shadow_bins = vec![0.0, 1100.0, 100.0];
        let o = evaluate_check(&c, &sctx, &w);
        assert_eq!(o.verdict, CheckVerdict::Failed);
        let d = o.drift.unwrap();
        assert_eq!(
            (d.arm.as_str(), d.reference.as_str()),
            ("shadow", "primary")
        );
        assert_eq!(d.stable_bins, vec![0.0, 600.0, 600.0]);
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
}
