//! Unit tests of the callbacks against `MockHost`: what the filter does to
//! headers and metrics, and how many host calls it makes.

use std::rc::Rc;

use proxy_wasm::types::{Action, LogLevel};
use rollout_core::stats;

use crate::host::mock::MockHost;
use crate::root::Root;

#[derive(Clone, Default)]
struct H(Rc<MockHost>);

impl std::ops::Deref for H {
    type Target = MockHost;
    fn deref(&self) -> &MockHost {
        &self.0
    }
}

impl crate::host::Host for H {
    fn request_header(&self, n: &str) -> crate::host::HostResult<Option<String>> {
        self.0.request_header(n)
    }
    fn set_request_header(&self, n: &str, v: Option<&str>) -> crate::host::HostResult<()> {
        self.0.set_request_header(n, v)
    }
    fn response_header(&self, n: &str) -> crate::host::HostResult<Option<String>> {
        self.0.response_header(n)
    }
    fn set_response_header(&self, n: &str, v: Option<&str>) -> crate::host::HostResult<()> {
        self.0.set_response_header(n, v)
    }
    fn now_nanos(&self) -> crate::host::HostResult<u64> {
        self.0.now_nanos()
    }
    fn plugin_configuration(&self) -> crate::host::HostResult<Option<Vec<u8>>> {
        self.0.plugin_configuration()
    }
    fn define_metric(&self, k: crate::host::MetricKind, n: &str) -> crate::host::HostResult<u32> {
        self.0.define_metric(k, n)
    }
    fn increment_metric(&self, id: u32, d: i64) -> crate::host::HostResult<()> {
        self.0.increment_metric(id, d)
    }
    fn record_metric(&self, id: u32, v: u64) -> crate::host::HostResult<()> {
        self.0.record_metric(id, v)
    }
    fn set_tick_period_ms(&self, ms: u64) -> crate::host::HostResult<()> {
        self.0.set_tick_period_ms(ms)
    }
    fn log(&self, l: LogLevel, m: &str) {
        self.0.log(l, m)
    }
}

const CONFIG: &str = r#"{
  "subject": {"header": "x-user-id", "cookie": "uid"},
  "plan": {"version": 7, "rollouts": [
    {"name": "fraud", "match": {"path_prefix": "/v2/models/fraud/"}, "salt": "fraud-v2",
     "variants": [{"name": "stable", "weight": 90}, {"name": "canary", "weight": 10}],
     "targeting": [{"variant": "canary", "when": [{"header": "x-tester", "present": true}]}]}
  ]}
}"#;

fn root_with(config: &str) -> (H, Root<H>) {
    let h = H::default();
    *h.config.borrow_mut() = Some(config.as_bytes().to_vec());
    let mut root = Root::new(h.clone(), 1);
    assert!(root.configure());
    (h, root)
}

fn request(h: &H, headers: &[(&str, &str)]) {
    let mut m = h.request.borrow_mut();
    m.clear();
    for (k, v) in headers {
        m.insert(k.to_string(), v.to_string());
    }
}

#[test]
fn matched_request_gets_variant_and_correlation_id() {
    let (h, root) = root_with(CONFIG);
    request(
        &h,
        &[(":path", "/v2/models/fraud/infer"), ("x-user-id", "alice")],
    );
    let mut ctx = root.new_http(2);
    *h.calls.borrow_mut() = 0;
    assert_eq!(ctx.request_headers(), Action::Continue);
    let expect = if rollout_core::bucket("fraud-v2", "alice") >= 9000 {
        "canary"
    } else {
        "stable"
    };
    let req = h.request.borrow().clone();
    assert_eq!(req.get("x-model-variant").map(String::as_str), Some(expect));
    let id = req.get("x-request-id").cloned().unwrap();
    assert!(rollout_core::correlation::is_valid(&id));
    // :path, override removal, the targeting rule's x-tester, x-user-id,
    // correlation get + set (none came in), variant set, clock.
    assert_eq!(*h.calls.borrow(), 8, "host calls");

    h.response
        .borrow_mut()
        .insert(":status".into(), "200".into());
    *h.now.borrow_mut() = 5_000_000;
    ctx.response_headers();
    let resp = h.response.borrow().clone();
    assert_eq!(resp.get("x-request-id"), Some(&id));
    assert_eq!(
        resp.get("x-model-variant").map(String::as_str),
        Some(expect)
    );

    let mut root = root;
    root.tick();
    assert_eq!(h.metric(&stats::variant_requests("fraud", expect)), 1);
    assert_eq!(
        h.metric(&stats::variant_responses("fraud", expect, "2xx")),
        1
    );
    assert_eq!(h.metric(&stats::rollout_assignments("fraud", "sticky")), 1);
    assert_eq!(
        h.histogram(&stats::variant_latency("fraud", expect)),
        vec![5]
    );
    assert_eq!(h.metric(stats::PLAN_VERSION), 7);
}

