//! Reading the stats of the Envoys the sidecar serves, from their admin endpoints.
//!
//! Every analysis tick each `--envoy-admin` URL is read once:
//!
//! - `--stats-format json` (default): `GET /stats?format=json&histogram_buckets=detailed&filter=F`.
//!   Counters and gauges come as `{"name", "value"}` with their full dotted names
//!   (ours are split into metric and labels by `rollout_core::stats::parse_stat_name`);
//!   histograms come with Envoy's own fine bins (`totals`: `lower_bound`, `width`,
//!   cumulative `count` since Envoy started; about two significant digits, so 51 ms
//!   and 52 ms are different bins). When a `stat` check names a stat outside our
//!   namespace, a second request (`type=Gauges`) tells gauges from counters.
//! - `--stats-format prometheus`: `GET /stats/prometheus?filter=F`: `# TYPE` lines tell
//!   the kind, histograms are cumulative `_bucket{le=...}` counts (Envoy's default
//!   buckets 0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, ... ms: coarser than the JSON
//!   bins). Our stats need the `stats_tags` of the shipped Envoy configs to carry labels.
//!
//! `F` is `^wasmcustom\.model_rollout\.rollout\.|^server\.uptime$`, plus `^<name>$` for
//! each dotted stat named by a `stat` check (Prometheus: no filter at all when a check
//! names a Prometheus series outside `model_rollout_`).
//!
//! Both formats end up as the same [`Snapshot`]: series keyed by metric and sorted
//! labels (`model_rollout_requests_total{rollout="fraud",variant="canary"}`), each a
//! counter, a gauge or a histogram (`rollout_core::analysis::Histogram`).
//!
//! [`increments`] turns two snapshots of one Envoy into what happened in between:
//! counters and histogram bins by difference, where a drop means the counter
//! restarted (Envoy restarted, or the stat was re-created) and the new reading is the
//! increase; `server.uptime` going down marks every series as restarted. The first
//! snapshot of an Envoy is only a baseline (its counters hold history from before the
//! sidecar looked). [`Scraper::scrape`] adds the increments of every Envoy into one
//! [`TickData`].

use std::collections::HashMap;
use std::time::Duration;

use rollout_core::analysis::{counter_increase, Histogram};
use rollout_core::stats::parse_stat_name;
use serde_json::Value;

use crate::api::status::{EnvoyStatus, StatsFormat};
use crate::util::timefmt::now_unix_ms;

/// Largest admin answer read (a full Prometheus page of a big Envoy is a few MB).
const MAX_BODY: u64 = 64 * 1024 * 1024;
/// The filter that selects the rollouts' stats (and the uptime used to spot restarts).
pub const BASE_FILTER: &str = r"^wasmcustom\.model_rollout\.rollout\.|^server\.uptime$";
const UPTIME_JSON: &str = "server.uptime";
const UPTIME_PROM: &str = "envoy_server_uptime";

/// A series: metric name and labels (sorted by key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub metric: String,
    pub labels: Vec<(String, String)>,
}

impl SeriesKey {
    pub fn new(metric: impl Into<String>, mut labels: Vec<(String, String)>) -> SeriesKey {
        labels.sort();
        SeriesKey {
            metric: metric.into(),
            labels,
        }
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The key of a JSON stat name: ours split into metric and labels, any other
    /// Envoy stat is its dotted name without labels.
    pub fn from_envoy_name(name: &str) -> SeriesKey {
        match parse_stat_name(name) {
            Some(p) => SeriesKey::new(p.metric, p.labels),
            None => SeriesKey::new(name, Vec::new()),
        }
    }
}

impl std::fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.metric)?;
        if !self.labels.is_empty() {
            let l: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            write!(f, "{{{}}}", l.join(","))?;
        }
        Ok(())
    }
}

/// One series as read (cumulative since Envoy started, for counters and histograms).
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    Counter(f64),
    Gauge(f64),
    Histogram(Histogram),
}

/// Everything one Envoy answered at one tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub series: HashMap<SeriesKey, Reading>,
    /// `server.uptime` in seconds, when present.
    pub uptime_s: Option<f64>,
}

/// What a series did between two snapshots.
#[derive(Debug, Clone, PartialEq)]
pub enum Increment {
    Counter(f64),
    /// The latest value (gauges are levels, not increments).
    Gauge(f64),
    Histogram(Histogram),
}

