//! A/B experiments through the HTTP API (`app(state).oneshot(...)`): assignments,
//! feedback, fixed-horizon verdicts, retention, validation, auth, metrics.
// Test helpers: failing loudly is their job (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use rollout_control::api::experiment::VerdictStatus;
use rollout_control::report::experiment;
use rollout_control::store::assignments;
use rollout_control::testutil::TempDir;
use rollout_control::{app, AppState, Store};
use rollout_core::abtest;
use rollout_core::policy::AbRequirement;
use rollout_core::wire::Assignment;
use serde_json::{json, Value};
use tower::ServiceExt;

/// fraud: conversion, 20,000 per variant; ranker: mean, 10 per variant; plain: none.
const PLAN: &str = r#"{"version":1,"rollouts":[
  {"name":"fraud","salt":"fraud-v2",
   "variants":[{"name":"stable","weight":50},{"name":"canary","weight":50}],
   "experiment":{"metric":"conversion","alpha":0.05,"samples_per_variant":20000}},
  {"name":"ranker","salt":"r1",
   "variants":[{"name":"a","weight":50},{"name":"b","weight":50}],
   "experiment":{"metric":"mean","alpha":0.05,"samples_per_variant":10}},
  {"name":"plain","salt":"p","variants":[{"name":"only","weight":100}]}]}"#;

struct Fixture {
    state: AppState,
    token: Option<String>,
    _dir: TempDir,
}

struct Reply {
    status: StatusCode,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn field(&self) -> String {
        let j = self.json();
        assert!(j["error"].is_string(), "{j}");
        j["field"].as_str().unwrap().to_string()
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }
}

impl Fixture {
    async fn new(token: Option<&str>, plan: Option<&str>) -> Fixture {
        let dir = TempDir::new("experiments");
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let f = Fixture {
            state: AppState::new(store, token.map(str::to_string)),
            token: token.map(str::to_string),
            _dir: dir,
        };
        if let Some(p) = plan {
            let r = f.post("PUT", "/v1/plan", p).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        }
        f
    }

    async fn send(&self, method: &str, uri: &str, auth: Option<&str>, body: Vec<u8>) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json");
        if let Some(t) = auth {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = app(self.state.clone())
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Reply { status, body }
    }

    async fn post(&self, method: &str, uri: &str, body: &str) -> Reply {
        self.send(method, uri, self.token.as_deref(), body.as_bytes().to_vec())
            .await
    }

    async fn post_json(&self, uri: &str, body: &Value) -> Reply {
        self.post("POST", uri, &body.to_string()).await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.send("GET", uri, None, Vec::new()).await
    }

    async fn assign(&self, rollout: &str, items: &[(String, &str)]) {
        for chunk in items.chunks(1000) {
            let list: Vec<Value> = chunk
                .iter()
                .enumerate()
                .map(|(i, (id, v))| {
                    json!({"correlation_id": id, "rollout": rollout, "variant": v,
                           "unix_ms": 1_700_000_000_000u64 + i as u64})
                })
                .collect();
            let r = self
                .post_json(
                    "/v1/assignments",
                    &json!({"proxy": "envoy-1", "assignments": list}),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            assert_eq!(r.json()["stored"], chunk.len());
        }
    }

    /// Posts outcomes in batches of 1000; returns the summed answer.
    async fn feedback(&self, outcomes: &[(String, f64)]) -> (u64, u64, u64) {
        let (mut a, mut u, mut d) = (0, 0, 0);
        for chunk in outcomes.chunks(1000) {
            let list: Vec<Value> = chunk
                .iter()
                .map(|(id, r)| json!({"correlation_id": id, "reward": r}))
                .collect();
            let r = self
                .post_json("/v1/feedback", &json!({ "outcomes": list }))
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            let j = r.json();
            a += j["accepted"].as_u64().unwrap();
            u += j["unknown"].as_u64().unwrap();
            d += j["dropped"].as_u64().unwrap();
        }
        (a, u, d)
    }

    fn rollout(&self, name: &str) -> rollout_core::Rollout {
        let cur = self.state.store().current().unwrap();
        let plan = cur.record.plan.compile().unwrap();
        plan.rollouts.into_iter().find(|r| r.name == name).unwrap()
    }
}

/// SplitMix64: a small deterministic generator.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn bernoulli(&mut self, p: f64) -> f64 {
        if self.unit() < p {
            1.0
        } else {
            0.0
        }
    }

    fn gaussian(&mut self) -> f64 {
        let u = 1.0 - self.unit();
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn id(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:08}-req")
}

