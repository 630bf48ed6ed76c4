//! `rollout-control watch --rollout R [--until-done]`: a live view of one rollout in
//! the terminal: its steps as a progress bar, the state and what happens next, the
//! current checks (value against threshold), the last events. On a terminal the view
//! is redrawn in place (ANSI: cursor home, clear); otherwise (a pipe, a CI log) each
//! change is printed once, as plain lines.
//!
//! With `--until-done` it exits when the rollout is finished: 0 when the candidate was
//! promoted (`complete`), 1 when it was rolled back, so a pipeline can wait on it.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use rollout_core::plan::RolloutSpec;
use rollout_core::policy::{step_weight, ProgressState};
use rollout_core::PlanSpec;

use crate::api::events::EventList;
use crate::api::status::{PolicyStatus, Status};
use crate::cli::checks::{checks_table, state_str};
use crate::cli::client::Client;
use crate::cli::table::fmt_weight;
use crate::util::query::encode_query_value;

/// Events shown under the view.
const LAST_EVENTS: usize = 6;
/// Width of the progress bar, in characters.
const BAR: usize = 30;

/// The steps as a bar and a list: `[#########.........] 25 %` and
/// `shadow > 5 % > [25 %] > 50 % > 100 %`.
fn steps_line(r: &RolloutSpec, p: &PolicyStatus) -> String {
    let Some(policy) = &r.policy else {
        return String::new();
    };
    let done = match p.state {
        Some(ProgressState::Complete) => policy.steps.len(),
        _ => p.step,
    };
    let filled = (BAR * done) / policy.steps.len().max(1);
    let bar: String = (0..BAR)
        .map(|i| if i < filled { '#' } else { '.' })
        .collect();
    let list: Vec<String> = policy
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let label = if s.shadow_only {
                "shadow".to_string()
            } else {
                format!("{} %", fmt_weight(step_weight(s)))
            };
            if i == p.step && !matches!(p.state, Some(ProgressState::Complete)) {
                format!("[{label}]")
            } else {
                label
            }
        })
        .collect();
    format!(
        "[{bar}] {done}/{} steps   {}",
        policy.steps.len(),
        list.join(" > ")
    )
}

/// One frame of the view.
fn frame(rollout: &str, r: &RolloutSpec, p: &PolicyStatus, events: &EventList) -> String {
    let mut out = Vec::new();
    let state = p.state.map_or("not started", state_str);
    let _ = writeln!(
        out,
        "rollout {rollout}: {} -> {}   {state} at {}   candidate weight {} %",
        p.stable,
        p.candidate,
        p.step_label,
        fmt_weight(p.weight)
    );
    let _ = writeln!(out, "  {}", steps_line(r, p));
    let _ = writeln!(out, "  next: {}", p.next_action.text);
    if let Some(h) = &p.held_by {
        let _ = writeln!(out, "  held by: {h}");
    }
    if let Some(v) = p.verdict {
        let _ = writeln!(
            out,
            "  last interval: {} (failed {}/{}, inconclusive {}/{})",
            v.as_str(),
            p.consecutive_failed,
            p.failure_limit,
            p.consecutive_inconclusive,
            p.inconclusive_limit
        );
    }
    let _ = checks_table(&mut out, &p.checks);
    if !events.events.is_empty() {
        let _ = writeln!(out, "  last events:");
        for e in &events.events {
            let _ = writeln!(
                out,
                "    {}  {:<13} {}: {}",
                e.time,
                e.kind.as_str(),
                e.step_label,
                e.reason
            );
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What one poll saw: the rollout's policy status, its plan entry, its last events.
fn poll(client: &Client, rollout: &str) -> anyhow::Result<(RolloutSpec, PolicyStatus, EventList)> {
    let status: Status = client.get("/v1/status")?.json()?;
    let plan: PlanSpec = client.get("/v1/plan")?.json()?;
    let events: EventList = client
        .get(&format!(
            "/v1/events?rollout={}&limit={LAST_EVENTS}",
            encode_query_value(rollout)
        ))?
        .json()?;
    let Some(sr) = status.rollouts.iter().find(|r| r.name == rollout) else {
        let known: Vec<&str> = status.rollouts.iter().map(|r| r.name.as_str()).collect();
        bail!("no rollout {rollout:?} (known: {})", known.join(", "));
    };
    let Some(p) = sr.policy.clone() else {
        bail!("rollout {rollout:?} has no policy: nothing moves it by itself");
    };
    let r = plan
        .rollouts
        .into_iter()
        .find(|r| r.name == rollout)
        .context("the rollout left the plan")?;
    Ok((r, p, events))
}

/// Runs the view until Ctrl-C, or with `until_done` until the rollout is finished.
pub fn run(
    out: &mut impl Write,
    client: &Client,
    rollout: &str,
    until_done: bool,
    every: Duration,
) -> anyhow::Result<()> {
    let tty = std::io::stdout().is_terminal();
    let mut last_frame = String::new();
    let mut last_event = 0u64;
    loop {
        let (r, p, events) = match poll(client, rollout) {
            Ok(x) => x,
            Err(e) if tty => {
                writeln!(out, "\x1b[H\x1b[2Jwatch: {e:#} (retrying)")?;
                out.flush()?;
                std::thread::sleep(every);
                continue;
            }
            Err(e) => return Err(e),
        };
        let f = frame(rollout, &r, &p, &events);
        if tty {
            write!(out, "\x1b[H\x1b[2J{f}")?;
        } else if f != last_frame {
            // Plain: the state line when it changes, and each new event once.
            let head = f.lines().next().unwrap_or("");
            if last_frame.lines().next() != Some(head) {
                writeln!(out, "{head}")?;
            }
            for e in events.events.iter().filter(|e| e.id > last_event) {
                writeln!(
                    out,
                    "event {} {}: {}: {}",
                    e.id,
                    e.kind.as_str(),
                    e.step_label,
                    e.reason
                )?;
            }
        }
        last_event = events
            .events
            .iter()
            .map(|e| e.id)
            .max()
            .unwrap_or(last_event);
        last_frame = f;
        out.flush()?;
        if until_done {
            match p.state {
                Some(ProgressState::Complete) => {
                    writeln!(
                        out,
                        "rollout {rollout}: promoted ({} is stable)",
                        p.candidate
                    )?;
                    return Ok(());
                }
                Some(ProgressState::RolledBack) => {
                    let why = p.note.unwrap_or_default();
                    bail!("rollout {rollout} was rolled back: {why}");
                }
                _ => {}
            }
        }
        std::thread::sleep(every);
    }
}
