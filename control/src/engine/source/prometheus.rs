//! The Prometheus source (`--prometheus-url`): reads the fleet's figures from a
//! Prometheus server that scrapes every proxy's `/stats/prometheus`, the way Flagger
//! and Argo Rollouts read a mesh. Gateway replicas come and go with autoscaling and
//! their admin ports are loopback-only; Prometheus already knows them all.
//!
//! Every read runs the instant queries of `promql::tick_queries` at the read's time
//! `t` (the `time` parameter), over the range `R` since the previous successful read:
//! `sum by (rollout, variant, ...) (increase(...[R]))`. Prometheus handles each
//! proxy's counter resets and the sum is over every proxy it scrapes, so the tick's
//! increases are fleet-wide and consecutive reads tile time. `increase` needs two
//! scrapes of a series inside its range, so a read happens only once `R` reaches
//! `--prometheus-min-range-ms` (default 5 s: at least twice the scrape interval); the
//! ticks in between add nothing (they are neither healthy nor failed, just empty) and
//! the next read covers them. A range never exceeds `MAX_RANGE_MS` (after an outage
//! longer than that, what happened before is not read).
//!
//! Failures: Prometheus unreachable, slower than `--prometheus-timeout-ms` (each
//! request, and the read as a whole), an error answer, or no `model_rollout_` series
//! at all (not scraping the proxies, or their `stats_tags` missing) make the read
//! fail: the tick adds nothing, so a check sees too few samples and is
//! *inconclusive*, never healthy. Each read's result is counted
//! (`rollout_control_metrics_source_reads_total{source="prometheus",result}` in
//! `GET /metrics`) and the last error shows in `GET /v1/status`
//! (`policy_engine.envoys[0]`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rollout_core::analysis::Histogram;

use crate::api::status::EnvoyStatus;
use crate::engine::source::prom_answer::{parse, Sample};
use crate::engine::source::promql::{is_counter_name, is_metric_name, tick_queries, Query, Target};
use crate::engine::source::series::{Increment, Selector, SeriesKey, TickData};
use crate::engine::source::MetricsSource;
use crate::util::query::encode_query_value;
use crate::util::timefmt::now_unix_ms;

/// Largest answer read from Prometheus (one query's JSON).
const MAX_BODY: u64 = 16 * 1024 * 1024;
/// Longest range read at once.
pub const MAX_RANGE_MS: u64 = 300_000;

/// How the source is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusOptions {
    /// Base URL (`http://prometheus.istio-system.svc:9090`).
    pub url: String,
    /// Bound of each request and of a whole read.
    pub timeout: Duration,
    /// Shortest range queried (see the module doc).
    pub min_range_ms: u64,
}

/// Why a read did not give figures.
#[derive(Debug, Clone, PartialEq)]
enum Failure {
    Timeout(String),
    Unreachable(String),
    Error(String),
    Empty(String),
}

impl Failure {
    fn result(&self) -> &'static str {
        match self {
            Failure::Timeout(_) => "timeout",
            Failure::Unreachable(_) => "unreachable",
            Failure::Error(_) => "error",
            Failure::Empty(_) => "empty",
        }
    }

    fn text(self) -> String {
        match self {
            Failure::Timeout(s)
            | Failure::Unreachable(s)
            | Failure::Error(s)
            | Failure::Empty(s) => s,
        }
    }
}

/// Reads a Prometheus server.
pub struct PrometheusSource {
    agent: ureq::Agent,
    opts: PrometheusOptions,
    base: String,
    /// End of the range read last (unix ms); `None` before the first success.
    read_until_ms: Option<u64>,
    status: EnvoyStatus,
    counts: BTreeMap<&'static str, u64>,
    /// Metric name -> whether Prometheus' metadata calls it a counter (the `stat`
    /// checks' metrics; bounded by `MAX_KINDS`, cleared when full).
    kinds: HashMap<String, bool>,
}

/// Most metric kinds remembered.
const MAX_KINDS: usize = 1024;