#[tokio::test]
async fn known_lift_is_significant_with_the_right_winner_and_fixed_horizon() {
    let f = Fixture::new(None, Some(PLAN)).await;
    let n = 20_000;
    let mut rng = SplitMix(42);
    // Interleaved like real traffic: stable 10 %, canary 12 %.
    let mut assignments = Vec::new();
    let mut outcomes = Vec::new();
    let (mut stable, mut canary) = (Vec::new(), Vec::new());
    for i in 0..n {
        for (variant, p, keep) in [("stable", 0.10, &mut stable), ("canary", 0.12, &mut canary)] {
            let cid = id(variant, i);
            let reward = rng.bernoulli(p);
            assignments.push((cid.clone(), variant));
            outcomes.push((cid, reward));
            keep.push(reward);
        }
    }
    f.assign("fraud", &assignments).await;

    // Half the outcomes: collecting, nothing significant, no test statistic.
    let half = outcomes.len() / 2;
    assert_eq!(f.feedback(&outcomes[..half]).await, (half as u64, 0, 0));
    let r = f.get("/v1/experiments/fraud").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let j = r.json();
    assert_eq!(j["status"], "collecting");
    assert_eq!(j["significant"], false);
    assert_eq!(j["candidate_better"], Value::Null);
    assert_eq!(j["variants"][0]["count"], 10_000);
    assert_eq!(j["variants"][1]["count"], 10_000);
    assert_eq!(j["comparisons"][0]["z"], Value::Null);
    assert_eq!(j["comparisons"][0]["p_value"], Value::Null);
    assert_eq!(j["comparisons"][0]["significant"], false);
    let v = experiment::verdict(f.state.store(), &f.rollout("fraud"))
        .unwrap()
        .unwrap();
    assert_eq!(v.status, VerdictStatus::Collecting);
    assert_eq!(v.satisfies(AbRequirement::Better), None);

    // The rest: complete, significant, canary wins.
    f.feedback(&outcomes[half..]).await;
    let j = f.get("/v1/experiments/fraud").await.json();
    assert_eq!(j["status"], "complete", "{j}");
    assert_eq!(j["metric"], "conversion");
    assert_eq!(j["interval"], "wilson");
    assert_eq!(j["control"], "stable");
    assert_eq!(j["candidate"], "canary");
    assert_eq!(j["significant"], true);
    assert_eq!(j["candidate_better"], true);
    assert_eq!(j["winner"], "canary");
    let c = &j["comparisons"][0];
    assert_eq!(
        (&c["variant"], &c["against"], &c["winner"]),
        (&json!("canary"), &json!("stable"), &json!("canary"))
    );

    // The same numbers as rollout_core::abtest on the same rewards.
    let a = abtest::Summary::of(stable.iter().copied());
    let b = abtest::Summary::of(canary.iter().copied());
    let t = abtest::two_proportion_z(a.successes(), a.n(), b.successes(), b.n()).unwrap();
    assert!((c["z"].as_f64().unwrap() - t.z).abs() < 1e-9);
    assert!((c["p_value"].as_f64().unwrap() - t.p_value).abs() < 1e-12);
    assert!((c["diff"].as_f64().unwrap() - t.diff).abs() < 1e-12);
    let w = abtest::wilson_interval(b.successes(), b.n(), 0.05).unwrap();
    assert!((j["variants"][1]["ci_low"].as_f64().unwrap() - w.low).abs() < 1e-12);
    assert!((j["variants"][1]["conversion"].as_f64().unwrap() - b.rate().unwrap()).abs() < 1e-12);

    let v = experiment::verdict(f.state.store(), &f.rollout("fraud"))
        .unwrap()
        .unwrap();
    assert_eq!(v.status, VerdictStatus::Complete);
    assert!(v.significant);
    assert_eq!(v.candidate_better, Some(true));
    assert_eq!(v.satisfies(AbRequirement::Better), Some(true));
    assert_eq!(v.satisfies(AbRequirement::NotWorse), Some(true));
    assert_eq!(
        v.counts,
        vec![
            ("stable".to_string(), 20_000),
            ("canary".to_string(), 20_000)
        ]
    );

    // Later data cannot flip it: 5,000 more canary outcomes, all failures, are
    // counted but not analysed.
    let late: Vec<(String, &str)> = (n..n + 5000).map(|i| (id("canary", i), "canary")).collect();
    f.assign("fraud", &late).await;
    let late_outcomes: Vec<(String, f64)> = late.iter().map(|(c, _)| (c.clone(), 0.0)).collect();
    assert_eq!(f.feedback(&late_outcomes).await, (5000, 0, 0));
    let j2 = f.get("/v1/experiments/fraud").await.json();
    assert_eq!(j2["variants"][1]["count"], 25_000);
    assert_eq!(j2["variants"][1]["analysed"], 20_000);
    assert_eq!(j2["comparisons"], j["comparisons"]);
    assert_eq!(j2["winner"], "canary");
}

