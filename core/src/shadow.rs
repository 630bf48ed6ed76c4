//! Shadow deployments and output health: the `shadow` and `output` sections of a
//! rollout, sampling, header stripping, prediction extraction by JSON pointer,
//! comparison with tolerance, and health of a model's answer. Pure logic.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ConfigError;
use crate::fields::{
    check_authority, check_cluster, check_header_name, check_path, check_pointer, check_salt,
    check_size, check_timeout_ms, weight_to_bp,
};
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
pub const DEFAULT_POINTER: &str = "/outputs/0/data";

fn d_methods() -> Vec<String> {
    vec!["POST".into()]
}
fn d_max_body() -> usize {
    256 * 1024
}
fn d_timeout() -> u64 {
    5_000
}
fn d_in_flight() -> u32 {
    64
}
fn d_pointers() -> Vec<String> {
    vec![DEFAULT_POINTER.into()]
}
fn d_rel() -> f64 {
    1e-6
}
fn d_abs() -> f64 {
    1e-9
}
fn d_sample() -> f64 {
    1.0
}
fn d_budget() -> u32 {
    60
}
fn d_hundred() -> f64 {
    100.0
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
pub struct CompareSpec {
    /// JSON pointers of the predictions in both answers.
    #[serde(default = "d_pointers")]
    pub pointers: Vec<String>,
    /// Numbers agree when |a-b| <= abs_tolerance + rel_tolerance * max(|a|,|b|).
    #[serde(default = "d_abs")]
    pub abs_tolerance: f64,
    #[serde(default = "d_rel")]
    pub rel_tolerance: f64,
    /// Primary answers larger than this are not compared (counted as skipped).
    #[serde(default = "d_max_body")]
    pub max_response_bytes: usize,
}

impl Default for CompareSpec {
    fn default() -> Self {
        CompareSpec {
            pointers: d_pointers(),
            abs_tolerance: d_abs(),
            rel_tolerance: d_rel(),
            max_response_bytes: d_max_body(),
        }
    }
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

/// `rollouts[].output`: health of every (sampled) primary answer of the rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    #[serde(default = "d_pointer")]
    pub pointer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Percent of primary answers checked (their bodies are buffered to do so).
    #[serde(default = "d_hundred")]
    pub sample_percent: f64,
    #[serde(default = "d_max_body")]
    pub max_response_bytes: usize,
}

fn d_pointer() -> String {
    DEFAULT_POINTER.into()
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

#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub pointer: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub sample_bp: u16,
    pub max_response_bytes: usize,
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

impl OutputSpec {
    pub fn compile(&self) -> Result<Output, ConfigError> {
        check_pointer("pointer", &self.pointer)?;
        for (name, v) in [("min", self.min), ("max", self.max)] {
            if let Some(v) = v {
                if !v.is_finite() {
                    return Err(ConfigError::new(name, "must be a finite number"));
                }
            }
        }
        if let (Some(lo), Some(hi)) = (self.min, self.max) {
            if lo > hi {
                return Err(ConfigError::new("min", "must not exceed max"));
            }
        }
        check_size("max_response_bytes", self.max_response_bytes)?;
        Ok(Output {
            pointer: self.pointer.clone(),
            min: self.min,
            max: self.max,
            sample_bp: weight_to_bp("sample_percent", self.sample_percent)?,
            max_response_bytes: self.max_response_bytes,
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

    /// The headers of the copy: the primary's minus the strip list and
    /// hop-by-hop headers, `:authority`/`:path` rewritten if configured, plus
    /// `x-shadow-request: true` and the correlation id.
    pub fn copy_headers(
        &self,
        primary: &[(String, String)],
        correlation_header: &str,
        correlation_id: &str,
    ) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::with_capacity(primary.len() + 2);
        for (k, v) in primary {
            let k = k.to_ascii_lowercase();
            if self.strip.contains(&k)
                || NEVER_COPY.contains(&k.as_str())
                || k == SHADOW_HEADER
                || k == correlation_header
            {
                continue;
            }
            let v = match k.as_str() {
                ":authority" => self.authority.clone().unwrap_or_else(|| v.clone()),
                ":path" => self.path.clone().unwrap_or_else(|| v.clone()),
                _ => v.clone(),
            };
            out.push((k, v));
        }
        out.push((SHADOW_HEADER.to_string(), "true".to_string()));
        out.push((correlation_header.to_string(), correlation_id.to_string()));
        out
    }
}

// ---------------------------------------------------------------- answers

/// A prediction pulled from an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Prediction {
    Number(f64),
    /// NaN or +-Infinity (literal tokens, or the strings "NaN"/"Infinity").
    NonFinite,
    Null,
    Label(String),
    Bool(bool),
    List(Vec<Prediction>),
    Other(String),
}

impl Prediction {
    fn from_value(v: &Value) -> Prediction {
        match v {
            Value::Null => Prediction::Null,
            Value::Bool(b) => Prediction::Bool(*b),
            Value::Number(n) => n
                .as_f64()
                .map(Prediction::Number)
                .unwrap_or(Prediction::NonFinite),
            Value::String(s) if is_non_finite_token(s) => Prediction::NonFinite,
            Value::String(s) => Prediction::Label(s.clone()),
            Value::Array(a) => Prediction::List(a.iter().map(Prediction::from_value).collect()),
            Value::Object(_) => Prediction::Other(v.to_string()),
        }
    }

    /// JSON for records (NaN written as the string "NaN").
    pub fn to_json(&self) -> Value {
        match self {
            Prediction::Number(n) => serde_json::Number::from_f64(*n)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Prediction::NonFinite => Value::String("NaN".into()),
            Prediction::Null => Value::Null,
            Prediction::Label(s) => Value::String(s.clone()),
            Prediction::Bool(b) => Value::Bool(*b),
            Prediction::List(l) => Value::Array(l.iter().map(Prediction::to_json).collect()),
            Prediction::Other(s) => Value::String(s.clone()),
        }
    }
}

fn is_non_finite_token(s: &str) -> bool {
    matches!(s, "NaN" | "nan" | "Infinity" | "-Infinity" | "inf" | "-inf")
}

/// Parses an answer, tolerating the non-standard `NaN`, `Infinity` and
/// `-Infinity` tokens many ML servers emit (they become the strings "NaN" etc.).
pub fn parse_answer(body: &[u8]) -> Option<Value> {
    if let Ok(v) = serde_json::from_slice(body) {
        return Some(v);
    }
    serde_json::from_slice(&quote_non_finite(body)).ok()
}

fn quote_non_finite(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        if in_string {
            out.push(b);
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        let rest = body.get(i..).unwrap_or(&[]);
        let token = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t));
        match token {
            Some(t) => {
                out.push(b'"');
                out.extend_from_slice(t);
                out.push(b'"');
                i += t.len();
            }
            None => {
                if b == b'"' {
                    in_string = true;
                }
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Predictions at `pointers`; `None` where the pointer finds nothing.
pub fn extract(answer: Option<&Value>, pointers: &[String]) -> Vec<Option<Prediction>> {
    pointers
        .iter()
        .map(|p| {
            answer
                .and_then(|v| v.pointer(p))
                .map(Prediction::from_value)
        })
        .collect()
}

/// Health of one answer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Valid,
    /// Not JSON at all (after tolerating NaN tokens).
    Unparseable,
    /// The pointer finds nothing.
    Missing,
    Null,
    NaN,
    OutOfRange,
}

impl Health {
    /// The invalid kinds, in metric order.
    pub const INVALID: [Health; 5] = [
        Health::Unparseable,
        Health::Missing,
        Health::Null,
        Health::NaN,
        Health::OutOfRange,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Valid => "valid",
            Health::Unparseable => "unparseable",
            Health::Missing => "missing",
            Health::Null => "null",
            Health::NaN => "nan",
            Health::OutOfRange => "out_of_range",
        }
    }

    pub fn invalid_index(self) -> Option<usize> {
        Health::INVALID.iter().position(|h| *h == self)
    }
}

/// Checks an answer's prediction at `pointer` (every element, for a list).
pub fn health(answer: Option<&Value>, pointer: &str, min: Option<f64>, max: Option<f64>) -> Health {
    let Some(v) = answer else {
        return Health::Unparseable;
    };
    match v.pointer(pointer) {
        None => Health::Missing,
        Some(p) => health_of(&Prediction::from_value(p), min, max),
    }
}

fn health_of(p: &Prediction, min: Option<f64>, max: Option<f64>) -> Health {
    match p {
        Prediction::Null => Health::Null,
        Prediction::NonFinite => Health::NaN,
        Prediction::Number(n) => {
            if min.is_some_and(|lo| *n < lo) || max.is_some_and(|hi| *n > hi) {
                Health::OutOfRange
            } else {
                Health::Valid
            }
        }
        Prediction::List(items) if items.is_empty() => Health::Missing,
        Prediction::List(items) => items
            .iter()
            .map(|i| health_of(i, min, max))
            .find(|h| *h != Health::Valid)
            .unwrap_or(Health::Valid),
        _ => Health::Valid,
    }
}

/// Do two predictions agree?
pub fn agree(a: &Prediction, b: &Prediction, abs_tol: f64, rel_tol: f64) -> bool {
    match (a, b) {
        (Prediction::Number(x), Prediction::Number(y)) => {
            (x - y).abs() <= abs_tol + rel_tol * x.abs().max(y.abs())
        }
        (Prediction::List(x), Prediction::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| agree(p, q, abs_tol, rel_tol))
        }
        (Prediction::Label(x), Prediction::Label(y)) => x == y,
        (Prediction::Bool(x), Prediction::Bool(y)) => x == y,
        (Prediction::Other(x), Prediction::Other(y)) => x == y,
        // Null and NaN never agree with anything: an invalid output is a disagreement.
        _ => false,
    }
}

/// The verdict of one comparison; on the wire (records) and in metric names as
/// `agree`, `status` and `prediction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    #[serde(rename = "agree")]
    Agree,
    /// Different status classes (e.g. 200 vs 503).
    #[serde(rename = "status")]
    StatusMismatch,
    /// Both 2xx, predictions differ (or one is missing/invalid).
    #[serde(rename = "prediction")]
    PredictionMismatch,
}

impl Verdict {
    pub const ALL: [Verdict; 3] = [
        Verdict::Agree,
        Verdict::StatusMismatch,
        Verdict::PredictionMismatch,
    ];
    /// The verdicts that are disagreements, in metric order.
    pub const DISAGREEMENTS: [Verdict; 2] = [Verdict::StatusMismatch, Verdict::PredictionMismatch];

    pub fn agrees(self) -> bool {
        self == Verdict::Agree
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Agree => "agree",
            Verdict::StatusMismatch => "status",
            Verdict::PredictionMismatch => "prediction",
        }
    }
}

