//! Storage faults: a disk that fills up (an injected `ENOSPC` storage backend, and a
//! real 2 MiB tmpfs when this machine lets the test mount one), an empty or damaged
//! store file at start.
//!
//! What must hold: a failed write answers 503 naming the cause; `/ready` answers 503
//! while writes fail; once space returns writes work again without a restart; every
//! acknowledged version is still readable (also after reopening the file).

// Test helpers: failing loudly is their job (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::ops::Bound;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use common::{agent, call, write_file, ServerProc, TempDir, BIN, PLAN};
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use rollout_control::store::open::builder;
use rollout_control::store::{OpenOptions, Store};
use rollout_control::{app, AppState};
use serde_json::Value;
use tower::ServiceExt;

/// A file backend that answers `ENOSPC` to every write, resize and sync while `full`
/// is set, like a file on a full disk.
#[derive(Debug)]
struct FillableDisk {
    file: FileBackend,
    full: Arc<AtomicBool>,
}

impl FillableDisk {
    fn check(&self) -> std::io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            Err(std::io::Error::from_raw_os_error(28)) // ENOSPC
        } else {
            Ok(())
        }
    }
}

impl StorageBackend for FillableDisk {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.file.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.check()?;
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.file.write(offset, data)
    }
    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }
    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(s, e)
    }
    fn try_lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(s, e)
    }
    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(s, e)
    }
    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(s, e)
    }
    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(s, e)
    }
    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(s, e)
    }
}

fn fillable_store(dir: &Path, full: &Arc<AtomicBool>) -> Store {
    let full = Arc::clone(full);
    let opts = OpenOptions {
        start_fresh: false,
        opener: Arc::new(move |path: &Path| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?;
            builder().create_with_backend(FillableDisk {
                file: FileBackend::new(file)?,
                full: Arc::clone(&full),
            })
        }),
        ..OpenOptions::default()
    };
    Store::open_with(dir, opts).unwrap()
}

async fn send(state: &AppState, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json)
}

