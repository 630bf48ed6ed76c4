//! The shadow report of a rollout (`GET /v1/shadow-report`): agreement, verdict
//! counts, latency percentiles and the recent disagreements, computed from the
//! stored records (`store::shadow_records`). The records are a sample (see
//! [`SAMPLE_NOTE`]); the exact counts are Envoy's metrics.
//!
//! Memory is bounded whatever the store holds. The records are read one at a time
//! (one read transaction, each record decoded, folded in and dropped); what the
//! report keeps is
//!
//! - the counts: constant;
//! - two latencies per record in range (16 bytes each) for exact percentiles: at most
//!   `16 × MAX_RECORDS_PER_ROLLOUT` = 1.6 MB;
//! - the recent disagreements: at most `limit` (≤ 1,000) and at most `max_bytes` of
//!   JSON together (`--max-report-bytes`), the predictions kept as their JSON text
//!   ([`Prediction`]), never as parsed trees. Older disagreements beyond the bytes
//!   are dropped as newer ones arrive and counted in `disagreements_omitted`.
//!
//! Serializing the answer copies it once more, so one report costs at most about
//! `2 × max_bytes + 1.6 MB` above the sidecar's resting memory, plus the record being
//! decoded (a parsed array of numbers takes up to about 16 times its JSON:
//! `--max-record-bytes` bounds that) and redb's page cache (16 MiB, shared);
//! `--heavy-reads` bounds how many run at once.

use std::collections::{BTreeMap, VecDeque};

use rollout_core::answer::Verdict;
use rollout_core::wire::json_len;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::api::shadow::{
    Disagreement, LatencyReport, LatencySummary, Prediction, ShadowReport, SAMPLE_NOTE,
};
use crate::store::error::StoreError;
use crate::store::shadow_records;
use crate::store::Store;

/// Latency summary of the records in a report (ms; nearest-rank percentiles).
fn latency_summary(mut values: Vec<u64>) -> LatencySummary {
    values.sort_unstable();
    let n = values.len();
    let rank = |p: u64| -> Option<u64> {
        if n == 0 {
            return None;
        }
        // nearest rank: the smallest value with at least p % of the values <= it
        let r = (p as usize * n).div_ceil(100).max(1);
        values.get(r - 1).copied()
    };
    let mean = (n > 0).then(|| {
        let sum: u128 = values.iter().map(|v| u128::from(*v)).sum();
        ((sum as f64 / n as f64) * 1000.0).round() / 1000.0
    });
    LatencySummary {
        p50: rank(50),
        p90: rank(90),
        p99: rank(99),
        mean,
    }
}

/// A prediction as JSON text (`null` if it could not be written, which a parsed
/// value never fails).
fn prediction(v: &Value) -> Prediction {
    Prediction(serde_json::value::to_raw_value(v).unwrap_or_else(|_| Box::<RawValue>::default()))
}

/// Whether a stored prediction is the marker of one cut at ingest
/// (`ShadowRecord::fit`).
fn is_cut(v: &Value) -> bool {
    v.get("truncated_from_bytes").is_some() && v.get("prefix").is_some()
}

/// What a report lists and how much: at most `limit` disagreements of at most
/// `max_bytes` of JSON together.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub limit: usize,
    pub max_bytes: usize,
}

/// The newest disagreements within [`Bounds`], fed oldest first.
struct Recent {
    bounds: Bounds,
    list: VecDeque<(usize, Disagreement)>,
    bytes: usize,
    /// Disagreements fed.
    seen: usize,
}

impl Recent {
    fn push(&mut self, d: Disagreement) {
        self.seen += 1;
        if self.bounds.limit == 0 {
            return;
        }
        // Its bytes in the answer: its JSON and a comma.
        let size = json_len(&d).saturating_add(1);
        if self.list.len() == self.bounds.limit {
            if let Some((s, _)) = self.list.pop_front() {
                self.bytes -= s;
            }
        }
        self.bytes += size;
        self.list.push_back((size, d));
        while self.bytes > self.bounds.max_bytes {
            let Some((s, _)) = self.list.pop_front() else {
                break;
            };
            self.bytes -= s;
        }
    }

    /// Newest first, and how many within the limit the bytes left out.
    fn finish(self) -> (Vec<Disagreement>, u64) {
        // What the limit alone would have listed, less what is listed.
        let omitted = self.seen.min(self.bounds.limit) - self.list.len();
        (
            self.list.into_iter().rev().map(|(_, d)| d).collect(),
            omitted as u64,
        )
    }
}