#[tokio::test]
async fn equal_rates_are_not_significant_and_worse_is_worse() {
    let plan = PLAN.replace(
        r#""samples_per_variant":20000"#,
        r#""samples_per_variant":5000"#,
    );
    let f = Fixture::new(None, Some(&plan)).await;
    let mut rng = SplitMix(7);
    let mut assignments = Vec::new();
    let mut outcomes = Vec::new();
    for i in 0..5000 {
        for variant in ["stable", "canary"] {
            let cid = id(variant, i);
            outcomes.push((cid.clone(), rng.bernoulli(0.10)));
            assignments.push((cid, variant));
        }
    }
    f.assign("fraud", &assignments).await;
    f.feedback(&outcomes).await;
    let j = f.get("/v1/experiments/fraud").await.json();
    assert_eq!(j["status"], "complete");
    let p = j["comparisons"][0]["p_value"].as_f64().unwrap();
    assert_eq!(j["significant"], p < 0.05);
    let v = experiment::verdict(f.state.store(), &f.rollout("fraud"))
        .unwrap()
        .unwrap();
    assert!(!v.significant, "equal rates with this seed: p = {p}");
    assert!(v.winner_free());

    // A worse candidate (all failures replaced in) fails both requirements.
    let worse: Vec<(String, f64)> = (0..5000).map(|i| (id("canary", i), 0.0)).collect();
    f.feedback(&worse).await;
    let v = experiment::verdict(f.state.store(), &f.rollout("fraud"))
        .unwrap()
        .unwrap();
    assert!(v.significant);
    assert_eq!(v.candidate_better, Some(false));
    assert_eq!(v.satisfies(AbRequirement::Better), Some(false));
    assert_eq!(v.satisfies(AbRequirement::NotWorse), Some(false));
    let j = f.get("/v1/experiments/fraud").await.json();
    assert_eq!(j["winner"], "stable");
}

trait WinnerFree {
    fn winner_free(&self) -> bool;
}

impl WinnerFree for experiment::Verdict {
    fn winner_free(&self) -> bool {
        self.status == VerdictStatus::Complete
            && !self.significant
            && self.satisfies(AbRequirement::Better) == Some(false)
            && self.satisfies(AbRequirement::NotWorse) == Some(true)
    }
}

