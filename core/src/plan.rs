//! The rollout plan: its JSON schema (`PlanSpec`, what operators write and the
//! control sidecar serves), validation, and the compiled form (`Plan`) that the
//! request path evaluates without parsing anything.
//!
//! Schema version 1. Unknown fields are rejected so that a typo never silently
//! turns into a default.

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, UnknownRollout};
use crate::fields::{
    check_claim_name, check_cookie_name, check_json_safe, check_name, check_salt, check_value,
    expect_object, has_control, weight_to_bp, MAX_VALUE_LEN,
};
use crate::hash::BUCKETS;
use crate::headers::{check_role_header, Role};

/// The schema version this build understands.
pub const SCHEMA_VERSION: u32 = 1;
/// Bounds: every list a plan can hold is bounded.
pub const MAX_ROLLOUTS: usize = 64;
pub const MAX_VARIANTS: usize = 16;
pub const MAX_RULES: usize = 32;
pub const MAX_CONDITIONS: usize = 8;

/// Longest store epoch id a plan may carry.
pub const MAX_EPOCH_LEN: usize = 64;

fn default_schema() -> u32 {
    SCHEMA_VERSION
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    /// Schema of this document; only 1 exists.
    #[serde(default = "default_schema")]
    pub schema_version: u32,
    /// Monotonic plan version: a plan with a lower version than the one in force is ignored.
    pub version: u64,
    /// The control sidecar's store epoch, set by the sidecar on every plan it serves
    /// (absent in static plans). A sidecar plan of another epoch replaces the one in
    /// force even with a lower version: a restored backup or a new store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    pub rollouts: Vec<RolloutSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matcher: MatchSpec,
    /// Assignment epoch: a new salt reshuffles every subject.
    pub salt: String,
    /// The first variant is the stable one; the last is the candidate whose range
    /// grows from the top end of the bucket space.
    pub variants: Vec<VariantSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targeting: Vec<TargetRuleSpec>,
    /// Shadow copies of sampled requests, compared with the primary's answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<crate::shadow::ShadowSpec>,
    /// Health checks of the primary answers (missing/null/NaN/out of range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<crate::output::OutputSpec>,
    /// A/B experiment: assignments are recorded and judged against feedback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<crate::experiment::ExperimentSpec>,
    /// Progressive delivery: steps, checks, rollback rules, local trip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::policy::PolicySpec>,
    /// Where the sidecar is in the policy's steps (written by the sidecar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<crate::policy::ProgressSpec>,
    /// Operator pause: the sidecar makes no automatic change to a paused rollout.
    /// Routing is unaffected (the weights in force keep applying).
    #[serde(default, skip_serializing_if = "is_false")]
    pub paused: bool,
    /// Webhooks told about the rollout's events, gate webhooks that confirm its
    /// steps (read by the sidecar only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<crate::notify::NotifySpec>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// `:authority` without port, case-insensitive; `*.example.com` matches subdomains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Plain string prefix of `:path`, like Envoy's route `prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Model name in an inference path: `/v2/models/{model}/...` (Open Inference
    /// Protocol) or `/v1/models/{model}:predict` (KServe v1 / TF Serving).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    pub name: String,
    /// Percent of subjects, at most two decimals; the weights of a rollout sum to 100.
    pub weight: f64,
    /// What this variant serves: name, version, artifact, creation time, notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<crate::model::ModelSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRuleSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The variant every request matching all conditions is pinned to.
    pub variant: String,
    /// All conditions must hold.
    pub when: Vec<ConditionSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// A claim of the verified JWT (`crate::identity`; the plugin configuration's
    /// `jwt` says where Envoy put the payload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// A field of the verified mTLS peer certificate: `uri_san`, `dns_san`, `subject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    /// A list claim (`groups`) has this element (a text claim: equals it). Claims only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// The operator's statement that this input is the client's word (not in the
    /// plugin configuration's `trusted_headers`); see `crate::trust`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub client_controlled: bool,
}

