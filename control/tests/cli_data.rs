//! The CLI's offline validators and its shadow-report / experiment / feedback
//! commands against a spawned sidecar.

// Test helpers: failing loudly is their job (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{agent, call, write_file, ServerProc, TempDir, BIN};
use serde_json::{json, Value};

const PLAN: &str = r#"{"version":1,"rollouts":[
  {"name":"fraud","salt":"fraud-v2",
   "variants":[{"name":"stable","weight":50},{"name":"canary","weight":50}],
   "shadow":{"cluster":"shadow_model","percent":10,"records":{"sample_percent":100}},
   "experiment":{"metric":"conversion","samples_per_variant":1000}}]}"#;

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("ROLLOUT_CONTROL_SERVER")
        .env_remove("ROLLOUT_CONTROL_TOKEN_FILE")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rollout-control");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args, None);
    assert!(
        out.status.success(),
        "rollout-control {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn validate_config_and_plan() {
    let dir = TempDir::new("cli-validate");
    let config =
        format!(r#"{{"subject":{{"header":"x-user-id","client_controlled":true}},"plan":{PLAN}}}"#);
    let good = write_file(dir.path(), "config.json", &config);
    let out = ok(&["validate-config", good.to_str().unwrap()]);
    assert_eq!(out, "ok: plan version 1, 1 rollout(s)\n");
    let plan = write_file(dir.path(), "plan.json", PLAN);
    assert_eq!(
        ok(&["validate-plan", plan.to_str().unwrap()]),
        "ok: plan version 1, 1 rollout(s)\n"
    );
    // stdin
    let out = run(
        &["validate-config", "-"],
        Some(r#"{"control":{"cluster":"rc"}}"#),
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "ok: plan version 0, 0 rollout(s)\n"
    );
    // invalid: exit 1, FIELD: message on stderr, nothing on stdout
    let bad = config.replace(
        r#""weight":50},{"name":"canary""#,
        r#""weight":40},{"name":"canary""#,
    );
    let bad = write_file(dir.path(), "bad.json", &bad);
    let out = run(&["validate-config", bad.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("plan.rollouts[0].variants: "),
        "stderr: {err:?}"
    );
    assert_eq!(err.lines().count(), 1);
    // a subject key from a header nobody strips, not declared as the client's word
    let out = run(
        &["validate-config", "-"],
        Some(r#"{"plan":{"version":1,"rollouts":[]},"subject":{"header":"x-user-id"}}"#),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .starts_with("subject.header: x-user-id is sent by clients"));
    let out = run(
        &["validate-config", "-"],
        Some(r#"{"plan":{"version":1,"rollouts":[]},"echo":{"variant":"yes"}}"#),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .starts_with("echo.variant: "));
    let out = run(
        &["validate-plan", "-"],
        Some(
            r#"{"version":1,"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":100}],"experiment":{"alpha":0.7}}]}"#,
        ),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "rollouts[0].experiment.alpha: must be between 0 and 0.5 (exclusive)\n"
    );
    // a missing file is an ordinary error
    let out = run(&["validate-plan", "/nonexistent/plan.json"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("cannot read /nonexistent/plan.json"));
}

fn id(v: &str, i: usize) -> String {
    format!("{v}-{i:06}-request")
}

#[test]
fn shadow_report_experiment_and_feedback_commands() {
    let dir = TempDir::new("cli-data");
    let plan = write_file(dir.path(), "plan.json", PLAN);
    let server = ServerProc::start(
        &dir.path().join("data"),
        &["--initial-plan", plan.to_str().unwrap()],
    );
    let url = server.url.clone();
    let a = agent();

    // shadow records
    let records: Vec<Value> = (0..20u64)
        .map(|i| {
            let verdict = if i % 5 == 4 { "prediction" } else { "agree" };
            json!({"correlation_id": format!("shadow-{i:04}-x"), "rollout": "fraud",
                   "variant": "stable", "shadow_cluster": "shadow_model",
                   "agree": verdict == "agree", "verdict": verdict,
                   "primary_status": 200, "shadow_status": 200,
                   "primary_latency_ms": 10 + i, "shadow_latency_ms": 20 + i,
                   "primary_prediction": [0.1], "shadow_prediction": [0.9],
                   "unix_ms": 1_700_000_000_000u64 + i})
        })
        .collect();
    let body = json!({"proxy": "envoy-1", "records": records}).to_string();
    let (s, j, _) = call(&a, "POST", &format!("{url}/v1/shadow-records"), Some(&body)).unwrap();
    assert_eq!((s, j), (200, json!({"stored": 20})));
    let out = ok(&["--server", &url, "shadow-report", "--rollout", "fraud"]);
    assert!(out.contains("rollout fraud: 20 shadow records"), "{out}");
    assert!(out.contains("a sample"), "{out}");
    assert!(out.contains("agreement 80.00% of the records"), "{out}");
    assert!(out.contains("prediction=4"), "{out}");
    assert!(out.contains("shadow-0019-x"), "{out}");
    assert!(out.contains("CORRELATION ID"), "{out}");
    let newest = out.find("shadow-0019-x").unwrap();
    let older = out.find("shadow-0014-x").unwrap();
    assert!(newest < older, "newest first:\n{out}");
    let out = ok(&[
        "--server",
        &url,
        "--json",
        "shadow-report",
        "--rollout",
        "fraud",
        "--limit",
        "1",
    ]);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["records"], 20);
    assert_eq!(j["sampled"], true);
    assert_eq!(j["recent_disagreements"].as_array().unwrap().len(), 1);

    // assignments as the filter posts them
    let mut assignments = Vec::new();
    for i in 0..1000 {
        for v in ["stable", "canary"] {
            assignments.push(json!({"correlation_id": id(v, i), "rollout": "fraud",
                                    "variant": v, "unix_ms": 1_700_000_000_000u64}));
        }
    }
    for chunk in assignments.chunks(1000) {
        let body = json!({"proxy": "envoy-1", "assignments": chunk}).to_string();
        let (s, _, _) = call(&a, "POST", &format!("{url}/v1/assignments"), Some(&body)).unwrap();
        assert_eq!(s, 200);
    }
    // before any outcome
    let out = ok(&["--server", &url, "experiment", "--rollout", "fraud"]);
    assert!(out.contains(": collecting"), "{out}");
    assert!(out.contains("stable 0/1000"), "{out}");

    // outcomes: stable converts 10 %, canary 30 %; plus 500 unknown ids, a blank line
    let mut lines = String::new();
    for i in 0..1000 {
        lines.push_str(&format!(
            "{{\"correlation_id\":\"{}\",\"reward\":{},\"ts\":1}}\n",
            id("stable", i),
            u8::from(i % 10 == 0)
        ));
        lines.push_str(&format!(
            "{{\"correlation_id\":\"{}\",\"reward\":{}}}\n",
            id("canary", i),
            u8::from(i % 10 < 3)
        ));
    }
    lines.push('\n');
    for i in 0..500 {
        lines.push_str(&format!(
            "{{\"correlation_id\":\"{}\",\"reward\":1}}\n",
            id("nobody", i)
        ));
    }
    let file = write_file(dir.path(), "outcomes.jsonl", &lines);
    let out = ok(&[
        "--server",
        &url,
        "feedback",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(
        out,
        "2500 outcomes in 3 batch(es): 2000 accepted, 500 unknown (no assignment known)\n"
    );
    // again, as JSON: idempotent
    let out = ok(&[
        "--server",
        &url,
        "--json",
        "feedback",
        "--file",
        file.to_str().unwrap(),
    ]);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        j,
        json!({"outcomes": 2500, "batches": 3, "accepted": 2000, "unknown": 500, "dropped": 0})
    );

    let out = ok(&["--server", &url, "experiment", "--rollout", "fraud"]);
    assert!(out.contains(": complete"), "{out}");
    assert!(out.contains("95% CI"), "{out}");
    assert!(out.contains("10.00%") && out.contains("30.00%"), "{out}");
    assert!(out.contains("canary vs stable"), "{out}");
    assert!(
        out.contains("verdict: canary is better than stable"),
        "{out}"
    );
    let out = ok(&[
        "--server",
        &url,
        "--json",
        "experiment",
        "--rollout",
        "fraud",
    ]);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["status"], "complete");
    assert_eq!(j["winner"], "canary");
    assert_eq!(j["variants"][0]["count"], 1000);

    // a bad line: nothing is sent, the line is named
    let bad = write_file(
        dir.path(),
        "bad.jsonl",
        &format!(
            "{{\"correlation_id\":\"{}\",\"reward\":1}}\n{{\"correlation_id\":\"{}\"}}\n",
            id("stable", 1),
            id("stable", 2)
        ),
    );
    let out = run(
        &[
            "--server",
            &url,
            "feedback",
            "--file",
            bad.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("bad.jsonl:2: reward: missing") || err.contains("bad.jsonl:2: "),
        "{err}"
    );
    // a conversion reward that is not 0/1: the server names it
    let bad = write_file(
        dir.path(),
        "bad2.jsonl",
        &format!(
            "{{\"correlation_id\":\"{}\",\"reward\":0.5}}\n",
            id("stable", 1)
        ),
    );
    let out = run(
        &[
            "--server",
            &url,
            "feedback",
            "--file",
            bad.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("outcomes[0].reward"), "{err}");

    // reset
    let out = ok(&["--server", &url, "reset-experiment", "--rollout", "fraud"]);
    assert_eq!(
        out,
        "experiment data of fraud deleted: 2000 assignments, 2000 outcomes\n"
    );
    let out = ok(&[
        "--server",
        &url,
        "--json",
        "experiment",
        "--rollout",
        "fraud",
    ]);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["status"], "collecting");

    // metrics over a real listener
    let (s, j, _) = call(&a, "GET", &format!("{url}/metrics"), None).unwrap();
    assert_eq!(s, 200);
    let text = j.as_str().unwrap();
    assert!(
        text.contains("rollout_control_shadow_records_total 20\n"),
        "{text}"
    );
    assert!(
        text.contains("rollout_control_assignments_total 2000\n"),
        "{text}"
    );
    assert!(
        text.contains("rollout_control_feedback_total{result=\"accepted\"} 4000\n"),
        "{text}"
    );
    assert!(
        text.contains("rollout_control_feedback_total{result=\"unknown\"} 1000\n"),
        "{text}"
    );
    assert!(
        text.contains("rollout_control_plan_changes_total{op=\"initial\"} 1\n"),
        "{text}"
    );
}
