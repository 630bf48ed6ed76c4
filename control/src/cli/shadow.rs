//! `shadow-report --rollout R [--limit N] [--since-ms T]`: shadow agreement
//! (sampled), verdict counts, latency percentiles, recent disagreements with their
//! correlation ids.

use std::io::Write;

use crate::api::shadow::{LatencySummary, ShadowReport, SAMPLE_NOTE};
use crate::cli::client::Client;
use crate::cli::table::{pct, table};
use crate::util::timefmt::rfc3339_ms;

fn opt<T: ToString>(x: Option<T>) -> String {
    x.map_or("-".to_string(), |x| x.to_string())
}

/// Up to `max` characters of a prediction's JSON.
fn short_json(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// The human form of a report: summary, latency table, recent disagreements.
pub fn print_report(out: &mut impl Write, r: &ShadowReport) -> std::io::Result<()> {
    writeln!(
        out,
        "rollout {}: {} shadow records{}",
        r.rollout,
        r.records,
        r.since_ms
            .map(|s| format!(" since {}", rfc3339_ms(s)))
            .unwrap_or_default()
    )?;
    writeln!(out, "  ({SAMPLE_NOTE})")?;
    if !r.models.is_empty() {
        let models: Vec<String> = r
            .models
            .iter()
            .map(|(v, m)| format!("{v} = {}:{}", m.name, m.version))
            .collect();
        writeln!(out, "models: {}", models.join(", "))?;
    }
    if r.records == 0 {
        return Ok(());
    }
    writeln!(
        out,
        "agreement {} of the records ({} agree, {} disagree); estimated over all comparisons: {}",
        pct(r.agreement_rate),
        r.agree,
        r.disagree,
        pct(r.estimated_agreement_rate)
    )?;
    let verdicts: Vec<String> = r
        .by_verdict
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    writeln!(out, "by verdict: {}", verdicts.join(" "))?;
    writeln!(out)?;
    let lat = |name: &str, l: &LatencySummary| {
        vec![
            name.to_string(),
            opt(l.p50),
            opt(l.p90),
            opt(l.p99),
            l.mean.map_or("-".to_string(), |m| format!("{m:.1}")),
        ]
    };
    table(
        out,
        &["LATENCY MS", "P50", "P90", "P99", "MEAN"],
        &[
            lat("primary", &r.latency.primary),
            lat("shadow", &r.latency.shadow),
        ],
    )?;
    writeln!(out)?;
    if r.recent_disagreements.is_empty() {
        return writeln!(out, "no disagreement recorded");
    }
    if r.truncated > 0 {
        writeln!(
            out,
            "{} records had their predictions cut at ingest (--max-record-bytes): \
             {{\"truncated_from_bytes\": N, \"prefix\": ...}}",
            r.truncated
        )?;
    }
    if r.disagreements_omitted > 0 {
        writeln!(
            out,
            "{} older disagreements left out: the listed ones reached the sidecar's \
             --max-report-bytes",
            r.disagreements_omitted
        )?;
    }
    writeln!(out, "recent disagreements, newest first:")?;
    let rows: Vec<Vec<String>> = r
        .recent_disagreements
        .iter()
        .map(|d| {
            vec![
                rfc3339_ms(d.unix_ms),
                d.correlation_id.clone(),
                d.variant.clone(),
                d.verdict.clone(),
                format!("{}/{}", d.primary_status, d.shadow_status),
                short_json(d.primary_prediction.json(), 40),
                short_json(d.shadow_prediction.json(), 40),
            ]
        })
        .collect();
    table(
        out,
        &[
            "TIME",
            "CORRELATION ID",
            "VARIANT",
            "VERDICT",
            "STATUS P/S",
            "PRIMARY",
            "SHADOW",
        ],
        &rows,
    )
}

/// `rollout-control shadow-report --rollout R [--limit N] [--since-ms T]`.
pub fn run_report(
    client: &Client,
    out: &mut impl Write,
    json: bool,
    rollout: &str,
    limit: Option<usize>,
    since_ms: Option<u64>,
) -> anyhow::Result<()> {
    rollout_core::fields::check_name("--rollout", rollout).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut path = format!("/v1/shadow-report?rollout={rollout}");
    if let Some(l) = limit {
        path.push_str(&format!("&limit={l}"));
    }
    if let Some(s) = since_ms {
        path.push_str(&format!("&since_ms={s}"));
    }
    let reply = client.get(&path)?;
    if json {
        writeln!(out, "{}", reply.body)?;
    } else {
        print_report(out, &reply.json()?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_predictions() {
        assert_eq!(short_json("[0.5]", 10), "[0.5]");
        assert_eq!(short_json("\"abcdefghijkl\"", 6), "\"abcd…");
    }
}
