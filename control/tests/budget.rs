//! The data budget shared by shadow records, assignments and outcomes
//! (`store::budget`), against the real store and the real sidecar binary, and the
//! plan history's retention (`--history-keep`).
// Test helpers: failing loudly is their job (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::path::Path;

use rollout_control::api::experiment::Outcome;
use rollout_control::http::error::ApiError;
use rollout_control::report::shadow::{shadow_report, Bounds};
use rollout_control::store::budget::{self, record_bytes, Kind, Totals, Usage};
use rollout_control::store::plans::DEFAULT_HISTORY_KEEP;
use rollout_control::store::{assignments, outcomes, shadow_records, OpenOptions, Store};
use rollout_core::wire::{Assignment, ShadowRecord};
use serde_json::{json, Value};

use common::{agent, call, write_file, ServerProc, TempDir, PLAN};

/// Ten recent disagreements in a report, of at most 16 MiB.
const TEN: Bounds = Bounds {
    limit: 10,
    max_bytes: 16 * 1024 * 1024,
};

fn open(dir: &Path, budget: u64) -> Store {
    Store::open_with(
        dir,
        OpenOptions {
            data_budget: budget,
            ..OpenOptions::default()
        },
    )
    .unwrap()
}

/// A record of `rollout` with a prediction of about `pad` bytes; `unix_ms` = `i`.
fn record(i: u64, rollout: &str, pad: usize) -> ShadowRecord {
    serde_json::from_value(json!({
        "correlation_id": format!("req-{i:08}"),
        "rollout": rollout,
        "variant": "stable",
        "shadow_cluster": "shadow_model",
        "agree": true,
        "verdict": "agree",
        "primary_status": 200,
        "shadow_status": 200,
        "primary_latency_ms": 1,
        "shadow_latency_ms": 2,
        "primary_prediction": ["x".repeat(pad)],
        "shadow_prediction": [i],
        "unix_ms": 1_700_000_000_000u64 + i,
    }))
    .unwrap()
}

fn cost(r: &ShadowRecord) -> u64 {
    record_bytes(&r.rollout, serde_json::to_vec(r).unwrap().len())
}

fn assignment(id: &str, rollout: &str, variant: &str) -> Assignment {
    Assignment {
        correlation_id: id.into(),
        rollout: rollout.into(),
        variant: variant.into(),
        unix_ms: 1_700_000_000_000,
    }
}

fn feedback(store: &Store, ids: &[String]) -> u64 {
    let batch: Vec<Outcome> = ids
        .iter()
        .map(|id| Outcome {
            correlation_id: id.clone(),
            reward: 1.0,
        })
        .collect();
    outcomes::store_outcomes::<ApiError>(store, &batch, &|i| format!("[{i}]"), &HashMap::new())
        .unwrap()
        .accepted
}

fn kind(u: &Usage, k: Kind) -> Totals {
    u.kinds.iter().find(|(x, _)| *x == k).unwrap().1
}

