//! Peak memory of the real sidecar serving the largest shadow report its store allows.
//!
//! The largest report: one rollout holding the most records a rollout keeps
//! (`MAX_RECORDS_PER_ROLLOUT`, 100,000) and, newest, 1,000 disagreements (the most a
//! report lists) each as large as `--max-record-bytes` allows (128 KiB, the default),
//! their predictions arrays of numbers (the JSON that grows most when parsed). The
//! other records are small agreements: a record's size adds nothing to a report's
//! memory except through the disagreements listed, so the store is scaled in bytes
//! (about 170 MB instead of 100,000 × 128 KiB = 13 GB) but not in anything the
//! report keeps. The store is written through the library, as the ingest path would
//! keep it (each record already within `--max-record-bytes`).
//!
//! The bound (`report::shadow`): the records are read one at a time; a report keeps
//! two latencies per record (16 B × 100,000 = 1.6 MB) and the listed disagreements,
//! at most `--max-report-bytes` of JSON (16 MiB by default), copied once more when
//! the answer is serialized. So the sidecar's peak RSS (VmHWM) stays under
//!
//!     BASE + 2 × max_report_bytes + 16 B × records
//!
//! with BASE = 80 MiB for the process with its runtime and a full redb page cache
//! (measured: 36 MiB at rest once the store is open; the 16 MiB cache fills while
//! the report scans; the rest is allocator slack): 80 + 32 + 1.6 ≈ 114 MiB with the
//! defaults. Measured here: a peak near 88 MiB. Before the bound, the same report
//! held 1,000 × 128 KiB of predictions as parsed trees (an array of small numbers
//! takes up to 16 times its text) and its answer: about two gigabytes by that
//! estimate. The figures are printed; `rollout-control shadow-report --limit 1000`
//! (the CLI) reads the same report whole.

// Test helpers: failing loudly is their job (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{mib, peak_rss, write_file, ServerProc, TempDir, BIN, PLAN};
use rollout_control::store::shadow_records::{self, MAX_RECORDS_PER_ROLLOUT};
use rollout_control::store::Store;
use rollout_core::wire::{json_len, ShadowRecord};
use serde_json::json;

/// `--max-record-bytes` and `--max-report-bytes` (their defaults).
const MAX_RECORD_BYTES: usize = 128 * 1024;
const MAX_REPORT_BYTES: usize = 16 * 1024 * 1024;
/// Disagreements the report lists at most (`?limit=1000`).
const LISTED: u64 = 1000;
/// The process with its runtime and a full redb page cache, and allocator slack.
const BASE: u64 = 80 * 1024 * 1024;

fn record(i: u64, agree: bool) -> ShadowRecord {
    serde_json::from_value(json!({
        "correlation_id": format!("req-{i:06}-abc"),
        "rollout": "fraud",
        "variant": "canary",
        "shadow_cluster": "shadow_model",
        "agree": agree,
        "verdict": if agree { "agree" } else { "prediction" },
        "primary_status": 200,
        "shadow_status": 200,
        "primary_latency_ms": i % 1000,
        "shadow_latency_ms": i % 777,
        "primary_prediction": [0.5],
        "shadow_prediction": [0.5],
        "unix_ms": 1_700_000_000_000u64 + i,
        "proxy": "envoy-a",
    }))
    .unwrap()
}

/// A disagreement of exactly `MAX_RECORD_BYTES` or a few bytes less: both
/// predictions arrays of zeros.
fn largest(i: u64) -> ShadowRecord {
    let mut r = record(i, false);
    r.primary_prediction = json!([]);
    r.shadow_prediction = json!([]);
    // "0," per element
    let n = (MAX_RECORD_BYTES - json_len(&r)) / 4;
    r.primary_prediction = json!(vec![0; n]);
    r.shadow_prediction = json!(vec![0; n]);
    assert!(
        !r.clone().fit(MAX_RECORD_BYTES).1,
        "within the ingest bound"
    );
    assert!(json_len(&r) > MAX_RECORD_BYTES - 8);
    r
}

