//! The shadow report of a rollout (`GET /v1/shadow-report`): agreement, verdict
//! counts, latency percentiles and the recent disagreements, computed from the
//! stored records (`store::shadow_records`). The records are a sample (see
//! [`SAMPLE_NOTE`]); the exact counts are Envoy's metrics.

use std::collections::{BTreeMap, VecDeque};

use rollout_core::answer::Verdict;

use crate::api::shadow::{Disagreement, LatencyReport, LatencySummary, ShadowReport, SAMPLE_NOTE};
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

/// The report of one rollout's records since `since_ms`. `sample_percent`: the
/// current plan's `shadow.records.sample_percent`, if any. Blocking.
pub fn shadow_report(
    store: &Store,
    rollout: &str,
    since_ms: Option<u64>,
    limit: usize,
    sample_percent: Option<f64>,
) -> Result<ShadowReport, StoreError> {
    let mut by_verdict: BTreeMap<String, u64> = Verdict::ALL
        .iter()
        .map(|v| (v.as_str().to_string(), 0))
        .collect();
    let (mut agree, mut total) = (0u64, 0u64);
    let (mut primary, mut shadow) = (Vec::new(), Vec::new());
    let (mut first, mut last) = (None, None);
    let mut recent: VecDeque<Disagreement> = VecDeque::new();
    shadow_records::scan(store, rollout, since_ms, |r| {
        total += 1;
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
        if !r.agree && limit > 0 {
            if recent.len() == limit {
                recent.pop_front();
            }
            recent.push_back(Disagreement {
                correlation_id: r.correlation_id,
                variant: r.variant,
                verdict: r.verdict.as_str().to_string(),
                primary_prediction: r.primary_prediction,
                shadow_prediction: r.shadow_prediction,
                primary_status: r.primary_status,
                shadow_status: r.shadow_status,
                unix_ms: r.unix_ms,
            });
        }
    })?;
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
        recent_disagreements: recent.into_iter().rev().collect(),
        models: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
