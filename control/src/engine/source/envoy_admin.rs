//! The Envoy admin source: reads the stats of the Envoys the sidecar serves from their
//! admin endpoints (`--envoy-admin`, repeatable; their increases are added up).
//!
//! Every analysis tick each URL is read once:
//!
//! - `--stats-format json` (default): `GET /stats?format=json&histogram_buckets=detailed&filter=F`
//!   (Envoy's fine histogram bins). When a `stat` check names a stat, a second request
//!   (`type=Gauges`) tells gauges from counters.
//! - `--stats-format prometheus`: `GET /stats/prometheus?filter=F` (coarse default
//!   buckets). Our stats need the `stats_tags` of the shipped Envoy configs to carry
//!   labels.
//!
//! `F` is `^wasmcustom\.model_rollout\.rollout\.|^server\.uptime$`, plus `^<name>$` for
//! each dotted stat named by a `stat` check (Prometheus: no filter at all when a check
//! names a Prometheus series outside `model_rollout_`).
//!
//! The answers are parsed by `envoy_stats` into snapshots; each Envoy's increments
//! since its previous snapshot (`snapshot::increments`) are added into one
//! [`TickData`]. An Envoy that fails keeps its previous snapshot: what it counted
//! meanwhile shows up at its next successful read.

use std::time::Duration;

use crate::api::status::{EnvoyStatus, StatsFormat};
use crate::engine::source::envoy_stats::{parse_json, parse_prometheus};
use crate::engine::source::series::{Selector, TickData};
use crate::engine::source::snapshot::{increments, Snapshot};
use crate::engine::source::MetricsSource;
use crate::util::query::encode_query_value;
use crate::util::timefmt::now_unix_ms;

/// Largest admin answer read (a full Prometheus page of a big Envoy is a few MB).
const MAX_BODY: u64 = 64 * 1024 * 1024;
/// The filter that selects the rollouts' stats (and the uptime used to spot restarts).
pub const BASE_FILTER: &str = r"^wasmcustom\.model_rollout\.rollout\.|^server\.uptime$";

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
        // ours are in the base filter; a PromQL expression is for Prometheus only
        if s.is_ours() || s.promql.is_some() {
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

/// One Envoy: its admin URL, its last snapshot, its last answer.
struct Admin {
    base: String,
    last: Option<Snapshot>,
    status: EnvoyStatus,
}

/// Reads every configured Envoy; keeps each one's last snapshot for the increments.
pub struct EnvoyAdmin {
    agent: ureq::Agent,
    format: StatsFormat,
    admins: Vec<Admin>,
    /// Reads of one Envoy that succeeded / failed.
    reads_ok: u64,
    reads_failed: u64,
}

impl EnvoyAdmin {
    /// `urls` are admin base URLs (`http://127.0.0.1:9901`); `timeout` bounds each request.
    pub fn new(
        urls: &[String],
        format: StatsFormat,
        timeout: Duration,
    ) -> anyhow::Result<EnvoyAdmin> {
        let mut admins = Vec::with_capacity(urls.len());
        for u in urls {
            let base = u.trim().trim_end_matches('/').to_string();
            if !base.starts_with("http://") {
                anyhow::bail!("--envoy-admin must be an http:// URL, got {u:?}");
            }
            admins.push(Admin {
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
        Ok(EnvoyAdmin {
            agent,
            format,
            admins,
            reads_ok: 0,
            reads_failed: 0,
        })
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

    fn read_one(
        agent: &ureq::Agent,
        format: StatsFormat,
        base: &str,
        selectors: &[Selector],
    ) -> Result<Snapshot, String> {
        let filter = filter_for(format, selectors);
        let q = |extra: &str| -> String {
            match &filter {
                Some(f) => format!("{extra}filter={}", encode_query_value(f)),
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
}

impl MetricsSource for EnvoyAdmin {
    /// Reads every Envoy (in parallel when there are several) and adds up their
    /// increments since the previous tick. An Envoy that fails keeps its previous
    /// snapshot: what it counted meanwhile shows up at its next successful read.
    /// Blocking.
    fn read(&mut self, selectors: &[Selector]) -> TickData {
        let agent = &self.agent;
        let format = self.format;
        let results: Vec<Result<Snapshot, String>> = if self.admins.len() <= 1 {
            self.admins
                .iter()
                .map(|s| Self::read_one(agent, format, &s.base, selectors))
                .collect()
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = self
                    .admins
                    .iter()
                    .map(|s| {
                        let base = s.base.as_str();
                        scope.spawn(move || Self::read_one(agent, format, base, selectors))
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
            envoys: self.admins.len(),
            ..TickData::default()
        };
        let now = now_unix_ms();
        for (src, res) in self.admins.iter_mut().zip(results) {
            match res {
                Ok(snap) => {
                    tick.add(increments(src.last.as_ref(), &snap));
                    tick.envoys_ok += 1;
                    self.reads_ok += 1;
                    src.status.ok = true;
                    src.status.last_ok_ms = Some(now);
                    src.status.error = None;
                    src.status.series = snap.series.len();
                    src.last = Some(snap);
                }
                Err(e) => {
                    self.reads_failed += 1;
                    src.status.ok = false;
                    src.status.error = Some(e);
                }
            }
        }
        tick
    }

    fn statuses(&self) -> Vec<EnvoyStatus> {
        self.admins.iter().map(|s| s.status.clone()).collect()
    }

    fn read_counts(&self) -> Vec<(&'static str, &'static str, u64)> {
        vec![
            ("envoy_admin", "ok", self.reads_ok),
            ("envoy_admin", "error", self.reads_failed),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::source::series::SeriesKey;

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
        assert!(ours.matches(&SeriesKey::of(
            "model_rollout_requests_total",
            &[("rollout", "fraud"), ("variant", "canary")]
        )));
    }
}