fn seed(dir: &std::path::Path) {
    let store = Store::open(dir).unwrap();
    let small = MAX_RECORDS_PER_ROLLOUT - LISTED;
    for from in (0..small).step_by(25_000) {
        let batch: Vec<ShadowRecord> = (from..(from + 25_000).min(small))
            .map(|i| record(i, true))
            .collect();
        shadow_records::store_records(&store, &batch).unwrap();
    }
    for from in (small..MAX_RECORDS_PER_ROLLOUT).step_by(250) {
        let batch: Vec<ShadowRecord> = (from..from + 250).map(largest).collect();
        shadow_records::store_records(&store, &batch).unwrap();
    }
    store.close().unwrap();
}

#[test]
fn peak_rss_of_the_largest_shadow_report_stays_bounded() {
    let dir = TempDir::new("report-memory");
    let data = dir.path().join("data");
    let t = Instant::now();
    seed(&data);
    eprintln!(
        "seeded {MAX_RECORDS_PER_ROLLOUT} records in {:?}",
        t.elapsed()
    );
    let plan = write_file(dir.path(), "plan.json", PLAN);
    let server = ServerProc::start(
        &data,
        &[
            "--initial-plan",
            plan.to_str().unwrap(),
            "--max-record-bytes",
            &MAX_RECORD_BYTES.to_string(),
            "--max-report-bytes",
            &MAX_REPORT_BYTES.to_string(),
        ],
    );
    let rest = peak_rss(server.pid());

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into();
    let url = format!(
        "{}/v1/shadow-report?rollout=fraud&limit={LISTED}",
        server.url
    );
    let t = Instant::now();
    let mut resp = agent.get(&url).call().unwrap();
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .unwrap();
    let took = t.elapsed();
    assert_eq!(resp.status(), 200, "{text}");
    let j: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(j["records"], MAX_RECORDS_PER_ROLLOUT);
    assert_eq!(j["disagree"], LISTED);
    let listed = j["recent_disagreements"].as_array().unwrap();
    let bytes: usize = listed.iter().map(|d| d.to_string().len() + 1).sum();
    assert!(bytes <= MAX_REPORT_BYTES, "{bytes} bytes listed");
    // the byte bound is what held: about 16 MiB / 128 KiB of them, the newest
    assert!(listed.len() > 100 && (listed.len() as u64) < LISTED);
    assert_eq!(j["disagreements_omitted"], LISTED - listed.len() as u64);
    assert_eq!(listed[0]["correlation_id"], "req-099999-abc");
    assert!(listed[0]["primary_prediction"].as_array().unwrap().len() > 30_000);

    let peak = peak_rss(server.pid());
    let bound = BASE + 2 * MAX_REPORT_BYTES as u64 + 16 * MAX_RECORDS_PER_ROLLOUT;
    println!(
        "largest shadow report: {} records, {} disagreements listed ({:.1} MiB), {} omitted, \
         in {took:?}; sidecar VmHWM at rest {:.1} MiB, peak {:.1} MiB (bound {:.1} MiB)",
        MAX_RECORDS_PER_ROLLOUT,
        listed.len(),
        mib(bytes as u64),
        j["disagreements_omitted"],
        mib(rest),
        mib(peak),
        mib(bound)
    );
    assert!(
        peak < bound,
        "peak RSS {:.1} MiB over the bound {:.1} MiB",
        mib(peak),
        mib(bound)
    );

    // The CLI reads and prints the same report whole (it once stopped at 10 MiB).
    let out = Command::new(BIN)
        // a debug build serves this report ~10x slower than a release one (37 s seen)
        .args(["--server", &server.url, "--timeout", "600", "shadow-report"])
        .args(["--rollout", "fraud", "--limit", &LISTED.to_string()])
        .env_remove("ROLLOUT_CONTROL_SERVER")
        .env_remove("ROLLOUT_CONTROL_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = text.lines().filter(|l| l.contains(" req-0")).collect();
    assert_eq!(rows.len(), listed.len(), "{text}");
    assert!(rows[0].contains("req-099999-abc"), "{text}");
}
