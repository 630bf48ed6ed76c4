//! The PromQL the Prometheus source runs each tick: one instant query per metric
//! family of the filter, each `sum by (...)` over every proxy of the
//! `increase(...[R])` over the range `R` since the previous read, so a rollout's
//! figures are fleet-wide; the latency histogram's buckets summed by `le` (the window
//! adds them up and takes its percentile like `histogram_quantile` does, by linear
//! interpolation inside the bucket); and each `stat` selector as a counter's increase
//! or a gauge across proxies (`max` for the filter's `model_rollout_tripped`, so
//! `local_trip` fails when any proxy tripped; `sum` for any other gauge).
//!
//! Every query carries the labels its answer is keyed by, so that the answer's series
//! become the same [`SeriesKey`](crate::engine::source::series::SeriesKey)s the Envoy
//! admin reader produces (`rollout_metrics` reads both alike).

use crate::engine::source::series::Selector;

/// The filter's latency histogram (its `_bucket` series are queried).
pub const LATENCY: &str = "model_rollout_latency_ms";
/// The filter's per-proxy trip gauge (read as the max over proxies).
pub const TRIPPED: &str = "model_rollout_tripped";

/// The counter families the windows read and the labels each is summed by.
pub const COUNTERS: &[(&str, &[&str])] = &[
    ("model_rollout_requests_total", &["rollout", "variant"]),
    (
        "model_rollout_responses_total",
        &["rollout", "variant", "class"],
    ),
    (
        "model_rollout_outputs_checked_total",
        &["rollout", "variant"],
    ),
    (
        "model_rollout_invalid_outputs_total",
        &["rollout", "variant"],
    ),
    ("model_rollout_shadow_compared_total", &["rollout"]),
    ("model_rollout_shadow_agree_total", &["rollout"]),
    ("model_rollout_shadow_disagree_total", &["rollout"]),
    (
        "model_rollout_predictions_total",
        &["rollout", "variant", "bin"],
    ),
    (
        "model_rollout_shadow_predictions_total",
        &["rollout", "bin"],
    ),
];

/// What the answer of a query stands for.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// A counter family: each answered series is `metric` with its labels.
    Counter { metric: String },
    /// The latency histogram: series by labels plus `le`.
    Histogram { metric: String },
    /// A `stat` selector: the one answered value is the selector's series. A PromQL
    /// expression's value is a gauge (its latest value is judged).
    Stat { selector: Selector, gauge: bool },
}

/// One instant query and what its answer stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub promql: String,
    pub target: Target,
}

/// A Prometheus range duration of `ms` milliseconds (`2500ms`), at least 1 ms.
pub fn range(ms: u64) -> String {
    format!("{}ms", ms.max(1))
}

