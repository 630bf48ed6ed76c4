//! Unit tests of the callbacks against `MockHost`: what the filter does to
//! headers and metrics, and how many host calls it makes.

use std::rc::Rc;

use proxy_wasm::types::{Action, LogLevel};
use rollout_core::stats;

use crate::host::mock::MockHost;
use crate::root::Root;

type H = Rc<MockHost>;

const CONFIG: &str = r#"{
  "subject": {"header": "x-user-id", "cookie": "uid", "client_controlled": true},
  "trusted_headers": ["x-tester"],
  "plan": {"version": 7, "rollouts": [
    {"name": "fraud", "match": {"path_prefix": "/v2/models/fraud/"}, "salt": "fraud-v2",
     "variants": [{"name": "stable", "weight": 90}, {"name": "canary", "weight": 10}],
     "targeting": [{"variant": "canary", "when": [{"header": "x-tester", "present": true}]}]}
  ]}
}"#;

fn root_with(config: &str) -> (H, Root<H>) {
    let h: H = Rc::default();
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
    assert_eq!(ctx.request_headers(true), Action::Continue);
    let expect = if rollout_core::bucket("fraud-v2", "alice") >= 9000 {
        "canary"
    } else {
        "stable"
    };
    let req = h.request.borrow().clone();
    assert_eq!(req.get("x-model-variant").map(String::as_str), Some(expect));
    let id = req.get("x-request-id").cloned().unwrap();
    assert!(rollout_core::correlation::is_valid(&id));
    // one snapshot of the request headers, correlation id set (none came in),
    // variant set, clock.
    assert_eq!(*h.calls.borrow(), 4, "host calls");

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
fn client_ids_are_replaced_by_the_proxys_own() {
    let (h, root) = root_with(CONFIG);
    for (ctx, client) in [(2, "client-id-123"), (3, "bad id!")] {
        request(
            &h,
            &[(":path", "/v2/models/fraud/x"), ("x-request-id", client)],
        );
        root.new_http(ctx).request_headers(true);
        let id = h.request.borrow().get("x-request-id").cloned().unwrap();
        assert_ne!(id, client);
        assert_eq!(id.len(), 36);
    }
}

#[test]
fn unmatched_request_is_untouched() {
    let (h, root) = root_with(CONFIG);
    request(&h, &[(":path", "/healthz"), ("x-model-override", "canary")]);
    let before = h.request.borrow().clone();
    *h.calls.borrow_mut() = 0;
    let mut ctx = root.new_http(2);
    ctx.request_headers(true);
    assert_eq!(*h.request.borrow(), before);
    assert_eq!(
        *h.calls.borrow(),
        1,
        "one read of the headers, nothing written"
    );
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
    root.new_http(2).request_headers(true);
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
        root.new_http(2).request_headers(true);
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
    root.new_http(3).request_headers(true);
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
    root.new_http(5).request_headers(true);
    assert_eq!(h.request.borrow().get("x-model-variant").unwrap(), "canary");
}

#[test]
fn header_read_failures_still_serve_the_request() {
    let (h, mut root) = root_with(CONFIG);
    request(&h, &[(":path", "/v2/models/fraud/x")]);
    *h.fail_headers.borrow_mut() = true;
    let mut ctx = root.new_http(2);
    assert_eq!(ctx.request_headers(true), Action::Continue);
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
        root.new_http(i).request_headers(true);
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
    ctx.request_headers(true);
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

// ---------------------------------------------------------------- live plans

const CONTROLLED: &str = r#"{
  "subject": {"header": "x-user-id", "client_controlled": true},
  "control": {"cluster": "rollout_control", "poll_interval_ms": 1000, "timeout_ms": 500},
  "plan": {"version": 1, "rollouts": [
    {"name": "fraud", "match": {"path_prefix": "/v2/"}, "salt": "s",
     "variants": [{"name": "stable", "weight": 100}, {"name": "canary", "weight": 0}]}]}
}"#;

fn plan_json(version: u64, canary: u32) -> String {
    format!(
        r#"{{"version":{version},"rollouts":[{{"name":"fraud","match":{{"path_prefix":"/v2/"}},"salt":"s",
        "variants":[{{"name":"stable","weight":{}}},{{"name":"canary","weight":{canary}}}]}}]}}"#,
        100 - canary
    )
}

