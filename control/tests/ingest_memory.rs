//! Ingestion under load against the real binary: the `--ingest-concurrency` permit
//! (`http::ingest`) bounds how many ingestion bodies are read, parsed and stored at
//! once, whatever the number of clients.
//!
//! `many_large_batches_keep_peak_memory_to_the_permits`: 32 clients post at once a
//! batch each of about 4 MiB (`MAX_INGEST_BODY`): 34 shadow records of about 118 KiB,
//! their predictions arrays of 30,000 zeros (`0,`: 2 bytes of text, a 32-byte value
//! once parsed, so about 16 times the text, about 65 MiB per batch). Each running
//! ingest holds its body (4 MiB), the parsed batch (about 16 × 4 MiB) and the
//! records serialized for the store (4 MiB): about 18 × MAX_INGEST_BODY. The parses
//! run on the blocking pool, whose threads allocate from their own malloc arenas, so
//! memory freed by one batch is not always reused by the next: measured peaks spread
//! from 176 to 251 MiB over runs. The sidecar's peak RSS (VmHWM) stays under
//!
//!     BASE + N × 28 × MAX_INGEST_BODY
//!
//! with N = `--ingest-concurrency` (2 here) and BASE = 80 MiB (the process with its
//! runtime, a full 16 MiB redb cache and allocator slack, as in report_memory.rs):
//! 304 MiB: 10 × 4 MiB per permit of margin for the arenas over the 18 × 4 MiB each
//! running ingest holds. A request waiting for a permit holds only its headers (its body stays in
//! the socket); one refused is drained a frame at a time. Without the permit the 32
//! parsed batches could all be held at once while they queue for the store's one
//! writer: about 2 GiB. Every post is either stored (200, its count acknowledged) or
//! refused (503 with `Retry-After: 1`); the store holds exactly the acknowledged
//! records. Plan polls run meanwhile and never wait for the permit.
//!
//! `a_busy_permit_refuses_with_503_and_polls_still_answer`: a client holding the one
//! permit (its body stalled) makes the next post wait 2 s and get 503, counted in
//! `rollout_control_ingest_refused_total{path}`, while plan polls answer; once the
//! stalled body times out, a post is stored.

// Test helpers: failing loudly is their job (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{agent, call, mib, peak_rss, write_file, ServerProc, TempDir, PLAN};

const MAX_INGEST_BODY: u64 = rollout_core::wire::MAX_INGEST_BODY as u64;
/// `--ingest-concurrency` of the load test.
const PERMITS: u64 = 2;
const CLIENTS: usize = 32;
const RECORDS_PER_BATCH: usize = 34;
const ZEROS: usize = 30_000;
/// The process with its runtime, a full redb cache and allocator slack.
const BASE: u64 = 80 * 1024 * 1024;

/// A batch of shadow records whose predictions are long arrays of zeros.
fn batch(client: usize) -> String {
    let zeros = format!("[{}0]", "0,".repeat(ZEROS - 1));
    let records: Vec<String> = (0..RECORDS_PER_BATCH)
        .map(|i| {
            format!(
                r#"{{"correlation_id":"c{client:02}-r{i:03}","rollout":"fraud","variant":"canary","shadow_cluster":"shadow_model","agree":false,"verdict":"prediction","primary_status":200,"shadow_status":200,"primary_latency_ms":5,"shadow_latency_ms":7,"primary_prediction":{zeros},"shadow_prediction":{zeros},"unix_ms":{}}}"#,
                1_700_000_000_000u64 + i as u64
            )
        })
        .collect();
    format!(
        r#"{{"proxy":"envoy-{client}","records":[{}]}}"#,
        records.join(",")
    )
}