/// A label value as a PromQL string literal (double-quoted, `\` `"` and newlines escaped).
pub fn quote(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// `metric{k="v",...}` of a selector.
pub fn selector_text(sel: &Selector) -> String {
    if sel.labels.is_empty() {
        return sel.metric.clone();
    }
    let labels: Vec<String> = sel
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={}", quote(v)))
        .collect();
    format!("{}{{{}}}", sel.metric, labels.join(","))
}

/// Whether a metric name is a valid Prometheus name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Whether a metric is a counter by the Prometheus naming conventions (`_total`,
/// `_count`, `_sum`, `_bucket`): the guess when Prometheus' metadata does not say
/// (Envoy's own counters, `envoy_cluster_upstream_rq`, carry no suffix but have
/// metadata).
pub fn is_counter_name(name: &str) -> bool {
    ["_total", "_count", "_sum", "_bucket"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// The queries of one tick over the range `range_ms`; `stats` are the plan's `stat`
/// selectors, `is_counter` tells a counter's metric name from a gauge's. A selector
/// that is no Prometheus metric name (a dotted Envoy stat name of the JSON admin
/// format) gets no query: its check finds no series and is inconclusive.
pub fn tick_queries(
    range_ms: u64,
    stats: &[Selector],
    is_counter: &dyn Fn(&str) -> bool,
) -> Vec<Query> {
    let r = range(range_ms);
    let mut out: Vec<Query> = COUNTERS
        .iter()
        .map(|(metric, by)| Query {
            promql: format!("sum by ({}) (increase({metric}[{r}]))", by.join(", ")),
            target: Target::Counter {
                metric: (*metric).to_string(),
            },
        })
        .collect();
    out.push(Query {
        promql: format!("sum by (rollout, variant, le) (increase({LATENCY}_bucket[{r}]))"),
        target: Target::Histogram {
            metric: LATENCY.to_string(),
        },
    });
    for sel in stats {
        if let Some(expr) = &sel.promql {
            out.push(Query {
                promql: expr.clone(),
                target: Target::Stat {
                    selector: sel.clone(),
                    gauge: true,
                },
            });
            continue;
        }
        if !is_metric_name(&sel.metric) {
            continue;
        }
        let text = selector_text(sel);
        let gauge = !is_counter(&sel.metric);
        let promql = if !gauge {
            format!("sum(increase({text}[{r}]))")
        } else if sel.metric == TRIPPED {
            format!("max({text})")
        } else {
            format!("sum({text})")
        };
        out.push(Query {
            promql,
            target: Target::Stat {
                selector: sel.clone(),
                gauge,
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_summed_over_proxies_by_their_labels() {
        let q = tick_queries(2500, &[], &is_counter_name);
        assert_eq!(q.len(), COUNTERS.len() + 1);
        assert_eq!(
            q[0].promql,
            "sum by (rollout, variant) (increase(model_rollout_requests_total[2500ms]))"
        );
        assert_eq!(
            q[1].promql,
            "sum by (rollout, variant, class) (increase(model_rollout_responses_total[2500ms]))"
        );
        assert!(q.iter().any(|q| q.promql
            == "sum by (rollout, bin) (increase(model_rollout_shadow_predictions_total[2500ms]))"));
        assert_eq!(
            q.last().unwrap().promql,
            "sum by (rollout, variant, le) (increase(model_rollout_latency_ms_bucket[2500ms]))"
        );
    }

    #[test]
    fn stats_counters_gauges_and_the_trip() {
        let sels = [
            Selector::parse(r#"model_rollout_tripped{rollout="fraud"}"#),
            Selector::parse(r#"envoy_cluster_upstream_rq_xx{envoy_response_code_class="5"}"#),
            Selector::parse("envoy_server_concurrency"),
            Selector::parse("cluster.model_canary.upstream_rq_5xx"),
        ];
        let q = tick_queries(1000, &sels, &|m| {
            m == "envoy_cluster_upstream_rq_xx" || is_counter_name(m)
        });
        let stats: Vec<&str> = q
            .iter()
            .filter(|q| matches!(q.target, Target::Stat { .. }))
            .map(|q| q.promql.as_str())
            .collect();
        assert_eq!(
            stats,
            vec![
                r#"max(model_rollout_tripped{rollout="fraud"})"#,
                r#"sum(increase(envoy_cluster_upstream_rq_xx{envoy_response_code_class="5"}[1000ms]))"#,
                "sum(envoy_server_concurrency)",
            ]
        );
    }

    #[test]
    fn a_promql_stat_runs_as_written_and_reads_as_a_gauge() {
        let key = r#"sum(rate(demo_model_answers_total{version="canary",decision="decline"}[{interval}]))"#;
        let expr = crate::engine::stat_selectors::expand(key, "fraud", 30);
        assert_eq!(
            expr,
            r#"sum(rate(demo_model_answers_total{version="canary",decision="decline"}[30s]))"#
        );
        let sel = Selector::expression(key, expr.clone());
        let q = tick_queries(1000, std::slice::from_ref(&sel), &is_counter_name);
        let last = q.last().unwrap();
        assert_eq!(last.promql, expr);
        assert_eq!(
            last.target,
            Target::Stat {
                selector: sel.clone(),
                gauge: true
            }
        );
        // the Envoy admin reader leaves it out of its filter
        assert_eq!(
            crate::engine::source::envoy_admin::filter_for(
                crate::api::status::StatsFormat::Prometheus,
                &[sel]
            )
            .as_deref(),
            Some(crate::engine::source::envoy_admin::BASE_FILTER)
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(range(0), "1ms");
        assert!(is_metric_name("model_rollout_tripped"));
        assert!(!is_metric_name("cluster.x.y"));
        assert!(!is_metric_name("9abc"));
    }
}