fn set_ms(h: &H, ms: u64) {
    *h.now.borrow_mut() = ms * 1_000_000;
}

fn answer(h: &H, root: &mut Root<H>, status: Option<u32>, body: &str) {
    let token = h.dispatched.borrow().len() as u32;
    let mut headers = std::collections::BTreeMap::new();
    if let Some(s) = status {
        headers.insert(":status".to_string(), s.to_string());
        headers.insert("etag".to_string(), "\"v9\"".to_string());
    }
    *h.call_response.borrow_mut() = (headers, Some(body.as_bytes().to_vec()));
    root.call_response(token, body.len());
}

fn variant_for(h: &H, root: &Root<H>) -> String {
    request(h, &[(":path", "/v2/models/x/infer"), ("x-user-id", "u1")]);
    root.new_http(9).request_headers(true);
    h.request.borrow().get("x-model-variant").cloned().unwrap()
}

#[test]
fn one_worker_polls_and_every_worker_adopts_the_plan() {
    let (h, mut a) = root_with(CONTROLLED);
    let mut b = Root::new(h.clone(), 1);
    assert!(b.configure());
    set_ms(&h, 10_000);
    a.tick();
    b.tick();
    assert_eq!(
        h.dispatched.borrow().len(),
        1,
        "the lease lets one root poll"
    );
    let (cluster, headers, _) = h.dispatched.borrow()[0].clone();
    assert_eq!(cluster, "rollout_control");
    assert!(headers.contains(&(":path".into(), "/v1/plan".into())));
    assert!(headers.contains(&("x-model-rollout-plan-version".into(), "1".into())));
    assert!(headers.contains(&("x-model-rollout-proxy".into(), "test-node".into())));

    answer(&h, &mut a, Some(200), &plan_json(2, 100));
    assert_eq!(variant_for(&h, &a), "canary");
    assert_eq!(variant_for(&h, &b), "stable", "b has not ticked yet");
    set_ms(&h, 10_100);
    b.tick();
    assert_eq!(variant_for(&h, &b), "canary");

    // next interval: the lease holder polls again, with the ETag; 304 changes nothing
    set_ms(&h, 11_050);
    b.tick();
    a.tick();
    assert_eq!(h.dispatched.borrow().len(), 2);
    let (_, headers, _) = h.dispatched.borrow()[1].clone();
    assert!(headers.contains(&("if-none-match".into(), "\"v9\"".into())));
    answer(&h, &mut a, Some(304), "");
    assert_eq!(variant_for(&h, &a), "canary");
    a.tick();
    assert_eq!(h.metric(stats::CONTROL_ACCEPTED), 1);
    assert_eq!(h.metric(stats::CONTROL_POLLS), 2);
    assert_eq!(h.metric(stats::PLAN_VERSION), 2);
}

#[test]
fn lease_passes_on_when_the_holder_stops() {
    let (h, mut a) = root_with(CONTROLLED);
    let mut b = Root::new(h.clone(), 1);
    assert!(b.configure());
    set_ms(&h, 10_000);
    a.tick();
    answer(&h, &mut a, Some(304), "");
    b.tick();
    assert_eq!(h.dispatched.borrow().len(), 1);
    // a goes quiet; after 2 intervals + timeout the lease expires and b polls
    set_ms(&h, 12_400);
    b.tick();
    assert_eq!(h.dispatched.borrow().len(), 1);
    set_ms(&h, 12_600);
    b.tick();
    assert_eq!(h.dispatched.borrow().len(), 2);
}