#[test]
fn over_budget_the_oldest_go_first_and_outcomes_last() {
    let dir = TempDir::new("budget-order");
    let budget = 60_000;
    let store = open(dir.path(), budget);
    // The oldest data: 40 assignments and their outcomes (an experiment).
    let ids: Vec<String> = (0..40).map(|i| format!("exp-{i:04}")).collect();
    let batch: Vec<Assignment> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| assignment(id, "exp", if i % 2 == 0 { "a" } else { "b" }))
        .collect();
    assignments::store_assignments(&store, &batch).unwrap();
    assert_eq!(feedback(&store, &ids), 40);
    let before = store.data_usage().unwrap();
    assert_eq!(kind(&before, Kind::Assignment).items, 40);
    assert_eq!(kind(&before, Kind::Outcome).items, 40);
    // Then 200 records of about 700 bytes: more than the budget holds.
    let t0 = rollout_control::util::timefmt::now_unix_ms();
    let mut posted = 0u64;
    let mut last = 0;
    for b in 0..10u64 {
        let recs: Vec<ShadowRecord> = (0..20).map(|i| record(b * 20 + i, "r", 600)).collect();
        posted += recs.iter().map(cost).sum::<u64>();
        last = b * 20 + 19;
        shadow_records::store_records(&store, &recs).unwrap();
        let u = store.data_usage().unwrap();
        assert!(
            u.bytes() <= budget,
            "after batch {b}: {} > {budget}",
            u.bytes()
        );
    }
    let u = store.data_usage().unwrap();
    assert!(posted > budget);
    let recs = kind(&u, Kind::ShadowRecord);
    // Every byte posted is either held or counted as evicted.
    assert_eq!(recs.bytes + recs.evicted_bytes, posted);
    assert_eq!(recs.items + recs.evicted_items, 200);
    assert!(recs.evicted_items > 0);
    // The assignments were older than every record: all gone first.
    let asg = kind(&u, Kind::Assignment);
    assert_eq!((asg.items, asg.bytes, asg.evicted_items), (0, 0, 40));
    assert_eq!(assignments::assignment_count(&store, "exp").unwrap(), 0);
    assert_eq!(
        assignments::assignment_of(&store, "exp-0000").unwrap(),
        None
    );
    // Outcomes, older still, are untouched: records went before them.
    let out = kind(&u, Kind::Outcome);
    assert_eq!((out.items, out.evicted_items), (40, 0));
    assert_eq!(out.bytes, kind(&before, Kind::Outcome).bytes);
    // The oldest records went, the newest stayed; the per-rollout count agrees.
    let report = shadow_report(&store, "r", None, TEN, None).unwrap();
    assert_eq!(report.records, recs.items);
    assert_eq!(report.last_unix_ms, Some(1_700_000_000_000 + last));
    assert_eq!(
        report.first_unix_ms,
        Some(1_700_000_000_000 + 200 - recs.items)
    );
    assert_eq!(
        shadow_records::record_counts(&store).unwrap().get("r"),
        Some(&recs.items)
    );
    // The oldest item held is an outcome, from before the records.
    assert!(u.oldest_received_ms.unwrap() <= t0);
}

#[test]
fn outcomes_go_last_and_the_report_says_so() {
    let dir = TempDir::new("budget-outcomes");
    let assign_and_feed = |store: &Store, from: usize, n: usize| -> u64 {
        let ids: Vec<String> = (from..from + n).map(|i| format!("o-{i:04}")).collect();
        let batch: Vec<Assignment> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| assignment(id, "exp", if i % 2 == 0 { "a" } else { "b" }))
            .collect();
        assignments::store_assignments(store, &batch).unwrap();
        feedback(store, &ids)
    };
    let outcome_bytes = {
        let store = open(dir.path(), 1 << 30);
        assert_eq!(assign_and_feed(&store, 0, 200), 200);
        let u = store.data_usage().unwrap();
        store.close().unwrap();
        kind(&u, Kind::Outcome).bytes
    };
    // The operator lowers the budget below what the outcomes alone take: at open,
    // every assignment goes first, then the oldest outcomes.
    let budget = outcome_bytes / 2;
    let store = open(dir.path(), budget);
    let u = store.data_usage().unwrap();
    assert!(u.bytes() <= budget);
    assert_eq!(kind(&u, Kind::Assignment).items, 0);
    assert_eq!(kind(&u, Kind::Assignment).evicted_items, 200);
    let out = kind(&u, Kind::Outcome);
    assert!(out.evicted_items >= 100, "{u:?}");
    assert_eq!(out.items + out.evicted_items, 200);
    // The counts the experiment reads are what is kept, and each variant counts
    // what it lost.
    let kept = outcomes::variant_outcomes(&store, "exp", &["a", "b"], 1_000).unwrap();
    assert_eq!(kept[0].0 + kept[1].0, out.items);
    let lost =
        store.outcomes_evicted("exp", "a").unwrap() + store.outcomes_evicted("exp", "b").unwrap();
    assert_eq!(lost, out.evicted_items);
    let mut replayed = 0u64;
    outcomes::replay_pair(&store, "exp", "a", "b", 1_000, &mut |_, _| replayed += 1).unwrap();
    assert_eq!(replayed, out.items);
    let rollout = rollout_core::parse_plan(
        br#"{"version":1,"rollouts":[{"name":"exp","salt":"s",
            "variants":[{"name":"a","weight":50},{"name":"b","weight":50}],
            "experiment":{"metric":"conversion","samples_per_variant":1000}}]}"#,
    )
    .unwrap()
    .0
    .compile()
    .unwrap()
    .rollout_named("exp")
    .unwrap()
    .clone();
    let report = rollout_control::report::experiment::report(&store, &rollout)
        .unwrap()
        .unwrap();
    let note = report.note.unwrap();
    assert!(note.contains("data budget"), "{note}");
    // With the budget full of outcomes, new assignments are evicted before any kept
    // outcome: their feedback is `unknown`, the evidence kept does not move.
    assert_eq!(assign_and_feed(&store, 1000, 20), 0);
    let after = store.data_usage().unwrap();
    assert_eq!(kind(&after, Kind::Outcome), out);
    assert_eq!(kind(&after, Kind::Assignment).evicted_items, 220);
    // A reset forgets the experiment's data and its losses, and releases its bytes.
    rollout_control::store::experiment_reset::reset(&store, "exp").unwrap();
    assert_eq!(store.data_usage().unwrap().bytes(), 0);
    assert_eq!(store.outcomes_evicted("exp", "a").unwrap(), 0);
    let report = rollout_control::report::experiment::report(&store, &rollout)
        .unwrap()
        .unwrap();
    assert_eq!(report.note, None);
}