impl Increment {
    /// Adds another Envoy's increment of the same series (gauges add up too, like
    /// Prometheus' `sum()`).
    fn add(&mut self, other: &Increment) {
        match (self, other) {
            (Increment::Counter(a), Increment::Counter(b)) => *a += b,
            (Increment::Gauge(a), Increment::Gauge(b)) => *a += b,
            (Increment::Histogram(a), Increment::Histogram(b)) => a.merge(b),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Stat selectors of `stat` checks

/// What a `stat` check's name selects: a metric and labels that must all be present
/// (series with more labels also match; matching series are added up).
/// `metric{k="v",...}` is a Prometheus-style selector; a dotted name of ours
/// (`[wasmcustom.]model_rollout.rollout.fraud.variant.canary.requests_total`) is split
/// like the JSON names; any other name is an Envoy stat name as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Selector {
    pub metric: String,
    pub labels: Vec<(String, String)>,
}

impl Selector {
    pub fn parse(text: &str) -> Selector {
        let text = text.trim();
        if let Some(open) = text.find('{') {
            let metric = text.get(..open).unwrap_or("").to_string();
            let rest = text.get(open..).unwrap_or("");
            let labels = parse_labels(rest).map(|(l, _)| l).unwrap_or_default();
            return Selector { metric, labels };
        }
        let k = SeriesKey::from_envoy_name(text);
        Selector {
            metric: k.metric,
            labels: k.labels,
        }
    }

    pub fn matches(&self, key: &SeriesKey) -> bool {
        key.metric == self.metric
            && self
                .labels
                .iter()
                .all(|(k, v)| key.label(k) == Some(v.as_str()))
    }

    /// Whether the base filter already selects it (our per-rollout stats).
    fn is_ours(&self) -> bool {
        self.metric.starts_with("model_rollout_")
    }

    /// The dotted Envoy name it stands for, when it is one (no labels, not ours).
    fn envoy_name(&self) -> Option<&str> {
        (!self.is_ours() && self.labels.is_empty() && self.metric.contains('.'))
            .then_some(self.metric.as_str())
    }
}

/// Regex-escapes an Envoy stat name for the admin `filter` (RE2 syntax).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The admin `filter` for a set of `stat` check selectors; `None`: read everything.
pub fn filter_for(format: StatsFormat, selectors: &[Selector]) -> Option<String> {
    let mut f = BASE_FILTER.to_string();
    for s in selectors {
        if s.is_ours() {
            continue;
        }
        match (format, s.envoy_name()) {
            (_, Some(name)) => {
                f.push_str("|^");
                f.push_str(&regex_escape(name));
                f.push('$');
            }
            // A Prometheus series cannot be turned back into a dotted name: read all.
            (StatsFormat::Prometheus, None) => return None,
            // JSON carries no labels outside our namespace: nothing else can match.
            (StatsFormat::Json, None) => {}
        }
    }
    Some(f)
}

// ---------------------------------------------------------------------------
// Parsing

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

/// Parses `{k="v",...}` at the start of `s`; returns the labels (unsorted) and the rest.
fn parse_labels(s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut rest = s.strip_prefix('{')?;
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(r) = rest.strip_prefix('}') {
            return Some((labels, r));
        }
        let eq = rest.find('=')?;
        let key = rest.get(..eq)?.trim().to_string();
        rest = rest.get(eq + 1..)?.trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                other => value.push(other),
            }
        };
        rest = rest.get(end + 1..)?;
        labels.push((key, value));
    }
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

// ---------------------------------------------------------------------------
// Increments

/// What happened between two snapshots of one Envoy. Without `prev` (the first
/// snapshot) counters and histograms are a baseline (increase 0). A counter below
/// its previous reading, a histogram bin below its previous count, or `server.uptime`
/// below its previous value mean a restart: the new reading is the increase. A
/// series that is new since `prev` counts in full (it was created in between).
pub fn increments(prev: Option<&Snapshot>, cur: &Snapshot) -> HashMap<SeriesKey, Increment> {
    let restarted = match (prev.and_then(|p| p.uptime_s), cur.uptime_s) {
        (Some(a), Some(b)) => b + 0.5 < a,
        _ => false,
    };
    let mut out = HashMap::with_capacity(cur.series.len());
    for (k, r) in &cur.series {
        let inc = match r {
            Reading::Gauge(g) => Increment::Gauge(*g),
            Reading::Counter(c) => match prev {
                None => Increment::Counter(0.0),
                Some(_) if restarted => Increment::Counter(counter_increase(0.0, *c)),
                Some(p) => match p.series.get(k) {
                    Some(Reading::Counter(pc)) => Increment::Counter(counter_increase(*pc, *c)),
                    _ => Increment::Counter(counter_increase(0.0, *c)),
                },
            },
            Reading::Histogram(h) => match prev {
                None => Increment::Histogram(Histogram::default()),
                Some(_) if restarted => Increment::Histogram(h.clone()),
                Some(p) => match p.series.get(k) {
                    Some(Reading::Histogram(ph)) => {
                        Increment::Histogram(h.increase_since(ph).unwrap_or_else(|| h.clone()))
                    }
                    _ => Increment::Histogram(h.clone()),
                },
            },
        };
        out.insert(k.clone(), inc);
    }
    out
}

