//! The report of a rollout's A/B experiment (`GET /v1/experiments/{rollout}`) and
//! the verdict the policy engine's `ab` check reads, computed from the stored
//! outcomes (`store::outcomes`) with the statistics of `rollout_core::abtest`.
//!
//! Two ways to stop (`experiment.stopping`):
//!
//! - **fixed** (default): a variant's verdict uses exactly its first
//!   `samples_per_variant` outcomes in arrival order, and nothing is significant
//!   before every variant has that many.
//! - **sequential**: each variant's outcomes and the control's are replayed in
//!   arrival order into an mSPRT (`rollout_core::msprt`), looking after every
//!   outcome; the comparison decides the first time its always-valid p-value is at
//!   or below alpha, and keeps the figures of that moment. `samples_per_variant`
//!   is the most either arm reads: undecided there, no difference. Replayed on every
//!   report from the stored outcomes (a corrected reward changes the replay).

use std::collections::BTreeMap;

use rollout_core::abtest::{self, Summary, ZTest};
use rollout_core::experiment::{Experiment, ExperimentMetric, Stopping};
use rollout_core::msprt::SequentialTest;
use rollout_core::policy::AbRequirement;
use rollout_core::Rollout;

use crate::api::experiment::{
    Comparison, ExperimentReport, StoppedAt, VariantStats, VerdictStatus,
};
use crate::store::error::StoreError;
use crate::store::outcomes::{replay_pair, variant_outcomes, Arm, MAX_OUTCOMES_PER_VARIANT};
use crate::store::Store;

/// The verdict of a rollout's experiment, for the policy engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: VerdictStatus,
    /// Candidate vs control significant at `alpha`; false while collecting.
    pub significant: bool,
    /// `None` while collecting; once complete, whether the candidate's observed
    /// rate/mean is above the control's (read it together with `significant`).
    pub candidate_better: Option<bool>,
    pub control: String,
    pub candidate: String,
    /// Candidate minus control of the analysed outcomes.
    pub diff: Option<f64>,
    /// Two-sided p-value; `None` while collecting.
    pub p_value: Option<f64>,
    pub alpha: f64,
    pub samples_per_variant: u64,
    /// Outcomes joined per variant, in plan order.
    pub counts: Vec<(String, u64)>,
    pub stopping: Stopping,
    /// Sequential: where the candidate's comparison decided.
    pub stopped_at: Option<StoppedAt>,
}