#[test]
fn bad_answers_keep_the_plan_in_force() {
    let (h, mut root) = root_with(CONTROLLED);
    let mut t = 10_000;
    let mut poll = |status: Option<u32>, body: &str, root: &mut Root<H>| {
        t += 1_000;
        set_ms(&h, t);
        root.tick();
        answer(&h, root, status, body);
    };
    poll(Some(200), &plan_json(5, 100), &mut root);
    assert_eq!(variant_for(&h, &root), "canary");
    let cases: Vec<(Option<u32>, String)> = vec![
        (None, String::new()),                               // unreachable / timeout
        (Some(500), "oops".into()),                          // 5xx
        (Some(200), "garbage".into()),                       // malformed
        (Some(200), plan_json(6, 100)[..50].to_string()),    // truncated
        (Some(200), plan_json(6, 100).replace("100", "99")), // invalid
        (Some(200), plan_json(4, 0)),                        // lower version
        (Some(200), plan_json(7, 0) + &" ".repeat(2 << 20)), // oversized
    ];
    for (status, body) in &cases {
        poll(*status, body, &mut root);
        assert_eq!(
            variant_for(&h, &root),
            "canary",
            "{status:?} {}",
            &body[..body.len().min(40)]
        );
    }
    set_ms(&h, t + 2_000);
    root.tick();
    assert_eq!(h.metric(&stats::control_poll_errors("unreachable")), 1);
    assert_eq!(h.metric(&stats::control_poll_errors("status")), 1);
    assert_eq!(h.metric(&stats::control_rejected("malformed")), 2);
    assert_eq!(h.metric(&stats::control_rejected("invalid")), 1);
    assert_eq!(h.metric(&stats::control_rejected("stale_version")), 1);
    assert_eq!(h.metric(&stats::control_rejected("oversized")), 1);
    assert_eq!(h.metric(stats::PLAN_VERSION), 5);
    // staleness: last success was the first poll, 9 s before this flush
    let names = h.metric_names.borrow();
    let id = names
        .iter()
        .position(|(_, n)| n == stats::CONTROL_STALENESS)
        .unwrap() as u32;
    assert!(*h.metric_values.borrow().get(&id).unwrap() >= 8);
}

#[test]
fn dispatch_failure_is_counted_and_nothing_breaks() {
    let (h, mut root) = root_with(CONTROLLED);
    *h.fail_dispatch.borrow_mut() = true;
    set_ms(&h, 10_000);
    root.tick();
    set_ms(&h, 11_000);
    root.tick();
    assert_eq!(h.metric(&stats::control_poll_errors("unreachable")), 2);
    assert_eq!(h.metric(stats::CONTROL_POLLS), 2);
    assert_eq!(variant_for(&h, &root), "stable");
}

#[test]
fn unknown_callout_tokens_are_ignored() {
    let (h, mut root) = root_with(CONTROLLED);
    set_ms(&h, 10_000);
    root.tick();
    *h.call_response.borrow_mut() = (Default::default(), Some(plan_json(9, 100).into_bytes()));
    root.call_response(999, 10);
    assert_eq!(variant_for(&h, &root), "stable");
}

// ---------------------------------------------------------------- local trip

const TRIPPING: &str = r#"{
  "subject": {"header": "x-user-id", "client_controlled": true},
  "plan": {"version": 3, "rollouts": [
    {"name": "fraud", "match": {"path_prefix": "/v2/"}, "salt": "s",
     "variants": [{"name": "stable", "weight": 50}, {"name": "canary", "weight": 50}],
     "policy": {"steps": [{"weight": 50}],
                "trip": {"window_s": 5, "min_requests": 10, "max_error_rate": 0.5}}}]}
}"#;

fn serve(h: &H, root: &Root<H>, user: &str, status: u32) -> String {
    request(h, &[(":path", "/v2/models/x/infer"), ("x-user-id", user)]);
    let mut ctx = root.new_http(5);
    ctx.request_headers(true);
    let v = h.request.borrow().get("x-model-variant").cloned().unwrap();
    h.response
        .borrow_mut()
        .insert(":status".into(), status.to_string());
    ctx.response_headers();
    ctx.done();
    v
}

#[test]
fn candidate_errors_trip_the_proxy_and_other_workers_follow() {
    let (h, mut a) = root_with(TRIPPING);
    let mut b = Root::new(h.clone(), 1);
    assert!(b.configure());
    set_ms(&h, 50_000);
    let users: Vec<String> = (0..400).map(|i| format!("u{i}")).collect();
    let canary_users: Vec<&String> = users
        .iter()
        .filter(|u| rollout_core::bucket("s", u) >= 5000)
        .collect();
    // healthy stable, failing canary: the 10th canary error trips worker a
    let mut served_canary = 0;
    for u in &canary_users {
        if serve(&h, &a, u, 503) == "canary" {
            served_canary += 1;
        }
    }
    assert_eq!(served_canary, 10, "tripped after min_requests errors");
    // worker b has not ticked: still routes to canary; after its tick it follows
    assert_eq!(serve(&h, &b, canary_users[0], 200), "canary");
    set_ms(&h, 50_100);
    b.tick();
    assert_eq!(serve(&h, &b, canary_users[1], 200), "stable");
    a.tick();
    assert_eq!(h.metric(&stats::rollout_metric("fraud", "trips_total")), 1);
    assert!(h.metric(&stats::rollout_metric("fraud", "trip_rerouted_total")) >= 1);
    // a newer plan ends the trip
    *h.config.borrow_mut() = Some(
        TRIPPING
            .replace("\"version\": 3", "\"version\": 4")
            .into_bytes(),
    );
    assert!(a.configure());
    assert_eq!(serve(&h, &a, canary_users[2], 200), "canary");
}

