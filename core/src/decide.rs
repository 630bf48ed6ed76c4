//! The variant decision for one request of a matched rollout.
//!
//! Order: trusted override (when enabled) -> targeting rules (first match) ->
//! sticky bucket of the subject key -> random bucket for requests without a key.

use crate::hash::{bucket, bucket_from_random};
use crate::identity::{Claim, Peer};
use crate::plan::{Condition, Op, Rollout, Source};
use crate::request::{cookie_value, RequestHeaders};

/// Where the subject key of a request comes from, first present wins: the verified
/// claim, the verified peer certificate field, then the header, then the cookie.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectSource {
    pub claim: Option<String>,
    pub peer: Option<Peer>,
    pub header: Option<String>,
    pub cookie: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The trusted override header named a variant.
    Override,
    /// A targeting rule pinned the request.
    Targeted,
    /// `bucket(salt, subject key)`.
    Sticky,
    /// No subject key: a random bucket, still honouring the weights.
    Random,
}

impl Reason {
    pub const ALL: [Reason; 4] = [
        Reason::Override,
        Reason::Targeted,
        Reason::Sticky,
        Reason::Random,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Override => "override",
            Reason::Targeted => "targeted",
            Reason::Sticky => "sticky",
            Reason::Random => "random",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Reason::Override => 0,
            Reason::Targeted => 1,
            Reason::Sticky => 2,
            Reason::Random => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub variant: usize,
    pub reason: Reason,
    /// An override header was present but named no variant of this rollout.
    pub override_rejected: bool,
}

/// Decides the variant of one request. `override_value` is `Some` only when the
/// override is enabled and the header was present; `random` is called only for
/// requests without a subject key.
pub fn decide(
    rollout: &Rollout,
    subject: &SubjectSource,
    override_value: Option<&str>,
    headers: &mut impl RequestHeaders,
    random: impl FnOnce() -> u32,
) -> Decision {
    let mut override_rejected = false;
    if let Some(v) = override_value {
        match rollout.variant_index(v.trim()) {
            Some(variant) => {
                return Decision {
                    variant,
                    reason: Reason::Override,
                    override_rejected,
                }
            }
            None => override_rejected = true,
        }
    }
    for rule in &rollout.targeting {
        if rule.when.iter().all(|c| holds(c, headers)) {
            return Decision {
                variant: rule.variant,
                reason: Reason::Targeted,
                override_rejected,
            };
        }
    }
    let (b, reason) = match subject_key(subject, headers) {
        Some(key) => (bucket(&rollout.salt, &key), Reason::Sticky),
        None => (bucket_from_random(random()), Reason::Random),
    };
    Decision {
        variant: rollout.variant_for_bucket(b),
        reason,
        override_rejected,
    }
}

/// The subject key: the configured claim (a non-empty text claim), else the peer
/// field, else the configured header, else the configured cookie; empty is absent.
pub fn subject_key(subject: &SubjectSource, headers: &mut impl RequestHeaders) -> Option<String> {
    if let Some(c) = &subject.claim {
        if let Some(v) = headers.claim(c) {
            if let Some(k) = v.as_key() {
                return Some(k.to_string());
            }
        }
    }
    if let Some(p) = subject.peer {
        if let Some(v) = headers.peer(p) {
            if !v.is_empty() {
                return Some(v);
            }
        }
    }
    if let Some(h) = &subject.header {
        if let Some(v) = headers.header(h) {
            if !v.is_empty() {
                return Some(v);
            }
        }
    }
    if let Some(c) = &subject.cookie {
        if let Some(all) = headers.header("cookie") {
            if let Some(v) = cookie_value(&all, c) {
                if !v.is_empty() {
                    return Some(v.to_string());
                }
            }
        }
    }
    None
}

fn holds(c: &Condition, headers: &mut impl RequestHeaders) -> bool {
    let value = match &c.source {
        Source::Header(h) => headers.header(h),
        Source::Cookie(name) => headers
            .header("cookie")
            .and_then(|all| cookie_value(&all, name).map(str::to_string)),
        Source::Peer(p) => headers.peer(*p),
        Source::Claim(name) => {
            let claim = headers.claim(name);
            return match (&c.op, claim) {
                (Op::Present(p), v) => v.is_some() == *p,
                (Op::Contains(e), Some(v)) => v.contains(e),
                (Op::Equals(e), Some(Claim::Text(v))) => &v == e,
                (Op::Prefix(p), Some(Claim::Text(v))) => v.starts_with(p.as_str()),
                _ => false,
            };
        }
    };
    match &c.op {
        Op::Present(p) => value.is_some() == *p,
        Op::Equals(e) => value.as_deref() == Some(e.as_str()),
        Op::Prefix(p) => value.is_some_and(|v| v.starts_with(p.as_str())),
        // compiled for claims only
        Op::Contains(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::parse_plan;
    use std::collections::HashMap;

    struct Map(HashMap<String, String>);
    impl RequestHeaders for Map {
        fn header(&mut self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }
    fn hdrs(pairs: &[(&str, &str)]) -> Map {
        Map(pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    fn rollout(weights: (f64, f64)) -> Rollout {
        let json = format!(
            r#"{{"version":1,"rollouts":[{{"name":"fraud","salt":"fraud-v2",
            "variants":[{{"name":"stable","weight":{}}},{{"name":"canary","weight":{}}}],
            "targeting":[
              {{"variant":"stable","when":[{{"header":"x-region","equals":"eu"}}]}},
              {{"variant":"canary","when":[{{"header":"x-tester","present":true}}]}},
              {{"variant":"canary","when":[{{"cookie":"beta","prefix":"y"}}]}}]}}]}}"#,
            weights.0, weights.1
        );
        parse_plan(json.as_bytes()).unwrap().1.rollouts.remove(0)
    }

    fn subject() -> SubjectSource {
        SubjectSource {
            header: Some("x-user-id".into()),
            cookie: Some("uid".into()),
            ..SubjectSource::default()
        }
    }

    /// Headers plus a verified identity.
    struct Verified(Map, Vec<(String, Claim)>, Option<String>);
    impl RequestHeaders for Verified {
        fn header(&mut self, name: &str) -> Option<String> {
            self.0.header(name)
        }
        fn claim(&mut self, name: &str) -> Option<Claim> {
            self.1
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, c)| c.clone())
        }
        fn peer(&mut self, field: Peer) -> Option<String> {
            (field == Peer::UriSan).then(|| self.2.clone()).flatten()
        }
    }

    #[test]
    fn a_verified_claim_or_peer_is_the_subject_before_any_header() {
        let r = rollout((50.0, 50.0));
        let s = SubjectSource {
            claim: Some("sub".into()),
            peer: Some(Peer::UriSan),
            ..subject()
        };
        let sub = ("sub".to_string(), Claim::Text("alice".into()));
        let mut v = Verified(hdrs(&[("x-user-id", "mallory")]), vec![sub], None);
        assert_eq!(subject_key(&s, &mut v).as_deref(), Some("alice"));
        let mut v = Verified(
            hdrs(&[("x-user-id", "mallory")]),
            vec![],
            Some("spiffe://a".into()),
        );
        assert_eq!(subject_key(&s, &mut v).as_deref(), Some("spiffe://a"));
        // anonymous: the (client-controlled) header
        let mut v = Verified(hdrs(&[("x-user-id", "mallory")]), vec![], None);
        assert_eq!(subject_key(&s, &mut v).as_deref(), Some("mallory"));
        // a list claim is no key
        let groups = ("sub".to_string(), Claim::List(vec!["a".into()]));
        let mut v = Verified(hdrs(&[]), vec![groups], None);
        assert_eq!(decide(&r, &s, None, &mut v, || 0).reason, Reason::Random);
    }

    #[test]
    fn claim_and_peer_conditions() {
        let json = r#"{"version":1,"rollouts":[{"name":"fraud","salt":"s",
            "variants":[{"name":"stable","weight":100},{"name":"canary","weight":0}],
            "targeting":[
              {"variant":"canary","when":[{"claim":"groups","contains":"testers"}]},
              {"variant":"canary","when":[{"claim":"tier","equals":"gold"}]},
              {"variant":"canary","when":[{"peer":"uri_san","prefix":"spiffe://t/"}]}]}]}"#;
        let r = parse_plan(json.as_bytes()).unwrap().1.rollouts.remove(0);
        let s = subject();
        let go = |claims: Vec<(&str, Claim)>, peer: Option<&str>| {
            let claims = claims
                .into_iter()
                .map(|(n, c)| (n.to_string(), c))
                .collect();
            let mut v = Verified(hdrs(&[("x-user-id", "u")]), claims, peer.map(String::from));
            decide(&r, &s, None, &mut v, || 0).variant
        };
        let list = |l: &[&str]| Claim::List(l.iter().map(|x| x.to_string()).collect());
        assert_eq!(go(vec![("groups", list(&["staff", "testers"]))], None), 1);
        assert_eq!(go(vec![("groups", list(&["staff"]))], None), 0);
        assert_eq!(go(vec![("groups", Claim::Text("testers".into()))], None), 1);
        assert_eq!(go(vec![("tier", Claim::Text("gold".into()))], None), 1);
        assert_eq!(
            go(vec![("tier", list(&["gold"]))], None),
            0,
            "a list equals nothing"
        );
        assert_eq!(go(vec![], Some("spiffe://t/alice")), 1);
        assert_eq!(go(vec![], Some("spiffe://u/alice")), 0);
        assert_eq!(go(vec![], None), 0);
    }

    #[test]
    fn sticky_uses_header_then_cookie() {
        let r = rollout((50.0, 50.0));
        let a = decide(
            &r,
            &subject(),
            None,
            &mut hdrs(&[("x-user-id", "u1")]),
            || unreachable!(),
        );
        let b = decide(
            &r,
            &subject(),
            None,
            &mut hdrs(&[("cookie", "uid=u1")]),
            || unreachable!(),
        );
        assert_eq!(a, b);
        assert_eq!(a.reason, Reason::Sticky);
        assert_eq!(a.variant, r.variant_for_bucket(bucket("fraud-v2", "u1")));
    }

    #[test]
    fn no_key_is_random() {
        let r = rollout((50.0, 50.0));
        let d = decide(
            &r,
            &subject(),
            None,
            &mut hdrs(&[("x-user-id", "")]),
            || 9_999,
        );
        assert_eq!(
            d,
            Decision {
                variant: 1,
                reason: Reason::Random,
                override_rejected: false
            }
        );
        let d = decide(&r, &subject(), None, &mut hdrs(&[]), || 10_000);
        assert_eq!(d.variant, 0);
    }

    #[test]
    fn targeting_then_override() {
        let r = rollout((100.0, 0.0));
        let d = decide(
            &r,
            &subject(),
            None,
            &mut hdrs(&[("x-tester", "1"), ("x-user-id", "u")]),
            || 0,
        );
        assert_eq!((d.variant, d.reason), (1, Reason::Targeted));
        let d = decide(
            &r,
            &subject(),
            None,
            &mut hdrs(&[("cookie", "beta=yes")]),
            || 0,
        );
        assert_eq!((d.variant, d.reason), (1, Reason::Targeted));
        // first matching rule wins: eu stays stable even for testers
        let d = decide(
            &r,
            &subject(),
            None,
            &mut hdrs(&[("x-region", "eu"), ("x-tester", "1")]),
            || 0,
        );
        assert_eq!((d.variant, d.reason), (0, Reason::Targeted));
        // override beats targeting
        let d = decide(
            &r,
            &subject(),
            Some("canary"),
            &mut hdrs(&[("x-region", "eu")]),
            || 0,
        );
        assert_eq!((d.variant, d.reason), (1, Reason::Override));
        // unknown override is ignored and reported
        let d = decide(
            &r,
            &subject(),
            Some("nope"),
            &mut hdrs(&[("x-user-id", "u")]),
            || 0,
        );
        assert_eq!(
            (d.variant, d.reason, d.override_rejected),
            (0, Reason::Sticky, true)
        );
    }

    #[test]
    fn raising_candidate_keeps_its_users() {
        let small = rollout((95.0, 5.0));
        let big = rollout((75.0, 25.0));
        let mut on_small = 0;
        for i in 0..20_000 {
            let k = format!("user-{i}");
            let mut h = hdrs(&[("x-user-id", k.as_str())]);
            let a = decide(&small, &subject(), None, &mut h, || 0);
            let b = decide(&big, &subject(), None, &mut h, || 0);
            if a.variant == 1 {
                on_small += 1;
                assert_eq!(b.variant, 1, "{k} left the canary");
            }
        }
        assert!((800..1200).contains(&on_small), "{on_small}");
    }
}