/// The report of one rollout's records since `since_ms`. `sample_percent`: the
/// current plan's `shadow.records.sample_percent`, if any. Blocking.
pub fn shadow_report(
    store: &Store,
    rollout: &str,
    since_ms: Option<u64>,
    bounds: Bounds,
    sample_percent: Option<f64>,
) -> Result<ShadowReport, StoreError> {
    let mut by_verdict: BTreeMap<String, u64> = Verdict::ALL
        .iter()
        .map(|v| (v.as_str().to_string(), 0))
        .collect();
    let (mut agree, mut total) = (0u64, 0u64);
    let (mut primary, mut shadow) = (Vec::new(), Vec::new());
    let (mut first, mut last) = (None, None);
    let mut recent = Recent {
        bounds,
        list: VecDeque::new(),
        bytes: 0,
        seen: 0,
    };
    let mut truncated = 0u64;
    shadow_records::scan(store, rollout, since_ms, |r| {
        total += 1;
        if is_cut(&r.primary_prediction) || is_cut(&r.shadow_prediction) {
            truncated += 1;
        }
        if r.agree {
            agree += 1;
        }
        *by_verdict
            .entry(r.verdict.as_str().to_string())
            .or_insert(0) += 1;
        primary.push(r.primary_latency_ms);
        shadow.push(r.shadow_latency_ms);
        first = first.or(Some(r.unix_ms));
        last = Some(r.unix_ms);
        if !r.agree {
            recent.push(Disagreement {
                correlation_id: r.correlation_id,
                variant: r.variant,
                verdict: r.verdict.as_str().to_string(),
                primary_prediction: prediction(&r.primary_prediction),
                shadow_prediction: prediction(&r.shadow_prediction),
                primary_status: r.primary_status,
                shadow_status: r.shadow_status,
                unix_ms: r.unix_ms,
            });
        }
    })?;
    let (recent_disagreements, disagreements_omitted) = recent.finish();
    let disagree = total - agree;
    let rate = |a: f64, d: f64| {
        let n = a + d;
        (n > 0.0).then(|| ((a / n) * 1e6).round() / 1e6)
    };
    let estimated = match sample_percent {
        Some(sp) if sp > 0.0 => rate(agree as f64 * 100.0 / sp, disagree as f64),
        _ => None,
    };
    Ok(ShadowReport {
        rollout: rollout.to_string(),
        sampled: true,
        note: SAMPLE_NOTE.to_string(),
        since_ms,
        records: total,
        compared: total,
        agree,
        disagree,
        agreement_rate: rate(agree as f64, disagree as f64),
        estimated_agreement_rate: estimated,
        by_verdict,
        latency: LatencyReport {
            primary: latency_summary(primary),
            shadow: latency_summary(shadow),
        },
        first_unix_ms: first,
        last_unix_ms: last,
        truncated,
        recent_disagreements,
        disagreements_omitted,
        models: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disagreement(i: usize, prediction_len: usize) -> Disagreement {
        let text = format!("\"{}\"", "x".repeat(prediction_len));
        Disagreement {
            correlation_id: format!("req-{i:06}"),
            variant: "canary".into(),
            verdict: "prediction".into(),
            primary_prediction: Prediction(RawValue::from_string(text.clone()).unwrap()),
            shadow_prediction: Prediction(RawValue::from_string(text).unwrap()),
            primary_status: 200,
            shadow_status: 200,
            unix_ms: i as u64,
        }
    }

    fn run(limit: usize, max_bytes: usize, n: usize, len: usize) -> (Vec<u64>, u64, usize) {
        let mut r = Recent {
            bounds: Bounds { limit, max_bytes },
            list: VecDeque::new(),
            bytes: 0,
            seen: 0,
        };
        for i in 0..n {
            r.push(disagreement(i, len));
        }
        let bytes = r.bytes;
        let (list, omitted) = r.finish();
        (list.iter().map(|d| d.unix_ms).collect(), omitted, bytes)
    }

    #[test]
    fn recent_disagreements_keep_to_the_limit_and_the_bytes() {
        // the count binds: the newest 3, nothing omitted
        let (ids, omitted, _) = run(3, 1 << 20, 10, 100);
        assert_eq!((ids, omitted), (vec![9, 8, 7], 0));
        // the bytes bind: each about 1,150 bytes, 4 fit in 5,000; 6 of the 10 omitted
        let (ids, omitted, bytes) = run(1000, 5000, 10, 500);
        assert_eq!(ids, vec![9, 8, 7, 6]);
        assert_eq!(omitted, 6);
        assert!(bytes <= 5000);
        // one larger than the bytes: none listed, counted
        assert_eq!(run(10, 100, 2, 500).0, Vec::<u64>::new());
        assert_eq!(run(10, 100, 2, 500).1, 2);
        assert_eq!(run(0, 100, 5, 1), (vec![], 0, 0));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let l = latency_summary((1..=100).collect());
        assert_eq!((l.p50, l.p90, l.p99), (Some(50), Some(90), Some(99)));
        assert_eq!(l.mean, Some(50.5));
        let one = latency_summary(vec![7]);
        assert_eq!((one.p50, one.p99, one.mean), (Some(7), Some(7), Some(7.0)));
        let none = latency_summary(vec![]);
        assert_eq!((none.p50, none.mean), (None, None));
        let l = latency_summary(vec![10, 1, 5]);
        assert_eq!((l.p50, l.p90), (Some(5), Some(10)));
    }
}
