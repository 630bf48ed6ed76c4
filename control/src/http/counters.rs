//! The sidecar's own metrics and their rendering in the Prometheus text exposition
//! format (version 0.0.4), written by hand: a few counters and gauges need no
//! client library. Served by `GET /metrics` (`http::metrics`).
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `rollout_control_plan_version` | gauge | | latest plan version (0 before any plan) |
//! | `rollout_control_plan_changes_total` | counter | op | plan versions in the store by operation (counted from the durable history, so it survives restarts; after a restart, from the versions `--history-keep` kept) |
//! | `rollout_control_http_requests_total` | counter | route, status | answered requests by route template (`unmatched` for unknown paths) and status |
//! | `rollout_control_shadow_records_total` | counter | | shadow records stored since start |
//! | `rollout_control_shadow_records_truncated_total` | counter | | shadow records stored since start whose predictions were cut to `--max-record-bytes` |
//! | `rollout_control_assignments_total` | counter | | experiment assignments stored since start |
//! | `rollout_control_assignments_refused_total` | counter | | assignments refused since start: the id was already assigned to another rollout or variant (assignments are immutable) |
//! | `rollout_control_feedback_total` | counter | result (`accepted` `unknown` `dropped`) | outcomes received since start |
//! | `rollout_control_ingest_refused_total` | counter | path (`/v1/shadow-records` `/v1/assignments` `/v1/feedback`) | ingestion POSTs answered 503 (`Retry-After: 1`) because every `--ingest-concurrency` permit stayed busy for 2 s (`http::ingest`) |
//! | `rollout_control_data_budget_bytes` | gauge | | `--data-budget-bytes`: what shadow records, assignments and outcomes may hold together |
//! | `rollout_control_data_bytes` | gauge | kind (`shadow_records` `assignments` `outcomes`) | bytes held under the budget (read from the store: right after a restart) |
//! | `rollout_control_data_items` | gauge | kind | items held |
//! | `rollout_control_data_evicted_total` | counter | kind | items the budget evicted, oldest first (kept in the store: survives restarts) |
//! | `rollout_control_data_evicted_bytes_total` | counter | kind | bytes the budget evicted |
//! | `rollout_control_data_oldest_age_seconds` | gauge | | age of the oldest item held (server arrival time; 0 when empty): how far back the budget reaches. When it is short and evictions climb, the budget is too small for the incoming rate |
//! | `rollout_control_proxies` | gauge | | proxies in the polling table |
//! | `rollout_control_proxies_untracked_total` | counter | | polls of new proxies the full table could not track (`--max-proxies`); advancing holds meanwhile |
//! | `rollout_control_metrics_source_reads_total` | counter | source (`prometheus`, `envoy_admin`), result (`ok` `timeout` `unreachable` `error` `empty`) | the policy engine's reads of its metrics source (only while it runs); anything but `ok` leaves the tick without figures: inconclusive |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::store::budget;
use crate::store::proxies::ProxyTable;
use crate::store::{Store, StoreError};

/// The ingestion calls that take a permit (`http::ingest`), also the `path` label of
/// their refusals.
pub const INGEST_PATHS: [&str; 3] = ["/v1/shadow-records", "/v1/assignments", "/v1/feedback"];

/// The sidecar's counters. One per `AppState`; every method is cheap and lock-free
/// except the HTTP table (a short mutex) and the plan-change count (read from the
/// store at scrape time).
#[derive(Debug, Default)]
pub struct Metrics {
    shadow_records: AtomicU64,
    shadow_records_truncated: AtomicU64,
    assignments: AtomicU64,
    assignments_refused: AtomicU64,
    feedback_accepted: AtomicU64,
    feedback_unknown: AtomicU64,
    feedback_dropped: AtomicU64,
    /// Ingestion POSTs refused for want of a permit, by [`INGEST_PATHS`].
    ingest_refused: [AtomicU64; 3],
    /// (route template, status) -> answers. Bounded: routes are templates.
    http: Mutex<BTreeMap<(String, u16), u64>>,
    plan_ops: Mutex<PlanOps>,
}

/// Operations of the versions counted so far (`1..=through`).
#[derive(Debug, Default)]
struct PlanOps {
    through: u64,
    by_op: BTreeMap<String, u64>,
}

impl Metrics {
    pub fn shadow_records_stored(&self, n: u64) {
        self.shadow_records.fetch_add(n, Ordering::Relaxed);
    }

    pub fn shadow_records_truncated(&self, n: u64) {
        self.shadow_records_truncated
            .fetch_add(n, Ordering::Relaxed);
    }

    pub fn assignments_stored(&self, n: u64) {
        self.assignments.fetch_add(n, Ordering::Relaxed);
    }