#[test]
fn valid_client_id_is_kept_invalid_is_replaced() {
    let (h, root) = root_with(CONFIG);
    request(
        &h,
        &[
            (":path", "/v2/models/fraud/x"),
            ("x-request-id", "client-id-123"),
        ],
    );
    root.new_http(2).request_headers();
    assert_eq!(
        h.request.borrow().get("x-request-id").unwrap(),
        "client-id-123"
    );
    request(
        &h,
        &[(":path", "/v2/models/fraud/x"), ("x-request-id", "bad id!")],
    );
    root.new_http(3).request_headers();
    let id = h.request.borrow().get("x-request-id").cloned().unwrap();
    assert_ne!(id, "bad id!");
    assert_eq!(id.len(), 36);
}

#[test]
fn unmatched_request_is_untouched() {
    let (h, root) = root_with(CONFIG);
    request(&h, &[(":path", "/healthz"), ("x-model-override", "canary")]);
    let before = h.request.borrow().clone();
    *h.calls.borrow_mut() = 0;
    let mut ctx = root.new_http(2);
    ctx.request_headers();
    assert_eq!(*h.request.borrow(), before);
    assert_eq!(*h.calls.borrow(), 1, "only :path is read");
    h.response
        .borrow_mut()
        .insert(":status".into(), "200".into());
    ctx.response_headers();
    assert!(!h.response.borrow().contains_key("x-model-variant"));
}

#[test]
fn override_is_stripped_when_disabled_and_honoured_when_enabled() {
    let (h, root) = root_with(CONFIG);
    request(
        &h,
        &[
            (":path", "/v2/models/fraud/x"),
            ("x-user-id", "alice"),
            ("x-model-override", "canary"),
        ],
    );
    root.new_http(2).request_headers();
    assert!(!h.request.borrow().contains_key("x-model-override"));

    let enabled = CONFIG.replacen('{', r#"{"override": {"enabled": true},"#, 1);
    let (h, root) = root_with(&enabled);
    for (user, _) in [("alice", 0), ("bob", 1), ("carol", 2)] {
        request(
            &h,
            &[
                (":path", "/v2/models/fraud/x"),
                ("x-user-id", user),
                ("x-model-override", "canary"),
            ],
        );
        root.new_http(2).request_headers();
        assert_eq!(h.request.borrow().get("x-model-variant").unwrap(), "canary");
        assert!(!h.request.borrow().contains_key("x-model-override"));
    }
    request(
        &h,
        &[
            (":path", "/v2/models/fraud/x"),
            ("x-model-override", "nonexistent"),
            ("x-user-id", "a"),
        ],
    );
    root.new_http(3).request_headers();
    let mut root = root;
    root.tick();
    assert_eq!(h.metric(stats::OVERRIDE_REJECTED), 1);
}

#[test]
fn bad_configuration_is_refused_and_previous_stays() {
    let (h, mut root) = root_with(CONFIG);
    *h.config.borrow_mut() = Some(br#"{"plan":{"version":8,"rollouts":[{"name":"fraud","salt":"s","variants":[{"name":"a","weight":50}]}]}}"#.to_vec());
    assert!(!root.configure());
    let (level, msg) = h.logs.borrow().last().cloned().unwrap();
    assert_eq!(level, LogLevel::Critical);
    assert!(msg.contains("plan.rollouts[0].variants"), "{msg}");
    // The earlier plan still routes.
    request(&h, &[(":path", "/v2/models/fraud/x"), ("x-tester", "1")]);
    root.new_http(5).request_headers();
    assert_eq!(h.request.borrow().get("x-model-variant").unwrap(), "canary");
}

#[test]
fn header_read_failures_still_serve_the_request() {
    let (h, mut root) = root_with(CONFIG);
    request(&h, &[(":path", "/v2/models/fraud/x")]);
    *h.fail_headers.borrow_mut() = true;
    let mut ctx = root.new_http(2);
    assert_eq!(ctx.request_headers(), Action::Continue);
    root.tick();
    assert!(h.metric(stats::HOST_ERRORS) >= 1);
    assert_eq!(h.metric(stats::UNMATCHED), 1);
}

#[test]
fn requests_without_key_are_split_randomly_by_weight() {
    let (h, mut root) = root_with(CONFIG);
    let mut canary = 0;
    for i in 0..20_000 {
        request(&h, &[(":path", "/v2/models/fraud/x")]);
        root.new_http(i).request_headers();
        if h.request.borrow().get("x-model-variant").unwrap() == "canary" {
            canary += 1;
        }
    }
    assert!((1_700..2_300).contains(&canary), "{canary}");
    root.tick();
    assert_eq!(
        h.metric(&stats::rollout_assignments("fraud", "random")),
        20_000
    );
    assert_eq!(h.metric(stats::CORRELATION_GENERATED), 20_000);
}

#[test]
fn counters_survive_a_reconfiguration_mid_request() {
    let (h, mut root) = root_with(CONFIG);
    request(&h, &[(":path", "/v2/models/fraud/x"), ("x-tester", "1")]);
    let mut ctx = root.new_http(2);
    ctx.request_headers();
    assert!(root.configure());
    h.response
        .borrow_mut()
        .insert(":status".into(), "503".into());
    ctx.response_headers();
    drop(ctx);
    root.tick();
    assert_eq!(
        h.metric(&stats::variant_responses("fraud", "canary", "5xx")),
        1
    );
    assert_eq!(h.metric(&stats::variant_requests("fraud", "canary")), 1);
}