async fn set_weight(state: &AppState, w: u32) -> (StatusCode, Value) {
    let body = format!(r#"{{"variant":"canary","weight":{w}}}"#);
    send(state, "POST", "/v1/rollouts/fraud/weights", &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_disk_full_answers_503_then_recovers_without_restart() {
    let dir = TempDir::new("faults-enospc");
    let full = Arc::new(AtomicBool::new(false));
    let state = AppState::new(Arc::new(fillable_store(dir.path(), &full)), None);
    let mut acked = Vec::new();
    let (s, j) = send(&state, "PUT", "/v1/plan", PLAN).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    acked.push(j["version"].as_u64().unwrap());
    for w in [11, 12] {
        let (s, j) = set_weight(&state, w).await;
        assert_eq!(s, StatusCode::OK, "{j}");
        acked.push(j["version"].as_u64().unwrap());
    }

    full.store(true, Ordering::SeqCst);
    // Every kind of write fails with 503 naming the cause, rollback and pause included.
    for (uri, body) in [
        (
            "/v1/rollouts/fraud/weights",
            r#"{"variant":"canary","weight":13}"#,
        ),
        ("/v1/rollouts/fraud/rollback", ""),
        ("/v1/rollouts/fraud/pause", ""),
        ("/v1/shadow-records", r#"{"records":[]}"#),
    ] {
        let (s, j) = send(&state, "POST", uri, body).await;
        if uri == "/v1/shadow-records" {
            // An empty batch writes nothing: it has nothing to fail.
            continue;
        }
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {j}");
        let msg = j["error"].as_str().unwrap();
        assert!(
            msg.contains("No space left on device") || msg.contains("reopen"),
            "{uri}: the cause is named: {msg}"
        );
    }
    let (s, j) = send(&state, "GET", "/ready", "").await;
    assert_eq!(
        s,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready while full: {j}"
    );
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{j}"
    );
    // Polls still get the plan in force.
    let (s, j) = send(&state, "GET", "/v1/plan", "").await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(j["version"].as_u64(), acked.last().copied());

    // Space returns: no restart, the next /ready recovers and writes work again.
    full.store(false, Ordering::SeqCst);
    let (s, j) = send(&state, "GET", "/ready", "").await;
    assert_eq!(s, StatusCode::OK, "ready again: {j}");
    let (s, j) = set_weight(&state, 14).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    acked.push(j["version"].as_u64().unwrap());

    // A write is itself enough to recover (no /ready in between).
    full.store(true, Ordering::SeqCst);
    let (s, _) = set_weight(&state, 15).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    full.store(false, Ordering::SeqCst);
    let (s, j) = set_weight(&state, 16).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    acked.push(j["version"].as_u64().unwrap());
    assert!(state.store().reopens() >= 2, "the file was reopened");

    // Nothing acknowledged is lost: versions are dense and each reads back, also
    // after the file is opened again from scratch.
    assert_eq!(acked, (1..=acked.len() as u64).collect::<Vec<_>>());
    for v in &acked {
        let (s, j) = send(&state, "GET", &format!("/v1/plan/versions/{v}"), "").await;
        assert_eq!(s, StatusCode::OK, "v{v}: {j}");
    }
    let epoch = state.store().epoch().to_string();
    drop(state);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.current().unwrap().version(), *acked.last().unwrap());
    assert_eq!(store.history(100).unwrap().len(), acked.len());
    assert_ne!(store.epoch(), epoch, "every open draws a new epoch id");
}

#[test]
fn empty_store_file_is_refused_naming_it_unless_start_fresh() {
    let dir = TempDir::new("faults-empty");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let file = data.join("control.redb");
    std::fs::write(&file, b"").unwrap();
    let plan = write_file(dir.path(), "plan.json", PLAN);
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .arg("--initial-plan")
        .arg(&plan)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(file.to_str().unwrap()) && err.contains("empty"),
        "{err}"
    );
    assert!(err.contains("--start-fresh"), "{err}");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0, "left as found");

    // Damaged: not a redb file at all.
    std::fs::write(&file, vec![0x5a; 8192]).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(file.to_str().unwrap()), "{err}");

    // --start-fresh moves the file aside and starts a new store.
    let plan_arg = plan.to_str().unwrap();
    let server = ServerProc::start(&data, &["--initial-plan", plan_arg, "--start-fresh"]);
    let (s, j, _) = call(&agent(), "GET", &format!("{}/v1/plan", server.url), None).unwrap();
    assert_eq!(s, 200, "{j}");
    let aside: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".refused-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is kept aside");
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), vec![0x5a; 8192]);
}

