//! The golden vector: buckets computed independently (Python `xxhash`) from the
//! documented formula. Runs on the host and, under `make test`, compiled to
//! wasm32-wasip1 inside Node's WASI, so host and wasm agree with each other and
//! with the documentation.
#![allow(clippy::unwrap_used)]

use rollout_core::decide::{decide, SubjectSource};
use rollout_core::hash::bucket;
use rollout_core::parse_plan;
use rollout_core::request::RequestHeaders;

const GOLDEN: &str = include_str!("golden_assignments.json");

#[derive(serde::Deserialize)]
struct Case {
    salt: String,
    key: String,
    xxh64: String,
    bucket: u16,
}

#[derive(serde::Deserialize)]
struct Doc {
    cases: Vec<Case>,
}

fn cases() -> Vec<Case> {
    serde_json::from_str::<Doc>(GOLDEN).unwrap().cases
}

#[test]
fn buckets_match_the_golden_vector() {
    let cases = cases();
    assert!(cases.len() >= 250);
    for c in &cases {
        let raw = xxhash_rust::xxh64::xxh64(format!("{}:{}", c.salt, c.key).as_bytes(), 0);
        assert_eq!(
            raw.to_string(),
            c.xxh64,
            "xxh64 of {:?}:{:?}",
            c.salt,
            c.key
        );
        assert_eq!(
            bucket(&c.salt, &c.key),
            c.bucket,
            "{:?}:{:?}",
            c.salt,
            c.key
        );
    }
}

struct One(String);
impl RequestHeaders for One {
    fn header(&mut self, name: &str) -> Option<String> {
        (name == "x-user-id").then(|| self.0.clone())
    }
}

#[test]
fn variants_follow_bucket_ranges() {
    let (_, plan) = parse_plan(
        br#"{"version":1,"rollouts":[{"name":"fraud","salt":"fraud-v2","variants":[
        {"name":"stable","weight":90},{"name":"canary","weight":10}]}]}"#,
    )
    .unwrap();
    let r = &plan.rollouts[0];
    let subject = SubjectSource {
        header: Some("x-user-id".into()),
        ..SubjectSource::default()
    };
    for c in cases()
        .iter()
        .filter(|c| c.salt == "fraud-v2" && !c.key.is_empty())
    {
        let d = decide(r, &subject, None, &mut One(c.key.clone()), || 0);
        let expect = if c.bucket >= 9000 { "canary" } else { "stable" };
        assert_eq!(r.variant_name(d.variant), expect, "{}", c.key);
    }
}
