//! Least privilege: every endpoint against every role's token, the proxies table only
//! proxies write, token rotation by file.
// Test helpers: failing loudly is their job (clippy.toml only covers #[test] fns).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use rollout_control::http::roles::{CredentialFiles, Credentials, Role};
use rollout_control::testutil::TempDir;
use rollout_control::util::token::TokenFile;
use rollout_control::{app, AppState, Store};
use serde_json::Value;
use tower::ServiceExt;

const PLAN: &str = r#"{"version":1,"rollouts":[
  {"name":"fraud","match":{"path_prefix":"/v2/models/fraud/"},"salt":"fraud-v2",
   "variants":[{"name":"stable","weight":90},{"name":"canary","weight":10}],
   "experiment":{"metric":"conversion","alpha":0.05,"samples_per_variant":20}}]}"#;

const TOKENS: [(Role, &str); 4] = [
    (Role::Operator, "op-token"),
    (Role::Proxy, "proxy-token"),
    (Role::Feedback, "feedback-token"),
    (Role::Read, "read-token"),
];

struct Fixture {
    state: AppState,
    _dir: TempDir,
}

struct Reply {
    status: StatusCode,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }
}

fn token(role: Role) -> &'static str {
    TOKENS.iter().find(|(r, _)| *r == role).unwrap().1
}

