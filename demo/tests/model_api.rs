//! The model server's HTTP API, exercised in-process with `tower::ServiceExt::oneshot`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use rollout_demo::faults::Faults;
use rollout_demo::model::{REQUEST_LOG_CAPACITY, SERVED_BY_HEADER};
use rollout_demo::{app, AppState, ModelConfig};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tower::ServiceExt;

const INFER: &str = "/v2/models/fraud/infer";

fn state_with(version: &str, faults: Faults) -> AppState {
    let mut cfg = ModelConfig::new(version);
    cfg.faults = faults;
    AppState::new(cfg).unwrap()
}

fn router(version: &str) -> Router {
    app(state_with(version, Faults::default()))
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let res = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, bytes)
}

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

fn oip_body(data: &[f64]) -> String {
    json!({"inputs": [{"name": "x", "shape": [1, data.len()], "datatype": "FP32", "data": data}]})
        .to_string()
}

/// The documented reference prediction, computed independently of the crate.
fn reference(sum: f64) -> f64 {
    ((1.0 / (1.0 + (-0.1 * sum).exp())) * 1e6).round() / 1e6
}

/// The documented disagreement rule, computed independently of the crate:
/// FNV-1a 64 of the raw body, top 53 bits / 2^53 < rate.
fn documented_disagrees(body: &[u8], rate: f64) -> bool {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    ((h >> 11) as f64 / 9007199254740992.0) < rate
}

fn prediction(v: &Value) -> f64 {
    v["outputs"][0]["data"][0].as_f64().unwrap()
}

async fn post_faults(app: &Router, patch: Value) -> (StatusCode, Value) {
    let (status, _, body) = send(app, post("/admin/faults", patch.to_string())).await;
    (status, parse(&body))
}

async fn requests_log(app: &Router, limit: usize) -> Vec<Value> {
    let (status, _, body) = send(app, get(&format!("/admin/requests?limit={limit}"))).await;
    assert_eq!(status, StatusCode::OK);
    parse(&body).as_array().unwrap().clone()
}