/// Deletes the budget's tables and markers: the file as a build before the budget
/// left it (per-kind sequences, no ledger).
fn strip_budget(dir: &Path, next_seq: u64) {
    use redb::{ReadableTable, TableDefinition};
    let db = redb::Database::create(dir.join("control.redb")).unwrap();
    let tx = db.begin_write().unwrap();
    {
        type Entry = (u64, u64, &'static str, &'static str, u64);
        let ledger: TableDefinition<(u8, u64, u8), Entry> = TableDefinition::new("data_ledger");
        let totals: TableDefinition<u8, (u64, u64, u64, u64)> = TableDefinition::new("data_totals");
        assert!(tx.delete_table(ledger).unwrap());
        assert!(tx.delete_table(totals).unwrap());
        let mut meta = tx
            .open_table(TableDefinition::<&str, &str>::new("meta"))
            .unwrap();
        assert!(meta.remove("data_ledger").unwrap().is_some());
        let mut seq = tx
            .open_table(TableDefinition::<&str, u64>::new("data_seq"))
            .unwrap();
        assert_eq!(seq.remove("data").unwrap().unwrap().value(), next_seq);
        for k in ["shadow", "assignment", "outcome"] {
            seq.insert(k, next_seq).unwrap();
        }
        assert!(seq.get("data").unwrap().is_none());
    }
    tx.commit().unwrap();
}