impl PrometheusSource {
    pub fn new(opts: PrometheusOptions) -> anyhow::Result<PrometheusSource> {
        let base = opts.url.trim().trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            anyhow::bail!(
                "--prometheus-url must be an http:// URL, got {:?}",
                opts.url
            );
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .timeout_global(Some(opts.timeout))
            .build()
            .into();
        Ok(PrometheusSource {
            agent,
            status: EnvoyStatus {
                url: base.clone(),
                ok: false,
                last_ok_ms: None,
                error: Some("not read yet".to_string()),
                series: 0,
            },
            base,
            opts,
            read_until_ms: None,
            counts: BTreeMap::new(),
            kinds: HashMap::new(),
        })
    }

    /// Learns from Prometheus' metadata (`GET /api/v1/metadata?metric=M`) whether
    /// each `stat` metric is a counter; a metric it does not know is guessed from
    /// its name (`promql::is_counter_name`) and asked again next time.
    fn learn_kinds(&mut self, selectors: &[Selector]) -> Result<(), Failure> {
        for sel in selectors {
            if self.kinds.contains_key(&sel.metric) || !is_metric_name(&sel.metric) {
                continue;
            }
            let url = format!(
                "{}/api/v1/metadata?metric={}&limit=1",
                self.base,
                encode_query_value(&sel.metric)
            );
            let body = self.get(&url, &sel.metric)?;
            if let Some(counter) = metadata_is_counter(&body, &sel.metric) {
                if self.kinds.len() >= MAX_KINDS {
                    self.kinds.clear();
                }
                self.kinds.insert(sel.metric.clone(), counter);
            }
        }
        Ok(())
    }

    /// `GET url` within the bounds; `what` names the request in errors.
    fn get(&self, url: &str, what_for: &str) -> Result<String, Failure> {
        let what = |e: ureq::Error| {
            let text = format!("GET {} ({what_for}): {e}", self.base);
            match e {
                ureq::Error::Timeout(_) => Failure::Timeout(text),
                ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                    Failure::Timeout(text)
                }
                ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                    Failure::Unreachable(text)
                }
                _ => Failure::Error(text),
            }
        };
        let mut resp = self.agent.get(url).call().map_err(what)?;
        let status = resp.status();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(what)?;
        if status.as_u16() == 503 && body.contains("\"timeout\"") {
            return Err(Failure::Timeout(format!(
                "{} ({what_for}): HTTP 503: {}",
                self.base,
                body.chars().take(200).collect::<String>()
            )));
        }
        Ok(body)
    }

    /// `GET /api/v1/query?query=Q&time=T&timeout=D` and its samples.
    fn query(&self, promql: &str, at_ms: u64) -> Result<Vec<Sample>, Failure> {
        let url = format!(
            "{}/api/v1/query?query={}&time={}.{:03}&timeout={}ms",
            self.base,
            encode_query_value(promql),
            at_ms / 1000,
            at_ms % 1000,
            self.opts.timeout.as_millis()
        );
        let body = self.get(&url, promql)?;
        // Prometheus answers errors (400 bad_data, 422 execution, 503 timeout) with
        // the same JSON; `parse` turns it into its text.
        parse(&body).map_err(|e| Failure::Error(format!("query {promql:?}: {e}")))
    }

    /// Runs every query of a read at `at_ms` over `range_ms`; all or nothing.
    fn read_range(
        &self,
        at_ms: u64,
        range_ms: u64,
        selectors: &[Selector],
    ) -> Result<TickData, Failure> {
        let started = Instant::now();
        let mut tick = TickData {
            envoys: 1,
            envoys_ok: 1,
            ..TickData::default()
        };
        let mut ours = 0usize;
        let is_counter = |m: &str| {
            self.kinds
                .get(m)
                .copied()
                .unwrap_or_else(|| is_counter_name(m))
        };
        for q in tick_queries(range_ms, selectors, &is_counter) {
            if started.elapsed() > self.opts.timeout {
                return Err(Failure::Timeout(format!(
                    "reading {} took longer than {} ms",
                    self.base,
                    self.opts.timeout.as_millis()
                )));
            }
            let samples = self.query(&q.promql, at_ms)?;
            if !matches!(q.target, Target::Stat { .. }) {
                ours += samples.len();
            }
            tick.add(series_of(&q, samples));
        }
        if ours == 0 {
            return Err(Failure::Empty(format!(
                "{} has no model_rollout_ series: is it scraping the proxies' \
                 /stats/prometheus (with the filter's stats_tags)?",
                self.base
            )));
        }
        Ok(tick)
    }
}

/// A series' labels (without `le`).
type Labels = Vec<(String, String)>;