/// A sample's value in the sidecar's `/metrics` (`name{labels}` exactly as printed).
fn metric(url: &str, series: &str) -> u64 {
    let (s, text, _) = call(&agent(), "GET", &format!("{url}/metrics"), None).unwrap();
    assert_eq!(s, 200);
    let text = text.as_str().unwrap().to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// One POST: (status, Retry-After, body).
fn post(a: &ureq::Agent, url: &str, body: &str) -> (u16, Option<String>, serde_json::Value) {
    let mut resp = a
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.body_mut().read_to_string().unwrap();
    (status, retry, serde_json::from_str(&text).unwrap())
}

fn long_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Polls `GET /v1/plan` until `stop`; every answer must be 200. The latencies.
fn poll_until(url: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<Duration>> {
    std::thread::spawn(move || {
        let a = agent();
        let mut times = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            let (s, _, _) = call(&a, "GET", &format!("{url}/v1/plan"), None).unwrap();
            times.push(t.elapsed());
            assert_eq!(s, 200);
            std::thread::sleep(Duration::from_millis(20));
        }
        times
    })
}

#[test]
fn many_large_batches_keep_peak_memory_to_the_permits() {
    let dir = TempDir::new("ingest-memory");
    let plan = write_file(dir.path(), "plan.json", PLAN);
    let server = ServerProc::start(
        &dir.path().join("data"),
        &[
            "--initial-plan",
            plan.to_str().unwrap(),
            "--ingest-concurrency",
            &PERMITS.to_string(),
        ],
    );
    let url = server.url.clone();
    let bodies: Vec<String> = (0..CLIENTS).map(batch).collect();
    let largest = bodies.iter().map(String::len).max().unwrap() as u64;
    assert!(largest <= MAX_INGEST_BODY && largest > MAX_INGEST_BODY * 9 / 10);
    let rest = peak_rss(server.pid());

    let stop = Arc::new(AtomicBool::new(false));
    let poller = poll_until(url.clone(), Arc::clone(&stop));
    let t = Instant::now();
    let gate = Arc::new(std::sync::Barrier::new(CLIENTS));
    let clients: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let (url, gate) = (url.clone(), Arc::clone(&gate));
            std::thread::spawn(move || {
                let a = long_agent();
                gate.wait();
                post(&a, &format!("{url}/v1/shadow-records"), &body)
            })
        })
        .collect();
    let answers: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let took = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut polls = poller.join().unwrap();
    let peak = peak_rss(server.pid());

    let mut acknowledged = 0u64;
    let mut refused = 0u64;
    for (status, retry, j) in &answers {
        match status {
            200 => acknowledged += j["stored"].as_u64().unwrap(),
            503 => {
                refused += 1;
                assert_eq!(retry.as_deref(), Some("1"), "{j}");
                assert!(
                    j["error"]
                        .as_str()
                        .unwrap()
                        .contains("--ingest-concurrency"),
                    "{j}"
                );
            }
            s => panic!("status {s}: {j}"),
        }
    }
    polls.sort();
    let bound = BASE + PERMITS * 28 * MAX_INGEST_BODY;
    println!(
        "{CLIENTS} concurrent posts of {:.1} MiB ({RECORDS_PER_BATCH} records, predictions of \
         {ZEROS} numbers), --ingest-concurrency {PERMITS}: {} stored ({acknowledged} records), \
         {refused} refused with 503, in {took:?}; sidecar VmHWM at rest {:.1} MiB, peak {:.1} MiB \
         (bound {:.1} MiB); {} plan polls meanwhile, max {:?}",
        mib(largest),
        answers.len() as u64 - refused,
        mib(rest),
        mib(peak),
        mib(bound),
        polls.len(),
        polls.last().copied().unwrap_or_default(),
    );
    assert!(acknowledged > 0, "no post was stored");
    // The report reads every stored record (up to 130 MB in a debug build): no hurry.
    let (s, report, _) = call(
        &long_agent(),
        "GET",
        &format!("{url}/v1/shadow-report?rollout=fraud"),
        None,
    )
    .unwrap();
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["records"], acknowledged, "stored = acknowledged");
    assert_eq!(
        metric(&url, "rollout_control_shadow_records_total"),
        acknowledged
    );
    assert_eq!(
        metric(
            &url,
            "rollout_control_ingest_refused_total{path=\"/v1/shadow-records\"}"
        ),
        refused
    );

    assert!(
        peak < bound,
        "peak RSS {:.1} MiB over the bound {:.1} MiB",
        mib(peak),
        mib(bound)
    );
    // Polls never wait for an ingest permit (2 s): a wide margin on a shared machine.
    assert!(!polls.is_empty());
    assert!(
        *polls.last().unwrap() < Duration::from_millis(1500),
        "a plan poll took {:?}",
        polls.last().unwrap()
    );
}

#[test]
fn a_busy_permit_refuses_with_503_and_polls_still_answer() {
    let dir = TempDir::new("ingest-refused");
    let plan = write_file(dir.path(), "plan.json", PLAN);
    let server = ServerProc::start(
        &dir.path().join("data"),
        &[
            "--initial-plan",
            plan.to_str().unwrap(),
            "--ingest-concurrency",
            "1",
            "--body-timeout-ms",
            "4000",
        ],
    );
    let url = server.url.clone();
    let addr = url.trim_start_matches("http://").to_string();

    // Takes the one permit: headers and a piece of the body, then nothing.
    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled
        .write_all(
            b"POST /v1/shadow-records HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100000\r\n\r\n{\"records\":[",
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let stop = Arc::new(AtomicBool::new(false));
    let poller = poll_until(url.clone(), Arc::clone(&stop));
    let a = long_agent();
    let t = Instant::now();
    let (status, retry, j) = post(&a, &format!("{url}/v1/shadow-records"), &batch(0));
    let waited = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    let polls = poller.join().unwrap();
    assert_eq!(status, 503, "{j}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("--ingest-concurrency"),
        "{j}"
    );
    // The wait for a permit is 2 s; allow a loaded machine 5 s more.
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(7),
        "{waited:?}"
    );
    assert!(
        polls.len() >= 10,
        "{} plan polls in {waited:?}",
        polls.len()
    );
    assert_eq!(
        metric(
            &url,
            "rollout_control_ingest_refused_total{path=\"/v1/shadow-records\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &url,
            "rollout_control_ingest_refused_total{path=\"/v1/assignments\"}"
        ),
        0
    );

    // The stalled body times out (408), which frees the permit: the next post is stored.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = stalled.read_to_end(&mut answer);
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let (status, _, j) = post(&a, &format!("{url}/v1/shadow-records"), &batch(1));
    assert_eq!(status, 200, "{j}");
    assert_eq!(j["stored"], RECORDS_PER_BATCH as u64);
    assert_eq!(
        metric(&url, "rollout_control_shadow_records_total"),
        RECORDS_PER_BATCH as u64
    );
}
