//! `experiment --rollout R` (the A/B report: per-variant outcomes, rate or mean with
//! CI, comparisons, verdict) and `reset-experiment --rollout R`.

use std::io::Write;

use rollout_core::experiment::{ExperimentMetric, Stopping};

use crate::api::experiment::{ExperimentReport, ResetResult, VerdictStatus};
use crate::cli::client::Client;
use crate::cli::table::{pct, table};

fn num(x: Option<f64>) -> String {
    x.map_or("-".to_string(), |x| format!("{x:.4}"))
}

/// The human form of a report.
pub fn print_report(out: &mut impl Write, r: &ExperimentReport) -> std::io::Result<()> {
    let conversion = r.metric == ExperimentMetric::Conversion;
    let status = match r.status {
        VerdictStatus::Collecting => "collecting",
        VerdictStatus::Complete => "complete",
    };
    let sequential = r.stopping == Stopping::Sequential;
    let how = if sequential {
        format!(
            "sequential (mSPRT, always-valid p-values, tau^2 {}), at most {} outcomes per variant",
            r.mixture_variance
                .map_or("default".to_string(), |t| t.to_string()),
            r.samples_per_variant
        )
    } else {
        format!(
            "fixed horizon {} outcomes per variant",
            r.samples_per_variant
        )
    };
    writeln!(
        out,
        "experiment {}: {} metric, alpha {}, {how}: {status}",
        r.rollout,
        if conversion { "conversion" } else { "mean" },
        r.alpha,
    )?;
    for (v, m) in &r.models {
        writeln!(out, "  {v}: model {}:{}", m.name, m.version)?;
    }
    if let Some(n) = &r.note {
        writeln!(out, "note: {n}")?;
    }
    writeln!(out)?;
    let level = format!("{}% CI", ((1.0 - r.alpha) * 1000.0).round() / 10.0);
    let fmt = |x: Option<f64>| if conversion { pct(x) } else { num(x) };
    let rows: Vec<Vec<String>> = r
        .variants
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                v.count.to_string(),
                v.analysed.to_string(),
                fmt(v.estimate()),
                match (v.ci_low, v.ci_high) {
                    (Some(l), Some(h)) => format!("[{}, {}]", fmt(Some(l)), fmt(Some(h))),
                    _ => "-".to_string(),
                },
            ]
        })
        .collect();
    table(
        out,
        &[
            "VARIANT",
            "OUTCOMES",
            "ANALYSED",
            if conversion { "CONVERSION" } else { "MEAN" },
            &level,
        ],
        &rows,
    )?;
    if !r.comparisons.is_empty() {
        writeln!(out)?;
        let rows: Vec<Vec<String>> = r
            .comparisons
            .iter()
            .map(|c| {
                vec![
                    format!("{} vs {}", c.variant, c.against),
                    match c.diff {
                        Some(d) if conversion => format!("{:+.2}pp", d * 100.0),
                        Some(d) => format!("{d:+.4}"),
                        None => "-".to_string(),
                    },
                    c.lift
                        .map_or("-".to_string(), |l| format!("{:+.1}%", l * 100.0)),
                    c.z.map_or("-".to_string(), |z| format!("{z:.3}")),
                    match c.p_value {
                        Some(p) if p < 0.0001 => "<0.0001".to_string(),
                        Some(p) => format!("{p:.4}"),
                        None => "-".to_string(),
                    },
                    match (c.significant, c.stopped_at) {
                        (true, Some(at)) => format!("yes (at {}/{})", at.variant, at.control),
                        (true, None) => "yes".to_string(),
                        (false, _) => "no".to_string(),
                    },
                    c.winner.clone().unwrap_or_else(|| "-".to_string()),
                ]
            })
            .collect();
        table(
            out,
            &[
                "COMPARISON",
                "DIFF",
                "LIFT",
                "Z",
                if sequential {
                    "ALWAYS-VALID P"
                } else {
                    "P-VALUE"
                },
                "SIGNIFICANT",
                "WINNER",
            ],
            &rows,
        )?;
    }
    writeln!(out)?;
    let verdict = match (r.status, r.significant, r.candidate_better) {
        (VerdictStatus::Collecting, _, _) if sequential => format!(
            "collecting: not decided yet (the verdict may be read at any time; it stops at the \
             first always-valid p-value <= {} or at {} outcomes per variant)",
            r.alpha, r.samples_per_variant
        ),
        (VerdictStatus::Collecting, _, _) => {
            let missing: Vec<String> = r
                .variants
                .iter()
                .filter(|v| v.count < r.samples_per_variant)
                .map(|v| format!("{} {}/{}", v.name, v.count, r.samples_per_variant))
                .collect();
            format!(
                "collecting: no significance before every variant has {} outcomes ({})",
                r.samples_per_variant,
                missing.join(", ")
            )
        }
        (VerdictStatus::Complete, true, Some(true)) => format!(
            "{} is better than {} (significant at alpha {})",
            r.candidate, r.control, r.alpha
        ),
        (VerdictStatus::Complete, true, _) => format!(
            "{} is worse than {} (significant at alpha {})",
            r.candidate, r.control, r.alpha
        ),
        (VerdictStatus::Complete, false, _) => format!(
            "no significant difference between {} and {} at alpha {}",
            r.candidate, r.control, r.alpha
        ),
    };
    writeln!(out, "verdict: {verdict}")
}

// ---------------------------------------------------------------------------
// CLI commands

fn rollout_segment(rollout: &str) -> anyhow::Result<&str> {
    rollout_core::fields::check_name("--rollout", rollout).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(rollout)
}

/// `rollout-control experiment --rollout R`.
pub fn run_experiment(
    client: &Client,
    out: &mut impl Write,
    json: bool,
    rollout: &str,
) -> anyhow::Result<()> {
    let reply = client.get(&format!("/v1/experiments/{}", rollout_segment(rollout)?))?;
    if json {
        writeln!(out, "{}", reply.body)?;
    } else {
        print_report(out, &reply.json()?)?;
    }
    Ok(())
}

/// `rollout-control reset-experiment --rollout R`.
pub fn run_reset(
    client: &Client,
    out: &mut impl Write,
    json: bool,
    rollout: &str,
) -> anyhow::Result<()> {
    let path = format!("/v1/experiments/{}/reset", rollout_segment(rollout)?);
    let reply = client.write("POST", &path, None, None)?;
    if json {
        writeln!(out, "{}", reply.body)?;
    } else {
        let r: ResetResult = reply.json()?;
        writeln!(
            out,
            "experiment data of {rollout} deleted: {} assignments, {} outcomes",
            r.assignments_deleted, r.outcomes_deleted
        )?;
    }
    Ok(())
}
