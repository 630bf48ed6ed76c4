//! Live plans from the control sidecar: the `control` section of the plugin
//! configuration, the poll lease that keeps N workers from polling N times, the
//! small "head" record workers watch, and the judgement of a poll response. Pure
//! logic; the filter does the host calls.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::fields::{check_authority, check_cluster, check_path, check_timeout_ms};
use crate::plan::{parse_plan, Plan, PlanSpec};
use crate::trust::{check_targeting_sources, TrustedSources};
use crate::wire::PollRequest;

fn d_authority() -> String {
    "rollout-control".into()
}
fn d_path() -> String {
    "/v1/plan".into()
}
fn d_interval() -> u64 {
    1000
}
fn d_timeout() -> u64 {
    500
}
fn d_max_bytes() -> usize {
    1 << 20
}

/// `control` in the plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSpec {
    /// Envoy cluster of the sidecar.
    pub cluster: String,
    #[serde(default = "d_authority")]
    pub authority: String,
    #[serde(default = "d_path")]
    pub path: String,
    #[serde(default = "d_interval")]
    pub poll_interval_ms: u64,
    #[serde(default = "d_timeout")]
    pub timeout_ms: u64,
    /// Sent as `Authorization: Bearer <token>` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Larger plan bodies are rejected unread.
    #[serde(default = "d_max_bytes")]
    pub max_plan_bytes: usize,
}

impl ControlSpec {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_cluster("cluster", &self.cluster)?;
        check_authority("authority", &self.authority)?;
        check_path("path", &self.path)?;
        if !(100..=3_600_000).contains(&self.poll_interval_ms) {
            return Err(ConfigError::new(
                "poll_interval_ms",
                "must be between 100 and 3600000",
            ));
        }
        check_timeout_ms("timeout_ms", self.timeout_ms)?;
        if !(1024..=(16 << 20)).contains(&self.max_plan_bytes) {
            return Err(ConfigError::new(
                "max_plan_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if let Some(t) = &self.token {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::new(
                    "token",
                    "must be non-empty printable ASCII",
                ));
            }
        }
        Ok(())
    }

    /// Prefix of this endpoint's shared-data keys: VMs sharing a `vm_id` but
    /// polling different sidecars never mix their plans.
    pub fn key_prefix(&self) -> String {
        format!("model_rollout/{}{}", self.cluster, self.path)
    }

    /// Headers of one poll (see `wire::PollRequest`).
    pub fn poll_headers(
        &self,
        etag: Option<&str>,
        proxy_id: &str,
        version_in_force: u64,
    ) -> Vec<(String, String)> {
        PollRequest {
            path: &self.path,
            authority: &self.authority,
            proxy: proxy_id,
            plan_version: version_in_force,
            etag,
            token: self.token.as_deref(),
        }
        .headers()
    }
}

/// Where the plan in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanSource {
    /// The `plan` of the plugin configuration (or none: version 0).
    Static,
    /// The control sidecar.
    Control,
}

/// A plan from the sidecar replaces the one in force when its version is higher,
/// or equal to a static plan's (the sidecar is the authority for that version), or
/// when it comes from another store epoch than the sidecar plan in force (a restored
/// backup or a new store: its versions start over), whatever its version.
pub fn supersedes(
    candidate: u64,
    candidate_epoch: Option<&str>,
    in_force: u64,
    in_force_epoch: Option<&str>,
    source: PlanSource,
) -> bool {
    let new_epoch = source == PlanSource::Control
        && candidate_epoch.is_some()
        && candidate_epoch != in_force_epoch;
    new_epoch || candidate > in_force || (candidate == in_force && source == PlanSource::Static)
}

// ---------------------------------------------------------------- lease

/// Which root context may poll until when. Stored in shared data as 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub holder: u64,
    pub until_ms: u64,
}