// ---------------------------------------------------------------------------
// Compiled form

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub version: u64,
    pub rollouts: Vec<Rollout>,
    /// True when some rollout matches on host, so `:authority` must be read.
    pub needs_host: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub name: String,
    pub paused: bool,
    pub shadow: Option<crate::shadow::Shadow>,
    pub output: Option<crate::output::Output>,
    pub experiment: Option<crate::experiment::Experiment>,
    /// Index of the policy's candidate (the last variant without a policy).
    pub candidate: usize,
    pub trip: Option<crate::policy::Trip>,
    pub matcher: Matcher,
    pub salt: String,
    pub variants: Vec<Variant>,
    pub targeting: Vec<TargetRule>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    pub name: String,
    /// Weight in basis points (1/100 of a percent).
    pub weight_bp: u16,
    /// Buckets `[start, end)` owned by this variant.
    pub start: u16,
    pub end: u16,
    /// The model metadata's `name:version`, echoed with `echo.model`.
    pub model_header: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Matcher {
    pub host: Option<HostMatch>,
    pub path_prefix: Option<String>,
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetRule {
    pub variant: usize,
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub source: Source,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Header(String),
    Cookie(String),
    Claim(String),
    Peer(crate::identity::Peer),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Equals(String),
    Prefix(String),
    Present(bool),
    Contains(String),
}

// ---------------------------------------------------------------------------
// Validation

/// Parses and validates a plan document (as served by the control sidecar).
pub fn parse_plan(bytes: &[u8]) -> Result<(PlanSpec, Plan), ConfigError> {
    expect_object(bytes, "plan")?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let spec: PlanSpec =
        serde_path_to_error::deserialize(&mut de).map_err(ConfigError::from_serde)?;
    de.end()
        .map_err(|e| ConfigError::new("", format!("trailing data after the plan: {e}")))?;
    let plan = spec.compile()?;
    Ok((spec, plan))
}

impl PlanSpec {
    /// Validates the whole document and builds the compiled plan. Field paths in
    /// errors are relative to the plan (`rollouts[0].salt`).
    pub fn compile(&self) -> Result<Plan, ConfigError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(ConfigError::new(
                "schema_version",
                format!(
                    "{} is not supported (this build reads schema_version {SCHEMA_VERSION})",
                    self.schema_version
                ),
            ));
        }
        check_json_safe("version", self.version)?;
        if let Some(e) = &self.epoch {
            if e.is_empty()
                || e.len() > MAX_EPOCH_LEN
                || !e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(ConfigError::new(
                    "epoch",
                    format!("must be 1 to {MAX_EPOCH_LEN} letters, digits or '-'"),
                ));
            }
        }
        if self.rollouts.len() > MAX_ROLLOUTS {
            return Err(ConfigError::new(
                "rollouts",
                format!("at most {MAX_ROLLOUTS} rollouts"),
            ));
        }
        let mut rollouts: Vec<Rollout> = Vec::with_capacity(self.rollouts.len());
        for (i, r) in self.rollouts.iter().enumerate() {
            let path = format!("rollouts[{i}]");
            let compiled = r.compile().map_err(|e| e.within(&path))?;
            if rollouts.iter().any(|o| o.name == compiled.name) {
                return Err(ConfigError::new(
                    format!("{path}.name"),
                    format!("duplicate rollout name {:?}", compiled.name),
                ));
            }
            rollouts.push(compiled);
        }
        let needs_host = rollouts.iter().any(|r| r.matcher.host.is_some());
        Ok(Plan {
            version: self.version,
            rollouts,
            needs_host,
        })
    }
}