/// The increments of one tick, added up over every Envoy that answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TickData {
    pub series: HashMap<SeriesKey, Increment>,
    /// Envoys that answered / were asked.
    pub envoys_ok: usize,
    pub envoys: usize,
}

impl TickData {
    pub fn add(&mut self, incs: HashMap<SeriesKey, Increment>) {
        for (k, v) in incs {
            match self.series.get_mut(&k) {
                Some(cur) => cur.add(&v),
                None => {
                    self.series.insert(k, v);
                }
            }
        }
    }

    pub fn counter(&self, key: &SeriesKey) -> f64 {
        match self.series.get(key) {
            Some(Increment::Counter(c)) => *c,
            _ => 0.0,
        }
    }
}

// ---------------------------------------------------------------------------
// The scraper

struct Source {
    base: String,
    last: Option<Snapshot>,
    status: EnvoyStatus,
}

/// Reads every configured Envoy; keeps each one's last snapshot for the increments.
pub struct Scraper {
    agent: ureq::Agent,
    format: StatsFormat,
    sources: Vec<Source>,
}

impl Scraper {
    /// `urls` are admin base URLs (`http://127.0.0.1:9901`); `timeout` bounds each request.
    pub fn new(urls: &[String], format: StatsFormat, timeout: Duration) -> anyhow::Result<Scraper> {
        let mut sources = Vec::with_capacity(urls.len());
        for u in urls {
            let base = u.trim().trim_end_matches('/').to_string();
            if !base.starts_with("http://") {
                anyhow::bail!("--envoy-admin must be an http:// URL, got {u:?}");
            }
            sources.push(Source {
                base: base.clone(),
                last: None,
                status: EnvoyStatus {
                    url: base,
                    ok: false,
                    last_ok_ms: None,
                    error: Some("not read yet".to_string()),
                    series: 0,
                },
            });
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Ok(Scraper {
            agent,
            format,
            sources,
        })
    }

    pub fn format(&self) -> StatsFormat {
        self.format
    }

    pub fn statuses(&self) -> Vec<EnvoyStatus> {
        self.sources.iter().map(|s| s.status.clone()).collect()
    }

    fn get(agent: &ureq::Agent, url: &str) -> Result<String, String> {
        let mut resp = agent
            .get(url)
            .call()
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| format!("GET {url}: reading the answer: {e}"))?;
        if !status.is_success() {
            let snippet: String = body.trim().chars().take(200).collect();
            return Err(format!("GET {url}: {status}: {snippet}"));
        }
        Ok(body)
    }

    fn read(
        agent: &ureq::Agent,
        format: StatsFormat,
        base: &str,
        selectors: &[Selector],
    ) -> Result<Snapshot, String> {
        let filter = filter_for(format, selectors);
        let q = |extra: &str| -> String {
            match &filter {
                Some(f) => format!(
                    "{extra}filter={}",
                    crate::util::query::encode_query_value(f)
                ),
                None => extra.trim_end_matches('&').to_string(),
            }
        };
        match format {
            StatsFormat::Json => {
                let body = Self::get(
                    agent,
                    &format!(
                        "{base}/stats?{}",
                        q("format=json&histogram_buckets=detailed&")
                    ),
                )?;
                // A stat check needs to know gauges from counters, ours included
                // (e.g. `model_rollout_tripped`, a gauge, for the local_trip check).
                let needs_kinds = !selectors.is_empty();
                let gauges = if needs_kinds {
                    Some(Self::get(
                        agent,
                        &format!("{base}/stats?{}", q("format=json&type=Gauges&")),
                    )?)
                } else {
                    None
                };
                parse_json(&body, gauges.as_deref())
            }
            StatsFormat::Prometheus => {
                let query = q("");
                let url = if query.is_empty() {
                    format!("{base}/stats/prometheus")
                } else {
                    format!("{base}/stats/prometheus?{query}")
                };
                parse_prometheus(&Self::get(agent, &url)?)
            }
        }
    }