/// What Prometheus' metadata answer says of `metric`: `Some(true)` for a counter,
/// `Some(false)` for anything else it knows, `None` when it does not know it.
pub fn metadata_is_counter(body: &str, metric: &str) -> Option<bool> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let kind = v
        .get("data")?
        .get(metric)?
        .as_array()?
        .first()?
        .get("type")?
        .as_str()?;
    Some(kind == "counter")
}

/// The series of one query's answer, keyed like the Envoy admin reader's.
pub fn series_of(
    q: &Query,
    samples: Vec<Sample>,
) -> std::collections::HashMap<SeriesKey, Increment> {
    let mut out = std::collections::HashMap::new();
    match &q.target {
        Target::Counter { metric } => {
            for s in samples {
                let k = SeriesKey::new(metric.clone(), s.labels);
                out.insert(k, Increment::Counter(s.value.max(0.0)));
            }
        }
        Target::Histogram { metric } => {
            let mut buckets: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
            for s in samples {
                let mut le = None;
                let labels: Vec<(String, String)> = s
                    .labels
                    .into_iter()
                    .filter(|(k, v)| {
                        if k == "le" {
                            le = match v.as_str() {
                                "+Inf" | "Inf" => Some(f64::INFINITY),
                                other => other.parse().ok(),
                            };
                            false
                        } else {
                            true
                        }
                    })
                    .collect();
                if let Some(le) = le {
                    buckets
                        .entry(labels)
                        .or_default()
                        .push((le, s.value.max(0.0)));
                }
            }
            for (labels, b) in buckets {
                out.insert(
                    SeriesKey::new(metric.clone(), labels),
                    Increment::Histogram(Histogram::from_cumulative(&b)),
                );
            }
        }
        Target::Stat { selector, gauge } => {
            // One value (the query aggregates); keyed by the selector itself so the
            // check's selector matches it.
            if let Some(s) = samples.first() {
                let k = SeriesKey::new(selector.metric.clone(), selector.labels.clone());
                let inc = if *gauge {
                    Increment::Gauge(s.value)
                } else {
                    Increment::Counter(s.value.max(0.0))
                };
                out.insert(k, inc);
            }
        }
    }
    out
}

impl MetricsSource for PrometheusSource {
    fn read(&mut self, selectors: &[Selector]) -> TickData {
        let now = now_unix_ms();
        let from = self
            .read_until_ms
            .filter(|t| now.saturating_sub(*t) <= MAX_RANGE_MS)
            .unwrap_or_else(|| now.saturating_sub(self.opts.min_range_ms));
        let range_ms = now.saturating_sub(from);
        if range_ms < self.opts.min_range_ms {
            // Not yet: the next read covers this tick too.
            return TickData {
                envoys: 1,
                envoys_ok: usize::from(self.status.ok),
                ..TickData::default()
            };
        }
        let res = self
            .learn_kinds(selectors)
            .and_then(|()| self.read_range(now, range_ms, selectors));
        match res {
            Ok(tick) => {
                *self.counts.entry("ok").or_insert(0) += 1;
                self.read_until_ms = Some(now);
                self.status.ok = true;
                self.status.last_ok_ms = Some(now);
                self.status.error = None;
                self.status.series = tick.series.len();
                tick
            }
            Err(f) => {
                *self.counts.entry(f.result()).or_insert(0) += 1;
                self.status.ok = false;
                self.status.error = Some(f.text());
                TickData {
                    envoys: 1,
                    ..TickData::default()
                }
            }
        }
    }

    fn statuses(&self) -> Vec<EnvoyStatus> {
        vec![self.status.clone()]
    }