impl RolloutSpec {
    fn compile(&self) -> Result<Rollout, ConfigError> {
        check_name("name", &self.name)?;
        check_salt("salt", &self.salt)?;
        let matcher = self.matcher.compile().map_err(|e| e.within("match"))?;
        if let Some(n) = &self.notify {
            n.validate().map_err(|e| e.within("notify"))?;
        }
        if self.variants.is_empty() || self.variants.len() > MAX_VARIANTS {
            return Err(ConfigError::new(
                "variants",
                format!("must list 1 to {MAX_VARIANTS} variants"),
            ));
        }
        let mut variants: Vec<Variant> = Vec::with_capacity(self.variants.len());
        let mut start: u32 = 0;
        for (i, v) in self.variants.iter().enumerate() {
            let vp = format!("variants[{i}]");
            check_name(&format!("{vp}.name"), &v.name)?;
            if variants.iter().any(|o| o.name == v.name) {
                return Err(ConfigError::new(
                    format!("{vp}.name"),
                    format!("duplicate variant name {:?}", v.name),
                ));
            }
            let bp = weight_to_bp(&format!("{vp}.weight"), v.weight)?;
            let model_header = match &v.model {
                Some(m) => Some(m.compile().map_err(|e| e.within(&format!("{vp}.model")))?),
                None => None,
            };
            let end = start + u32::from(bp);
            variants.push(Variant {
                name: v.name.clone(),
                weight_bp: bp,
                start: u16::try_from(start.min(u32::from(BUCKETS))).unwrap_or(BUCKETS),
                end: u16::try_from(end.min(u32::from(BUCKETS))).unwrap_or(BUCKETS),
                model_header,
            });
            start = end;
        }
        if start != u32::from(BUCKETS) {
            return Err(ConfigError::new(
                "variants",
                format!(
                    "weights sum to {}, they must sum to 100",
                    f64::from(start) / 100.0
                ),
            ));
        }
        if self.targeting.len() > MAX_RULES {
            return Err(ConfigError::new(
                "targeting",
                format!("at most {MAX_RULES} rules"),
            ));
        }
        let mut targeting = Vec::with_capacity(self.targeting.len());
        for (i, t) in self.targeting.iter().enumerate() {
            let rp = format!("targeting[{i}]");
            targeting.push(t.compile(&variants).map_err(|e| e.within(&rp))?);
        }
        let shadow = match &self.shadow {
            Some(s) => Some(s.compile(&self.salt).map_err(|e| e.within("shadow"))?),
            None => None,
        };
        let output = match &self.output {
            Some(o) => Some(o.compile().map_err(|e| e.within("output"))?),
            None => None,
        };
        let experiment = match &self.experiment {
            Some(x) => Some(x.compile().map_err(|e| e.within("experiment"))?),
            None => None,
        };
        let names: Vec<String> = variants.iter().map(|v| v.name.clone()).collect();
        let (candidate, trip) = match &self.policy {
            Some(p) => p
                .compile(
                    &names,
                    shadow.is_some(),
                    output.is_some(),
                    experiment.is_some(),
                )
                .map_err(|e| e.within("policy"))?,
            None => (variants.len().saturating_sub(1), None),
        };
        let has_distribution = output.as_ref().is_some_and(|o| o.distribution.is_some());
        if let Some(p) = &self.policy {
            for (i, c) in p.checks.iter().enumerate() {
                if c.metric == crate::policy::CheckMetric::PredictionDrift && !has_distribution {
                    return Err(ConfigError::new(
                        format!("policy.checks[{i}].metric"),
                        "prediction_drift needs output.distribution (the bins) in the rollout",
                    ));
                }
            }
        }
        if let Some(pr) = &self.progress {
            let steps = self.policy.as_ref().map(|p| p.steps.len()).unwrap_or(0);
            if pr.step >= steps {
                return Err(ConfigError::new(
                    "progress.step",
                    format!("{} is not a step of the policy ({steps} steps)", pr.step),
                ));
            }
        }
        Ok(Rollout {
            name: self.name.clone(),
            paused: self.paused,
            shadow,
            output,
            experiment,
            candidate,
            trip,
            matcher,
            salt: self.salt.clone(),
            variants,
            targeting,
        })
    }
}