impl Lease {
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        let (h, u) = b.split_at_mut(8);
        h.copy_from_slice(&self.holder.to_le_bytes());
        u.copy_from_slice(&self.until_ms.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Lease> {
        let holder = u64::from_le_bytes(b.get(0..8)?.try_into().ok()?);
        let until_ms = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
        Some(Lease { holder, until_ms })
    }

    /// May `me` take (or renew) the lease at `now_ms`?
    pub fn available_to(current: Option<Lease>, me: u64, now_ms: u64) -> bool {
        match current {
            None => true,
            Some(l) => l.holder == me || l.until_ms <= now_ms,
        }
    }
}

// ---------------------------------------------------------------- head

/// The small record every worker reads on its tick: which plan version is
/// published, when the sidecar last answered, and the ETag to poll with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Head {
    pub version: u64,
    pub last_success_ms: u64,
    pub etag: String,
    /// The published plan's store epoch (empty: none).
    pub epoch: String,
}

impl Head {
    pub fn encode(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}",
            self.version, self.last_success_ms, self.etag, self.epoch
        )
    }

    pub fn decode(b: &[u8]) -> Option<Head> {
        let s = std::str::from_utf8(b).ok()?;
        let mut it = s.splitn(4, '\n');
        Some(Head {
            version: it.next()?.parse().ok()?,
            last_success_ms: it.next()?.parse().ok()?,
            etag: it.next().unwrap_or("").to_string(),
            epoch: it.next().unwrap_or("").to_string(),
        })
    }

    /// The epoch, `None` when empty.
    pub fn epoch(&self) -> Option<&str> {
        Some(self.epoch.as_str()).filter(|e| !e.is_empty())
    }
}

// ---------------------------------------------------------------- poll responses

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollError {
    /// No answer from the sidecar: connection refused or reset, unknown cluster
    /// (Envoy answers such a callout itself, with 503 "upstream connect error").
    Unreachable,
    /// The sidecar did not answer within `timeout_ms` (Envoy's 504).
    Timeout,
    /// The sidecar answered with a status other than 200/304.
    Status,
}

impl PollError {
    pub const ALL: [PollError; 3] = [
        PollError::Unreachable,
        PollError::Timeout,
        PollError::Status,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            PollError::Unreachable => "unreachable",
            PollError::Timeout => "timeout",
            PollError::Status => "status",
        }
    }

    /// Classifies a non-200/304 answer; `body` is its start. Envoy's own local
    /// replies for callouts are recognised by their fixed bodies.
    pub fn classify(status: u32, body: &[u8]) -> PollError {
        let starts = |p: &[u8]| body.starts_with(p);
        match status {
            503 if starts(b"upstream connect error") || starts(b"no healthy upstream") => {
                PollError::Unreachable
            }
            504 if starts(b"upstream request timeout") => PollError::Timeout,
            _ => PollError::Status,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Not JSON, truncated, or not a plan document.
    Malformed,
    /// A plan document that fails validation.
    Invalid,
    /// Larger than `max_plan_bytes`.
    Oversized,
    /// A lower version than the plan in force.
    StaleVersion,
}

impl Rejection {
    pub const ALL: [Rejection; 4] = [
        Rejection::Malformed,
        Rejection::Invalid,
        Rejection::Oversized,
        Rejection::StaleVersion,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::Invalid => "invalid",
            Rejection::Oversized => "oversized",
            Rejection::StaleVersion => "stale_version",
        }
    }
}

#[derive(Debug)]
pub enum PollOutcome {
    NotModified,
    /// The same version as in force: nothing to do.
    Unchanged,
    Accepted {
        spec: Box<PlanSpec>,
        plan: Box<Plan>,
        body: Vec<u8>,
    },
    Rejected(Rejection, String),
    Failed(PollError),
}

