//! Parsing the answers of Envoy's admin stats endpoints into a [`Snapshot`]:
//!
//! - `/stats?format=json&histogram_buckets=detailed`: counters and gauges as
//!   `{"name", "value"}` with their full dotted names (ours are split into metric and
//!   labels by `rollout_core::stats::parse_stat_name`); histograms with Envoy's own
//!   fine bins (`totals`: `lower_bound`, `width`, cumulative `count`; about two
//!   significant digits, so 51 ms and 52 ms are different bins). A second answer with
//!   `type=Gauges` tells gauges from counters.
//! - `/stats/prometheus`: `# TYPE` lines tell the kind, histograms are cumulative
//!   `_bucket{le=...}` counts (Envoy's default buckets 0.5, 1, 5, 10, 25, 50, 100,
//!   250, 500, 1000, ... ms: coarser than the JSON bins).
//!
//! Both end up as the same series keys.

use std::collections::HashMap;

use rollout_core::analysis::Histogram;
use serde_json::Value;

use crate::engine::source::series::{parse_labels, SeriesKey};
use crate::engine::source::snapshot::{Reading, Snapshot};

const UPTIME_JSON: &str = "server.uptime";
const UPTIME_PROM: &str = "envoy_server_uptime";

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Parses `GET /stats?format=json&histogram_buckets=detailed`. `gauges` is the answer
/// of the same request with `type=Gauges` (names listed there are gauges); without
/// it every value outside our namespace except `server.uptime` is a counter.
pub fn parse_json(body: &str, gauges: Option<&str>) -> Result<Snapshot, String> {
    let v: Value =
        serde_json::from_str(body).map_err(|e| format!("stats JSON does not parse: {e}"))?;
    let stats = v
        .get("stats")
        .and_then(Value::as_array)
        .ok_or("stats JSON has no \"stats\" array")?;
    let mut gauge_names: std::collections::HashSet<String> = std::collections::HashSet::new();
    if let Some(g) = gauges {
        let gv: Value =
            serde_json::from_str(g).map_err(|e| format!("gauges JSON does not parse: {e}"))?;
        for s in gv
            .get("stats")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = s.get("name").and_then(Value::as_str) {
                gauge_names.insert(n.to_string());
            }
        }
    }
    let mut snap = Snapshot::default();
    for s in stats {
        if let Some(h) = s.get("histograms") {
            for d in h
                .get("details")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(name) = d.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let mut hist = Histogram::default();
                for b in d
                    .get("totals")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let (Some(lo), Some(width), Some(count)) = (
                        b.get("lower_bound").and_then(num),
                        b.get("width").and_then(num),
                        b.get("count").and_then(num),
                    ) else {
                        continue;
                    };
                    hist.add(lo, lo + width.max(0.0), count);
                }
                snap.series
                    .insert(SeriesKey::from_envoy_name(name), Reading::Histogram(hist));
            }
            continue;
        }
        let (Some(name), Some(value)) = (
            s.get("name").and_then(Value::as_str),
            s.get("value").and_then(num),
        ) else {
            // text readouts and the like
            continue;
        };
        if name == UPTIME_JSON {
            snap.uptime_s = Some(value);
        }
        let reading = if name == UPTIME_JSON || gauge_names.contains(name) {
            Reading::Gauge(value)
        } else {
            Reading::Counter(value)
        };
        snap.series
            .insert(SeriesKey::from_envoy_name(name), reading);
    }
    Ok(snap)
}

fn prom_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        other => other.parse().ok(),
    }
}

