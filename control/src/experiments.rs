//! A/B experiments: which variant served each (sampled) correlation id, outcomes
//! keyed by correlation id, and the fixed-horizon verdict of a rollout's
//! `experiment` section.
//!
//! | method | path | answer |
//! |---|---|---|
//! | POST | `/v1/assignments` | `{"proxy", "assignments": [{"correlation_id", "rollout", "variant", "unix_ms"}]}` (at most 1,000, 4 MiB): 200 `{"stored": n}` |
//! | POST | `/v1/feedback` | `{"outcomes": [{"correlation_id", "reward"}]}` or one `{"correlation_id", "reward"}`: 200 `{"accepted", "unknown", "dropped"}` |
//! | GET  | `/v1/experiments/{rollout}` | per-variant counts, rates or means with confidence intervals, comparisons against the first variant, status `collecting` / `complete` |
//! | POST | `/v1/experiments/{rollout}/reset` | deletes the rollout's assignments and outcomes: 200 `{"assignments_deleted", "outcomes_deleted"}` |
//!
//! The statistics are `rollout_core::abtest`. The analysis is fixed-horizon: a
//! variant's verdict uses exactly its first `samples_per_variant` outcomes in
//! arrival order, and nothing is significant before every variant has that many.
//!
//! Storage, in the store's redb file (one write transaction per call, fsynced
//! before the answer):
//!
//! - `assignments`: correlation id -> (rollout, variant, unix_ms, seq);
//!   `assignment_order`: (rollout, unix_ms, seq) -> correlation id;
//!   `assignment_counts`: rollout -> n. At most [`MAX_ASSIGNMENTS_PER_ROLLOUT`] per
//!   rollout; beyond it the oldest (smallest `unix_ms`) are dropped.
//! - `outcomes`: correlation id -> (rollout, variant, seq, reward);
//!   `outcome_order`: (rollout, variant, seq) -> (correlation id, reward);
//!   `outcome_counts`: (rollout, variant) -> n. `seq` is the arrival order. At
//!   most [`MAX_OUTCOMES_PER_VARIANT`] per variant; later ones are `dropped` (they
//!   could never enter a supported analysis). Outcomes stay when their assignment
//!   is dropped.

use rollout_core::experiment::ExperimentMetric;
use serde::{Deserialize, Serialize};

use crate::api::experiment::{
    ExperimentReport, FeedbackResult, Outcome, ResetResult, VerdictStatus,
};

// ---------------------------------------------------------------------------
// Assignments

// ---------------------------------------------------------------------------
// Feedback

// ---------------------------------------------------------------------------
// Reset

// ---------------------------------------------------------------------------
// Analysis

// ---------------------------------------------------------------------------
// HTTP

// ---------------------------------------------------------------------------
// CLI output

fn pct(x: Option<f64>) -> String {
    x.map_or("-".to_string(), |x| format!("{:.2}%", x * 100.0))
}

fn num(x: Option<f64>) -> String {
    x.map_or("-".to_string(), |x| format!("{x:.4}"))
}

/// The human form of a report.
pub fn print_report(out: &mut impl std::io::Write, r: &ExperimentReport) -> std::io::Result<()> {
    let conversion = r.metric == ExperimentMetric::Conversion;
    let status = match r.status {
        VerdictStatus::Collecting => "collecting",
        VerdictStatus::Complete => "complete",
    };
    writeln!(
        out,
        "experiment {}: {} metric, alpha {}, fixed horizon {} outcomes per variant: {status}",
        r.rollout,
        if conversion { "conversion" } else { "mean" },
        r.alpha,
        r.samples_per_variant
    )?;
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
    crate::cli::table(
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
                    if c.significant { "yes" } else { "no" }.to_string(),
                    c.winner.clone().unwrap_or_else(|| "-".to_string()),
                ]
            })
            .collect();
        crate::cli::table(
            out,
            &[
                "COMPARISON",
                "DIFF",
                "LIFT",
                "Z",
                "P-VALUE",
                "SIGNIFICANT",
                "WINNER",
            ],
            &rows,
        )?;
    }
    writeln!(out)?;
    let verdict = match (r.status, r.significant, r.candidate_better) {
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
    client: &crate::client::Client,
    out: &mut impl std::io::Write,
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
    client: &crate::client::Client,
    out: &mut impl std::io::Write,
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

/// A line of an outcomes file: other fields are ignored.
#[derive(Debug, Deserialize)]
struct OutcomeLine {
    correlation_id: String,
    reward: f64,
}

/// Reads a JSON-lines file of `{"correlation_id", "reward"}` objects (`-`: stdin;
/// blank lines skipped). Errors name the line and the field.
pub fn read_outcomes(path: &std::path::Path) -> anyhow::Result<Vec<Outcome>> {
    let bytes = crate::validate::read_input(path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut de = serde_json::Deserializer::from_str(line);
        let parsed: Result<OutcomeLine, _> = serde_path_to_error::deserialize(&mut de);
        let o = parsed.map_err(|e| {
            let e = rollout_core::ConfigError::from_serde(e);
            anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1)
        })?;
        if !rollout_core::correlation::is_valid(&o.correlation_id) {
            anyhow::bail!(
                "{}:{}: correlation_id: {:?} is not a correlation id",
                path.display(),
                n + 1,
                o.correlation_id
            );
        }
        out.push(Outcome {
            correlation_id: o.correlation_id,
            reward: o.reward,
        });
    }
    Ok(out)
}

/// Totals of `rollout-control feedback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FeedbackTotals {
    pub outcomes: u64,
    pub batches: u64,
    pub accepted: u64,
    pub unknown: u64,
    pub dropped: u64,
}

/// `rollout-control feedback --file outcomes.jsonl`: the whole file is read and
/// checked first, then posted in batches of [`rollout_core::wire::MAX_BATCH`]. A failed
/// batch stops the command; the batches before it are stored, and posting the
/// file again is safe (a repeated outcome replaces itself).
pub fn run_feedback(
    client: &crate::client::Client,
    out: &mut impl std::io::Write,
    json: bool,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let outcomes = read_outcomes(path)?;
    let mut totals = FeedbackTotals {
        outcomes: outcomes.len() as u64,
        ..FeedbackTotals::default()
    };
    for (i, batch) in outcomes.chunks(rollout_core::wire::MAX_BATCH).enumerate() {
        let body = serde_json::to_vec(&serde_json::json!({ "outcomes": batch }))?;
        let reply = client
            .write("POST", "/v1/feedback", Some(body), None)
            .map_err(|e| {
                anyhow::anyhow!(
                    "batch {} (outcomes {} to {}): {e:#}",
                    i + 1,
                    i * rollout_core::wire::MAX_BATCH + 1,
                    i * rollout_core::wire::MAX_BATCH + batch.len()
                )
            })?;
        let r: FeedbackResult = reply.json()?;
        totals.batches += 1;
        totals.accepted += r.accepted;
        totals.unknown += r.unknown;
        totals.dropped += r.dropped;
    }
    if json {
        writeln!(out, "{}", serde_json::to_string(&totals)?)?;
    } else {
        writeln!(
            out,
            "{} outcomes in {} batch(es): {} accepted, {} unknown (no assignment known){}",
            totals.outcomes,
            totals.batches,
            totals.accepted,
            totals.unknown,
            if totals.dropped > 0 {
                format!(", {} dropped (variant full)", totals.dropped)
            } else {
                String::new()
            }
        )?;
    }
    Ok(())
}