#[test]
fn accounting_survives_reopen_and_is_rebuilt_for_an_older_store() {
    let dir = TempDir::new("budget-reopen");
    let big = 1 << 30;
    let fill = |store: &Store, from: u64| {
        let recs: Vec<ShadowRecord> = (from..from + 30).map(|i| record(i, "r", 300)).collect();
        shadow_records::store_records(store, &recs).unwrap();
        let ids: Vec<String> = (from..from + 10).map(|i| format!("id-{i}")).collect();
        let batch: Vec<Assignment> = ids.iter().map(|id| assignment(id, "x", "a")).collect();
        assignments::store_assignments(store, &batch).unwrap();
        feedback(store, &ids[..5]);
    };
    let written = {
        let store = open(dir.path(), big);
        fill(&store, 100);
        let u = store.data_usage().unwrap();
        store.close().unwrap();
        u
    };
    assert_eq!(kind(&written, Kind::ShadowRecord).items, 30);
    assert_eq!(kind(&written, Kind::Assignment).items, 10);
    assert_eq!(kind(&written, Kind::Outcome).items, 5);
    // Reopened: the same figures, read from the store.
    {
        let store = open(dir.path(), big);
        assert_eq!(store.data_usage().unwrap(), written);
        store.close().unwrap();
    }
    // A store from before the budget: its items are charged once, at open.
    strip_budget(dir.path(), 45);
    {
        let store = open(dir.path(), big);
        let rebuilt = store.data_usage().unwrap();
        assert_eq!(rebuilt.kinds, written.kinds);
        // New items take numbers after the old ones: nothing collides.
        fill(&store, 200);
        let u = store.data_usage().unwrap();
        assert_eq!(kind(&u, Kind::ShadowRecord).items, 60);
        assert_eq!(kind(&u, Kind::Assignment).items, 20);
        assert_eq!(kind(&u, Kind::Outcome).items, 10);
        assert_eq!(u.bytes(), 2 * written.bytes());
        store.close().unwrap();
    }
    // Opened with a smaller budget: evicted at open, oldest first.
    let small = written.bytes();
    let store = open(dir.path(), small);
    let u = store.data_usage().unwrap();
    assert!(u.bytes() <= small, "{} > {small}", u.bytes());
    let recs = kind(&u, Kind::ShadowRecord);
    assert!(recs.evicted_items >= 30, "{u:?}");
    let report = shadow_report(&store, "r", None, TEN, None).unwrap();
    assert_eq!(report.records, recs.items);
    assert_eq!(report.last_unix_ms, Some(1_700_000_000_229));
}

/// `name{labels} value` lines of a /metrics text.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

fn metrics(url: &str) -> String {
    let mut resp = agent().get(&format!("{url}/metrics")).call().unwrap();
    resp.body_mut().read_to_string().unwrap()
}

