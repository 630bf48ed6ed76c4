//! Traffic generator for demos: sends OIP infer requests at a target rate,
//! spread round robin over paths, with sticky user ids, and tallies which
//! variant the proxy routed to (response header) against which model version
//! answered (response body).

use crate::rng::splitmix64;
use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Flags of `rollout-demo traffic`.
#[derive(Debug, Clone, clap::Args)]
pub struct TrafficArgs {
    /// Base URL of the Envoy listener (plain http).
    #[arg(long, default_value = "http://127.0.0.1:10000")]
    pub url: String,
    /// Request path; repeat to spread requests over several paths round robin.
    #[arg(
        long = "path",
        value_name = "PATH",
        default_value = "/v2/models/fraud/infer"
    )]
    pub paths: Vec<String>,
    /// Number of distinct users (user-1..user-N); 0 sends no user header.
    #[arg(long, default_value_t = 100)]
    pub users: u64,
    /// Header carrying the user id.
    #[arg(long, default_value = "x-user-id")]
    pub user_header: String,
    /// Target total requests per second; 0 = as fast as --concurrency allows.
    #[arg(long, default_value_t = 50.0)]
    pub rps: f64,
    /// Seconds to run (fractions allowed); 0 = until Ctrl-C.
    #[arg(long, default_value_t = 0.0)]
    pub duration: f64,
    /// Stop after this many requests; 0 = no limit.
    #[arg(long, default_value_t = 0)]
    pub requests: u64,
    /// Requests in flight at most; a due request finding all slots busy is
    /// skipped (counted), so a slow backend does not cause catch-up bursts.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Response header naming the variant the proxy picked.
    #[arg(long, default_value = "x-model-variant")]
    pub variant_header: String,
    /// Seconds between live tables (fractions allowed); 0 = no live tables.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Per-request timeout in milliseconds (a timeout counts as an error).
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Extra request header "name: value" (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Print only one JSON summary object at the end (no tables).
    #[arg(long)]
    pub json: bool,
    /// Clear the screen before each live table.
    #[arg(long)]
    pub clear: bool,
}

/// Tally of one (path, variant, answered_by) row.
#[derive(Debug, Default, Clone)]
struct Cell {
    count: u64,
    errors: u64,
    bad_outputs: u64,
    latency_sum_ms: f64,
    latency_max_ms: f64,
}

impl Cell {
    fn add(&mut self, o: &Outcome) {
        self.count += 1;
        self.errors += u64::from(!o.ok);
        self.bad_outputs += u64::from(o.bad_output);
        self.latency_sum_ms += o.latency_ms;
        self.latency_max_ms = self.latency_max_ms.max(o.latency_ms);
    }

    fn merge(&mut self, other: &Cell) {
        self.count += other.count;
        self.errors += other.errors;
        self.bad_outputs += other.bad_outputs;
        self.latency_sum_ms += other.latency_sum_ms;
        self.latency_max_ms = self.latency_max_ms.max(other.latency_max_ms);
    }

    fn avg_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.latency_sum_ms / self.count as f64
        }
    }
}

type Key = (String, String, String);

#[derive(Debug, Default)]
struct Tally {
    cells: BTreeMap<Key, Cell>,
    transport_errors: u64,
}

impl Tally {
    fn add(&mut self, o: &Outcome) {
        let key = (o.path.clone(), o.variant.clone(), o.answered_by.clone());
        self.cells.entry(key).or_default().add(o);
        self.transport_errors += u64::from(o.transport_error);
    }

    fn merge(&mut self, other: &Tally) {
        for (k, c) in &other.cells {
            self.cells.entry(k.clone()).or_default().merge(c);
        }
        self.transport_errors += other.transport_errors;
    }

    fn total(&self) -> Cell {
        let mut t = Cell::default();
        for c in self.cells.values() {
            t.merge(c);
        }
        t
    }

    fn path_total(&self, path: &str) -> u64 {
        self.cells
            .iter()
            .filter(|((p, _, _), _)| p == path)
            .map(|(_, c)| c.count)
            .sum()
    }
}

