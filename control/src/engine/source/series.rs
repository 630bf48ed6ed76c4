//! The series a metrics source delivers: keyed by metric and sorted labels
//! (`model_rollout_requests_total{rollout="fraud",variant="canary"}`), each tick's
//! increases ([`TickData`]), and the [`Selector`]s of `stat` checks that pick series.

use std::collections::HashMap;

use rollout_core::analysis::Histogram;
use rollout_core::stats::parse_stat_name;

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

    /// A key from borrowed label pairs.
    pub fn of(metric: &str, labels: &[(&str, &str)]) -> SeriesKey {
        SeriesKey::new(
            metric,
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
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
    pub fn add(&mut self, other: &Increment) {
        match (self, other) {
            (Increment::Counter(a), Increment::Counter(b)) => *a += b,
            (Increment::Gauge(a), Increment::Gauge(b)) => *a += b,
            (Increment::Histogram(a), Increment::Histogram(b)) => a.merge(b),
            _ => {}
        }
    }
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

/// What a `stat` check's name selects: a metric and labels that must all be present
/// (series with more labels also match; matching series are added up).
/// `metric{k="v",...}` is a Prometheus-style selector; a dotted name of ours
/// (`[wasmcustom.]model_rollout.rollout.fraud.variant.canary.requests_total`) is split
/// like the JSON names; any other name is an Envoy stat name as written.
///
/// A `stat` with a `(` is a PromQL expression (a custom query, like Flagger's
/// MetricTemplate): only the Prometheus source runs it (`promql` holds it with
/// `{rollout}` and `{interval}` substituted), and its one value is the series keyed by
/// the `stat` text itself (`metric`, no labels). Envoy admin endpoints cannot run it:
/// its check finds nothing and is inconclusive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Selector {
    pub metric: String,
    pub labels: Vec<(String, String)>,
    pub promql: Option<String>,
}

/// Whether a `stat` is a PromQL expression rather than a series name or selector.
pub fn is_expression(stat: &str) -> bool {
    stat.contains('(')
}

impl Selector {
    /// The selector of a PromQL expression: keyed by `key` (the `stat` with its
    /// `{variant}` replaced), run as `promql`.
    pub fn expression(key: &str, promql: String) -> Selector {
        Selector {
            metric: key.to_string(),
            labels: Vec::new(),
            promql: Some(promql),
        }
    }

    pub fn parse(text: &str) -> Selector {
        let text = text.trim();
        if let Some(open) = text.find('{') {
            let metric = text.get(..open).unwrap_or("").to_string();
            let rest = text.get(open..).unwrap_or("");
            let labels = parse_labels(rest).map(|(l, _)| l).unwrap_or_default();
            return Selector {
                metric,
                labels,
                promql: None,
            };
        }
        let k = SeriesKey::from_envoy_name(text);
        Selector {
            metric: k.metric,
            labels: k.labels,
            promql: None,
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
    pub fn is_ours(&self) -> bool {
        self.metric.starts_with("model_rollout_")
    }

    /// The dotted Envoy name it stands for, when it is one (no labels, not ours, no
    /// expression).
    pub fn envoy_name(&self) -> Option<&str> {
        (!self.is_ours()
            && self.promql.is_none()
            && self.labels.is_empty()
            && self.metric.contains('.'))
        .then_some(self.metric.as_str())
    }
}

/// Parses `{k="v",...}` at the start of `s`; returns the labels (unsorted) and the rest.
pub fn parse_labels(s: &str) -> Option<(Vec<(String, String)>, &str)> {
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
