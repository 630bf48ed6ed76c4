//! `analysis --rollout R [--limit N] [--version V]`: the policy's decisions (time,
//! step, verdict, action, version written, reason) and the checks of the latest one.

use std::io::Write;

use rollout_core::analysis::IntervalVerdict;

use crate::api::analysis::AnalysisReport;
use crate::cli::checks::{checks_table, state_str};
use crate::cli::client::Client;
use crate::cli::table::table;

/// `rollout-control analysis --rollout R`.
pub fn run_analysis(
    client: &Client,
    out: &mut impl Write,
    json: bool,
    rollout: &str,
    limit: usize,
    version: Option<u64>,
) -> anyhow::Result<()> {
    let mut path = format!("/v1/rollouts/{rollout}/analysis?limit={limit}");
    if let Some(v) = version {
        path.push_str(&format!("&version={v}"));
    }
    let reply = client.get(&path)?;
    if json {
        writeln!(out, "{}", reply.body)?;
        return Ok(());
    }
    let a: AnalysisReport = reply.json()?;
    writeln!(
        out,
        "{} (plan v{}){}",
        a.rollout,
        a.plan_version,
        if a.engine_running {
            ""
        } else {
            ": the policy engine is not running"
        }
    )?;
    if let Some(p) = &a.status {
        writeln!(
            out,
            "{} of {}, {}; next: {}",
            p.step_label,
            p.steps,
            p.state.map_or("not started", state_str),
            p.next_action.text
        )?;
    }
    if a.decisions.is_empty() {
        writeln!(out, "no decisions stored")?;
        return Ok(());
    }
    writeln!(out)?;
    let rows: Vec<Vec<String>> = a
        .decisions
        .iter()
        .map(|d| {
            vec![
                d.time.clone(),
                d.step_label.clone(),
                d.verdict.map_or("-", IntervalVerdict::as_str).to_string(),
                d.action.clone(),
                d.plan_version
                    .map_or_else(|| "-".to_string(), |v| format!("v{v}")),
                match &d.error {
                    Some(e) => format!("{} (not applied: {e})", d.reason),
                    None => d.reason.clone(),
                },
            ]
        })
        .collect();
    table(
        out,
        &["TIME", "STEP", "VERDICT", "ACTION", "WROTE", "REASON"],
        &rows,
    )?;
    if let Some(d) = a.decisions.first() {
        if !d.checks.is_empty() {
            writeln!(out)?;
            writeln!(out, "checks of the latest decision ({}):", d.time)?;
            checks_table(out, &d.checks)?;
        }
    }
    Ok(())
}