#[tokio::test]
async fn mean_metric_uses_welch_and_the_first_outcomes_in_arrival_order() {
    let f = Fixture::new(None, Some(PLAN)).await;
    let mut rng = SplitMix(99);
    let items: Vec<(String, &str)> = (0..12)
        .flat_map(|i| [(id("a", i), "a"), (id("b", i), "b")])
        .collect();
    f.assign("ranker", &items).await;
    let rewards: Vec<(String, f64)> = items
        .iter()
        .map(|(c, v)| {
            let shift = if *v == "b" { 1.0 } else { 0.0 };
            (c.clone(), 5.0 + shift + rng.gaussian())
        })
        .collect();
    // 9 of each: still collecting
    let first: Vec<(String, f64)> = rewards[..18].to_vec();
    f.feedback(&first).await;
    let j = f.get("/v1/experiments/ranker").await.json();
    assert_eq!(j["status"], "collecting");
    assert_eq!(j["variants"][0]["count"], 9);
    assert!(j["variants"][0].get("conversion").is_none());
    assert!(j["variants"][0]["mean"].is_number());
    // all 12 of each: complete, analysed 10
    f.feedback(&rewards[18..]).await;
    let j = f.get("/v1/experiments/ranker").await.json();
    assert_eq!(j["status"], "complete");
    assert_eq!(j["test"], "welch_z");
    assert_eq!(j["interval"], "normal");
    assert_eq!(j["variants"][0]["count"], 12);
    assert_eq!(j["variants"][0]["analysed"], 10);
    let pick = |v: &str| -> Vec<f64> {
        rewards
            .iter()
            .filter(|(c, _)| c.starts_with(&format!("{v}-")))
            .take(10)
            .map(|(_, r)| *r)
            .collect()
    };
    let a = abtest::Summary::of(pick("a"));
    let b = abtest::Summary::of(pick("b"));
    let t = abtest::welch_z(&a, &b).unwrap();
    let c = &j["comparisons"][0];
    assert!(
        (c["z"].as_f64().unwrap() - t.z).abs() < 1e-9,
        "{c} vs {t:?}"
    );
    assert!((j["variants"][1]["mean"].as_f64().unwrap() - b.mean().unwrap()).abs() < 1e-12);
    let ci = abtest::mean_interval(&a, 0.05).unwrap();
    assert!((j["variants"][0]["ci_high"].as_f64().unwrap() - ci.high).abs() < 1e-12);

    // A corrected reward for an analysed outcome keeps its place (and is used);
    // the 11th and 12th stay outside the analysis.
    let (cid, _) = &rewards[0];
    assert_eq!(f.feedback(&[(cid.clone(), 100.0)]).await, (1, 0, 0));
    let j2 = f.get("/v1/experiments/ranker").await.json();
    assert_eq!(j2["variants"][0]["count"], 12);
    let mut corrected = pick("a");
    corrected[0] = 100.0;
    let a2 = abtest::Summary::of(corrected);
    assert!((j2["variants"][0]["mean"].as_f64().unwrap() - a2.mean().unwrap()).abs() < 1e-12);
}