impl Verdict {
    /// Whether the verdict meets a policy's `ab` requirement: `None` while
    /// collecting; `better`: significant and the candidate above the control;
    /// `not_worse`: not significantly below the control.
    pub fn satisfies(&self, require: AbRequirement) -> Option<bool> {
        if self.status == VerdictStatus::Collecting {
            return None;
        }
        let worse = self.significant && self.candidate_better == Some(false);
        Some(match require {
            AbRequirement::Better => self.significant && self.candidate_better == Some(true),
            AbRequirement::NotWorse => !worse,
        })
    }
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// The report of a rollout's experiment; `None` when the rollout has no
/// `experiment` section. Blocking (reads at most `samples_per_variant` outcomes
/// per variant).
pub fn report(store: &Store, rollout: &Rollout) -> Result<Option<ExperimentReport>, StoreError> {
    let Some(x) = &rollout.experiment else {
        return Ok(None);
    };
    let horizon = x.samples_per_variant;
    let names: Vec<&str> = rollout.variants.iter().map(|v| v.name.as_str()).collect();
    let data: Vec<(String, u64, Summary)> =
        variant_outcomes(store, &rollout.name, &names, horizon)?
            .into_iter()
            .zip(&names)
            .map(|((count, s), name)| (name.to_string(), count, s))
            .collect();
    let conversion = x.metric == ExperimentMetric::Conversion;
    let complete = !data.is_empty() && data.iter().all(|(_, count, _)| *count >= horizon);
    let variants: Vec<VariantStats> = data
        .iter()
        .map(|(name, count, s)| {
            let (estimate, ci) = if conversion {
                (
                    s.rate(),
                    abtest::wilson_interval(s.successes(), s.n(), x.alpha),
                )
            } else {
                (s.mean(), abtest::mean_interval(s, x.alpha))
            };
            VariantStats {
                name: name.clone(),
                count: *count,
                analysed: s.n(),
                conversion: conversion.then_some(estimate),
                mean: (!conversion).then_some(estimate),
                ci_low: ci.map(|i| i.low),
                ci_high: ci.map(|i| i.high),
            }
        })
        .collect();
    let test = |a: &Summary, b: &Summary| -> Option<ZTest> {
        if conversion {
            abtest::two_proportion_z(a.successes(), a.n(), b.successes(), b.n())
        } else {
            abtest::welch_z(a, b)
        }
    };
    let sequential = x.stopping == Stopping::Sequential;
    let mut comparisons = Vec::new();
    if let Some((control_name, _, control)) = data.first() {
        let control_estimate = variants.first().and_then(VariantStats::estimate);
        for ((name, _, s), stats) in data.iter().zip(&variants).skip(1) {
            if sequential {
                comparisons.push(sequential_comparison(
                    store,
                    &rollout.name,
                    control_name,
                    name,
                    x,
                    control_estimate,
                )?);
                continue;
            }
            let t = test(control, s);
            let diff = match (stats.estimate(), control_estimate) {
                (Some(b), Some(a)) => Some(b - a),
                _ => None,
            };
            let significant = complete && t.is_some_and(|t| t.significant(x.alpha));
            comparisons.push(Comparison {
                variant: name.clone(),
                against: control_name.clone(),
                diff,
                lift: match (diff, control_estimate) {
                    (Some(d), Some(a)) if a != 0.0 => Some(d / a),
                    _ => None,
                },
                z: t.filter(|_| complete).and_then(|t| finite(t.z)),
                p_value: t.filter(|_| complete).map(|t| t.p_value),
                significant,
                winner: match (significant, diff) {
                    (true, Some(d)) if d > 0.0 => Some(name.clone()),
                    (true, Some(_)) => Some(control_name.clone()),
                    _ => None,
                },
                stopped_at: None,
            });
        }
    }
    let control = rollout.variant_name(0).to_string();
    let candidate = rollout.variant_name(rollout.candidate).to_string();
    let headline = (rollout.candidate > 0)
        .then(|| comparisons.iter().find(|c| c.variant == candidate))
        .flatten();
    // Sequential: final as soon as the candidate's comparison decided.
    let complete = complete || (sequential && headline.is_some_and(|c| c.significant));
    let note = if horizon > MAX_OUTCOMES_PER_VARIANT {
        Some(format!(
            "samples_per_variant {horizon} is more than the {MAX_OUTCOMES_PER_VARIANT} outcomes \
             the sidecar keeps per variant: this experiment cannot complete"
        ))
    } else {
        None
    };
    let note = join_notes(note, evicted_note(store, &rollout.name, &names)?);
    Ok(Some(ExperimentReport {
        rollout: rollout.name.clone(),
        metric: x.metric,
        alpha: x.alpha,
        samples_per_variant: horizon,
        stopping: x.stopping,
        mixture_variance: x.mixture_variance,
        status: if complete {
            VerdictStatus::Complete
        } else {
            VerdictStatus::Collecting
        },
        test: match (sequential, conversion) {
            (true, _) => "msprt",
            (false, true) => "two_proportion_z_pooled",
            (false, false) => "welch_z",
        }
        .to_string(),
        interval: if conversion { "wilson" } else { "normal" }.to_string(),
        control,
        candidate,
        significant: headline.is_some_and(|c| c.significant),
        candidate_better: headline
            .filter(|_| complete)
            .and_then(|c| c.diff)
            .map(|d| d > 0.0),
        winner: headline.and_then(|c| c.winner.clone()),
        variants,
        comparisons,
        note,
        models: BTreeMap::new(),
    }))
}

/// Says when the data budget evicted outcomes of the experiment (`store::budget`:
/// outcomes go last, once no record and no assignment is left).
fn evicted_note(
    store: &Store,
    rollout: &str,
    variants: &[&str],
) -> Result<Option<String>, StoreError> {
    let mut lost = Vec::new();
    for v in variants {
        let n = store.outcomes_evicted(rollout, v)?;
        if n > 0 {
            lost.push(format!("{v} {n}"));
        }
    }
    Ok((!lost.is_empty()).then(|| {
        format!(
            "the data budget (--data-budget-bytes) evicted the oldest outcomes of this \
             experiment ({}): the figures cover the outcomes kept",
            lost.join(", ")
        )
    }))
}

fn join_notes(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    }
}