/// What one request came back as.
#[derive(Debug, Clone)]
struct Outcome {
    path: String,
    variant: String,
    answered_by: String,
    ok: bool,
    transport_error: bool,
    bad_output: bool,
    latency_ms: f64,
}

struct Plan {
    base: String,
    paths: Vec<String>,
    users: u64,
    user_header: Option<HeaderName>,
    variant_header: HeaderName,
    extra_headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

fn parse_header(spec: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let (name, value) = spec
        .split_once(':')
        .with_context(|| format!("--header {spec:?}: expected \"name: value\""))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .with_context(|| format!("--header {spec:?}: invalid name"))?;
    let value = HeaderValue::from_str(value.trim())
        .with_context(|| format!("--header {spec:?}: invalid value"))?;
    Ok((name, value))
}

impl Plan {
    fn from_args(a: &TrafficArgs) -> anyhow::Result<Self> {
        let base = a.url.trim_end_matches('/').to_owned();
        let base_uri: Uri = base.parse().with_context(|| format!("--url {:?}", a.url))?;
        if base_uri.scheme_str() != Some("http") {
            bail!("--url must be a plain http:// URL");
        }
        if a.paths.is_empty() || a.paths.iter().any(|p| !p.starts_with('/')) {
            bail!("--path must start with '/'");
        }
        if !(a.rps.is_finite() && a.rps >= 0.0) {
            bail!("--rps must be >= 0");
        }
        if !(a.duration.is_finite() && a.duration >= 0.0) {
            bail!("--duration must be >= 0");
        }
        if !(a.interval.is_finite() && a.interval >= 0.0) {
            bail!("--interval must be >= 0");
        }
        if a.concurrency == 0 {
            bail!("--concurrency must be >= 1");
        }
        let user_header = if a.users == 0 {
            None
        } else {
            Some(
                HeaderName::from_bytes(a.user_header.as_bytes())
                    .context("--user-header is not a valid header name")?,
            )
        };
        let variant_header = HeaderName::from_bytes(a.variant_header.as_bytes())
            .context("--variant-header is not a valid header name")?;
        let extra_headers = a
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            base,
            paths: a.paths.clone(),
            users: a.users,
            user_header,
            variant_header,
            extra_headers,
            timeout: Duration::from_millis(a.timeout_ms.max(1)),
        })
    }
}

/// Four numbers in [-5, 5] (2 decimals), varied per request and reproducible.
pub fn request_numbers(seq: u64) -> [f64; 4] {
    let mut out = [0.0; 4];
    for (i, slot) in out.iter_mut().enumerate() {
        let r = splitmix64(seq.wrapping_mul(4).wrapping_add(i as u64 + 1));
        *slot = ((r % 1001) as f64 - 500.0) / 100.0;
    }
    out
}

/// The OIP infer body sent as request number `seq`.
pub fn request_body(seq: u64) -> String {
    json!({
        "id": format!("req-{seq}"),
        "inputs": [{
            "name": "x",
            "shape": [1, 4],
            "datatype": "FP32",
            "data": request_numbers(seq),
        }],
    })
    .to_string()
}

/// Salt mixed into the request number to pick its user.
const USER_SALT: u64 = 0x5eed_5eed_5eed_5eed;

/// The user id of request `seq` among `users` (1-based), or None for 0 users.
pub fn user_for(seq: u64, users: u64) -> Option<u64> {
    (users > 0).then(|| splitmix64(seq ^ USER_SALT) % users + 1)
}

