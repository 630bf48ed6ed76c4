//! Slow and many clients against the real binary: plan polls keep answering fast
//! while three heavy reports run and 300 connections stall mid-header; stalled
//! headers and bodies are cut off by their timeouts; connections beyond the limit are
//! closed; SIGTERM exits within 10 s with the stalled connections still open.

// Test helpers: failing loudly is their job (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{agent, call, write_file, ServerProc, TempDir, PLAN};
use rollout_control::store::{shadow_records, Store};
use rollout_core::wire::ShadowRecord;
use serde_json::json;

/// Records in the store: each report reads and decodes all of them.
const RECORDS: u64 = 10_000;

fn seed_records(dir: &std::path::Path) {
    let store = Store::open(dir).unwrap();
    let prediction: Vec<f64> = (0..100).map(|i| f64::from(i) / 7.0).collect();
    let records: Vec<ShadowRecord> = (0..RECORDS)
        .map(|i| {
            serde_json::from_value(json!({
                "correlation_id": format!("req-{i:06}-abc"),
                "rollout": "fraud",
                "variant": "canary",
                "shadow_cluster": "shadow_model",
                "agree": i % 3 != 0,
                "verdict": if i % 3 == 0 { "prediction" } else { "agree" },
                "primary_status": 200,
                "shadow_status": 200,
                "primary_latency_ms": i % 100,
                "shadow_latency_ms": i % 50,
                "primary_prediction": prediction,
                "shadow_prediction": prediction,
                "unix_ms": 1_700_000_000_000u64 + i,
            }))
            .unwrap()
        })
        .collect();
    for chunk in records.chunks(5_000) {
        shadow_records::store_records(&store, chunk).unwrap();
    }
    store.close().unwrap();
}

/// A connection that sent half a request line and its headers, then nothing.
fn stalled(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /v1/plan HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    s
}

/// Whether the server closed `s` (EOF or reset) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            // hyper may answer 408 before closing: keep reading to the end.
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[test]
fn polls_stay_fast_under_heavy_reads_and_stalled_connections() {
    let dir = TempDir::new("slow-clients");
    let data = dir.path().join("data");
    seed_records(&data);
    let plan = write_file(dir.path(), "plan.json", PLAN);
    let mut server = ServerProc::start(
        &data,
        &[
            "--initial-plan",
            plan.to_str().unwrap(),
            "--header-timeout-ms",
            "2000",
        ],
    );
    let url = server.url.clone();
    let addr = url.trim_start_matches("http://").to_string();

    let stop = Arc::new(AtomicBool::new(false));
    let reports = Arc::new(AtomicUsize::new(0));
    let heavy: Vec<_> = (0..3)
        .map(|_| {
            let (url, stop, reports) = (url.clone(), Arc::clone(&stop), Arc::clone(&reports));
            std::thread::spawn(move || {
                // Three reports share one heavy-read permit: allow for the queue.
                let a: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .proxy(None)
                    .timeout_global(Some(Duration::from_secs(120)))
                    .build()
                    .into();
                while !stop.load(Ordering::SeqCst) {
                    let (s, j, _) = call(
                        &a,
                        "GET",
                        &format!("{url}/v1/shadow-report?rollout=fraud"),
                        None,
                    )
                    .unwrap();
                    assert_eq!(s, 200, "{j}");
                    assert_eq!(j["records"], RECORDS);
                    reports.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let mut slow: Vec<TcpStream> = (0..300).map(|_| stalled(&addr)).collect();

    // Polls like the filter's: keep-alive, If-None-Match after the first.
    let a = agent();
    let mut times = Vec::new();
    let t0 = Instant::now();
    while times.len() < 200 {
        let start = Instant::now();
        let resp = a
            .get(format!("{url}/v1/plan"))
            .header("if-none-match", "\"v1\"")
            .call()
            .unwrap();
        assert!(matches!(resp.status().as_u16(), 200 | 304));
        times.push(start.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    let during = t0.elapsed();
    let heavy_done = reports.load(Ordering::SeqCst);
    times.sort();
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    eprintln!(
        "plan polls during 3 concurrent shadow reports over {RECORDS} records and 300 \
         stalled connections: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} polls in {:.1} s; \
         {heavy_done} reports finished meanwhile)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3,
        times.len(),
        during.as_secs_f64(),
    );
    assert!(p99 < Duration::from_millis(50), "p99 {p99:?}");

    // The header timeout (2 s here) closes the stalled connections.
    let closed = slow
        .iter_mut()
        .take(20)
        .map(|s| closed_within(s, Duration::from_secs(5)))
        .filter(|c| *c)
        .count();
    assert_eq!(
        closed, 20,
        "stalled headers are cut off by the header timeout"
    );
    stop.store(true, Ordering::SeqCst);
    for h in heavy {
        h.join().unwrap();
    }

    // SIGTERM with 300 fresh stalled connections and a body that never finishes.
    let _slow: Vec<TcpStream> = (0..300).map(|_| stalled(&addr)).collect();
    let mut body = TcpStream::connect(&addr).unwrap();
    body.write_all(b"PUT /v1/plan HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    let status = server.terminate();
    let took = start.elapsed();
    eprintln!(
        "SIGTERM with 301 stalled connections: exited in {:.2} s",
        took.as_secs_f64()
    );
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(10));
}

#[test]
fn stalled_body_is_answered_408_and_extra_connections_are_closed() {
    let dir = TempDir::new("slow-body");
    let data = dir.path().join("data");
    let plan = write_file(dir.path(), "plan.json", PLAN);
    let server = ServerProc::start(
        &data,
        &[
            "--initial-plan",
            plan.to_str().unwrap(),
            "--body-timeout-ms",
            "500",
            "--max-connections",
            "8",
        ],
    );
    let addr = server.url.trim_start_matches("http://").to_string();

    let mut body = TcpStream::connect(&addr).unwrap();
    body.write_all(b"PUT /v1/plan HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        .unwrap();
    body.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = body.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 500 ms"), "{answer}");

    // 8 open connections: the 9th is closed at once; polls work again once one closes.
    let mut held: Vec<TcpStream> = (0..8).map(|_| stalled(&addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(&addr).unwrap();
    let _ = extra.write_all(b"GET /v1/plan HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)),
        "beyond the limit: closed"
    );
    held.clear();
    std::thread::sleep(Duration::from_millis(200));
    let (s, _, v) = call(&agent(), "GET", &format!("{}/v1/plan", server.url), None).unwrap();
    assert_eq!((s, v), (200, Some(1)));
}