#[tokio::test]
async fn unknown_ids_and_duplicates() {
    let f = Fixture::new(None, Some(PLAN)).await;
    f.assign("fraud", &[(id("s", 1), "stable"), (id("c", 1), "canary")])
        .await;
    // one known, two unknown
    let r = f
        .post_json(
            "/v1/feedback",
            &json!({"outcomes": [
                {"correlation_id": id("s", 1), "reward": 1},
                {"correlation_id": "never-assigned-1", "reward": 1},
                {"correlation_id": "never-assigned-2", "reward": 0}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"accepted": 1, "unknown": 2, "dropped": 0}));
    // single form; the same outcome twice counts once
    for _ in 0..3 {
        let r = f
            .post_json(
                "/v1/feedback",
                &json!({"correlation_id": id("c", 1), "reward": 1}),
            )
            .await;
        assert_eq!(r.json(), json!({"accepted": 1, "unknown": 0, "dropped": 0}));
    }
    let j = f.get("/v1/experiments/fraud").await.json();
    assert_eq!(j["variants"][1]["count"], 1);
    assert_eq!(j["variants"][1]["conversion"], 1.0);
    // a second outcome replaces the first
    f.feedback(&[(id("c", 1), 0.0)]).await;
    let j = f.get("/v1/experiments/fraud").await.json();
    assert_eq!(j["variants"][1]["count"], 1);
    assert_eq!(j["variants"][1]["conversion"], 0.0);
    // a retried assignment batch changes nothing; an id assigned elsewhere is refused
    // and counted: assignments are immutable
    f.assign("fraud", &[(id("s", 1), "stable")]).await;
    assert_eq!(
        assignments::assignment_count(f.state.store(), "fraud").unwrap(),
        2
    );
    for (rollout, variant) in [("ranker", "a"), ("fraud", "canary")] {
        let r = f
            .post_json(
                "/v1/assignments",
                &json!({"proxy": "envoy-1", "assignments": [{"correlation_id": id("s", 1),
                        "rollout": rollout, "variant": variant, "unix_ms": 1}]}),
            )
            .await;
        assert_eq!(r.json(), json!({"stored": 0, "refused": 1}));
    }
    assert_eq!(
        assignments::assignment_count(f.state.store(), "fraud").unwrap(),
        2
    );
    assert_eq!(
        assignments::assignment_of(f.state.store(), &id("s", 1))
            .unwrap()
            .unwrap()
            .1,
        "stable"
    );
    // metrics
    let m = f.get("/metrics").await.text();
    assert!(
        m.contains("rollout_control_feedback_total{result=\"accepted\"} 5\n"),
        "{m}"
    );
    assert!(
        m.contains("rollout_control_feedback_total{result=\"unknown\"} 2\n"),
        "{m}"
    );
    assert!(m.contains("rollout_control_assignments_total 3\n"), "{m}");
    assert!(
        m.contains("rollout_control_assignments_refused_total 2\n"),
        "{m}"
    );
}

#[tokio::test]
async fn validation_errors_name_the_field_and_store_nothing() {
    let f = Fixture::new(None, Some(PLAN)).await;
    let good = |i: usize| json!({"correlation_id": id("x", i), "rollout": "fraud", "variant": "stable", "unix_ms": 1});
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"assignments": [good(0), {"correlation_id": "bad id!", "rollout": "fraud", "variant": "stable", "unix_ms": 1}]}),
            "assignments[1].correlation_id",
        ),
        (
            json!({"assignments": [{"correlation_id": id("x", 1), "rollout": "no such/", "variant": "stable", "unix_ms": 1}]}),
            "assignments[0].rollout",
        ),
        (
            json!({"assignments": [{"correlation_id": id("x", 1), "rollout": "fraud", "variant": "", "unix_ms": 1}]}),
            "assignments[0].variant",
        ),
        (
            json!({"assignments": [{"correlation_id": id("x", 1), "rollout": "fraud", "variant": "stable"}]}),
            "assignments[0].unix_ms",
        ),
        (
            json!({"assignments": [{"correlation_id": id("x", 1), "rollout": "fraud", "variant": "stable", "unix_ms": -1}]}),
            "assignments[0].unix_ms",
        ),
        (
            json!({"assignments": (0..1001).map(good).collect::<Vec<_>>()}),
            "assignments",
        ),
        (json!({"assignments": [], "proxy": ""}), "proxy"),
        (json!({"assignmentz": []}), "assignmentz"),
    ];
    for (body, field) in cases {
        let r = f.post_json("/v1/assignments", &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}: {}", r.text());
        assert_eq!(r.field(), field, "{}", r.text());
    }
    assert_eq!(
        assignments::assignment_count(f.state.store(), "fraud").unwrap(),
        0
    );
    f.assign("fraud", &[(id("s", 1), "stable"), (id("s", 2), "stable")])
        .await;
    f.assign("ranker", &[(id("a", 1), "a")]).await;
    let cases: Vec<(Value, &str)> = vec![
        // conversion rewards are 0 or 1; the whole batch is refused
        (
            json!({"outcomes": [{"correlation_id": id("s", 1), "reward": 1},
                             {"correlation_id": id("s", 2), "reward": 0.5}]}),
            "outcomes[1].reward",
        ),
        (
            json!({"outcomes": [{"correlation_id": id("s", 1), "reward": "1"}]}),
            "outcomes[0].reward",
        ),
        (
            json!({"outcomes": [{"correlation_id": id("s", 1)}]}),
            "outcomes[0].reward",
        ),
        (
            json!({"outcomes": [{"correlation_id": "short", "reward": 1}]}),
            "outcomes[0].correlation_id",
        ),
        (
            json!({"outcomes": [{"correlation_id": id("s", 1), "reward": 1, "extra": 1}]}),
            "outcomes[0].extra",
        ),
        (
            json!({"outcomes": (0..1001).map(|i| json!({"correlation_id": id("s", i), "reward": 1})).collect::<Vec<_>>()}),
            "outcomes",
        ),
        (json!({"correlation_id": id("s", 1), "reward": 2}), "reward"),
        (json!({"correlation_id": id("s", 1)}), "reward"),
        (json!({"reward": 1}), "correlation_id"),
        (json!({"outcomes": [], "reward": 1}), ""),
        (json!({}), ""),
    ];
    for (body, field) in cases {
        let r = f.post_json("/v1/feedback", &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}: {}", r.text());
        assert_eq!(r.field(), field, "{}", r.text());
    }
    let r = f.post("POST", "/v1/feedback", "[1]").await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::BAD_REQUEST, String::new())
    );
    let r = f.post("POST", "/v1/feedback", "{\"outcomes\": [").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // nothing was stored by the refused batches
    let j = f.get("/v1/experiments/fraud").await.json();
    assert_eq!(j["variants"][0]["count"], 0);
    // a mean experiment takes any finite reward
    assert_eq!(f.feedback(&[(id("a", 1), -2.5)]).await, (1, 0, 0));
}

