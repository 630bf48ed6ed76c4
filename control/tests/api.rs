//! Every endpoint through `app(state).oneshot(request)`, plus one test against a real
//! listener on 127.0.0.1:0.
// Test helpers: failing loudly is their job (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::http::{HeaderMap, Request, StatusCode};
use rollout_control::http::roles::{Credentials, Role};
use rollout_control::testutil::TempDir;
use rollout_control::util::token::TokenFile;
use rollout_control::{app, AppState, Store};
use serde_json::{json, Value};
use tower::ServiceExt;

const PLAN: &str = r#"{"version":1,"rollouts":[
  {"name":"fraud","match":{"path_prefix":"/v2/models/fraud/"},"salt":"fraud-v2",
   "variants":[{"name":"stable","weight":90},{"name":"canary","weight":10}],
   "targeting":[{"variant":"stable","when":[{"header":"x-region","equals":"eu"}]}]},
  {"name":"abn","salt":"abn-1",
   "variants":[{"name":"a","weight":50},{"name":"b","weight":30},{"name":"c","weight":20}]}]}"#;

struct Fixture {
    state: AppState,
    _dir: TempDir,
}

fn fixture(token: Option<&str>) -> Fixture {
    let dir = TempDir::new("api");
    let store = Arc::new(Store::open(dir.path()).unwrap());
    Fixture {
        state: AppState::new(store, token.map(str::to_string)),
        _dir: dir,
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The error body's field, checking the error shape.
    fn field(&self) -> String {
        let j = self.json();
        assert!(j["error"].is_string(), "{j}");
        j["field"].as_str().unwrap().to_string()
    }
}

impl Fixture {
    async fn send(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        self.send_bytes(method, uri, headers, body.as_bytes().to_vec())
            .await
    }

    async fn send_bytes(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = app(self.state.clone())
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, uri: &str) -> Reply {
        self.send("GET", uri, &[], "").await
    }

    async fn put_plan(&self, plan: &str) -> Reply {
        self.send("PUT", "/v1/plan", &[], plan).await
    }

    async fn seeded(token: Option<&str>) -> Fixture {
        let f = fixture(token);
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let r = f.send("PUT", "/v1/plan", &headers, PLAN).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
        f
    }

    async fn plan(&self) -> Value {
        let r = self.get("/v1/plan").await;
        assert_eq!(r.status, StatusCode::OK);
        r.json()
    }
}

fn weights(plan: &Value, rollout: &str) -> Vec<(String, f64)> {
    plan["rollouts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == rollout)
        .unwrap()["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["weight"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn w(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
    pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect()
}

#[tokio::test]
async fn no_plan_yet() {
    let f = fixture(None);
    let r = f.get("/v1/plan").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        r.json(),
        json!({"error": "no plan has been stored yet", "field": ""})
    );
    let s = f.get("/v1/status").await.json();
    assert_eq!(s["version"], Value::Null);
    assert_eq!(s["rollouts"], json!([]));
    assert_eq!(f.get("/v1/history").await.json(), json!([]));
    let r = f.send("POST", "/v1/rollouts/fraud/promote", &[], "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(f.get("/ready").await.status, StatusCode::OK);
}

#[tokio::test]
async fn put_then_get_with_etag_and_304() {
    let f = fixture(None);
    let r = f.put_plan(PLAN).await;
    assert_eq!(r.status, StatusCode::OK);
    let put = r.json();
    assert_eq!(put["version"], 1);
    assert_eq!(put["plan"]["version"], 1);

    let r = f.get("/v1/plan").await;
    assert_eq!(r.status, StatusCode::OK);
    // The ETag and the body carry the store's epoch (GET /v1/plan only).
    let epoch = f.state.store().epoch().to_string();
    let tag1 = format!("\"v1.{epoch}\"");
    assert_eq!(r.header("etag"), Some(tag1.as_str()));
    assert_eq!(r.header("x-plan-version"), Some("1"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    // The body is exactly a plan the filter accepts.
    let (spec, _) = rollout_core::parse_plan(&r.body).unwrap();
    assert_eq!(spec.version, 1);
    assert_eq!(spec.epoch.as_deref(), Some(epoch.as_str()));
    let mut served = r.json();
    served.as_object_mut().unwrap().remove("epoch");
    assert_eq!(served, put["plan"]);

    let r = f
        .send("GET", "/v1/plan", &[("if-none-match", tag1.as_str())], "")
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(tag1.as_str()));
    // The same version under another epoch (another store, a restored backup) is
    // another entity.
    let r = f
        .send(
            "GET",
            "/v1/plan",
            &[("if-none-match", "\"v1.0000000000000000\"")],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = f
        .send("GET", "/v1/plan", &[("if-none-match", "\"v0\"")], "")
        .await;
    assert_eq!(r.status, StatusCode::OK);

    // The body's version is the store's, whatever the document says (or if it says nothing).
    let no_version = PLAN.replacen(r#""version":1,"#, "", 1);
    let r = f.put_plan(&no_version).await;
    assert_eq!(r.json()["version"], 2);
    let r = f
        .put_plan(&PLAN.replacen(r#""version":1"#, r#""version":99"#, 1))
        .await;
    assert_eq!(r.json()["version"], 3);
    let r = f
        .send("GET", "/v1/plan", &[("if-none-match", tag1.as_str())], "")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("etag"), Some(format!("\"v3.{epoch}\"").as_str()));
}

#[tokio::test]
async fn invalid_plan_is_400_naming_the_field_and_changes_nothing() {
    let f = Fixture::seeded(None).await;
    let before = f.get("/v1/plan").await.body;
    let cases = [
        (
            PLAN.replace(r#""weight":10"#, r#""weight":20"#),
            "rollouts[0].variants",
        ),
        (
            PLAN.replace(
                r#"{"name":"stable","weight":90}"#,
                r#"{"name":"stable","weigth":90}"#,
            ),
            "rollouts[0].variants[0].weigth",
        ),
        (
            PLAN.replace(r#""salt":"fraud-v2""#, r#""salt":"""#),
            "rollouts[0].salt",
        ),
        (
            PLAN.replace(r#""variant":"stable""#, r#""variant":"nope""#),
            "rollouts[0].targeting[0].variant",
        ),
        ("[]".to_string(), ""),
        ("{not json".to_string(), ""),
    ];
    for (body, field) in cases {
        let r = f.put_plan(&body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.field(), field, "{body} -> {}", r.json());
    }
    let r = f.get("/v1/plan").await;
    assert_eq!(r.body, before);
    assert_eq!(r.header("x-plan-version"), Some("1"));
    assert_eq!(
        f.get("/v1/history").await.json().as_array().unwrap().len(),
        1
    );
}

#[tokio::test]
async fn token_guards_writes_reads_stay_open() {
    let f = Fixture::seeded(Some("s3cret")).await;
    for (method, uri, body) in [
        ("PUT", "/v1/plan", PLAN),
        ("POST", "/v1/rollouts/fraud/rollback", ""),
        (
            "POST",
            "/v1/rollouts/fraud/weights",
            r#"{"variant":"canary","weight":5}"#,
        ),
        ("POST", "/v1/plan/versions/1/restore", ""),
    ] {
        let r = f.send(method, uri, &[], body).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        r.field();
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Basic s3cret",
            "s3cret",
            "Bearer ",
        ] {
            let r = f.send(method, uri, &[("authorization", wrong)], body).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {uri} {wrong}");
        }
    }
    // nothing changed
    assert_eq!(f.get("/v1/plan").await.header("x-plan-version"), Some("1"));
    // reads work without a token
    for uri in [
        "/v1/plan",
        "/v1/status",
        "/v1/history",
        "/v1/plan/versions/1",
        "/live",
        "/ready",
    ] {
        assert_eq!(f.get(uri).await.status, StatusCode::OK, "{uri}");
    }
    let r = f
        .send(
            "POST",
            "/v1/rollouts/fraud/weights",
            &[("authorization", "Bearer s3cret")],
            r#"{"variant":"canary","weight":5}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["version"], 2);
}

#[tokio::test]
async fn if_match_gives_412_on_mismatch() {
    let f = Fixture::seeded(None).await;
    let r = f
        .send("PUT", "/v1/plan", &[("if-match", "\"v1\"")], PLAN)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["version"], 2);
    let r = f
        .send("PUT", "/v1/plan", &[("if-match", "\"v1\"")], PLAN)
        .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert!(
        r.json()["error"].as_str().unwrap().contains("2"),
        "{}",
        r.json()
    );
    let r = f
        .send(
            "POST",
            "/v1/rollouts/fraud/promote",
            &[("if-match", "\"v7\"")],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(f.get("/v1/plan").await.header("x-plan-version"), Some("2"));
    let r = f.send("PUT", "/v1/plan", &[("if-match", "*")], PLAN).await;
    assert_eq!(r.status, StatusCode::OK);
    let empty = fixture(None);
    let r = empty
        .send("PUT", "/v1/plan", &[("if-match", "*")], PLAN)
        .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
}

#[tokio::test]
async fn weights_operations() {
    let f = Fixture::seeded(None).await;
    let r = f
        .send(
            "POST",
            "/v1/rollouts/fraud/weights",
            &[],
            r#"{"weights":{"canary":25,"stable":75}}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json());
    assert_eq!(r.json()["version"], 2);
    assert_eq!(r.header("x-plan-version"), Some("2"));
    assert_eq!(
        weights(&r.json()["plan"], "fraud"),
        w(&[("stable", 75.0), ("canary", 25.0)])
    );
    let r = f
        .send(
            "POST",
            "/v1/rollouts/fraud/weights",
            &[],
            r#"{"variant":"canary","weight":12.34}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let plan = f.plan().await;
    assert_eq!(
        weights(&plan, "fraud"),
        w(&[("stable", 87.66), ("canary", 12.34)])
    );
    // targeting and the other rollout untouched
    assert_eq!(plan["rollouts"][0]["targeting"][0]["variant"], "stable");
    assert_eq!(
        weights(&plan, "abn"),
        w(&[("a", 50.0), ("b", 30.0), ("c", 20.0)])
    );

    let bad = [
        (r#"{"weights":{"stable":75,"canary":20}}"#, "weights"),
        (r#"{"weights":{"stable":100}}"#, "weights"),
        (r#"{"weights":{"stable":50,"blue":50}}"#, "variant"),
        (r#"{"variant":"blue","weight":5}"#, "variant"),
        (r#"{"variant":"stable","weight":5}"#, "variant"),
        (r#"{"variant":"canary","weight":150}"#, "weight"),
        (r#"{"variant":"canary","weight":1.234}"#, "weight"),
        (r#"{"variant":"canary","weight":"x"}"#, "weight"),
        (r#"{"variant":"canary"}"#, "weight"),
        (r#"{"weight":5}"#, "variant"),
        (r#"{"variant":"canary","weight":5,"weights":{}}"#, ""),
        (r#"{"varient":"canary","weight":5}"#, "varient"),
        ("", ""),
        ("[1]", ""),
    ];
    for (body, field) in bad {
        let r = f
            .send("POST", "/v1/rollouts/fraud/weights", &[], body)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.json());
        assert_eq!(r.field(), field, "{body}: {}", r.json());
    }
    assert_eq!(f.get("/v1/plan").await.header("x-plan-version"), Some("3"));
}

#[tokio::test]
async fn switch_promote_rollback_pause_resume() {
    let f = Fixture::seeded(None).await;
    let ok = |r: &Reply| {
        assert_eq!(r.status, StatusCode::OK, "{}", r.json());
        r.json()["plan"].clone()
    };
    let p = ok(&f
        .send("POST", "/v1/rollouts/abn/switch", &[], r#"{"variant":"b"}"#)
        .await);
    assert_eq!(
        weights(&p, "abn"),
        w(&[("a", 0.0), ("b", 100.0), ("c", 0.0)])
    );
    let r = f
        .send("POST", "/v1/rollouts/abn/switch", &[], r#"{"variant":"z"}"#)
        .await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::BAD_REQUEST, "variant".into())
    );
    let r = f.send("POST", "/v1/rollouts/abn/switch", &[], "{}").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let p = ok(&f.send("POST", "/v1/rollouts/fraud/promote", &[], "").await);
    assert_eq!(
        weights(&p, "fraud"),
        w(&[("canary", 100.0), ("stable", 0.0)])
    );
    // the filter still accepts it
    rollout_core::parse_plan(f.get("/v1/plan").await.body.as_slice()).unwrap();

    let p = ok(&f
        .send(
            "POST",
            "/v1/rollouts/fraud/weights",
            &[],
            r#"{"variant":"stable","weight":30}"#,
        )
        .await);
    assert_eq!(
        weights(&p, "fraud"),
        w(&[("canary", 70.0), ("stable", 30.0)])
    );
    let p = ok(&f
        .send("POST", "/v1/rollouts/fraud/rollback", &[], "{}")
        .await);
    assert_eq!(
        weights(&p, "fraud"),
        w(&[("canary", 100.0), ("stable", 0.0)])
    );

    let p = ok(&f.send("POST", "/v1/rollouts/fraud/pause", &[], "").await);
    assert_eq!(p["rollouts"][0]["paused"], true);
    let s = f.get("/v1/status").await.json();
    assert_eq!(s["rollouts"][0]["paused"], true);
    assert_eq!(s["rollouts"][1]["paused"], false);
    let p = ok(&f.send("POST", "/v1/rollouts/fraud/resume", &[], "").await);
    assert_eq!(p["rollouts"][0].get("paused"), None);

    let ops: Vec<String> = f
        .get("/v1/history")
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["op"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ops,
        [
            "resume",
            "pause",
            "rollback",
            "set-weights",
            "promote",
            "switch",
            "put"
        ]
    );
}

#[tokio::test]
async fn unknown_rollout_is_404_for_every_operation() {
    let f = Fixture::seeded(None).await;
    for (op, body) in [
        ("weights", r#"{"variant":"canary","weight":5}"#),
        ("weights", r#"{"weights":{"stable":100}}"#),
        ("switch", r#"{"variant":"stable"}"#),
        ("promote", ""),
        ("rollback", ""),
        ("pause", ""),
        ("resume", ""),
    ] {
        let r = f
            .send("POST", &format!("/v1/rollouts/ghost/{op}"), &[], body)
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{op}");
        assert_eq!(r.field(), "rollout", "{op}");
        assert!(r.json()["error"].as_str().unwrap().contains("ghost"));
    }
    assert_eq!(f.get("/v1/plan").await.header("x-plan-version"), Some("1"));
}

#[tokio::test]
async fn history_lists_every_change_with_reasons() {
    let f = Fixture::seeded(None).await;
    f.send(
        "POST",
        "/v1/rollouts/fraud/weights?reason=ramp%20to%2025%25",
        &[("x-rollout-author", "alice")],
        r#"{"variant":"canary","weight":25}"#,
    )
    .await;
    f.send(
        "POST",
        "/v1/rollouts/fraud/rollback",
        &[("x-rollout-reason", "p99 breach")],
        "",
    )
    .await;
    // the query wins over the header
    f.send(
        "POST",
        "/v1/rollouts/fraud/pause?reason=from-query",
        &[("x-rollout-reason", "from-header")],
        "",
    )
    .await;
    f.send("POST", "/v1/rollouts/abn/switch", &[], r#"{"variant":"c"}"#)
        .await;
    let h = f.get("/v1/history").await.json();
    let h = h.as_array().unwrap();
    assert_eq!(h.len(), 5);
    let row = |i: usize| {
        (
            h[i]["version"].as_u64().unwrap(),
            h[i]["op"].as_str().unwrap(),
            h[i]["reason"].as_str().unwrap(),
            h[i]["author"].as_str().unwrap(),
        )
    };
    assert_eq!(row(0), (5, "switch", "switch abn to c", "api"));
    assert_eq!(row(1), (4, "pause", "from-query", "api"));
    assert_eq!(row(2), (3, "rollback", "p99 breach", "api"));
    assert_eq!(row(3), (2, "set-weights", "ramp to 25%", "alice"));
    assert_eq!(row(4), (1, "put", "replace the plan", "api"));
    assert_eq!(h[3]["weights"]["fraud"]["canary"], 25.0);
    assert_eq!(h[3]["weights"]["fraud"]["stable"], 75.0);
    // the raw text lists rollouts and variants in plan order
    let raw = String::from_utf8(f.get("/v1/history?limit=2").await.body).unwrap();
    assert!(
        raw.contains(
            r#""weights":{"fraud":{"stable":100.0,"canary":0.0},"abn":{"a":0.0,"b":0.0,"c":100.0}}"#
        ),
        "{raw}"
    );
    for e in h {
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
        assert!(e["unix_ms"].as_u64().unwrap() > 1_700_000_000_000);
    }
    assert_eq!(
        f.get("/v1/history?limit=2")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    for bad in ["0", "x", "10001", "-1"] {
        let r = f.get(&format!("/v1/history?limit={bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.field(), "limit");
    }
    let r = f
        .send(
            "POST",
            &format!("/v1/rollouts/fraud/resume?reason={}", "x".repeat(2000)),
            &[],
            "",
        )
        .await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::BAD_REQUEST, "reason".into())
    );
}

#[tokio::test]
async fn restore_brings_back_an_earlier_version_exactly() {
    let f = Fixture::seeded(None).await;
    let v1 = f.get("/v1/plan/versions/1").await.json();
    f.send("POST", "/v1/rollouts/fraud/promote", &[], "").await;
    f.send("POST", "/v1/rollouts/abn/pause", &[], "").await;
    let v3 = f.plan().await;
    assert_ne!(v3["rollouts"], v1["rollouts"]);

    let r = f.send("POST", "/v1/plan/versions/1/restore", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["version"], 4);
    let now = f.plan().await;
    assert_eq!(now["version"], 4);
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("version");
        v.as_object_mut().unwrap().remove("epoch");
        v
    };
    assert_eq!(strip(now.clone()), strip(v1.clone()));
    // byte-exact apart from the version
    let v1_text = String::from_utf8(f.get("/v1/plan/versions/1").await.body).unwrap();
    let now_text = String::from_utf8(f.get("/v1/plan").await.body).unwrap();
    let epoch = format!(r#""epoch":"{}","#, f.state.store().epoch());
    assert_eq!(
        now_text
            .replace(r#""version":4"#, r#""version":1"#)
            .replace(&epoch, ""),
        v1_text
    );
    let h = f.get("/v1/history?limit=1").await.json();
    assert_eq!(h[0]["op"], "restore");
    assert_eq!(h[0]["reason"], "restore v1");
    // versions are immutable (stored without the epoch GET /v1/plan adds)
    let mut v3 = v3;
    v3.as_object_mut().unwrap().remove("epoch");
    assert_eq!(f.get("/v1/plan/versions/3").await.json(), v3);
    assert_eq!(f.get("/v1/plan/versions/v3").await.json(), v3);

    let r = f.get("/v1/plan/versions/99").await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::NOT_FOUND, "version".into())
    );
    let r = f.get("/v1/plan/versions/abc").await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::BAD_REQUEST, "version".into())
    );
    let r = f
        .send("POST", "/v1/plan/versions/99/restore", &[], "")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = f
        .send("POST", "/v1/plan/versions/2/restore?reason=undo", &[], "")
        .await;
    assert_eq!(r.json()["version"], 5);
    assert_eq!(
        f.get("/v1/history?limit=1").await.json()[0]["reason"],
        "undo"
    );
}

#[tokio::test]
async fn bodies_over_1_mib_are_413() {
    let f = Fixture::seeded(None).await;
    let mut big = PLAN.trim_end_matches('}').to_string();
    big.push_str(r#","pad":""#);
    big.push_str(&"x".repeat(1024 * 1024));
    big.push_str("\"}");
    for (method, uri) in [
        ("PUT", "/v1/plan"),
        ("POST", "/v1/rollouts/fraud/weights"),
        ("POST", "/v1/rollouts/fraud/promote"),
    ] {
        let r = f.send(method, uri, &[], &big).await;
        assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{uri}");
        r.field();
    }
    assert_eq!(f.get("/v1/plan").await.header("x-plan-version"), Some("1"));
    // just under the limit is read (and then judged on content)
    let mut fits = PLAN.trim_end_matches('}').to_string();
    fits.push_str(r#","pad":""#);
    fits.push_str(&"x".repeat(1024 * 1024 - PLAN.len() - 20));
    fits.push_str("\"}");
    let r = f.put_plan(&fits).await;
    assert_eq!(
        (r.status, r.field()),
        (StatusCode::BAD_REQUEST, "pad".into())
    );
}

#[tokio::test]
async fn proxies_are_tracked_from_poll_headers() {
    let f = Fixture::seeded(None).await;
    f.send(
        "GET",
        "/v1/plan",
        &[
            ("x-model-rollout-proxy", "envoy-a"),
            ("x-model-rollout-plan-version", "1"),
            ("if-none-match", "\"v1\""),
        ],
        "",
    )
    .await;
    f.send(
        "GET",
        "/v1/plan",
        &[("x-model-rollout-proxy", "envoy-b")],
        "",
    )
    .await;
    f.get("/v1/plan").await; // no id: not recorded
    f.send(
        "POST",
        "/v1/rollouts/fraud/weights",
        &[],
        r#"{"variant":"canary","weight":20}"#,
    )
    .await;
    let s = f.get("/v1/status").await.json();
    assert_eq!(s["version"], 2);
    assert!(s["age_seconds"].as_f64().unwrap() < 60.0);
    assert!(s["updated"].as_str().unwrap().ends_with('Z'));
    let proxies = s["proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), 2, "{s}");
    assert_eq!(proxies[0]["id"], "envoy-a");
    assert_eq!(proxies[0]["plan_version"], 1);
    assert_eq!(proxies[0]["behind"], 1);
    assert!(proxies[0]["last_seen_seconds_ago"].as_f64().unwrap() < 60.0);
    assert_eq!(proxies[1]["id"], "envoy-b");
    assert_eq!(proxies[1]["plan_version"], Value::Null);
    assert_eq!(proxies[1]["behind"], Value::Null);
    assert_eq!(
        s["rollouts"][0],
        json!({"name": "fraud", "paused": false,
               "variants": [{"name": "stable", "weight": 80.0}, {"name": "canary", "weight": 20.0}]})
    );
    // the same proxy polls again with the new version
    f.send(
        "GET",
        "/v1/plan",
        &[
            ("x-model-rollout-proxy", "envoy-a"),
            ("x-model-rollout-plan-version", "2"),
        ],
        "",
    )
    .await;
    let s = f.get("/v1/status").await.json();
    assert_eq!(s["proxies"][0]["behind"], 0);
    assert_eq!(f.state.proxies().len(), 2);
}

#[tokio::test]
async fn live_ready_and_unknown_routes() {
    let f = fixture(None);
    let r = f.get("/live").await;
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (StatusCode::OK, json!("live"))
    );
    let r = f.get("/ready").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["versions"], 0);
    let r = f.get("/v2/nothing").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    r.field();
    let r = f.send("DELETE", "/v1/plan", &[], "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    r.field();
    let r = f.send("GET", "/v1/rollouts/fraud/promote", &[], "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn concurrent_writes_get_distinct_consecutive_versions() {
    let f = Fixture::seeded(None).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let state = f.state.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::post("/v1/rollouts/fraud/weights")
                .body(Body::from(format!(
                    r#"{{"variant":"canary","weight":{i}}}"#
                )))
                .unwrap();
            let resp = app(state).oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let body = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
            serde_json::from_slice::<Value>(&body).unwrap()["version"]
                .as_u64()
                .unwrap()
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (2..=21).collect::<Vec<_>>());
    assert_eq!(f.get("/v1/plan").await.header("x-plan-version"), Some("21"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_listener() {
    let dir = TempDir::new("listener");
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let state = AppState::with_credentials(
        store,
        Credentials::from_files(vec![
            (Role::Operator, TokenFile::fixed(vec!["tok".into()])),
            (Role::Proxy, TokenFile::fixed(vec!["ptok".into()])),
        ]),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app(state))
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
    });
    let base = format!("http://{addr}");
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .build()
            .into();
        let r = agent.get(format!("{base}/v1/plan")).call().unwrap();
        assert_eq!(r.status(), 404);
        let r = agent.put(format!("{base}/v1/plan")).send(PLAN).unwrap();
        assert_eq!(r.status(), 401);
        let mut r = agent
            .put(format!("{base}/v1/plan?reason=first"))
            .header("authorization", "Bearer tok")
            .send(PLAN)
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(v["version"], 1);
        let mut r = agent
            .get(format!("{base}/v1/plan"))
            .header("x-model-rollout-proxy", "real")
            .header("authorization", "Bearer ptok")
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        let tag = r.headers()["etag"].to_str().unwrap().to_string();
        assert!(tag.starts_with("\"v1."), "{tag}");
        rollout_core::parse_plan(r.body_mut().read_to_string().unwrap().as_bytes()).unwrap();
        let r = agent
            .get(format!("{base}/v1/plan"))
            .header("if-none-match", tag.as_str())
            .call()
            .unwrap();
        assert_eq!(r.status(), 304);
        let mut r = agent.get(format!("{base}/v1/status")).call().unwrap();
        let s: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(s["proxies"][0]["id"], "real");
    })
    .await
    .unwrap();
    stop_tx.send(()).unwrap();
    server.await.unwrap();
}

/// A history page holds at most `--max-report-bytes` of JSON: with 16 KiB and reasons
/// of 1,000 bytes, a page of `limit=100` ends early with `X-History-Next-Before`, and
/// following that cursor reads every version once, newest first.
#[tokio::test]
async fn history_pages_keep_to_their_bytes() {
    let dir = TempDir::new("api-history-bytes");
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let limits = rollout_control::http::server::HttpLimits {
        max_report_bytes: 16 * 1024,
        ..Default::default()
    };
    let f = Fixture {
        state: AppState::with_limits(store, Credentials::default(), limits),
        _dir: dir,
    };
    assert_eq!(f.put_plan(PLAN).await.status, StatusCode::OK);
    let reason = "r".repeat(1000);
    for w in 1..=40 {
        let uri = format!("/v1/rollouts/fraud/weights?reason={reason}");
        let body = format!(r#"{{"variant":"canary","weight":{w}}}"#);
        assert_eq!(
            f.send("POST", &uri, &[], &body).await.status,
            StatusCode::OK
        );
    }
    let mut seen: Vec<u64> = Vec::new();
    let mut before: Option<u64> = None;
    let mut pages = 0;
    loop {
        let uri = match before {
            Some(b) => format!("/v1/history?limit=100&before={b}"),
            None => "/v1/history?limit=100".to_string(),
        };
        let r = f.get(&uri).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body.len() <= 16 * 1024 + 2, "{} bytes", r.body.len());
        let page: Vec<u64> = r
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["version"].as_u64().unwrap())
            .collect();
        seen.extend(&page);
        pages += 1;
        match r.header("x-history-next-before") {
            Some(next) => {
                assert!(page.len() < 100);
                assert_eq!(next.parse::<u64>().unwrap(), *page.last().unwrap());
                before = Some(*page.last().unwrap());
            }
            None => break,
        }
    }
    assert_eq!(seen, (1..=41).rev().collect::<Vec<u64>>());
    assert!(pages >= 3, "{pages} pages");
}
