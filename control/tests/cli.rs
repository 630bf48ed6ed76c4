//! The CLI subcommands of the real binary: offline `assign`, and the commands that
//! talk to a spawned sidecar, in human and `--json` output.

// Test helpers: failing loudly is their job (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Output};

use common::{write_file, ServerProc, TempDir, BIN, PLAN};
use rollout_core::{bucket, parse_plan};
use serde_json::Value;

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("ROLLOUT_CONTROL_SERVER")
        .env_remove("ROLLOUT_CONTROL_TOKEN_FILE")
        .output()
        .expect("run rollout-control")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "rollout-control {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Fails with exactly one line on stderr; returns it.
fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    err
}

/// The variant of `user` by the documented rule: bucket ranges in list order.
fn expected(user: &str) -> (&'static str, u16) {
    let b = bucket("fraud-v2", user);
    (if b < 9000 { "stable" } else { "canary" }, b)
}

#[test]
fn assign_from_a_plan_file_matches_the_bucket_rule() {
    let dir = TempDir::new("cli-assign");
    let plan = write_file(dir.path(), "plan.json", PLAN);
    let plan = plan.to_str().unwrap();
    for user in ["alice", "bob", "carol", "user-42", "ünïcode"] {
        let (variant, b) = expected(user);
        let out = ok(&[
            "assign",
            "--rollout",
            "fraud",
            "--user",
            user,
            "--plan-file",
            plan,
        ]);
        assert_eq!(out, format!("{variant}\n"), "{user}");
        let out = ok(&[
            "assign",
            "--rollout",
            "fraud",
            "--user",
            user,
            "--plan-file",
            plan,
            "--bucket",
        ]);
        assert_eq!(out, format!("{variant}\t{b}\n"), "{user}");
        let out = ok(&[
            "--json",
            "assign",
            "--rollout",
            "fraud",
            "--user",
            user,
            "--plan-file",
            plan,
        ]);
        let j: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(j["variant"], variant);
        assert_eq!(j["bucket"], b);
        assert_eq!(j["reason"], "sticky");
    }
    // bulk: 10,000 users, one per line
    let users: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let file = write_file(dir.path(), "users.txt", &(users.join("\n") + "\n"));
    let out = ok(&[
        "assign",
        "--rollout",
        "fraud",
        "--users-file",
        file.to_str().unwrap(),
        "--plan-file",
        plan,
        "--bucket",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), users.len());
    let mut canary = 0;
    for (line, user) in lines.iter().zip(&users) {
        let (variant, b) = expected(user);
        assert_eq!(*line, format!("{user}\t{variant}\t{b}"));
        canary += usize::from(variant == "canary");
    }
    assert!((850..1150).contains(&canary), "{canary}");
    // the same against the compiled plan, the filter's own code path
    let (_, compiled) = parse_plan(PLAN.as_bytes()).unwrap();
    let r = &compiled.rollouts[0];
    assert_eq!(
        r.variant_name(r.variant_for_bucket(bucket("fraud-v2", "alice"))),
        expected("alice").0
    );

    let err = fails(&[
        "assign",
        "--rollout",
        "nope",
        "--user",
        "a",
        "--plan-file",
        plan,
    ]);
    assert!(err.contains("no rollout named \"nope\""), "{err}");
    // a usage error (clap's own multi-line message, exit 2)
    let out = run(&["assign", "--rollout", "fraud", "--plan-file", plan]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn commands_against_a_running_sidecar() {
    let dir = TempDir::new("cli-server");
    let plan_file = write_file(dir.path(), "plan.json", PLAN);
    let token = write_file(dir.path(), "token", "t0ken-123\n");
    let token = token.to_str().unwrap();
    let proxy_token = write_file(dir.path(), "proxy-token", "pr0xy-456\n");
    let server = ServerProc::start(
        &dir.path().join("data"),
        &[
            "--initial-plan",
            plan_file.to_str().unwrap(),
            "--token-file",
            token,
            "--proxy-token-file",
            proxy_token.to_str().unwrap(),
        ],
    );
    let url = server.url.clone();
    let s = url.as_str();

    // status, human and JSON
    let human = ok(&["--server", s, "status"]);
    assert!(human.starts_with("plan v1, updated "), "{human}");
    assert!(
        human.contains("fraud    no      stable=90 canary=10"),
        "{human}"
    );
    assert!(
        human.contains("no proxy has polled the plan yet"),
        "{human}"
    );
    let j: Value = serde_json::from_str(&ok(&["--server", s, "--json", "status"])).unwrap();
    assert_eq!(j["version"], 1);

    // writes need the token
    let err = fails(&[
        "--server",
        s,
        "set-weight",
        "--rollout",
        "fraud",
        "--variant",
        "canary",
        "--weight",
        "25",
    ]);
    assert!(err.contains("401"), "{err}");
    let out = ok(&[
        "--server",
        s,
        "--token-file",
        token,
        "set-weight",
        "--rollout",
        "fraud",
        "--variant",
        "canary",
        "--weight",
        "25",
        "--reason",
        "ramp to 25%",
        "--author",
        "alice",
    ]);
    assert_eq!(out, "plan v2 stored\n  fraud: stable=75 canary=25\n");
    let out = ok(&[
        "--server",
        s,
        "--token-file",
        token,
        "--json",
        "set-weight",
        "--rollout",
        "fraud",
        "--weights",
        "stable=66.66,canary=33.34",
    ]);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["version"], 3);
    assert_eq!(j["plan"]["rollouts"][0]["variants"][1]["weight"], 33.34);

    // a rejected change: one line naming the server's error and field, nothing stored
    let err = fails(&[
        "--server",
        s,
        "--token-file",
        token,
        "set-weight",
        "--rollout",
        "fraud",
        "--variant",
        "canary",
        "--weight",
        "150",
    ]);
    assert!(err.contains("400") && err.contains("weight:"), "{err}");
    let err = fails(&[
        "--server",
        s,
        "--token-file",
        token,
        "set-weight",
        "--rollout",
        "fraud",
        "--weights",
        "stable=50,canary=40",
    ]);
    assert!(err.contains("weights: weights sum to 90"), "{err}");
    let err = fails(&[
        "--server",
        s,
        "--token-file",
        token,
        "promote",
        "--rollout",
        "ghost",
    ]);
    assert!(
        err.contains("404") && err.contains("rollout: no rollout named"),
        "{err}"
    );

    // the other operations
    let out = ok(&[
        "--server",
        s,
        "--token-file",
        token,
        "switch",
        "--rollout",
        "fraud",
        "--to",
        "canary",
    ]);
    assert!(out.contains("stable=0 canary=100"), "{out}");
    ok(&[
        "--server",
        s,
        "--token-file",
        token,
        "rollback",
        "--rollout",
        "fraud",
    ]);
    let out = ok(&[
        "--server",
        s,
        "--token-file",
        token,
        "pause",
        "--rollout",
        "fraud",
    ]);
    assert!(out.contains("(paused)"), "{out}");
    ok(&[
        "--server",
        s,
        "--token-file",
        token,
        "resume",
        "--rollout",
        "fraud",
    ]);
    ok(&[
        "--server",
        s,
        "--token-file",
        token,
        "promote",
        "--rollout",
        "fraud",
    ]);
    let out = ok(&[
        "--server",
        s,
        "--token-file",
        token,
        "restore",
        "--version",
        "2",
        "--reason",
        "undo",
    ]);
    assert_eq!(out, "plan v9 stored\n  fraud: stable=75 canary=25\n");

    // apply, with and without the expected version
    let applied = write_file(
        dir.path(),
        "next.json",
        &PLAN
            .replace(r#""weight":90"#, r#""weight":80"#)
            .replace(r#""weight":10"#, r#""weight":20"#),
    );
    let applied = applied.to_str().unwrap();
    let err = fails(&[
        "--server",
        s,
        "--token-file",
        token,
        "apply",
        "--file",
        applied,
        "--expect-version",
        "3",
    ]);
    assert!(err.contains("412"), "{err}");
    ok(&[
        "--server",
        s,
        "--token-file",
        token,
        "apply",
        "--file",
        applied,
        "--expect-version",
        "9",
        "--reason",
        "new split",
    ]);
    let bad = write_file(
        dir.path(),
        "bad.json",
        &PLAN.replace(r#""weight":10"#, r#""weight":11"#),
    );
    let err = fails(&[
        "--server",
        s,
        "--token-file",
        token,
        "apply",
        "--file",
        bad.to_str().unwrap(),
    ]);
    assert!(err.contains("rollouts[0].variants"), "{err}");

    // get-plan: what the filter would parse
    let out = ok(&["--server", s, "--json", "get-plan"]);
    let (spec, _) = parse_plan(out.trim().as_bytes()).unwrap();
    assert_eq!(spec.version, 10);
    let pretty = ok(&["--server", s, "get-plan"]);
    assert_eq!(parse_plan(pretty.as_bytes()).unwrap().0, spec);

    // assign against the server's plan (80/20 now)
    let out = ok(&[
        "--server",
        s,
        "assign",
        "--rollout",
        "fraud",
        "--user",
        "alice",
        "--bucket",
    ]);
    let b = bucket("fraud-v2", "alice");
    assert_eq!(
        out,
        format!("{}\t{b}\n", if b < 8000 { "stable" } else { "canary" })
    );

    // history, human and JSON
    let hist: Value =
        serde_json::from_str(&ok(&["--server", s, "--json", "history", "--limit", "100"])).unwrap();
    let hist = hist.as_array().unwrap();
    assert_eq!(hist.len(), 10);
    assert_eq!(hist[0]["reason"], "new split");
    assert_eq!(hist[0]["op"], "put");
    let ramp = hist.iter().find(|e| e["version"] == 2).unwrap();
    assert_eq!(ramp["reason"], "ramp to 25%");
    assert_eq!(ramp["author"], "alice");
    assert_eq!(ramp["op"], "set-weights");
    let human = ok(&["--server", s, "history", "--limit", "3"]);
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines.len(), 4, "{human}");
    assert!(lines[0].starts_with("VERSION  TIME"), "{human}");
    assert!(
        lines[1].starts_with("v10 ") && lines[1].ends_with("new split"),
        "{human}"
    );
    assert!(lines[1].contains("fraud: stable=80 canary=20"), "{human}");
    assert!(
        lines[2].contains("restore") && lines[2].ends_with("undo"),
        "{human}"
    );

    // status with a proxy that polled
    let agent = common::agent();
    let r = agent
        .get(format!("{s}/v1/plan"))
        .header("x-model-rollout-proxy", "envoy-7")
        .header("x-model-rollout-plan-version", "8")
        .header("authorization", "Bearer pr0xy-456")
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let human = ok(&["--server", s, "status"]);
    assert!(
        human.contains("PROXY    PLAN  BEHIND  LAST POLL"),
        "{human}"
    );
    assert!(human.contains("envoy-7  v8    2       0s ago"), "{human}");
    let j: Value = serde_json::from_str(&ok(&["--server", s, "--json", "status"])).unwrap();
    assert_eq!(j["proxies"][0]["behind"], 2);

    // the server from the environment
    let out = Command::new(BIN)
        .args(["--json", "status"])
        .env("ROLLOUT_CONTROL_SERVER", s)
        .output()
        .unwrap();
    assert!(out.status.success());
    drop(server);

    // nothing listening: one line, non-zero
    let err = fails(&["--server", s, "status"]);
    assert!(err.starts_with("rollout-control: error: GET "), "{err}");
}

/// With reads closed (`--read-token-file`), the CLI's reads send `--token-file`: the read
/// credential or the operator's opens them, none or another role's does not.
#[test]
fn reads_closed_by_a_read_token_are_opened_by_the_cli_with_it() {
    let dir = TempDir::new("cli-reads");
    let plan_file = write_file(dir.path(), "plan.json", PLAN);
    let op = write_file(dir.path(), "op", "op-t0ken\n");
    let read = write_file(dir.path(), "read", "read-t0ken\n");
    let feedback = write_file(dir.path(), "feedback", "fb-t0ken\n");
    let server = ServerProc::start(
        &dir.path().join("data"),
        &[
            "--initial-plan",
            plan_file.to_str().unwrap(),
            "--operator-token-file",
            op.to_str().unwrap(),
            "--read-token-file",
            read.to_str().unwrap(),
            "--feedback-token-file",
            feedback.to_str().unwrap(),
        ],
    );
    let s = server.url.as_str();
    // (get-plan stays open: it is the filter's poll)
    for cmd in [
        &["status"][..],
        &["history"],
        &["shadow-report", "--rollout", "fraud"],
    ] {
        let err = fails(&[&["--server", s][..], cmd].concat());
        assert!(err.contains("401"), "{cmd:?}: {err}");
        let err = fails(
            &[
                &["--server", s, "--token-file", feedback.to_str().unwrap()][..],
                cmd,
            ]
            .concat(),
        );
        assert!(err.contains("403"), "{cmd:?}: {err}");
        for t in [&read, &op] {
            ok(&[
                &["--server", s, "--token-file", t.to_str().unwrap()][..],
                cmd,
            ]
            .concat());
        }
    }
    let j: Value = serde_json::from_str(&ok(&[
        "--server",
        s,
        "--token-file",
        read.to_str().unwrap(),
        "--json",
        "status",
    ]))
    .unwrap();
    assert_eq!(j["version"], 1);
}

/// `--timeout` bounds a call as a whole and the error names the flag: a server that
/// accepts and never answers.
#[test]
fn timeout_bounds_each_call_and_names_the_flag() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let t = std::time::Instant::now();
    let err = fails(&["--server", &url, "--timeout", "1", "status"]);
    assert!(err.contains("--timeout"), "{err}");
    // generous: one second of timeout, a process start, a loaded machine
    assert!(
        t.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        t.elapsed()
    );
    let out = run(&["--server", &url, "--timeout", "0", "status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--timeout"));
    drop(silent);
}