#[tokio::test]
async fn experiment_endpoint_404s_and_reset() {
    let f = Fixture::new(None, None).await;
    let r = f.get("/v1/experiments/fraud").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let f = Fixture::new(None, Some(PLAN)).await;
    let r = f.get("/v1/experiments/nope").await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::NOT_FOUND, "rollout".into())
    );
    let r = f.get("/v1/experiments/plain").await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::NOT_FOUND, "experiment".into())
    );
    assert!(experiment::verdict(f.state.store(), &f.rollout("plain"))
        .unwrap()
        .is_none());
    // before any data: collecting with zero counts
    let j = f.get("/v1/experiments/ranker").await.json();
    assert_eq!(j["status"], "collecting");
    assert_eq!(j["variants"][0]["count"], 0);
    assert_eq!(j["variants"][0]["mean"], Value::Null);

    let items: Vec<(String, &str)> = (0..30).map(|i| (id("a", i), "a")).collect();
    f.assign("ranker", &items).await;
    f.assign("fraud", &[(id("f", 1), "stable")]).await;
    let outs: Vec<(String, f64)> = items.iter().map(|(c, _)| (c.clone(), 1.0)).collect();
    f.feedback(&outs).await;
    f.feedback(&[(id("f", 1), 1.0)]).await;
    let r = f.post("POST", "/v1/experiments/ranker/reset", "").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"assignments_deleted": 30, "outcomes_deleted": 30})
    );
    let j = f.get("/v1/experiments/ranker").await.json();
    assert_eq!(j["variants"][0]["count"], 0);
    assert_eq!(
        assignments::assignment_count(f.state.store(), "ranker").unwrap(),
        0
    );
    // the outcome is unknown now; other rollouts are untouched
    assert_eq!(f.feedback(&[(id("a", 1), 1.0)]).await, (0, 1, 0));
    let j = f.get("/v1/experiments/fraud").await.json();
    assert_eq!(j["variants"][0]["count"], 1);
    let r = f.post("POST", "/v1/experiments/bad%20name/reset", "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn writes_need_a_token_of_their_role_reads_do_not() {
    let f = Fixture::new(Some("s3cret"), Some(PLAN)).await;
    let body = json!({"assignments": [{"correlation_id": id("s", 1), "rollout": "fraud",
                                       "variant": "stable", "unix_ms": 1}]})
    .to_string();
    for uri in [
        "/v1/assignments",
        "/v1/feedback",
        "/v1/shadow-records",
        "/v1/experiments/fraud/reset",
    ] {
        let r = f.send("POST", uri, None, body.clone().into_bytes()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{uri}");
        let r = f
            .send("POST", uri, Some("wrong"), body.clone().into_bytes())
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    // the operator's token is not the proxy's: 403 naming the role
    let r = f
        .send("POST", "/v1/assignments", Some("s3cret"), body.into_bytes())
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.json()["error"].as_str().unwrap().contains("proxy role"),
        "{}",
        r.text()
    );
    assert_eq!(f.get("/v1/experiments/fraud").await.status, StatusCode::OK);
    assert_eq!(
        f.get("/v1/shadow-report?rollout=fraud").await.status,
        StatusCode::OK
    );
    assert_eq!(f.get("/metrics").await.status, StatusCode::OK);
}

#[tokio::test]
async fn assignments_are_bounded_per_rollout_oldest_first() {
    let dir = TempDir::new("assign-cap");
    let store = Store::open(dir.path()).unwrap();
    let batch = |from: usize, to: usize, rollout: &str| -> Vec<Assignment> {
        (from..to)
            .map(|i| Assignment {
                correlation_id: id("cap", i),
                rollout: rollout.into(),
                variant: "a".into(),
                // newest first in the batch: eviction goes by unix_ms, not arrival
                unix_ms: 10_000 - i as u64,
            })
            .collect()
    };
    assignments::store_assignments_capped(&store, &batch(0, 8, "r"), 10).unwrap();
    assignments::store_assignments_capped(&store, &batch(8, 15, "r"), 10).unwrap();
    assignments::store_assignments_capped(&store, &batch(100, 103, "other"), 10).unwrap();
    assert_eq!(assignments::assignment_count(&store, "r").unwrap(), 10);
    assert_eq!(assignments::assignment_count(&store, "other").unwrap(), 3);
    // ids 10..15 have the smallest unix_ms: dropped
    for i in 0..15 {
        let kept = assignments::assignment_of(&store, &id("cap", i))
            .unwrap()
            .is_some();
        assert_eq!(kept, i < 10, "id {i}");
    }
    // survives a reopen
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(assignments::assignment_count(&store, "r").unwrap(), 10);
    assert!(assignments::assignment_of(&store, &id("cap", 0))
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn metrics_endpoint() {
    let f = Fixture::new(None, Some(PLAN)).await;
    let r = f
        .send("POST", "/v1/rollouts/fraud/pause", None, Vec::new())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let poll = Request::builder()
        .uri("/v1/plan")
        .header("x-model-rollout-proxy", "envoy-a")
        .header("x-model-rollout-plan-version", "2")
        .body(Body::empty())
        .unwrap();
    let resp = app(f.state.clone()).oneshot(poll).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(f.get("/no/such/path").await.status, StatusCode::NOT_FOUND);
    let resp = app(f.state.clone())
        .oneshot(
            Request::builder()
                .uri("/metrics")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let m = String::from_utf8(
        to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    for want in [
        "# TYPE rollout_control_plan_version gauge\nrollout_control_plan_version 2\n",
        "# TYPE rollout_control_plan_changes_total counter\n",
        "rollout_control_plan_changes_total{op=\"put\"} 1\n",
        "rollout_control_plan_changes_total{op=\"pause\"} 1\n",
        "rollout_control_http_requests_total{route=\"/v1/plan\",status=\"200\"} 2\n",
        "rollout_control_http_requests_total{route=\"/v1/rollouts/{name}/pause\",status=\"200\"} 1\n",
        "rollout_control_http_requests_total{route=\"unmatched\",status=\"404\"} 1\n",
        "rollout_control_shadow_records_total 0\n",
        "rollout_control_assignments_total 0\n",
        "rollout_control_feedback_total{result=\"dropped\"} 0\n",
        "rollout_control_proxies 1\n",
    ] {
        assert!(m.contains(want), "missing {want:?} in\n{m}");
    }
    // every sample line is NAME[{labels}] VALUE
    for l in m.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = l.rsplit_once(' ').unwrap();
        value.parse::<u64>().unwrap();
        assert!(l.starts_with("rollout_control_"), "{l}");
    }
}

/// Interleaved outcomes of `n` users per variant (stable first), conversion at the
/// given rates; returns the assignments, the outcomes in posting order and the
/// rewards per arm.
#[allow(clippy::type_complexity)]
fn interleaved(
    n: usize,
    rates: (f64, f64),
    seed: u64,
) -> (Vec<(String, &'static str)>, Vec<(String, f64)>) {
    let mut rng = SplitMix(seed);
    let (mut assignments, mut outcomes) = (Vec::new(), Vec::new());
    for i in 0..n {
        for (variant, p) in [("stable", rates.0), ("canary", rates.1)] {
            let cid = id(variant, i);
            outcomes.push((cid.clone(), rng.bernoulli(p)));
            assignments.push((cid, variant));
        }
    }
    (assignments, outcomes)
}

#[tokio::test]
async fn sequential_stops_as_soon_as_decided_with_the_right_winner() {
    let plan = PLAN.replace(
        r#""samples_per_variant":20000}"#,
        r#""samples_per_variant":20000,"stopping":"sequential"}"#,
    );
    let f = Fixture::new(None, Some(&plan)).await;
    // 10 % vs 15 %: decided long before the horizon; only 6,000 per arm are sent
    let (assignments, outcomes) = interleaved(6_000, (0.10, 0.15), 42);
    f.assign("fraud", &assignments).await;
    f.feedback(&outcomes).await;
    let j = f.get("/v1/experiments/fraud").await.json();
    assert_eq!(j["stopping"], "sequential", "{j}");
    assert_eq!(j["test"], "msprt");
    assert_eq!(j["status"], "complete", "decided below the horizon: {j}");
    assert_eq!(j["significant"], true);
    assert_eq!(j["winner"], "canary");
    let c = &j["comparisons"][0];
    let at = (
        c["stopped_at"]["variant"].as_u64().unwrap(),
        c["stopped_at"]["control"].as_u64().unwrap(),
    );
    assert!(at.0 < 6_000, "decided before the data ran out: {c}");
    assert_eq!(c["z"], Value::Null);

    // the same replay with rollout_core::msprt: identical decision and p-value
    let mut t = rollout_core::msprt::SequentialTest::new(0.05, None);
    let (mut a, mut b) = (abtest::Summary::new(), abtest::Summary::new());
    for (cid, reward) in &outcomes {
        if t.stopped().is_some() {
            break;
        }
        if cid.starts_with("stable") {
            a.add(*reward);
        } else {
            b.add(*reward);
        }
        t.look(&a, &b);
    }
    let s = t.stopped().unwrap();
    assert_eq!(at, (s.n_treatment, s.n_control));
    assert_eq!(c["p_value"].as_f64().unwrap(), s.p_value);
    assert!(s.p_value <= 0.05);
    assert!((c["diff"].as_f64().unwrap() - s.diff).abs() < 1e-15);

    let v = experiment::verdict(f.state.store(), &f.rollout("fraud"))
        .unwrap()
        .unwrap();
    assert_eq!(v.status, VerdictStatus::Complete);
    assert_eq!(v.satisfies(AbRequirement::Better), Some(true));
    // later data cannot flip the decision
    let late: Vec<(String, &str)> = (6_000..7_000)
        .map(|i| (id("canary", i), "canary"))
        .collect();
    f.assign("fraud", &late).await;
    let late_outcomes: Vec<(String, f64)> = late.iter().map(|(c, _)| (c.clone(), 0.0)).collect();
    f.feedback(&late_outcomes).await;
    let j2 = f.get("/v1/experiments/fraud").await.json();
    assert_eq!(j2["comparisons"], j["comparisons"]);
}

#[tokio::test]
async fn sequential_equal_rates_are_readable_any_time_and_end_undecided_at_the_horizon() {
    let plan = PLAN.replace(
        r#""samples_per_variant":20000}"#,
        r#""samples_per_variant":5000,"stopping":"sequential","mixture_variance":0.0004}"#,
    );
    let f = Fixture::new(None, Some(&plan)).await;
    let (assignments, outcomes) = interleaved(5000, (0.10, 0.10), 7);
    f.assign("fraud", &assignments).await;
    let half = outcomes.len() / 2;
    f.feedback(&outcomes[..half]).await;
    let j = f.get("/v1/experiments/fraud").await.json();
    assert_eq!(j["status"], "collecting");
    assert_eq!(j["mixture_variance"], 0.0004);
    let p_half = j["comparisons"][0]["p_value"].as_f64().unwrap();
    assert!(p_half > 0.05 && p_half <= 1.0, "{j}");
    assert_eq!(j["significant"], false);
    f.feedback(&outcomes[half..]).await;
    let j = f.get("/v1/experiments/fraud").await.json();
    assert_eq!(j["status"], "complete", "{j}");
    assert_eq!(j["significant"], false);
    let p = j["comparisons"][0]["p_value"].as_f64().unwrap();
    assert!(
        p <= p_half,
        "the always-valid p-value never rises: {p} > {p_half}"
    );
    let v = experiment::verdict(f.state.store(), &f.rollout("fraud"))
        .unwrap()
        .unwrap();
    assert!(v.winner_free(), "{v:?}");
}