/// One variant against the control by the mSPRT: both arms' outcomes replayed in
/// arrival order, a look after every outcome (up to the horizon each).
fn sequential_comparison(
    store: &Store,
    rollout: &str,
    control: &str,
    variant: &str,
    x: &Experiment,
    control_estimate: Option<f64>,
) -> Result<Comparison, StoreError> {
    let mut test = SequentialTest::new(x.alpha, x.mixture_variance);
    let (mut c, mut t) = (Summary::new(), Summary::new());
    replay_pair(
        store,
        rollout,
        control,
        variant,
        x.samples_per_variant,
        &mut |arm, reward| {
            if test.stopped().is_some() {
                return;
            }
            match arm {
                Arm::Control => c.add(reward),
                Arm::Treatment => t.add(reward),
            }
            test.look(&c, &t);
        },
    )?;
    let stopped = test.stopped().copied();
    let diff = match stopped {
        Some(s) => Some(s.diff),
        None => match (t.mean(), c.mean()) {
            (Some(b), Some(a)) => Some(b - a),
            _ => None,
        },
    };
    let significant = stopped.is_some();
    Ok(Comparison {
        variant: variant.to_string(),
        against: control.to_string(),
        diff,
        lift: match (diff, control_estimate) {
            (Some(d), Some(a)) if a != 0.0 => Some(d / a),
            _ => None,
        },
        z: None,
        p_value: Some(test.p_value()),
        significant,
        winner: match (significant, diff) {
            (true, Some(d)) if d > 0.0 => Some(variant.to_string()),
            (true, Some(_)) => Some(control.to_string()),
            _ => None,
        },
        stopped_at: stopped.map(|s| StoppedAt {
            control: s.n_control,
            variant: s.n_treatment,
        }),
    })
}

/// The verdict of a rollout's experiment: `Ok(None)` when the rollout (as compiled
/// from the current plan) has no `experiment` section. Candidate = `rollout.candidate`
/// (the policy's candidate, default the last variant), control = the first variant.
/// Blocking: call it from `tokio::task::spawn_blocking` in async code.
pub fn verdict(store: &Store, rollout: &Rollout) -> Result<Option<Verdict>, StoreError> {
    let Some(r) = report(store, rollout)? else {
        return Ok(None);
    };
    let headline = r.comparisons.iter().find(|c| c.variant == r.candidate);
    Ok(Some(Verdict {
        status: r.status,
        significant: r.significant,
        candidate_better: r.candidate_better,
        diff: headline.and_then(|c| c.diff),
        p_value: headline.and_then(|c| c.p_value),
        alpha: r.alpha,
        samples_per_variant: r.samples_per_variant,
        counts: r
            .variants
            .iter()
            .map(|v| (v.name.clone(), v.count))
            .collect(),
        stopping: r.stopping,
        stopped_at: headline.and_then(|c| c.stopped_at),
        control: r.control,
        candidate: r.candidate,
    }))
}