/// Parses Envoy's `/stats/prometheus` text.
pub fn parse_prometheus(text: &str) -> Result<Snapshot, String> {
    let mut types: HashMap<&str, &str> = HashMap::new();
    let mut snap = Snapshot::default();
    let mut buckets: HashMap<SeriesKey, Vec<(f64, f64)>> = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.split_whitespace();
            if parts.next() == Some("TYPE") {
                if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                    types.insert(name, kind);
                }
            }
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        let name = line.get(..name_end).unwrap_or("");
        let after = line.get(name_end..).unwrap_or("");
        let (labels, rest) = if after.starts_with('{') {
            parse_labels(after).ok_or_else(|| format!("bad labels in line {line:?}"))?
        } else {
            (Vec::new(), after)
        };
        let Some(value) = rest.split_whitespace().next().and_then(prom_value) else {
            return Err(format!("no value in line {line:?}"));
        };
        let hist_base = |suffix: &str| {
            name.strip_suffix(suffix)
                .filter(|b| types.get(b) == Some(&"histogram"))
        };
        if let Some(base) = hist_base("_bucket") {
            let mut le = None;
            let rest_labels: Vec<(String, String)> = labels
                .into_iter()
                .filter(|(k, v)| {
                    if k == "le" {
                        le = prom_value(v);
                        false
                    } else {
                        true
                    }
                })
                .collect();
            if let Some(le) = le {
                buckets
                    .entry(SeriesKey::new(base, rest_labels))
                    .or_default()
                    .push((le, value));
            }
            continue;
        }
        if hist_base("_sum").is_some() || hist_base("_count").is_some() {
            continue;
        }
        if name == UPTIME_PROM {
            snap.uptime_s = Some(value);
        }
        let reading = match types.get(name) {
            Some(&"counter") => Reading::Counter(value),
            _ => Reading::Gauge(value),
        };
        snap.series.insert(SeriesKey::new(name, labels), reading);
    }
    for (k, b) in buckets {
        snap.series
            .insert(k, Reading::Histogram(Histogram::from_cumulative(&b)));
    }
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::source::series::Selector;

    const JSON: &str = r#"{"stats":[
      {"name":"server.uptime","value":260},
      {"name":"wasmcustom.model_rollout.rollout.fraud.variant.canary.class.5xx.responses_total","value":7},
      {"name":"wasmcustom.model_rollout.rollout.fraud.variant.canary.requests_total","value":35},
      {"name":"cluster.model_canary.upstream_rq_active","value":3},
      {"name":"some.text","value":"hello"},
      {"histograms":{"supported_percentiles":[0,50,99],"details":[
        {"name":"wasmcustom.model_rollout.rollout.fraud.variant.canary.latency_ms",
         "totals":[{"lower_bound":51,"width":1,"count":13},{"lower_bound":52,"width":1,"count":10}],
         "intervals":[],"percentiles":[]}]}}]}"#;

    #[test]
    fn json_names_become_labelled_series() {
        let gauges = r#"{"stats":[{"name":"cluster.model_canary.upstream_rq_active","value":3}]}"#;
        let s = parse_json(JSON, Some(gauges)).unwrap();
        assert_eq!(s.uptime_s, Some(260.0));
        assert_eq!(
            s.series.get(&SeriesKey::of(
                "model_rollout_responses_total",
                &[
                    ("class", "5xx"),
                    ("rollout", "fraud"),
                    ("variant", "canary")
                ]
            )),
            Some(&Reading::Counter(7.0))
        );
        assert_eq!(
            s.series.get(&SeriesKey::of(
                "cluster.model_canary.upstream_rq_active",
                &[]
            )),
            Some(&Reading::Gauge(3.0))
        );
        let Some(Reading::Histogram(h)) = s.series.get(&SeriesKey::of(
            "model_rollout_latency_ms",
            &[("rollout", "fraud"), ("variant", "canary")],
        )) else {
            panic!("no histogram")
        };
        assert_eq!(h.count(), 23.0);
    }

    const PROM: &str = r#"# TYPE envoy_server_uptime gauge
envoy_server_uptime{} 261
# TYPE model_rollout_requests_total counter
model_rollout_requests_total{rollout="fraud",variant="canary"} 35
# TYPE envoy_cluster_upstream_rq counter
envoy_cluster_upstream_rq{envoy_response_code="500",envoy_cluster_name="model_canary"} 7
# TYPE model_rollout_latency_ms histogram
model_rollout_latency_ms_bucket{rollout="fraud",variant="canary",le="50"} 0
model_rollout_latency_ms_bucket{rollout="fraud",variant="canary",le="100"} 35
model_rollout_latency_ms_bucket{rollout="fraud",variant="canary",le="+Inf"} 35
model_rollout_latency_ms_sum{rollout="fraud",variant="canary"} 1902.33
model_rollout_latency_ms_count{rollout="fraud",variant="canary"} 35
"#;

    #[test]
    fn prometheus_text_gives_the_same_keys() {
        let s = parse_prometheus(PROM).unwrap();
        assert_eq!(s.uptime_s, Some(261.0));
        assert_eq!(
            s.series.get(&SeriesKey::of(
                "model_rollout_requests_total",
                &[("rollout", "fraud"), ("variant", "canary")]
            )),
            Some(&Reading::Counter(35.0))
        );
        let Some(Reading::Histogram(h)) = s.series.get(&SeriesKey::of(
            "model_rollout_latency_ms",
            &[("rollout", "fraud"), ("variant", "canary")],
        )) else {
            panic!("no histogram")
        };
        assert_eq!(h.count(), 35.0);
        assert_eq!(h.percentile(50.0), Some(75.0));
        let sel =
            Selector::parse(r#"envoy_cluster_upstream_rq{envoy_cluster_name="model_canary"}"#);
        assert!(s.series.keys().any(|k| sel.matches(k)));
        assert!(parse_prometheus("x{a=\"1\"}").is_err());
    }
}