/// Compares primary and shadow: status class first, then (both 2xx) every pointer.
pub fn compare(
    primary_status: u32,
    shadow_status: u32,
    primary: &[Option<Prediction>],
    shadow: &[Option<Prediction>],
    spec: &CompareSpec,
) -> Verdict {
    if primary_status / 100 != shadow_status / 100 {
        return Verdict::StatusMismatch;
    }
    if primary_status / 100 != 2 {
        return Verdict::Agree;
    }
    let all = primary.len() == shadow.len()
        && primary.iter().zip(shadow).all(|(p, s)| match (p, s) {
            (Some(p), Some(s)) => agree(p, s, spec.abs_tolerance, spec.rel_tolerance),
            _ => false,
        });
    if all {
        Verdict::Agree
    } else {
        Verdict::PredictionMismatch
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
    fn nan_tokens_are_tolerated_outside_strings_only() {
        let v = parse_answer(
            br#"{"outputs":[{"data":[NaN, -Infinity, 1.5]}],"note":"NaN inside \"quotes\" NaN"}"#,
        )
        .unwrap();
        let p = extract(Some(&v), &["/outputs/0/data".into()]);
        assert_eq!(
            p[0],
            Some(Prediction::List(vec![
                Prediction::NonFinite,
                Prediction::NonFinite,
                Prediction::Number(1.5)
            ]))
        );
        assert_eq!(v["note"], "NaN inside \"quotes\" NaN");
        assert!(parse_answer(b"not json").is_none());
    }

    #[test]
    fn health_kinds() {
        let h = |body: &str| {
            health(
                parse_answer(body.as_bytes()).as_ref(),
                "/outputs/0/data",
                Some(0.0),
                Some(1.0),
            )
        };
        assert_eq!(h(r#"{"outputs":[{"data":[0.5]}]}"#), Health::Valid);
        assert_eq!(h(r#"{"outputs":[{"data":[NaN]}]}"#), Health::NaN);
        assert_eq!(h(r#"{"outputs":[{"data":[null]}]}"#), Health::Null);
        assert_eq!(h(r#"{"outputs":[{"data":[1.5]}]}"#), Health::OutOfRange);
        assert_eq!(h(r#"{"outputs":[]}"#), Health::Missing);
        assert_eq!(h(r#"{"outputs":[{"data":[]}]}"#), Health::Missing);
        assert_eq!(h("<html>"), Health::Unparseable);
        assert_eq!(h(r#"{"outputs":[{"data":["cat"]}]}"#), Health::Valid);
    }

    #[test]
    fn comparison() {
        let c = CompareSpec {
            abs_tolerance: 0.01,
            rel_tolerance: 0.0,
            ..CompareSpec::default()
        };
        let n = |x: f64| Some(Prediction::List(vec![Prediction::Number(x)]));
        assert_eq!(
            compare(200, 200, &[n(0.5)], &[n(0.505)], &c),
            Verdict::Agree
        );
        assert_eq!(
            compare(200, 200, &[n(0.5)], &[n(0.52)], &c),
            Verdict::PredictionMismatch
        );
        assert_eq!(
            compare(200, 503, &[n(0.5)], &[None], &c),
            Verdict::StatusMismatch
        );
        assert_eq!(compare(500, 503, &[None], &[None], &c), Verdict::Agree);
        assert_eq!(
            compare(200, 200, &[n(0.5)], &[None], &c),
            Verdict::PredictionMismatch
        );
        let nan = Some(Prediction::List(vec![Prediction::NonFinite]));
        assert_eq!(
            compare(
                200,
                200,
                std::slice::from_ref(&nan),
                std::slice::from_ref(&nan),
                &c
            ),
            Verdict::PredictionMismatch
        );
        let l = |s: &str| Some(Prediction::Label(s.into()));
        assert_eq!(
            compare(200, 200, &[l("cat")], &[l("cat")], &c),
            Verdict::Agree
        );
        assert_eq!(
            compare(200, 200, &[l("cat")], &[l("dog")], &c),
            Verdict::PredictionMismatch
        );
        let two = |a: f64, b: f64| {
            Some(Prediction::List(vec![
                Prediction::Number(a),
                Prediction::Number(b),
            ]))
        };
        assert_eq!(
            compare(200, 200, &[two(1.0, 2.0)], &[n(1.0)], &c),
            Verdict::PredictionMismatch
        );
        let rel = CompareSpec {
            abs_tolerance: 0.0,
            rel_tolerance: 0.01,
            ..CompareSpec::default()
        };
        assert_eq!(
            compare(200, 200, &[n(1000.0)], &[n(1009.0)], &rel),
            Verdict::Agree
        );
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
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let h = s.copy_headers(&primary, "x-request-id", "cid-12345678");
        let names: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
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
        assert!(h.contains(&(":path".into(), "/v2/models/shadow/infer".into())));
        assert!(h.contains(&("x-shadow-request".into(), "true".into())));
        assert!(h.contains(&("x-request-id".into(), "cid-12345678".into())));
        assert!(h.contains(&("x-user-id".into(), "u1".into())));
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
        let e = serde_json::from_str::<OutputSpec>(r#"{"min":2,"max":1}"#)
            .unwrap()
            .compile()
            .unwrap_err();
        assert_eq!(e.field, "min");
    }
}