impl Fixture {
    async fn new(roles: &[Role]) -> Fixture {
        let dir = TempDir::new("roles");
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let files = TOKENS
            .iter()
            .filter(|(r, _)| roles.contains(r))
            .map(|(r, t)| (*r, TokenFile::fixed(vec![(*t).to_string()])))
            .collect();
        let f = Fixture {
            state: AppState::with_credentials(store, Credentials::from_files(files)),
            _dir: dir,
        };
        let r = f
            .send("PUT", "/v1/plan", Some(token(Role::Operator)), &[], PLAN)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
        f
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        bearer: Option<&str>,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json");
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = app(self.state.clone())
            .oneshot(req.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Reply { status, body }
    }

    async fn status(&self) -> Value {
        self.send("GET", "/v1/status", Some(token(Role::Read)), &[], "")
            .await
            .json()
    }
}

/// (method, uri, body, the role it needs; `None`: open to anyone).
fn endpoints() -> Vec<(&'static str, &'static str, &'static str, Option<Role>)> {
    let op = Some(Role::Operator);
    vec![
        ("GET", "/v1/plan", "", None),
        ("GET", "/live", "", None),
        ("GET", "/ready", "", None),
        ("GET", "/metrics", "", None),
        ("PUT", "/v1/plan", PLAN, op),
        ("POST", "/v1/plan/versions/1/restore", "", op),
        (
            "POST",
            "/v1/rollouts/fraud/weights",
            r#"{"weights":{"stable":80,"canary":20}}"#,
            op,
        ),
        (
            "POST",
            "/v1/rollouts/fraud/switch",
            r#"{"variant":"stable"}"#,
            op,
        ),
        ("POST", "/v1/rollouts/fraud/promote", "{}", op),
        ("POST", "/v1/rollouts/fraud/rollback", "{}", op),
        ("POST", "/v1/rollouts/fraud/pause", "{}", op),
        ("POST", "/v1/rollouts/fraud/resume", "{}", op),
        ("POST", "/v1/rollouts/fraud/restart", "{}", op),
        ("POST", "/v1/experiments/fraud/reset", "", op),
        (
            "POST",
            "/v1/shadow-records",
            r#"{"records":[]}"#,
            Some(Role::Proxy),
        ),
        (
            "POST",
            "/v1/assignments",
            r#"{"assignments":[]}"#,
            Some(Role::Proxy),
        ),
        (
            "POST",
            "/v1/feedback",
            r#"{"outcomes":[{"correlation_id":"c1","reward":1}]}"#,
            Some(Role::Feedback),
        ),
        ("GET", "/v1/status", "", Some(Role::Read)),
        ("GET", "/v1/history", "", Some(Role::Read)),
        ("GET", "/v1/plan/versions/1", "", Some(Role::Read)),
        ("GET", "/v1/experiments/fraud", "", Some(Role::Read)),
        (
            "GET",
            "/v1/shadow-report?rollout=fraud",
            "",
            Some(Role::Read),
        ),
        ("GET", "/v1/rollouts/fraud/analysis", "", Some(Role::Read)),
    ]
}

#[tokio::test]
async fn each_role_is_refused_outside_its_scope_with_403_naming_the_role() {
    let f = Fixture::new(&Role::ALL).await;
    for (method, uri, body, needs) in endpoints() {
        let r = f.send(method, uri, None, &[], body).await;
        match needs {
            None => assert!(r.status.is_success(), "{method} {uri}: {}", r.status),
            Some(role) => {
                assert_eq!(
                    r.status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {uri} anonymous"
                );
                assert!(r.error().contains(role.name()), "{}", r.error());
                let r = f.send(method, uri, Some("forged"), &[], body).await;
                assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {uri} forged");
            }
        }
        for (role, t) in TOKENS {
            let r = f.send(method, uri, Some(t), &[], body).await;
            let allowed = match needs {
                None => true,
                Some(Role::Read) => matches!(role, Role::Read | Role::Operator),
                Some(n) => n == role,
            };
            if allowed {
                assert!(
                    r.status != StatusCode::UNAUTHORIZED && r.status != StatusCode::FORBIDDEN,
                    "{method} {uri} with {}: {} {}",
                    role.name(),
                    r.status,
                    r.error()
                );
            } else {
                let n = needs.unwrap();
                assert_eq!(
                    r.status,
                    StatusCode::FORBIDDEN,
                    "{method} {uri} with {}",
                    role.name()
                );
                assert!(
                    r.error().contains(&format!("needs the {} role", n.name()))
                        && r.error().contains(&format!("has the {} role", role.name())),
                    "{}",
                    r.error()
                );
            }
        }
    }
}

#[tokio::test]
async fn the_feedback_credential_cannot_change_the_plan() {
    let f = Fixture::new(&Role::ALL).await;
    let fb = Some(token(Role::Feedback));
    for (method, uri, body) in [
        ("PUT", "/v1/plan", PLAN),
        ("POST", "/v1/rollouts/fraud/promote", "{}"),
        (
            "POST",
            "/v1/rollouts/fraud/weights",
            r#"{"weights":{"stable":0,"canary":100}}"#,
        ),
        ("POST", "/v1/experiments/fraud/reset", ""),
        ("POST", "/v1/assignments", r#"{"assignments":[]}"#),
    ] {
        assert_eq!(
            f.send(method, uri, fb, &[], body).await.status,
            StatusCode::FORBIDDEN
        );
    }
    let s = f.status().await;
    assert_eq!(s["version"], 1, "{s}");
}

#[tokio::test]
async fn reads_stay_open_without_a_read_credential_and_missing_roles_are_closed() {
    let f = Fixture::new(&[Role::Operator]).await;
    assert_eq!(
        f.send("GET", "/v1/status", None, &[], "").await.status,
        StatusCode::OK
    );
    // no proxy credential configured: records are refused, naming the flag
    let r = f
        .send(
            "POST",
            "/v1/assignments",
            Some(token(Role::Operator)),
            &[],
            r#"{"assignments":[]}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.error().contains("--proxy-token-file"), "{}", r.error());
}

#[tokio::test]
async fn anonymous_pollers_change_nothing_in_the_proxies_table() {
    let f = Fixture::new(&Role::ALL).await;
    let proxy = Some(token(Role::Proxy));
    // a real proxy that lags (version 0 < 1): the gate must wait for it
    let lag = [
        ("x-model-rollout-proxy", "gw-real"),
        ("x-model-rollout-plan-version", "0"),
    ];
    assert_eq!(
        f.send("GET", "/v1/plan", proxy, &lag, "").await.status,
        StatusCode::OK
    );
    let before = f.status().await["proxies"].clone();
    assert_eq!(before.as_array().unwrap().len(), 1, "{before}");
    assert_eq!(before[0]["behind"], 1);
    let snapshot = f.state.proxies().snapshot();
    // 1,000 anonymous (or wrongly authenticated) pollers: at version 0 (to block a
    // step), at the latest (to evict the real one), one claiming the real one's id
    for i in 0..1000 {
        let id = format!("fake-{i}");
        let version = if i % 2 == 0 { "0" } else { "1" };
        let bearer = match i % 4 {
            0 => None,
            1 => Some("forged"),
            2 => Some(token(Role::Feedback)),
            _ => Some(token(Role::Operator)),
        };
        let h = [
            ("x-model-rollout-proxy", id.as_str()),
            ("x-model-rollout-plan-version", version),
        ];
        let r = f.send("GET", "/v1/plan", bearer, &h, "").await;
        assert_eq!(r.status, StatusCode::OK, "the poll is served");
    }
    let spoof = [
        ("x-model-rollout-proxy", "gw-real"),
        ("x-model-rollout-plan-version", "1"),
    ];
    f.send("GET", "/v1/plan", None, &spoof, "").await;
    assert_eq!(
        f.state.proxies().snapshot(),
        snapshot,
        "the gate's input changed"
    );
    let after = f.status().await["proxies"].clone();
    let ids = |v: &Value| -> Vec<(Value, Value)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| (p["id"].clone(), p["behind"].clone()))
            .collect()
    };
    assert_eq!(ids(&after), ids(&before), "{after}");
}

#[tokio::test]
async fn rotation_by_file_old_and_new_token_then_only_the_new() {
    let dir = TempDir::new("rotate");
    let file = dir.path().join("feedback-token");
    std::fs::write(&file, "old-fb\n").unwrap();
    let op = dir.path().join("operator-token");
    std::fs::write(&op, "op\n").unwrap();
    let creds = Credentials::open(&CredentialFiles {
        operator: Some(op.clone()),
        feedback: Some(file.clone()),
        ..CredentialFiles::default()
    })
    .unwrap();
    assert_eq!(creds.role_of(b"old-fb"), Some(Role::Feedback));
    // step 1: both tokens; step 2: the new one only
    std::fs::write(&file, "old-fb\nnew-fb\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(creds.role_of(b"new-fb"), Some(Role::Feedback));
    assert_eq!(creds.role_of(b"old-fb"), Some(Role::Feedback));
    std::fs::write(&file, "new-fb\n").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(creds.role_of(b"old-fb"), None);
    assert_eq!(creds.role_of(b"new-fb"), Some(Role::Feedback));
    // one token in two roles' files is refused at start
    std::fs::write(&file, "op\n").unwrap();
    let e = Credentials::open(&CredentialFiles {
        operator: Some(op),
        feedback: Some(file),
        ..CredentialFiles::default()
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("one role"), "{e}");
}