const BINNED: &str = r#"{
  "subject": {"header": "x-user-id", "client_controlled": true},
  "trusted_headers": ["x-tester", "x-stable"],
  "echo": {"model": "x-model-version"},
  "plan": {"version": 1, "rollouts": [
    {"name": "fraud", "salt": "s",
     "variants": [{"name": "stable", "weight": 50},
                  {"name": "canary", "weight": 50,
                   "model": {"name": "fraud-xgb", "version": "2.4.1", "uri": "s3://m/fraud/2.4.1"}}],
     "targeting": [{"variant": "canary", "when": [{"header": "x-tester", "present": true}]},
                   {"variant": "stable", "when": [{"header": "x-stable", "present": true}]}],
     "output": {"pointer": "/outputs/0/data", "distribution": {"edges": [0, 0.5, 1]}}}
  ]}
}"#;

/// One request served by `variant` (pinned by targeting) answering `body`; returns
/// the host calls of the response half and the response headers.
fn answer_with(h: &H, root: &Root<H>, pin: &str, body: &str) -> (usize, Vec<(String, String)>) {
    request(h, &[(":path", "/v2/models/fraud/infer"), (pin, "1")]);
    let mut ctx = root.new_http(9);
    ctx.request_headers(true);
    h.response.borrow_mut().clear();
    h.response
        .borrow_mut()
        .insert(":status".into(), "200".into());
    h.response
        .borrow_mut()
        .insert("x-model-version".into(), "from-the-model".into());
    *h.response_chunk.borrow_mut() = body.as_bytes().to_vec();
    *h.calls.borrow_mut() = 0;
    ctx.response_headers();
    ctx.response_body(body.len(), true);
    ctx.done();
    let calls = *h.calls.borrow();
    let headers = h.response.borrow().clone().into_iter().collect();
    (calls, headers)
}