    /// Reads every Envoy (in parallel when there are several) and adds up their
    /// increments since the previous tick. An Envoy that fails keeps its previous
    /// snapshot: what it counted meanwhile shows up at its next successful read.
    /// Blocking.
    pub fn scrape(&mut self, selectors: &[Selector]) -> TickData {
        let agent = &self.agent;
        let format = self.format;
        let results: Vec<Result<Snapshot, String>> = if self.sources.len() <= 1 {
            self.sources
                .iter()
                .map(|s| Self::read(agent, format, &s.base, selectors))
                .collect()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = self
                    .sources
                    .iter()
                    .map(|s| {
                        let base = s.base.as_str();
                        scope.spawn(move || Self::read(agent, format, base, selectors))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err("the reader thread failed".to_string()))
                    })
                    .collect()
            })
        };
        let mut tick = TickData {
            envoys: self.sources.len(),
            ..TickData::default()
        };
        let now = now_unix_ms();
        for (src, res) in self.sources.iter_mut().zip(results) {
            match res {
                Ok(snap) => {
                    tick.add(increments(src.last.as_ref(), &snap));
                    tick.envoys_ok += 1;
                    src.status.ok = true;
                    src.status.last_ok_ms = Some(now);
                    src.status.error = None;
                    src.status.series = snap.series.len();
                    src.last = Some(snap);
                }
                Err(e) => {
                    src.status.ok = false;
                    src.status.error = Some(e);
                }
            }
        }
        tick
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn key(metric: &str, labels: &[(&str, &str)]) -> SeriesKey {
        SeriesKey::new(
            metric,
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn json_names_become_labelled_series() {
        let gauges = r#"{"stats":[{"name":"cluster.model_canary.upstream_rq_active","value":3}]}"#;
        let s = parse_json(JSON, Some(gauges)).unwrap();
        assert_eq!(s.uptime_s, Some(260.0));
        assert_eq!(
            s.series.get(&key(
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
            s.series
                .get(&key("cluster.model_canary.upstream_rq_active", &[])),
            Some(&Reading::Gauge(3.0))
        );
        let Some(Reading::Histogram(h)) = s.series.get(&key(
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
            s.series.get(&key(
                "model_rollout_requests_total",
                &[("rollout", "fraud"), ("variant", "canary")]
            )),
            Some(&Reading::Counter(35.0))
        );
        let Some(Reading::Histogram(h)) = s.series.get(&key(
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

    #[test]
    fn resets_and_baselines() {
        let k = key("c", &[]);
        let snap = |c: f64, up: f64| Snapshot {
            series: HashMap::from([(k.clone(), Reading::Counter(c))]),
            uptime_s: Some(up),
        };
        // first snapshot: a baseline
        assert_eq!(
            increments(None, &snap(100.0, 10.0)).get(&k),
            Some(&Increment::Counter(0.0))
        );
        assert_eq!(
            increments(Some(&snap(100.0, 10.0)), &snap(130.0, 11.0)).get(&k),
            Some(&Increment::Counter(30.0))
        );
        // the counter dropped: a restart, never negative
        assert_eq!(
            increments(Some(&snap(100.0, 10.0)), &snap(4.0, 11.0)).get(&k),
            Some(&Increment::Counter(4.0))
        );
        // uptime went down: restarted even though the counter grew past the old value
        assert_eq!(
            increments(Some(&snap(100.0, 500.0)), &snap(150.0, 3.0)).get(&k),
            Some(&Increment::Counter(150.0))
        );
        // a series created since the last snapshot counts in full
        let empty = Snapshot {
            series: HashMap::new(),
            uptime_s: Some(1.0),
        };
        assert_eq!(
            increments(Some(&empty), &snap(5.0, 2.0)).get(&k),
            Some(&Increment::Counter(5.0))
        );
    }

    #[test]
    fn filters() {
        let sels = [
            Selector::parse("cluster.model_canary.upstream_rq_5xx"),
            Selector::parse("wasmcustom.model_rollout.rollout.fraud.variant.canary.requests_total"),
        ];
        assert_eq!(
            filter_for(StatsFormat::Json, &sels).unwrap(),
            format!("{BASE_FILTER}|^cluster\\.model_canary\\.upstream_rq_5xx$")
        );
        assert_eq!(
            filter_for(
                StatsFormat::Prometheus,
                &[Selector::parse(
                    "envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"5\"}"
                )]
            ),
            None
        );
        assert_eq!(
            filter_for(StatsFormat::Prometheus, &[]).as_deref(),
            Some(BASE_FILTER)
        );
        let ours = Selector::parse("model_rollout.rollout.fraud.variant.canary.requests_total");
        assert!(ours.matches(&key(
            "model_rollout_requests_total",
            &[("rollout", "fraud"), ("variant", "canary")]
        )));
    }
}