    pub fn assignments_refused(&self, n: u64) {
        self.assignments_refused.fetch_add(n, Ordering::Relaxed);
    }

    pub fn feedback(&self, accepted: u64, unknown: u64, dropped: u64) {
        self.feedback_accepted
            .fetch_add(accepted, Ordering::Relaxed);
        self.feedback_unknown.fetch_add(unknown, Ordering::Relaxed);
        self.feedback_dropped.fetch_add(dropped, Ordering::Relaxed);
    }

    /// An ingestion POST to `INGEST_PATHS[index]` refused for want of a permit.
    pub fn ingest_refused(&self, index: usize) {
        if let Some(c) = self.ingest_refused.get(index) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn http_request(&self, route: &str, status: u16) {
        let mut map = self.http.lock().unwrap_or_else(PoisonError::into_inner);
        *map.entry((route.to_string(), status)).or_insert(0) += 1;
    }

    /// Counts the operations of versions not counted yet. Blocking (store reads).
    fn plan_changes(&self, store: &Store) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut ops = self.plan_ops.lock().unwrap_or_else(PoisonError::into_inner);
        let latest = store.current().map_or(0, |c| c.version());
        if ops.through == 0 {
            // Versions before the oldest kept were dropped (`--history-keep`).
            ops.through = store.oldest_version()?.map_or(0, |v| v.saturating_sub(1));
        }
        while ops.through < latest {
            let v = ops.through + 1;
            if let Some(record) = store.get(v)? {
                *ops.by_op.entry(record.op).or_insert(0) += 1;
            }
            ops.through = v;
        }
        Ok(ops.by_op.clone())
    }

    /// The exposition text. Blocking (reads the store).
    /// `source_reads`: the engine's reads of its metrics source, `(source, result,
    /// count)` (empty when the engine does not run).
    pub fn render(
        &self,
        store: &Store,
        proxies: &ProxyTable,
        source_reads: &[(&'static str, &'static str, u64)],
    ) -> Result<String, StoreError> {
        let mut out = String::with_capacity(2048);
        let version = store.current().map_or(0, |c| c.version());
        header(
            &mut out,
            "rollout_control_plan_version",
            "gauge",
            "Latest plan version in the store (0 before any plan).",
        );
        line(&mut out, "rollout_control_plan_version", &[], version);

        header(
            &mut out,
            "rollout_control_refused_connections_total",
            "counter",
            "Connections closed at accept because --max-connections were open.",
        );
        line(
            &mut out,
            "rollout_control_refused_connections_total",
            &[],
            crate::http::server::REFUSED_CONNECTIONS.load(Ordering::Relaxed),
        );

        header(
            &mut out,
            "rollout_control_store_recoveries_total",
            "counter",
            "Recoveries of the store after an I/O error (disk full), by result.",
        );
        let ok = store.reopens();
        let failed = store.write_failures().saturating_sub(ok);
        for (result, n) in [("ok", ok), ("failed", failed)] {
            line(
                &mut out,
                "rollout_control_store_recoveries_total",
                &[("result", result)],
                n,
            );
        }

        render_budget(&mut out, store)?;

        header(
            &mut out,
            "rollout_control_plan_changes_total",
            "counter",
            "Plan versions in the durable history, by operation.",
        );
        for (op, n) in self.plan_changes(store)? {
            line(
                &mut out,
                "rollout_control_plan_changes_total",
                &[("op", &op)],
                n,
            );
        }

        header(
            &mut out,
            "rollout_control_http_requests_total",
            "counter",
            "Answered HTTP requests by route template and status.",
        );
        let http = self
            .http
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for ((route, status), n) in http {
            line(
                &mut out,
                "rollout_control_http_requests_total",
                &[("route", &route), ("status", &status.to_string())],
                n,
            );
        }

        header(
            &mut out,
            "rollout_control_shadow_records_total",
            "counter",
            "Shadow comparison records stored since start.",
        );
        line(
            &mut out,
            "rollout_control_shadow_records_total",
            &[],
            self.shadow_records.load(Ordering::Relaxed),
        );
        header(
            &mut out,
            "rollout_control_shadow_records_truncated_total",
            "counter",
            "Shadow records stored since start whose predictions were cut to --max-record-bytes.",
        );
        line(
            &mut out,
            "rollout_control_shadow_records_truncated_total",
            &[],
            self.shadow_records_truncated.load(Ordering::Relaxed),
        );
        header(
            &mut out,
            "rollout_control_assignments_total",
            "counter",
            "Experiment assignments stored since start.",
        );
        line(
            &mut out,
            "rollout_control_assignments_total",
            &[],
            self.assignments.load(Ordering::Relaxed),
        );
        header(
            &mut out,
            "rollout_control_assignments_refused_total",
            "counter",
            "Assignments refused since start: the id was already assigned elsewhere.",
        );
        line(
            &mut out,
            "rollout_control_assignments_refused_total",
            &[],
            self.assignments_refused.load(Ordering::Relaxed),
        );
        header(
            &mut out,
            "rollout_control_feedback_total",
            "counter",
            "Experiment outcomes received since start, by result.",
        );
        for (result, counter) in [
            ("accepted", &self.feedback_accepted),
            ("unknown", &self.feedback_unknown),
            ("dropped", &self.feedback_dropped),
        ] {
            line(
                &mut out,
                "rollout_control_feedback_total",
                &[("result", result)],
                counter.load(Ordering::Relaxed),
            );
        }
        header(
            &mut out,
            "rollout_control_ingest_refused_total",
            "counter",
            "Ingestion POSTs answered 503 because every --ingest-concurrency permit stayed busy, by path.",
        );
        for (path, counter) in INGEST_PATHS.iter().zip(&self.ingest_refused) {
            line(
                &mut out,
                "rollout_control_ingest_refused_total",
                &[("path", path)],
                counter.load(Ordering::Relaxed),
            );
        }
        header(
            &mut out,
            "rollout_control_proxies",
            "gauge",
            "Proxies in the polling table.",
        );
        line(
            &mut out,
            "rollout_control_proxies",
            &[],
            proxies.len() as u64,
        );
        header(
            &mut out,
            "rollout_control_proxies_untracked_total",
            "counter",
            "Polls of new proxies the full proxies table could not track (--max-proxies).",
        );
        line(
            &mut out,
            "rollout_control_proxies_untracked_total",
            &[],
            proxies.untracked_total(),
        );
        if !source_reads.is_empty() {
            header(
                &mut out,
                "rollout_control_metrics_source_reads_total",
                "counter",
                "Reads of the policy engine's metrics source, by result (anything but ok: the tick is inconclusive).",
            );
            for (source, result, n) in source_reads {
                line(
                    &mut out,
                    "rollout_control_metrics_source_reads_total",
                    &[("source", source), ("result", result)],
                    *n,
                );
            }
        }
        Ok(out)
    }
}

