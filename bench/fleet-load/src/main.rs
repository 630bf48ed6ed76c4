//! `fleet-load`: simulates a fleet of proxies polling rollout-control, for `make bench`
//! (driven by `bench/fleet.py`).
//!
//! `--proxies N` distinct proxy ids (`bench-proxy-00042`) each poll `GET /v1/plan` once
//! a second, spread evenly over the second, the way the filter does: `If-None-Match`
//! with the ETag of the plan it has, `x-model-rollout-proxy` and
//! `x-model-rollout-plan-version` naming it and its version, and the proxy credential
//! (`--token-file`, `Authorization: Bearer`). A 200 gives it the new plan (its
//! `x-plan-version`); a 304 changes nothing. `--connections C` keep-alive HTTP/1.1
//! connections carry the polls (proxy `i` on connection `i mod C`), on one thread.
//!
//! Latency is measured from sending a poll to its answer's end; a poll also records
//! how late it left against its schedule (a generator that cannot keep up shows it
//! there). At the end one JSON object goes to stdout: polls and errors per second, the
//! latency percentiles over the measured window (`--warmup-s` on), and for every plan
//! version the unix ms at which the last proxy got it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// The sidecar, `127.0.0.1:9090`.
    #[arg(long)]
    addr: String,
    #[arg(long, default_value_t = 20_000)]
    proxies: usize,
    #[arg(long, default_value_t = 200)]
    connections: usize,
    /// How long to poll, in seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Seconds at the start left out of the latency figures.
    #[arg(long, default_value_t = 5)]
    warmup_s: u64,
    /// The proxy credential (one line).
    #[arg(long)]
    token_file: Option<PathBuf>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One simulated proxy.
struct Proxy {
    id: String,
    version: u64,
}

/// What one connection saw.
#[derive(Default)]
struct Seen {
    /// (second since start, latency us, lateness us) per answered poll.
    polls: Vec<(u32, u32, u32)>,
    errors_by_second: BTreeMap<u32, u64>,
    /// Plan version -> the latest unix ms at which one of this connection's proxies
    /// first got it.
    got_version_ms: BTreeMap<u64, u64>,
    /// Proxies of this connection at each version at the end.
    final_versions: BTreeMap<u64, usize>,
}

async fn connect(addr: &str) -> Option<http1::SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.ok()?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Some(sender)
}