impl MatchSpec {
    fn compile(&self) -> Result<Matcher, ConfigError> {
        let host = match &self.host {
            None => None,
            Some(h) => {
                let h = h.to_ascii_lowercase();
                let valid = |s: &str| {
                    !s.is_empty()
                        && s.len() <= 253
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                };
                if let Some(rest) = h.strip_prefix("*.") {
                    if !valid(rest) {
                        return Err(ConfigError::new(
                            "host",
                            format!("{h:?} is not a host name"),
                        ));
                    }
                    Some(HostMatch::Suffix(format!(".{rest}")))
                } else {
                    if !valid(&h) {
                        return Err(ConfigError::new(
                            "host",
                            format!("{h:?} is not a host name"),
                        ));
                    }
                    Some(HostMatch::Exact(h))
                }
            }
        };
        if let Some(p) = &self.path_prefix {
            if !p.starts_with('/') {
                return Err(ConfigError::new("path_prefix", "must start with '/'"));
            }
            check_value("path_prefix", p)?;
        }
        if let Some(m) = &self.model {
            let ok = !m.is_empty()
                && m.len() <= MAX_VALUE_LEN
                && !m.contains(['/', ':', '?', '#'])
                && !has_control(m);
            if !ok {
                return Err(ConfigError::new(
                    "model",
                    "must be a non-empty model name without '/', ':', '?', '#' or control characters",
                ));
            }
        }
        Ok(Matcher {
            host,
            path_prefix: self.path_prefix.clone(),
            model: self.model.clone(),
        })
    }
}

impl TargetRuleSpec {
    fn compile(&self, variants: &[Variant]) -> Result<TargetRule, ConfigError> {
        if let Some(n) = &self.name {
            check_value("name", n)?;
        }
        let variant = variants
            .iter()
            .position(|v| v.name == self.variant)
            .ok_or_else(|| {
                ConfigError::new(
                    "variant",
                    format!("{:?} is not a variant of this rollout", self.variant),
                )
            })?;
        if self.when.is_empty() || self.when.len() > MAX_CONDITIONS {
            return Err(ConfigError::new(
                "when",
                format!("must list 1 to {MAX_CONDITIONS} conditions"),
            ));
        }
        let mut when = Vec::with_capacity(self.when.len());
        for (i, c) in self.when.iter().enumerate() {
            when.push(c.compile().map_err(|e| e.within(&format!("when[{i}]")))?);
        }
        Ok(TargetRule { variant, when })
    }
}

impl ConditionSpec {
    fn compile(&self) -> Result<Condition, ConfigError> {
        let source = match (&self.header, &self.cookie, &self.claim, &self.peer) {
            (Some(h), None, None, None) => {
                Source::Header(check_role_header("header", h, Role::Read)?)
            }
            (None, Some(c), None, None) => {
                check_cookie_name("cookie", c)?;
                Source::Cookie(c.clone())
            }
            (None, None, Some(c), None) => {
                check_claim_name("claim", c)?;
                Source::Claim(c.clone())
            }
            (None, None, None, Some(p)) => Source::Peer(crate::identity::Peer::parse("peer", p)?),
            _ => {
                return Err(ConfigError::new(
                    "",
                    "needs exactly one of \"header\", \"cookie\", \"claim\" or \"peer\"",
                ))
            }
        };
        let op = match (&self.equals, &self.prefix, self.present, &self.contains) {
            (Some(v), None, None, None) => {
                check_value("equals", v)?;
                Op::Equals(v.clone())
            }
            (None, Some(v), None, None) => {
                check_value("prefix", v)?;
                Op::Prefix(v.clone())
            }
            (None, None, Some(p), None) => Op::Present(p),
            (None, None, None, Some(v)) => {
                check_value("contains", v)?;
                if !matches!(source, Source::Claim(_)) {
                    return Err(ConfigError::new(
                        "contains",
                        "applies to a claim only (a list claim such as groups)",
                    ));
                }
                Op::Contains(v.clone())
            }
            _ => {
                return Err(ConfigError::new(
                    "",
                    "needs exactly one of \"equals\", \"prefix\", \"present\" or \"contains\"",
                ))
            }
        };
        Ok(Condition { source, op })
    }
}

