//! `status`: plan version and age, weights per rollout, each policy (step, state,
//! streaks, checks, next action), the engine's sources, the polling proxies, the
//! data budget.

use std::io::Write;

use rollout_core::analysis::IntervalVerdict;

use crate::api::status::{DataBudget, EngineView, PolicyStatus, Status, StatusRollout};
use crate::cli::checks::{checks_table, state_str};
use crate::cli::client::Client;
use crate::cli::table::{fmt_age, fmt_weight, fmt_weights, table};

/// `status`.
pub fn run(out: &mut impl Write, json: bool, client: &Client) -> anyhow::Result<()> {
    let reply = client.get("/v1/status")?;
    if json {
        writeln!(out, "{}", reply.body)?;
    } else {
        print_status(out, &reply.json()?)?;
    }
    Ok(())
}

pub fn print_status(out: &mut impl Write, s: &Status) -> std::io::Result<()> {
    match (s.version, &s.updated) {
        (Some(v), Some(t)) => writeln!(
            out,
            "plan v{v}, updated {t} ({} ago)",
            fmt_age(s.age_seconds.unwrap_or(0.0))
        )?,
        _ => writeln!(out, "no plan stored yet")?,
    }
    if !s.rollouts.is_empty() {
        writeln!(out)?;
        let rows: Vec<Vec<String>> = s
            .rollouts
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    if r.paused { "yes" } else { "no" }.to_string(),
                    fmt_weights(r.variants.iter().map(|v| (v.name.as_str(), v.weight))),
                ]
            })
            .collect();
        table(out, &["ROLLOUT", "PAUSED", "WEIGHTS"], &rows)?;
        let models: Vec<Vec<String>> = s
            .rollouts
            .iter()
            .flat_map(|r| {
                r.variants.iter().filter_map(move |v| {
                    let m = v.model.as_ref()?;
                    let artifact = m.image_digest.as_ref().or(m.uri.as_ref());
                    Some(vec![
                        r.name.clone(),
                        v.name.clone(),
                        format!("{}:{}", m.name, m.version),
                        artifact.cloned().unwrap_or_else(|| "-".to_string()),
                        m.created.clone().unwrap_or_else(|| "-".to_string()),
                    ])
                })
            })
            .collect();
        if !models.is_empty() {
            writeln!(out)?;
            table(
                out,
                &["ROLLOUT", "VARIANT", "MODEL", "ARTIFACT", "CREATED"],
                &models,
            )?;
        }
        print_policies(out, &s.rollouts, s.policy_engine.as_ref())?;
    }
    writeln!(out)?;
    if s.proxies.is_empty() {
        writeln!(out, "no proxy has polled the plan yet")?;
    } else {
        let rows: Vec<Vec<String>> = s
            .proxies
            .iter()
            .map(|p| {
                vec![
                    p.id.clone(),
                    p.plan_version.map_or("-".to_string(), |v| format!("v{v}")),
                    p.behind.map_or("-".to_string(), |b| b.to_string()),
                    format!("{} ago", fmt_age(p.last_seen_seconds_ago)),
                ]
            })
            .collect();
        table(out, &["PROXY", "PLAN", "BEHIND", "LAST POLL"], &rows)?;
    }
    if let Some(d) = &s.data {
        print_data(out, d)?;
    }
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// The data budget: what is held, how far back it reaches, what was evicted.
fn print_data(out: &mut impl Write, d: &DataBudget) -> std::io::Result<()> {
    writeln!(out)?;
    let share = if d.budget_bytes > 0 {
        100.0 * d.bytes as f64 / d.budget_bytes as f64
    } else {
        0.0
    };
    let reach = d.oldest_age_seconds.map_or(String::new(), |a| {
        format!(", oldest item {} old", fmt_age(a))
    });
    writeln!(
        out,
        "data: {} of the {} budget ({share:.0} %){reach}",
        mib(d.bytes),
        mib(d.budget_bytes)
    )?;
    let rows: Vec<Vec<String>> = d
        .kinds
        .iter()
        .map(|(kind, k)| {
            vec![
                kind.clone(),
                k.items.to_string(),
                mib(k.bytes),
                k.evicted_items.to_string(),
                mib(k.evicted_bytes),
            ]
        })
        .collect();
    table(
        out,
        &["DATA", "HELD", "BYTES", "EVICTED", "EVICTED BYTES"],
        &rows,
    )
}

/// The policy part of `rollout-control status`.
pub fn print_policies(
    out: &mut impl Write,
    rollouts: &[StatusRollout],
    engine: Option<&EngineView>,
) -> std::io::Result<()> {
    let with: Vec<(&StatusRollout, &PolicyStatus)> = rollouts
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
            "policy engine: not running (serve without --envoy-admin or --prometheus-url): policies do not move"
        )?,
    }
    for (r, p) in with {
        writeln!(out)?;
        let state = p.state.map_or("not started", state_str);
        let since = p
            .time_in_step_s
            .map(|t| format!(" for {}", fmt_age(t)))
            .unwrap_or_default();
        writeln!(
            out,
            "{}: {} of {}, {state}{since}; {} at {} %{}",
            r.name,
            p.step_label,
            p.steps,
            p.candidate,
            fmt_weight(p.weight),
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
