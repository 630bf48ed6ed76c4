//! (Being split: the analysis endpoint and the policy part of the CLI's output.)

use rollout_core::analysis::{self, CheckOutcome, IntervalVerdict};
use rollout_core::policy::{CheckMetric, ProgressState};

use crate::api::analysis::AnalysisReport;
use crate::api::status::{EngineView, PolicyStatus};

// ---------------------------------------------------------------------------
// GET /v1/rollouts/{name}/analysis

// ---------------------------------------------------------------------------
// CLI output

fn state_str(s: ProgressState) -> &'static str {
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

/// A table indented by two spaces.
fn indented_table(
    out: &mut impl std::io::Write,
    header: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    crate::cli::table(&mut buf, header, rows)?;
    for line in String::from_utf8_lossy(&buf).lines() {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

fn checks_table(out: &mut impl std::io::Write, checks: &[CheckOutcome]) -> std::io::Result<()> {
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

/// The policy part of `rollout-control status`.
pub fn print_policies(
    out: &mut impl std::io::Write,
    rollouts: &[crate::api::status::StatusRollout],
    engine: Option<&EngineView>,
) -> std::io::Result<()> {
    let with: Vec<(&crate::api::status::StatusRollout, &PolicyStatus)> = rollouts
        .iter()
        .filter_map(|r| r.policy.as_ref().map(|p| (r, p)))
        .collect();
    if with.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    match engine {
        Some(e) => {
            let envoys: Vec<String> = e
                .envoys
                .iter()
                .map(|x| match (&x.error, x.ok) {
                    (_, true) => format!("{} ok", x.url),
                    (Some(err), false) => format!("{} FAILING: {err}", x.url),
                    (None, false) => format!("{} not read yet", x.url),
                })
                .collect();
            writeln!(
                out,
                "policy engine: reads every {} ms ({:?}): {}",
                e.tick_ms,
                e.stats_format,
                envoys.join("; ")
            )?;
        }
        None => writeln!(
            out,
            "policy engine: not running (serve without --envoy-admin): policies do not move"
        )?,
    }
    for (r, p) in with {
        writeln!(out)?;
        let state = p.state.map_or("not started", state_str);
        let since = p
            .time_in_step_s
            .map(|t| format!(" for {}", crate::cli::fmt_age(t)))
            .unwrap_or_default();
        writeln!(
            out,
            "{}: {} of {}, {state}{since}; {} at {} %{}",
            r.name,
            p.step_label,
            p.steps,
            p.candidate,
            crate::cli::fmt_weight(p.weight),
            if r.paused { " (paused)" } else { "" }
        )?;
        if let Some(note) = &p.note {
            writeln!(out, "  note: {note}")?;
        }
        let traffic = if p.shadow_only {
            "shadow comparisons"
        } else {
            "candidate requests"
        };
        writeln!(
            out,
            "  last interval: {}{}; failed {}/{}, inconclusive {}/{}; {:.0} of {} {traffic} in the step (min {} s, interval {} s)",
            p.verdict.map_or("not evaluated yet", IntervalVerdict::as_str),
            p.evaluated
                .as_ref()
                .map(|t| format!(" at {t}"))
                .unwrap_or_default(),
            p.consecutive_failed,
            p.failure_limit,
            p.consecutive_inconclusive,
            p.inconclusive_limit,
            p.step_traffic,
            p.min_requests,
            p.min_duration_s,
            p.interval_s
        )?;
        checks_table(out, &p.checks)?;
        writeln!(out, "  next: {}", p.next_action.text)?;
        if let Some(e) = &p.error {
            writeln!(out, "  last error: {e}")?;
        }
    }
    Ok(())
}

/// `rollout-control analysis --rollout R`.
pub fn run_analysis(
    client: &crate::client::Client,
    out: &mut impl std::io::Write,
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
    crate::cli::table(
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