#[tokio::test]
async fn infer_response_shape_and_version() {
    let app = router("canary");
    let body = json!({"id": "abc", "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]});
    let (status, headers, bytes) = send(&app, post(INFER, body.to_string())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[SERVED_BY_HEADER], "canary");
    assert_eq!(headers["content-type"], "application/json");
    let v = parse(&bytes);
    assert_eq!(
        v,
        json!({
            "model_name": "fraud",
            "model_version": "canary",
            "id": "abc",
            "outputs": [{"name": "score", "shape": [1], "datatype": "FP64", "data": [0.731059]}],
            "parameters": {"served_by": "canary"},
        })
    );

    // Versioned path, id from x-request-id when the body has none.
    let req = Request::post("/v2/models/other/versions/7/infer")
        .header("x-request-id", "rid-1")
        .body(Body::from(oip_body(&[1.0])))
        .unwrap();
    let (status, _, bytes) = send(&app, req).await;
    assert_eq!(status, StatusCode::OK);
    let v = parse(&bytes);
    assert_eq!(v["model_name"], "other");
    assert_eq!(v["model_version"], "canary");
    assert_eq!(v["id"], "rid-1");

    // Neither: empty id.
    let (_, _, bytes) = send(&app, post(INFER, oip_body(&[1.0]))).await;
    assert_eq!(parse(&bytes)["id"], "");
}

#[tokio::test]
async fn reference_prediction_is_equal_across_versions() {
    let apps = [router("stable"), router("canary"), router("shadow")];
    for i in 0..50 {
        let data = [i as f64 * 0.37 - 9.0, 1.5, -(i as f64) / 7.0, 2.25];
        let expected = reference(data.iter().sum());
        let mut seen = Vec::new();
        for app in &apps {
            let (status, _, bytes) = send(app, post(INFER, oip_body(&data))).await;
            assert_eq!(status, StatusCode::OK);
            seen.push(prediction(&parse(&bytes)));
        }
        assert!(
            seen.iter().all(|p| *p == expected),
            "{data:?}: {seen:?} vs {expected}"
        );
    }
}

#[tokio::test]
async fn error_rate_one_answers_500() {
    let app = app(state_with(
        "canary",
        Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
    ));
    for _ in 0..5 {
        let (status, headers, bytes) = send(&app, post(INFER, oip_body(&[1.0]))).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(headers[SERVED_BY_HEADER], "canary");
        assert!(parse(&bytes)["error"].is_string());
    }
    let (_, _, bytes) = send(&app, get("/admin/stats")).await;
    let stats = parse(&bytes);
    assert_eq!(stats["requests"], 5);
    assert_eq!(stats["errors"], 5);
    assert_eq!(stats["by_model"], json!({"fraud": 5}));
}

#[tokio::test]
async fn score_shift_moves_every_score_on_the_logit_scale() {
    let app = app(state_with("canary", Faults::default()));
    // data [0] -> S = 0 -> 0.5; shifted by +1 -> sigmoid(1) = 0.731059
    let (_, _, bytes) = send(&app, post(INFER, oip_body(&[0.0]))).await;
    assert_eq!(parse(&bytes)["outputs"][0]["data"][0], 0.5);
    let (status, faults) = post_faults(&app, json!({"score_shift": 1})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(faults["score_shift"], 1.0);
    let (_, _, bytes) = send(&app, post(INFER, oip_body(&[0.0]))).await;
    assert_eq!(parse(&bytes)["outputs"][0]["data"][0], 0.731059);
}

#[tokio::test]
async fn nan_and_null_outputs() {
    let app = app(state_with(
        "canary",
        Faults {
            nan_rate: 1.0,
            ..Faults::default()
        },
    ));
    let (status, _, bytes) = send(&app, post(INFER, oip_body(&[1.0]))).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.contains(r#""data":[NaN]"#), "{text}");
    // The rest of the document is JSON once the bare NaN token is replaced.
    let v = parse(text.replace("NaN", "null").as_bytes());
    assert_eq!(v["model_version"], "canary");

    let (_, _, bytes) = send(&app, get("/admin/stats")).await;
    assert_eq!(parse(&bytes)["nan"], 1);
    assert_eq!(requests_log(&app, 1).await[0]["prediction"], "NaN");

    let (status, faults) = post_faults(&app, json!({"nan_rate": 0, "null_rate": 1})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(faults["null_rate"], 1.0);
    let (status, _, bytes) = send(&app, post(INFER, oip_body(&[1.0]))).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.contains(r#""data":[null]"#), "{text}");
    let (_, _, bytes) = send(&app, get("/admin/stats")).await;
    assert_eq!(parse(&bytes)["null"], 1);
    assert_eq!(requests_log(&app, 1).await[0]["prediction"], Value::Null);
}

#[tokio::test]
async fn disagree_rate_fraction_and_documented_rule() {
    const RATE: f64 = 0.25;
    const N: usize = 2_000;
    let shadow = app(state_with(
        "shadow",
        Faults {
            disagree_rate: RATE,
            ..Faults::default()
        },
    ));
    let stable = router("stable");
    let mut disagreed = 0;
    for seq in 0..N as u64 {
        let body = rollout_demo::traffic::request_body(seq);
        let (_, _, a) = send(&stable, post(INFER, body.clone())).await;
        let (_, _, b) = send(&shadow, post(INFER, body.clone())).await;
        let (pa, pb) = (prediction(&parse(&a)), prediction(&parse(&b)));
        let expected = documented_disagrees(body.as_bytes(), RATE);
        if expected {
            disagreed += 1;
            let shifted = if pa >= 0.5 { pa - 0.5 } else { pa + 0.5 };
            assert!((pb - shifted).abs() < 1e-9, "{body}: {pa} vs {pb}");
        } else {
            assert_eq!(pa, pb, "{body}");
        }
        let entry = &requests_log(&shadow, 1).await[0];
        assert_eq!(entry["disagreed"], expected);
    }
    let fraction = disagreed as f64 / N as f64;
    eprintln!("disagreement fraction {fraction} (rate {RATE})");
    assert!((fraction - RATE).abs() <= 0.02, "fraction {fraction}");
    let (_, _, bytes) = send(&shadow, get("/admin/stats")).await;
    assert_eq!(parse(&bytes)["disagreed"], disagreed);
}

#[tokio::test]
async fn faults_api_validates_and_applies() {
    let app = router("canary");
    let (status, _, bytes) = send(&app, get("/admin/faults")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        parse(&bytes),
        json!({"latency_ms": 0, "latency_jitter_ms": 0, "error_rate": 0.0, "nan_rate": 0.0,
               "null_rate": 0.0, "disagree_rate": 0.0, "bias": 0.0, "score_shift": 0.0,
               "hang": false, "status": null})
    );

    for (patch, field) in [
        (json!({"error_rate": 1.5}), "error_rate"),
        (json!({"nan_rate": -0.5}), "nan_rate"),
        (json!({"null_rate": "half"}), "null_rate"),
        (json!({"disagree_rate": 2}), "disagree_rate"),
        (json!({"latency_ms": -3}), "latency_ms"),
        (json!({"latency_jitter_ms": "x"}), "latency_jitter_ms"),
        (json!({"bias": true}), "bias"),
        (json!({"score_shift": 25}), "score_shift"),
        (json!({"hang": "yes"}), "hang"),
        (json!({"status": 99}), "status"),
        (json!({"error_rate": 0.1, "colour": "red"}), "colour"),
    ] {
        let (status, v) = post_faults(&app, patch.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{patch}");
        assert_eq!(v["field"], field, "{patch}");
        assert!(v["error"].is_string());
    }
    // Nothing was applied by the rejected patches.
    let (_, _, bytes) = send(&app, get("/admin/faults")).await;
    assert_eq!(parse(&bytes)["error_rate"], 0.0);

    let (status, _, bytes) = send(&app, post("/admin/faults", "{not json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(parse(&bytes)["error"].is_string());

    let (status, v) = post_faults(&app, json!({"status": 503, "bias": 0.125})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["status"], 503);
    assert_eq!(v["bias"], 0.125);
    let (status, _, bytes) = send(&app, post(INFER, oip_body(&[1.0]))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(parse(&bytes)["error"].is_string());

    let (status, _) = post_faults(&app, json!({"status": null})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, bytes) = send(&app, post(INFER, "")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(prediction(&parse(&bytes)), 0.625);
}

#[tokio::test]
async fn latency_fault_delays_answer() {
    let app = app(state_with(
        "canary",
        Faults {
            latency_ms: 150,
            ..Faults::default()
        },
    ));
    let started = Instant::now();
    let (status, _, _) = send(&app, post(INFER, oip_body(&[1.0]))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn hang_holds_until_shutdown() {
    let state = state_with(
        "canary",
        Faults {
            hang: true,
            ..Faults::default()
        },
    );
    let app = app(state.clone());
    let call = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post(INFER, oip_body(&[1.0]))).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!call.is_finished(), "a hung call was answered");
    let log = requests_log(&app, 10).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["status"], 0);
    state.begin_shutdown();
    let (status, _, _) = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn request_log_content_and_limit() {
    let mut cfg = ModelConfig::new("stable");
    cfg.log_capacity = 5;
    let app = app(AppState::new(cfg).unwrap());
    for i in 1..=8 {
        let body = oip_body(&[i as f64]);
        let req = Request::post(format!("/v2/models/m{}/infer", i % 2))
            .header("X-Request-Id", format!("rid-{i}"))
            .header("X-User-Id", "user-3")
            .body(Body::from(body))
            .unwrap();
        let (status, _, _) = send(&app, req).await;
        assert_eq!(status, StatusCode::OK);
    }
    let log = requests_log(&app, 100).await;
    assert_eq!(log.len(), 5);
    let seqs: Vec<u64> = log.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![4, 5, 6, 7, 8]);
    let last = &log[4];
    let body = oip_body(&[8.0]);
    assert_eq!(last["path"], "/v2/models/m0/infer");
    assert_eq!(last["method"], "POST");
    assert_eq!(last["headers"]["x-request-id"], "rid-8");
    assert_eq!(last["headers"]["x-user-id"], "user-3");
    assert_eq!(last["id"], "rid-8");
    assert_eq!(last["body_len"], body.len());
    assert_eq!(
        last["body_sha256"],
        format!("{:x}", Sha256::digest(body.as_bytes()))
    );
    assert_eq!(last["prediction"], reference(8.0));
    assert_eq!(last["disagreed"], false);
    assert_eq!(last["status"], 200);

    let two = requests_log(&app, 2).await;
    assert_eq!(two.len(), 2);
    assert_eq!(two[1]["seq"], 8);

    let (status, _, bytes) = send(&app, get("/admin/requests?limit=lots")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(parse(&bytes)["field"], "limit");

    let (_, _, bytes) = send(&app, get("/admin/stats")).await;
    let stats = parse(&bytes);
    assert_eq!(stats["requests"], 8);
    assert_eq!(stats["by_model"], json!({"m0": 4, "m1": 4}));
    assert_eq!(stats["version"], "stable");

    let (status, _, _) = send(&app, post("/admin/reset", "")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(requests_log(&app, 100).await.is_empty());
    let (_, _, bytes) = send(&app, get("/admin/stats")).await;
    assert_eq!(parse(&bytes)["requests"], 0);
    send(&app, post(INFER, "")).await;
    assert_eq!(requests_log(&app, 1).await[0]["seq"], 1);
}

#[tokio::test]
async fn request_log_default_bound() {
    assert_eq!(REQUEST_LOG_CAPACITY, 20_000);
    let state = AppState::new(ModelConfig::new("stable")).unwrap();
    let app = app(state.clone());
    for _ in 0..REQUEST_LOG_CAPACITY + 5 {
        let (status, _, _) = send(&app, post(INFER, "")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let entries = state.log_entries();
    assert_eq!(entries.len(), REQUEST_LOG_CAPACITY);
    assert_eq!(entries[0].seq, 6);
    let all = requests_log(&app, 1_000_000).await;
    assert_eq!(all.len(), REQUEST_LOG_CAPACITY);
}

#[tokio::test]
async fn empty_and_invalid_bodies() {
    let app = router("shadow");
    let (status, _, bytes) = send(&app, post(INFER, Body::empty())).await;
    assert_eq!(status, StatusCode::OK);
    let v = parse(&bytes);
    assert_eq!(prediction(&v), 0.5);
    assert_eq!(v["model_version"], "shadow");

    let (status, headers, bytes) = send(&app, post(INFER, "{\"inputs\": [")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(headers[SERVED_BY_HEADER], "shadow");
    assert!(parse(&bytes)["error"].is_string());

    let (status, _, bytes) = send(&app, post(INFER, "[1,2,3]")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(parse(&bytes)["error"].is_string());

    let log = requests_log(&app, 10).await;
    let statuses: Vec<u64> = log.iter().map(|e| e["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, vec![200, 400, 400]);
    assert_eq!(log[0]["body_len"], 0);
}

#[tokio::test]
async fn large_bodies_accepted() {
    let app = router("stable");
    for target in [1usize << 20, (5usize << 20) / 2] {
        let n = target / 8;
        let data = vec![0.123456f64; n];
        let body = oip_body(&data);
        assert!(body.len() >= target, "{} < {target}", body.len());
        let (status, _, bytes) = send(&app, post(INFER, body.clone())).await;
        assert_eq!(status, StatusCode::OK, "{} bytes", body.len());
        assert_eq!(prediction(&parse(&bytes)), reference(data.iter().sum()));
    }
}

#[tokio::test]
async fn echo_headers() {
    let mut cfg = ModelConfig::new("canary");
    cfg.echo_headers = true;
    let app = app(AppState::new(cfg).unwrap());
    let req = Request::post(INFER)
        .header("X-Model-Variant", "canary")
        .header("x-user-id", "user-9")
        .body(Body::from(oip_body(&[1.0])))
        .unwrap();
    let (_, _, bytes) = send(&app, req).await;
    let v = parse(&bytes);
    assert_eq!(v["parameters"]["served_by"], "canary");
    assert_eq!(v["parameters"]["headers"]["x-model-variant"], "canary");
    assert_eq!(v["parameters"]["headers"]["x-user-id"], "user-9");

    // Without the flag there is no headers map.
    let (_, _, bytes) = send(&router("canary"), post(INFER, "")).await;
    assert!(parse(&bytes)["parameters"].get("headers").is_none());
}

#[tokio::test]
async fn health_and_metadata() {
    let app = router("stable");
    let (status, headers, bytes) = send(&app, get("/v2/health/ready")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[SERVED_BY_HEADER], "stable");
    assert_eq!(parse(&bytes), json!({"ready": true}));
    let (_, _, bytes) = send(&app, get("/v2/health/live")).await;
    assert_eq!(parse(&bytes), json!({"live": true}));
    let (status, _, bytes) = send(&app, get("/v2")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(parse(&bytes)["name"], "rollout-demo");
    let (_, _, bytes) = send(&app, get("/v2/models/fraud")).await;
    let v = parse(&bytes);
    assert_eq!(v["name"], "fraud");
    assert_eq!(v["versions"], json!(["stable"]));
    assert_eq!(v["platform"], "model-rollout-demo");
    let (status, _, bytes) = send(&app, get("/v2/models/fraud/ready")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(parse(&bytes)["ready"], true);
    let (status, _, bytes) = send(&app, get("/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(parse(&bytes)["error"].is_string());
}

#[test]
fn bad_version_label_rejected() {
    assert!(AppState::new(ModelConfig::new("")).is_err());
    assert!(AppState::new(ModelConfig::new("bad\nlabel")).is_err());
    let mut cfg = ModelConfig::new("v");
    cfg.faults.error_rate = 3.0;
    assert!(AppState::new(cfg).is_err());
}