// ---------------------------------------------------------------------------
// Lookups

impl PlanSpec {
    /// The position of the rollout called `name`.
    pub fn rollout_index(&self, name: &str) -> Result<usize, UnknownRollout> {
        self.rollouts
            .iter()
            .position(|r| r.name == name)
            .ok_or_else(|| self.unknown(name))
    }

    /// The rollout called `name`.
    pub fn rollout_named(&self, name: &str) -> Result<&RolloutSpec, UnknownRollout> {
        self.rollouts
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| self.unknown(name))
    }

    /// The rollout called `name`, to edit.
    pub fn rollout_named_mut(&mut self, name: &str) -> Result<&mut RolloutSpec, UnknownRollout> {
        match self.rollouts.iter().position(|r| r.name == name) {
            Some(i) => self
                .rollouts
                .get_mut(i)
                .ok_or_else(|| UnknownRollout::new(name, [])),
            None => Err(self.unknown(name)),
        }
    }

    fn unknown(&self, name: &str) -> UnknownRollout {
        UnknownRollout::new(name, self.rollouts.iter().map(|r| r.name.as_str()))
    }
}

impl RolloutSpec {
    /// The candidate's index: `policy.candidate`, else the last variant.
    pub fn candidate_index(&self) -> Option<usize> {
        match self.policy.as_ref().and_then(|p| p.candidate.as_ref()) {
            Some(c) => self.variants.iter().position(|v| &v.name == c),
            None => self.variants.len().checked_sub(1),
        }
    }

    /// The candidate's name (see [`RolloutSpec::candidate_index`]).
    pub fn candidate_name(&self) -> Option<&str> {
        self.candidate_index()
            .and_then(|i| self.variants.get(i))
            .map(|v| v.name.as_str())
    }
}

impl Plan {
    /// The compiled rollout called `name`.
    pub fn rollout_named(&self, name: &str) -> Result<&Rollout, UnknownRollout> {
        self.rollouts
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| UnknownRollout::new(name, self.rollouts.iter().map(|r| r.name.as_str())))
    }
}

// ---------------------------------------------------------------------------
// Matching

impl Plan {
    /// The first rollout whose match fits the request, if any.
    pub fn find_rollout(&self, host: Option<&str>, path: &str) -> Option<usize> {
        self.rollouts
            .iter()
            .position(|r| r.matcher.matches(host, path))
    }

    pub fn rollout(&self, i: usize) -> Option<&Rollout> {
        self.rollouts.get(i)
    }
}

impl Matcher {
    pub fn matches(&self, host: Option<&str>, path: &str) -> bool {
        if let Some(p) = &self.path_prefix {
            if !path.starts_with(p.as_str()) {
                return false;
            }
        }
        if let Some(m) = &self.model {
            if model_in_path(path) != Some(m.as_str()) {
                return false;
            }
        }
        if let Some(hm) = &self.host {
            let Some(h) = host else { return false };
            let h = strip_port(h);
            match hm {
                HostMatch::Exact(e) => {
                    if !h.eq_ignore_ascii_case(e) {
                        return false;
                    }
                }
                HostMatch::Suffix(s) => {
                    let ok = h.len() > s.len()
                        && h.get(h.len() - s.len()..)
                            .is_some_and(|tail| tail.eq_ignore_ascii_case(s));
                    if !ok {
                        return false;
                    }
                }
            }
        }
        true
    }
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        // IPv6 literal: "[::1]:8080"
        return match authority.find(']') {
            Some(i) => authority.get(..=i).unwrap_or(authority),
            None => authority,
        };
    }
    match authority.rfind(':') {
        Some(i) => authority.get(..i).unwrap_or(authority),
        None => authority,
    }
}