/// Reads `model_version` and whether the first output is missing/null/NaN
/// from an infer response body. Tolerates the bare `NaN` token.
fn inspect_body(body: &[u8]) -> (Option<String>, bool) {
    let parsed = serde_json::from_slice::<Value>(body).or_else(|_| {
        let text = String::from_utf8_lossy(body).replace("NaN", "null");
        serde_json::from_str::<Value>(&text)
    });
    let Ok(v) = parsed else {
        return (None, true);
    };
    let version = v
        .get("model_version")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let first = v.pointer("/outputs/0/data/0");
    let bad = !matches!(first, Some(Value::Number(_)));
    (version, bad)
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn send_one(client: &HttpClient, plan: &Plan, seq: u64) -> Outcome {
    let path = plan
        .paths
        .get((seq % plan.paths.len() as u64) as usize)
        .cloned()
        .unwrap_or_default();
    let started = Instant::now();
    let mut outcome = Outcome {
        path: path.clone(),
        variant: "-".to_owned(),
        answered_by: "-".to_owned(),
        ok: false,
        transport_error: true,
        bad_output: false,
        latency_ms: 0.0,
    };
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(format!("{}{}", plan.base, path))
        .header(CONTENT_TYPE, "application/json");
    if let (Some(name), Some(user)) = (&plan.user_header, user_for(seq, plan.users)) {
        builder = builder.header(name, format!("user-{user}"));
    }
    for (name, value) in &plan.extra_headers {
        builder = builder.header(name, value);
    }
    let Ok(request) = builder.body(Full::new(Bytes::from(request_body(seq)))) else {
        return outcome;
    };
    let exchange = async {
        let response = client.request(request).await.ok()?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some((parts, body))
    };
    let result = tokio::time::timeout(plan.timeout, exchange).await;
    outcome.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(Some((parts, body))) = result {
        outcome.transport_error = false;
        outcome.ok = parts.status.is_success();
        if let Some(v) = parts.headers.get(&plan.variant_header) {
            outcome.variant = String::from_utf8_lossy(v.as_bytes()).into_owned();
        }
        let (version, bad) = inspect_body(&body);
        if let Some(version) = version {
            outcome.answered_by = version;
        }
        outcome.bad_output = outcome.ok && bad;
    }
    outcome
}

#[derive(Default)]
struct Shared {
    interval: Tally,
    total: Tally,
}

fn fmt_row(cells: &[String], widths: &[usize], out: &mut String) {
    out.push_str("  ");
    for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
        // First three columns left-aligned, numbers right-aligned.
        if i < 3 {
            let _ = write!(out, "{c:<w$}  ");
        } else {
            let _ = write!(out, "{c:>w$}  ");
        }
    }
    while out.ends_with(' ') {
        out.pop();
    }
    out.push('\n');
}

fn pct(n: u64, of: u64) -> String {
    if of == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}%", n as f64 * 100.0 / of as f64)
    }
}

/// Renders the table: one row per (path, variant, answered by); percentages
/// are within the row's path. `interval` None renders cumulative only.
fn render_table(interval: Option<&Tally>, total: &Tally) -> String {
    let mut header: Vec<String> = ["PATH", "VARIANT", "ANSWERED BY"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    if interval.is_some() {
        header.extend(["INTERVAL", "%", "ERR"].iter().map(|s| (*s).to_owned()));
    }
    header.extend(
        ["TOTAL", "%", "ERR", "BAD OUT", "AVG MS", "MAX MS"]
            .iter()
            .map(|s| (*s).to_owned()),
    );
    let empty = Cell::default();
    let mut rows = vec![header];
    for (key, cum) in &total.cells {
        let (path, variant, answered) = key;
        let mut row = vec![path.clone(), variant.clone(), answered.clone()];
        if let Some(iv) = interval {
            let c = iv.cells.get(key).unwrap_or(&empty);
            row.push(c.count.to_string());
            row.push(pct(c.count, iv.path_total(path)));
            row.push(c.errors.to_string());
        }
        row.push(cum.count.to_string());
        row.push(pct(cum.count, total.path_total(path)));
        row.push(cum.errors.to_string());
        row.push(cum.bad_outputs.to_string());
        row.push(format!("{:.1}", cum.avg_ms()));
        row.push(format!("{:.1}", cum.latency_max_ms));
        rows.push(row);
    }
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        fmt_row(row, &widths, &mut out);
    }
    out
}

struct Counters {
    sent: u64,
    skipped: u64,
}

