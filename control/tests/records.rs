//! Shadow records through the HTTP API (`app(state).oneshot(...)`): ingestion,
//! validation, limits, the report, retention and durability.
// Test helpers: failing loudly is their job (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use rollout_control::http::roles::Credentials;
use rollout_control::http::server::HttpLimits;
use rollout_control::report::shadow::Bounds;
use rollout_control::store::shadow_records;
use rollout_control::testutil::TempDir;
use rollout_control::{app, AppState, Store};
use rollout_core::wire::{json_len, ShadowRecord};
use serde_json::{json, Value};
use tower::ServiceExt;

const PLAN: &str = r#"{"version":1,"rollouts":[
  {"name":"fraud","salt":"fraud-v2",
   "variants":[{"name":"stable","weight":90},{"name":"canary","weight":10}],
   "shadow":{"cluster":"shadow_model","percent":50,"records":{"sample_percent":10}}}]}"#;

async fn send(state: &AppState, method: &str, uri: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, v)
}

fn fixture() -> (AppState, TempDir) {
    let dir = TempDir::new("records");
    let store = Arc::new(Store::open(dir.path()).unwrap());
    (AppState::new(store, None), dir)
}

/// A record as the filter's `Hub::complete` builds it.
fn record(i: u64, verdict: &str) -> Value {
    json!({
        "correlation_id": format!("req-{i:06}-abc"),
        "rollout": "fraud",
        "variant": if i.is_multiple_of(2) { "stable" } else { "canary" },
        "shadow_cluster": "shadow_model",
        "agree": verdict == "agree",
        "verdict": verdict,
        "primary_status": 200,
        "shadow_status": if verdict == "status" { 503 } else { 200 },
        "primary_latency_ms": i,
        "shadow_latency_ms": 2 * i,
        "primary_prediction": [0.25, i],
        "shadow_prediction": [0.75, i],
        "unix_ms": 1_700_000_000_000u64 + i,
    })
}

async fn post(state: &AppState, records: Vec<Value>) -> (StatusCode, Value) {
    let body = json!({"proxy": "envoy-a", "records": records}).to_string();
    send(state, "POST", "/v1/shadow-records", body.into_bytes()).await
}

