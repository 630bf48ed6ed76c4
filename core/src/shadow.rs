//! Shadow deployments: the `shadow` section of a rollout (where copies go, how
//! they are compared and recorded), sampling and the headers of a copy. How two
//! answers compare is `crate::answer`. Pure logic.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::fields::{
    check_authority, check_cluster, check_header_name, check_path, check_pointer, check_salt,
    check_size, check_timeout_ms, weight_to_bp,
};

use crate::answer::{CompareSpec, DEFAULT_MAX_BODY_BYTES};

use crate::hash::{bucket, bucket_from_random};

/// Headers never copied to a shadow, whatever the configuration says.
pub const DEFAULT_STRIP: [&str; 4] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
];
/// Hop-by-hop and proxy-managed headers Envoy rejects or rewrites on a callout.
const NEVER_COPY: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-internal",
];
pub const SHADOW_HEADER: &str = "x-shadow-request";

fn d_methods() -> Vec<String> {
    vec!["POST".into()]
}
fn d_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn d_timeout() -> u64 {
    5_000
}
fn d_in_flight() -> u32 {
    64
}
fn d_sample() -> f64 {
    1.0
}
fn d_budget() -> u32 {
    60
}

/// `rollouts[].shadow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    /// Envoy cluster of the shadow model.
    pub cluster: String,
    /// Percent of requests (or users, when `sticky`) shadowed; two decimals.
    pub percent: f64,
    /// Shadow the same users every time (bucket of the subject key under
    /// `salt`); requests without a key are sampled per request.
    #[serde(default)]
    pub sticky: bool,
    /// Salt of sticky sampling; default `<rollout salt>/shadow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// `:authority` of the copy; default: the primary's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// `:path` of the copy; default: the primary's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default = "d_methods")]
    pub methods: Vec<String>,
    /// Larger request bodies are not shadowed (counted); the primary is unaffected.
    #[serde(default = "d_max_body")]
    pub max_body_bytes: usize,
    #[serde(default = "d_timeout")]
    pub timeout_ms: u64,
    /// Shadow calls in flight per worker; beyond it the copy is skipped (counted).
    #[serde(default = "d_in_flight")]
    pub max_in_flight: u32,
    /// Extra headers to strip, on top of `authorization`, `cookie`,
    /// `proxy-authorization` and `x-api-key`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub strip_headers: Vec<String>,
    #[serde(default)]
    pub compare: CompareSpec,
    #[serde(default)]
    pub records: RecordsSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsSpec {
    /// Percent of agreeing comparisons sent to the sidecar as records.
    #[serde(default = "d_sample")]
    pub sample_percent: f64,
    /// Disagreements are always recorded, up to this many per minute per worker.
    #[serde(default = "d_budget")]
    pub disagreements_per_minute: u32,
}

impl Default for RecordsSpec {
    fn default() -> Self {
        RecordsSpec {
            sample_percent: d_sample(),
            disagreements_per_minute: d_budget(),
        }
    }
}

// ---------------------------------------------------------------- compiled

#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    pub cluster: String,
    pub percent_bp: u16,
    pub sticky: bool,
    pub salt: String,
    pub authority: Option<String>,
    pub path: Option<String>,
    pub methods: Vec<String>,
    pub max_body_bytes: usize,
    pub timeout_ms: u64,
    pub max_in_flight: u32,
    /// Lower-case names never copied.
    pub strip: Vec<String>,
    pub compare: CompareSpec,
    pub record_bp: u16,
    pub disagreements_per_minute: u32,
}