/// Judges one poll response. `body` is fetched by the caller only when
/// `body_size <= max_plan_bytes` (pass `None` otherwise); for statuses other than
/// 200 its first bytes suffice. `trusted`: what the plan's targeting may read
/// (`crate::trust`); a plan reading others is invalid.
// Each argument is one independent fact of the poll; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn judge(
    status: Option<u32>,
    body_size: usize,
    body: Option<Vec<u8>>,
    max_plan_bytes: usize,
    in_force: u64,
    in_force_epoch: Option<&str>,
    source: PlanSource,
    trusted: &TrustedSources,
) -> PollOutcome {
    match status {
        None => PollOutcome::Failed(PollError::Unreachable),
        Some(304) => PollOutcome::NotModified,
        Some(200) => {
            if body_size > max_plan_bytes {
                return PollOutcome::Rejected(
                    Rejection::Oversized,
                    format!(
                        "plan body of {body_size} bytes exceeds max_plan_bytes {max_plan_bytes}"
                    ),
                );
            }
            let body = body.unwrap_or_default();
            match parse_plan(&body) {
                Err(e) => {
                    // A document that parsed as JSON but failed the schema or the
                    // rules is "invalid"; anything that is not a JSON object is "malformed".
                    let reason = if serde_json::from_slice::<serde_json::Value>(&body)
                        .map(|v| v.is_object())
                        .unwrap_or(false)
                    {
                        Rejection::Invalid
                    } else {
                        Rejection::Malformed
                    };
                    PollOutcome::Rejected(reason, e.to_string())
                }
                Ok((spec, plan)) => {
                    if let Err(e) = check_targeting_sources(&spec, trusted) {
                        return PollOutcome::Rejected(Rejection::Invalid, e.to_string());
                    }
                    if supersedes(
                        plan.version,
                        spec.epoch.as_deref(),
                        in_force,
                        in_force_epoch,
                        source,
                    ) {
                        PollOutcome::Accepted {
                            spec: Box::new(spec),
                            plan: Box::new(plan),
                            body,
                        }
                    } else if plan.version == in_force {
                        PollOutcome::Unchanged
                    } else {
                        PollOutcome::Rejected(
                            Rejection::StaleVersion,
                            format!(
                                "plan version {} is lower than the version in force {in_force}",
                                plan.version
                            ),
                        )
                    }
                }
            }
        }
        Some(s) => PollOutcome::Failed(PollError::classify(s, body.as_deref().unwrap_or(&[]))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"{"version":5,"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":100}]}]}"#;

    fn j(status: Option<u32>, body: &str, in_force: u64, src: PlanSource) -> PollOutcome {
        judge(
            status,
            body.len(),
            Some(body.as_bytes().to_vec()),
            1 << 20,
            in_force,
            None,
            src,
            &TrustedSources::default(),
        )
    }

    #[test]
    fn a_plan_reading_an_undeclared_header_is_refused() {
        let body = r#"{"version":5,"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":50},{"name":"b","weight":50}],
            "targeting":[{"variant":"b","when":[{"header":"x-tester","present":true}]}]}]}"#;
        let judge_with = |trusted: &TrustedSources| {
            judge(
                Some(200),
                body.len(),
                Some(body.as_bytes().to_vec()),
                1 << 20,
                1,
                None,
                PlanSource::Control,
                trusted,
            )
        };
        let o = judge_with(&TrustedSources::default());
        assert!(
            matches!(&o, PollOutcome::Rejected(Rejection::Invalid, m) if m.contains("rollouts[0].targeting[0].when[0].header")),
            "{o:?}"
        );
        let trusted = TrustedSources {
            headers: vec!["x-tester".to_string()],
            jwt: false,
        };
        let o = judge_with(&trusted);
        assert!(matches!(o, PollOutcome::Accepted { .. }));
    }

    #[test]
    fn a_new_store_epoch_supersedes_whatever_its_version() {
        let c = PlanSource::Control;
        // A restored backup (epoch b) at a lower version replaces epoch a's v9.
        assert!(supersedes(3, Some("b"), 9, Some("a"), c));
        // The same epoch keeps the version rule.
        assert!(!supersedes(3, Some("a"), 9, Some("a"), c));
        assert!(supersedes(10, Some("a"), 9, Some("a"), c));
        // A plan in force from a sidecar without epochs: the first epoch is new.
        assert!(supersedes(3, Some("a"), 9, None, c));
        // A plan without an epoch never jumps back.
        assert!(!supersedes(3, None, 9, Some("a"), c));
        // A static plan in force: the version rule only.
        assert!(!supersedes(3, Some("b"), 9, None, PlanSource::Static));
        let body = PLAN.replace(r#""version":5"#, r#""version":2,"epoch":"b""#);
        let o = judge(
            Some(200),
            body.len(),
            Some(body.into_bytes()),
            1 << 20,
            9,
            Some("a"),
            c,
            &TrustedSources::default(),
        );
        assert!(matches!(o, PollOutcome::Accepted { .. }));
        let o = judge(
            Some(200),
            PLAN.len(),
            Some(PLAN.into()),
            1 << 20,
            9,
            Some("a"),
            c,
            &TrustedSources::default(),
        );
        assert!(matches!(
            o,
            PollOutcome::Rejected(Rejection::StaleVersion, _)
        ));
    }

    #[test]
    fn judging() {
        assert!(matches!(
            j(Some(200), PLAN, 4, PlanSource::Control),
            PollOutcome::Accepted { .. }
        ));
        assert!(matches!(
            j(Some(200), PLAN, 5, PlanSource::Static),
            PollOutcome::Accepted { .. }
        ));
        assert!(matches!(
            j(Some(200), PLAN, 5, PlanSource::Control),
            PollOutcome::Unchanged
        ));
        assert!(matches!(
            j(Some(200), PLAN, 6, PlanSource::Control),
            PollOutcome::Rejected(Rejection::StaleVersion, _)
        ));
        assert!(matches!(
            j(Some(304), "", 6, PlanSource::Control),
            PollOutcome::NotModified
        ));
        assert!(matches!(
            j(None, "", 6, PlanSource::Control),
            PollOutcome::Failed(PollError::Unreachable)
        ));
        assert!(matches!(
            j(Some(500), "oops", 1, PlanSource::Control),
            PollOutcome::Failed(PollError::Status)
        ));
        assert!(matches!(
            j(Some(200), "garbage", 1, PlanSource::Control),
            PollOutcome::Rejected(Rejection::Malformed, _)
        ));
        assert!(matches!(
            j(Some(200), &PLAN[..40], 1, PlanSource::Control),
            PollOutcome::Rejected(Rejection::Malformed, _)
        ));
        let bad = PLAN.replace("100", "99");
        match j(Some(200), &bad, 1, PlanSource::Control) {
            PollOutcome::Rejected(Rejection::Invalid, m) => {
                assert!(m.contains("rollouts[0].variants"), "{m}")
            }
            o => panic!("{o:?}"),
        }
        let o = judge(
            Some(200),
            10 << 20,
            None,
            1 << 20,
            1,
            None,
            PlanSource::Control,
            &TrustedSources::default(),
        );
        assert!(matches!(o, PollOutcome::Rejected(Rejection::Oversized, _)));
    }

    #[test]
    fn lease() {
        let l = Lease {
            holder: 7,
            until_ms: 1000,
        };
        assert_eq!(Lease::decode(&l.encode()), Some(l));
        assert!(Lease::available_to(None, 1, 0));
        assert!(Lease::available_to(Some(l), 7, 500));
        assert!(!Lease::available_to(Some(l), 8, 999));
        assert!(Lease::available_to(Some(l), 8, 1000));
        assert_eq!(Lease::decode(b"short"), None);
    }

    #[test]
    fn head_round_trip() {
        let h = Head {
            version: 3,
            last_success_ms: 99,
            etag: "\"v3\"".into(),
            epoch: "0123abcd".into(),
        };
        assert_eq!(Head::decode(h.encode().as_bytes()), Some(h));
        assert_eq!(Head::decode(b"x"), None);
    }

    #[test]
    fn control_validation_names_fields() {
        let mut c = ControlSpec {
            cluster: "rollout_control".into(),
            authority: d_authority(),
            path: d_path(),
            poll_interval_ms: 1000,
            timeout_ms: 500,
            token: None,
            max_plan_bytes: d_max_bytes(),
        };
        assert!(c.validate().is_ok());
        c.poll_interval_ms = 5;
        assert_eq!(c.validate().unwrap_err().field, "poll_interval_ms");
        c.poll_interval_ms = 1000;
        c.path = "v1/plan".into();
        assert_eq!(c.validate().unwrap_err().field, "path");
    }
}