    fn read_counts(&self) -> Vec<(&'static str, &'static str, u64)> {
        self.counts
            .iter()
            .map(|(r, n)| ("prometheus", *r, *n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::source::prom_answer::parse;
    use crate::engine::source::promql::{is_counter_name, tick_queries};

    #[test]
    fn metadata_tells_counters() {
        let body = r#"{"status":"success","data":{"envoy_cluster_upstream_rq":[{"type":"counter","help":"","unit":""}]}}"#;
        assert_eq!(
            metadata_is_counter(body, "envoy_cluster_upstream_rq"),
            Some(true)
        );
        assert_eq!(metadata_is_counter(body, "other"), None);
        let gauge = r#"{"status":"success","data":{"model_rollout_tripped":[{"type":"gauge"}]}}"#;
        assert_eq!(
            metadata_is_counter(gauge, "model_rollout_tripped"),
            Some(false)
        );
    }

    fn samples(body: &str) -> Vec<Sample> {
        parse(body).unwrap()
    }

    #[test]
    fn answers_become_the_admin_readers_series() {
        let qs = tick_queries(
            5000,
            &[Selector::parse(r#"model_rollout_tripped{rollout="fraud"}"#)],
            &is_counter_name,
        );
        let counter = qs
            .iter()
            .find(|q| q.promql.contains("responses_total"))
            .unwrap();
        let got = series_of(
            counter,
            samples(
                r#"{"status":"success","data":{"resultType":"vector","result":[
                {"metric":{"rollout":"fraud","variant":"canary","class":"5xx"},"value":[1,"30.000000001"]},
                {"metric":{"rollout":"fraud","variant":"canary","class":"2xx"},"value":[1,"70"]}]}}"#,
            ),
        );
        assert_eq!(
            got.get(&SeriesKey::of(
                "model_rollout_responses_total",
                &[
                    ("rollout", "fraud"),
                    ("variant", "canary"),
                    ("class", "5xx")
                ]
            )),
            Some(&Increment::Counter(30.000000001))
        );
        let hist = qs
            .iter()
            .find(|q| matches!(q.target, Target::Histogram { .. }))
            .unwrap();
        let got = series_of(
            hist,
            samples(
                r#"{"status":"success","data":{"resultType":"vector","result":[
                {"metric":{"rollout":"fraud","variant":"canary","le":"50"},"value":[1,"10"]},
                {"metric":{"rollout":"fraud","variant":"canary","le":"100"},"value":[1,"40"]},
                {"metric":{"rollout":"fraud","variant":"canary","le":"+Inf"},"value":[1,"40"]}]}}"#,
            ),
        );
        let Some(Increment::Histogram(h)) = got.get(&SeriesKey::of(
            "model_rollout_latency_ms",
            &[("rollout", "fraud"), ("variant", "canary")],
        )) else {
            panic!("no histogram: {got:?}")
        };
        assert_eq!(h.count(), 40.0);
        // what histogram_quantile(0.5, ...) answers: 10 below 50, the 20th of the
        // 30 in (50, 100] at a third of the bucket
        assert!((h.percentile(50.0).unwrap() - 66.666).abs() < 0.01);
        let trip = qs.iter().find(|q| q.promql.starts_with("max(")).unwrap();
        let got = series_of(
            trip,
            samples(
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1"]}]}}"#,
            ),
        );
        let sel = Selector::parse(r#"model_rollout_tripped{rollout="fraud"}"#);
        assert!(got
            .iter()
            .any(|(k, v)| sel.matches(k) && *v == Increment::Gauge(1.0)));
    }

    #[test]
    fn unreachable_is_counted_and_gives_nothing() {
        // a port nobody listens on
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = PrometheusSource::new(PrometheusOptions {
            url: format!("http://127.0.0.1:{port}"),
            timeout: Duration::from_millis(500),
            min_range_ms: 1,
        })
        .unwrap();
        let t = s.read(&[]);
        assert!(t.series.is_empty());
        assert_eq!((t.envoys, t.envoys_ok), (1, 0));
        assert_eq!(s.read_counts(), vec![("prometheus", "unreachable", 1)]);
        assert!(!s.statuses()[0].ok);
        assert!(PrometheusSource::new(PrometheusOptions {
            url: "ftp://x".to_string(),
            timeout: Duration::from_secs(1),
            min_range_ms: 1,
        })
        .is_err());
    }

    #[test]
    fn a_silent_server_is_a_timeout() {
        // accepts connections, never answers
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut s = PrometheusSource::new(PrometheusOptions {
            url: format!("http://127.0.0.1:{port}"),
            timeout: Duration::from_millis(300),
            min_range_ms: 1,
        })
        .unwrap();
        let t0 = Instant::now();
        let t = s.read(&[]);
        assert!(t0.elapsed() < Duration::from_secs(3));
        assert!(t.series.is_empty());
        assert_eq!(s.read_counts(), vec![("prometheus", "timeout", 1)]);
        drop(l);
    }
}