async fn run_connection(
    args: Args,
    token: Option<String>,
    mut proxies: Vec<(usize, Proxy)>,
    start: Instant,
) -> Seen {
    let mut seen = Seen::default();
    let end = start + Duration::from_secs(args.seconds);
    let n = args.proxies.max(1) as u64;
    let mut sender = connect(&args.addr).await;
    let mut round: u64 = 0;
    'outer: loop {
        for (i, p) in proxies.iter_mut() {
            let offset_ns = (*i as u64) * 1_000_000_000 / n;
            let due = start + Duration::from_secs(round) + Duration::from_nanos(offset_ns);
            if due >= end {
                break 'outer;
            }
            tokio::time::sleep_until(due.into()).await;
            let sent = Instant::now();
            let second = u32::try_from(sent.duration_since(start).as_secs()).unwrap_or(u32::MAX);
            let late = u32::try_from(sent.duration_since(due).as_micros()).unwrap_or(u32::MAX);
            let mut req = Request::get("/v1/plan")
                .header("host", args.addr.as_str())
                .header("x-model-rollout-proxy", p.id.as_str());
            if p.version > 0 {
                req = req
                    .header("if-none-match", format!("\"v{}\"", p.version))
                    .header("x-model-rollout-plan-version", p.version);
            }
            if let Some(t) = &token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let Ok(req) = req.body(Empty::<Bytes>::new()) else {
                continue;
            };
            if sender.as_ref().is_none_or(|s| s.is_closed()) {
                sender = connect(&args.addr).await;
            }
            let Some(s) = sender.as_mut() else {
                *seen.errors_by_second.entry(second).or_insert(0) += 1;
                continue;
            };
            let ok = match s.send_request(req).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let version = resp
                        .headers()
                        .get("x-plan-version")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    let body_ok = resp.into_body().collect().await.is_ok();
                    if status == 200 {
                        if let Some(v) = version.filter(|v| *v != p.version) {
                            p.version = v;
                            let at = unix_ms();
                            let slot = seen.got_version_ms.entry(v).or_insert(0);
                            *slot = (*slot).max(at);
                        }
                    }
                    body_ok && (status == 200 || status == 304)
                }
                Err(_) => {
                    sender = None;
                    false
                }
            };
            if ok {
                let lat = u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
                seen.polls.push((second, lat, late));
            } else {
                *seen.errors_by_second.entry(second).or_insert(0) += 1;
            }
        }
        round += 1;
    }
    for (_, p) in &proxies {
        *seen.final_versions.entry(p.version).or_insert(0) += 1;
    }
    seen
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64)).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    sorted.get(idx).map_or(f64::NAN, |v| f64::from(*v) / 1000.0)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let token = match &args.token_file {
        Some(f) => match std::fs::read_to_string(f) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                eprintln!("fleet-load: cannot read {}: {e}", f.display());
                return std::process::ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet-load: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    let results: Vec<Seen> = local.block_on(&rt, async {
        let conns = args.connections.clamp(1, args.proxies.max(1));
        let mut groups: Vec<Vec<(usize, Proxy)>> = (0..conns).map(|_| Vec::new()).collect();
        for i in 0..args.proxies {
            if let Some(g) = groups.get_mut(i % conns) {
                g.push((
                    i,
                    Proxy {
                        id: format!("bench-proxy-{i:05}"),
                        version: 0,
                    },
                ));
            }
        }
        let start = Instant::now() + Duration::from_millis(200);
        let handles: Vec<_> = groups
            .into_iter()
            .map(|g| {
                tokio::task::spawn_local(run_connection(args.clone(), token.clone(), g, start))
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            if let Ok(s) = h.await {
                out.push(s);
            }
        }
        out
    });
    let mut lat: Vec<u32> = Vec::new();
    let mut late: Vec<u32> = Vec::new();
    let mut per_second: BTreeMap<u32, u64> = BTreeMap::new();
    let mut errors: BTreeMap<u32, u64> = BTreeMap::new();
    let mut got: BTreeMap<u64, u64> = BTreeMap::new();
    let mut finals: BTreeMap<u64, usize> = BTreeMap::new();
    let warm = u32::try_from(args.warmup_s).unwrap_or(u32::MAX);
    for s in &results {
        for (sec, l, lt) in &s.polls {
            *per_second.entry(*sec).or_insert(0) += 1;
            if *sec >= warm {
                lat.push(*l);
                late.push(*lt);
            }
        }
        for (sec, n) in &s.errors_by_second {
            *errors.entry(*sec).or_insert(0) += n;
        }
        for (v, ms) in &s.got_version_ms {
            let slot = got.entry(*v).or_insert(0);
            *slot = (*slot).max(*ms);
        }
        for (v, n) in &s.final_versions {
            *finals.entry(*v).or_insert(0) += n;
        }
    }
    lat.sort_unstable();
    late.sort_unstable();
    let measured_s = args.seconds.saturating_sub(args.warmup_s).max(1) as f64;
    let out = serde_json::json!({
        "proxies": args.proxies,
        "connections": args.connections,
        "seconds": args.seconds,
        "warmup_s": args.warmup_s,
        "polls_measured": lat.len(),
        "polls_per_s": (lat.len() as f64) / measured_s,
        "errors": errors.values().sum::<u64>(),
        "latency_ms": {"p50": percentile(&lat, 50.0), "p99": percentile(&lat, 99.0),
                        "p999": percentile(&lat, 99.9), "max": percentile(&lat, 100.0)},
        "send_late_ms": {"p50": percentile(&late, 50.0), "p99": percentile(&late, 99.0)},
        "polls_by_second": per_second.values().collect::<Vec<_>>(),
        "errors_by_second": errors,
        "last_proxy_got_version_unix_ms": got,
        "proxies_by_final_version": finals,
    });
    println!("{out}");
    std::process::ExitCode::SUCCESS
}
