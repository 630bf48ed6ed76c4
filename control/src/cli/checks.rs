//! The policy's checks and states as the CLI shows them (`status`, `analysis`).

use std::io::Write;

use rollout_core::analysis::{self, CheckOutcome, DriftDetail};
use rollout_core::policy::{CheckMetric, ProgressState};

use crate::cli::table::indented_table;

/// A progress state as written in the plan.
pub fn state_str(s: ProgressState) -> &'static str {
    match s {
        ProgressState::Progressing => "progressing",
        ProgressState::Waiting => "waiting",
        ProgressState::Holding => "holding",
        ProgressState::RolledBack => "rolled_back",
        ProgressState::Complete => "complete",
    }
}

fn fmt_opt(metric: CheckMetric, v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| analysis::fmt_value(metric, v))
}

/// The checks of an evaluation: value, stable value, threshold, verdict, samples.
pub fn checks_table(out: &mut impl Write, checks: &[CheckOutcome]) -> std::io::Result<()> {
    if checks.is_empty() {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.verdict.as_str().to_string(),
                fmt_opt(c.metric, c.candidate),
                fmt_opt(c.metric, c.stable),
                fmt_opt(c.metric, c.threshold),
                format!("{:.0}", c.candidate_samples),
                c.detail.clone(),
            ]
        })
        .collect();
    indented_table(
        out,
        &[
            "CHECK",
            "VERDICT",
            "CANDIDATE",
            "STABLE",
            "THRESHOLD",
            "SAMPLES",
            "DETAIL",
        ],
        &rows,
    )?;
    for c in checks {
        if let Some(d) = &c.drift {
            drift_bins(out, &c.name, d)?;
        }
    }
    Ok(())
}

/// A drift check's bins: each bin's share of predictions in both arms.
fn drift_bins(out: &mut impl Write, name: &str, d: &DriftDetail) -> std::io::Result<()> {
    let total = |b: &[f64]| b.iter().sum::<f64>();
    let (ct, st) = (total(&d.candidate_bins), total(&d.stable_bins));
    if ct <= 0.0 && st <= 0.0 {
        return Ok(());
    }
    let n = d.candidate_bins.len().max(d.stable_bins.len());
    let share = |b: &[f64], i: usize, t: f64| {
        let c = b.get(i).copied().unwrap_or(0.0);
        if t > 0.0 {
            format!("{c:.0} ({:.1} %)", 100.0 * c / t)
        } else {
            format!("{c:.0}")
        }
    };
    let rows: Vec<Vec<String>> = (0..n)
        .filter(|i| {
            d.candidate_bins.get(*i).copied().unwrap_or(0.0) > 0.0
                || d.stable_bins.get(*i).copied().unwrap_or(0.0) > 0.0
        })
        .map(|i| {
            vec![
                d.bin_names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("bin {i}")),
                share(&d.candidate_bins, i, ct),
                share(&d.stable_bins, i, st),
            ]
        })
        .collect();
    writeln!(
        out,
        "  {name}: {} vs {} predictions by bin",
        d.arm, d.reference
    )?;
    indented_table(
        out,
        &["BIN", &d.arm.to_uppercase(), &d.reference.to_uppercase()],
        &rows,
    )
}