/// The model name of an inference path: `/v2/models/{name}[/...]` or
/// `/v1/models/{name}[:verb|/...]`.
pub fn model_in_path(path: &str) -> Option<&str> {
    let rest = path
        .strip_prefix("/v2/models/")
        .or_else(|| path.strip_prefix("/v1/models/"))?;
    let end = rest.find(['/', ':', '?', '#']).unwrap_or(rest.len());
    let name = rest.get(..end)?;
    if name.is_empty() {
        None
    } else {
        Some(name)
    }
}

impl Rollout {
    /// The variant owning `bucket`.
    pub fn variant_for_bucket(&self, bucket: u16) -> usize {
        self.variants
            .iter()
            .position(|v| bucket >= v.start && bucket < v.end)
            // Unreachable for a validated plan (ranges cover [0, 10000)); stable is the safe answer.
            .unwrap_or(0)
    }

    pub fn variant_index(&self, name: &str) -> Option<usize> {
        self.variants.iter().position(|v| v.name == name)
    }

    /// The echoed model header value (`name:version`) of variant `i`, if it has metadata.
    pub fn model_header(&self, i: usize) -> Option<&str> {
        self.variants.get(i).and_then(|v| v.model_header.as_deref())
    }

    pub fn variant_name(&self, i: usize) -> &str {
        self.variants.get(i).map(|v| v.name.as_str()).unwrap_or("")
    }

    /// How the health of this rollout's answers is judged, primary and shadow
    /// alike: at the `output` section's pointer and range when the rollout has one,
    /// else at the shadow's first compare pointer (no range). `None` without either.
    pub fn health_rule(&self) -> Option<HealthRule<'_>> {
        match (&self.output, &self.shadow) {
            (Some(o), _) => Some(HealthRule {
                pointer: &o.pointer,
                min: o.min,
                max: o.max,
            }),
            (None, Some(s)) => Some(HealthRule {
                pointer: s.compare.pointers.first().map_or("", String::as_str),
                min: None,
                max: None,
            }),
            (None, None) => None,
        }
    }
}