impl ShadowSpec {
    pub fn compile(&self, rollout_salt: &str) -> Result<Shadow, ConfigError> {
        check_cluster("cluster", &self.cluster)?;
        let percent_bp = weight_to_bp("percent", self.percent)?;
        if let Some(s) = &self.salt {
            check_salt("salt", s)?;
        }
        if let Some(a) = &self.authority {
            check_authority("authority", a)?;
        }
        if let Some(p) = &self.path {
            check_path("path", p)?;
        }
        if self.methods.is_empty() || self.methods.len() > 8 {
            return Err(ConfigError::new("methods", "must list 1 to 8 methods"));
        }
        let mut methods = Vec::new();
        for (i, m) in self.methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(ConfigError::new(
                    format!("methods[{i}]"),
                    format!("{m:?} is not an HTTP method"),
                ));
            }
            methods.push(m.to_ascii_uppercase());
        }
        check_size("max_body_bytes", self.max_body_bytes)?;
        check_timeout_ms("timeout_ms", self.timeout_ms)?;
        if !(1..=10_000).contains(&self.max_in_flight) {
            return Err(ConfigError::new(
                "max_in_flight",
                "must be between 1 and 10000",
            ));
        }
        if self.strip_headers.len() > 32 {
            return Err(ConfigError::new("strip_headers", "at most 32 headers"));
        }
        let mut strip: Vec<String> = DEFAULT_STRIP.iter().map(|s| s.to_string()).collect();
        for (i, h) in self.strip_headers.iter().enumerate() {
            strip.push(check_header_name(&format!("strip_headers[{i}]"), h)?);
        }
        let c = &self.compare;
        if c.pointers.is_empty() || c.pointers.len() > 8 {
            return Err(ConfigError::new(
                "compare.pointers",
                "must list 1 to 8 pointers",
            ));
        }
        for (i, p) in c.pointers.iter().enumerate() {
            check_pointer(&format!("compare.pointers[{i}]"), p)?;
        }
        for (name, v) in [
            ("compare.abs_tolerance", c.abs_tolerance),
            ("compare.rel_tolerance", c.rel_tolerance),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(ConfigError::new(name, "must be a finite number >= 0"));
            }
        }
        check_size("compare.max_response_bytes", c.max_response_bytes)?;
        let record_bp = weight_to_bp("records.sample_percent", self.records.sample_percent)?;
        if self.records.disagreements_per_minute > 100_000 {
            return Err(ConfigError::new(
                "records.disagreements_per_minute",
                "at most 100000",
            ));
        }
        Ok(Shadow {
            cluster: self.cluster.clone(),
            percent_bp,
            sticky: self.sticky,
            salt: self
                .salt
                .clone()
                .unwrap_or_else(|| format!("{rollout_salt}/shadow")),
            authority: self.authority.clone(),
            path: self.path.clone(),
            methods,
            max_body_bytes: self.max_body_bytes,
            timeout_ms: self.timeout_ms,
            max_in_flight: self.max_in_flight,
            strip,
            compare: c.clone(),
            record_bp,
            disagreements_per_minute: self.records.disagreements_per_minute,
        })
    }
}

impl Shadow {
    /// Is this request shadowed? `key` is the subject key when there is one;
    /// `random` is drawn only when needed.
    pub fn sampled(&self, key: Option<&str>, random: impl FnOnce() -> u32) -> bool {
        if self.percent_bp == 0 {
            return false;
        }
        let b = match (self.sticky, key) {
            (true, Some(k)) => bucket(&self.salt, k),
            _ => bucket_from_random(random()),
        };
        b < self.percent_bp
    }

    pub fn method_allowed(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }

    /// The headers of the copy: the primary's minus the strip list, hop-by-hop
    /// headers and `also_drop`, `:authority`/`:path` rewritten if configured, plus
    /// `x-shadow-request: true` and the correlation id. Names are compared and
    /// copied lowercased. `primary` is read once, as it comes (the filter hands its
    /// header snapshot in place): each kept header is copied once, into the one
    /// buffer of the result.
    pub fn copy_headers<K: AsRef<str>, V: AsRef<str>>(
        &self,
        primary: impl IntoIterator<Item = (K, V)>,
        correlation_header: &str,
        correlation_id: &str,
        also_drop: &[&str],
    ) -> CopyHeaders {
        let primary = primary.into_iter();
        let mut out = CopyHeaders {
            text: String::with_capacity(COPY_HEADERS_BYTES),
            ends: Vec::with_capacity(primary.size_hint().0 + 2),
        };
        for (k, v) in primary {
            let start = out.text.len();
            out.text.push_str(k.as_ref());
            let (dropped, rewrite) = match out.text.get_mut(start..) {
                Some(name) => {
                    name.make_ascii_lowercase();
                    let name: &str = name;
                    let dropped = self.strip.iter().any(|s| s == name)
                        || NEVER_COPY.contains(&name)
                        || name == SHADOW_HEADER
                        || name == correlation_header
                        || also_drop.contains(&name);
                    let rewrite = match name {
                        ":authority" => self.authority.as_deref(),
                        ":path" => self.path.as_deref(),
                        _ => None,
                    };
                    (dropped, rewrite)
                }
                None => (true, None),
            };
            if dropped {
                out.text.truncate(start);
                continue;
            }
            out.end_name_push_value(rewrite.unwrap_or(v.as_ref()));
        }
        out.push(SHADOW_HEADER, "true");
        out.push(correlation_header, correlation_id);
        out
    }
}

/// Bytes reserved for a copy's headers at once (a typical request's fit).
const COPY_HEADERS_BYTES: usize = 512;

