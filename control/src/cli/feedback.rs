//! `feedback --file outcomes.jsonl`: posts A/B outcomes from a JSON-lines file, in
//! batches of `rollout_core::wire::MAX_BATCH`. The whole file is checked first; a
//! failed batch stops the command (the ones before it are stored, and posting the
//! file again is safe: a repeated outcome replaces itself).

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::api::experiment::{FeedbackResult, Outcome};
use crate::cli::client::Client;
use crate::util::input::read_input;

/// A line of an outcomes file: other fields are ignored.
#[derive(Debug, Deserialize)]
struct OutcomeLine {
    correlation_id: String,
    reward: f64,
}

/// Reads a JSON-lines file of `{"correlation_id", "reward"}` objects (`-`: stdin;
/// blank lines skipped). Errors name the line and the field.
pub fn read_outcomes(path: &Path) -> anyhow::Result<Vec<Outcome>> {
    let bytes = read_input(path)?;
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
    client: &Client,
    out: &mut impl Write,
    json: bool,
    path: &Path,
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