#[test]
fn predictions_are_counted_into_bins_without_host_calls() {
    let (h, mut root) = root_with(BINNED);
    answer_with(
        &h,
        &root,
        "x-tester",
        r#"{"outputs":[{"data":[0.2, 0.7, 1.0]}]}"#,
    );
    answer_with(&h, &root, "x-tester", r#"{"outputs":[{"data":[NaN]}]}"#);
    let (binned_calls, _) = answer_with(&h, &root, "x-stable", r#"{"outputs":[{"data":[-1]}]}"#);
    root.tick();
    let bin = |v: &str, i: usize| h.metric(&stats::variant_bin("fraud", v, i));
    assert_eq!(
        (0..5).map(|i| bin("canary", i)).collect::<Vec<_>>(),
        vec![0, 1, 2, 0, 1]
    );
    assert_eq!(
        (0..5).map(|i| bin("stable", i)).collect::<Vec<_>>(),
        vec![1, 0, 0, 0, 0]
    );
    // the same answer without a distribution makes exactly as many host calls
    let plain = BINNED.replace(r#", "distribution": {"edges": [0, 0.5, 1]}"#, "");
    let (h2, root2) = root_with(&plain);
    let (plain_calls, _) = answer_with(&h2, &root2, "x-stable", r#"{"outputs":[{"data":[-1]}]}"#);
    assert_eq!(binned_calls, plain_calls);
    assert!(h2
        .metric_names
        .borrow()
        .iter()
        .all(|(_, n)| !n.contains("predictions_total")));
}

#[test]
fn the_model_header_tells_the_plans_truth() {
    let (h, root) = root_with(BINNED);
    let header = |headers: &[(String, String)]| {
        headers
            .iter()
            .find(|(k, _)| k == "x-model-version")
            .map(|(_, v)| v.clone())
    };
    let (_, canary) = answer_with(&h, &root, "x-tester", "{}");
    assert_eq!(header(&canary).as_deref(), Some("fraud-xgb:2.4.1"));
    // a variant without metadata removes what the model sent
    let (_, stable) = answer_with(&h, &root, "x-stable", "{}");
    assert_eq!(header(&stable), None);
    // off by default: the upstream's header passes untouched, no extra host call
    let off = BINNED.replace(r#""echo": {"model": "x-model-version"},"#, "");
    let (h2, root2) = root_with(&off);
    let (calls_off, headers) = answer_with(&h2, &root2, "x-tester", "{}");
    assert_eq!(header(&headers).as_deref(), Some("from-the-model"));
    let (calls_on, _) = answer_with(&h, &root, "x-tester", "{}");
    assert_eq!(calls_on, calls_off + 1);
}

#[test]
fn the_shipped_stats_tags_are_cores() {
    // envoy/demo.yaml carries rollout_core::stats::STATS_TAGS; the other shipped
    // configs are checked against demo.yaml by the integration tests.
    let demo = include_str!("../envoy/demo.yaml");
    for (tag, regex) in stats::STATS_TAGS {
        let entry = format!("  - tag_name: {tag}\n    regex: '{regex}'\n");
        assert!(demo.contains(&entry), "envoy/demo.yaml lacks {entry}");
    }
}

/// envoy/demo.yaml's routing configuration as shipped (issue 13): Envoy echoes the
/// correlation id and the variant, the filter does not.
const DEMO_ROUTING: &str = r#"{
  "subject": {"header": "x-user-id", "cookie": "uid", "client_controlled": true},
  "trusted_headers": ["x-tester", "x-region"],
  "correlation_header": "x-request-id",
  "variant_header": "x-model-variant",
  "echo": {"correlation_id": false, "variant": false},
  "override": {"header": "x-model-override", "enabled": false},
  "plan": {"version": 1, "rollouts": [
    {"name": "fraud", "match": {"path_prefix": "/v2/models/fraud/"}, "salt": "fraud-v2",
     "variants": [{"name": "stable", "weight": 90}, {"name": "canary", "weight": 10}],
     "targeting": [
       {"name": "eu-stays-stable", "variant": "stable", "when": [{"header": "x-region", "equals": "eu"}]},
       {"name": "internal-testers", "variant": "canary", "when": [{"header": "x-tester", "present": true}]}
     ]},
    {"name": "churn", "match": {"path_prefix": "/v2/models/churn/"}, "salt": "churn-ab-1",
     "variants": [{"name": "v1", "weight": 50}, {"name": "v2", "weight": 50}]}
  ]}
}"#;

/// The host calls of one request, per callback: request headers, request body,
/// response headers, response body, end of request.
fn host_calls(h: &H, root: &Root<H>, headers: &[(&str, &str)]) -> [Vec<&'static str>; 5] {
    request(h, headers);
    h.response.borrow_mut().clear();
    h.response
        .borrow_mut()
        .insert(":status".into(), "200".into());
    let body = br#"{"outputs":[{"data":[0.5]}]}"#;
    *h.request_chunk.borrow_mut() = b"{}".to_vec();
    *h.response_chunk.borrow_mut() = body.to_vec();
    let mut ctx = root.new_http(11);
    let step = |f: &mut dyn FnMut()| {
        h.reset_calls();
        f();
        h.call_log.borrow().clone()
    };
    let req = step(&mut || {
        ctx.request_headers(false);
    });
    let req_body = step(&mut || {
        ctx.request_body(2, true);
    });
    let resp = step(&mut || {
        ctx.response_headers();
    });
    let resp_body = step(&mut || {
        ctx.response_body(body.len(), true);
    });
    let done = step(&mut || ctx.done());
    [req, req_body, resp, resp_body, done]
}

/// Host calls per request on the common paths, so that a regression shows (each
/// host call costs Envoy CPU: see README "Performance").
#[test]
fn host_calls_per_request_on_the_common_paths() {
    const NONE: Vec<&str> = Vec::new();
    let fraud = (":path", "/v2/models/fraud/infer");
    let (h, root) = root_with(DEMO_ROUTING);
    // routed, no id from the client: one header snapshot, the minted id, the variant,
    // the clock; on the way out the status, the clock, the latency sample.
    assert_eq!(
        host_calls(&h, &root, &[fraud, ("x-user-id", "u1")]),
        [
            vec![
                "request_headers_all",
                "set_request_header",
                "set_request_header",
                "now_nanos"
            ],
            NONE,
            vec!["response_header", "now_nanos", "record_metric"],
            NONE,
            NONE,
        ]
    );
    // a client's id is replaced like a missing one: the same calls
    let replaced = host_calls(
        &h,
        &root,
        &[
            fraud,
            ("x-user-id", "u1"),
            ("x-request-id", "client-id-123"),
        ],
    );
    assert_eq!(
        replaced[0],
        vec![
            "request_headers_all",
            "set_request_header",
            "set_request_header",
            "now_nanos"
        ]
    );
    // targeting and the cookie read from the same snapshot: no extra call
    let targeted = host_calls(&h, &root, &[fraud, ("x-tester", "1"), ("cookie", "uid=a")]);
    assert_eq!(targeted[0].len(), 4);
    // a client's override header is removed (one call) even when disabled
    let overridden = host_calls(&h, &root, &[fraud, ("x-model-override", "canary")]);
    assert_eq!(overridden[0].len(), 5);
    // unmatched: one read, nothing else
    assert_eq!(
        host_calls(&h, &root, &[(":path", "/healthz")]),
        [vec!["request_headers_all"], NONE, NONE, NONE, NONE]
    );
    // the filter's own echo (its default) adds one call per echoed header
    let echo = DEMO_ROUTING.replace(
        r#""echo": {"correlation_id": false, "variant": false},"#,
        "",
    );
    let (h2, root2) = root_with(&echo);
    let echoed = host_calls(&h2, &root2, &[fraud, ("x-user-id", "u1")]);
    assert_eq!(
        echoed[2],
        vec![
            "response_header",
            "now_nanos",
            "record_metric",
            "set_response_header",
            "set_response_header"
        ]
    );
    // output health reads the response body: one call per chunk
    let output = DEMO_ROUTING.replace(
        r#""salt": "fraud-v2","#,
        r#""salt": "fraud-v2", "output": {"pointer": "/outputs/0/data", "min": 0, "max": 1},"#,
    );
    let (h3, root3) = root_with(&output);
    let checked = host_calls(&h3, &root3, &[fraud, ("x-user-id", "u1")]);
    assert_eq!(checked[2].len(), 3);
    assert_eq!(checked[3], vec!["response_body"]);
    assert_eq!(checked[4], NONE);
}

/// Native time of the filter's own work per request (MockHost: host calls cost
/// nothing here), routing only and with a compared shadow. Not a test of speed: run
/// by hand to see where the Wasm-side time goes (e.g. under `perf record`):
/// `cargo test --release -p model-rollout --lib time_per_request -- --ignored --nocapture`
/// (`TIME_PER_REQUEST_N=5000 TIME_PER_REQUEST_ONLY=routing` shorten it, e.g. to count
/// instructions per function under `valgrind --tool=callgrind` on a `--profile native`
/// build with `CARGO_PROFILE_NATIVE_DEBUG=line-tables-only`).
#[test]
#[ignore]
fn time_per_request() {
    let shadow = DEMO_ROUTING.replace(
        r#""salt": "fraud-v2","#,
        r#""salt": "fraud-v2", "shadow": {"cluster": "model_shadow", "percent": 100, "timeout_ms": 5000,
           "compare": {"pointers": ["/outputs/0/data"], "abs_tolerance": 0.000001}},"#,
    );
    let answer = r#"{"model_name":"fraud","model_version":"stable","id":"bench","outputs":[{"name":"score","shape":[1],"datatype":"FP64","data":[0.25]}]}"#;
    let n: u32 = std::env::var("TIME_PER_REQUEST_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let only = std::env::var("TIME_PER_REQUEST_ONLY").unwrap_or_default();
    for (label, config) in [("routing", DEMO_ROUTING), ("shadow", shadow.as_str())] {
        if !only.is_empty() && only != label {
            continue;
        }
        let (h, mut root) = root_with(config);
        *h.request_chunk.borrow_mut() = br#"{"id":"bench","inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[0.1,0.2,0.3,0.4]}]}"#.to_vec();
        *h.response_chunk.borrow_mut() = answer.as_bytes().to_vec();
        let start = std::time::Instant::now();
        for i in 0..n {
            let user = format!("user-{}", i % 10_000);
            request(
                &h,
                &[
                    (":path", "/v2/models/fraud/infer"),
                    (":method", "POST"),
                    (":authority", "models.bench"),
                    ("content-type", "application/json"),
                    ("content-length", "99"),
                    ("x-user-id", &user),
                ],
            );
            h.response.borrow_mut().clear();
            h.response
                .borrow_mut()
                .insert(":status".into(), "200".into());
            h.dispatched.borrow_mut().clear();
            h.queue.borrow_mut().clear();
            let mut ctx = root.new_http(i + 10);
            ctx.request_headers(false);
            ctx.request_body(99, true);
            root.queue_ready(1);
            ctx.response_headers();
            ctx.response_body(answer.len(), true);
            ctx.done();
            if !h.dispatched.borrow().is_empty() {
                let mut headers = std::collections::BTreeMap::new();
                headers.insert(":status".to_string(), "200".to_string());
                *h.call_response.borrow_mut() = (headers, Some(answer.as_bytes().to_vec()));
                root.call_response(1, answer.len());
            }
            if i % 10_000 == 0 {
                root.tick();
                h.histograms.borrow_mut().clear();
                h.logs.borrow_mut().clear();
            }
        }
        let per = start.elapsed().as_nanos() / u128::from(n);
        println!("{label}: {per} ns per request (native, MockHost)");
    }
}

/// Host calls of one shadowed request (100 %, compared), callback by callback, so
/// that a regression on the shadow path shows too.
#[test]
fn host_calls_of_a_shadowed_request() {
    let shadow = DEMO_ROUTING.replace(
        r#""salt": "fraud-v2","#,
        r#""salt": "fraud-v2", "shadow": {"cluster": "model_shadow", "percent": 100,
           "compare": {"pointers": ["/outputs/0/data"]}},"#,
    );
    let (h, mut root) = root_with(&shadow);
    let body = br#"{"outputs":[{"data":[0.5]}]}"#;
    request(
        &h,
        &[
            (":path", "/v2/models/fraud/infer"),
            (":method", "POST"),
            ("x-user-id", "u1"),
        ],
    );
    h.response
        .borrow_mut()
        .insert(":status".into(), "200".into());
    *h.request_chunk.borrow_mut() = b"{}".to_vec();
    *h.response_chunk.borrow_mut() = body.to_vec();
    let mut ctx = root.new_http(12);
    let log = |f: &mut dyn FnMut()| {
        h.reset_calls();
        f();
        h.call_log.borrow().clone()
    };
    let req = log(&mut || {
        ctx.request_headers(false);
    });
    assert_eq!(
        req,
        vec![
            "request_headers_all",
            "set_request_header",
            "set_request_header",
            "now_nanos"
        ],
        "snapshot, id, variant, clock (the join's expiry reads the same clock)"
    );
    assert_eq!(
        log(&mut || {
            ctx.request_body(2, true);
        }),
        vec!["request_body", "enqueue"]
    );
    assert_eq!(
        log(&mut || root.queue_ready(1)),
        vec!["dequeue", "now_nanos", "dispatch"],
        "one dequeue per nudge"
    );
    assert!(
        h.queue.borrow().is_empty(),
        "the nudge was taken off the queue"
    );
    assert_eq!(
        log(&mut || {
            ctx.response_headers();
        }),
        vec!["response_header", "now_nanos", "record_metric"]
    );
    assert_eq!(
        log(&mut || {
            ctx.response_body(body.len(), true);
        }),
        vec!["response_body"]
    );
    assert_eq!(
        log(&mut || ctx.done()),
        Vec::<&str>::new(),
        "the join takes the clock read at the response headers"
    );
    let mut headers = std::collections::BTreeMap::new();
    headers.insert(":status".to_string(), "200".to_string());
    *h.call_response.borrow_mut() = (headers, Some(body.to_vec()));
    let token = h.dispatched.borrow().len() as u32;
    assert_eq!(
        log(&mut || root.call_response(token, body.len())),
        vec![
            "now_nanos",
            "call_response_header",
            "call_response_body",
            "record_metric",
            "record_metric"
        ],
        "the answer: clock, status, body, then both latencies of the completed join"
    );
}

/// A verified identity (README "Security model"): read through properties only when
/// the configuration names it, one host call per distinct claim or peer field per
/// request, and it decides before any client header.
/// The end of the request runs when the context is dropped (the SDK drops it in
/// `proxy_on_delete`; the module exports no `proxy_on_log`), also for a client that
/// went away mid-body; running it again on drop after `done` counts nothing twice.
#[test]
fn dropping_the_context_ends_the_request() {
    let shadow = DEMO_ROUTING.replace(
        r#""salt": "fraud-v2","#,
        r#""salt": "fraud-v2", "shadow": {"cluster": "model_shadow", "percent": 100},"#,
    );
    let (h, mut root) = root_with(&shadow);
    let aborted = || {
        h.metric(&stats::rollout_reason_metric(
            "fraud",
            "aborted",
            "shadow_skipped_total",
        ))
    };
    request(
        &h,
        &[
            (":path", "/v2/models/fraud/infer"),
            (":method", "POST"),
            ("x-user-id", "u1"),
        ],
    );
    let mut gone = root.new_http(20);
    gone.request_headers(false);
    drop(gone);
    let mut ended = root.new_http(21);
    ended.request_headers(false);
    ended.done();
    drop(ended);
    root.tick();
    assert_eq!(aborted(), 2);
    assert!(
        h.dispatched.borrow().is_empty(),
        "no copy of either went out"
    );
}

#[test]
fn verified_identity_is_read_only_when_configured() {
    let fraud = (":path", "/v2/models/fraud/infer");
    let config = DEMO_ROUTING
        .replace(
            r#""subject": {"header""#,
            r#""jwt": {"payload_in_metadata": "demo"}, "subject": {"claim": "sub", "header""#,
        )
        .replace(
            r#"{"name": "eu-stays-stable""#,
            r#"{"name": "testers", "variant": "canary", "when": [{"claim": "groups", "contains": "testers"}]},
       {"name": "eu-stays-stable""#,
        );
    let (h, root) = root_with(&config);
    let claim =
        |name: &str| format!("metadata/filter_metadata/envoy.filters.http.jwt_authn/demo/{name}");
    // anonymous: the groups claim and the sub claim are looked up (absent), then the
    // client-controlled header decides
    let anon = host_calls(&h, &root, &[fraud, ("x-user-id", "u1")]);
    assert_eq!(
        anon[0],
        vec![
            "request_headers_all",
            "property",
            "property",
            "set_request_header",
            "set_request_header",
            "now_nanos"
        ]
    );
    // unmatched requests read no property
    assert_eq!(
        host_calls(&h, &root, &[(":path", "/healthz")])[0],
        vec!["request_headers_all"]
    );
    // a verified sub decides the bucket, whatever x-user-id says
    let sub = (0..)
        .map(|i| format!("user-{i}"))
        .find(|u| rollout_core::bucket("fraud-v2", u) >= 9000)
        .unwrap();
    h.properties
        .borrow_mut()
        .insert(claim("sub"), sub.clone().into_bytes());
    let mallory = (0..)
        .map(|i| format!("m-{i}"))
        .find(|u| rollout_core::bucket("fraud-v2", u) < 9000)
        .unwrap();
    host_calls(&h, &root, &[fraud, ("x-user-id", &mallory)]);
    assert_eq!(
        h.request
            .borrow()
            .get("x-model-variant")
            .map(String::as_str),
        Some("canary")
    );
    // a groups list claim (Envoy's serialization: a pairs map of the elements) pins
    let mut groups = 2u32.to_le_bytes().to_vec();
    for g in ["staff", "testers"] {
        groups.extend((g.len() as u32).to_le_bytes());
        groups.extend(0u32.to_le_bytes());
    }
    for g in ["staff", "testers"] {
        groups.extend(g.as_bytes());
        groups.extend([0, 0]);
    }
    h.properties.borrow_mut().clear();
    h.properties.borrow_mut().insert(claim("groups"), groups);
    let pinned = host_calls(&h, &root, &[fraud, ("x-user-id", &mallory)]);
    assert_eq!(
        h.request
            .borrow()
            .get("x-model-variant")
            .map(String::as_str),
        Some("canary")
    );
    assert_eq!(
        pinned[0].iter().filter(|c| **c == "property").count(),
        1,
        "{pinned:?}"
    );
    // the shipped routing without a verified source reads none
    let (h2, root2) = root_with(DEMO_ROUTING);
    let plain = host_calls(&h2, &root2, &[fraud, ("x-user-id", "u1")]);
    assert!(!plain[0].contains(&"property"), "{plain:?}");
}