fn summary_json(args: &TrafficArgs, total: &Tally, c: &Counters, elapsed: f64) -> Value {
    let t = total.total();
    let mut paths = serde_json::Map::new();
    for ((path, variant, answered), cell) in &total.cells {
        let path_total = total.path_total(path);
        let p = paths
            .entry(path.clone())
            .or_insert_with(|| json!({"requests": path_total, "errors": 0, "variants": {}}));
        if let Some(e) = p.get_mut("errors") {
            *e = json!(e.as_u64().unwrap_or(0) + cell.errors);
        }
        let Some(variants) = p.get_mut("variants").and_then(Value::as_object_mut) else {
            continue;
        };
        let v = variants
            .entry(variant.clone())
            .or_insert_with(|| json!({"count": 0, "errors": 0, "answered_by": {}}));
        let count = v.get("count").and_then(Value::as_u64).unwrap_or(0) + cell.count;
        let errors = v.get("errors").and_then(Value::as_u64).unwrap_or(0) + cell.errors;
        v["count"] = json!(count);
        v["errors"] = json!(errors);
        v["pct"] = json!(if path_total == 0 {
            0.0
        } else {
            (count as f64 * 1000.0 / path_total as f64).round() / 10.0
        });
        v["answered_by"][answered.as_str()] = json!(cell.count);
    }
    let rows: Vec<Value> = total
        .cells
        .iter()
        .map(|((path, variant, answered), cell)| {
            json!({
                "path": path,
                "variant": variant,
                "answered_by": answered,
                "count": cell.count,
                "errors": cell.errors,
                "bad_outputs": cell.bad_outputs,
                "avg_latency_ms": (cell.avg_ms() * 10.0).round() / 10.0,
                "max_latency_ms": (cell.latency_max_ms * 10.0).round() / 10.0,
            })
        })
        .collect();
    json!({
        "url": args.url,
        "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
        "sent": c.sent,
        "completed": t.count,
        "ok": t.count - t.errors,
        "errors": t.errors,
        "transport_errors": total.transport_errors,
        "bad_outputs": t.bad_outputs,
        "skipped": c.skipped,
        "achieved_rps": if elapsed > 0.0 { (t.count as f64 / elapsed * 10.0).round() / 10.0 } else { 0.0 },
        "paths": paths,
        "rows": rows,
    })
}