/// Mounts a tmpfs of `size` at `dir`; `None` (with the reason) where not allowed.
fn mount_tmpfs(dir: &Path, size: &str) -> Result<(), String> {
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Unmounts the tmpfs on drop (even when the test fails).
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

/// Fills the filesystem of `dir` with one file; returns its path.
fn fill(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    // the last partial chunk
    while f.write_all(&chunk[..512]).is_ok() {}
    let _ = f.sync_all();
    path
}

/// The fraud rollout plus 60 others with long salts.
fn big_plan(w: u32) -> String {
    let others: Vec<String> = (0..60)
        .map(|i| {
            format!(
                r#"{{"name":"r{i}","salt":"{}-{w}","variants":[{{"name":"a","weight":50}},{{"name":"b","weight":50}}]}}"#,
                "s".repeat(100)
            )
        })
        .collect();
    format!(
        r#"{{"version":1,"rollouts":[{{"name":"fraud","salt":"f","variants":[{{"name":"stable","weight":90}},{{"name":"canary","weight":10}}]}},{}]}}"#,
        others.join(",")
    )
}

#[test]
fn real_disk_full_on_a_small_tmpfs() {
    let dir = TempDir::new("faults-tmpfs");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    if let Err(why) = mount_tmpfs(&mnt, "4m") {
        eprintln!("SKIPPED real_disk_full_on_a_small_tmpfs: cannot mount a tmpfs here: {why}");
        return;
    }
    let _mounted = Mounted(&mnt);
    let data = mnt.join("data");
    let plan = write_file(dir.path(), "plan.json", PLAN);
    let mut server = ServerProc::start(&data, &["--initial-plan", plan.to_str().unwrap()]);
    let a = agent();
    let url = server.url.clone();
    let mut acked = vec![1u64];
    let filler = fill(&mnt);
    let mut failed = None;
    for w in 0..400u32 {
        // Big plans (~30 KiB): the free pages of the file run out fast.
        let body = big_plan(w);
        let u = format!("{url}/v1/plan?reason=fill-{w}");
        let (s, j, _) = call(&a, "PUT", &u, Some(&body)).unwrap();
        match s {
            200 => acked.push(j["version"].as_u64().unwrap()),
            503 => {
                failed = Some(j);
                break;
            }
            other => panic!("write answered {other}: {j}"),
        }
    }
    let j = failed.expect("the disk filled up within 400 writes");
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "503 names the cause: {j}"
    );
    let (s, j, _) = call(&a, "GET", &format!("{url}/ready"), None).unwrap();
    assert_eq!(s, 503, "not ready while the disk is full: {j}");
    let (s, _, v) = call(&a, "GET", &format!("{url}/v1/plan"), None).unwrap();
    assert_eq!(
        (s, v),
        (200, acked.last().copied()),
        "polls still get the plan in force"
    );

    std::fs::remove_file(&filler).unwrap();
    // Recovers by itself (the background check runs every 2 s; /ready also retries).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, _, _) = call(&a, "GET", &format!("{url}/ready"), None).unwrap();
        if s == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not recover after space returned"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let u = format!("{url}/v1/rollouts/fraud/pause?reason=after-recovery");
    let (s, j, _) = call(&a, "POST", &u, None).unwrap();
    assert_eq!(s, 200, "{j}");
    acked.push(j["version"].as_u64().unwrap());
    for v in &acked {
        let (s, j, _) = call(&a, "GET", &format!("{url}/v1/plan/versions/{v}"), None).unwrap();
        assert_eq!(s, 200, "v{v}: {j}");
    }
    assert_eq!(acked, (1..=acked.len() as u64).collect::<Vec<_>>());
    eprintln!(
        "tmpfs 4 MiB: {} versions acknowledged before the disk filled; all readable after recovery",
        acked.len() - 1
    );
    server.terminate();
    // And after a restart.
    let server = ServerProc::start(&data, &[]);
    let (s, _, v) = call(&a, "GET", &format!("{}/v1/plan", server.url), None).unwrap();
    assert_eq!((s, v), (200, acked.last().copied()));
}

#[tokio::test]
async fn a_sender_clock_ahead_of_ours_cannot_pin_records() {
    use rollout_control::store::shadow_records;
    let dir = TempDir::new("faults-clock");
    let state = AppState::new(Arc::new(Store::open(dir.path()).unwrap()), None);
    let record = |ms: u64| {
        serde_json::json!({
            "correlation_id": format!("req-{ms}"), "rollout": "fraud", "variant": "canary",
            "shadow_cluster": "shadow_model", "agree": true, "verdict": "agree",
            "primary_status": 200, "shadow_status": 200, "primary_latency_ms": 1,
            "shadow_latency_ms": 1, "primary_prediction": [1], "shadow_prediction": [1],
            "unix_ms": ms,
        })
    };
    let body = serde_json::json!({"records": [record(u64::MAX), record(1_700_000_000_000)]});
    let (s, j) = send(&state, "POST", "/v1/shadow-records", &body.to_string()).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut stamps = Vec::new();
    shadow_records::scan(state.store(), "fraud", None, |r| stamps.push(r.unix_ms)).unwrap();
    stamps.sort_unstable();
    assert_eq!(stamps[0], 1_700_000_000_000, "a past time is kept");
    assert!(
        stamps[1] <= now && now - stamps[1] < 60_000,
        "u64::MAX became the receive time: {stamps:?}"
    );
}