/// The headers of a shadow copy in one buffer: each name (lowercased) and value
/// once, back to back. Two allocations per copy, none per header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyHeaders {
    text: String,
    /// Where each header's name and value end in `text`; each name starts where
    /// the header before it ended.
    ends: Vec<(usize, usize)>,
}

impl CopyHeaders {
    /// The headers in order, as (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut start = 0;
        self.ends.iter().filter_map(move |&(name_end, value_end)| {
            let name = self.text.get(start..name_end)?;
            let value = self.text.get(name_end..value_end)?;
            start = value_end;
            Some((name, value))
        })
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Whether `name` (as stored: lowercased) is among the headers.
    pub fn contains(&self, name: &str) -> bool {
        self.iter().any(|(k, _)| k == name)
    }

    fn push(&mut self, name: &str, value: &str) {
        self.text.push_str(name);
        self.end_name_push_value(value);
    }

    /// Ends the name just written and appends its value.
    fn end_name_push_value(&mut self, value: &str) {
        let name_end = self.text.len();
        self.text.push_str(value);
        self.ends.push((name_end, self.text.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Shadow {
        serde_json::from_str::<ShadowSpec>(json)
            .unwrap()
            .compile("salt")
            .unwrap()
    }

    #[test]
    fn sampling_is_sticky_per_user_and_honours_percent() {
        let s = spec(r#"{"cluster":"shadow","percent":25,"sticky":true}"#);
        let mut n = 0;
        for i in 0..20_000 {
            let k = format!("user-{i}");
            let a = s.sampled(Some(&k), || unreachable!());
            assert_eq!(a, s.sampled(Some(&k), || unreachable!()));
            n += usize::from(a);
        }
        assert!((4_700..5_300).contains(&n), "{n}");
        let per_request = spec(r#"{"cluster":"shadow","percent":0.01}"#);
        assert!(per_request.sampled(Some("u"), || 0));
        assert!(!per_request.sampled(Some("u"), || 1));
    }

    #[test]
    fn copy_headers_strip_and_mark() {
        let s = spec(
            r#"{"cluster":"shadow","percent":100,"strip_headers":["X-Internal-Token"],"path":"/v2/models/shadow/infer"}"#,
        );
        let primary: Vec<(String, String)> = [
            (":method", "POST"),
            (":path", "/v2/models/fraud/infer"),
            (":authority", "models"),
            ("authorization", "Bearer x"),
            ("cookie", "a=1"),
            ("x-api-key", "k"),
            ("proxy-authorization", "p"),
            ("x-internal-token", "t"),
            ("content-length", "12"),
            ("x-user-id", "u1"),
            ("x-request-id", "old"),
            ("X-Model-Variant", "canary"),
            ("X-Trace", "Keep-Case"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let h = s.copy_headers(
            primary.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            "x-request-id",
            "cid-12345678",
            &["x-model-variant"],
        );
        let pairs: Vec<(&str, &str)> = h.iter().collect();
        let names: Vec<&str> = h.iter().map(|(k, _)| k).collect();
        assert!(!h.contains("x-model-variant"), "also dropped");
        assert_eq!(h.len(), pairs.len());
        for gone in [
            "authorization",
            "cookie",
            "x-api-key",
            "proxy-authorization",
            "x-internal-token",
            "content-length",
        ] {
            assert!(!names.contains(&gone), "{gone}");
        }
        assert!(pairs.contains(&(":path", "/v2/models/shadow/infer")));
        assert!(pairs.contains(&(":authority", "models")));
        assert!(pairs.contains(&("x-shadow-request", "true")));
        assert!(pairs.contains(&("x-request-id", "cid-12345678")));
        assert!(pairs.contains(&("x-user-id", "u1")));
        // names are lowercased, values kept as they are
        assert!(pairs.contains(&("x-trace", "Keep-Case")));
        assert_eq!(names.iter().filter(|n| **n == "x-request-id").count(), 1);
    }

    #[test]
    fn validation_names_fields() {
        let e = serde_json::from_str::<ShadowSpec>(r#"{"cluster":"s","percent":101}"#)
            .unwrap()
            .compile("s")
            .unwrap_err();
        assert_eq!(e.field, "percent");
        let e = serde_json::from_str::<ShadowSpec>(
            r#"{"cluster":"s","percent":1,"compare":{"pointers":["outputs"]}}"#,
        )
        .unwrap()
        .compile("s")
        .unwrap_err();
        assert_eq!(e.field, "compare.pointers[0]");
        let e = serde_json::from_str::<ShadowSpec>(r#"{"cluster":"s","percent":1,"timeout_ms":0}"#)
            .unwrap()
            .compile("s")
            .unwrap_err();
        assert_eq!(e.field, "timeout_ms");
    }
}