/// Where and how an answer's output is judged (see [`Rollout::health_rule`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthRule<'a> {
    pub pointer: &'a str,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(json: &str) -> Result<Plan, ConfigError> {
        parse_plan(json.as_bytes()).map(|(_, p)| p)
    }

    const BASE: &str = r#"{"version":1,"rollouts":[{"name":"fraud","match":{"path_prefix":"/v2/models/fraud"},
        "salt":"s1","variants":[{"name":"stable","weight":90},{"name":"canary","weight":10,
        "model":{"name":"fraud","version":"2","created":"2025-06-01T00:00:00Z","notes":"n"}}],
        "output":{"distribution":{"labels":["fraud","ok"]}}}]}"#;

    #[test]
    fn ranges_are_contiguous_in_list_order() {
        let p = plan(BASE).unwrap();
        let r = &p.rollouts[0];
        assert_eq!((r.variants[0].start, r.variants[0].end), (0, 9000));
        assert_eq!((r.variants[1].start, r.variants[1].end), (9000, 10000));
        assert_eq!(r.variant_for_bucket(8999), 0);
        assert_eq!(r.variant_for_bucket(9000), 1);
        assert_eq!(r.variant_for_bucket(9999), 1);
    }

    #[test]
    fn two_decimal_weights() {
        let p = plan(
            r#"{"version":1,"rollouts":[{"name":"r","salt":"s","variants":[
            {"name":"a","weight":99.99},{"name":"b","weight":0.01}]}]}"#,
        )
        .unwrap();
        assert_eq!(p.rollouts[0].variants[1].weight_bp, 1);
        let e = plan(
            r#"{"version":1,"rollouts":[{"name":"r","salt":"s","variants":[
            {"name":"a","weight":99.995},{"name":"b","weight":0.005}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "rollouts[0].variants[0].weight");
    }

    #[test]
    fn weights_must_sum_to_100() {
        let e = plan(
            r#"{"version":1,"rollouts":[{"name":"r","salt":"s","variants":[
            {"name":"a","weight":50},{"name":"b","weight":40}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "rollouts[0].variants");
        assert!(e.message.contains("90"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"{"version":1,"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weigth":100}]}]}"#,
                "rollouts[0].variants[0].weigth",
            ),
            (
                r#"{"version":1,"rollouts":[{"name":"r x","salt":"s","variants":[{"name":"a","weight":100}]}]}"#,
                "rollouts[0].name",
            ),
            (
                r#"{"version":1,"rollouts":[{"name":"r","salt":"","variants":[{"name":"a","weight":100}]}]}"#,
                "rollouts[0].salt",
            ),
            (
                r#"{"version":1,"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":-1}]}]}"#,
                "rollouts[0].variants[0].weight",
            ),
            (
                r#"{"version":1,"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":"x"}]}]}"#,
                "rollouts[0].variants[0].weight",
            ),
            (
                r#"{"version":1,"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":50},{"name":"a","weight":50}]}]}"#,
                "rollouts[0].variants[1].name",
            ),
            (
                r#"{"version":1,"rollouts":[{"name":"r","salt":"s","match":{"path_prefix":"v2"},"variants":[{"name":"a","weight":100}]}]}"#,
                "rollouts[0].match.path_prefix",
            ),
            (
                r#"{"version":1,"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":100}],"targeting":[{"variant":"zz","when":[{"header":"x","present":true}]}]}]}"#,
                "rollouts[0].targeting[0].variant",
            ),
            (
                r#"{"version":1,"rollouts":[{"name":"r","salt":"s","variants":[{"name":"a","weight":100}],"targeting":[{"variant":"a","when":[{"header":"x","present":true,"equals":"y"}]}]}]}"#,
                "rollouts[0].targeting[0].when[0]",
            ),
            (
                r#"{"version":1,"rollouts":[{"name":"r","salt":"s","variants":[]}]}"#,
                "rollouts[0].variants",
            ),
            (
                r#"{"version":1,"schema_version":2,"rollouts":[]}"#,
                "schema_version",
            ),
            (r#"{"rollouts":[]}"#, ""),
        ];
        for (json, field) in cases {
            let e = plan(json).unwrap_err();
            assert_eq!(e.field, field, "{json} -> {e}");
        }
    }

    #[test]
    fn duplicate_rollouts_rejected() {
        let e = plan(
            r#"{"version":1,"rollouts":[
            {"name":"r","salt":"s","variants":[{"name":"a","weight":100}]},
            {"name":"r","salt":"s","variants":[{"name":"a","weight":100}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "rollouts[1].name");
    }

    #[test]
    fn matching() {
        let m = Matcher {
            host: Some(HostMatch::Suffix(".example.com".into())),
            path_prefix: Some("/v2/".into()),
            model: Some("fraud".into()),
        };
        assert!(m.matches(Some("api.example.com:8080"), "/v2/models/fraud/infer"));
        assert!(m.matches(Some("API.Example.com"), "/v2/models/fraud"));
        assert!(!m.matches(Some("example.com"), "/v2/models/fraud/infer"));
        assert!(!m.matches(None, "/v2/models/fraud/infer"));
        assert!(!m.matches(Some("a.example.com"), "/v2/models/fraudulent/infer"));
        assert_eq!(model_in_path("/v1/models/iris:predict"), Some("iris"));
        assert_eq!(model_in_path("/v2/models/"), None);
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }

    #[test]
    fn first_match_wins_and_unmatched_is_none() {
        let p = plan(
            r#"{"version":3,"rollouts":[
            {"name":"a","match":{"path_prefix":"/v2/models/fraud"},"salt":"s","variants":[{"name":"x","weight":100}]},
            {"name":"b","match":{"path_prefix":"/v2/"},"salt":"s","variants":[{"name":"x","weight":100}]}]}"#,
        )
        .unwrap();
        assert_eq!(p.find_rollout(None, "/v2/models/fraud/infer"), Some(0));
        assert_eq!(p.find_rollout(None, "/v2/models/churn/infer"), Some(1));
        assert_eq!(p.find_rollout(None, "/healthz"), None);
        assert!(!p.needs_host);
    }

    #[test]
    fn health_rule_prefers_the_output_section() {
        let with = |sections: &str| {
            plan(&format!(
                r#"{{"version":1,"rollouts":[{{"name":"r","salt":"s",
                "variants":[{{"name":"a","weight":100}}]{sections}}}]}}"#
            ))
            .unwrap()
        };
        let shadow =
            r#","shadow":{"cluster":"sh","percent":1,"compare":{"pointers":["/p/0","/p/1"]}}"#;
        let output = r#","output":{"pointer":"/o","min":0,"max":1}"#;
        let p = with(&format!("{shadow}{output}"));
        let rule = p.rollouts[0].health_rule().unwrap();
        assert_eq!(
            (rule.pointer, rule.min, rule.max),
            ("/o", Some(0.0), Some(1.0))
        );
        let p = with(shadow);
        let rule = p.rollouts[0].health_rule().unwrap();
        assert_eq!((rule.pointer, rule.min, rule.max), ("/p/0", None, None));
        let p = with(output);
        assert_eq!(p.rollouts[0].health_rule().unwrap().pointer, "/o");
        assert_eq!(with("").rollouts[0].health_rule(), None);
    }

    #[test]
    fn model_metadata_compiles_and_names_bad_fields() {
        let with = |model: &str| {
            plan(&format!(
                r#"{{"version":1,"rollouts":[{{"name":"r","salt":"s","variants":[
                {{"name":"a","weight":90}},{{"name":"b","weight":10,"model":{model}}}]}}]}}"#
            ))
        };
        let p = with(r#"{"name":"fraud-xgb","version":"2.4.1","uri":"gs://m/fraud"}"#).unwrap();
        assert_eq!(p.rollouts[0].model_header(1), Some("fraud-xgb:2.4.1"));
        assert_eq!(p.rollouts[0].model_header(0), None);
        let e = with(r#"{"name":"x","version":"1","image_digest":"sha256:00"}"#).unwrap_err();
        assert_eq!(e.field, "rollouts[0].variants[1].model.image_digest");
        let e = with(r#"{"name":"x","version":"1","created":"yesterday"}"#).unwrap_err();
        assert_eq!(e.field, "rollouts[0].variants[1].model.created");
        let e = with(r#"{"name":"x","version":"1","url":"s3://a/b"}"#).unwrap_err();
        assert_eq!(e.field, "rollouts[0].variants[1].model.url");
    }

    #[test]
    fn drift_checks_need_bins() {
        let with = |output: &str| {
            plan(&format!(
                r#"{{"version":1,"rollouts":[{{"name":"r","salt":"s","variants":[
                {{"name":"a","weight":90}},{{"name":"b","weight":10}}]{output},
                "policy":{{"steps":[{{"weight":10}}],"checks":[
                  {{"metric":"error_rate","max":0.1}},
                  {{"metric":"prediction_drift","method":"psi","max":0.25}}]}}}}]}}"#
            ))
        };
        assert_eq!(
            with(r#","output":{"max":1}"#).unwrap_err().field,
            "rollouts[0].policy.checks[1].metric"
        );
        assert_eq!(
            with("").unwrap_err().field,
            "rollouts[0].policy.checks[1].metric"
        );
        let p = with(r#","output":{"distribution":{"edges":[0,0.5,1]}}"#).unwrap();
        let d = p.rollouts[0].output.as_ref().unwrap().distribution.as_ref();
        assert_eq!(d.unwrap().bins(), 5);
    }

    #[test]
    fn spec_round_trips() {
        let (spec, _) = parse_plan(BASE.as_bytes()).unwrap();
        let text = serde_json::to_string(&spec).unwrap();
        let (again, _) = parse_plan(text.as_bytes()).unwrap();
        assert_eq!(spec, again);
    }
}