#[test]
fn sidecar_keeps_the_budget_counts_evictions_and_keeps_its_figures_across_a_restart() {
    let dir = TempDir::new("budget-sidecar");
    let data = dir.path().join("data");
    let budget: u64 = 8 << 20;
    let flags = ["--data-budget-bytes", "8388608"];
    let mut server = ServerProc::start(&data, &flags);
    let a = agent();
    // 24 batches of 1,000 records of about 450 bytes: about 11 MB, over 8 MiB.
    let (batches, per) = (24u64, 1000u64);
    for b in 0..batches {
        let records: Vec<Value> = (0..per)
            .map(|i| serde_json::to_value(record(b * per + i, "r", 250)).unwrap())
            .collect();
        let body = json!({"proxy": "p1", "records": records}).to_string();
        let (s, v, _) = call(
            &a,
            "POST",
            &format!("{}/v1/shadow-records", server.url),
            Some(&body),
        )
        .unwrap();
        assert_eq!(s, 200, "{v}");
    }
    let text = metrics(&server.url);
    assert_eq!(metric(&text, "rollout_control_data_budget_bytes"), budget);
    let held = metric(&text, "rollout_control_data_bytes{kind=\"shadow_records\"}");
    let items = metric(&text, "rollout_control_data_items{kind=\"shadow_records\"}");
    let evicted = metric(
        &text,
        "rollout_control_data_evicted_total{kind=\"shadow_records\"}",
    );
    let evicted_bytes = metric(
        &text,
        "rollout_control_data_evicted_bytes_total{kind=\"shadow_records\"}",
    );
    assert!(held <= budget, "{held} > {budget}");
    // Full but for less than one batch.
    assert!(held > budget - 600 * per, "{held}");
    assert!(evicted > 0);
    assert_eq!(items + evicted, batches * per);
    assert!(evicted_bytes > 0);
    for k in ["assignments", "outcomes"] {
        assert_eq!(
            metric(
                &text,
                &format!("rollout_control_data_bytes{{kind=\"{k}\"}}")
            ),
            0
        );
    }
    let report = |url: &str| {
        let (s, v, _) = call(
            &a,
            "GET",
            &format!("{url}/v1/shadow-report?rollout=r"),
            None,
        )
        .unwrap();
        assert_eq!(s, 200, "{v}");
        v
    };
    let r = report(&server.url);
    assert_eq!(r["records"], json!(items));
    assert_eq!(
        r["last_unix_ms"],
        json!(1_700_000_000_000u64 + batches * per - 1)
    );
    assert_eq!(r["first_unix_ms"], json!(1_700_000_000_000u64 + evicted));
    // The status says the same, with how far back the data reaches.
    let (s, st, _) = call(&a, "GET", &format!("{}/v1/status", server.url), None).unwrap();
    assert_eq!(s, 200);
    assert_eq!(st["data"]["budget_bytes"], json!(budget));
    assert_eq!(st["data"]["bytes"], json!(held));
    assert_eq!(
        st["data"]["kinds"]["shadow_records"]["evicted_items"],
        json!(evicted)
    );
    assert!(st["data"]["oldest_age_seconds"].as_f64().unwrap() < 600.0);
    // `rollout-control status` shows the budget and the evictions per kind.
    let cli = std::process::Command::new(common::BIN)
        .args(["--server", &server.url, "status"])
        .output()
        .unwrap();
    assert!(cli.status.success());
    let human = String::from_utf8(cli.stdout).unwrap();
    let row = human
        .lines()
        .find(|l| l.starts_with("shadow_records "))
        .unwrap_or_else(|| panic!("{human}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], items.to_string(), "{row}");
    assert_eq!(cells[4], evicted.to_string(), "{row}");
    assert!(human.contains("of the 8.0 MiB budget"), "{human}");
    // kill -9 and start again: the same figures, from the store.
    server.kill9();
    let server = ServerProc::start(&data, &flags);
    let again = metrics(&server.url);
    for series in [
        "rollout_control_data_bytes{kind=\"shadow_records\"}",
        "rollout_control_data_items{kind=\"shadow_records\"}",
        "rollout_control_data_evicted_total{kind=\"shadow_records\"}",
        "rollout_control_data_evicted_bytes_total{kind=\"shadow_records\"}",
    ] {
        assert_eq!(metric(&again, series), metric(&text, series), "{series}");
    }
    assert_eq!(report(&server.url)["records"], json!(items));
}

#[test]
fn history_retention_keeps_the_newest_and_the_plan_in_force() {
    let dir = TempDir::new("budget-history");
    let data = dir.path().join("data");
    let plan = write_file(dir.path(), "plan.json", PLAN);
    let plan_arg = plan.to_str().unwrap();
    let server = ServerProc::start(&data, &["--initial-plan", plan_arg, "--history-keep", "3"]);
    let a = agent();
    let put = |url: &str, w: u32| {
        let body = PLAN
            .replace("\"weight\":90", &format!("\"weight\":{}", 100 - w))
            .replace("\"weight\":10", &format!("\"weight\":{w}"));
        let (s, v, _) = call(&a, "PUT", &format!("{url}/v1/plan"), Some(&body)).unwrap();
        assert_eq!(s, 200, "{v}");
    };
    for w in 2..=6 {
        put(&server.url, w); // v2..v6, canary weight = version
    }
    let version =
        |url: &str, v: u64| call(&a, "GET", &format!("{url}/v1/plan/versions/{v}"), None).unwrap();
    let (s, body, _) = version(&server.url, 3);
    assert_eq!(s, 404);
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("history retention") && msg.contains("--history-keep 3"),
        "{msg}"
    );
    assert_eq!(body["field"], "version");
    for v in 4..=6 {
        assert_eq!(version(&server.url, v).0, 200, "v{v}");
    }
    // Restore v4: its plan is in force again, as the newest version v7.
    let (s, v, _) = call(
        &a,
        "POST",
        &format!("{}/v1/plan/versions/4/restore", server.url),
        None,
    )
    .unwrap();
    assert_eq!(s, 200, "{v}");
    let history = |url: &str| -> Vec<u64> {
        let (_, v, _) = call(&a, "GET", &format!("{url}/v1/history"), None).unwrap();
        v["versions"]
            .as_array()
            .or_else(|| v.as_array())
            .unwrap()
            .iter()
            .map(|e| e["version"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(history(&server.url), vec![7, 6, 5]);
    // v4 itself is gone; the plan it held is in force (canary weight 4).
    assert_eq!(version(&server.url, 4).0, 404);
    let canary = |url: &str| {
        let (s, v, _) = call(&a, "GET", &format!("{url}/v1/plan"), None).unwrap();
        assert_eq!(s, 200);
        (
            v["version"].as_u64().unwrap(),
            v["rollouts"][0]["variants"][1]["weight"].as_f64().unwrap(),
        )
    };
    assert_eq!(canary(&server.url), (7, 4.0));
    let (s, body, _) = version(&server.url, 99);
    assert_eq!(s, 404);
    assert!(!body["error"].as_str().unwrap().contains("retention"));
    drop(server);
    // Restarted keeping one version: only the plan in force is left, still served.
    let server = ServerProc::start(&data, &["--history-keep", "1"]);
    assert_eq!(history(&server.url), vec![7]);
    assert_eq!(canary(&server.url), (7, 4.0));
    put(&server.url, 8);
    assert_eq!(history(&server.url), vec![8]);
}

#[test]
fn serve_flags_default_to_the_store_defaults() {
    use clap::Parser;
    use rollout_control::cli::args::{Cli, Command};
    let parse = |extra: &[&str]| {
        let mut argv = vec!["rollout-control", "serve", "--data", "d"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv)
    };
    let Command::Serve(args) = parse(&[]).unwrap().command else {
        panic!("not serve");
    };
    assert_eq!(args.store.data_budget_bytes, budget::DEFAULT_DATA_BUDGET);
    assert_eq!(args.store.history_keep, DEFAULT_HISTORY_KEEP);
    let min = budget::MIN_DATA_BUDGET.to_string();
    assert!(parse(&["--data-budget-bytes", &min]).is_ok());
    let below = (budget::MIN_DATA_BUDGET - 1).to_string();
    let err = parse(&["--data-budget-bytes", &below])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--data-budget-bytes"), "{err}");
    assert!(parse(&["--history-keep", "0"]).is_err());
}

#[test]
fn history_retention_keeps_what_a_lagging_proxy_runs() {
    let dir = TempDir::new("budget-lagging");
    let data = dir.path().join("data");
    let plan = write_file(dir.path(), "plan.json", PLAN);
    let server = ServerProc::start(
        &data,
        &[
            "--initial-plan",
            plan.to_str().unwrap(),
            "--history-keep",
            "2",
        ],
    );
    let a = agent();
    let url = server.url.clone();
    let put = |w: u32| {
        let body = PLAN.replace("\"weight\":10", &format!("\"weight\":{w}"));
        let body = body.replace("\"weight\":90", &format!("\"weight\":{}", 100 - w));
        let (s, v, _) = call(&a, "PUT", &format!("{url}/v1/plan"), Some(&body)).unwrap();
        assert_eq!(s, 200, "{v}");
    };
    // A proxy polls, running v2 (the sidecar learns it from the poll's headers).
    let poll = |running: u64| {
        let resp = a
            .get(&format!("{url}/v1/plan"))
            .header("x-model-rollout-proxy", "lagging-envoy")
            .header("x-model-rollout-plan-version", running.to_string())
            .call()
            .unwrap();
        assert_eq!(resp.status(), 200);
    };
    put(2);
    poll(2);
    for w in 3..=6 {
        put(w); // v3..v6
    }
    let status = |v: u64| {
        call(&a, "GET", &format!("{url}/v1/plan/versions/{v}"), None)
            .unwrap()
            .0
    };
    // v2 is in force at the proxy: kept beyond the two newest; v1, v3, v4 are not.
    assert_eq!(
        (1..=6).map(status).collect::<Vec<_>>(),
        vec![404, 200, 404, 404, 200, 200]
    );
    // The proxy catches up: the next version drops v2.
    poll(6);
    put(7);
    assert_eq!(
        (1..=7).map(status).collect::<Vec<_>>(),
        vec![404, 404, 404, 404, 404, 200, 200]
    );
}
