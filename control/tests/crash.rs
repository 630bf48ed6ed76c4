//! Durability of the real binary: SIGKILL in the middle of a burst of writes loses no
//! acknowledged version, and a restart resumes the latest version.

// Test helpers: failing loudly is their job (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{agent, call, write_file, ServerProc, TempDir, PLAN};
use rollout_control::store::Store;
use serde_json::Value;

const THREADS: usize = 4;
const PER_THREAD: usize = 50;
/// Kill once this many writes were acknowledged (of THREADS * PER_THREAD).
const KILL_AFTER: usize = 80;

#[test]
fn sigkill_mid_burst_loses_no_acknowledged_version() {
    let dir = TempDir::new("crash");
    let data = dir.path().join("data");
    let plan_file = write_file(dir.path(), "plan.json", PLAN);
    let plan_arg = plan_file.to_str().unwrap();
    let mut server = ServerProc::start(&data, &["--initial-plan", plan_arg]);
    let url = server.url.clone();

    let acked: Arc<Mutex<BTreeMap<u64, Value>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (url, acked, count) = (url.clone(), Arc::clone(&acked), Arc::clone(&count));
            std::thread::spawn(move || {
                let agent = agent();
                let mut failures = 0;
                for i in 0..PER_THREAD {
                    // Two-decimal weights, different per call.
                    let weight = ((t * PER_THREAD + i) % 97) as f64 + 0.25;
                    let body = format!(r#"{{"variant":"canary","weight":{weight}}}"#);
                    let u = format!("{url}/v1/rollouts/fraud/weights?reason=burst-{t}-{i}");
                    match call(&agent, "POST", &u, Some(&body)) {
                        Ok((200, json, _)) => {
                            let v = json["version"].as_u64().unwrap();
                            assert_eq!(json["plan"]["version"].as_u64(), Some(v));
                            acked.lock().unwrap().insert(v, json["plan"].clone());
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok((status, json, _)) => panic!("write answered {status}: {json}"),
                        // The server is gone (killed): this write was never acknowledged.
                        Err(_) => {
                            failures += 1;
                            if failures > 2 {
                                return;
                            }
                        }
                    }
                }
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::SeqCst) < KILL_AFTER && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    server.kill9();
    let killed_at = count.load(Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        killed_at >= KILL_AFTER,
        "only {killed_at} writes acknowledged in 60 s"
    );
    assert!(
        acked.len() < THREADS * PER_THREAD,
        "the kill came after the burst ended: not a mid-burst crash"
    );
    let highest = *acked.keys().last().unwrap();
    eprintln!(
        "killed after {killed_at} acknowledged writes; {} acknowledged in all, highest v{highest}",
        acked.len()
    );

    // Restart on the same data dir.
    let server = ServerProc::start(&data, &["--initial-plan", plan_arg]);
    let a = agent();
    let (status, ready, _) = call(&a, "GET", &format!("{}/ready", server.url), None).unwrap();
    assert_eq!(status, 200, "{ready}");
    let (status, _, latest) = call(&a, "GET", &format!("{}/v1/plan", server.url), None).unwrap();
    assert_eq!(status, 200);
    let latest = latest.unwrap();
    assert!(
        latest >= highest,
        "latest v{latest} < acknowledged v{highest}"
    );
    eprintln!("after restart: latest v{latest}");
    assert!(
        server
            .log()
            .iter()
            .any(|l| l.contains("--initial-plan") && l.contains("ignored")),
        "a restart must not reseed: {:?}",
        server.log()
    );

    let (status, history, _) = call(
        &a,
        "GET",
        &format!("{}/v1/history?limit=1000", server.url),
        None,
    )
    .unwrap();
    assert_eq!(status, 200);
    let versions: Vec<u64> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    // Every version from latest down to 1, exactly once, newest first: no gap, no duplicate.
    assert_eq!(versions, (1..=latest).rev().collect::<Vec<_>>());
    for (v, plan) in &acked {
        let (status, got, _) = call(
            &a,
            "GET",
            &format!("{}/v1/plan/versions/{v}", server.url),
            None,
        )
        .unwrap();
        assert_eq!(status, 200, "acknowledged v{v} is missing");
        assert_eq!(&got, plan, "v{v} differs from what was acknowledged");
        let entry = history
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["version"].as_u64() == Some(*v))
            .unwrap();
        assert!(entry["reason"].as_str().unwrap().starts_with("burst-"));
        assert_eq!(entry["op"], "set-weights");
    }
    drop(server);

    // The file itself passes redb's full integrity check (no repair needed now that a
    // clean open has recovered it) and holds the same latest version.
    let store = Store::open(&data).expect("store opens cleanly after the crash");
    assert_eq!(store.current().unwrap().version(), latest);
    assert_eq!(store.check_readable().unwrap(), latest);
    store.close().unwrap();
}

#[test]
fn restart_resumes_the_latest_version_and_sigterm_is_graceful() {
    let dir = TempDir::new("restart");
    let data = dir.path().join("data");
    let plan_file = write_file(dir.path(), "plan.json", PLAN);
    let mut server = ServerProc::start(&data, &["--initial-plan", plan_file.to_str().unwrap()]);
    let a = agent();
    let mut last = Value::Null;
    for w in ["25", "50", "12.34"] {
        let (status, json, _) = call(
            &a,
            "POST",
            &format!("{}/v1/rollouts/fraud/weights", server.url),
            Some(&format!(r#"{{"variant":"canary","weight":{w}}}"#)),
        )
        .unwrap();
        assert_eq!(status, 200, "{json}");
        last = json;
    }
    assert_eq!(last["version"], 4);
    let status = server.terminate();
    assert!(status.success(), "SIGTERM exit: {status:?}");
    assert!(server.log().iter().any(|l| l.contains("shutting down")));

    for round in 0..2 {
        let server = ServerProc::start(&data, &[]);
        let (status, mut plan, version) =
            call(&a, "GET", &format!("{}/v1/plan", server.url), None).unwrap();
        assert_eq!(status, 200);
        assert_eq!(version, Some(4), "round {round}");
        // Served with this run's store epoch (new at every open).
        assert!(plan["epoch"].is_string());
        plan.as_object_mut().unwrap().remove("epoch");
        assert_eq!(plan, last["plan"]);
        assert_eq!(plan["rollouts"][0]["variants"][1]["weight"], 12.34);
        drop(server); // SIGKILL: an idle kill loses nothing either
    }
}

#[test]
fn invalid_initial_plan_exits_non_zero_naming_the_field() {
    let dir = TempDir::new("bad-initial");
    let bad = write_file(
        dir.path(),
        "bad.json",
        r#"{"version":1,"rollouts":[{"name":"fraud","salt":"s","variants":[
            {"name":"stable","weight":90},{"name":"canary","weight":20}]}]}"#,
    );
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--initial-plan")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rollouts[0].variants"), "{err}");
    assert!(err.contains("sum to 110"), "{err}");
}