#[tokio::test]
async fn records_are_stored_and_reported() {
    let (state, _dir) = fixture();
    let r = send(&state, "PUT", "/v1/plan", PLAN.as_bytes().to_vec()).await;
    assert_eq!(r.0, StatusCode::OK);
    // 1..=100: every 10th a prediction disagreement, every 25th a status one
    let all: Vec<Value> = (1..=100)
        .map(|i| {
            let v = if i % 25 == 0 {
                "status"
            } else if i % 10 == 0 {
                "prediction"
            } else {
                "agree"
            };
            record(i, v)
        })
        .collect();
    // posted out of order, in two batches
    let (s, j) = post(&state, all[50..].to_vec()).await;
    assert_eq!((s, j), (StatusCode::OK, json!({"stored": 50})));
    let (s, _) = post(&state, all[..50].to_vec()).await;
    assert_eq!(s, StatusCode::OK);

    let (s, j) = send(&state, "GET", "/v1/shadow-report?rollout=fraud", vec![]).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(j["rollout"], "fraud");
    assert_eq!(j["sampled"], true);
    assert!(j["note"].as_str().unwrap().contains("sample"));
    assert_eq!(j["records"], 100);
    assert_eq!(j["compared"], 100);
    // status: 25, 50, 75, 100; prediction: 10..90 but 50 -> 8
    assert_eq!(
        j["by_verdict"],
        json!({"agree": 88, "status": 4, "prediction": 8})
    );
    assert_eq!(
        (j["agree"].clone(), j["disagree"].clone()),
        (json!(88), json!(12))
    );
    assert_eq!(j["agreement_rate"], 0.88);
    // agreements at 10 %: 880 / (880 + 12)
    let est = j["estimated_agreement_rate"].as_f64().unwrap();
    assert!((est - 880.0 / 892.0).abs() < 1e-6, "{est}");
    assert_eq!(
        j["latency"]["primary"],
        json!({"p50": 50, "p90": 90, "p99": 99, "mean": 50.5})
    );
    assert_eq!(j["latency"]["shadow"]["p99"], 198);
    assert_eq!(j["first_unix_ms"], 1_700_000_000_001u64);
    assert_eq!(j["last_unix_ms"], 1_700_000_000_100u64);
    let recent = j["recent_disagreements"].as_array().unwrap();
    assert_eq!(recent.len(), 12);
    assert_eq!(recent[0]["correlation_id"], "req-000100-abc");
    assert_eq!(recent[0]["verdict"], "status");
    assert_eq!(recent[0]["shadow_status"], 503);
    assert_eq!(recent[1]["correlation_id"], "req-000090-abc");
    assert_eq!(recent[1]["primary_prediction"], json!([0.25, 90]));
    assert_eq!(recent[1]["shadow_prediction"], json!([0.75, 90]));
    assert_eq!(recent[1]["variant"], "stable");

    // limit and since_ms
    let (_, j) = send(
        &state,
        "GET",
        "/v1/shadow-report?rollout=fraud&limit=2&since_ms=1700000000061",
        vec![],
    )
    .await;
    assert_eq!(j["records"], 40);
    assert_eq!(j["since_ms"], 1_700_000_000_061u64);
    let ids: Vec<&str> = j["recent_disagreements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["correlation_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["req-000100-abc", "req-000090-abc"]);
    let (_, j) = send(
        &state,
        "GET",
        "/v1/shadow-report?rollout=fraud&limit=0",
        vec![],
    )
    .await;
    assert_eq!(j["recent_disagreements"], json!([]));

    // a rollout without records: zeros and nulls
    let (s, j) = send(&state, "GET", "/v1/shadow-report?rollout=other", vec![]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(j["records"], 0);
    assert_eq!(j["agreement_rate"], Value::Null);
    assert_eq!(j["estimated_agreement_rate"], Value::Null);
    assert_eq!(j["latency"]["primary"]["p50"], Value::Null);

    // query errors
    for (uri, field) in [
        ("/v1/shadow-report", "rollout"),
        ("/v1/shadow-report?rollout=a%20b", "rollout"),
        ("/v1/shadow-report?rollout=fraud&limit=1001", "limit"),
        ("/v1/shadow-report?rollout=fraud&limit=x", "limit"),
        ("/v1/shadow-report?rollout=fraud&since_ms=-1", "since_ms"),
    ] {
        let (s, j) = send(&state, "GET", uri, vec![]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(j["field"], field, "{uri}: {j}");
    }

    let (_, m) = (0, {
        let resp = app(state.clone())
            .oneshot(
                Request::builder()
                    .uri("/metrics")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        String::from_utf8(
            to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap()
                .to_vec(),
        )
        .unwrap()
    });
    assert!(
        m.contains("rollout_control_shadow_records_total 100\n"),
        "{m}"
    );
}

#[tokio::test]
async fn validation_names_the_field() {
    let (state, _dir) = fixture();
    let with = |k: &str, v: Value| {
        let mut r = record(1, "agree");
        r[k] = v;
        r
    };
    let without = |k: &str| {
        let mut r = record(1, "agree");
        r.as_object_mut().unwrap().remove(k);
        r
    };
    let cases: Vec<(Vec<Value>, &str)> = vec![
        (
            vec![record(1, "agree"), with("verdict", json!("maybe"))],
            "records[1].verdict",
        ),
        (vec![with("agree", json!(false))], "records[0].agree"),
        (vec![with("agree", json!("yes"))], "records[0].agree"),
        (
            vec![record(1, "agree"), record(2, "agree"), without("unix_ms")],
            "records[2].unix_ms",
        ),
        (vec![without("correlation_id")], "records[0].correlation_id"),
        (
            vec![with("correlation_id", json!("x"))],
            "records[0].correlation_id",
        ),
        (vec![with("rollout", json!("a/b"))], "records[0].rollout"),
        (vec![with("variant", json!(""))], "records[0].variant"),
        (
            vec![with("shadow_cluster", json!(""))],
            "records[0].shadow_cluster",
        ),
        (
            vec![with("primary_status", json!(1000))],
            "records[0].primary_status",
        ),
        (
            vec![with("shadow_latency_ms", json!(-3))],
            "records[0].shadow_latency_ms",
        ),
        ((0..1001).map(|i| record(i, "agree")).collect(), "records"),
    ];
    for (records, field) in cases {
        let (s, j) = post(&state, records).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{field}: {j}");
        assert_eq!(j["field"], field, "{j}");
    }
    let (s, j) = send(
        &state,
        "POST",
        "/v1/shadow-records",
        json!({"proxy": "has space", "records": []})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(
        (s, j["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("proxy"))
    );
    let (s, j) = send(
        &state,
        "POST",
        "/v1/shadow-records",
        json!({"recs": []}).to_string().into_bytes(),
    )
    .await;
    assert_eq!(
        (s, j["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("recs"))
    );
    let (s, _) = send(&state, "POST", "/v1/shadow-records", b"not json".to_vec()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // nothing was stored; unknown record fields are accepted; predictions are optional
    assert!(shadow_records::record_counts(state.store())
        .unwrap()
        .is_empty());
    let mut r = record(5, "prediction");
    r["future_field"] = json!(1);
    r.as_object_mut().unwrap().remove("shadow_prediction");
    let (s, j) = post(&state, vec![r]).await;
    assert_eq!((s, j), (StatusCode::OK, json!({"stored": 1})));
    let (s, j) = post(&state, vec![]).await;
    assert_eq!((s, j), (StatusCode::OK, json!({"stored": 0})));
}

#[tokio::test]
async fn bodies_up_to_4_mib() {
    let (state, _dir) = fixture();
    // about 2.5 MiB of predictions in 1,000 records: accepted (the plan API's limit is 1 MiB)
    let big: Vec<Value> = (0..1000)
        .map(|i| {
            let mut r = record(i, "prediction");
            r["primary_prediction"] = json!(vec![0.123_456_789_f64; 200]);
            r
        })
        .collect();
    let body = json!({"proxy": "p", "records": big}).to_string();
    assert!(body.len() > 2 * 1024 * 1024 && body.len() < 4 * 1024 * 1024);
    let (s, j) = send(&state, "POST", "/v1/shadow-records", body.into_bytes()).await;
    assert_eq!((s, j), (StatusCode::OK, json!({"stored": 1000})));
    let huge = vec![b' '; 4 * 1024 * 1024 + 10];
    let (s, j) = send(&state, "POST", "/v1/shadow-records", huge.clone()).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{j}");
    let (s, _) = send(&state, "POST", "/v1/feedback", huge.clone()).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, _) = send(&state, "POST", "/v1/assignments", huge).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    // the plan API keeps its 1 MiB limit
    let (s, _) = send(&state, "PUT", "/v1/plan", vec![b' '; 2 * 1024 * 1024]).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
}

const BOUNDS: Bounds = Bounds {
    limit: 100,
    max_bytes: 16 * 1024 * 1024,
};

async fn metric(state: &AppState, name: &str) -> u64 {
    let req = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .unwrap();
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let text = String::from_utf8(
        to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
        .parse()
        .unwrap()
}

/// A sidecar with `--max-record-bytes 8192`: records of large predictions are cut at
/// ingest (a marker with the original size, counted), and the report lists only as many
/// disagreements as fit in `--max-report-bytes` (32 KiB here), newest first, counting
/// the rest.
#[tokio::test]
async fn large_predictions_are_cut_at_ingest_and_reports_keep_to_their_bytes() {
    let dir = TempDir::new("records-cut");
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let limits = HttpLimits {
        max_record_bytes: 8192,
        max_report_bytes: 32 * 1024,
        ..HttpLimits::default()
    };
    let state = AppState::with_limits(store, Credentials::default(), limits);
    let big = json!(vec![0.5; 5000]);
    let big_len = big.to_string().len();
    let mut records: Vec<Value> = (0..20)
        .map(|i| {
            let mut r = record(i, "prediction");
            r["primary_prediction"] = big.clone();
            r
        })
        .collect();
    records.push(record(20, "prediction"));
    let (s, j) = post(&state, records).await;
    assert_eq!((s, j), (StatusCode::OK, json!({"stored": 21})));
    assert_eq!(
        metric(&state, "rollout_control_shadow_records_truncated_total").await,
        20
    );
    let mut stored = Vec::new();
    shadow_records::scan(state.store(), "fraud", None, |r| stored.push(r)).unwrap();
    assert_eq!(stored.len(), 21);
    for r in &stored[..20] {
        assert!(json_len(r) <= 8192, "{} bytes", json_len(r));
        assert_eq!(r.primary_prediction["truncated_from_bytes"], big_len);
        let prefix = r.primary_prediction["prefix"].as_str().unwrap();
        assert!(prefix.len() > 1000 && big.to_string().starts_with(prefix));
        // the small prediction beside it is cut too, whole in its prefix
        assert_eq!(
            r.shadow_prediction["prefix"],
            json!([0.75, r.primary_latency_ms]).to_string()
        );
    }
    assert_eq!(stored[20].primary_prediction, json!([0.25, 20]));

    let (s, j) = send(
        &state,
        "GET",
        "/v1/shadow-report?rollout=fraud&limit=1000",
        vec![],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(j["truncated"], 20);
    let listed = j["recent_disagreements"].as_array().unwrap();
    let bytes: usize = listed.iter().map(|d| d.to_string().len() + 1).sum();
    assert!(bytes <= 32 * 1024, "{bytes} bytes listed");
    // about 3 KiB each once cut (half of 8 KiB is prefix, quoted), so about 10 fit
    assert!(
        listed.len() >= 5 && listed.len() < 21,
        "{} listed",
        listed.len()
    );
    assert_eq!(j["disagreements_omitted"], 21 - listed.len());
    let ids: Vec<&str> = listed
        .iter()
        .map(|d| d["correlation_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids[0], "req-000020-abc");
    assert_eq!(ids[1], "req-000019-abc");
    assert_eq!(
        listed[1]["primary_prediction"]["truncated_from_bytes"],
        big_len
    );
    // a limit below what fits omits nothing
    let (_, j) = send(
        &state,
        "GET",
        "/v1/shadow-report?rollout=fraud&limit=3",
        vec![],
    )
    .await;
    assert_eq!(j["recent_disagreements"].as_array().unwrap().len(), 3);
    assert_eq!(j["disagreements_omitted"], 0);
}

#[test]
fn retention_drops_the_oldest_per_rollout_and_survives_reopen() {
    let dir = TempDir::new("records-cap");
    let mk = |i: u64, rollout: &str| -> ShadowRecord {
        let mut v = record(
            i,
            if i.is_multiple_of(2) {
                "agree"
            } else {
                "prediction"
            },
        );
        v["rollout"] = json!(rollout);
        serde_json::from_value(v).unwrap()
    };
    {
        let store = Store::open(dir.path()).unwrap();
        // newest first: retention goes by unix_ms, not arrival
        let batch: Vec<ShadowRecord> = (0..8).rev().map(|i| mk(i, "r")).collect();
        shadow_records::store_records_capped(&store, &batch, 10).unwrap();
        let batch: Vec<ShadowRecord> = (8..15).map(|i| mk(i, "r")).collect();
        shadow_records::store_records_capped(&store, &batch, 10).unwrap();
        shadow_records::store_records_capped(&store, &[mk(1, "other")], 10).unwrap();
        store.close().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let counts = shadow_records::record_counts(&store).unwrap();
    assert_eq!(counts.get("r"), Some(&10));
    assert_eq!(counts.get("other"), Some(&1));
    let report =
        rollout_control::report::shadow::shadow_report(&store, "r", None, BOUNDS, None).unwrap();
    assert_eq!(report.records, 10);
    assert_eq!(report.first_unix_ms, Some(1_700_000_000_005));
    assert_eq!(report.last_unix_ms, Some(1_700_000_000_014));
    assert_eq!(report.recent_disagreements.len(), 5);
    assert_eq!(report.estimated_agreement_rate, None);
}