/// The data budget's figures (`store::budget`). Blocking (one read transaction).
fn render_budget(out: &mut String, store: &Store) -> Result<(), StoreError> {
    let usage = store.data_usage()?;
    header(
        out,
        "rollout_control_data_budget_bytes",
        "gauge",
        "Bytes shadow records, assignments and outcomes may hold together (--data-budget-bytes).",
    );
    line(out, "rollout_control_data_budget_bytes", &[], usage.budget);
    type Pick = fn(&budget::Totals) -> u64;
    let series: [(&str, &str, &str, Pick); 4] = [
        (
            "rollout_control_data_bytes",
            "gauge",
            "Bytes held under the data budget, by kind.",
            |t| t.bytes,
        ),
        (
            "rollout_control_data_items",
            "gauge",
            "Items held under the data budget, by kind.",
            |t| t.items,
        ),
        (
            "rollout_control_data_evicted_total",
            "counter",
            "Items the data budget evicted (oldest first; outcomes last), by kind.",
            |t| t.evicted_items,
        ),
        (
            "rollout_control_data_evicted_bytes_total",
            "counter",
            "Bytes the data budget evicted, by kind.",
            |t| t.evicted_bytes,
        ),
    ];
    for (name, kind, help, pick) in series {
        header(out, name, kind, help);
        for (k, t) in &usage.kinds {
            line(out, name, &[("kind", k.as_str())], pick(t));
        }
    }
    header(
        out,
        "rollout_control_data_oldest_age_seconds",
        "gauge",
        "Age of the oldest item held under the data budget (server arrival time; 0 when empty).",
    );
    let age = usage.oldest_received_ms.map_or(0, |ms| {
        crate::util::timefmt::now_unix_ms().saturating_sub(ms) / 1000
    });
    line(out, "rollout_control_data_oldest_age_seconds", &[], age);
    Ok(())
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn line(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    out.push_str(name);
    if !labels.is_empty() {
        let inner: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let _ = write!(out, "{{{}}}", inner.join(","));
    }
    let _ = writeln!(out, " {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_escaping() {
        let mut out = String::new();
        line(&mut out, "m", &[], 3);
        line(&mut out, "m", &[("a", "x\"y\\z\n"), ("b", "2")], 4);
        assert_eq!(out, "m 3\nm{a=\"x\\\"y\\\\z\\n\",b=\"2\"} 4\n");
    }
}
