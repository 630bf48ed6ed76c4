//! The policy's checks and states as the CLI shows them (`status`, `analysis`).

use std::io::Write;

use rollout_core::analysis::{self, CheckOutcome};
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
    )
}