/// Runs the generator until `--duration`, `--requests` or `stop` (e.g. Ctrl-C),
/// prints live tables and a final summary (or one JSON object with `--json`),
/// and returns the JSON summary.
pub async fn run(args: TrafficArgs, stop: impl Future<Output = ()>) -> anyhow::Result<Value> {
    let plan = Arc::new(Plan::from_args(&args)?);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.concurrency)
        .build_http();
    let shared = Arc::new(Mutex::new(Shared::default()));
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let start = Instant::now();
    let tokio_start = tokio::time::Instant::now();
    let deadline =
        (args.duration > 0.0).then(|| tokio_start + Duration::from_secs_f64(args.duration));
    let mut report = (args.interval > 0.0 && !args.json).then(|| {
        let period = Duration::from_secs_f64(args.interval.max(0.05));
        tokio::time::interval_at(tokio_start + period, period)
    });
    let mut counters = Counters {
        sent: 0,
        skipped: 0,
    };
    let mut slot_no: u64 = 0;
    if !args.json {
        println!(
            "traffic -> {} paths={:?} users={} rps={} concurrency={} duration={}",
            plan.base,
            plan.paths,
            plan.users,
            args.rps,
            args.concurrency,
            if args.duration > 0.0 {
                format!("{}s", args.duration)
            } else {
                "until Ctrl-C".to_owned()
            }
        );
    }
    tokio::pin!(stop);
    loop {
        if args.requests > 0 && counters.sent >= args.requests {
            break;
        }
        let next_slot = async {
            if args.rps > 0.0 {
                let due = tokio_start + Duration::from_secs_f64(slot_no as f64 / args.rps);
                tokio::time::sleep_until(due).await;
                slots.clone().try_acquire_owned().ok()
            } else {
                slots.clone().acquire_owned().await.ok()
            }
        };
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let tick = async {
            match report.as_mut() {
                Some(r) => {
                    r.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = &mut stop => break,
            () = until_deadline => break,
            () = tick => {
                let text = {
                    let mut s = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let iv = std::mem::take(&mut s.interval);
                    let t = s.total.total();
                    let ivt = iv.total();
                    format!(
                        "{}[{:>7.1}s] interval: {} done, {} err | total: sent {}, done {}, err {}, skipped {}, {:.1} req/s\n{}",
                        if args.clear { "\x1b[2J\x1b[H" } else { "" },
                        start.elapsed().as_secs_f64(),
                        ivt.count,
                        ivt.errors,
                        counters.sent,
                        t.count,
                        t.errors,
                        counters.skipped,
                        t.count as f64 / start.elapsed().as_secs_f64().max(1e-9),
                        render_table(Some(&iv), &s.total),
                    )
                };
                println!("{text}");
            }
            permit = next_slot => {
                slot_no += 1;
                let Some(permit) = permit else {
                    counters.skipped += 1;
                    continue;
                };
                let seq = counters.sent;
                counters.sent += 1;
                let (client, plan, shared) = (client.clone(), plan.clone(), shared.clone());
                tokio::spawn(async move {
                    let outcome = send_one(&client, &plan, seq).await;
                    let mut s = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    s.interval.add(&outcome);
                    s.total.add(&outcome);
                    drop(permit);
                });
            }
        }
    }
    // Let the requests in flight finish (bounded by the request timeout).
    let all = u32::try_from(args.concurrency).unwrap_or(u32::MAX);
    let grace = plan.timeout + Duration::from_secs(1);
    let _ = tokio::time::timeout(grace, slots.acquire_many(all)).await;
    let elapsed = start.elapsed().as_secs_f64();
    let s = shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut total = Tally::default();
    total.merge(&s.total);
    drop(s);
    let summary = summary_json(&args, &total, &counters, elapsed);
    if args.json {
        println!("{summary}");
    } else {
        let t = total.total();
        println!(
            "=== summary: {:.1}s, sent {}, done {}, ok {}, errors {} (transport {}), bad outputs {}, skipped {}, {:.1} req/s\n{}",
            elapsed,
            counters.sent,
            t.count,
            t.count - t.errors,
            t.errors,
            total.transport_errors,
            t.bad_outputs,
            counters.skipped,
            t.count as f64 / elapsed.max(1e-9),
            render_table(None, &total),
        );
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_vary_and_are_valid_oip() {
        let a: Value = serde_json::from_str(&request_body(1)).unwrap();
        let b: Value = serde_json::from_str(&request_body(2)).unwrap();
        assert_ne!(a["inputs"][0]["data"], b["inputs"][0]["data"]);
        assert_eq!(a["inputs"][0]["shape"], json!([1, 4]));
        for seq in 0..1000 {
            assert!(request_numbers(seq)
                .iter()
                .all(|x| (-5.0..=5.0).contains(x)));
        }
    }

    #[test]
    fn users_are_in_range_and_all_used() {
        assert_eq!(user_for(3, 0), None);
        let mut seen = std::collections::BTreeSet::new();
        for seq in 0..1000 {
            let u = user_for(seq, 10).unwrap();
            assert!((1..=10).contains(&u));
            seen.insert(u);
        }
        assert_eq!(seen.len(), 10);
    }

    #[test]
    fn inspect_tolerates_nan() {
        let body = br#"{"model_version":"canary","outputs":[{"data":[NaN]}]}"#;
        assert_eq!(inspect_body(body), (Some("canary".to_owned()), true));
        let body = br#"{"model_version":"stable","outputs":[{"data":[0.5]}]}"#;
        assert_eq!(inspect_body(body), (Some("stable".to_owned()), false));
        assert_eq!(inspect_body(b"{\"error\":\"x\"}"), (None, true));
    }

    #[test]
    fn table_percentages_within_path() {
        let mut t = Tally::default();
        for (variant, n) in [("stable", 3), ("canary", 1)] {
            for _ in 0..n {
                t.add(&Outcome {
                    path: "/p".into(),
                    variant: variant.into(),
                    answered_by: variant.into(),
                    ok: true,
                    transport_error: false,
                    bad_output: false,
                    latency_ms: 1.0,
                });
            }
        }
        let text = render_table(None, &t);
        assert!(text.contains("75.0%"), "{text}");
        assert!(text.contains("25.0%"), "{text}");
    }

    #[test]
    fn bad_header_flag_rejected() {
        assert!(parse_header("no-colon").is_err());
        assert!(parse_header("x-a: b").is_ok());
    }
}
