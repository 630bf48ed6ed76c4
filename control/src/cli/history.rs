//! `history [--limit N]`: plan versions, newest first.

use std::io::Write;

use crate::api::history::HistoryEntry;
use crate::cli::client::Client;
use crate::cli::table::{fmt_weights, table};

/// `history`.
pub fn run(out: &mut impl Write, json: bool, client: &Client, limit: usize) -> anyhow::Result<()> {
    let reply = client.get(&format!("/v1/history?limit={limit}"))?;
    if json {
        writeln!(out, "{}", reply.body)?;
    } else {
        let entries: Vec<HistoryEntry> = reply.json()?;
        print_history(out, &entries)?;
    }
    Ok(())
}

pub fn print_history(out: &mut impl Write, entries: &[HistoryEntry]) -> std::io::Result<()> {
    if entries.is_empty() {
        return writeln!(out, "no plan stored yet");
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let weights = e
                .weights
                .0
                .iter()
                .map(|(r, vs)| {
                    format!(
                        "{r}: {}",
                        fmt_weights(vs.0.iter().map(|(n, w)| (n.as_str(), *w)))
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            vec![
                format!("v{}", e.version),
                e.time.clone(),
                e.op.clone(),
                e.author.clone(),
                weights,
                e.reason.clone(),
            ]
        })
        .collect();
    table(
        out,
        &["VERSION", "TIME", "OP", "AUTHOR", "WEIGHTS", "REASON"],
        &rows,
    )
}
